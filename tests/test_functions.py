"""The function allowlist (gateway/functions.tsv) against the engine it guards: every function
of chDB classified, aliases as their targets, the dangerous ones denied, and names resolved
as ClickHouse resolves them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from gateway import functions
from gateway.sql import Forbidden, SqlError, parse_select, render


@pytest.fixture(scope="module")
def engine() -> dict[str, tuple]:
    return {name: (ci, kind, alias_to) for name, ci, kind, alias_to, _ in functions.engine_functions()}


def test_every_function_of_the_engine_is_classified(engine):
    """Fails when chDB gains a function nobody classified: run ``python -m gateway.functions``
    and read the rows marked ``(review)``."""
    listed = {f.name: f for f in functions.read()}
    missing = sorted(set(engine) - set(listed))
    assert not missing, f"unclassified engine functions (run python -m gateway.functions): {missing[:20]}"
    gone = sorted(set(listed) - set(engine))
    assert not gone, f"functions.tsv lists functions the engine no longer has: {gone[:20]}"
    for name, (ci, kind, alias_to) in engine.items():
        row = listed[name]
        assert (row.case_insensitive, row.kind, row.alias_to) == (ci, kind, alias_to), name
        assert row.verdict in ("allow", "deny") and row.why and "(review)" not in row.why, row


def test_an_alias_is_denied_when_its_target_is():
    rows = {f.name: f for f in functions.read()}
    for f in rows.values():
        if f.alias_to and f.alias_to in rows and not rows[f.alias_to].allowed:
            assert not f.allowed, f"{f.name} is an alias of denied {f.alias_to}"


@pytest.mark.parametrize("name", sorted(functions.DENY_NAMES))
def test_the_rules_denied_names_are_denied(name, engine):
    found = functions.catalog().resolve(name)
    if name in engine:
        assert found is not None and not found.allowed, name


def test_no_denied_aggregate_is_reachable_through_combinators():
    """A denied aggregate must not also decompose into an allowed base + combinators."""
    cat = functions.catalog()
    for f in functions.read():
        if f.kind == "aggregate" and not f.allowed:
            for comb in cat.combinators:
                if f.name.endswith(comb.name) and len(f.name) > len(comb.name):
                    base = cat.resolve(f.name[: -len(comb.name)])
                    assert base is None or not base.allowed, f.name


@pytest.mark.parametrize("name, allowed", [
    ("sum", True), ("SUM", True), ("Sum", True), ("sumIf", True), ("SUMIf", True), ("uniqExactStateMerge", True),
    ("avgOrNullIf", True), ("quantilesTimingForEach", True), ("row_number", True), ("toStartOfMinute", True),
    ("file", False), ("hostname", False), ("FQDN", False), ("fqdn", False), ("DATABASE", False), ("database", False),
    ("aggThrowIf", False), ("dictGetString", False), ("_CAST", False), ("__getScalar", False), ("aiGenerate", False),
])
def test_names_resolve_as_clickhouse_resolves_them(name, allowed):
    found = functions.catalog().resolve(name)
    assert found is not None and found.allowed is allowed, (name, found)


@pytest.mark.parametrize("name", ["FILE", "sumif", "COUNTIF", "nosuch", "sumNoSuchCombinator"])
def test_names_clickhouse_does_not_know_resolve_to_nothing(name):
    assert functions.catalog().resolve(name) is None


SPELL = {
    "plain": lambda n: n,
    "double quotes": lambda n: f'"{n}"',
    "backticks": lambda n: f"`{n}`",
    "escaped": lambda n: "`" + "".join(f"\\x{ord(c):02x}" for c in n) + "`",
    "upper": lambda n: n.upper(),
    "comment": lambda n: f"/* {n} */ {n}",
}


@hsettings(max_examples=400, deadline=None)
@given(row=st.sampled_from(functions.read()), spelling=st.sampled_from(sorted(SPELL)),
       place=st.sampled_from(["SELECT {f}(1) AS x", "SELECT sym FROM trade WHERE {f}(sym) = 1",
                              "SELECT arrayMap(v -> {f}(v), [1]) AS x", "SELECT count() FROM trade GROUP BY {f}(price)"]))
def test_no_spelling_of_a_denied_function_passes_the_check(row, spelling, place):
    """Every function of the engine, in any spelling and place: a denied one is always refused."""
    if row.kind == "combinator":
        return
    sql = place.format(f=SPELL[spelling](row.name))
    try:
        rendered = render(parse_select(sql))
    except (Forbidden, SqlError):
        return  # refused
    spelled = sqlglot_name(SPELL[spelling](row.name))
    resolved = functions.catalog().resolve(spelled)
    assert resolved is None or resolved.allowed, f"denied {spelled} passed: {sql}"
    # what ClickHouse is sent calls only allowed functions (sqlglot may rename a call)
    for name in _CALLED.findall(rendered):
        name = name.strip('`"')
        if name.upper() not in SYNTAX:
            found = functions.catalog().resolve(name)
            assert found is not None and found.allowed, (name, rendered)


_CALLED = re.compile(r'([A-Za-z_][A-Za-z0-9_]*|`[^`]*`|"[^"]*")\s*\(')
SYNTAX = {"IN", "AS", "AND", "OR", "NOT", "FROM", "WHERE", "SELECT", "BY", "ON", "USING", "EXISTS", "OVER",
          "VALUES", "INTERVAL", "JOIN", "TRIM", "EXTRACT", "SUBSTRING", "POSITION", "CASE", "WHEN", "THEN",
          "ELSE", "COLUMNS", "DATE", "TIMESTAMP", "CAST", "IF", "COUNT"}


def sqlglot_name(spelled: str) -> str:
    """The name as spelled: comments dropped, quotes and escapes decoded."""
    text = spelled.split("*/")[-1].strip()
    if text[:1] in "`\"":
        text = text[1:-1]
    return text.encode().decode("unicode_escape") if "\\x" in text else text
