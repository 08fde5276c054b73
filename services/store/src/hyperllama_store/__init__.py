"""HyperLlama model store: blobs and manifests in Ollama's on-disk layout, its catalog and its HTTP API."""
