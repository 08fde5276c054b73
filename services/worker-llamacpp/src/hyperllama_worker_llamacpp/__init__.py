"""HyperLlama worker for the llama.cpp engine."""
