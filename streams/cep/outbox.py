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
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaException, Producer

from ingest.logread import make_consumer, read_ranges, watermarks
from streams.cep.store import Output, PartitionStore
from tickplant.config import Settings

SEQ_HEADER = "cep-seq"
TAIL_WINDOW = 64


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
                    for key, value in msg.headers() or ():
                        if key == SEQ_HEADER:
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
            "transaction.timeout.ms": 60_000,
        }))
        try:
            self.producer.init_transactions(60)  # aborts and fences the previous owner's transaction
        except KafkaException as exc:
            raise OutboxError(f"partition {partition}: cannot start transactions as {transactional_id}: {exc}") from exc
        self.commits = 0
        self.commit_seconds = 0.0

    def recover(self, store: PartitionStore) -> int:
        """Publish the outbox entries Kafka has not committed; return how many were republished."""
        done = last_committed_seq(self.settings, sorted(self.topics.values()), self.partition)
        store.mark_published(done)
        todo = [o for o in store.pending() if o.seq > done]
        if todo:
            self.publish(todo, store)
        return len(todo)

    def publish(self, outputs: list[Output], store: PartitionStore) -> None:
        """Commit the outputs in one transaction, then tell the store they are out."""
        if outputs:
            self.send(outputs)
            self.commit(outputs, store)

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
        try:
            self.producer.commit_transaction(60)
        except KafkaException as exc:
            self._abort(outputs, exc)
        self.commit_seconds += time.perf_counter() - started
        self.commits += 1
        store.mark_published(outputs[-1].seq)

    def _abort(self, outputs: list[Output], exc: KafkaException) -> None:
        try:
            self.producer.abort_transaction(30)
        except KafkaException:
            pass
        raise OutboxError(f"partition {self.partition}: committing outputs {outputs[0].seq}.."
                          f"{outputs[-1].seq} failed: {exc}") from exc

    def close(self) -> None:
        self.producer.flush(10)
