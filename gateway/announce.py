"""A gateway tells the plant where it is: its record on the metadata topic.

RDB and CEP workers announce themselves so the gateway can route to them;
gateways announce themselves so that operators (``tickplant status``) see
every one of them, on whichever host, with what it is doing. Clients are
given the gateways' addresses (they hold no state a client must follow).
"""

from __future__ import annotations

import os
import threading

from ingest.metadata import MetadataPublisher
from ingest.node_record import GatewayRecord
from tickplant.config import Settings

EVERY_SECONDS = 2.0


class Announcer(threading.Thread):
    """Publishes ``{"kind": "gateway", "url", "pid", "queries": ...}`` every few seconds
    until stopped, then removes the record (a tombstone)."""

    def __init__(self, settings: Settings, node_id: str, url: str, load: dict | None = None):
        super().__init__(name=f"announce-{node_id}", daemon=True)
        self.publisher = MetadataPublisher(settings, node_id)
        self.url = url
        self.load = load if load is not None else {}
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.publisher.publish(GatewayRecord(node=self.publisher.node_id, url=self.url, pid=os.getpid(),
                                                     load=dict(self.load)))
            except Exception:  # noqa: BLE001 - the broker away: announce again next time
                pass
            self._stop.wait(EVERY_SECONDS)

    def stop(self) -> None:
        self._stop.set()
        self.join(5)
        try:
            self.publisher.goodbye()
        except Exception:  # noqa: BLE001 - the record goes stale by itself
            pass
