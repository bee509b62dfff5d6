"""Regions as real Ray actors exchanging over real gRPC on loopback."""

import pytest

from codistill.launch import driver
from codistill.region.exchange import publish_round

pytestmark = pytest.mark.integration


def test_regions_exchange_over_grpc_and_learn_from_each_other(local_ray, tiny_cfg, tmp_path):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.exchange.transport = "grpc"
    doc = driver.run(cfg, tmp_path, compare=["independent"])
    co, ind = doc["compare"]["codistill"], doc["compare"]["independent"]
    assert co["transport"] == "grpc"
    # Rounds start once the burn-in ends: steps 10, 20, ..., 50 of 60.
    rounds = sum(publish_round(s, cfg.exchange.publish_interval, cfg.distill.burn_in) is not None for s in range(cfg.train.steps))
    assert rounds == 5
    for r in co["regions"]:
        peers = {str(p) for p in range(3) if p != r["id"]}
        assert set(r["messages_received"]) == peers
        assert all(r["messages_received"][p] == rounds for p in peers), r["messages_received"]
        assert r["bytes_sent"] > 0 and r["bytes_received"] > 0
        assert r["steps"] == cfg.train.steps
    assert all(r["bytes_sent"] == 0 and r["bytes_received"] == 0 for r in ind["regions"])
    # Same seeds and split: the only difference is the exchange, and it changed the models.
    assert [r["test_accuracy"] for r in co["regions"]] != [r["test_accuracy"] for r in ind["regions"]]
    assert co["mean_test_accuracy"] > ind["mean_test_accuracy"]


def test_grpc_and_inprocess_transports_agree_in_sync_mode(local_ray, tiny_cfg, tmp_path):
    grpc_cfg = tiny_cfg.model_copy(deep=True)
    grpc_cfg.exchange.transport = "grpc"
    over_grpc = driver.run(grpc_cfg, tmp_path / "g")
    in_process = driver.run(tiny_cfg, tmp_path / "i")
    assert [r["test_accuracy"] for r in over_grpc["regions"]] == [r["test_accuracy"] for r in in_process["regions"]]
    assert over_grpc["bytes_sent"] == in_process["bytes_sent"]
