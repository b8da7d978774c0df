"""llm-node's one-shot quantization job: a Hugging Face model directory in, a
compressed-tensors checkpoint (which vLLM loads natively) out.

Run as ``python -m llm_node_quantize``; the arguments are built by
``services.launch.quantize_args`` so the Pulumi job and ``scripts/quantize`` agree.
"""
