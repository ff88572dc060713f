"""Gateway users: who is calling (API keys / bearer tokens) and what each may read.

kdb+ gateways check ``.z.u`` against an entitlement database; ours reads a
TOML users file at start-up. Without one (``Users.open()``) every caller is a
single anonymous admin: the local default, fine on 127.0.0.1, never to be
exposed on a network.

The users file::

    [users.alice]
    # API keys, also accepted as bearer tokens. Store the SHA-256 of the key
    # ("sha256:" + 64 hex digits, from `printf %s KEY | sha256sum`); a plain key
    # (at least 16 characters) is accepted too, for tests and local set-ups.
    keys = ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    admin = false                       # true: every table, column and row

    [users.alice.tables.trade]          # one table per section, or inline:
    columns = ["time", "sym", "price", "size"]   # omitted: every column
    rows = "exchange IN ('N', 'Q')"              # omitted: every row

    [users.alice.tables.quote]          # empty: all columns, all rows

    [users.bob]
    keys = ["bob-plain-key-0123456789"]
    tables = { "*" = { rows = "sym IN ('AAPL', 'MSFT')" } }   # "*": every plant table

``columns`` lists the columns the user may see; every table also has the
virtual ``date`` column, always visible. ``rows`` is a ClickHouse boolean
expression over the table's columns (any of them, granted or not), parsed
here: a subquery, table, or refused function in it is a load error.
``"*"`` grants every plant table except the gateway's ``query_log``, which is
admin-only unless named. Clients send ``Authorization: Bearer KEY`` or
``X-API-Key: KEY``.

Errors name the file and the key (``users.alice.tables.trade.rows``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from gateway.sql import DIALECT, Forbidden, check_node, parse_message, strip_comments
from ingest.seq import SEQ

log = logging.getLogger(__name__)
ALL_TABLES = "*"
QUERY_LOG = "query_log"
MIN_PLAIN_KEY = 16
_HASH_PREFIX = "sha256:"


class UsersError(ValueError):
    """The users file is unreadable or wrong; the message names the file and key."""


class Unauthorized(Exception):
    """No key, an unknown key or a malformed header (HTTP 401); the message says which."""


@dataclass(frozen=True)
class Grant:
    """What a user may read of one table.

    ``columns`` None means every column; ``rows`` None means every row, else a
    ClickHouse boolean expression (validated SQL text; ``row_filter`` is its tree).
    """

    table: str
    columns: frozenset[str] | None = None
    rows: str | None = None
    row_filter: exp.Expression | None = field(default=None, compare=False, repr=False)

    @property
    def restricted(self) -> bool:
        """True if the grant hides some columns or rows."""
        return self.columns is not None or self.row_filter is not None

    def column_allowed(self, column: str) -> bool:
        """``date`` and ``seq`` (a row's day and place in the log) go with every row."""
        return column in ("date", SEQ) or self.columns is None or column in self.columns


@dataclass(frozen=True)
class User:
    name: str
    grants: dict[str, Grant] = field(default_factory=dict)
    admin: bool = False

    def grant_for(self, table: str) -> Grant | None:
        """This user's grant on ``table`` (admins: everything), or None."""
        if self.admin:
            return Grant(table)
        grant = self.grants.get(table)
        if grant is None and table != QUERY_LOG and ALL_TABLES in self.grants:
            wildcard = self.grants[ALL_TABLES]
            grant = Grant(table, wildcard.columns, wildcard.rows, wildcard.row_filter)
        return grant


ANONYMOUS = User("anonymous", {}, admin=True)


class Users:
    """The users and their keys (held as SHA-256 digests)."""

    def __init__(self, users: dict[str, User], keys: dict[str, str], source: str = ""):
        self.users = users
        self._by_digest = keys  # sha256 hex digest -> user name
        self.source = source

    @property
    def is_open(self) -> bool:
        """True when there is no users file: every caller is the anonymous admin."""
        return not self.users

    @classmethod
    def open(cls) -> Users:
        """No users file: one anonymous admin user, whatever the request sends."""
        return cls({}, {}, source="<open>")

    @classmethod
    def load(cls, path: Path) -> Users:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as err:
            raise UsersError(f"{path}: cannot read users file: {err.strerror or err}") from None
        except tomllib.TOMLDecodeError as err:
            raise UsersError(f"{path}: not valid TOML: {err}") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<users>") -> Users:
        unknown = set(data) - {"users"}
        if unknown:
            raise UsersError(f"{source}: unknown top-level key(s) {sorted(unknown)}; use [users.NAME]")
        table = data.get("users")
        if not isinstance(table, dict) or not table:
            raise UsersError(f"{source}: no users: add at least one [users.NAME] section")
        users: dict[str, User] = {}
        keys: dict[str, str] = {}
        for name, spec in table.items():
            where = f"{source}: users.{name}"
            user, digests = _user(name, spec, where)
            for digest in digests:
                if digest in keys:
                    raise UsersError(f"{where}.keys: a key of users.{keys[digest]} is repeated")
                keys[digest] = name
            users[name] = user
        return cls(users, keys, source)

    def validate(self, columns: dict[str, list[str]]) -> None:
        """Check every grant against the plant's tables (table -> columns); call at start-up.

        Raises UsersError naming the user and the unknown table or column.
        """
        for user in self.users.values():
            for grant in user.grants.values():
                where = f"{self.source}: users.{user.name}.tables.{grant.table}"
                if grant.table == ALL_TABLES:
                    known = set().union(*(set(c) for c in columns.values())) if columns else set()
                elif grant.table not in columns:
                    raise UsersError(
                        f"{where}: unknown table {grant.table!r}; "
                        f"tables: {', '.join(sorted(columns))}"
                    )
                else:
                    known = set(columns[grant.table])
                for column in sorted((grant.columns or set()) - known - {"date"}):
                    raise UsersError(f"{where}.columns: unknown column {column!r}")
                if grant.row_filter is not None:
                    for col in grant.row_filter.find_all(exp.Column):
                        if col.name not in known and col.name != "date":
                            raise UsersError(f"{where}.rows: unknown column {col.name!r}")

    def authenticate(self, header_value: str | None) -> User:
        """The user for an ``Authorization`` (``Bearer KEY``) or ``X-API-Key`` header value."""
        if self.is_open:
            return ANONYMOUS
        if header_value is None or not header_value.strip():
            raise Unauthorized(
                "no credentials: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        value = header_value.strip()
        if value.lower() == "bearer":
            raise Unauthorized("empty bearer token: send 'Authorization: Bearer <key>'")
        scheme, _, rest = value.partition(" ")
        if rest and scheme.lower() == "bearer":
            value = rest.strip()
        elif rest:  # the header is not echoed: it may be a key sent the wrong way
            raise Unauthorized("unsupported authorization scheme; use 'Authorization: Bearer <key>'")
        name = self._by_digest.get(_digest(value))
        if name is None:
            raise Unauthorized("unknown API key")
        return self.users[name]


class UsersFile:
    """The users file, read again when it changes: grants take effect without a restart.

    ``current()`` looks at the file at most every ``check_seconds`` (a stat); a changed
    file is loaded and validated whole, and only then replaces the users in force, so a
    file caught half-written, or wrong, leaves the last good one in force (and is
    logged, naming the file and key). ``version`` counts the loads: what was decided
    for a user (a query's plan) is keyed by it.
    """

    def __init__(self, path: Path, columns: dict[str, list[str]], check_seconds: float = 0.5):
        self.path = Path(path)
        self.columns = columns
        self.check_seconds = check_seconds
        self.version = 0
        self._users = self._load()
        self._seen = self._stamp()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _load(self) -> Users:
        users = Users.load(self.path)
        users.validate(self.columns)
        return users

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def current(self) -> Users:
        now = time.monotonic()
        if now - self._checked < self.check_seconds:
            return self._users
        with self._lock:
            if now - self._checked < self.check_seconds:
                return self._users
            self._checked = now
            stamp = self._stamp()
            if stamp is not None and stamp != self._seen:
                try:
                    users = self._load()
                except UsersError as err:
                    log.error("users file not reloaded, the last good one stays in force: %s", err)
                else:
                    self._users = users
                    self.version += 1
                    log.info("users file reloaded: %s (%d users)", self.path, len(users.users))
                self._seen = stamp
        return self._users


def hash_key(key: str) -> str:
    """The users-file form of a key: ``sha256:<hex>``."""
    return _HASH_PREFIX + _digest(key)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _user(name: str, spec: Any, where: str) -> tuple[User, list[str]]:
    if not isinstance(spec, dict):
        raise UsersError(f"{where}: must be a table ([users.{name}])")
    unknown = set(spec) - {"keys", "admin", "tables"}
    if unknown:
        raise UsersError(f"{where}: unknown key(s) {sorted(unknown)}; expected keys, admin, tables")
    admin = spec.get("admin", False)
    if not isinstance(admin, bool):
        raise UsersError(f"{where}.admin: must be true or false, not {admin!r}")
    keys = spec.get("keys")
    if not isinstance(keys, list) or not keys:
        raise UsersError(f"{where}.keys: a non-empty list of keys is required")
    digests = [_key_digest(k, f"{where}.keys[{i}]") for i, k in enumerate(keys)]
    tables = spec.get("tables", {})
    if not isinstance(tables, dict):
        raise UsersError(f"{where}.tables: must be a table of table -> grant")
    if not tables and not admin:
        raise UsersError(f"{where}: grants no tables (add [users.{name}.tables.TABLE] or admin)")
    grants = {t: _grant(t, g, f"{where}.tables.{t}") for t, g in tables.items()}
    return User(name, grants, admin), digests


def _key_digest(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise UsersError(f"{where}: must be a string")
    if key.startswith(_HASH_PREFIX):
        hexdigest = key[len(_HASH_PREFIX):].lower()
        if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
            raise UsersError(f"{where}: 'sha256:' must be followed by 64 hex digits")
        return hexdigest
    if len(key) < MIN_PLAIN_KEY:
        raise UsersError(f"{where}: a plain key must have at least {MIN_PLAIN_KEY} characters")
    return _digest(key)


def _grant(table: str, spec: Any, where: str) -> Grant:
    if not isinstance(spec, dict):
        raise UsersError(f"{where}: must be a table {{ columns = [...], rows = \"...\" }}")
    unknown = set(spec) - {"columns", "rows"}
    if unknown:
        raise UsersError(f"{where}: unknown key(s) {sorted(unknown)}; expected columns, rows")
    columns = spec.get("columns")
    if columns is not None:
        if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns):
            raise UsersError(f"{where}.columns: must be a list of column names")
        columns = frozenset(columns)
    rows = spec.get("rows")
    row_filter = None
    if rows is not None:
        if not isinstance(rows, str) or not rows.strip():
            raise UsersError(f"{where}.rows: must be a ClickHouse boolean expression (a string)")
        row_filter = parse_row_filter(rows, f"{where}.rows")
    return Grant(table, columns, rows, row_filter)


def parse_row_filter(rows: str, where: str = "rows") -> exp.Expression:
    """Parse a grant's row expression: one expression over plain columns, nothing else."""
    try:
        statements = sqlglot.parse(f"SELECT 1 WHERE {rows}", dialect=DIALECT)
    except ParseError as err:
        raise UsersError(f"{where}: cannot parse {rows!r}: {parse_message(err)}") from None
    except TokenError as err:
        raise UsersError(f"{where}: cannot parse {rows!r}: {err}") from None
    select = statements[0] if len(statements) == 1 else None
    if not isinstance(select, exp.Select) or set(k for k, v in select.args.items() if v) != {
        "expressions",
        "where",
    }:
        raise UsersError(f"{where}: {rows!r} must be a single boolean expression")
    condition = select.args["where"].this
    for node in condition.walk():
        if isinstance(node, (exp.Query, exp.Table)):
            raise UsersError(f"{where}: {rows!r} may not contain a subquery or table")
        if isinstance(node, exp.Column) and node.table:
            raise UsersError(f"{where}: {rows!r}: write columns unqualified ({node.sql(DIALECT)})")
        try:
            check_node(node)
        except Forbidden as err:
            raise UsersError(f"{where}: {rows!r}: {err}") from None
    strip_comments(condition)
    return condition.pop() if condition.parent else condition
