"""``tickplant watch SOURCE [SYM ...]``: live updates of a table or analytic in the terminal.

A client of the gateway's WebSocket (``/v1/ws``, see ``gateway.streaming``)
through ``Client.subscribe``'s resuming subscription: it subscribes, prints the snapshot as a table, then each updated row as one
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
import sys
import time
from typing import Any, TextIO

from tickplant.textable import format_cell, format_ns

FIRST_CONNECT_TIMEOUT = 5.0  # a gateway that is not there is said at once
RESUME_TIMEOUT = 120.0  # a gateway restarting mid-watch is waited for this long


class WatchError(RuntimeError):
    """The gateway is unreachable or refused the subscription; the message says which."""


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

    def snapshot(self, source: str, syms: list[str], rows: list[dict[str, Any]]) -> None:
        named = " ".join(syms or ["(all syms)"])
        print(f"{source} {named}: snapshot, {len(rows)} rows", file=self.out)
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


def watch(url: str | list[str], source: str, syms: list[str], out: TextIO = sys.stdout, count: int = 0,
          seconds: float = 0, api_key: str | None = None) -> int:
    """Print the subscription until Ctrl-C, ``count`` rows, or ``seconds``; rows printed.

    The subscription is ``Client.subscribe``'s: a gateway that dies or restarts mid-watch is
    resumed from (the same one, or the next of ``url``'s list) with no row missed or repeated."""
    from gateway.client import GatewayError
    from gateway.subscribe_client import LiveSubscription

    urls = [u.strip() for u in url.split(",") if u.strip()] if isinstance(url, str) else list(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        sub = LiveSubscription(urls, headers, source, syms or None, connect_timeout=FIRST_CONNECT_TIMEOUT,
                               reconnect_timeout=RESUME_TIMEOUT, open_timeout=5)
    except GatewayError as exc:
        if exc.status in (502, 503, 504):
            raise WatchError(f"no gateway at {', '.join(urls)} ({exc.reason}); is it running? "
                             "'tickplant up' starts one, or give --url") from None
        raise WatchError(exc.reason) from None
    printer = Printer(out)
    warned = 0
    deadline = time.monotonic() + seconds if seconds else None
    try:
        while not count or printer.rows < count:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                break
            batch = sub.next(timeout=wait)
            for warning in sub.warnings[warned:]:
                print(f"warning: {warning}", file=sys.stderr)
            warned = len(sub.warnings)
            if batch is None:
                break
            if batch.kind == "snapshot":
                printer.snapshot(batch.source, sub.syms, batch.rows)
            else:
                printer.update(batch.rows, count)
    except GatewayError as exc:
        raise WatchError(exc.reason) from None
    except (KeyboardInterrupt, StopIteration):
        pass
    finally:
        sub.close()
    return printer.rows


def cmd_watch(args: argparse.Namespace) -> int:
    import os

    from tickplant.config import load_settings

    url = args.url or os.environ.get("TICKPLANT_GATEWAY_URL")
    if not url:
        settings = load_settings(getattr(args, "config", None))
        url = f"http://{settings.gateway_host}:{settings.gateway_port}"
    try:
        rows = watch(url, args.source, args.syms, count=args.count, seconds=args.seconds,
                     api_key=args.key or os.environ.get("TICKPLANT_API_KEY"))
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
    parser.add_argument("--url", help="the gateway, or several comma-separated to resume through "
                                      "(default: $TICKPLANT_GATEWAY_URL, else gateway_host:gateway_port)")
    parser.add_argument("--key", help="API key or token (default: $TICKPLANT_API_KEY)")
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
