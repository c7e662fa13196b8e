"""Entry point of the console: `python -m services.console.server` (HTTP on FT_CONSOLE_PORT, default 8080).

`build_server(settings)` starts uvicorn in a background thread and returns a handle (the browser test uses
port 0); main() serves until SIGTERM/SIGINT."""

import logging
import socket
import threading
from dataclasses import dataclass

import uvicorn

from ftcommon.logs import configure_logging
from services.console.app import create_app
from services.console.config import ConsoleSettings
from services.console.state import ConsoleState

logger = logging.getLogger(__name__)


@dataclass
class ConsoleServer:
    state: ConsoleState
    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.state.close()


def build_server(settings: ConsoleSettings) -> ConsoleServer:
    state = ConsoleState.build(settings)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((settings.host, settings.port))
    port = listener.getsockname()[1]
    config = uvicorn.Config(create_app(state), log_config=None, access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="console-http", daemon=True
    )
    thread.start()
    url = f"http://{settings.host}:{port}"
    logger.info("console serving", extra={"url": url})
    return ConsoleServer(state, server, thread, url)


def main() -> None:
    settings = ConsoleSettings()
    configure_logging("console", settings.log_level)
    state = ConsoleState.build(settings)
    uvicorn.run(create_app(state), host=settings.host, port=settings.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
