"""The Query Manager's hub: streaming subscriptions shared, reference counted, fanned out.

A client (one WebSocket or SSE connection: an ``Outbox``) subscribes to a
*source*, a topic keyed by sym carrying framed Avro rows (a plant table, or a
real-time engine's derived topic ``<prefix>rte.<name>``), for a set of syms.

- **One upstream per identical subscription.** Subscriptions with the same
  source and the same sym set share one ``Upstream``: a thread running an
  ``ingest.subscribe.Subscription`` from the log's end (for a real-time
  engine's output, its workers' live feeds instead: ``gateway.enginefeed``),
  decoding and filtering once, handing each batch to the event loop
  (``loop.call_soon_threadsafe``), where it is JSON-encoded once and put in
  every subscriber's outbox. The upstream is reference counted: when its last
  subscriber leaves it stops and its consumer is closed.
- **Snapshot, then updates, no gap.** A new subscriber is attached to the
  upstream first (updates from then on are held for it), the upstream's
  start offsets are recorded (it reads from the log end as it was *before*
  the snapshot is asked for), and only then is the snapshot taken: the latest
  row per sym from the injected ``snapshot(source, syms)`` callable (the RDB's
  ``last`` by default), overridden per sym by the latest row the upstream has
  itself delivered before the attach. Then the held updates follow. Every
  row published after the upstream started reaches the client, either in the
  snapshot or as an update; the overlap, at-least-once, is this: a row the
  RDB had already taken when it answered but that the upstream delivered
  after the attach is both the snapshot's row for its sym and an update.
  Clients treat updates as "latest row per sym" upserts, so it is harmless.
- **Resume, exactly once.** An upstream reading the log stamps each update
  (and the snapshot) with its ``position``: partition -> next offset, where
  its reading stands once that message's rows are out. A client that lost
  its connection (or its gateway: every gateway reads the same log)
  subscribes again with ``resume`` = the last position it received and gets
  ``{"type": "resumed"}``, then every row after it, none twice, no snapshot.
  A resumed subscription reads from its own upstream (it is behind the shared
  one). The engine's live feeds (``bars``, ``analytics``) have no position:
  their subscribers subscribe afresh (a snapshot, then updates).
- **Slow clients are dropped, never waited for.** An outbox is bounded in
  rows queued (``max_queued``); a client whose queue would pass it is
  dropped: its queue is replaced by a final ``{"type": "error", "reason":
  "slow consumer: ..."}``, its subscriptions are released, and the others'
  delivery never waits on it (putting into an outbox never blocks).
- **A client that falls behind gets bigger messages, not more.** Updates of
  one subscription waiting in an outbox go out merged into one message (up to
  ``MERGE_ROWS`` rows), so the per-message cost is paid once per send; a
  client that keeps up gets each batch alone, at once.
- **Cancellation is immediate.** Unsubscribing or disconnecting detaches the
  subscriber at once on the loop (no further message is queued for it); the
  upstream's thread notices its stop flag within one poll (0.1 s) and closes
  its consumer.

Messages (JSON text; ``time`` and every long as int ns)::

    {"type": "snapshot", "source": "trade", "syms": ["AAPL"], "position": {"0": 17}, "rows": [...]}
    {"type": "update", "source": "trade", "syms": ["AAPL"], "position": {"0": 18}, "rows": [...]}
    {"type": "resumed", "source": "trade", "syms": ["AAPL"], "position": {"0": 18}}
    {"type": "unsubscribed", "source": "trade", "syms": ["AAPL"]}
    {"type": "error", "reason": "...", ["source": ...]}   (slow consumer, unknown source...)
    {"type": "warning", "source": "trade", "reason": "..."}  (undecodable message skipped)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from gateway.outbox import Key, Outbox, Subscriber, dumps
from gateway.snapshot import SnapshotFn, default_snapshot
from gateway.upstream import (
    Source,
    SourceError,
    Upstream,
    UpstreamError,
    normalize_syms,
    parse_position,
)
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames
from streams.cep.topics import output_of
from tickplant.config import Settings
from tickplant.kafka.admin import admin_client

log = logging.getLogger(__name__)


DEFAULT_MAX_QUEUED = 20_000  # rows waiting for one client before it is dropped
SOURCES_TTL = 2.0  # seconds a list of derived topics is trusted before an unknown name re-reads it


class Hub:
    """Streaming subscriptions for the gateway: see the module docstring.

    ``snapshot(source, syms) -> rows`` is called in a worker thread; the
    default asks the RDB's ``last`` view (tables) or a CEP node (derived
    sources). Everything else runs on the event loop of the first subscriber.
    """

    def __init__(self, settings: Settings, snapshot: SnapshotFn | None = None,
                 catalog: SchemaCatalog | None = None, max_queued: int = DEFAULT_MAX_QUEUED):
        self.settings = settings
        self.catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
        self.snapshot = snapshot or default_snapshot(settings, self.catalog)
        self.max_queued = max_queued
        self.names = TopicNames(settings.topic_prefix)
        self.upstreams: dict[Key, Upstream] = {}
        self.outboxes: set[Outbox] = set()
        self.dropped = 0
        self._sources: dict[str, Source] = {}
        self._sources_read = 0.0
        self._sources_lock = threading.Lock()
        self._stopped: list[Upstream] = []
        self.resumed: set[Upstream] = set()  # each resumed subscription's own upstream

    # -- sources --------------------------------------------------------------

    def _read_sources(self) -> dict[str, Source]:
        out = {t.name: Source(t.name, self.names.table(t.name), False) for t in self.catalog}
        rte_dir = self.settings.schemas_dir / "rte"
        if rte_dir.is_dir():
            for path in sorted(rte_dir.glob("*.avsc")):
                out.setdefault(path.stem, Source(path.stem, self.names.derived(path.stem), True))
        prefix = self.names.derived("")
        try:
            topics = admin_client(self.settings).list_topics(timeout=5).topics
        except Exception as exc:  # the broker's answer only adds derived topics
            log.warning("could not list derived topics: %s", exc)
            topics = {}
        for topic in sorted(topics):
            name = topic[len(prefix):]
            if topic.startswith(prefix) and name:
                out.setdefault(name, Source(name, topic, True))
        return out

    def sources(self, refresh: bool = False) -> dict[str, Source]:
        """Plant tables, derived schemas (``schemas/rte/``) and derived topics on the broker.

        Blocking (a metadata request): call from a thread when on the loop."""
        with self._sources_lock:
            if refresh or not self._sources or time.monotonic() - self._sources_read > SOURCES_TTL:
                self._sources = self._read_sources()
                self._sources_read = time.monotonic()
            return dict(self._sources)

    def resolve(self, name: str) -> Source:
        """The source called ``name``; SourceError listing the sources if there is none."""
        if not isinstance(name, str) or not name:
            raise SourceError(f"source must be a non-empty string, not {name!r}")
        known = self._sources.get(name)
        if known is not None:
            return known
        sources = self.sources(refresh=time.monotonic() - self._sources_read > 0.5)
        if name not in sources:
            raise SourceError(f"unknown source {name!r}; sources: {', '.join(sorted(sources))}")
        return sources[name]

    # -- clients ----------------------------------------------------------------

    def connect(self) -> Outbox:
        outbox = Outbox(self.max_queued)
        self.outboxes.add(outbox)
        return outbox

    async def subscribe(self, outbox: Outbox, source: str, syms: Any = None, resume: Any = None) -> Key | None:
        """Attach ``outbox`` to (source, syms): its snapshot, then its updates, are put in it;
        with ``resume`` (a position it was sent), every row after that position instead.

        Raises SourceError (unknown source, bad syms, topic missing, a position the log
        does not hold) or UpstreamError (the broker failed); returns the
        subscription's key, or None if the client left while its snapshot was taken.
        """
        wanted = normalize_syms(syms)
        offsets = parse_position(resume) if resume is not None else None
        src = self._sources.get(source) if isinstance(source, str) else None
        if src is None:
            src = await asyncio.to_thread(self.resolve, source)
        key: Key = (src.name, wanted)
        if key in outbox.subs:
            raise SourceError(f"already subscribed to {src.name} {list(wanted) or 'all syms'}")
        if outbox.closed:
            return None
        if offsets is not None:
            if src.derived and output_of(self.settings, src.topic) is not None:
                raise SourceError(f"{src.name!r} is the engine's live feed, which has no log position "
                                  "to resume from: subscribe again for a fresh snapshot")
            upstream = Upstream(self, src, wanted, asyncio.get_running_loop(), resume=offsets)
            self.resumed.add(upstream)
        else:
            upstream = self.upstreams.get(key) or Upstream(self, src, wanted, asyncio.get_running_loop())
            self.upstreams[key] = upstream
        sub = Subscriber(key, outbox, upstream)
        upstream.subs.add(sub)
        outbox.subs[key] = sub
        seen = {s: r for s, r in upstream.last.items() if not wanted or s in wanted}  # at the attach
        position = dict(upstream.position) if upstream.ready.done() and upstream.position is not None else None
        try:
            started = await upstream.ready  # reading from the log end before the snapshot is asked for
        except (SourceError, UpstreamError):
            self._detach(sub)
            if self.upstreams.get(key) is upstream:
                del self.upstreams[key]
            raise
        if position is None and upstream.source_reads_log:
            position = dict(started)  # a new upstream: nothing delivered before the attach
        if offsets is not None:
            return self._resumed(sub, src, wanted, offsets)
        warning = None
        try:
            rows = await asyncio.to_thread(self.snapshot, src.name, list(wanted))
        except Exception as exc:  # no snapshot is not fatal: the updates still flow; say so
            warning = f"snapshot unavailable: {exc}"
            log.warning("snapshot of %s %s: %s", src.name, list(wanted), exc)
            rows = []
        if outbox.subs.get(key) is not sub:  # unsubscribed or dropped meanwhile
            return None
        latest = {r.get("sym"): r for r in rows if not wanted or r.get("sym") in wanted}
        latest.update(seen)
        message: dict[str, Any] = {
            "type": "snapshot", "source": src.name, "syms": list(wanted),
        }
        if position is not None:
            message["position"] = position
        message["rows"] = [latest[s] for s in sorted(latest, key=str)]
        if warning:
            message["warning"] = warning
        outbox.put(dumps(message))
        self._release_held(sub)
        return key

    def _resumed(self, sub: Subscriber, src: Source, wanted: tuple[str, ...], offsets: dict[int, int]) -> Key:
        sub.outbox.put(dumps({"type": "resumed", "source": src.name, "syms": list(wanted), "position": offsets}))
        self._release_held(sub)
        return sub.key

    @staticmethod
    def _release_held(sub: Subscriber) -> None:
        held, sub.held = sub.held or [], None
        for text, n in held:
            sub.outbox.held_rows -= n
            sub.outbox.put(text, n)

    def unsubscribe(self, outbox: Outbox, source: str, syms: Any = None) -> list[Key]:
        """Detach at once; with ``syms`` None, every subscription of ``source`` on this outbox."""
        if syms is None:
            keys = [k for k in outbox.subs if k[0] == source]
        else:
            key = (source, normalize_syms(syms))
            keys = [key] if key in outbox.subs else []
        if not keys:
            raise SourceError(f"not subscribed to {source} {syms if syms is not None else ''}".rstrip())
        for key in keys:
            self._detach(outbox.subs[key])
            outbox.put(dumps({"type": "unsubscribed", "source": key[0], "syms": list(key[1])}))
        return keys

    def disconnect(self, outbox: Outbox) -> None:
        """The client went: release its subscriptions now."""
        for sub in list(outbox.subs.values()):
            self._detach(sub)
        outbox.close()
        self.outboxes.discard(outbox)

    def drop(self, outbox: Outbox, reason: str) -> None:
        """Drop a client: its queue is replaced by one final error message."""
        if outbox.closed:
            return
        log.warning("dropping a client: %s", reason)
        self.dropped += 1
        for sub in list(outbox.subs.values()):
            self._detach(sub)
        outbox.close(dumps({"type": "error", "reason": reason}), reason)
        self.outboxes.discard(outbox)

    def _detach(self, sub: Subscriber) -> None:
        outbox = sub.outbox
        if outbox.subs.get(sub.key) is sub:
            del outbox.subs[sub.key]
        if sub.held:
            outbox.held_rows -= sum(n for _, n in sub.held)
        sub.held = None
        upstream = sub.upstream
        upstream.subs.discard(sub)
        if not upstream.subs and not upstream._stop.is_set():
            if self.upstreams.get(sub.key) is upstream:
                del self.upstreams[sub.key]
            self.resumed.discard(upstream)
            upstream.stop()
            self._stopped = [u for u in self._stopped if not u.closed.is_set()] + [upstream]

    def _upstream_failed(self, upstream: Upstream, reason: str) -> None:
        text = dumps({"type": "error", "source": upstream.source.name, "reason": f"upstream failed: {reason}"})
        for sub in list(upstream.subs):
            sub.outbox.put(text)
            self._detach(sub)

    # -- introspection and shutdown ----------------------------------------------

    @property
    def upstream_count(self) -> int:
        return len(self.upstreams) + len(self.resumed)

    def stats(self) -> dict[str, Any]:
        return {
            "clients": len(self.outboxes),
            "dropped": self.dropped,
            "upstreams": [
                {"source": u.source.name, "syms": list(u.syms), "subscribers": len(u.subs),
                 "rows": u.rows, "start_offsets": u.start_offsets}
                for u in [*self.upstreams.values(), *self.resumed]
            ],
        }

    def _release_all(self) -> list[Upstream]:
        for outbox in list(self.outboxes):
            self.disconnect(outbox)
        upstreams = list(self.upstreams.values()) + list(self.resumed) + self._stopped
        self.upstreams.clear()
        self.resumed.clear()
        self._stopped = []
        for upstream in upstreams:
            upstream.stop()
        return upstreams

    async def aclose(self, timeout: float = 5.0) -> None:
        """The app's shutdown, on the loop: release every client, stop every upstream, and wait
        (in a thread) for their consumers to close."""
        upstreams = self._release_all()
        await asyncio.to_thread(_join, upstreams, timeout)

    def close(self, timeout: float = 5.0) -> Any:
        """Release every client and stop every upstream now. With no running loop, wait for
        the consumers to close; on the loop, return an awaitable of that wait rather than
        block the loop (``await hub.close()`` or, the same, ``await hub.aclose()``)."""
        upstreams = self._release_all()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            _join(upstreams, timeout)
            return None
        return asyncio.to_thread(_join, upstreams, timeout)


def _join(upstreams: list[Upstream], timeout: float) -> None:
    for upstream in upstreams:
        upstream.join(timeout)


# -- the default snapshot: the RDB's last row per sym, or a CEP node's analytics --------

