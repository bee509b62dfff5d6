import re
from typing import Literal, get_args, get_origin

import pytest
from pydantic import BaseModel

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


# ---------------------------------------------------------------- absurd values
def _fields(model, prefix=""):
    """(dotted key, field info) of every leaf field of a config model, sections recursed into."""
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            yield from _fields(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def _types(annotation):
    """The plain types an annotation admits: int for `Int | None`, list and int for `list[Int]`."""
    if isinstance(annotation, type) and not get_args(annotation):
        return {annotation}
    if get_origin(annotation) is Literal:
        return set()
    found = {get_origin(annotation)} if isinstance(get_origin(annotation), type) else set()
    for arg in get_args(annotation):
        found |= _types(arg) if not isinstance(arg, (str, int, float)) else set()
    return found


def _is(info, kind):
    return kind in _types(info.annotation)


FLOAT_KEYS = [key for key, info in _fields(config.RunConfig) if _is(info, float)]
INT_KEYS = [key for key, info in _fields(config.RunConfig) if _is(info, int)]


def _nested(key, value):
    raw = {}
    node = raw
    *sections, leaf = key.split(".")
    for part in sections:
        node = node.setdefault(part, {})
    node[leaf] = value
    return raw


def test_introspection_sees_every_numeric_field():
    # The parametrised tests below walk the models; make sure the walk reaches the fields that matter.
    assert {"distill.temperature", "train.lr", "exchange.round_timeout_s", "exchange.rpc_timeout_s",
            "monitor.linger_s", "chaos.hang_seconds", "consensus.beta", "regions.num_cpus"} <= set(FLOAT_KEYS)
    assert {"regions.count", "regions.hidden", "train.steps", "exchange.max_message_bytes", "seed",
            "data.validation_size", "chaos.liars"} <= set(INT_KEYS)


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), "inf", "NaN"])
def test_every_float_must_be_finite(key, value):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: Input should be a finite number"):
        config.from_dict(_nested(key, value))


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_no_float_takes_a_bool(key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: .*not true/false"):
        config.from_dict(_nested(key, True))


@pytest.mark.parametrize("key", INT_KEYS)
@pytest.mark.parametrize("value", [True, False, 3.0, "3"])
def test_no_count_takes_a_bool_float_or_string(key, value):
    wrapped = [value] if _is(dict(_fields(config.RunConfig))[key], list) else value
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}(\.0)?: Input should be a valid integer"):
        config.from_dict(_nested(key, wrapped))


def test_counts_still_take_yaml_and_set_ints(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("regions: {count: 3, hidden: [16, 8]}\nexchange: {max_message_bytes: 65536}\n")
    cfg = config.load(path, ["train.steps=7", "seed=2", "chaos.liars=[1]", "data.validation_size=0"])
    assert (cfg.regions.count, cfg.regions.hidden, cfg.exchange.max_message_bytes) == (3, [16, 8], 65536)
    assert (cfg.train.steps, cfg.seed, cfg.chaos.liars, cfg.data.validation_size) == (7, 2, [1], 0)


def test_max_message_bytes_defaults_to_derived_and_fits_grpc():
    assert config.from_dict({}).exchange.max_message_bytes is None
    assert config.from_dict({"exchange": {"max_message_bytes": 2**31 - 1}}).exchange.max_message_bytes == 2**31 - 1
    for bad in (2**31, 2**40, 1023):
        with pytest.raises(ConfigError, match=r"^exchange\.max_message_bytes: Input should be"):
            config.from_dict({"exchange": {"max_message_bytes": bad}})


@pytest.mark.parametrize(
    "hidden,needle",
    [
        ([], "at least 1 item"),
        ([-1], r"regions\.hidden\.0: Input should be greater than or equal to 1"),
        ([64, 0], r"regions\.hidden\.1: Input should be greater than or equal to 1"),
        ([16_385], "less than or equal to 16384"),
        ([8] * 17, "at most 16 items"),
        (64, "valid list"),
    ],
)
def test_hidden_is_a_short_list_of_positive_widths(hidden, needle):
    with pytest.raises(ConfigError, match=needle):
        config.from_dict({"regions": {"hidden": hidden}})


@pytest.mark.parametrize(
    "key,value",
    [
        ("regions.count", 10_001),
        ("regions.torch_threads", 257),
        ("train.batch_size", 2**20 + 1),
        ("distill.batch_size", 2**20 + 1),
        ("data.transfer_size", 10_000_001),
        ("data.test_size", 10_000_001),
        ("data.synthetic_samples", 10_000_001),
        ("data.synthetic_classes", 1001),
        ("exchange.round_timeout_s", 86_401.0),
        ("exchange.rpc_timeout_s", 1e300),
        ("monitor.linger_s", 86_401),
        ("chaos.hang_seconds", 1e18),
        ("train.steps", 2**31),
        ("exchange.publish_interval", 2**63),
        ("seed", 2**31),
    ],
)
def test_absurdly_large_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: Input should be less than or equal to"):
        config.from_dict(_nested(key, value))


def test_seed_must_not_be_negative():
    with pytest.raises(ConfigError, match=r"^seed: Input should be greater than or equal to 0"):
        config.from_dict({"seed": -1})


@pytest.mark.parametrize("name", ["a\nb", "tab\there", "x" * 101])
def test_name_must_be_a_short_printable_folder_name(name):
    with pytest.raises(ConfigError, match=r"^name: "):
        config.from_dict({"name": name})


@pytest.mark.parametrize("key", ["data.data_dir", "fault.checkpoint_dir", "security.token_file", "security.tls_dir"])
def test_paths_are_capped_at_path_max(key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: String should have at most 4096 characters"):
        config.from_dict(_nested(key, "/x" * 2049))


# ---------------------------------------------------------------- short messages
HUGE = "v" * 100_000


def _assert_short(message, value_marker="v" * 41):
    assert "\n" not in message and len(message) <= 160, message
    assert value_marker not in message, message


@pytest.mark.parametrize(
    "doc,marker",
    [
        (f"name: {HUGE}\n", "v" * 41),
        (f"train: {{steps: {HUGE}}}\n", "v" * 41),
        (f"regions: {{hidden: [{', '.join(['-1'] * 50_000)}]}}\n", ", ".join(["-1"] * 10)),
        (f"chaos: {{liars: [{', '.join(['7'] * 50_000)}]}}\n", ", ".join(["7"] * 10)),
        (f"data: {{partition: {{omit_regions: [{', '.join(['7'] * 50_000)}]}}}}\n", ", ".join(["7"] * 10)),
        (f"train: {{{'v' * 1000}: 1}}\n", "v" * 41),
        (f"seed: {'9' * 4000}\n", "9" * 41),
    ],
    ids=["string", "string-for-int", "list-too-long", "liars", "omit-regions", "key", "int-digits"],
)
def test_errors_show_only_an_excerpt_of_a_huge_value(tmp_path, doc, marker):
    path = tmp_path / "c.yaml"
    path.write_text(doc)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    _assert_short(str(err.value), value_marker=marker)


@pytest.mark.parametrize("item", ["k" * 5000, f"{'k' * 5000}.steps=1", f"train.{'k' * 5000}=1", "a\nb"])
def test_set_errors_show_only_an_excerpt(item):
    raw = {"train": 3} if item.startswith("k") and "=" in item else {}
    with pytest.raises(ConfigError) as err:
        config.from_dict(config.apply_overrides(raw, [item]))
    _assert_short(str(err.value), value_marker="k" * 41)


def test_set_on_a_value_names_the_section_briefly():
    with pytest.raises(ConfigError, match=r"is not a section") as err:
        config.apply_overrides({"k" * 5000: 3}, [f"{'k' * 5000}.steps=1"])
    _assert_short(str(err.value), value_marker="k" * 41)


def test_excerpt_cuts_and_stays_on_one_line():
    assert config.excerpt("short") == "'short'"
    assert config.excerpt("a\nb") == "'a\\nb'"
    cut = config.excerpt("x" * 1000)
    assert len(cut) == config.EXCERPT_CHARS and cut.endswith("...")
    assert len(config.excerpt(list(range(10_000)))) <= config.EXCERPT_CHARS


# ---------------------------------------------------------------- unreadable files
@pytest.mark.parametrize(
    "content,needle",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text"),
        ("name: caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
        (b"name: x\x00\n", r"not valid YAML \(ReaderError\)"),
        (b"name: 2024-13-45\n", r"not valid YAML \(ValueError\)"),
        (b"a: " + b"[" * 20_000 + b"]" * 20_000 + b"\n", r"not valid YAML \(RecursionError\)"),
        (b"# " + b"x" * (1024 * 1024) + b"\n", "larger than 1024 KiB"),
    ],
    ids=["binary", "latin-1", "nul", "bad-date", "deep", "huge"],
)
def test_unreadable_config_files_are_one_line_errors(tmp_path, content, needle):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=needle) as err:
        config.load(path)
    _assert_short(str(err.value), value_marker="x" * 41)


def test_unreadable_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file") as err:
        config.load(tmp_path / ("n" * 5000))  # longer than any filesystem allows
    _assert_short(str(err.value), value_marker="n" * 81)


def test_set_value_that_is_not_yaml_stays_a_string():
    assert config.load(None, ["name=2024-13-45"]).name == "2024-13-45"


def test_binary_token_file_is_a_config_error(tmp_path):
    token = tmp_path / "token"
    token.write_bytes(b"\xff\xfe\x00")
    cfg = config.from_dict({"security": {"token_file": str(token)}})
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        cfg.security.resolved_token()


def test_an_int_too_long_to_print_is_still_a_short_error():
    # Python refuses to turn ints of over 4,300 digits into text; the message must not.
    with pytest.raises(ConfigError, match=r"^seed: .*\(got <int too large to show>\)$"):
        config.from_dict({"seed": 10**5000})


@pytest.mark.parametrize("token", ["", "  ", "\t"])
def test_an_empty_token_is_a_config_error_in_a_file_or_an_override(token):
    with pytest.raises(config.ConfigError, match="security.token is empty"):
        config.from_dict({"security": {"token": token}})
    with pytest.raises(config.ConfigError, match="security.token is empty"):
        config.from_dict(config.apply_overrides({}, [f"security.token={token}"]))
    assert config.apply_overrides({}, ["security.token=null"]) == {"security": {"token": None}}
