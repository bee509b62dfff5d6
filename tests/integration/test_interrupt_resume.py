"""Ctrl-C or SIGTERM during `codistill run`, then `--resume`: a clean stop, one line, and a finished run like an uninterrupted one."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
STEPS, EVERY = 1500, 50  # train.steps, fault.checkpoint_every
TINY = [
    "--quiet", "--set", "data.dataset=synthetic", "--set", "data.synthetic_samples=1200", "--set", "data.transfer_size=300",
    "--set", "data.test_size=300", "--set", "regions.count=3", "--set", "regions.hidden=[32]",
    "--set", f"train.steps={STEPS}", "--set", f"train.eval_every={EVERY}", "--set", "distill.burn_in=20",
    "--set", "exchange.publish_interval=10", "--set", "exchange.transport=inprocess", "--set", "exchange.mode=sync",
    "--set", "monitor.metrics=false", "--set", f"fault.checkpoint_every={EVERY}",
]
pytestmark = pytest.mark.integration


def codistill(*args, cwd):
    return subprocess.run([sys.executable, "-m", "codistill", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def interrupt_mid_run(out: Path, cwd: Path) -> tuple[int, str]:
    """Start a run, send SIGINT once every region holds two checkpoints, and return (exit code, output)."""
    proc = subprocess.Popen([sys.executable, "-m", "codistill", "run", QUICKSTART, *TINY, "--out", str(out)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folders = [out / "checkpoints" / "codistill" / f"region-{i}" for i in range(3)]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if all(len(list(f.glob("step-*.pt"))) >= 2 for f in folders):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    return proc.returncode, output


def test_ctrl_c_stops_cleanly_and_resume_matches_an_uninterrupted_run(tmp_path):
    out = tmp_path / "stopped"
    code, output = interrupt_mid_run(out, tmp_path)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert lines[-1] == f"codistill: stopped; continue with: codistill run --resume {out}", lines
    assert sum("--resume" in line for line in lines) == 1, lines
    assert not (out / "results.json").exists()  # it did stop mid-run
    state = json.loads((out / "state.json").read_text())
    before = state["spent"]["codistill"]
    assert before > 0

    # As when a region was one interval behind its peers when the run stopped: its newest checkpoint is older.
    behind = sorted((out / "checkpoints" / "codistill" / "region-0").glob("step-*.pt"))
    behind[-1].unlink()
    common = int(behind[-2].name[5:14])
    res = codistill("run", "--resume", str(out), "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    resumed = json.loads((out / "results.json").read_text())
    res = codistill("run", QUICKSTART, *TINY, "--out", str(tmp_path / "whole"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())

    # Every region came back from one and the same checkpoint step.
    assert [r["resumed_from"] for r in resumed["regions"]] == [common] * 3
    for r, w in zip(resumed["regions"], whole["regions"]):
        assert r["steps"] == w["steps"] == STEPS
        per_interval = w["bytes_sent"] * EVERY / STEPS
        assert abs(r["bytes_sent"] - w["bytes_sent"]) <= per_interval, (r["bytes_sent"], w["bytes_sent"])
        assert abs(r["bytes_received"] - w["bytes_received"]) <= per_interval, (r["bytes_received"], w["bytes_received"])
        assert [s for s, _ in r["curve"]] == [s for s, _ in w["curve"]]
        assert max(abs(a - b) for (_, a), (_, b) in zip(r["curve"], w["curve"])) <= 0.05
    # The resumed run saves its finished models, as the uninterrupted one does, and they are what it reports.
    for i, (r, w) in enumerate(zip(resumed["regions"], whole["regions"])):
        cards = [json.loads((run / "models" / "codistill" / f"region-{i}" / "model.json").read_text()) for run in (out, tmp_path / "whole")]
        assert [c["step"] for c in cards] == [STEPS, STEPS]
        assert (cards[0]["test_accuracy"], cards[1]["test_accuracy"]) == (r["test_accuracy"], w["test_accuracy"])
    # Wall time says what it covers: every invocation together, and this one alone.
    assert resumed["wall_seconds"] == pytest.approx(before + resumed["wall_seconds_this_run"])
    assert resumed["wall_seconds_this_run"] < resumed["wall_seconds"]

    # The run-level series goes on where it stopped: each evaluation once, in order, every step of the whole run.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    runs = [r for r in records if r["kind"] == "run"]
    whole_runs = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    whole_runs = [r for r in whole_runs if r["kind"] == "run"]
    assert [(r["evaluation"], r["step"]) for r in runs] == [(r["evaluation"], r["step"]) for r in whole_runs]
    evals = [(r["region"], r["step"]) for r in records if r["kind"] == "eval"]
    assert len(evals) == len(set(evals)) == 3 * (STEPS // EVERY)


# As small as a Ray run gets: two regions of one small layer, a checkpoint every ten steps. Stopped at the
# first one; the steps left (a few seconds' worth) are the margin for the stop to land mid-run.
RAY_STEPS = 300
RAY_TINY = [
    "--quiet", "--set", "regions.count=2", "--set", "regions.hidden=[32]", "--set", f"train.steps={RAY_STEPS}",
    "--set", "train.eval_every=100", "--set", "fault.checkpoint_every=10", "--set", "monitor.metrics=false",
]
# What Ray's native failure handler prints when SIGTERM reaches it.
NATIVE_DUMP = ("*** SIGTERM received", "PC: @")


def running(procs) -> list[psutil.Process]:
    """Those still running (a zombie has ended: only its exit status is left)."""
    found = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def note_descendants(pid: int, tree: dict[int, tuple[psutil.Process, str]]) -> None:
    """Add every live descendant of `pid` to `tree`, with its command line as it was."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        if child.pid not in tree:
            try:
                tree[child.pid] = (child, " ".join(child.cmdline()))
            except psutil.Error:
                pass


def test_sigterm_stops_a_ray_run_as_ctrl_c_does_and_leaves_no_process_behind(tmp_path):
    """SIGTERM to the driver process, as `docker compose down` and Kubernetes send it (`ray job stop`: test_job_submit)."""
    out, log = tmp_path / "stopped", tmp_path / "output.txt"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "codistill", "run", QUICKSTART, *RAY_TINY, "--out", str(out)],
                                cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT)
    tree: dict[int, tuple[psutil.Process, str]] = {}  # every process the run started: its local Ray's, the regions' workers
    try:
        folders = [out / "checkpoints" / "codistill" / f"region-{i}" for i in range(2)]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            note_descendants(proc.pid, tree)
            if all(any(f.glob("step-*.pt")) for f in folders):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be stopped:\n{log.read_text()}"
        note_descendants(proc.pid, tree)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        gone_by = time.monotonic() + 10
        while running(p for p, _ in tree.values()) and time.monotonic() < gone_by:
            time.sleep(0.2)
        left = [f"{p.pid} {tree[p.pid][1][:120]}" for p in running(p for p, _ in tree.values())]
    finally:
        for p in running([p for p, _ in tree.values()]):
            p.kill()
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 143, output
    assert not any(mark in output for mark in NATIVE_DUMP) and "Traceback" not in output, output
    assert lines[-1] == f"codistill: stopped; continue with: codistill run --resume {out}", lines
    assert sum("--resume" in line for line in lines) == 1, lines
    assert any("raylet" in cmd for _, cmd in tree.values()), "no local Ray was seen among the run's processes"
    assert not left, f"processes of the run still running 10 s after it exited: {left}"
    assert not (out / "results.json").exists()  # it did stop mid-run
    assert json.loads((out / "state.json").read_text())["spent"]["codistill"] > 0  # the stop was handled, not a kill

    res = codistill("run", "--resume", str(out), "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    regions = json.loads((out / "results.json").read_text())["regions"]
    assert [r["steps"] for r in regions] == [RAY_STEPS] * 2
    assert all(r["resumed_from"] > 0 for r in regions), [r["resumed_from"] for r in regions]
