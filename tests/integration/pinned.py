"""Matching a run's per-region figures against figures pinned from an earlier run.

A sync run is a function of its seed on one machine with one set of library versions.
Across processors, float kernels (AVX2 against AVX-512, one vendor's against another's) round
differently, and a model near a decision boundary then calls the odd test example the other
way. So a pin matches with a tolerance counted in test examples; bytes, which no rounding
moves, and region ids match exactly.
"""

from __future__ import annotations

FIGURES = ("id", "test_accuracy", "bytes_sent", "bytes_received")
# Test examples a region's accuracy may differ from its pin by. Another processor flips one
# or two (quickstart on an AVX-512 EPYC: regions 0 and 5 one each); a change of the math moves more.
FLIPS = 3
_WHOLE = 1e-3  # float32 accuracies times a few thousand examples stay this close to a whole count


def figures(regions: list[dict]) -> list[dict]:
    """The pinned figures of each region of a results document, in order."""
    return [{k: r[k] for k in FIGURES} for r in regions]


def correct(accuracy: float, test_size: int) -> int:
    """How many of `test_size` test examples an accuracy stands for.

    ValueError when it stands for no whole number of them: `test_size` is not the size of
    the test set the accuracy was measured on, and a tolerance counted in it would be wrong."""
    n = accuracy * test_size
    if abs(n - round(n)) > _WHOLE:
        raise ValueError(f"accuracy {accuracy!r} is not a whole number of {test_size} test examples ({n:.4f})")
    return round(n)


def pin_mismatches(got: list[dict], pinned: list[dict], test_size: int, flips: int = FLIPS) -> list[str]:
    """Why `got` does not match `pinned`, one line per difference; empty when it matches.

    Both are lists of regions with FIGURES. Ids and bytes must be equal; each region's accuracy
    within `flips` of `test_size` test examples of its pin."""
    if [r["id"] for r in got] != [r["id"] for r in pinned]:
        return [f"regions {[r['id'] for r in got]}, pinned {[r['id'] for r in pinned]}"]
    out = []
    for g, p in zip(got, pinned):
        for key in ("bytes_sent", "bytes_received"):
            if g[key] != p[key]:
                out.append(f"region {g['id']}: {key} {g[key]}, pinned {p[key]}")
        have, want = correct(g["test_accuracy"], test_size), correct(p["test_accuracy"], test_size)
        if abs(have - want) > flips:
            out.append(f"region {g['id']}: {have} of {test_size} test examples right, pinned {want} (at most {flips} may differ)")
    return out
