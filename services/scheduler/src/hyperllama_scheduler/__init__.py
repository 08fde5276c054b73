"""HyperLlama scheduler."""
