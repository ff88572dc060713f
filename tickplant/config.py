"""The plant's settings, in one place.

Read in this order, later winning: the defaults below, a TOML file
(``tickplant.toml`` in the working directory, or ``--config PATH`` /
``TICKPLANT_CONFIG``), then environment variables ``TICKPLANT_<FIELD>``
(for example ``TICKPLANT_BOOTSTRAP_SERVERS=b-1.msk...:9098``).

``bootstrap_servers`` empty means "run the embedded broker"; set it to use
docker-compose's Kafka or Amazon MSK instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tickplant.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
HDB_CODECS = ("lz4", "zstd", "snappy", "none")  # hdb_compression: the Parquet codecs pyarrow writes


@dataclass(frozen=True)
class Settings:
    # where the embedded broker, pid files and logs live
    data_dir: Path = Path(".tickplant")
    # Kafka: empty -> embedded broker on 127.0.0.1:kafka_port
    bootstrap_servers: str = ""
    kafka_port: int = 9092
    kafka_controller_port: int = 0  # 0 -> kafka_port + 1
    kafka_heap: str = "1g"
    # embedded brokers: 1, or a KRaft cluster of several on kafka_port, +2, +4, ... (each
    # with its controller port +1), as MSK gives: topics replicated 3 ways, 2 in sync
    kafka_brokers: int = 1
    # extra librdkafka settings for every client (security.protocol, sasl.*, ...)
    kafka_client_config: dict[str, str] = field(default_factory=dict)
    topic_prefix: str = ""
    partitions: int = 4
    replication_factor: int = 1
    retention_hours: int = 24 * 7
    # Avro schemas: one .avsc file per table
    schemas_dir: Path = REPO_ROOT / "schemas"
    schema_registry_url: str = ""
    # publishing: "batch" (blocks every batch_interval_ms) or "zero" (zero-latency)
    publish_mode: str = "batch"
    batch_interval_ms: int = 100
    # zero-latency mode: how long the producer may hold rows to send them in one request (each
    # row stays a message of its own); 0 -> a request per row at once, which on a busy broker
    # costs it twice the CPU and more latency at p99 than it saves (README, Performance)
    zero_linger_ms: float = 1.0
    max_block_rows: int = 5000
    # end of day: rollover wall-clock time in eod_timezone
    eod_time: str = "00:00"
    eod_timezone: str = "UTC"
    # the synthetic feed started by `tickplant up`
    feed_syms: int = 50
    feed_rate: float = 1000.0
    feed_seed: int = 1
    # the RDB: worker processes, their first HTTP port, each one's memory budget
    # where the RDB and CEP workers' views listen (node_host; 0.0.0.0 for every interface)
    # and the address they announce on the metadata topic for the gateway and their peers
    # to reach them (advertise_host; empty: node_host, or this host's name when that is a
    # wildcard): on many hosts, each its own
    node_host: str = "127.0.0.1"
    advertise_host: str = ""
    rdb_workers: int = 1
    # hot-hot: this many independent copies of the RDB (replica groups a, b, ...), each of
    # rdb_workers workers; the gateway prefers the least busy and fails over between them
    rdb_replicas: int = 1
    rdb_port: int = 8711
    rdb_memory_mb: int = 1024
    # the complex-event engine (streams/cep): workers, their first HTTP port, bar width and
    # how long after a bar's end its close waits for stragglers
    cep_workers: int = 1
    cep_port: int = 8721
    cep_bar_seconds: float = 60.0
    cep_grace_seconds: float = 1.0
    # gateway: where it listens; the users file (API keys, bearer tokens and grants;
    # empty -> one anonymous user allowed everything, for a local plant); per query a
    # row limit and a timeout in seconds (a request may ask for less, never more)
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8700
    gateway_users_file: str = ""
    gateway_row_limit: int = 1_000_000
    gateway_timeout_s: float = 30.0
    # ClickHouse's HTTP interface of the gateway (gateway/chhttp.py), for ClickHouse drivers and
    # Grafana: its port on gateway_host; 0: not served (ClickHouse itself uses 8123)
    clickhouse_http_port: int = 0
    # per user and per query, so that one caller cannot take the gateway from the others:
    # queries one user runs at once (429 past it), a statement's size (413), one query's
    # memory in ClickHouse and its answer's size (413)
    gateway_user_queries: int = 2
    gateway_max_statement_bytes: int = 65536
    gateway_max_memory_mb: int = 4096
    gateway_max_result_mb: int = 1024
    # aggregates over today's rows run on the RDB nodes, the gateway merging their states
    # (gateway/pushdown.py), once the RDB holds this many rows of the table (below it, the
    # rows cost less to move than a second engine query); off: every row comes over
    gateway_pushdown: bool = True
    gateway_pushdown_rows: int = 100_000
    # the secret every plant process sends to the RDB and CEP views (tickplant/internal.py);
    # empty: one made per data directory (fine on one host; set it on many)
    internal_secret: str = ""
    # history (sinks/): where the HDB's Parquet partitions live, a local directory
    # (empty -> <data_dir>/hdb) or "s3://bucket/prefix"; s3_endpoint for a non-AWS
    # S3 (SeaweedFS, MinIO: "http://host:port"), credentials from the AWS_* variables
    hdb_root: str = ""
    # the tickerplant log archived beyond Kafka's retention (sinks/archive.py): each closed
    # day's messages as Avro container files, a directory or "s3://bucket/prefix"; empty ->
    # beside the HDB (<hdb_root>/../archive, <data_dir>/archive by default); "off": none kept
    archive_root: str = ""
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    # HDB queries: "chdb://" (embedded ClickHouse) or "http(s)://host:8123" (a server); or
    # a pool of them, comma-separated in clickhouse_urls (each query on the least busy one
    # that answers; chdb:// counts as one)
    clickhouse_url: str = "chdb://"
    clickhouse_urls: str = ""
    # the PDB's memory budget for sorting a day at end of day (larger days sort externally)
    pdb_memory_mb: int = 2048
    # the HDB files' codec: "lz4" (ClickHouse's own default: the fastest to read), "zstd"
    # (about 0.6x the bytes: cheaper on S3 where reads are bound by the network), "snappy", "none"
    hdb_compression: str = "lz4"
    # what a reader of the log accepts (ingest/validate.py): a sym's length in UTF-8 bytes, and
    # how far past the close of its log day a row's time stamp may be
    sym_max_bytes: int = 64
    max_future_seconds: float = 3600.0
    # AWS (tickplant/aws): this node's EC2 instance id (empty: asked of the instance itself on
    # EC2, none elsewhere), the plant's name in CloudWatch, the AWS region and endpoint
    # (empty: boto3's own chain; an endpoint for moto or a VPC endpoint)
    instance_id: str = ""
    plant_name: str = "tickplant"
    aws_region: str = ""
    aws_endpoint_url: str = ""
    cloudwatch_namespace: str = "Tickplant"
    cloudwatch_interval_s: float = 60.0
    # the RDB scaler (tickplant scaler): the Auto Scaling group of the RDB workers of replica
    # scaler_replica, its bounds, how often it looks, how many periods a metric must stay over
    # (under) its threshold before it scales out (in), the quiet time after each, and how long
    # a leaving node's partitions may take to be caught up elsewhere
    scaler_group: str = ""
    scaler_replica: str = "a"
    scaler_min: int = 1
    scaler_max: int = 4
    scaler_period_s: float = 60.0
    scaler_out_periods: int = 3
    scaler_in_periods: int = 10
    scaler_out_cooldown_s: float = 300.0
    scaler_in_cooldown_s: float = 900.0
    scaler_lag_high: float = 100_000.0
    scaler_lag_low: float = 1_000.0
    scaler_memory_high_pct: float = 75.0
    scaler_memory_low_pct: float = 40.0
    scaler_cpu_high_pct: float = 70.0
    scaler_cpu_low_pct: float = 25.0
    scaler_handover_timeout_s: float = 900.0
    # the batch loader (ingest/sources.py): [ingest] options and [ingest.sources.NAME] per
    # vendor file layout (match, table, columns, time_format, time_unit, timezone)
    ingest: dict[str, Any] = field(default_factory=dict)
    # observability (tickplant/metrics.py, tickplant/logs.py): the port of the Prometheus
    # listener of a process without an HTTP server of its own (the PDB, the end-of-day timer,
    # the feed, `tickplant up`'s own process; `up` gives its PDB this + 1); 0: none. The RDB,
    # CEP and gateway answer /metrics on their own port. Logs as "text" or "json" (a line each)
    metrics_port: int = 0
    log_format: str = "text"

    @property
    def embedded(self) -> bool:
        return not self.bootstrap_servers

    @property
    def bootstrap(self) -> str:
        if self.bootstrap_servers:
            return self.bootstrap_servers
        return ",".join(f"127.0.0.1:{self.broker_port(n)}" for n in range(1, self.kafka_brokers + 1))

    def broker_port(self, node: int) -> int:
        """The client port of embedded broker ``node`` (1, 2, ...); its controller's is +1."""
        return self.kafka_port + 2 * (node - 1)

    @property
    def advertised_host(self) -> str:
        """The address this process's views are announced at (see ``advertise_host``)."""
        if self.advertise_host:
            return self.advertise_host
        if self.node_host in ("", "0.0.0.0", "::"):  # every interface: this host's own address
            try:
                return socket.gethostbyname(socket.gethostname())
            except OSError:
                return socket.getfqdn()
        return self.node_host

    @property
    def clickhouse_endpoints(self) -> list[str]:
        """The HDB query pool's endpoints: ``clickhouse_urls``, else ``clickhouse_url``."""
        return [u.strip() for u in self.clickhouse_urls.split(",") if u.strip()] or [self.clickhouse_url]

    def node_id(self, role: str, port: int) -> str:
        """A node's default id, unique wherever it runs: its role, announced address and port
        (``rdb-10.0.1.12:8711``), so replicas of a scaled service never share one."""
        return f"{role}-{self.advertised_host}:{port}"

    def node_url(self, port: int) -> str:
        """``http://<advertised host>:<port>``, an IPv6 address in brackets."""
        host = self.advertised_host
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def controller_port(self) -> int:
        return self.kafka_controller_port or self.kafka_port + 1

    def kafka_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka settings for one client: the cluster, security, then the caller's.

        librdkafka's own log is silenced (log_level 0): connection trouble
        reaches callers as exceptions and delivery errors, said once, in context.
        """
        from tickplant.kafkaauth import librdkafka_security  # it reads these settings

        return {"bootstrap.servers": self.bootstrap, "log_level": 0, **librdkafka_security(self), **extra}

    def child_env(self) -> dict[str, str]:
        """TICKPLANT_* variables that give a child process these same settings."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                value = json.dumps(value)  # JSON: a value may hold commas and '=' (a password)
            out[f"TICKPLANT_{f.name.upper()}"] = str(value)
        return out

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _coerce(name: str, raw: Any, target: Any, source: str) -> Any:
    kind = target.type if isinstance(target.type, str) else str(target.type)
    try:
        if kind == "dict[str, Any]":  # a nested table ([ingest]): kept as TOML gave it, or JSON
            value = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(value, dict):
                raise ValueError("not a table")
            return value
        if "dict" in kind:
            if isinstance(raw, str) and raw.lstrip().startswith("{"):
                raw = json.loads(raw)  # a JSON object: for values with commas (a SASL password)
                if not isinstance(raw, dict):
                    raise ValueError("not a JSON object")
            if isinstance(raw, dict):
                return {str(k): str(v) for k, v in raw.items()}
            pairs = [p.split("=", 1) for p in str(raw).split(",") if p.strip()]
            return {k.strip(): v.strip() for k, v in pairs}
        if kind == "Path":
            return Path(str(raw)).expanduser()
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: setting {name!r} = {raw!r} is not a valid {kind}") from exc


def load_settings(config_path: str | Path | None = None, **overrides: Any) -> Settings:
    """Defaults, then the TOML file, then TICKPLANT_* variables, then explicit overrides."""
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    path = Path(config_path or os.environ.get("TICKPLANT_CONFIG") or "tickplant.toml")
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        for key, raw in data.items():
            if key not in fields:
                raise ConfigError(f"{path}: unknown setting {key!r}; known: {', '.join(fields)}")
            values[key] = _coerce(key, raw, fields[key], str(path))
    elif config_path:
        raise ConfigError(f"config file {path} does not exist")
    for name, f in fields.items():
        env = f"TICKPLANT_{name.upper()}"
        if env in os.environ:
            values[name] = _coerce(name, os.environ[env], f, f"environment {env}")
    for name, raw in overrides.items():
        if raw is not None:
            values[name] = _coerce(name, raw, fields[name], "command line")
    if values.get("kafka_brokers", 1) > 1 and "replication_factor" not in values:
        values["replication_factor"] = min(3, values["kafka_brokers"])  # a cluster's topics are replicated
    settings = Settings(**values)
    if settings.kafka_brokers < 1:
        raise ConfigError(f"kafka_brokers must be at least 1, not {settings.kafka_brokers}")
    if settings.publish_mode not in ("batch", "zero"):
        raise ConfigError(f"publish_mode must be 'batch' or 'zero', not {settings.publish_mode!r}")
    if settings.log_format not in ("text", "json"):
        raise ConfigError(f"log_format must be 'text' or 'json', not {settings.log_format!r}")
    if not 0 <= settings.metrics_port < 65536:
        raise ConfigError(f"metrics_port must be a port number (0: no listener), not {settings.metrics_port}")
    if settings.hdb_compression not in HDB_CODECS:
        raise ConfigError(f"hdb_compression must be one of {', '.join(HDB_CODECS)}, not {settings.hdb_compression!r}")
    if not 0 <= settings.zero_linger_ms <= 1000:
        raise ConfigError(f"zero_linger_ms must be between 0 and 1000, not {settings.zero_linger_ms!r}")
    return settings
