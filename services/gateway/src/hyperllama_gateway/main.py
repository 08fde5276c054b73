"""Entry point: serve the gateway with uvicorn."""

from __future__ import annotations

import uvicorn
from hyperllama_common.logs import setup_logging

from hyperllama_gateway.app import create_app
from hyperllama_gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    setup_logging("gateway", settings.log_level, settings.log_json)
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
