"""``%%tp``: a notebook cell of SQL through the gateway, answered as a pandas DataFrame.

    %load_ext gateway.magic
    %tp_connect http://gw1:8700,http://gw2:8700 --key KEY     # or $TICKPLANT_GATEWAY_URL / $TICKPLANT_API_KEY
    %%tp
    SELECT sym, max(price) AS high FROM trade WHERE date = today() GROUP BY sym

``%%tp trades`` also stores the frame in the variable ``trades``; ``--limit N``
and ``--timeout S`` ask the gateway for less than its own limits; ``--polars``
or ``--arrow`` give that kind of table instead. A refused or failed query
shows one line (the gateway's status and reason), not a traceback, and the
cell fails, so "run all" stops there.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

from gateway.client import Client, GatewayError

DEFAULT_URL = "http://127.0.0.1:8700"


class TpError(RuntimeError):
    """A query the gateway refused or could not answer: shown as its one line."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"tickplant: {self}"]


class Connection:
    """The notebook's gateway: set by ``%tp_connect``, else from the environment on first use."""

    def __init__(self) -> None:
        self.client: Client | None = None

    def connect(self, url: str | None = None, key: str | None = None) -> Client:
        if self.client is not None:
            self.client.close()
        self.client = Client(url or os.environ.get("TICKPLANT_GATEWAY_URL") or DEFAULT_URL,
                             api_key=key or os.environ.get("TICKPLANT_API_KEY"))
        return self.client

    def current(self) -> Client:
        return self.client or self.connect()


def _options(line: str, flags: dict[str, bool], valued: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """``--flag`` and ``--name value`` options of a magic's line, and the words left."""
    options: dict[str, Any] = {}
    words = shlex.split(line)
    rest = []
    while words:
        word = words.pop(0)
        name = word[2:]
        if word.startswith("--") and name in flags:
            options[name] = True
        elif word.startswith("--") and name in valued:
            if not words:
                raise TpError(f"{word} needs a value")
            options[name] = words.pop(0)
        elif word.startswith("--"):
            known = ", ".join(f"--{n}" for n in [*flags, *valued])
            raise TpError(f"unknown option {word}; options: {known}")
        else:
            rest.append(word)
    return options, rest


def _number(options: dict[str, Any], name: str, kind: type) -> Any:
    if name not in options:
        return None
    try:
        return kind(options[name])
    except ValueError:
        raise TpError(f"--{name} must be a number, not {options[name]!r}") from None


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext gateway.magic``: registers ``%%tp`` and ``%tp_connect``."""
    connection = Connection()
    ipython.user_ns.setdefault("_tp_connection", connection)

    def tp_connect(line: str) -> None:
        """%tp_connect [URL[,URL...]] [--key KEY]: the gateway(s) ``%%tp`` asks."""
        options, rest = _options(line, {}, ("key",))
        if len(rest) > 1:
            raise TpError(f"%tp_connect takes one URL (several comma-separated), not {rest}")
        client = connection.connect(rest[0] if rest else None, options.get("key"))
        print(f"tickplant: {', '.join(client.urls)}")

    def tp(line: str, cell: str) -> Any:
        """%%tp [VARIABLE] [--limit N] [--timeout S] [--polars | --arrow]: the cell's SQL as a DataFrame."""
        options, rest = _options(line, {"polars": False, "arrow": False}, ("limit", "timeout"))
        if len(rest) > 1 or (rest and not rest[0].isidentifier()):
            raise TpError(f"%%tp takes one variable name to store the answer in, not {' '.join(rest)!r}")
        query = cell.strip()
        if not query:
            raise TpError("the cell holds no SQL")
        try:
            table = connection.current().sql(query.rstrip(";"), limit=_number(options, "limit", int),
                                             timeout=_number(options, "timeout", float))
        except GatewayError as exc:
            raise TpError(f"{exc.status} {exc.reason}") from None
        result: Any = table if options.get("arrow") else table.to_pandas()
        if options.get("polars"):
            import polars

            result = polars.from_arrow(table)
        if rest:
            ipython.user_ns[rest[0]] = result
        return result

    ipython.register_magic_function(tp_connect, "line", "tp_connect")
    ipython.register_magic_function(tp, "cell", "tp")


def unload_ipython_extension(ipython: Any) -> None:
    connection = ipython.user_ns.pop("_tp_connection", None)
    if connection is not None and connection.client is not None:
        connection.client.close()
