"""The function allowlist (gateway/functions.tsv) against the engine it guards: every function
of chDB classified, aliases as their targets, the dangerous ones denied, and names resolved
as ClickHouse resolves them."""

from __future__ import annotations

import pytest

from gateway import functions


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
