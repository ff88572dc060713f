"""The engine's own topics: its derived outputs and its group's membership topic.

An engine named ``main`` (the default) writes ``<prefix>rte.bars`` and
``<prefix>rte.analytics``; another engine ``E`` (a second copy, a replay
check) writes ``<prefix>rte.E.bars`` and ``<prefix>rte.E.analytics``. The
derived topics have as many partitions as the trade topic: partition p of
them holds the syms of input partition p and is written by its owner only.
"""

from __future__ import annotations

from confluent_kafka.admin import NewTopic

from ingest.schemas import SchemaCatalog
from ingest.topics import TopicError, TopicNames, create_topics, ensure_topics
from tickplant.config import Settings

DEFAULT_ENGINE = "main"


OUTPUTS = ("bars", "analytics")


def output_of(settings: Settings, topic: str) -> str | None:
    """``bars`` or ``analytics`` if ``topic`` is an engine's output topic (by the naming
    above, whichever engine), else None."""
    stem = TopicNames(settings.topic_prefix).derived("")
    if not topic.startswith(stem):
        return None
    name = topic[len(stem):]
    output = name.rsplit(".", 1)[-1]
    engine = name[:-len(output)].rstrip(".")
    if output in OUTPUTS and (not engine or all(c.isalnum() or c in "-_" for c in engine)):
        return output
    return None


class CepTopics:
    def __init__(self, settings: Settings, engine: str = DEFAULT_ENGINE):
        if not engine or not all(c.isalnum() or c in "-_" for c in engine):
            raise ValueError(f"engine name {engine!r} must be letters, digits, '-' or '_'")
        names = TopicNames(settings.topic_prefix)
        self.engine = engine
        stem = "" if engine == DEFAULT_ENGINE else f"{engine}."
        self.outputs = {output: names.derived(f"{stem}{output}") for output in OUTPUTS}
        self.assignment = f"{settings.topic_prefix}_tp.cep.{engine}.assignment"
        self.group = f"{settings.topic_prefix}tickplant-cep-{engine}"

    def transactional_id(self, settings: Settings, partition: int) -> str:
        return f"{settings.topic_prefix}tickplant-cep-{self.engine}-p{partition:03d}"

    def ensure(self, settings: Settings, catalog: SchemaCatalog, timeout: float = 30.0) -> int:
        """Create the plant's topics and the engine's if missing; return the partition count."""
        counts = ensure_topics(settings, catalog, timeout)
        names = TopicNames(settings.topic_prefix)
        inputs = {counts[names.table(t)] for t in ("trade", "quote") if t in catalog.tables}
        if len(inputs) != 1:
            raise TopicError(f"the trade and quote topics must have the same partition count for the CEP "
                             f"(a partition is a set of syms in both); they have {sorted(inputs)}")
        parts = inputs.pop()
        retention = str(settings.retention_hours * 3600 * 1000)
        rf = settings.replication_factor
        wanted = {topic: NewTopic(topic, parts, rf, config={"retention.ms": retention})
                  for topic in self.outputs.values()}
        wanted[self.assignment] = NewTopic(self.assignment, parts, rf)
        have = create_topics(settings, wanted, timeout)
        wrong = {t: n for t, n in have.items() if n != parts}
        if wrong:
            raise TopicError(f"CEP topics {wrong} must have {parts} partitions like the table topics")
        return parts
