"""``tickplant sql``: an interactive SQL console on the gateway, the q prompt of this plant.

    $ tickplant sql
    tp> SELECT sym, count() AS n FROM trade
    ... WHERE date = today() GROUP BY sym;
    sym   n
    ...
    3 row(s)
    Time: 41.2 ms
    tp> \\format csv
    tp> \\q

A statement runs once its line ends with ``;`` (Enter before that starts a
new line), so a query can be pasted or typed over several lines; a line
beginning with ``\\`` is a console command (``\\?`` lists them). Tab completes
table names, columns (``trade.`` then Tab: trade's columns) and the functions
the gateway allows (``gateway/functions.tsv``); the history is kept in a file
(``--history``, default ``~/.tickplant_sql_history``). An error is one line and
the console goes on. With stdin not a terminal (``echo "SELECT 1;" | tickplant
sql``) the statements are read and answered in turn, nothing prompted, the
times and notes on stderr so the answers can be redirected; the exit status is 1 if any
statement failed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from gateway.cli import print_answer
from gateway.client import Client, GatewayError
from tickplant.cliargs import settings_from_args
from tickplant.textable import format_table

FORMATS = ("table", "csv", "json")
KEYWORDS = ("SELECT", "FROM", "WHERE", "GROUP BY", "ORDER BY", "LIMIT", "HAVING", "ASOF", "JOIN", "LEFT",
            "INNER", "ON", "USING", "AND", "OR", "NOT", "IN", "AS", "WITH", "UNION ALL", "DISTINCT", "BETWEEN",
            "LIKE", "DESC", "ASC", "CASE", "WHEN", "THEN", "ELSE", "END", "OVER", "PARTITION BY", "today()",
            "yesterday()")
COMMANDS = {
    "\\tables": "tables you may read, their columns and the days held",
    "\\d TABLE": "a table's columns and types",
    "\\format table|csv|json": "how answers are printed",
    "\\q": "quit (also Ctrl-D, quit, exit)",
    "\\?": "this list",
}
DEFAULT_HISTORY = "~/.tickplant_sql_history"
_WORD = re.compile(r"[\\\w.]*$")


def split_statements(text: str) -> tuple[list[str], str]:
    """The complete statements of ``text`` (each ended by a ``;`` outside quotes and
    comments) and what is left after the last one."""
    statements, start, i, quote = [], 0, 0, ""
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"`":
            quote = c
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = len(text) if end < 0 else end + 1
        elif c == ";":
            if text[start:i].strip():
                statements.append(text[start:i].strip())
            start = i + 1
        i += 1
    return statements, text[start:]


class Console:
    """Runs statements and commands against one gateway client, printing to stdout."""

    def __init__(self, client: Client, fmt: str = "table", max_rows: int = 50, notes: TextIO | None = None):
        self.client = client
        self.fmt = fmt
        self.max_rows = max_rows
        self.notes = notes  # where times and confirmations go; None: with the answers
        self.failed = 0
        self._tables: list[dict[str, Any]] | None = None

    def _print(self, text: str = "", error: bool = False) -> None:
        print(text, file=sys.stderr if error else sys.stdout, flush=True)

    def tables(self) -> list[dict[str, Any]]:
        if self._tables is None:
            try:
                self._tables = self.client.tables()
            except GatewayError:
                return []  # completion without tables until the gateway answers
        return self._tables

    def sql(self, statement: str) -> bool:
        started = time.perf_counter()
        try:
            table = self.client.sql(statement)
        except GatewayError as exc:
            self.failed += 1
            self._print(f"error: {exc.status} {exc.reason}".replace("\n", " "), error=True)
            return False
        elapsed = time.perf_counter() - started
        print_answer(table, self.fmt, self.max_rows)
        print(f"Time: {elapsed * 1000:.1f} ms", file=self.notes or sys.stdout, flush=True)
        return True

    def command(self, line: str) -> bool:
        """A backslash command; False for quit."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("\\q", "\\quit"):
            return False
        if name == "\\format":
            if arg not in FORMATS:
                self._fail(f"\\format takes one of {', '.join(FORMATS)}, not {arg!r}")
            else:
                self.fmt = arg
                print(f"format: {arg}", file=self.notes or sys.stdout, flush=True)
        elif name in ("\\tables", "\\dt") or (name == "\\d" and not arg):
            self._tables = None
            rows = [[t["table"], len(t["columns"]), _days(t.get("rdb_dates")), _days(t.get("hdb_dates"))]
                    for t in self.tables()]
            self._print(format_table(["table", "columns", "today (RDB)", "history (HDB)"], rows))
        elif name == "\\d":
            found = [t for t in self.tables() if t["table"] == arg]
            if not found:
                self._fail(f"no table {arg!r} you may read; tables: {', '.join(t['table'] for t in self.tables())}")
            else:
                self._print(format_table(["column", "type"], [[c["name"], c["type"]] for c in found[0]["columns"]]))
        elif name in ("\\?", "\\h", "\\help"):
            self._print(format_table(["command", "does"], [[c, d] for c, d in COMMANDS.items()]))
        else:
            self._fail(f"unknown command {name}; \\? lists them")
        return True

    def _fail(self, reason: str) -> None:
        self.failed += 1
        self._print(f"error: {reason}", error=True)

    def run(self, text: str) -> bool:
        """One input: commands and statements; False once the user asked to quit."""
        stripped = text.strip()
        if stripped.lower() in ("quit", "exit", "quit;", "exit;"):
            return False
        if stripped.startswith("\\"):
            return self.command(stripped)
        statements, rest = split_statements(text)
        if rest.strip():
            statements.append(rest.strip())
        for statement in statements:
            self.sql(statement)
        return True

    def run_lines(self, lines: Iterable[str]) -> None:
        """Non-interactive input: a command per line, statements up to each ``;``."""
        pending = ""
        for line in lines:
            if not pending.strip() and line.strip().startswith("\\"):
                if not self.command(line):
                    return
                continue
            pending += line if line.endswith("\n") else line + "\n"
            statements, pending = split_statements(pending)
            for statement in statements:
                self.sql(statement)
        if pending.strip():
            self.run(pending)


def _days(dates: list[str] | None) -> str:
    if not dates:
        return ""
    return dates[0] if len(dates) == 1 else f"{dates[0]} .. {dates[-1]} ({len(dates)})"


def _functions() -> list[str]:
    from gateway.functions import read

    return sorted({f.name for f in read() if f.allowed and f.kind != "combinator"})


class SqlCompleter:
    """Tables, ``table.`` columns, columns, allowed functions, keywords; commands after ``\\``."""

    def __init__(self, console: Console):
        self.console = console
        self.functions = _functions()

    def words(self, word: str) -> Iterator[tuple[str, str]]:
        """(completion, what it is) of ``word``, the text before the cursor back to a space or
        punctuation."""
        if word.startswith("\\"):
            for command in COMMANDS:
                if command.startswith(word):
                    yield command.split(" ")[0], "command"
            return
        tables = self.console.tables()
        if "." in word:
            name, _, part = word.rpartition(".")
            for t in tables:
                if t["table"] == name:
                    yield from ((c["name"], c["type"]) for c in t["columns"] if c["name"].startswith(part))
            return
        low = word.lower()
        seen = set()
        candidates = [(t["table"], "table") for t in tables]
        candidates += [(c["name"], f"{t['table']} column") for t in tables for c in t["columns"]]
        candidates += [(f, "function") for f in self.functions] + [(k, "keyword") for k in KEYWORDS]
        for text, meta in candidates:
            if text.lower().startswith(low) and text not in seen:
                seen.add(text)
                yield text, meta


def make_session(console: Console, history: str | None, **io: Any) -> Any:
    """The prompt: Enter runs the input once it ends with ``;`` (or is a command), else
    starts a new line; ``io`` passes ``input``/``output`` through (tests use pipes)."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import Completer, Completion
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    words = SqlCompleter(console)

    class _Completer(Completer):
        def get_completions(self, document: Any, complete_event: Any) -> Iterator[Completion]:
            match = _WORD.search(document.text_before_cursor)
            word = match.group(0) if match else ""
            typed = word.rpartition(".")[2] if "." in word and not word.startswith("\\") else word
            for text, meta in words.words(word):
                yield Completion(text, start_position=-len(typed), display_meta=meta)

    bindings = KeyBindings()

    @bindings.add("enter")
    @bindings.add("c-j")
    def _enter(event: Any) -> None:
        buffer = event.current_buffer
        text = buffer.text.strip()
        if (not text or text.endswith(";") or text.startswith("\\")
                or text.lower() in ("quit", "exit")):
            buffer.validate_and_handle()
        else:
            buffer.insert_text("\n")

    path = Path(os.path.expanduser(history)) if history else None
    return PromptSession(
        history=FileHistory(str(path)) if path else InMemoryHistory(), completer=_Completer(),
        multiline=True, key_bindings=bindings, prompt_continuation="... ", complete_while_typing=False, **io)


def interact(console: Console, session: Any) -> None:
    """The prompt loop: Ctrl-C drops the input being typed, Ctrl-D (or ``\\q``) ends."""
    while True:
        try:
            text = session.prompt("tp> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            return
        if not console.run(text):
            return


def cmd_sql(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, need_kafka=False)
    url = (args.url or os.environ.get("TICKPLANT_GATEWAY_URL")
           or f"http://{settings.gateway_host}:{settings.gateway_port}")
    key = args.key or os.environ.get("TICKPLANT_API_KEY")
    with Client(url, api_key=key, timeout=settings.gateway_timeout_s + 5.0) as client:
        if not sys.stdin.isatty():
            console = Console(client, args.format, args.rows, notes=sys.stderr)
            console.run_lines(sys.stdin)
            return 1 if console.failed else 0
        console = Console(client, args.format, args.rows)
        print(f"tickplant sql: {', '.join(client.urls)}; end a statement with ';', \\? for help, \\q quits")
        interact(console, make_session(console, args.history))
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``sql`` on the CLI's subparsers."""
    p = sub.add_parser("sql", parents=[common], help="an interactive SQL console on the gateway")
    p.add_argument("--url", help="the gateway, or several comma-separated (default: $TICKPLANT_GATEWAY_URL, "
                                 "else gateway_host:gateway_port)")
    p.add_argument("--key", help="API key or token (default: $TICKPLANT_API_KEY)")
    p.add_argument("--format", choices=FORMATS, default="table", help="how answers are printed (\\format changes it)")
    p.add_argument("--rows", type=int, default=50, help="rows of a table shown (all are counted)")
    p.add_argument("--history", default=os.environ.get("TICKPLANT_SQL_HISTORY", DEFAULT_HISTORY),
                   help="the history file (default: $TICKPLANT_SQL_HISTORY, else %(default)s)")
    p.set_defaults(func=cmd_sql)
