"""Running the app under uvicorn on loopback, with the one fault HTTP cannot express: refusal.

``refuse: "connection"`` closes uvicorn's listening sockets, so new connections get ECONNREFUSED
(open keep-alive connections stay). Reopening binds the same port again and serves it with
uvicorn's own protocol factory (built the way ``uvicorn.Server.startup`` builds it). With
``refuse_seconds`` the refusal, of either kind, reverts by itself.

When the server is up it writes ``{"host", "port", "pid"}`` to the ``--ready-file`` if one was
given (how :mod:`litellm_dualpool.emulator.testing` learns an ephemeral port).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import uvicorn

from litellm_dualpool.emulator.faults import Faults, Refuse

log = logging.getLogger(__name__)


class RefusalController:
    """Applies ``faults.refuse`` to the listening sockets of one uvicorn server."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults
        self._server: uvicorn.Server | None = None
        self._address: tuple[str, int] | None = None
        self._closed = False
        self._revert: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def attach(self, server: uvicorn.Server) -> None:
        self._server = server

    def bound_address(self) -> tuple[str, int] | None:
        if self._address is None and self._server is not None:
            for srv in getattr(self._server, "servers", []):
                for sock in srv.sockets:
                    host, port = sock.getsockname()[:2]
                    self._address = (host, port)
                    return self._address
        return self._address

    def changed(self) -> None:
        """Call after ``faults`` changed (admin route, start-up)."""
        if self._revert is not None:
            self._revert.cancel()
            self._revert = None
        refuse = self._faults.refuse
        if refuse is Refuse.CONNECTION and not self._closed:
            self._close()
        elif refuse is not Refuse.CONNECTION and self._closed:
            task = asyncio.get_running_loop().create_task(self._reopen())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        if refuse is not Refuse.NONE and self._faults.refuse_seconds:
            loop = asyncio.get_running_loop()
            self._revert = loop.call_later(self._faults.refuse_seconds, self._end_refusal)

    def _end_refusal(self) -> None:
        self._revert = None
        self._faults.update({"refuse": "none", "refuse_seconds": None})
        self.changed()

    def _close(self) -> None:
        if self._server is None or self.bound_address() is None:
            return
        for srv in self._server.servers:
            srv.close()
        self._closed = True
        log.warning("refusing connections (listening socket closed)")

    async def _reopen(self) -> None:
        server, address = self._server, self._address
        if server is None or address is None:
            return
        config = server.config
        protocol: Any = config.http_protocol_class  # uvicorn types it as a bare Protocol
        factory = functools.partial(protocol, config=config,
                                    server_state=server.server_state, app_state=server.lifespan.state)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.set_inheritable(False)
        new = await asyncio.get_running_loop().create_server(factory, sock=sock, backlog=config.backlog)
        server.servers = [new]
        self._closed = False
        log.warning("accepting connections again on %s:%d", *address)


def serve(app_factory: object, *, host: str, port: int, controller: RefusalController,
          ready_file: Path | None, log_level: str, announce_json: bool = False) -> int:
    """Run ``app`` until SIGINT/SIGTERM; returns the exit status.

    ``announce_json`` (``emulate --json``) prints ``{host, port, pid, url}`` as one JSON line on
    stdout once listening: with ``--port 0`` that is how a script learns the port.
    """
    config = uvicorn.Config(app_factory, host=host, port=port, log_level=log_level, access_log=False,  # type: ignore[arg-type]  # uvicorn types the app factory narrowly
                            timeout_graceful_shutdown=2, lifespan="on")
    server = uvicorn.Server(config)
    controller.attach(server)

    async def main() -> None:
        watcher = asyncio.create_task(_after_start(server, controller, ready_file, announce_json))
        try:
            await server.serve()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    asyncio.run(main())
    return 0 if server.started else 1


async def _after_start(server: uvicorn.Server, controller: RefusalController, ready_file: Path | None,
                       announce_json: bool = False) -> None:
    while not server.started:
        await asyncio.sleep(0.01)
    address = controller.bound_address()
    controller.changed()  # start-up faults (a refusal) are in force before anyone is told the port
    if ready_file is not None and address is not None:
        tmp = ready_file.with_suffix(ready_file.suffix + ".tmp")
        tmp.write_text(json.dumps({"host": address[0], "port": address[1], "pid": os.getpid()}))
        tmp.replace(ready_file)
    if announce_json and address is not None:
        print(json.dumps({"host": address[0], "port": address[1], "pid": os.getpid(),
                          "url": f"http://{address[0]}:{address[1]}"}), flush=True)
