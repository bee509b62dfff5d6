"""Whole runs over the in-process transport: no Ray, no sockets."""

import json

import numpy as np
import pytest

from codistill.consensus import Rule
from codistill.launch import driver


def test_codistill_beats_independent_and_is_reproducible(tiny_cfg, tmp_path):
    doc = driver.run(tiny_cfg, tmp_path / "a", compare=["independent"])
    cmp = doc["compare"]
    assert cmp["codistill"]["mean_test_accuracy"] > cmp["independent"]["mean_test_accuracy"]
    assert cmp["independent"]["bytes_sent"] == 0 and cmp["codistill"]["bytes_sent"] > 0
    again = driver.run(tiny_cfg, tmp_path / "b")
    assert [r["test_accuracy"] for r in again["regions"]] == [r["test_accuracy"] for r in doc["regions"]]


def test_results_files_have_the_documented_keys(tiny_cfg, tmp_path):
    driver.run(tiny_cfg, tmp_path, compare=["centralized"])
    doc = json.loads((tmp_path / "results.json").read_text())
    for key in ("strategy", "mean_test_accuracy", "ensemble_test_accuracy", "regions", "wall_seconds", "config", "compare"):
        assert key in doc
    for r in doc["regions"]:
        assert {"id", "test_accuracy", "bytes_sent", "bytes_received", "steps"} <= set(r)
        assert r["steps"] == tiny_cfg.train.steps
    assert len(doc["compare"]["centralized"]["regions"]) == 1
    assert doc["compare"]["centralized"]["regions"][0]["steps"] == tiny_cfg.train.steps * tiny_cfg.regions.count
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval" and r["strategy"] == "codistill"]
    assert {r["region"] for r in evals} == {0, 1, 2}
    assert any(r["agreement"] is not None for r in evals)
    assert (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("rule", list(Rule))
def test_heterogeneous_regions_train_with_every_rule(tiny_cfg, tmp_path, rule):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.regions.models = ["mlp", "cnn", "mlp"]
    cfg.consensus.rule = rule.value
    cfg.train.steps = 30
    doc = driver.run(cfg, tmp_path)
    assert [r["arch"] for r in doc["regions"]] == ["mlp", "cnn", "mlp"]
    for r in doc["regions"]:
        # Each region distilled from both its peers under this rule ...
        peers = {str(i) for i in range(3)} - {str(r["id"])}
        assert set(r["peer_weights"]) == peers, r["peer_weights"]
        assert sum(r["peer_weights"].values()) == pytest.approx(1.0)
        # ... and learned: 4 classes, chance is 0.25.
        assert r["test_accuracy"] > 0.4, r


def _honest_mean(summary: dict, liars: list[int]) -> float:
    return float(np.mean([r["test_accuracy"] for r in summary["regions"] if r["id"] not in liars]))


def _with_a_liar(tiny_cfg, rule: str, tmp_path) -> tuple[dict, dict]:
    """5 regions on the tiny skewed split (Dirichlet α=0.3), region 0 publishing confident lies.

    Returns the codistill and independent summaries.
    """
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.regions.count = 5  # 4 peers each: enough for screened_mean to judge them
    cfg.consensus.rule = rule
    cfg.train.steps = 100
    cfg.chaos.liars = [0]
    cmp = driver.run(cfg, tmp_path, compare=["independent"])["compare"]
    return cmp["codistill"], cmp["independent"]


@pytest.mark.parametrize("rule", [Rule.ROBUST_ATTENTION, Rule.SCREENED_MEAN])
def test_robust_rules_codistill_past_a_liar_on_a_skewed_split(tiny_cfg, tmp_path, rule):
    co, alone = _with_a_liar(tiny_cfg, rule.value, tmp_path)
    assert _honest_mean(co, [0]) > _honest_mean(alone, [0]) + 0.1, (co["regions"], alone["regions"])
    alone_by_id = {r["id"]: r for r in alone["regions"]}
    for mine in (r for r in co["regions"] if r["id"] != 0):
        assert mine["test_accuracy"] > alone_by_id[mine["id"]]["test_accuracy"], mine["id"]
        # The liar got far less than a fair share (1/4) of this region's consensus weight.
        assert mine["peer_weights"]["0"] < 0.1, mine["peer_weights"]


def test_the_liar_poisons_the_plain_mean(tiny_cfg, tmp_path):
    # The setup above has teeth: without a defence the same liar makes co-distillation worse than none.
    co, alone = _with_a_liar(tiny_cfg, Rule.MEAN.value, tmp_path)
    assert _honest_mean(co, [0]) < _honest_mean(alone, [0])


def test_async_mode_and_ring(tiny_cfg, tmp_path):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.exchange.mode = "async"
    cfg.exchange.topology = "ring"
    cfg.exchange.max_staleness = 15
    doc = driver.run(cfg, tmp_path)
    for r in doc["regions"]:
        assert set(r["messages_received"]) == {str((r["id"] - 1) % 3), str((r["id"] + 1) % 3)}
    assert np.mean([r["test_accuracy"] for r in doc["regions"]]) > 0.3


def test_fedavg_averages_weights_and_counts_parameter_bytes(tiny_cfg, tmp_path):
    from codistill.models import build_model, parameter_bytes

    cfg = tiny_cfg.model_copy(deep=True)
    cfg.exchange.average_every = 20
    doc = driver.run(cfg, tmp_path, compare=["fedavg", "independent"])
    fed = doc["compare"]["fedavg"]
    rounds = cfg.train.steps // cfg.exchange.average_every
    per_round = parameter_bytes(build_model("mlp", (1, 8, 8), 4, cfg.regions.hidden))
    for r in fed["regions"]:
        assert r["bytes_sent"] == r["bytes_received"] == rounds * per_round
    # The last step averaged: every region ends with the same model, so the same accuracy.
    assert len({r["test_accuracy"] for r in fed["regions"]}) == 1
    assert fed["mean_test_accuracy"] > doc["compare"]["independent"]["mean_test_accuracy"]


def test_fedavg_regions_start_from_one_initialisation(tiny_cfg):
    import torch

    from codistill.data import load_dataset, make_split
    from codistill.launch.plan import plan_regions, region_data
    from codistill.metrics import NullMetrics
    from codistill.region.exchange import WeightAveraging
    from codistill.region.service import build_learner

    split = make_split(tiny_cfg, load_dataset(tiny_cfg))
    plans = plan_regions(tiny_cfg, split, "fedavg")
    learners = [build_learner(tiny_cfg, p, region_data(split, p)) for p in plans[:2]]
    first = [w.clone() for w in learners[0].model.state_dict().values()]
    assert not all(torch.equal(a, b) for a, b in zip(first, learners[1].model.state_dict().values()))
    for p, learner in zip(plans, learners):
        WeightAveraging(p.id, tiny_cfg, learner, lambda region, k, state: state, None, NullMetrics())
    same = [torch.equal(a, b) for a, b in zip(learners[0].model.state_dict().values(), learners[1].model.state_dict().values())]
    assert all(same)
    # The optimizer still steps the model's own tensors.
    params = {id(p) for p in learners[0].model.parameters()}
    assert all(id(p) in params for group in learners[0].optimizer.param_groups for p in group["params"])


def test_fedavg_refuses_mixed_architectures(tiny_cfg):
    import pytest

    from codistill import config

    with pytest.raises(config.ConfigError, match="one architecture"):
        config.from_dict({**tiny_cfg.model_dump(mode="json"), "strategy": "fedavg", "regions": {"count": 2, "models": ["mlp", "cnn"]}})


def test_rounds_start_at_the_burn_in_so_nobody_distils_from_untrained_predictions():
    from codistill.region.exchange import publish_round

    # publish every 250 steps, burn-in 100: rounds at 100, 350, 600; none at 0 (untrained models).
    rounds = {s: publish_round(s, 250, 100) for s in range(800) if publish_round(s, 250, 100) is not None}
    assert rounds == {100: 0, 350: 1, 600: 2}
    assert [s for s in range(30) if publish_round(s, 10, 0) is not None] == [0, 10, 20]
