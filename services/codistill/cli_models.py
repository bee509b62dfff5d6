"""`codistill predict`, `export` and `distill`: using the models a run saved.

  codistill predict RUN_DIR (INPUT | --split test|validation) [--region I | --ensemble | --student] [--out FILE]
  codistill export RUN_DIR [--region I | --student] [--format pt2|onnx] [--out FILE]
  codistill distill RUN_DIR --model ARCH [--steps N]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

from codistill.errors import UserError
from codistill.saved import export as export_mod
from codistill.saved import predict as predict_mod
from codistill.saved import student as student_mod
from codistill.saved.store import STUDENT

Fail = Callable[[Console, str, int], int]


def add_parsers(sub) -> None:
    p = sub.add_parser("predict", help="predict with a run's saved models; accuracy and per-class recall when labels are given")
    p.add_argument("run_dir", type=Path)
    p.add_argument("input", nargs="?", type=Path, help=".npz with x (and y), or .npy of x; raw uint8 pixels or floats")
    p.add_argument("--split", choices=predict_mod.SPLITS, help="instead of INPUT: the run's own split, made again from its config")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--region", type=int, help="one region's model (default: region 0)")
    which.add_argument("--ensemble", action="store_true", help="every region of the strategy, their probabilities averaged")
    which.add_argument("--student", action="store_true", help="the model `codistill distill` made")
    p.add_argument("--strategy", help="whose regions (default: the run's own strategy)")
    p.add_argument("--out", type=Path, help="where probabilities and classes go (.npz; default RUN_DIR/predictions/<source>.npz)")
    e = sub.add_parser("export", help="write a saved model as a program that runs without codistill")
    e.add_argument("run_dir", type=Path)
    which = e.add_mutually_exclusive_group()
    which.add_argument("--region", type=int, help="the region to export (default 0)")
    which.add_argument("--student", action="store_true", help="export the student")
    e.add_argument("--strategy", help="whose regions (default: the run's own strategy)")
    e.add_argument("--format", default="pt2", help="pt2 (torch.export), or onnx where onnx and onnxscript are installed")
    e.add_argument("--out", type=Path, help="output file (default RUN_DIR/exported/<model>.<format>)")
    d = sub.add_parser("distill", help="train one student on the transfer set from the ensemble of a run's regions")
    d.add_argument("run_dir", type=Path)
    d.add_argument("--model", required=True, help="the student's architecture: mlp, cnn, or package.module:factory")
    d.add_argument("--steps", type=int, default=student_mod.STEPS, help=f"training steps (default {student_mod.STEPS})")
    d.add_argument("--strategy", help="whose regions teach (default: the run's own strategy)")


def run(args: argparse.Namespace, console: Console, fail: Fail, usage: int) -> int:
    try:
        if args.command == "predict":
            return _predict(args, console)
        if args.command == "export":
            strategy = STUDENT if args.student else args.strategy
            region = None if args.student else (args.region if args.region is not None else 0)
            out = export_mod.export(args.run_dir, region, strategy, args.format, args.out)
            console.print(f"exported: {out}", highlight=False)
            return 0
        return _distill(args, console)
    except UserError as exc:
        return fail(console, str(exc), usage)


def _predict(args: argparse.Namespace, console: Console) -> int:
    if (args.input is None) == (args.split is None):
        raise UserError("give an INPUT file or --split test|validation, one of the two")
    result = predict_mod.predict(args.run_dir, args.input, args.split, args.region, args.ensemble, args.student, args.strategy)
    name = "student" if args.student else ("ensemble" if args.ensemble else f"region-{args.region or 0}")
    out = args.out or args.run_dir / "predictions" / f"{name}-{args.split or args.input.stem}.npz"
    result.save(out)
    console.print(f"{result.source}: {len(result.probs)} examples", highlight=False)
    if result.labels is not None and len(result.labels):
        console.print(f"accuracy {result.accuracy:.4f} ({result.correct}/{len(result.labels)})", highlight=False)
        table = Table("class", "examples", "recall", title="per-class recall")
        for cls, n, recall in result.recall():
            table.add_row(cls, str(n), f"{recall:.3f}")
        console.print(table)
    console.print(f"predictions: {out}", highlight=False)
    return 0


def _distill(args: argparse.Namespace, console: Console) -> int:
    def progress(step: int, steps: int, val: float) -> None:
        if step % max(1, steps // 10) == 0 or step == steps:
            console.print(f"step {step}/{steps}: validation accuracy {val:.4f}", highlight=False)

    report = student_mod.distill(args.run_dir, args.model, args.steps, args.strategy, progress=progress)
    table = Table("model", "test accuracy", title=f"student ({report.arch}) distilled from {report.teacher}, step {report.step}")
    table.add_row("student", f"{report.student_test_accuracy:.4f}")
    table.add_row("mean region", f"{report.mean_region_test_accuracy:.4f}")
    table.add_row("best region", f"{report.best_region_test_accuracy:.4f}")
    table.add_row("ensemble", f"{report.ensemble_test_accuracy:.4f}")
    console.print(table)
    console.print(f"student: {args.run_dir / 'models' / STUDENT}", highlight=False)
    return 0
