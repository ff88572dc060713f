"""The Black-Scholes Lambda: options in the event, or a file of them on S3 priced as it streams.

The reference's two examples, on the plant's one formula (sinks/options.py):

- invoked with options: ``{"options": [{"spot", "strike", "years", "rate", "vol",
  "kind", "div"?, ...}]}`` answers ``{"options": [... each with price, delta, gamma,
  vega, theta, rho]}``; the reference's single payload (``EquityPrice``, ``Strike``,
  ``Rate``, ``Time``, ``Volatility``, ``CallPut``) is taken too;
- an S3 ObjectCreated event (or ``{"source": "s3://bucket/key"}``) for a CSV (with a
  header naming the same columns) or Parquet object: read batch by batch, priced, and
  written as Parquet to ``s3://bucket/greeks/<key>.parquet`` (or ``"output"``), every row
  in its order; rows that cannot be priced have null greeks and are listed in the
  answer with their row number. Objects under ``greeks/`` are never priced again (a
  trigger on the whole bucket would otherwise price its own output forever).

The options table of the plant is priced by the gateway's named query instead
(``GET /v1/black_scholes``, also through the serverless query function).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sinks.options import INPUTS, NUMBERS, OptionInputError, price_table, unpriceable
from sinks.store import HdbStore
from tickplant.config import Settings

OUTPUT_PREFIX = "greeks/"
PROBLEMS_SHOWN = 20
BLOCK_BYTES = 4 << 20  # CSV read this much at a time: memory stays bounded whatever the object's size
REFERENCE_FIELDS = {"EquityPrice": "spot", "Strike": "strike", "Time": "years", "Rate": "rate",
                    "Volatility": "vol", "CallPut": "kind"}


def handle(event: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """One invocation's answer; input that cannot be read is ``{"error": "..."}``."""
    try:
        if isinstance(event, dict) and event.get("Records"):
            return {"priced": [price_object(_s3_url(r), None, settings) for r in event["Records"]]}
        if isinstance(event, dict) and "source" in event:
            return price_object(str(event["source"]), event.get("output"), settings)
        if isinstance(event, dict) and "options" in event:
            return {"options": price_options(event["options"])}
        if isinstance(event, dict) and "EquityPrice" in event:
            return price_reference(event)
    except OptionInputError as exc:
        return {"error": str(exc)}
    raise_for = sorted(event) if isinstance(event, dict) else type(event).__name__
    return {"error": f"the event has none of Records (S3), source, options or EquityPrice; got {raise_for}"}


def price_options(options: Any) -> list[dict[str, Any]]:
    """Options as a list of objects -> each with its price and greeks (null if it cannot be
    priced, with ``error`` saying why)."""
    if not isinstance(options, list) or not all(isinstance(o, dict) for o in options):
        raise OptionInputError("options must be a list of objects with spot, strike, years, rate, vol, kind")
    if not options:
        return []
    names = list(dict.fromkeys(k for o in options for k in o))
    table = pa.table({n: _column([o.get(n) for o in options], as_text=n in INPUTS) for n in names})
    priced = price_table(table, keep=[n for n in names if n not in INPUTS])
    out = priced.to_pylist()
    for row, problem in unpriceable(priced):
        out[row]["error"] = problem
    return out


def price_reference(event: dict[str, Any]) -> dict[str, Any]:
    """The reference's payload (one option, kdb+'s field names) -> itself with the price
    (``BlackScholes_Option_Price``, as the reference answers) and the greeks."""
    option = {ours: event.get(theirs) for theirs, ours in REFERENCE_FIELDS.items()}
    option["kind"] = str(option["kind"] or "").upper()[:1]
    (priced,) = price_options([option])
    if "error" in priced:
        raise OptionInputError(priced["error"])
    return {**event, "BlackScholes_Option_Price": priced["price"],
            **{g: priced[g] for g in ("delta", "gamma", "vega", "theta", "rho")}}


def price_object(source: str, output: str | None, settings: Settings) -> dict[str, Any]:
    """Price every row of a CSV or Parquet object, a batch at a time, into a Parquet object."""
    bucket, key = _split(source)
    if key.startswith(OUTPUT_PREFIX) and output is None:
        return {"source": source, "skipped": f"objects under {OUTPUT_PREFIX} are this function's own output"}
    out_bucket, out_key = _split(output) if output else (bucket, f"{OUTPUT_PREFIX}{key.rsplit('.', 1)[0]}.parquet")
    fs = HdbStore(f"s3://{bucket}", settings.s3_endpoint, settings.s3_region).fs
    out_fs = fs if out_bucket == bucket else HdbStore(f"s3://{out_bucket}", settings.s3_endpoint, settings.s3_region).fs
    final, part = f"{out_bucket}/{out_key}", f"{out_bucket}/{out_key}.part"
    try:
        rows, unpriced, problems = _price_stream(fs, f"{bucket}/{key}", source, out_fs, part)
        out_fs.move(part, final)  # readers never see a half-written answer
    except BaseException:
        try:
            out_fs.delete_file(part)
        except OSError:
            pass
        raise
    return {"source": source, "output": f"s3://{final}", "rows": rows, "unpriceable": unpriced,
            "problems": problems}


def _price_stream(fs: Any, path: str, source: str, out_fs: Any, out_path: str) -> tuple[int, int, list[str]]:
    rows, unpriced = 0, 0
    problems: list[str] = []
    writer = None
    with _batches(fs, path, source) as batches, out_fs.open_output_stream(out_path) as sink:
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowInvalid, OSError) as exc:
                raise OptionInputError(f"{source}: unreadable after row {rows}: {str(exc).splitlines()[0]}") from None
            if batch is None:
                break
            table = pa.Table.from_batches([batch])
            priced = price_table(table, keep=[c for c in table.column_names if c not in INPUTS])
            found = unpriceable(priced)
            unpriced += len(found)
            problems.extend(f"row {rows + 1 + i}: {why}" for i, why in found[: max(0, PROBLEMS_SHOWN - len(problems))])
            if writer is None:
                writer = pq.ParquetWriter(sink, priced.schema, compression="zstd")
            writer.write_table(priced.cast(writer.schema))
            rows += batch.num_rows
        if writer is None:
            raise OptionInputError(f"{source}: no rows")
        writer.close()
    return rows, unpriced, problems


class _batches:
    """The object's record batches, read as they are needed (CSV: the input columns read as
    text, so that a bad value is that row's problem, not the whole file's)."""

    def __init__(self, fs: Any, path: str, source: str):
        self.fs, self.path, self.source = fs, path, source
        self.stream: Any = None

    def __enter__(self) -> Any:
        lower = self.path.lower()
        try:
            if lower.endswith(".parquet"):
                self.stream = self.fs.open_input_file(self.path)
                return iter(pq.ParquetFile(self.stream).iter_batches(batch_size=65536))
            if lower.endswith((".csv", ".csv.gz", ".txt")):
                self.stream = self.fs.open_input_stream(self.path, compression="detect")
                types = {c: pa.string() for c in (*NUMBERS, "kind")}
                return iter(pacsv.open_csv(self.stream, read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
                                      convert_options=pacsv.ConvertOptions(column_types=types)))
        except (OSError, pa.ArrowInvalid) as exc:
            raise OptionInputError(f"{self.source}: cannot be read: {str(exc).splitlines()[0]}") from None
        raise OptionInputError(f"{self.source}: neither .csv nor .parquet")

    def __exit__(self, *exc: Any) -> None:
        if self.stream is not None:
            self.stream.close()


def _column(values: list[Any], as_text: bool) -> pa.Array:
    """An input as text (read as a number by the pricing, a bad one that row's problem);
    any other field as it came, or as text if its values are of mixed types."""
    if not as_text:
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def _split(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise OptionInputError(f"{url!r} is not s3://bucket/key")
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket or not key:
        raise OptionInputError(f"{url!r} names no object (s3://bucket/key)")
    return bucket, key


def _s3_url(record: dict[str, Any]) -> str:
    """The object of one S3 event record (keys arrive URL-encoded, spaces as '+')."""
    try:
        bucket = record["s3"]["bucket"]["name"]
        key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])
    except (KeyError, TypeError):
        raise OptionInputError("an S3 event record without s3.bucket.name and s3.object.key") from None
    return f"s3://{bucket}/{key}"
