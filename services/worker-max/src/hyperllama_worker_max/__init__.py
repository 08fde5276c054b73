"""HyperLlama worker for the Modular MAX engine."""
