"""One upstream of the Query Manager: a thread reading a source (the log, or an engine's live
feed) for one set of syms, decoding and filtering once for every subscriber of it
(gateway/subscriptions.py's hub owns and reference counts it)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.enginefeed import EngineFeed
from gateway.outbox import Key, Subscriber, dumps
from ingest.subscribe import Subscription
from streams.cep.topics import output_of

if TYPE_CHECKING:
    from gateway.subscriptions import Hub

log = logging.getLogger("gateway.subscriptions")

POLL_TIMEOUT = 0.1  # an upstream's poll: also how long a stopped upstream takes to close


class SourceError(ValueError):
    """An unknown source or a malformed sym list; the message says which and lists the sources."""


class UpstreamError(RuntimeError):
    """The upstream consumer could not start (the broker failed); the message says why."""


@dataclass(frozen=True)
class Source:
    name: str
    topic: str
    derived: bool  # a real-time engine's output rather than a plant table


def parse_position(position: Any) -> dict[int, int]:
    """A resume position as sent back by a client: ``{"0": 17, "3": 5}`` (JSON's keys are
    text) or ``"0:17,3:5"`` (a query string's)."""
    if isinstance(position, str):
        try:
            position = dict(part.split(":", 1) for part in position.split(",") if part.strip())
        except ValueError:
            raise SourceError(f"resume must be partition:offset pairs like '0:17,3:5', not {position!r}") from None
    if not isinstance(position, dict) or not position:
        raise SourceError(f"resume must be a position ({{partition: offset}}) from an earlier message, "
                          f"not {position!r}")
    try:
        offsets = {int(p): int(o) for p, o in position.items()}
    except (TypeError, ValueError):
        raise SourceError(f"resume must map partitions to offsets (integers), not {position!r}") from None
    if any(p < 0 or o < 0 for p, o in offsets.items()):
        raise SourceError(f"resume has a negative partition or offset: {position!r}")
    return offsets


def normalize_syms(syms: Any) -> tuple[str, ...]:
    """Sorted, unique syms; () means every sym. Refuses anything but a list of non-empty strings."""
    if syms is None:
        return ()
    if isinstance(syms, str):
        syms = [s for s in syms.split(",") if s.strip()]
    if not isinstance(syms, list | tuple) or not all(isinstance(s, str) and s.strip() for s in syms):
        raise SourceError(f"syms must be a list of non-empty strings, not {syms!r}")
    return tuple(sorted({s.strip() for s in syms}))



class Upstream:
    """One consumer for one (source, syms), shared by every subscriber of it."""

    def __init__(self, hub: Hub, source: Source, syms: tuple[str, ...], loop: asyncio.AbstractEventLoop,
                 resume: dict[int, int] | None = None):
        self.hub = hub
        self.source = source
        self.syms = syms
        self.key: Key = (source.name, syms)
        self.loop = loop
        self.subs: set[Subscriber] = set()
        self.last: dict[str | None, dict[str, Any]] = {}  # the latest row per sym delivered so far
        self.ready: asyncio.Future[dict[int, int]] = loop.create_future()
        self.start_offsets: dict[int, int] = {}
        self.resume = resume
        self.position: dict[int, int] | None = None  # after the rows delivered so far; None: the live feed
        self.rows = 0
        self.batches = 0
        self.closed = threading.Event()  # set once the consumer is closed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"qm-{source.name}", daemon=True)
        self._thread.start()

    # -- the consumer thread ------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
            return True
        except RuntimeError:  # the loop is closed: nobody left to deliver to
            return False

    def _run(self) -> None:
        sub = None
        try:
            output = output_of(self.hub.settings, self.source.topic) if self.source.derived else None
            if output is not None:  # a real-time engine's output: its workers' live feeds
                EngineFeed(self.hub.settings, self.source.topic, output, self.syms,
                           lambda rows: not self._stop.is_set() and self._call(self._deliver, rows, None),
                           lambda errors: self._call(self._warn, errors), self._stop,
                           ).run(lambda: self._call(self._started, {}))
                return
            sub = Subscription(
                self.hub.settings, self.source.name, list(self.syms) or None, "now", self.hub.catalog,
                topic=self.source.topic if self.source.derived else None, offsets=self.resume,
            )
            self.start_offsets = dict(sub.start_offsets)
            if not self._call(self._started, dict(sub.start_offsets)):
                return
            while not self._stop.is_set():
                rows = sub.poll(POLL_TIMEOUT, 10_000)
                if sub.errors:
                    errors, sub.errors = sub.errors, []
                    self._call(self._warn, errors)
                if rows and not self._stop.is_set() and not self._call(self._deliver, rows, dict(sub.positions)):
                    return
        except Exception as exc:  # a broken upstream tells its subscribers why, then goes
            log.exception("upstream %s failed", self.key)
            self._call(self._failed, exc)
        finally:
            if sub is not None:
                sub.close()
            self.closed.set()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    # -- on the loop ----------------------------------------------------------

    def _started(self, offsets: dict[int, int]) -> None:
        if self.source_reads_log:
            self.position = dict(offsets)
        if not self.ready.done():
            self.ready.set_result(offsets)

    def _failed(self, exc: Exception) -> None:
        reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        if not self.ready.done():
            self.ready.set_exception(SourceError(reason) if isinstance(exc, ValueError) else UpstreamError(reason))
            self.ready.exception()  # retrieved: waiters get it; no "never retrieved" warning
            return
        self.hub._upstream_failed(self, reason)

    def _warn(self, errors: list[str]) -> None:
        for error in errors:
            log.warning("source %s: %s", self.source.name, error)
        text = dumps({"type": "warning", "source": self.source.name, "reason": "; ".join(errors)[:2000]})
        for sub in list(self.subs):
            sub.outbox.put(text)

    @property
    def source_reads_log(self) -> bool:
        return not self.source.derived or output_of(self.hub.settings, self.source.topic) is None

    def _deliver(self, rows: list[dict[str, Any]], position: dict[int, int] | None) -> None:
        if self._stop.is_set():
            return
        self.position = position
        last = self.last
        for row in rows:
            last[row.get("sym")] = row
        self.rows += len(rows)
        self.batches += 1
        if not self.subs:
            return
        message: dict[str, Any] = {"type": "update", "source": self.source.name, "syms": list(self.syms)}
        if position is not None:
            message["position"] = position
        message["rows"] = rows
        text = dumps(message)
        n = len(rows)
        for sub in list(self.subs):
            outbox = sub.outbox
            if sub.held is not None:
                sub.held.append((text, n))
                outbox.held_rows += n
            else:
                outbox.put(text, n)
            if outbox.queued_rows + outbox.held_rows > outbox.limit:
                self.hub.drop(outbox, f"slow consumer: {outbox.queued_rows + outbox.held_rows:,} rows "
                                      f"queued, more than the limit of {outbox.limit:,}; dropped")
