"""llm-node gateway."""
