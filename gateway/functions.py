"""Which ClickHouse functions a gateway query may call: an allowlist over every function.

A denylist fails open: a function the list forgot, a new one in the next
chDB, or a spelling the checker did not expect (``"file"('/etc/passwd')``)
runs. So ``functions.tsv`` beside this file names *every* function of the
engine (chDB's ``system.functions``) and every aggregate combinator, each
with a verdict, ``allow`` or ``deny``, and why; a name not in it is refused.
``tests/test_functions.py`` fails when the engine has a function the file
does not classify, so upgrading chDB means reading the new names.

Names are matched the way ClickHouse resolves them: exactly, then
lower-cased for the functions ClickHouse calls case-insensitive (their
aliases too), then as an aggregate function with combinator suffixes
(``sumIf``, ``uniqStateMerge``): the base must be an allowed aggregate, and
every combinator allowed. Quoting and escapes are gone before a name gets
here: the parser decodes ``"file"`` and ``\\x66ile`` to ``file``.

What is denied, and why (the ``why`` column says which for each):

- reading outside the statement's tables: ``file``, dictionaries, ``joinGet``,
  ``hasColumnInTable``, the function forms of ``IN`` (which read a table
  named as an argument), models and embedded dictionaries from the server;
- telling of the server or session: settings, macros, host, users, roles,
  versions, query and connection ids, HTTP headers, certificates, uptime;
- side effects or cost without data: ``sleep``, ``logTrace``,
  ``generateSerialID``, the AI functions (calls to an outside service);
- ``throwIf`` and its kin, whose errors carry a chosen message;
- ClickHouse's internal functions (``__*``, ``_CAST``), which the engine
  inserts itself and users never need to name.

``python -m gateway.functions`` rewrites the file from the running chDB:
verdicts already in the file are kept, new functions get the verdict of the
rules below and ``review`` in their note, for a person to confirm.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TSV = Path(__file__).with_name("functions.tsv")
COLUMNS = ("name", "verdict", "case_insensitive", "kind", "alias_to", "why")


@dataclass(frozen=True)
class Function:
    """One row of ``functions.tsv``: a function, alias or aggregate combinator."""

    name: str
    verdict: str  # "allow" or "deny"
    case_insensitive: bool
    kind: str  # "scalar", "aggregate" or "combinator"
    alias_to: str
    why: str

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"


@dataclass(frozen=True)
class Catalog:
    """The classified functions, indexed the ways ClickHouse finds a name."""

    exact: dict[str, Function]
    folded: dict[str, Function]  # lower-cased name of a case-insensitive function
    combinators: tuple[Function, ...]  # longest suffix first

    def resolve(self, name: str) -> Function | None:
        """The function ClickHouse would call for ``name``, or None if it has none.

        A combined aggregate (``sumIf``) resolves to a synthetic aggregate
        whose verdict is deny if its base or any combinator is denied."""
        found = self.exact.get(name) or self.folded.get(name.lower())
        if found is not None:
            return found
        for comb in self.combinators:
            if len(name) > len(comb.name) and name.endswith(comb.name):
                base = self.resolve(name[: -len(comb.name)])
                if base is not None and base.kind == "aggregate":
                    allowed = base.allowed and comb.allowed
                    why = base.why if not base.allowed else comb.why
                    return Function(name, "allow" if allowed else "deny", False, "aggregate", "", why)
        return None


@cache
def catalog(path: Path = TSV) -> Catalog:
    rows = read(path)
    exact = {f.name: f for f in rows if f.kind != "combinator"}
    folded = {f.name.lower(): f for f in rows if f.case_insensitive and f.kind != "combinator"}
    combinators = tuple(sorted((f for f in rows if f.kind == "combinator"), key=lambda f: -len(f.name)))
    return Catalog(exact, folded, combinators)


def read(path: Path = TSV) -> list[Function]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        return [Function(r["name"], r["verdict"], r["case_insensitive"] == "1", r["kind"], r["alias_to"], r["why"])
                for r in reader]


# -- the rules that classify a function the file does not know yet ------------------------------

DENY_CATEGORIES = {
    "Dictionary": "reads a dictionary, outside the statement's tables",
    "Embedded Dictionary": "reads the server's embedded dictionaries",
    "Introspection": "reveals the server's code or parts",
    "Internal": "internal to ClickHouse; the engine inserts it, users never name it",
    "AI": "calls an outside service",
    "Machine Learning": "evaluates models from the server's configuration",
    "Time Series": "keeps tags in server-wide state",
}
ALLOW_IN_DENIED_CATEGORY = {"seriesDecomposeSTL", "seriesOutliersDetectTukey", "seriesPeriodDetectFFT",
                            "stochasticLinearRegression", "stochasticLogisticRegression"}
READS = "reads outside the statement's tables"
TELLS = "reveals the server or the session"
DENY_NAMES = {
    **dict.fromkeys("""file joinGet joinGetOrNull hasColumnInTable in notIn nullIn notNullIn globalIn
        globalNotIn globalNullIn globalNotNullIn inIgnoreSet notInIgnoreSet nullInIgnoreSet notNullInIgnoreSet
        globalInIgnoreSet globalNotInIgnoreSet globalNullInIgnoreSet globalNotNullInIgnoreSet
        filesystemAvailable filesystemCapacity filesystemUnreserved""".split(), READS),
    **dict.fromkeys("""getSetting getSettingOrDefault getServerSetting getMergeTreeSetting getMacro hostName
        FQDN tcpPort getServerPort currentUser authenticatedUser currentDatabase currentSchemas currentProfiles
        enabledProfiles defaultProfiles currentRoles enabledRoles defaultRoles getClientHTTPHeader
        currentRequestURL currentHandler getOSKernelVersion uptime version revision buildId serverUUID
        zookeeperSessionUptime queryID currentQueryID initialQueryID initialQueryStartTime connectionId
        displayName shardNum shardCount globalVariable showCertificate transactionID transactionLatestSnapshot
        transactionOldestSnapshot pgGetUserById pgTableIsVisible getMaxTableNameLengthForDatabase
        hasThreadFuzzer""".split(), TELLS),
    **dict.fromkeys("sleep sleepEachRow logTrace generateSerialID".split(), "a side effect or a delay, no data"),
    **dict.fromkeys("throwIf aggThrow timeSeriesThrowDuplicateSeriesIf".split(), "raises an error of the caller's choosing"),
}


def rule(name: str, category: str) -> tuple[str, str]:
    """The verdict and reason of the rules for a function not yet in the file."""
    if name in DENY_NAMES:
        return "deny", DENY_NAMES[name]
    if name.startswith("_"):
        return "deny", DENY_CATEGORIES["Internal"]
    for cat in category.split(","):
        if cat.strip() in DENY_CATEGORIES and name not in ALLOW_IN_DENIED_CATEGORY:
            return "deny", DENY_CATEGORIES[cat.strip()]
    return "allow", category.strip() or "alias"


def engine_functions() -> list[tuple[str, bool, str, str, str]]:
    """(name, case_insensitive, kind, alias_to, categories) of every function and combinator of chDB."""
    import chdb

    funcs = chdb.query("SELECT name, case_insensitive, is_aggregate, alias_to, categories FROM system.functions "
                       "ORDER BY name", "ArrowTable").to_pylist()
    combs = chdb.query("SELECT name FROM system.aggregate_function_combinators ORDER BY name",
                       "ArrowTable").to_pylist()
    out = [(f["name"], bool(f["case_insensitive"]), "aggregate" if f["is_aggregate"] else "scalar",
            f["alias_to"], f["categories"]) for f in funcs]
    out += [(c["name"], False, "combinator", "", "Aggregate combinator") for c in combs]
    return out


def regenerate(path: Path = TSV) -> list[Function]:
    """The file's rows for the running engine: known verdicts kept, new ones by ``rule``."""
    known = {f.name: f for f in read(path)} if path.exists() else {}
    engine = engine_functions()
    by_name = {name: category for name, _, _, _, category in engine}
    rows = []
    for name, ci, kind, alias_to, category in engine:
        if name in known:
            old = known[name]
            rows.append(Function(name, old.verdict, ci, kind, alias_to, old.why))
            continue
        target = alias_to or name
        verdict, why = rule(target, by_name.get(target, category))
        if verdict == "allow" and alias_to:  # an alias named in the rules is denied by its own name
            verdict, why = rule(name, category)
        rows.append(Function(name, verdict, ci, kind, alias_to, f"{why} (review)" if known else why))
    return rows


def write(rows: list[Function], path: Path = TSV) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([r.name, r.verdict, int(r.case_insensitive), r.kind, r.alias_to, r.why])


def main() -> int:
    rows = regenerate()
    write(rows)
    review = [r.name for r in rows if r.why.endswith("(review)")]
    print(f"{TSV}: {len(rows)} functions, {sum(not r.allowed for r in rows)} denied; "
          f"{len(review)} new to review{': ' + ', '.join(review) if review else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
