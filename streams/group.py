"""A Faust app that only keeps a consumer group: what the RDB and the CEP workers share.

A Faust event per Kafka message caps a worker at a few thousand messages a
second, so the data path of both workers is a plain consumer thread reading in
bulk. Faust keeps what it is good at: the group on a membership topic (never
written to; partition p of it stands for partition p of every input topic),
its rebalances (revoked before assigned, so a partition is never held twice),
the HTTP views and the timers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import faust

from tickplant import internal
from tickplant.config import Settings
from tickplant.kafkaauth import faust_credentials

Handler = Callable[..., Awaitable[None]]
log = logging.getLogger("tickplant.group")
REFRESH_BACKOFF_MAX_SECONDS = 30.0


def run_worker_app(app: faust.App) -> None:
    """Run a worker's app in the foreground until SIGTERM/SIGINT. The log is ours (the
    log_format setting, set up by the role), and Faust's terminal spinner is off: it writes
    cursor escapes even to a log file, where every line should be one record."""
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, override_logging=False)
    worker.spinner = None
    worker.execute_from_commandline()


def membership_app(settings: Settings, group: str, membership_topic: str, datadir: Path, port: int,
                   partitions: int, on_revoked: Handler, on_assigned: Handler, on_refresh: Callable[[], Awaitable[None]],
                   on_shutdown: Handler, refresh_seconds: float = 2.0) -> faust.App:
    """The group ``group`` formed on ``membership_topic``; views on ``node_host``:``port``,
    announced at ``advertise_host``."""
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        group,
        broker=[f"kafka://{b}" for b in settings.bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),  # the cluster's security, as every client has it
        datadir=str(datadir),
        web_enabled=True, web_port=port, web_bind=settings.node_host or "0.0.0.0", web_host=settings.advertised_host,
        topic_partitions=partitions, topic_allow_declare=False, topic_disable_leader=True,
        consumer_auto_offset_reset="earliest", key_serializer="raw", value_serializer="raw",
        broker_commit_interval=1.0,
        broker_session_timeout=6.0,  # the broker's minimum: a dead worker's partitions move soon
        broker_heartbeat_interval=1.0,
        stream_wait_empty=False, web_access_log=None,
        # the views serve every row held: only the plant's own calls (tickplant/internal.py),
        # Faust's own pages (its tables, router, stats) included
        web_application_options={"middlewares": [internal.aiohttp_middleware(settings)]},
    )
    membership = app.topic(membership_topic, key_serializer="raw", value_serializer="raw")

    async def members(stream: faust.StreamT) -> None:
        async for _ in stream:  # nothing is ever published here: the topic only forms the group
            pass

    app.agent(membership, name="membership")(members)
    app.on_partitions_revoked.connect(on_revoked)
    app.on_partitions_assigned.connect(on_assigned)

    backoff = {"failures": 0, "next": 0.0}

    async def refresh() -> None:
        """The worker's housekeeping: a failure (the broker away) is logged and tried again
        later, doubling the wait; a timer of the plant never ends a process."""
        now = time.monotonic()
        if now < backoff["next"]:
            return
        try:
            await on_refresh()
        except Exception as exc:  # noqa: BLE001 - see the docstring
            backoff["failures"] += 1
            wait = min(refresh_seconds * 2 ** backoff["failures"], REFRESH_BACKOFF_MAX_SECONDS)
            backoff["next"] = now + wait
            log.warning("%s: housekeeping failed (%s: %s); again in %.0f s", group, type(exc).__name__, exc, wait)
        else:
            backoff["failures"] = 0

    app.timer(refresh_seconds)(refresh)
    app.on_before_shutdown.connect(on_shutdown)
    return app
