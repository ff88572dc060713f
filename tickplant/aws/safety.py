"""Which RDB node may leave, which must not be taken away, and when a handover is over.

The application, never AWS, picks the instance that goes (the reference's rule): a
node holds live data no other copy serves, so AWS's own choice (oldest launch
template, balance across zones, at random) could take a day's only served copy. A
node holding rows of a day that no caught-up node of another replica also holds, and
that the HDB has not published, is protected from scale-in; the scaler's own
scale-in first makes the chosen node hand its partitions over and waits until their
new owners have caught up, after which it holds nothing and may go.
"""

from __future__ import annotations

from collections.abc import Iterable

from tickplant.aws.figures import NodeFigures


def holds(node: NodeFigures, table: str, partition: int, date: str) -> bool:
    """Whether ``node`` serves rows of (table, partition) for ``date``, caught up."""
    return (partition in node.partitions and f"{table}[{partition}]" not in node.catching_up
            and any(d[0] == table and d[1] == partition and d[2] == date for d in node.days))


def at_risk(node: NodeFigures, nodes: Iterable[NodeFigures],
            published: dict[str, set[str]]) -> list[tuple[str, int, str]]:
    """The (table, partition, date) whose rows ``node`` holds and nothing else keeps: no caught-up
    node of another replica holds them and the HDB has not published the day."""
    others = [n for n in nodes if n.node != node.node and n.replica != node.replica and not n.leaving]
    out = []
    for table, partition, date, _status, rows in node.days:
        if rows <= 0 or date in published.get(table, set()):
            continue
        if not any(holds(other, table, partition, date) for other in others):
            out.append((table, partition, date))
    return sorted(set(out))


def choose_leaver(candidates: Iterable[NodeFigures]) -> NodeFigures | None:
    """The node whose leaving costs least: the fewest rows to rebuild elsewhere, then the
    fewest partitions; a node already leaving first (a scale-in the last scaler left unfinished)."""
    ranked = sorted(candidates, key=lambda n: (not n.leaving, n.rows, len(n.partitions), n.node))
    return ranked[0] if ranked else None


def handover_pending(leaver: NodeFigures, nodes: Iterable[NodeFigures]) -> list[str]:
    """What still keeps the leaver's partitions from being served elsewhere (empty: over): the
    leaver still in the group, or a partition of it no other node of its replica serves caught up."""
    nodes = list(nodes)
    pending = []
    still = [n for n in nodes if n.node == leaver.node and n.partitions]
    if still:
        pending.append(f"{leaver.node} still holds partitions {list(still[0].partitions)}")
    peers = [n for n in nodes if n.node != leaver.node and n.replica == leaver.replica]
    for partition in leaver.partitions:
        owners = [n for n in peers if partition in n.partitions]
        if not owners:
            pending.append(f"partition {partition}: no owner yet")
        elif not any(n.serving for n in owners):  # the gateway routes to serving nodes only
            behind = [c for n in owners for c in n.catching_up if c.endswith(f"[{partition}]")]
            pending.append(f"partition {partition}: {owners[0].node} not serving yet"
                           + (f" ({', '.join(behind)} catching up)" if behind else ""))
    return pending
