"""Entry point: serve the gateway with uvicorn."""

from __future__ import annotations

import signal

import uvicorn
from hyperllama_common.logs import setup_logging

from hyperllama_gateway.app import create_app
from hyperllama_gateway.settings import GatewaySettings


def _drained(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    settings = GatewaySettings()
    setup_logging("gateway", settings.log_level, settings.log_json)
    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal to the handler that was
    # there before it; a drained shutdown is a clean exit, so that handler exits with 0.
    signal.signal(signal.SIGTERM, _drained)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # Let in-flight streams finish on SIGTERM before the process exits.
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
