"""``tickplant ingest watch``: load what lands in a directory or an S3 prefix, each object once.

Two ways to hear of new objects:
- polling: the directory or ``s3://bucket/prefix`` is listed every
  ``poll_seconds``; an object whose identity has a ``done`` load record is
  passed over, any other is loaded (a restarted watcher resumes a file it
  was killed in the middle of, after its last committed chunk). A file
  modified in the last two polls (at least 2 s) waits: it may still be being
  written, and a file that grows is another object (dropping files by
  rename, as most transfer tools do, loads them at the next poll);
- S3 event notifications through SQS (``--sqs URL``): each message's
  ``Records`` (S3's ObjectCreated events, also when wrapped by SNS) are
  loaded, then the message is deleted; a message whose load failed stays,
  and SQS delivers it again. Duplicate deliveries load nothing twice.

A failed object is logged on one line and tried again on the next round;
the watcher itself carries on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from ingest.batchload import BatchLoader, LoadResult
from ingest.objects import ObjectRef

log = logging.getLogger("tickplant.ingest")
SQS_WAIT_SECONDS = 5


@dataclass(frozen=True)
class S3Object:
    """One object an S3 event names."""

    url: str
    version: str = ""
    etag: str = ""


def s3_event_objects(event: dict[str, Any]) -> list[S3Object]:
    """The objects of an S3 event notification (``Records[].s3``; keys are URL-encoded, spaces as
    ``+``), also inside an SNS envelope (``Records[].Sns.Message``). Test events name none."""
    found: list[S3Object] = []
    for record in event.get("Records", ()) or ():
        if "Sns" in record:
            found += s3_event_objects(json.loads(record["Sns"]["Message"]))
            continue
        s3 = record.get("s3")
        if not s3 or not str(record.get("eventName", "ObjectCreated")).startswith("ObjectCreated"):
            continue
        try:
            bucket = s3["bucket"]["name"]
            key = unquote_plus(s3["object"]["key"])
        except (KeyError, TypeError):
            raise ValueError(f"S3 event record without s3.bucket.name and s3.object.key: {record!r:.200}") from None
        obj = s3["object"]
        found.append(S3Object(f"s3://{bucket}/{key}", obj.get("versionId") or "", (obj.get("eTag") or "").strip('"')))
    return found


def poll_once(loader: BatchLoader, source: str, on_result: Callable[[ObjectRef, LoadResult | Exception], None],
              stop: threading.Event | None = None) -> int:
    """Load every object under ``source`` not loaded yet; how many were loaded now."""
    loader.index.catch_up()
    settle_ns = int(max(2.0, 2 * loader.options.poll_seconds) * 1e9)
    done = {(r.url, r.etag) for r in loader.index.records.values() if r.done}
    count = 0
    for ref in loader.store.listing(source):
        if stop is not None and stop.is_set():
            break
        if ref.is_s3 and (ref.url, ref.etag) in done:
            continue  # loaded (in some version with these bytes): no HEAD needed
        if not ref.is_s3 and time.time_ns() - ref.mtime_ns < settle_ns:
            continue  # maybe still being written: a file's identity is its size and mtime
        if ref.is_s3:
            ref = loader.store.resolve(ref.url, etag=ref.etag)  # its version, in a versioned bucket
        if loader.loaded(ref) is not None:
            continue
        try:
            result = loader.load(ref)
        except Exception as exc:  # noqa: BLE001 - one object's trouble never stops the watcher
            on_result(ref, exc)
            continue
        on_result(ref, result)
        count += not result.already
    return count


def sqs_messages(client: Any, queue_url: str, stop: threading.Event,
                 wait_seconds: int = SQS_WAIT_SECONDS) -> Iterator[dict[str, Any]]:
    while not stop.is_set():
        reply = client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds)
        yield from reply.get("Messages", ())


def sqs_client(queue_url: str, endpoint: str = "", region: str = "") -> Any:
    """A client for the queue's region (an AWS queue URL names it; else ``region``)."""
    import boto3

    if queue_url.startswith("https://sqs."):
        region = queue_url.split(".")[1]
    return boto3.client("sqs", endpoint_url=endpoint or None, region_name=region or None)


def watch(loader: BatchLoader, source: str, stop: threading.Event,
          on_result: Callable[[ObjectRef, LoadResult | Exception], None],
          sqs_url: str = "", sqs_endpoint: str = "", sqs_wait_seconds: int = SQS_WAIT_SECONDS) -> None:
    """Poll ``source`` (or follow the SQS queue) until ``stop`` is set."""
    if not sqs_url:
        while not stop.is_set():
            try:
                poll_once(loader, source, on_result, stop)
            except Exception as exc:  # noqa: BLE001 - the listing failed (S3 away): next round
                log.warning("listing %s failed: %s", source, exc)
            stop.wait(loader.options.poll_seconds)
        return
    client = sqs_client(sqs_url, sqs_endpoint, loader.settings.s3_region)
    prefix = source[len("s3://"):] if source.startswith("s3://") else ""
    for message in sqs_messages(client, sqs_url, stop, sqs_wait_seconds):
        try:
            objects = s3_event_objects(json.loads(message["Body"]))
        except ValueError as exc:
            log.warning("SQS message %s is not an S3 event (%s); left on the queue", message["MessageId"], exc)
            continue
        failed = False
        for obj in objects:
            if prefix and not obj.url[len("s3://"):].startswith(prefix):
                continue  # another prefix's object: not this watcher's
            try:
                result = loader.load(obj.url, version=obj.version, etag=obj.etag)
            except Exception as exc:  # noqa: BLE001 - redelivered by SQS
                on_result(ObjectRef(obj.url, 0, obj.version, obj.etag), exc)
                failed = True
                continue
            on_result(result_ref(result), result)
        if not failed:
            client.delete_message(QueueUrl=sqs_url, ReceiptHandle=message["ReceiptHandle"])


def result_ref(result: LoadResult) -> ObjectRef:
    r = result.record
    return ObjectRef(r.url, r.size, r.version, r.etag)
