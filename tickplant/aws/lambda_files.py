"""The S3-triggered Lambda: each object an ObjectCreated event names goes through the batch loader.

AWS calls the handler with S3's event notification (``Records[].s3.bucket.name``,
``Records[].s3.object.key`` URL-encoded, ``versionId`` in a versioned bucket,
``eTag``); the function's settings come from its environment
(``TICKPLANT_BOOTSTRAP_SERVERS``, ``TICKPLANT_KAFKA_CLIENT_CONFIG`` for MSK,
``TICKPLANT_INGEST`` as JSON for the sources, ...). Each object is loaded
through the same exactly-once path as ``tickplant ingest load``: S3 delivers
events at least once and Lambda retries a failed invocation, and neither
doubles a row. A failure raises, so Lambda retries (or sends the event to the
function's failure destination); objects loaded before it stay loaded once.

The loader is kept between invocations of a warm container (its load index
and Kafka connections).
"""

from __future__ import annotations

from typing import Any

from ingest.batchload import BatchLoader
from ingest.batchwatch import s3_event_objects
from tickplant.config import Settings, load_settings

_loaders: dict[str, BatchLoader] = {}


def _loader(settings: Settings) -> BatchLoader:
    key = repr(sorted(settings.child_env().items()))
    loader = _loaders.get(key)
    if loader is None:
        loader = _loaders[key] = BatchLoader(settings)
    return loader


def s3_object_created(event: dict[str, Any], context: Any = None, settings: Settings | None = None) -> dict[str, Any]:
    """Load every object of the event once; a summary per object (loaded now or before)."""
    loader = _loader(settings or load_settings())
    objects = []
    for obj in s3_event_objects(event):
        result = loader.load(obj.url, version=obj.version, etag=obj.etag)
        r = result.record
        objects.append({
            "object": r.url, "version": r.version, "etag": r.etag, "table": r.table,
            "status": "already loaded" if result.already else "loaded",
            "rows": r.rows, "rejected": r.rejected, "published_now": result.published,
            "resumed_after_chunk": result.resumed_at, "sha256": r.checksum,
        })
    return {"objects": objects, "loaded": sum(o["status"] == "loaded" for o in objects),
            "rows": sum(o["published_now"] for o in objects),
            "request_id": getattr(context, "aws_request_id", "")}
