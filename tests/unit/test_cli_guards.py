"""`codistill run` refuses a bad --out before it loads any data or starts Ray."""

from pathlib import Path

import pytest

from codistill import cli
from codistill.launch import driver

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


@pytest.fixture
def nothing_may_start(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset was loaded or a run started despite bad input")

    monkeypatch.setattr(driver, "prepare", refuse)
    monkeypatch.setattr(driver, "run", refuse)


def _bad_out(tmp_path, kind):
    if kind == "file":
        (tmp_path / "f").write_text("")
        return tmp_path / "f"
    if kind == "under-file":
        (tmp_path / "f").write_text("")
        return tmp_path / "f" / "run"
    return Path("/sys/codistill-test-out")


@pytest.mark.parametrize("kind,needle", [("file", "is a file"), ("under-file", "which is a file"), ("read-only", "cannot be created")])
def test_bad_out_fails_before_data_or_ray(tmp_path, capsys, nothing_may_start, kind, needle):
    code = cli.main(["run", QUICKSTART, "--out", str(_bad_out(tmp_path, kind))])
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert code == cli.EXIT_USAGE and len(lines) == 1 and needle in lines[0], lines


def test_probe_leaves_no_trace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli._check_out(tmp_path / "new" / "run", force=False)
    assert list(tmp_path.iterdir()) == []


def test_fail_prints_one_line_whatever_the_message_holds(capsys):
    from rich.console import Console

    assert cli._fail(Console(width=80), "first\nsecond [/red] third", 2) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["codistill: error: first second [/red] third"], lines


def test_out_and_resume_expand_the_home_folder(monkeypatch, tmp_path):
    # A job started with `ray job submit -- codistill run ... --out ~/runs/x` gets the ~ unexpanded.
    from codistill import cli

    monkeypatch.setenv("HOME", str(tmp_path))
    args = cli._parser().parse_args(["run", "c.yaml", "--out", "~/runs/x"])
    assert args.out == tmp_path / "runs" / "x"
    assert cli._parser().parse_args(["run", "--resume", "~/runs/x"]).resume == tmp_path / "runs" / "x"


@pytest.mark.parametrize("token", ["", "  "])
def test_an_empty_token_is_refused_before_data_or_ray(tmp_path, capsys, nothing_may_start, token):
    code = cli.main(["run", QUICKSTART, "--out", str(tmp_path / "run"), "--set", f"security.token={token}"])
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert code == cli.EXIT_USAGE and len(lines) == 1 and "security.token is empty" in lines[0], lines
