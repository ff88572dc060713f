"""How the batch loader reads each vendor's files: ``[ingest]`` and ``[ingest.sources.NAME]``.

Vendors name columns their own way and stamp times in their own format, so
each file layout is a source in the configuration: the first source whose
``match`` glob fits an object's name (its key or path, or its last part)
says the table, the column mapping and how to read the time. An object no
source matches loads into the table named by ``--table`` with the columns
as the table names them, or is refused with a line saying which sources
were tried.

```toml
[ingest]
chunk_rows = 50000              # rows per Kafka transaction (and per resume step)
transaction_timeout_ms = 60000  # how long a killed loader's open transaction holds readers back
poll_seconds = 5                # tickplant ingest watch: how often a directory or prefix is listed

[ingest.sources.vendor_trades]
match = "*/trades_*.csv"
table = "trade"
columns = { ts = "time", ticker = "sym", px = "price", qty = "size", venue = "exchange" }
time_format = "%Y-%m-%d %H:%M:%S"   # "iso" (default), "epoch" (integers in time_unit), or strptime
time_unit = "ns"                    # epoch: s, ms, us or ns
timezone = "America/New_York"       # naive times are in this zone (default UTC)
drop = ["trade_id"]                 # file columns not loaded
```
"""

from __future__ import annotations

import fnmatch
import zoneinfo
from dataclasses import dataclass, field
from typing import Any

from tickplant.config import ConfigError, Settings

TIME_UNITS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
DEFAULT_CHUNK_ROWS = 50_000
DEFAULT_TRANSACTION_TIMEOUT_MS = 60_000
DEFAULT_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class Source:
    """One vendor file layout: which objects, which table, which columns, which clock."""

    name: str
    table: str
    match: str = "*"
    columns: dict[str, str] = field(default_factory=dict)  # vendor column -> table column
    drop: tuple[str, ...] = ()
    time_format: str = "iso"
    time_unit: str = "ns"
    timezone: str = "UTC"

    def matches(self, name: str) -> bool:
        base = name.rsplit("/", 1)[-1]
        return fnmatch.fnmatchcase(name, self.match) or fnmatch.fnmatchcase(base, self.match)

    @property
    def time_scale(self) -> int:
        return TIME_UNITS[self.time_unit]


@dataclass(frozen=True)
class IngestOptions:
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    transaction_timeout_ms: int = DEFAULT_TRANSACTION_TIMEOUT_MS
    poll_seconds: float = DEFAULT_POLL_SECONDS
    sources: tuple[Source, ...] = ()

    def source_for(self, name: str, table: str | None = None) -> Source:
        """The source an object loads as: the first that matches it (and ``table``, if given),
        else the table's own columns when ``table`` is given; else a one-line error."""
        for source in self.sources:
            if source.matches(name) and (table is None or source.table == table):
                return source
        if table:
            return Source(name=f"table:{table}", table=table)
        tried = ", ".join(f"{s.name} ({s.match})" for s in self.sources) or "none configured"
        raise ConfigError(f"{name}: no [ingest.sources] entry matches it (tried: {tried}); "
                          f"give --table to load it with the table's own column names")


_SOURCE_KEYS = {"match", "table", "columns", "drop", "time_format", "time_unit", "timezone"}
_OPTION_KEYS = {"chunk_rows", "transaction_timeout_ms", "poll_seconds", "sources"}


def _source(name: str, raw: Any, tables: set[str] | None) -> Source:
    where = f"[ingest.sources.{name}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table of settings")
    unknown = set(raw) - _SOURCE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; known: "
                          f"{', '.join(sorted(_SOURCE_KEYS))}")
    table = raw.get("table")
    if not isinstance(table, str) or not table:
        raise ConfigError(f"{where}: 'table' (the table its rows go to) is required")
    if tables is not None and table not in tables:
        raise ConfigError(f"{where}: table {table!r} is not a table of the plant ({', '.join(sorted(tables))})")
    columns = raw.get("columns", {})
    if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        raise ConfigError(f"{where}: 'columns' maps vendor names to table columns: {{ vendor = \"ours\" }}")
    unit = raw.get("time_unit", "ns")
    if unit not in TIME_UNITS:
        raise ConfigError(f"{where}: time_unit {unit!r} is not one of {', '.join(TIME_UNITS)}")
    zone = raw.get("timezone", "UTC")
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigError(f"{where}: timezone {zone!r} is not a known time zone (e.g. America/New_York)") from None
    drop = raw.get("drop", [])
    if not isinstance(drop, list):
        raise ConfigError(f"{where}: 'drop' is a list of column names")
    return Source(name=name, table=table, match=str(raw.get("match", "*")), columns=dict(columns),
                  drop=tuple(map(str, drop)), time_format=str(raw.get("time_format", "iso")),
                  time_unit=unit, timezone=zone)


def ingest_options(settings: Settings, tables: set[str] | None = None) -> IngestOptions:
    """The ``[ingest]`` table of the settings, checked; errors name the setting."""
    raw = settings.ingest or {}
    unknown = set(raw) - _OPTION_KEYS
    if unknown:
        raise ConfigError(f"[ingest]: unknown setting(s) {', '.join(sorted(unknown))}; known: "
                          f"{', '.join(sorted(_OPTION_KEYS))}")
    sources = raw.get("sources", {})
    if not isinstance(sources, dict):
        raise ConfigError("[ingest.sources]: each source is a table [ingest.sources.NAME]")
    try:
        chunk = int(raw.get("chunk_rows", DEFAULT_CHUNK_ROWS))
        timeout = int(raw.get("transaction_timeout_ms", DEFAULT_TRANSACTION_TIMEOUT_MS))
        poll = float(raw.get("poll_seconds", DEFAULT_POLL_SECONDS))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[ingest]: {exc}") from None
    if chunk < 1 or timeout < 1000 or poll <= 0:
        raise ConfigError("[ingest]: chunk_rows >= 1, transaction_timeout_ms >= 1000 and poll_seconds > 0 are required")
    return IngestOptions(chunk, timeout, poll, tuple(_source(n, s, tables) for n, s in sources.items()))
