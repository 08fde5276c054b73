"""``hyperllama``: Ollama's command line against a HyperLlama cluster, plus the cluster's own verbs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from hyperllama_cli import __version__, commands, serve
from hyperllama_cli.api import Api, ApiError, server_url
from hyperllama_cli.modelfile import ModelfileError

Handler = Callable[[Api, argparse.Namespace], int]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hyperllama", description="Run and manage models on a HyperLlama cluster."
    )
    p.add_argument("-v", "--version", action="store_true", help="show the client's and the server's version")
    p.add_argument(
        "--host",
        help="the server: [scheme://]host[:port] (default: $HYPERLLAMA_HOST, $OLLAMA_HOST, 127.0.0.1:11434)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def verb(
        name: str, handler: Handler, help_text: str, aliases: tuple[str, ...] = ()
    ) -> argparse.ArgumentParser:
        v = sub.add_parser(name, help=help_text, description=help_text, aliases=list(aliases))
        v.set_defaults(handler=handler)
        return v

    serving = verb(
        "serve", serve.serve, "Start the cluster on this machine, planned from its cores, memory and GPUs"
    )
    serve.add_arguments(serving)

    run = verb("run", commands.run, "Run a model: one answer for a prompt, else an interactive session")
    run.add_argument("model")
    run.add_argument("prompt", nargs="*")
    run.add_argument("--format", default="", help='response format ("json")')
    run.add_argument("--keepalive", default="", help="how long the model stays loaded (e.g. 5m, 1h, -1)")
    run.add_argument("--verbose", action="store_true", help="print timings after each answer")
    run.add_argument("--nowordwrap", action="store_true", help="do not wrap words to the terminal's width")
    run.add_argument("--insecure", action="store_true", help="pull over plain HTTP if the model is missing")

    pull = verb("pull", commands.pull, "Pull models from a registry")
    pull.add_argument("models", nargs="+", metavar="model")
    pull.add_argument("--insecure", action="store_true", help="allow a registry over plain HTTP")

    push = verb("push", commands.push, "Push a model to a registry")
    push.add_argument("model")
    push.add_argument("--insecure", action="store_true", help="allow a registry over plain HTTP")

    create = verb("create", commands.create, "Create a model from a Modelfile")
    create.add_argument("model")
    create.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default: ./Modelfile)")
    create.add_argument("-q", "--quantize", default="", help="quantize the model to this level")

    show = verb("show", commands.show, "Show information for a model")
    show.add_argument("model")
    for field in ("license", "modelfile", "parameters", "system", "template"):
        show.add_argument(f"--{field}", action="store_true", help=f"show the model's {field}")

    ls = verb("list", commands.list_models, "List models", aliases=("ls",))
    ls.add_argument("prefix", nargs="?", default="")
    ps = verb("ps", commands.ps, "List running models")
    ps.add_argument("prefix", nargs="?", default="")

    cp = verb("cp", commands.copy, "Copy a model")
    cp.add_argument("source")
    cp.add_argument("destination")
    rm = verb("rm", commands.remove, "Remove models")
    rm.add_argument("models", nargs="+", metavar="model")
    stop = verb("stop", commands.stop, "Stop (unload) a running model")
    stop.add_argument("model")

    keys = verb("keys", commands.keys_list, "Manage API keys (with the admin key: $HYPERLLAMA_ADMIN_KEY)")
    key_verbs = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    created = key_verbs.add_parser("create", help="Create a key (shown once)", description="Create a key")
    created.add_argument(
        "--tenant", default="default", help="the tenant the key belongs to (default: default)"
    )
    created.add_argument("--name", default="", help="what the key is for, to tell keys apart")
    created.set_defaults(handler=commands.keys_create)
    key_verbs.add_parser("ls", help="List keys", aliases=["list"]).set_defaults(handler=commands.keys_list)
    revoked = key_verbs.add_parser(
        "revoke", help="Revoke keys", description="Revoke keys (at once, everywhere)"
    )
    revoked.add_argument("ids", nargs="+", metavar="id")
    revoked.set_defaults(handler=commands.keys_revoke)
    verb("tenants", commands.tenants, "List tenants: their limits and usage (with the admin key)")

    verb("workers", commands.workers, "List the cluster's workers: engine, pool, models, slots, memory")
    verb("queue", commands.queue, "Show each model's queue: requests waiting, oldest wait, ETA")
    bench = verb(
        "bench", commands.bench, "Measure the server: streams of fixed length at a fixed concurrency"
    )
    bench.add_argument("--model", default="smollm2:135m")
    bench.add_argument("--api", choices=["openai", "ollama"], default="openai", help="which API to load")
    bench.add_argument("-c", "--concurrency", type=int, default=8, help="requests in flight (default: 8)")
    bench.add_argument("-n", "--requests", type=int, default=32, help="requests in all (default: 32)")
    bench.add_argument("--max-tokens", type=int, default=128, help="output tokens per request (default: 128)")
    bench.add_argument("--compare", help="a second server to run the same load against, for a ratio")
    return p


# Verbs of the admin API: they send the admin key instead of HYPERLLAMA_API_KEY.
ADMIN_VERBS = {"keys", "tenants"}


def admin_key() -> str:
    """$HYPERLLAMA_ADMIN_KEY, else the file $HYPERLLAMA_ADMIN_KEY_FILE names, else the one `serve`
    made (~/.hyperllama/admin_key), else $HYPERLLAMA_API_KEY."""
    if os.environ.get("HYPERLLAMA_ADMIN_KEY"):
        return os.environ["HYPERLLAMA_ADMIN_KEY"]
    path = Path(os.environ.get("HYPERLLAMA_ADMIN_KEY_FILE") or Path.home() / ".hyperllama" / "admin_key")
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    return os.environ.get("HYPERLLAMA_API_KEY", "")


def version(api: Api) -> int:
    try:
        server = api.get("/api/version").get("version", "unknown")
        print(f"hyperllama version is {server}")
        if server != __version__:
            print(f"Warning: client version is {__version__}")
    except ApiError:
        print("Warning: could not connect to a running HyperLlama server")
        print(f"Warning: client version is {__version__}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    api: Api | None = None
    try:
        key = admin_key() if args.command in ADMIN_VERBS else os.environ.get("HYPERLLAMA_API_KEY")
        api = Api(server_url(args.host), key or None)
        if args.version:
            return version(api)
        if not args.command:
            parser().print_help()
            return 0
        return int(args.handler(api, args))
    except (ApiError, ModelfileError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `hyperllama list | head`: the reader left; nothing more to say.
        sys.stderr.close()
        return 0
    except (OSError, ValueError) as err:
        # A file that cannot be read, a reply that is not what the API promises: one line, no traceback.
        print(f"Error: {err}", file=sys.stderr)
        return 1
    finally:
        if api is not None:
            api.close()


if __name__ == "__main__":
    sys.exit(main())
