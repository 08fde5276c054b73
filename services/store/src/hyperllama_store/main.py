"""Entry point: serve the model store with uvicorn."""

from __future__ import annotations

import signal

import uvicorn
from hyperllama_common.logs import setup_logging

from hyperllama_store.app import create_app
from hyperllama_store.layout import Layout
from hyperllama_store.settings import StoreSettings
from hyperllama_store.store import Store


def _drained(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    settings = StoreSettings()
    setup_logging("store", settings.log_level, settings.log_json)
    store = Store.open(Layout(settings.root), settings.quota_bytes)
    # uvicorn drains in-flight requests on SIGTERM and re-raises it; a drained shutdown exits with 0.
    signal.signal(signal.SIGTERM, _drained)
    uvicorn.run(
        create_app(settings, store),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
