"""Shared by the workers whose engine runs as a child process serving the OpenAI API on loopback.

The engine-specific part of such a worker is small (how to start the engine, which sampling fields it
takes, what it can do); everything else lives here: the child process and its supervision, the
streaming HTTP client, the WorkerService implementation and the worker's main loop.
"""
