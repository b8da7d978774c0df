"""The llm-node Pulumi program: what is deployed on a Docker host (see stacks/__main__.py)."""
