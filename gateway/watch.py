"""``tickplant watch SOURCE [SYM ...]``: live updates of a table or analytic in the terminal.

A client of the gateway's WebSocket (``/v1/ws``, see ``gateway.streaming``):
it subscribes, prints the snapshot as a table, then each updated row as one
aligned line under the same columns (a new header when a value needs wider
columns). Ctrl-C ends it cleanly; a gateway that does not answer is one
clear line and exit 2.

    $ tickplant watch bars AAPL MSFT
    $ tickplant watch trade AAPL --url http://gw:8700 --count 100

``add_commands(sub, common)`` registers the command on the CLI's subparsers;
``python -m gateway.watch`` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from tickplant.textable import format_cell, format_ns


class WatchError(RuntimeError):
    """The gateway is unreachable or refused the subscription; the message says which."""


def ws_url(url: str) -> str:
    """The WebSocket address of a gateway's base URL (http -> ws, https -> wss)."""
    base = url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://"):] + "/v1/ws"
    if base.startswith("http://"):
        return "ws://" + base[len("http://"):] + "/v1/ws"
    if base.startswith(("ws://", "wss://")):
        return base if base.endswith("/v1/ws") else base + "/v1/ws"
    return f"ws://{base}/v1/ws"


def _shown(column: str, value: Any) -> Any:
    """``time`` as the time of day to the nanosecond; everything else as it is."""
    if column == "time" and isinstance(value, int) and not isinstance(value, bool):
        return format_ns(value)[11:]
    return value


class Printer:
    """Aligned lines: the snapshot as a table, then one line per updated row."""

    def __init__(self, out: TextIO):
        self.out = out
        self.columns: list[str] = []
        self.widths: list[int] = []
        self.numeric: list[bool] = []
        self.rows = 0

    def _set_columns(self, row: dict[str, Any]) -> None:
        self.columns = list(row)
        self.widths = [max(len(c), 18 if c == "time" else 0) for c in self.columns]
        self.numeric = [isinstance(row[c], int | float) and not isinstance(row[c], bool) and c != "time"
                        for c in self.columns]

    def _line(self, cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(w) if num else cell.ljust(w)
            for cell, w, num in zip(cells, self.widths, self.numeric, strict=True)
        ).rstrip()

    def _header(self) -> None:
        print(self._line(self.columns), file=self.out)
        print(self._line(["-" * w for w in self.widths]), file=self.out)

    def snapshot(self, message: dict[str, Any]) -> None:
        rows = message.get("rows", [])
        syms = " ".join(message.get("syms") or ["(all syms)"])
        print(f"{message.get('source')} {syms}: snapshot, {len(rows)} rows", file=self.out)
        if message.get("warning"):
            print(f"  ({message['warning']})", file=self.out)
        if rows:
            self._set_columns(rows[0])
            cells = [[format_cell(_shown(c, r.get(c))) for c in self.columns] for r in rows]
            self.widths = [max([w] + [len(line[i]) for line in cells]) for i, w in enumerate(self.widths)]
            self._header()
            for line in cells:
                print(self._line(line), file=self.out)
        self.out.flush()

    def update(self, rows: list[dict[str, Any]], limit: int = 0) -> int:
        """Print ``rows`` (at most ``limit`` if given); how many were printed."""
        if limit:
            rows = rows[:max(0, limit - self.rows)]
        if not rows:
            return 0
        first = not self.columns
        if first:
            self._set_columns(rows[0])
        lines = [[format_cell(_shown(c, row.get(c))) for c in self.columns] for row in rows]
        wider = [max([w] + [len(cells[i]) for cells in lines]) for i, w in enumerate(self.widths)]
        if first or wider != self.widths:  # a header over the columns as wide as they now are
            self.widths = wider
            self._header()
        for cells in lines:
            print(self._line(cells), file=self.out)
        printed = len(lines)
        self.rows += printed
        self.out.flush()
        return printed


def watch(url: str, source: str, syms: list[str], out: TextIO = sys.stdout, count: int = 0,
          seconds: float = 0) -> int:
    """Print the subscription until Ctrl-C, ``count`` rows, or ``seconds``; rows printed."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
    from websockets.sync.client import connect

    address = ws_url(url)
    try:
        ws = connect(address, open_timeout=5, max_size=None)
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        raise WatchError(f"no gateway at {url} ({address}: {exc}); is it running? "
                         "'tickplant up' starts one, or give --url") from None
    printer = Printer(out)
    deadline = time.monotonic() + seconds if seconds else None
    try:
        ws.send(json.dumps({"op": "subscribe", "source": source, "syms": syms}))
        while not count or printer.rows < count:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                break
            try:
                message = json.loads(ws.recv(timeout=wait))
            except TimeoutError:
                break
            kind = message.get("type")
            if kind == "snapshot":
                printer.snapshot(message)
            elif kind == "update":
                printer.update(message.get("rows", []), count)
            elif kind == "error":
                raise WatchError(message.get("reason", "the gateway refused"))
            elif kind == "warning":
                print(f"warning: {message.get('reason')}", file=sys.stderr)
    except ConnectionClosed as exc:
        raise WatchError(f"the gateway closed the connection: {exc}") from None
    except KeyboardInterrupt:
        pass
    finally:
        ws.close()
    return printer.rows


def cmd_watch(args: argparse.Namespace) -> int:
    from tickplant.config import load_settings

    url = args.url
    if not url:
        settings = load_settings(getattr(args, "config", None))
        url = f"http://{settings.gateway_host}:{settings.gateway_port}"
    try:
        rows = watch(url, args.source, args.syms, count=args.count, seconds=args.seconds)
    except WatchError as exc:
        print(f"tickplant watch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    print(f"{rows:,} updates", file=sys.stderr)
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser | None = None) -> None:
    """Register ``watch`` on the CLI's subparsers (``tickplant.cli.build_parser``)."""
    parser = sub.add_parser("watch", parents=[common] if common is not None else [],
                            help="live updates of a table or analytic for some syms (via the gateway)")
    _arguments(parser)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a table (trade, quote) or an analytic (bars, analytics)")
    parser.add_argument("syms", nargs="*", help="syms to watch (none: every sym)")
    parser.add_argument("--url", help="the gateway (default http://gateway_host:gateway_port from the settings)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many rows (0: until Ctrl-C)")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    if not any(a.dest == "config" for a in parser._actions):
        parser.add_argument("--config", help="TOML settings file (default ./tickplant.toml)")
    parser.set_defaults(func=cmd_watch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tickplant watch", description="live updates of a table or analytic for some syms, through the gateway")
    _arguments(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
