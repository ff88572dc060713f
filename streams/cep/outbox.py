"""Publishing a partition's outputs exactly once: RocksDB outbox + Kafka transactions.

The design (why not ``send_offsets_to_transaction``: the input offsets live
in RocksDB with the state, not in a consumer group):

1. A batch's state, input offsets and outputs are written in one RocksDB
   write; each output carries the partition's next *sequence number*. So
   the store never holds state whose outputs are lost: they are committed
   to Kafka or still in the outbox.
2. The outbox is then published in one Kafka transaction (header
   ``cep-seq``) by a producer whose ``transactional.id`` belongs to the
   partition (``<prefix>tickplant-cep-<engine>-p<NNN>``), and the partition
   of every derived topic is the input partition, so only that producer
   ever writes it.
3. A new owner of the partition (a restart after kill -9, a rebalance)
   calls ``init_transactions`` first: Kafka aborts whatever the previous
   owner left open and fences it from writing again. It then reads the
   committed (read_committed) tail of the partition's derived topics: the
   highest ``cep-seq`` there is the last committed output, as transactions
   are published in sequence order. Outbox entries above it are published
   again; those at or below it are dropped.

So whatever instant a worker dies at (before the RocksDB write: the batch is
read and computed again, identically; between the write and the commit:
the outbox is republished; after the commit: nothing is republished), each
output appears exactly once in the committed derived topics.

Latency: a commit is a broker round trip (several ms, more on a busy
machine). The reader does not wait for it: ``submit`` hands a read's
outputs, already in the outbox, to the partition's committer thread and the
reader goes on with the next read. The committer takes everything submitted
meanwhile into one transaction, in sequence order (the reader submits in
order, after the RocksDB write), so a read's outputs wait at most for the
commit in flight, never for the next read's decoding, and a busy partition
commits several reads at a time. Nothing above changes: what is submitted is
in the outbox, and a crash at any instant leaves the outbox to ``recover``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Producer

from ingest.logread import make_consumer, read_ranges, watermarks
from streams.cep.store import Output, PartitionStore
from tickplant.config import Settings

log = logging.getLogger("tickplant.cep")
SEQ_HEADER = "cep-seq"
TAIL_WINDOW = 64
RETRY_FIRST_SECONDS = 0.5  # a transaction that failed while the broker was away: tried again after
RETRY_MAX_SECONDS = 10.0   # ... doubling up to this
RECOVER_PATIENCE_SECONDS = 120.0  # a takeover waits this long for a broker that is away
# errors of a broker that is away (librdkafka does not mark a timed-out offsets request retriable)
_AWAY = {KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}


class OutboxError(RuntimeError):
    """Outputs could not be committed to Kafka; the message says which partition and why."""


def last_committed_seq(settings: Settings, topics: list[str], partition: int) -> int:
    """The highest ``cep-seq`` committed on these topics' partition (-1: none)."""
    best = -1
    consumer = make_consumer(settings)
    try:
        for topic in topics:
            low, high = watermarks(consumer, topic, partition)
            window = TAIL_WINDOW
            while True:
                start = max(low, high - window)
                found = -1
                for msg in read_ranges(consumer, topic, {partition: (start, high)}):
                    headers = msg.headers() or []
                    for key, value in headers.items() if isinstance(headers, dict) else headers:
                        if key == SEQ_HEADER:
                            if value is None:
                                raise ValueError(f"{topic}[{partition}]@{msg.offset()}: an empty {SEQ_HEADER} header")
                            found = max(found, int(value))
                if found >= 0 or start <= low:
                    best = max(best, found)
                    break
                window *= 4  # only transaction markers or aborted records at the end: look further back
    finally:
        consumer.close()
    return best


class PartitionPublisher:
    """The transactional producer of one partition's derived messages."""

    def __init__(self, settings: Settings, transactional_id: str, topics: dict[str, str], partition: int):
        self.settings = settings
        self.topics = topics  # kind -> topic
        self.partition = partition
        self.producer = Producer(settings.kafka_config(**{
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,
            # a transaction is a few small requests in turn: no Nagle delay on any of them
            "socket.nagle.disable": True,
            "transaction.timeout.ms": 60_000,
        }))
        try:
            self.producer.init_transactions(60)  # aborts and fences the previous owner's transaction
        except KafkaException as exc:
            raise OutboxError(f"partition {partition}: cannot start transactions as {transactional_id}: {exc}") from exc
        self.commits = 0
        self.commit_seconds = 0.0
        # the committer thread (``start``): what the reader submitted, not yet committed
        self.offsets: dict[str, int] = {}  # input offsets whose outputs are all committed
        self._queue: list[tuple[list[Output], dict[str, int] | None, int | None]] = []
        self._wake = threading.Condition()
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._free: threading.Event | None = None
        # seconds a transaction takes at least (the worker's choice: while the live feed serves the
        # screens, the durable record can come in fewer, bigger transactions); 0: commit at once
        self.pace: Callable[[], float] = lambda: 0.0

    def recover(self, store: PartitionStore) -> int:
        """Publish the outbox entries Kafka has not committed; return how many were republished."""
        done = self._committed_seq()
        store.mark_published(done)
        todo = [o for o in store.pending() if o.seq > done]
        if todo:
            self.publish(todo, store)
        return len(todo)

    def _committed_seq(self) -> int:
        """``last_committed_seq``, asked again while the broker is away: a takeover often
        follows a broker's death, and the partition's new owner must wait for the log, not
        crash; after ``RECOVER_PATIENCE_SECONDS`` it gives up (and its supervisor restarts it)."""
        delay, deadline = RETRY_FIRST_SECONDS, time.monotonic() + RECOVER_PATIENCE_SECONDS
        while True:
            try:
                return last_committed_seq(self.settings, sorted(self.topics.values()), self.partition)
            except KafkaException as exc:
                error = exc.args[0]
                if error.fatal() or not error.retriable() and error.code() not in _AWAY \
                        or time.monotonic() + delay > deadline or self._stop:
                    raise OutboxError(f"partition {self.partition}: cannot read what was committed: {error}") from exc
                log.warning("partition %d: the log is not answering (%s); asked again in %.1f s",
                            self.partition, error, delay)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    def publish(self, outputs: list[Output], store: PartitionStore) -> None:
        """Commit the outputs in one transaction, then tell the store they are out.

        While the broker is away the transaction is aborted and tried again with
        backoff (an aborted transaction's outputs are never read, so sending them
        again keeps them exactly once); only a fatal error (fenced by a new owner of
        the partition) ends it.
        """
        delay = RETRY_FIRST_SECONDS
        while outputs:
            try:
                self.send(outputs)
                self.commit(outputs, store)
                return
            except OutboxError as exc:
                cause = exc.__cause__.args[0] if isinstance(exc.__cause__, KafkaException) else None
                if cause is None or cause.fatal() or self._stop:
                    raise
                log.warning("partition %d: %s; again in %.1f s", self.partition, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    def send(self, outputs: list[Output]) -> None:
        """Open a transaction and hand it the outputs (``commit`` ends it)."""
        try:
            self.producer.begin_transaction()
            for out in outputs:
                self.producer.produce(self.topics[out.kind], key=out.key, value=out.value, partition=self.partition,
                                      headers=[(SEQ_HEADER, str(out.seq).encode())])
        except KafkaException as exc:
            self._abort(outputs, exc)

    def commit(self, outputs: list[Output], store: PartitionStore) -> None:
        """Commit the open transaction (blocks for the broker; other partitions' commits may run
        meanwhile in other threads) and tell the store its outputs are out."""
        started = time.perf_counter()
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                self.producer.commit_transaction(60)
                break
            except KafkaException as exc:
                error = exc.args[0]
                if not error.retriable() or error.txn_requires_abort() or self._stop:
                    self._abort(outputs, exc)
                # the commit may be under way: it is asked again, never aborted (librdkafka's rule)
                log.warning("partition %d: commit not confirmed (%s); asked again in %.1f s",
                            self.partition, error, delay)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
        self.commit_seconds += time.perf_counter() - started
        self.commits += 1
        store.mark_published(outputs[-1].seq)

    # -- the committer thread ----------------------------------------------------

    def start(self, store: PartitionStore, on_committed: Callable[[int | None], None],
              on_error: Callable[[BaseException], None], free: threading.Event | None = None) -> None:
        """Commit submitted outputs in a thread of their own; ``on_committed(newest tick ns)``
        after each transaction, ``on_error`` if one fails (the worker must then stop: the
        outbox keeps the outputs for the next owner); ``free`` is set whenever the committer
        has nothing left to do."""
        self.offsets = dict(store.offsets)
        self._free = free
        self._thread = threading.Thread(target=self._run, args=(store, on_committed, on_error),
                                        name=f"cep-commit-p{self.partition}", daemon=True)
        self._thread.start()

    def submit(self, outputs: list[Output], offsets: dict[str, int] | None, newest: int | None = None) -> None:
        """Queue a read's outputs (written to the store's outbox already) with the input offsets
        whose outputs they complete (None: not yet) and their newest tick time; returns at once."""
        with self._wake:
            self._queue.append((outputs, offsets, newest))
            self._wake.notify()

    def idle(self) -> bool:
        """Nothing queued or in flight: a transaction started now would go out at once."""
        with self._wake:
            return not self._queue and not self._busy

    def pending(self) -> int:
        """Outputs submitted and not committed yet (queued or in the transaction in flight)."""
        with self._wake:
            return sum(len(o) for o, _, _ in self._queue) + (1 if self._busy else 0)

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until everything submitted is committed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._wake.wait(min(left, 0.1))
        return True

    def _run(self, store: PartitionStore, on_committed: Callable[[int | None], None],
             on_error: Callable[[BaseException], None]) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stop:
                    self._wake.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
                self._busy = True
            try:
                started = time.perf_counter()
                outputs = [o for item in batch for o in item[0]]
                newest = max((n for _, _, n in batch if n is not None), default=None)
                if outputs:
                    self.publish(outputs, store)
                    rest = self.pace() - (time.perf_counter() - started)
                    if rest > 0:  # still busy meanwhile: what the reader submits gathers (conflated)
                        time.sleep(rest)
                done = [offsets for _, offsets, _ in batch if offsets is not None]
                if done:
                    self.offsets = done[-1]
                if outputs:
                    on_committed(newest)
            except BaseException as exc:  # noqa: BLE001 - handed to the worker, which stops
                log.exception("partition %d: the committer failed", self.partition)
                on_error(exc)
                return
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()
                    if not self._queue and self._free is not None:
                        self._free.set()

    def _abort(self, outputs: list[Output], exc: KafkaException) -> None:
        try:
            self.producer.abort_transaction(30)
        except KafkaException:
            pass
        raise OutboxError(f"partition {self.partition}: committing outputs {outputs[0].seq}.."
                          f"{outputs[-1].seq} failed: {exc}") from exc

    def close(self) -> None:
        """Commit what was submitted (a revoked partition hands over a clean outbox), stop."""
        if self._thread is not None:
            if not self.drain():
                log.warning("partition %d: outputs still uncommitted at close; the next owner "
                            "republishes them from the outbox", self.partition)
            with self._wake:
                self._stop = True
                self._wake.notify_all()
            self._thread.join(10)
        self.producer.flush(10)
