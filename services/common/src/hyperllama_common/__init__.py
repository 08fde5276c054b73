"""Pieces every HyperLlama service shares."""
