"""The Ollama API family (/api/*, NDJSON streaming)."""
