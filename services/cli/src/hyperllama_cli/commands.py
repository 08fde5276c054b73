"""The verbs: Ollama's (list, ps, pull, push, create, show, cp, rm, stop, run) with its output, and the
cluster's own (workers, queue, bench)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hyperllama_cli import modelfile
from hyperllama_cli.api import Api, ApiError, server_url
from hyperllama_cli.chat import stream_answer
from hyperllama_cli.display import print_metrics, print_table, show_transfer
from hyperllama_cli.humanize import human_bytes, human_ms, human_time, parse_time


def _short_id(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def list_models(api: Api, args: argparse.Namespace) -> int:
    rows = []
    for m in api.get("/api/tags")["models"]:
        if args.prefix and not m["name"].lower().startswith(args.prefix.lower()):
            continue
        rows.append(
            [
                m["name"],
                _short_id(m["digest"]),
                human_bytes(m["size"]),
                human_time(parse_time(m["modified_at"])),
            ]
        )
    print_table(["NAME", "ID", "SIZE", "MODIFIED"], rows)
    return 0


def _processor(m: dict[str, Any]) -> str:
    size, vram = m.get("size", 0), m.get("size_vram", 0)
    if not vram:
        return "100% CPU"
    if vram == size:
        return "100% GPU"
    if vram > size or not size:
        return "Unknown"
    cpu = round((size - vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def _until(m: dict[str, Any]) -> str:
    if m.get("state") == "loading":
        return "Loading..."
    expires = parse_time(m.get("expires_at", ""))
    if expires is not None and human_time(expires).endswith(" ago"):
        return "Stopping..."
    return human_time(expires)


def ps(api: Api, args: argparse.Namespace) -> int:
    rows = []
    for m in api.get("/api/ps")["models"]:
        if args.prefix and not m["name"].startswith(args.prefix):
            continue
        workers = ", ".join(p["worker"] for p in m.get("placements", [])) or ", ".join(m.get("workers", []))
        rows.append(
            [
                m["name"],
                _short_id(m["digest"]),
                human_bytes(m["size"]),
                _processor(m),
                str(m.get("context_length", 0)),
                _until(m),
                workers,
            ]
        )
    print_table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL", "WORKER"], rows)
    return 0


def pull(api: Api, args: argparse.Namespace) -> int:
    for name in args.models:
        show_transfer(api.stream("/api/pull", {"model": name, "insecure": args.insecure, "stream": True}))
    return 0


def push(api: Api, args: argparse.Namespace) -> int:
    show_transfer(api.stream("/api/push", {"model": args.model, "insecure": args.insecure, "stream": True}))
    return 0


def create(api: Api, args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        text = path.read_text()
    except OSError as err:
        raise ApiError(f"cannot read the Modelfile {path}: {err.strerror}") from None
    mf = modelfile.parse(text)
    body = modelfile.create_body(args.model, mf)
    local = modelfile.local_source(mf.source, path.resolve().parent)
    if local is None:
        body["from"] = mf.source
    else:
        files = modelfile.directory_files(local) if local.is_dir() else [local]
        body["files"] = {}
        for f in files:
            sys.stderr.write(f"copying file {f.name}\n")
            body["files"][f.name] = api.upload_blob(f)
    if args.quantize:
        body["quantize"] = args.quantize
    show_transfer(api.stream("/api/create", {**body, "stream": True}))
    return 0


def show(api: Api, args: argparse.Namespace) -> int:
    chosen = [f for f in ("license", "modelfile", "parameters", "system", "template") if getattr(args, f)]
    if len(chosen) > 1:
        raise ApiError(
            "only one of --license, --modelfile, --parameters, --system or --template can be given"
        )
    info = api.post("/api/show", {"model": args.model})
    if chosen:
        what = chosen[0]
        value = info.get(what) or ""
        if what == "license" and isinstance(value, list):
            value = "\n".join(value)
        sys.stdout.write(value if value.endswith("\n") or not value else value + "\n")
        return 0
    print_model_info(info)
    return 0


def print_model_info(info: dict[str, Any]) -> None:
    details, model_info = info.get("details", {}), info.get("model_info", {})
    arch = model_info.get("general.architecture") or details.get("family", "")
    sections: list[tuple[str, list[list[str]]]] = [
        (
            "Model",
            [
                ["architecture", arch],
                ["parameters", details.get("parameter_size", "")],
                ["context length", str(model_info.get(f"{arch}.context_length", ""))],
                ["embedding length", str(model_info.get(f"{arch}.embedding_length", ""))],
                ["quantization", details.get("quantization_level", "")],
                ["format", details.get("format", "")],
            ],
        ),
        ("Capabilities", [[c] for c in info.get("capabilities", [])]),
        ("Parameters", [[line.split(None, 1)[0], line.split(None, 1)[1]] for line in _param_lines(info)]),
        ("System", [[line] for line in (info.get("system") or "").splitlines()[:2]]),
    ]
    for title, rows in sections:
        rows = [r for r in rows if all(r) and r[-1] not in ("", "0")]
        if not rows:
            continue
        sys.stdout.write(f"  {title}\n")
        for row in rows:
            sys.stdout.write("    " + "".join(f"{cell:<20}" for cell in row[:-1]) + row[-1] + "\n")
        sys.stdout.write("\n")


def _param_lines(info: dict[str, Any]) -> list[str]:
    return [line for line in (info.get("parameters") or "").splitlines() if len(line.split(None, 1)) == 2]


def copy(api: Api, args: argparse.Namespace) -> int:
    api.post("/api/copy", {"source": args.source, "destination": args.destination})
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def remove(api: Api, args: argparse.Namespace) -> int:
    for name in args.models:
        # The store unloads the model everywhere before it deletes it.
        api.delete("/api/delete", {"model": name})
        print(f"deleted '{name}'")
    return 0


def stop(api: Api, args: argparse.Namespace) -> int:
    try:
        api.post("/api/generate", {"model": args.model, "keep_alive": 0, "stream": False})
    except ApiError as err:
        if err.status == 404:
            raise ApiError(f'couldn\'t find model "{args.model}" to stop', 404) from None
        raise
    return 0


def ensure_model(api: Api, name: str, insecure: bool = False) -> dict[str, Any]:
    """The model's /api/show, after pulling it when the store does not have it (as ``ollama run``)."""
    try:
        return dict(api.post("/api/show", {"model": name}))
    except ApiError as err:
        if err.status != 404:
            raise
    show_transfer(api.stream("/api/pull", {"model": name, "insecure": insecure, "stream": True}))
    return dict(api.post("/api/show", {"model": name}))


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"model": args.model}
    if args.format:
        body["format"] = args.format
    if args.keepalive:
        body["keep_alive"] = args.keepalive
    return body


def run(api: Api, args: argparse.Namespace) -> int:
    ensure_model(api, args.model, args.insecure)
    prompt = " ".join(args.prompt)
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        prompt = f"{piped}\n{prompt}" if prompt else piped
    if not prompt and sys.stdin.isatty():
        from hyperllama_cli.repl import Repl  # readline is only needed here

        return Repl(api, args).loop()
    body = {**run_options(args), "prompt": prompt}
    _, final = stream_answer(api, "/api/generate", body, sys.stdout, word_wrap=not args.nowordwrap)
    sys.stdout.write("\n")
    if args.verbose:
        print_metrics(final)
    return 0


def workers(api: Api, args: argparse.Namespace) -> int:
    rows = []
    for w in api.get("/api/workers")["workers"]:
        models = w["models"] + [f"{m} (loading)" for m in w["loading"]]
        memory = human_bytes(w["memory_used"])
        if w["memory_budget"]:
            memory += f" / {human_bytes(w['memory_budget'])}"
        rows.append(
            [
                w["worker"],
                w["engine"],
                w["pool"],
                ", ".join(models) or "-",
                f"{w['slots_in_use']}/{w['slots_total']}",
                memory,
                "ready" if w["ready"] else "not ready",
            ]
        )
    print_table(["WORKER", "ENGINE", "POOL", "MODELS", "SLOTS", "MEMORY", "HEALTH"], rows)
    return 0


def queue(api: Api, args: argparse.Namespace) -> int:
    rows = [
        [
            q["model"],
            str(q["queued"]),
            human_ms(q["oldest_wait_ms"]) if q["queued"] else "-",
            human_ms(q["eta_ms"]) if q["eta_ms"] else "-",
            f"{q['slots_in_use']}/{q['slots_total']}",
        ]
        for q in api.get("/api/queue")["models"]
    ]
    print_table(["MODEL", "QUEUED", "OLDEST WAIT", "ETA", "SLOTS"], rows)
    return 0


def bench(api: Api, args: argparse.Namespace) -> int:
    """Drive the load generator at ``--concurrency`` against the server (and ``--compare``'s, one after the
    other), and print one row each: throughput, TTFT and ITL per token, failures."""
    import asyncio

    from hyperllama_cli.loadgen import Api as LoadApi
    from hyperllama_cli.loadgen import run as run_load

    if args.concurrency < 1 or args.requests < 1 or args.max_tokens < 1:
        raise ApiError("--concurrency, --requests and --max-tokens must be at least 1")
    ensure_model(api, args.model)
    load = LoadApi(args.api, args.model, args.max_tokens, "ignore_eos")
    endpoints = [api.base_url] + ([server_url(args.compare)] if args.compare else [])
    rows, throughput, errors = [], [], []
    for url in endpoints:
        sys.stderr.write(
            f"{url}: {args.requests} requests of {args.max_tokens} tokens, {args.concurrency} at once\n"
        )
        s = asyncio.run(run_load(url, load, args.concurrency, args.requests))
        throughput.append(s.output_tok_per_s)
        errors += [f"{url}: {e}" for e in s.errors]
        rows.append(
            [
                url,
                str(s.requests_ok),
                str(s.requests_failed),
                f"{s.output_tok_per_s:.1f}",
                *(f"{s.ttft_ms[p]:.0f} ms" for p in ("p50", "p95", "p99")),
                *(f"{s.itl_ms[p]:.1f} ms" for p in ("p50", "p95")),
            ]
        )
    headers = [
        "ENDPOINT",
        "OK",
        "FAILED",
        "OUT TOK/S",
        "TTFT P50",
        "TTFT P95",
        "TTFT P99",
        "ITL P50",
        "ITL P95",
    ]
    print_table(headers, rows)
    if len(throughput) == 2 and throughput[1]:
        print(f"\nratio (out tok/s, first / second): {throughput[0] / throughput[1]:.2f}")
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return 1 if any(r[2] != "0" for r in rows) else 0


def keys_create(api: Api, args: argparse.Namespace) -> int:
    made = api.post("/admin/keys", {"tenant": args.tenant, "name": args.name})
    print(made["key"])
    print(
        f"Created key {made['id']} of tenant '{made['tenant']}'. It is shown only this once.", file=sys.stderr
    )
    return 0


def keys_list(api: Api, args: argparse.Namespace) -> int:
    rows = [
        [
            k["id"],
            k["tenant"],
            k["name"] or "-",
            k["hint"],
            human_time(datetime.fromtimestamp(k["created_at"], UTC)),
        ]
        for k in api.get("/admin/keys")["keys"]
    ]
    print_table(["ID", "TENANT", "NAME", "KEY", "CREATED"], rows)
    return 0


def keys_revoke(api: Api, args: argparse.Namespace) -> int:
    for key_id in args.ids:
        api.delete(f"/admin/keys/{key_id}", {})
        print(f"revoked '{key_id}'")
    return 0


def tenants(api: Api, args: argparse.Namespace) -> int:
    rows = []
    for t in api.get("/admin/tenants")["tenants"]:
        limits = [f"{t['requests_per_minute']} req/min" if t["requests_per_minute"] else "",
                  f"{t['tokens_per_minute']} tok/min" if t["tokens_per_minute"] else "",
                  f"{t['max_concurrent']} at once" if t["max_concurrent"] else ""]  # fmt: skip
        usage = t["usage"]
        tokens = usage["prompt_tokens"] + usage["completion_tokens"]
        shown_limits = ", ".join(x for x in limits if x) or "-"
        rows.append([t["name"], ", ".join(t["models"]), str(t["weight"]), shown_limits,
                     str(usage["requests"]), str(tokens), str(usage["rejected"])])  # fmt: skip
    print_table(["TENANT", "MODELS", "WEIGHT", "LIMITS", "REQUESTS", "TOKENS", "REFUSED"], rows)
    return 0
