"""`--resume` over a checkpoint someone rewrote to run code: refused in one line, by name, and the code never runs."""

import pytest

from tests.integration.test_interrupt_resume import codistill, interrupt_mid_run
from tests.unit.test_checkpoint import plant_payload

pytestmark = pytest.mark.integration


def test_resume_refuses_a_checkpoint_carrying_a_pickle_payload(tmp_path):
    out, marker = tmp_path / "stopped", tmp_path / "created-by-the-checkpoint"
    code, output = interrupt_mid_run(out, tmp_path)
    assert code == 130, output
    # The newest checkpoint every region holds: the one the resumed run would start from.
    folders = [out / "checkpoints" / "codistill" / f"region-{i}" for i in range(3)]
    common = max(set.intersection(*({p.name for p in f.glob("step-*.pt")} for f in folders)))
    tampered = folders[1] / common
    plant_payload(tampered, marker)

    res = codistill("run", "--resume", str(out), "--quiet", cwd=tmp_path)
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert res.returncode == 2, res.stdout + res.stderr
    # The run's header (what it would resume), then the refusal, in one line naming the file.
    assert lines[0].startswith("quickstart: 3 regions") and "Traceback" not in res.stdout + res.stderr, lines
    assert lines[-1].startswith(f"codistill: error: checkpoint {tampered} was not loaded"), lines
    assert sum("error" in line for line in lines) == 1, lines
    assert not marker.exists()
    assert not (out / "results.json").exists()  # no region started from it
