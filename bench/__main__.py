"""``python -m bench``: every benchmark in bench/, on one throwaway broker, in one table.

A benchmark is a module here with ``collect(settings, args) -> bench.common.Report``:
it runs on the shared broker and its figures join the table. A module with
only a ``main(argv)`` (its own broker, its own table) is run after, with
``--quick`` passed on when given.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from types import ModuleType

import bench
from bench.common import Report, Result, add_arguments, embedded_broker, format_table


def benchmarks() -> dict[str, ModuleType]:
    """The modules of this package that are benchmarks, by name."""
    found = {}
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "common":
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if hasattr(module, "collect") or hasattr(module, "main"):
            found[info.name] = module
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("only", nargs="*", help="run only these benchmarks (default: all)")
    args = parser.parse_args(argv)
    found = benchmarks()
    unknown = [n for n in args.only if n not in found]
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; there are: {', '.join(found)}")
    chosen = {n: m for n, m in found.items() if not args.only or n in args.only}
    shared = {n: m for n, m in chosen.items() if hasattr(m, "collect")}
    reports: list[Report] = []
    if shared:
        with embedded_broker() as settings:
            for name, module in shared.items():
                print(f"[{name}]", file=sys.stderr)
                try:
                    reports.append(module.collect(settings, args))
                except Exception as exc:  # one benchmark failing still leaves the others' figures
                    traceback.print_exc()
                    reports.append(Report([Result(f"{name}: FAILED", 0.0, passed=False, unit="",
                                                  note=f"{type(exc).__name__}: {exc}"[:120])]))
        print(format_table([r for report in reports for r in report.results]))
        for report in reports:
            if report.notes:
                print()
                print("\n".join(report.notes))
    status = 0
    for name, module in chosen.items():
        if name in shared:
            continue
        print(f"\n[{name}] (own broker, own table)", flush=True)
        try:
            status |= module.main(["--quick"] if args.quick else []) or 0
        except Exception:
            traceback.print_exc()
            status = 1
    if args.check and any(r.passed is False for report in reports for r in report.results):
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
