from codistill.launch.loopback import keep_local_ray_on_loopback

# Every Ray process of the test session stays on loopback; set before Ray is imported.
keep_local_ray_on_loopback()

import pytest  # noqa: E402

from codistill import config  # noqa: E402


def make_tiny_cfg():
    """A seconds-long synthetic run: 3 regions, sync exchange, in-process transport."""
    return config.from_dict(
        {
            "name": "tiny",
            "seed": 0,
            "data": {
                "dataset": "synthetic",
                "synthetic_samples": 1200,
                "synthetic_classes": 4,
                "transfer_size": 300,
                "test_size": 300,
                "partition": {"kind": "dirichlet", "alpha": 0.3},
            },
            "regions": {"count": 3, "hidden": [32], "num_cpus": 0.5},
            "train": {"steps": 60, "batch_size": 32, "eval_every": 20},
            "distill": {"burn_in": 10, "weight": 2.0},
            "exchange": {"transport": "inprocess", "publish_interval": 10, "round_timeout_s": 20},
        }
    )


@pytest.fixture
def tiny_cfg():
    return make_tiny_cfg()
