import pytest

from codistill import config
from codistill.config import ConfigError


def test_defaults_validate():
    cfg = config.from_dict({})
    assert cfg.strategy == "codistill" and cfg.regions.count >= 2


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.stepz'"):
        config.from_dict({"train": {"stepz": 3}})


def test_alpha_must_be_positive():
    with pytest.raises(ConfigError, match=r"data\.partition\.alpha.*greater than 0"):
        config.from_dict({"data": {"partition": {"kind": "dirichlet", "alpha": 0}}})


def test_literal_error_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"consensus\.rule.*'attention'"):
        config.from_dict({"consensus": {"rule": "vote"}})


def test_per_region_models_must_match_count():
    with pytest.raises(ConfigError, match="regions.models has 2 entries"):
        config.from_dict({"regions": {"count": 3, "models": ["mlp", "cnn"]}})


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nregions: {count: 3}\n")
    cfg = config.load(path, ["regions.count=5", "consensus.beta=2.5", "regions.models=[mlp,cnn,mlp,cnn,mlp]"])
    assert cfg.regions.count == 5 and cfg.consensus.beta == 2.5 and cfg.regions.architecture(1) == "cnn"


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="key=value"):
        config.apply_overrides({}, ["regions.count"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(bad)


def test_dump_round_trips(tmp_path):
    cfg = config.from_dict({"regions": {"count": 5}, "consensus": {"rule": "median"}})
    path = tmp_path / "c.yaml"
    path.write_text(config.dump(cfg))
    assert config.load(path) == cfg
