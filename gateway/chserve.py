"""The gateway's REST app and its ClickHouse HTTP interface served together, one process.

Both answer from one ``Gateway`` (one engine, one users file, one query log), each
on its own port. uvicorn serves one app per server: two servers run on one event
loop, the REST one owning the signals (Ctrl-C, SIGTERM) and the lifespan (routing
starts and stops with it); the ClickHouse one stops when it does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn

from gateway.chhttp import create_clickhouse_app


class _Follower(uvicorn.Server):
    """A server that leaves the signals to the other one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve_both(app: Any, host: str, port: int, clickhouse_port: int) -> None:
    """Serve ``app`` on ``port`` and its gateway's ClickHouse interface on ``clickhouse_port``."""
    common: dict[str, Any] = {"host": host, "log_level": "warning", "access_log": False, "log_config": None}
    main = uvicorn.Server(uvicorn.Config(app, port=port, **common))
    follower = _Follower(uvicorn.Config(create_clickhouse_app(app.state.gateway), port=clickhouse_port,
                                        lifespan="off", **common))

    async def both() -> None:
        # either one stopping stops both (a port taken: uvicorn logs it and exits 1)
        tasks = {asyncio.create_task(main.serve()), asyncio.create_task(follower.serve())}
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        main.should_exit = follower.should_exit = True
        await asyncio.gather(*tasks)

    asyncio.run(both())
