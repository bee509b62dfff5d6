"""Accuracy against bytes on the wire: codistill's and fedavg's points, and what each buys at a budget.

A suite's byte sweeps (rows with `sweep: bytes-codistill-<encoding>` and
`sweep: bytes-fedavg[-...]`) give each strategy a set of points (bytes sent
per region, accuracy). At a budget B each side gets the point within B with
the best VALIDATION accuracy, never the best test one, and the two are
compared on test accuracy, paired by seed. The claim judged:

  at every byte budget codistill is at least as accurate as weight averaging,
  and at fedavg's best accuracy it needs a tenth of its bytes or less.

"At least as accurate" means a paired mean difference ≥ 0; the interval is
shown beside it, so a difference within noise reads as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codistill.report.stats import PairedDifference, paired_difference

CODISTILL, FEDAVG = "codistill", "fedavg"
PREFIX = "bytes-"


@dataclass(frozen=True)
class BudgetPoint:
    """One (row, strategy) of a byte sweep, over its seeds."""

    family: str  # codistill or fedavg
    sweep: str
    row: str
    spec: str
    label: str
    bytes_sent: float  # per region, mean over seeds
    validation: float  # mean region validation accuracy, mean over seeds
    test: dict[int, float]  # seed -> mean region test accuracy

    @property
    def test_mean(self) -> float:
        return float(np.mean(list(self.test.values())))

    @property
    def test_std(self) -> float:
        values = list(self.test.values())
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class BudgetComparison:
    """At `budget` bytes: each side's validation-chosen point and their paired test difference."""

    budget: float
    codistill: BudgetPoint
    fedavg: BudgetPoint
    difference: PairedDifference

    @property
    def at_least_as_accurate(self) -> bool:
        return self.difference.mean >= 0


def _label(sweep: str, value: float | None) -> str:
    what = sweep[len(PREFIX):]
    if what.startswith(CODISTILL + "-"):
        return f"{what[len(CODISTILL) + 1:]}, {value:g} a round"
    if what == FEDAVG:
        return f"every {value:g} steps"
    return f"{what.replace(FEDAVG + '-', '')}, every {value:g} steps"


def points(doc: dict, cells: list[dict]) -> list[BudgetPoint]:
    """Every point of the suite's byte sweeps that has cells."""
    out = []
    for row, info in doc["row_info"].items():
        sweep = info.get("sweep") or ""
        if not sweep.startswith(PREFIX) or row not in doc["rows"]:
            continue
        family = CODISTILL if sweep.startswith(PREFIX + CODISTILL) else FEDAVG if sweep.startswith(PREFIX + FEDAVG) else None
        for spec, a in doc["rows"][row].items():
            if family is None or spec.split(":")[0].split("@")[0] != family:
                continue
            test = {c["seed"]: c["mean_test_accuracy"] for c in cells if c["row"] == row and c["spec"] == spec}
            if test:
                out.append(BudgetPoint(family, sweep, row, spec, _label(sweep, info.get("value")), a["bytes_sent_per_region"],
                                       a["mean_validation_accuracy"]["mean"], test))
    return sorted(out, key=lambda p: (p.family, p.bytes_sent))


def chosen(pts: list[BudgetPoint], family: str, budget: float) -> BudgetPoint | None:
    """`family`'s point within `budget` bytes with the best validation accuracy."""
    within = [p for p in pts if p.family == family and p.bytes_sent <= budget]
    return max(within, key=lambda p: p.validation) if within else None


def compare(a: BudgetPoint, b: BudgetPoint, budget: float) -> BudgetComparison:
    seeds = sorted(set(a.test) & set(b.test))
    d = paired_difference(a.spec, b.spec, [a.test[s] for s in seeds], [b.test[s] for s in seeds])
    return BudgetComparison(budget, a, b, d)


def at_every_budget(pts: list[BudgetPoint]) -> list[BudgetComparison]:
    """At each fedavg point's bytes (the budgets where fedavg has something to send): both sides' choices."""
    out = []
    for budget in sorted({p.bytes_sent for p in pts if p.family == FEDAVG}):
        c, f = chosen(pts, CODISTILL, budget), chosen(pts, FEDAVG, budget)
        if c and f:
            out.append(compare(c, f, budget))
    return out


def at_a_tenth(pts: list[BudgetPoint]) -> BudgetComparison | None:
    """fedavg's best point (by validation) against codistill's choice within a tenth of its bytes."""
    best = chosen(pts, FEDAVG, float("inf"))
    if best is None:
        return None
    c = chosen(pts, CODISTILL, best.bytes_sent / 10)
    return compare(c, best, best.bytes_sent / 10) if c else None


def _pct(d: PairedDifference) -> str:
    interval = f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}]" if d.n > 1 else "(one seed)"
    return f"{100 * d.mean:+.1f} {interval}"


def _mib(n: float) -> str:
    return f"{n / 2**20:.3g} MiB"


def section(doc: dict, cells: list[dict], figure: list[str]) -> list[str]:
    """The report's accuracy-against-bytes section (empty when the suite has no byte sweeps)."""
    pts = points(doc, cells)
    if not any(p.family == CODISTILL for p in pts) or not any(p.family == FEDAVG for p in pts):
        return []
    budgets, tenth = at_every_budget(pts), at_a_tenth(pts)
    every = bool(budgets) and all(b.at_least_as_accurate for b in budgets)
    shown = every and tenth is not None and tenth.at_least_as_accurate
    L = [
        "## Accuracy against bytes",
        "",
        "Each point is one setting over its seeds: bytes sent per region over the run, and mean region accuracy. "
        "At a budget, each side takes its point within the budget with the best **validation** accuracy; the two "
        "are then compared on test accuracy, paired by seed (difference codistill − fedavg, points, 95% t-interval). "
        "\"At least as accurate\" means a mean difference ≥ 0.",
        "",
        "| strategy | setting | sent / region | validation % | test % | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for p in pts:
        L.append(f"| {p.family} | {p.label} | {_mib(p.bytes_sent)} | {100 * p.validation:.2f} | "
                 f"{100 * p.test_mean:.1f} ± {100 * p.test_std:.1f} | {len(p.test)} |")
    L += ["", "| budget / region | codistill's choice | fedavg's choice | codistill − fedavg | at least as accurate |",
          "|---|---|---|---|---|"]
    for b in budgets:
        L.append(f"| {_mib(b.budget)} | {b.codistill.label} ({_mib(b.codistill.bytes_sent)}) | {b.fedavg.label} "
                 f"({_mib(b.fedavg.bytes_sent)}) | {_pct(b.difference)} | {'yes' if b.at_least_as_accurate else 'no'} |")
    L.append("")
    if tenth is None:
        L.append("fedavg's best point has no codistill point within a tenth of its bytes: the second half of the claim "
                 "cannot be judged.")
    else:
        L.append(f"At fedavg's best point by validation ({tenth.fedavg.label}, {_mib(tenth.fedavg.bytes_sent)}, test "
                 f"{100 * tenth.fedavg.test_mean:.1f}%), codistill's choice within a tenth of its bytes is "
                 f"{tenth.codistill.label} ({_mib(tenth.codistill.bytes_sent)}, 1/{tenth.fedavg.bytes_sent / tenth.codistill.bytes_sent:.0f} "
                 f"of the bytes, test {100 * tenth.codistill.test_mean:.1f}%): {_pct(tenth.difference)} points.")
    L += ["", f"**Claim** (at every byte budget codistill is at least as accurate as weight averaging, and at fedavg's "
              f"best accuracy it needs a tenth of its bytes or less): **{'shown' if shown else 'missed'}**"
              + ("" if shown else _missed(budgets, tenth)) + ".", ""]
    return L + figure


def _missed(budgets: list[BudgetComparison], tenth: BudgetComparison | None) -> str:
    behind = [b for b in budgets if not b.at_least_as_accurate]
    parts = [f"behind at {_mib(b.budget)} ({100 * b.difference.mean:+.1f} points)" for b in behind]
    if tenth is not None and not tenth.at_least_as_accurate:
        parts.append(f"behind at a tenth of fedavg's best point's bytes ({100 * tenth.difference.mean:+.1f} points)")
    return " (" + "; ".join(parts) + ")" if parts else ""
