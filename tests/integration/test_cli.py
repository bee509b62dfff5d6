"""The `codistill` command as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
# Should a guard ever let bad input through, the run it starts stays seconds long and Ray-free.
TINY = ["--quiet", "--set", "train.steps=5", "--set", "exchange.transport=inprocess", "--set", "monitor.metrics=false"]


def codistill(*args, cwd):
    return subprocess.run([sys.executable, "-m", "codistill", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_one_line_usage_error(res, needle):
    """Exit 2 and one short line naming the problem: no traceback, no run header, no Ray."""
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], lines
    assert lines[0].startswith("codistill: error: ") and len(lines[0]) <= 240, lines


@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.stepz=5", "unknown config key 'train.stepz'"),
        ("data.partition.alpha=0", "data.partition.alpha"),
        ("regions.count=5000", "regions.count=5000 exceeds"),
        ("consensus.rule=vote", "consensus.rule"),
        ("regions.count=true", "regions.count: Input should be a valid integer (got True)"),
        ("distill.temperature=.inf", "distill.temperature: Input should be a finite number"),
        ("train.lr=.nan", "train.lr: Input should be a finite number"),
        ("exchange.round_timeout_s=.inf", "exchange.round_timeout_s: Input should be a finite number"),
        ("chaos.hang_seconds=1e300", "chaos.hang_seconds: Input should be less than or equal to 86400"),
        ("exchange.max_message_bytes=2147483648", "exchange.max_message_bytes: Input should be less than"),
        ("regions.hidden=[]", "regions.hidden: List should have at least 1 item"),
        ("regions.hidden=[64,-1]", "regions.hidden.1: Input should be greater than or equal to 1"),
        (f"name={'n' * 50_000}", "name: String should have at most 100 characters"),
        (f"data.data_dir={'d' * 50_000}", "data.data_dir: String should have at most 4096 characters"),
    ],
)
def test_bad_config_is_one_line_exit_2_and_starts_nothing(tmp_path, override, needle):
    out = tmp_path / "out"
    res = codistill("run", QUICKSTART, *TINY, "--set", override, "--out", str(out), cwd=tmp_path)
    assert_one_line_usage_error(res, needle)
    assert not out.exists()
    assert "Started a local Ray" not in res.stderr


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "not UTF-8 text (byte 0)"),
        ("name: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 9)"),
        (b"name: x\x00\n", "not valid YAML (ReaderError)"),
        (b"name: 2024-13-45\n", "not valid YAML (ValueError)"),
    ],
    ids=["binary", "latin-1", "nul", "bad-date"],
)
def test_unreadable_config_file_is_one_line_exit_2(tmp_path, content, needle):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    out = tmp_path / "out"
    res = codistill("run", str(path), *TINY, "--out", str(out), cwd=tmp_path)
    assert_one_line_usage_error(res, needle)
    assert not out.exists()


@pytest.mark.parametrize("force", [False, True])
def test_out_naming_a_file_is_one_line_exit_2(tmp_path, force):
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    res = codistill("run", QUICKSTART, *TINY, "--out", str(out), *(["--force"] if force else []), cwd=tmp_path)
    assert_one_line_usage_error(res, "is a file; choose another --out")
    assert out.read_text() == "keep me"


def test_out_under_a_file_is_one_line_exit_2(tmp_path):
    (tmp_path / "plain").write_text("")
    res = codistill("run", QUICKSTART, *TINY, "--out", str(tmp_path / "plain" / "run"), cwd=tmp_path)
    assert_one_line_usage_error(res, "which is a file")


def test_out_in_an_unwritable_place_is_one_line_exit_2(tmp_path):
    # sysfs refuses new folders even to root, for whom permission bits are no obstacle.
    out = Path("/sys/codistill-test-out") / "run"
    res = codistill("run", QUICKSTART, *TINY, "--out", str(out), cwd=tmp_path)
    assert_one_line_usage_error(res, "cannot be created")
    assert not out.parent.exists()


def test_out_with_an_impossible_name_is_one_short_line(tmp_path):
    res = codistill("run", QUICKSTART, *TINY, "--out", str(tmp_path / ("o" * 5000)), cwd=tmp_path)
    assert_one_line_usage_error(res, "cannot be created (File name too long)")


def test_compare_value_is_not_read_as_markup(tmp_path):
    res = codistill("run", QUICKSTART, *TINY, "--compare", "[/bold]" + "x" * 5000, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_usage_error(res, "--compare: unknown strategy '[/bold]xxx")


def test_bench_out_naming_a_file_is_one_line_exit_2(tmp_path):
    out = tmp_path / "bench.txt"
    out.write_text("keep me")
    res = codistill("bench", str(ROOT / "benchmarks" / "suites" / "smoke.yaml"), "--out", str(out), cwd=tmp_path)
    assert_one_line_usage_error(res, "is a file; choose another --out")
    assert out.read_text() == "keep me"


def test_existing_output_folder_is_not_clobbered(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    res = codistill("run", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out), cwd=tmp_path)
    assert res.returncode == 2 and "--force" in res.stdout
    assert (out / "results.json").read_text() == "{}"


def test_run_with_compare_writes_results(tmp_path):
    out = tmp_path / "out"
    res = codistill(
        "run", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out), "--compare", "independent",
        "--set", "train.steps=60", "--set", "regions.count=3", "--set", "exchange.transport=inprocess",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["strategy"] == "codistill" and set(doc["compare"]) == {"codistill", "independent"}
    assert "ensemble" in res.stdout and "independent" in res.stdout
    assert (out / "metrics.jsonl").stat().st_size > 0 and (out / "config.yaml").exists()


def test_local_ray_run_stays_on_loopback(tmp_path):
    out = tmp_path / "out"
    res = codistill(
        "run", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out), "--quiet",
        "--set", "train.steps=40", "--set", "regions.count=3", "--set", "exchange.publish_interval=20",
        "--set", "distill.burn_in=10",  # rounds start at the burn-in, so it must come before the last step
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    ray_line = [line for line in res.stdout.splitlines() if "local Ray at" in line]
    assert ray_line and "127.0.0.1:" in ray_line[0], res.stdout
    endpoints = [line for line in res.stdout.splitlines() if line.startswith("metrics:")]
    addresses = [a.split("=")[1].rstrip(";") for a in endpoints[0].replace(",", " ").split() if "=" in a]
    assert addresses and all(a.startswith("127.0.0.1:") for a in addresses), endpoints
    doc = json.loads((out / "results.json").read_text())
    assert doc["transport"] == "grpc" and doc["bytes_sent"] > 0


def test_an_omit_run_shows_hidden_class_recall_in_the_final_table(tmp_path):
    tiny = ["--set", "data.dataset=synthetic", "--set", "data.synthetic_samples=1200", "--set", "data.transfer_size=300",
            "--set", "data.test_size=300", "--set", "regions.count=4", "--set", "regions.hidden=[32]",
            "--set", "train.steps=60", "--set", "distill.burn_in=10", "--set", "exchange.publish_interval=10",
            "--set", "exchange.transport=inprocess", "--set", "monitor.metrics=false", "--set", "fault.checkpoint_every=0"]
    res = codistill("run", QUICKSTART, *tiny, "--set", "data.partition.kind=omit", "--set", "data.partition.omit_classes=[1]",
                    "--compare", "independent", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    lines = {line.split("│")[1].strip(): line for line in res.stdout.splitlines() if line.count("│") >= 3}
    blind = [c.strip() for c in lines["class 1 recall, blind"].split("│")[2:4]]
    # Regions 0 and 1 never see class 1 labelled: alone they cannot recall it; the table says so.
    indep = doc["compare"]["independent"]["regions"]
    assert blind[1] == f"{(indep[0]['per_class_recall'][1] + indep[1]['per_class_recall'][1]) / 2:.3f}" == "0.000"
    assert float(blind[0]) > 0.3
    assert "class 1 recall, seeing" in lines


def test_compare_fedavg_with_mixed_architectures_fails_before_anything_starts(tmp_path):
    res = codistill("run", QUICKSTART, *TINY, "--set", "regions.models=[mlp,cnn,mlp,cnn,mlp,cnn]",
                    "--compare", "independent,fedavg", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert_one_line_usage_error(res, "--compare fedavg: ")
    assert "one architecture" in res.stdout + res.stderr
    assert not (tmp_path / "run").exists()  # nothing started, no run folder


@pytest.mark.parametrize("transport", ["inprocess", "grpc"])
def test_the_live_view_ends_with_every_region_done(tmp_path, transport):
    res = codistill("run", QUICKSTART, "--set", "train.steps=30", "--set", "train.eval_every=10", "--set", "distill.burn_in=10",
                    "--set", "exchange.publish_interval=10", "--set", f"exchange.transport={transport}",
                    "--set", "monitor.metrics=false", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    header = next(line.split("┃") for line in res.stdout.splitlines() if "state" in line and "┃" in line)
    names = [cell.strip() for cell in header]
    # Regions served over the network name their node; in-process ones have none.
    assert ("node" in names) == (transport == "grpc"), names
    state = names.index("state")
    rows = [line.split("│") for line in res.stdout.splitlines() if "/30 " in line]
    last = {cells[1].strip(): cells[state].strip() for cells in rows}  # region -> state, the latest wins
    assert len(last) == 6 and set(last.values()) == {"done"}, last
    if transport == "grpc":
        assert {cells[names.index("node")].strip() for cells in rows} == {"127.0.0.1"}
