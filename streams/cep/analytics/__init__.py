"""The analytics registry: a new per-sym analytic is one module here and one ``@register``.

An analytic keeps a small state of plain data (dicts, lists, numbers, strings,
None) per sym and folds that sym's rows
of one table into it, in log order, a batch at a time::

    @register
    class Spread(Analytic):
        name = "spread"
        table = "quote"                       # the table whose rows it reads
        fields = {"avg_spread": "double"}     # what it adds to each analytics record

        def initial(self) -> dict:
            return {"n": 0, "sum": 0.0}

        def update(self, state: dict, rows: list[dict]) -> None:
            for r in rows:
                state["n"] += 1
                state["sum"] += r["ask"] - r["bid"]

        def snapshot(self, state: dict) -> dict:
            return {"avg_spread": state["sum"] / state["n"] if state["n"] else None}

Every module of this package is imported by ``load()``, so the module's
presence is its registration. The worker stores the states in RocksDB with
the input offsets (exactly-once), resets them at the table's end-of-day
fence, and publishes ``snapshot()`` of every analytic of a sym whose rows
changed on ``rte.analytics``; the record's schema is built from ``fields``
(``analytics_schema()``) and checked against ``schemas/rte/analytics.avsc``
(``python -m streams.cep.analytics > schemas/rte/analytics.avsc`` rewrites it).

Why per table: an analytic that mixed two tables would see them interleaved
in whatever order the two topics happened to be read, and a replay of the
same log could then give a different answer. One table's partition is one
totally ordered log, so an analytic of one table is deterministic.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from typing import Any, ClassVar

AVRO_TYPES = ("double", "long", "string", "boolean")


class AnalyticError(ValueError):
    """An analytic is malformed or clashes with another; the message names it."""


class Analytic:
    """Base of every analytic; subclasses set the class attributes and the three methods."""

    name: ClassVar[str]
    table: ClassVar[str]
    fields: ClassVar[dict[str, str]]  # output field -> Avro primitive; every field may be null

    def initial(self) -> dict[str, Any]:
        """A sym's state before its first row of the day."""
        raise NotImplementedError

    def update(self, state: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        """Fold one sym's new rows (log order) into its state, in place."""
        raise NotImplementedError

    def snapshot(self, state: dict[str, Any]) -> dict[str, Any]:
        """The output fields' values now (None where there is nothing yet)."""
        raise NotImplementedError


REGISTRY: dict[str, type[Analytic]] = {}
BASE_FIELDS = ("time", "sym", "date")


def register(cls: type[Analytic]) -> type[Analytic]:
    """Add an analytic class to the registry (a class decorator); checks it is well formed."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    for attr in ("name", "table", "fields"):
        if not hasattr(cls, attr):
            raise AnalyticError(f"analytic {where} has no {attr!r} class attribute")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise AnalyticError(f"analytic name {cls.name!r} of {where} is already registered by "
                            f"{REGISTRY[cls.name].__module__}")
    taken = {f: n for n, other in REGISTRY.items() if other is not cls for f in other.fields}
    for field, kind in cls.fields.items():
        if kind not in AVRO_TYPES:
            raise AnalyticError(f"analytic {cls.name!r}: field {field!r} has type {kind!r}; "
                                f"one of {', '.join(AVRO_TYPES)}")
        if field in taken or field in BASE_FIELDS:
            raise AnalyticError(f"analytic {cls.name!r}: field {field!r} is already produced by "
                                f"{taken.get(field, 'every analytics record')!r}")
    REGISTRY[cls.name] = cls
    return cls


def load() -> dict[str, type[Analytic]]:
    """Import every module of this package (each registers its analytics); the registry."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return dict(sorted(REGISTRY.items()))


def instances(tables: set[str] | None = None) -> list[Analytic]:
    """One instance of every registered analytic (of these tables if given), by name."""
    return [cls() for _, cls in sorted(load().items()) if tables is None or cls.table in tables]


def analytics_schema() -> dict[str, Any]:
    """The Avro schema of an ``rte.analytics`` record: the base fields and every analytic's."""
    fields: list[dict[str, Any]] = [
        {"name": "time", "type": "long", "doc": "event time of the sym's latest row, ns since epoch UTC"},
        {"name": "sym", "type": "string"},
        {"name": "date", "type": "string", "doc": "the trading day the values are for"},
    ]
    for name, cls in load().items():
        for field, kind in cls.fields.items():
            fields.append({"name": field, "type": ["null", kind], "default": None,
                           "doc": f"analytic {name} ({cls.table})"})
    return {"type": "record", "name": "analytics", "namespace": "tickplant.rte",
            "doc": "Per-sym analytics of the real-time engine; one record per sym per update.",
            "fields": fields}


def check_schema(avro: dict[str, Any], source: str) -> None:
    """Fail, naming the fields, if the schema on disk does not carry the registered analytics."""
    want = {f["name"]: f["type"] for f in analytics_schema()["fields"]}
    have = {f["name"]: f["type"] for f in avro.get("fields", [])}
    missing = sorted(set(want) - set(have))
    wrong = sorted(f for f in set(want) & set(have) if want[f] != have[f])
    if missing or wrong:
        raise AnalyticError(
            f"{source} does not match the registered analytics (missing: {', '.join(missing) or '-'}; "
            f"different type: {', '.join(wrong) or '-'}); regenerate it with "
            f"'python -m streams.cep.analytics > {source}'")


def main() -> None:
    """Print the analytics schema (``python -m streams.cep.analytics``)."""
    json.dump(analytics_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
