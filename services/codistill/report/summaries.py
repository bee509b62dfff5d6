"""Figures derived from a run's results document, shared by the final table and the plots."""

from __future__ import annotations


def hidden_class_recall(results: dict) -> dict[str, dict[str, float]]:
    """strategy -> {"blind": recall, "seeing": recall} on the hidden classes of an `omit` run."""
    cfg = results.get("config", {})
    part = cfg.get("data", {}).get("partition", {})
    if part.get("kind") != "omit":
        return {}
    hidden = part.get("omit_classes") or []
    count = cfg.get("regions", {}).get("count", 0)
    blind = set(part.get("omit_regions") if part.get("omit_regions") is not None else range(count // 2))
    out: dict[str, dict[str, float]] = {}
    for strategy, r in (results.get("compare") or {results["strategy"]: results}).items():
        groups = {"blind": [], "seeing": []}
        for reg in r["regions"]:
            side = "blind" if reg["id"] in blind and strategy != "centralized" else "seeing"
            groups[side].append(sum(reg["per_class_recall"][c] for c in hidden) / len(hidden))
        out[strategy] = {side: sum(v) / len(v) for side, v in groups.items() if v}
    return out
