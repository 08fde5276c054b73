"""HyperLlama worker for the vLLM engine."""
