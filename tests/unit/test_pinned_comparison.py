"""Matching figures against a pin: the odd flipped test example passes, a moved result does not."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from tests.integration.pinned import FLIPS, correct, pin_mismatches

PINNED = json.loads((Path(__file__).resolve().parents[1] / "data" / "pinned_results.json").read_text())
QUICKSTART = PINNED["quickstart"]["codistill"]
N_TEST = 360  # configs/quickstart.yaml: data.test_size


def moved(regions: list[dict], by: dict[int, int], n_test: int = N_TEST) -> list[dict]:
    """`regions` with region i's accuracy moved by by[i] test examples, stored as float32 as runs store it."""
    out = copy.deepcopy(regions)
    for r in out:
        if r["id"] in by:
            r["test_accuracy"] = float(np.float32((correct(r["test_accuracy"], n_test) + by[r["id"]]) / n_test))
    return out


def test_the_pin_matches_itself():
    assert pin_mismatches(QUICKSTART, QUICKSTART, N_TEST) == []


def test_what_an_avx512_epyc_gives_matches_the_pin():
    # Region 0: 0.8806 where the pin says 0.8778; region 5: 0.8556 against 0.8583; bytes identical.
    there = moved(QUICKSTART, {0: +1, 5: -1})
    assert round(there[0]["test_accuracy"], 4) == 0.8806 and round(there[5]["test_accuracy"], 4) == 0.8556
    assert pin_mismatches(there, QUICKSTART, N_TEST) == []


def test_a_pin_perturbed_by_one_example_in_every_region_still_matches():
    for sign in (+1, -1):
        assert pin_mismatches(QUICKSTART, moved(QUICKSTART, {r["id"]: sign for r in QUICKSTART}), N_TEST) == []


def test_up_to_flips_examples_match_and_one_more_does_not():
    assert pin_mismatches(moved(QUICKSTART, {2: FLIPS}), QUICKSTART, N_TEST) == []
    assert pin_mismatches(moved(QUICKSTART, {2: -FLIPS}), QUICKSTART, N_TEST) == []
    assert pin_mismatches(moved(QUICKSTART, {2: FLIPS + 1}), QUICKSTART, N_TEST) == [
        f"region 2: {297 + FLIPS + 1} of 360 test examples right, pinned 297 (at most {FLIPS} may differ)"
    ]
    assert len(pin_mismatches(moved(QUICKSTART, {1: -FLIPS - 1, 4: FLIPS + 1}), QUICKSTART, N_TEST)) == 2


def test_a_distillation_term_of_half_its_weight_does_not_match():
    # What the quickstart's codistilled regions 0-4 got with the loss's distillation term halved
    # (region 5 stayed within 3): a change of the math moves several regions by 4 to 8 examples.
    halved = moved(QUICKSTART, {0: -8, 1: -7, 2: -4, 3: -4, 4: +5})
    assert [line.split(":")[0] for line in pin_mismatches(halved, QUICKSTART, N_TEST)] == [f"region {i}" for i in range(5)]


@pytest.mark.parametrize("key", ["bytes_sent", "bytes_received"])
def test_bytes_match_exactly(key):
    off = copy.deepcopy(QUICKSTART)
    off[3][key] += 1
    assert pin_mismatches(off, QUICKSTART, N_TEST) == [f"region 3: {key} {QUICKSTART[3][key] + 1}, pinned {QUICKSTART[3][key]}"]


def test_missing_or_reordered_regions_do_not_match():
    assert pin_mismatches(QUICKSTART[:-1], QUICKSTART, N_TEST)
    assert pin_mismatches(QUICKSTART[::-1], QUICKSTART, N_TEST)


def test_the_tolerance_is_counted_in_the_test_set_the_accuracy_came_from():
    assert correct(QUICKSTART[0]["test_accuracy"], N_TEST) == 316
    with pytest.raises(ValueError, match="not a whole number of 300 test examples"):
        pin_mismatches(QUICKSTART, QUICKSTART, 300)
