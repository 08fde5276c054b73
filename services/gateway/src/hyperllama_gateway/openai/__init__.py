"""The OpenAI API family (/v1/*, SSE streaming)."""
