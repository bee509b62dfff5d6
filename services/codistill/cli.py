"""`codistill` command line.

  codistill run CONFIG [--set key=value ...] [--out DIR] [--compare S1,S2] [--address ADDR] [--force]
  codistill report RUN_DIR
  codistill bench SUITE.yaml [--out DIR] [--seeds N] [--report FILE] [--cached-only]
  codistill certs DIR --regions N
  codistill predict RUN_DIR (INPUT | --split test) [--region I | --ensemble | --student]
  codistill export RUN_DIR --region I [--format pt2|onnx]
  codistill distill RUN_DIR --model ARCH [--steps N]

Exit codes: 0 success, 1 a run failed, 2 bad input (nothing was started), 130 stopped by Ctrl-C,
143 stopped by SIGTERM (`ray job stop`, `docker compose down`, Kubernetes, systemd), which is handled as Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from typing import NoReturn
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from codistill import cli_models, preflight, storage
from codistill import config as config_mod
from codistill.config import STRATEGIES, excerpt_path
from codistill.errors import ConfigError, RegionError, UserError
from codistill.launch import interrupt, teardown

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(EXIT_USAGE, f"codistill: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="codistill", description="Peer-to-peer co-distillation between Ray-actor regions over gRPC.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train regions and report their accuracy")
    r.add_argument("config", nargs="?", help="YAML config (see configs/); not with --resume")
    r.add_argument("--resume", type=_user_path, metavar="RUN_DIR",
                   help="continue a stopped or killed run from its folder and its regions' checkpoints")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set regions.count=8 (repeatable)")
    # ~ expanded here too: `ray job submit -- codistill run ... --out ~/runs/x` passes it on unexpanded.
    r.add_argument("--out", type=_user_path, help="output folder (default runs/<timestamp>-<name>/)")
    r.add_argument("--compare", default="", help=f"also run these strategies on the same split, comma-separated: {','.join(STRATEGIES)}")
    r.add_argument("--address", help="join an existing Ray cluster (default: $RAY_ADDRESS, else start Ray locally)")
    r.add_argument("--force", action="store_true", help="write into an existing, non-empty output folder")
    r.add_argument("--quiet", action="store_true", help="no live table")
    r.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=None,
                   help="serve Prometheus metrics from every region (default: monitor.metrics)")
    cert = sub.add_parser("certs", help="create a CA and region certificates for mutual TLS (security.tls_dir)")
    cert.add_argument("folder", type=Path)
    cert.add_argument("--regions", type=int, required=True, help="how many region certificates (region ids 0..N-1)")
    cert.add_argument("--host", action="append", default=[], help="extra DNS name or IP the certificates name (repeatable)")
    cert.add_argument("--days", type=int, default=365, help="validity in days")
    cert.add_argument("--force", action="store_true", help="replace existing certificates in FOLDER")
    b = sub.add_parser("bench", help="run a benchmark suite: strategies x settings on identical splits")
    b.add_argument("suite", type=Path, help="suite YAML (see benchmarks/suites/)")
    b.add_argument("--out", type=_user_path, help="output folder (default runs/bench-<suite name>/); finished cells are reused")
    b.add_argument("--seeds", type=int, help="seeds per row, overriding the suite")
    b.add_argument("--report", type=Path, help="where the Markdown report goes (default OUT/report.md); plots go next to it in plots/")
    b.add_argument("--cached-only", action="store_true", help="run nothing: report on the cells finished so far")
    rep = sub.add_parser("report", help="plot convergence curves of a finished run into RUN_DIR/plots/")
    rep.add_argument("run_dir", type=Path)
    cli_models.add_parsers(sub)
    return p


def _fail(console: Console, message: str, code: int) -> int:
    # Escaped: a value echoed in the message must not be read as rich markup; one line whatever it holds.
    line = " ".join(message.splitlines())
    console.print(f"[bold red]codistill: error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    return code


_check_out = preflight.check_out  # its former name here


def _is_run_folder(folder: Path) -> bool:
    try:
        return (folder / "state.json").is_file() and (folder / "config.yaml").is_file()
    except OSError:  # e.g. a name longer than the filesystem allows
        return False


def _importable_from_cwd() -> None:
    # Like `python -m`, import paths in a config (regions.model, data.dataset) are looked up in
    # the current folder too; a local Ray's workers get the same folder (and PYTHONPATH).
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)


def _user_path(text: str) -> Path:
    return Path(text).expanduser()


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    try:
        overrides = list(args.overrides)
        if args.metrics is not None:
            overrides.append(f"monitor.metrics={str(args.metrics).lower()}")
        compare = [s.strip() for s in args.compare.split(",") if s.strip()]
        if args.resume is not None:
            if args.config or compare or args.out:
                raise ConfigError("--resume takes the config, strategies and folder of the run it continues; drop CONFIG, --compare and --out")
            out = args.resume
            if not _is_run_folder(out):
                raise ConfigError(f"--resume: {excerpt_path(out)} is not the folder of a started codistill run (no state.json/config.yaml)")
            cfg = config_mod.load(out / "config.yaml", overrides)
            preflight.check_out(out, force=True, reuse=True)
        else:
            if not args.config:
                raise ConfigError("give a CONFIG file, or --resume RUN_DIR")
            cfg = config_mod.load(args.config, overrides)
            preflight.check_compare(cfg, compare)
            out = args.out or preflight.default_out(cfg.name)
            preflight.check_out(out, force=args.force)
        if cfg.storage:  # checkpoints and results must be writable there before anything trains
            storage.check_writable(storage.run_location(cfg.storage, out))
        # Data, split and every model (a user's too) are checked here, before the header and Ray.
        split = preflight.prepare(cfg)
    except UserError as exc:
        return _fail(console, str(exc), EXIT_USAGE)

    from codistill.launch import driver

    from codistill.report.live import LiveProgress, results_table

    console.print(
        f"[bold]{cfg.name}[/]: {cfg.regions.count} regions, {cfg.data.dataset} "
        f"({len(split.transfer)} transfer, {sum(len(s) for s in split.slices)} labeled, "
        f"{len(split.dataset.test.y)} test), {cfg.data.partition.kind} split, "
        f"consensus={cfg.consensus.rule}, exchange={cfg.exchange.mode}/{cfg.exchange.transport} -> {out}",
        highlight=False,
    )
    live = None if args.quiet else LiveProgress(console)
    failure, usage, stopped = None, None, None
    # A Ray up before the run (an in-process caller's own) is its owner's to stop; one the run starts, the run stops.
    owns_ray = not teardown.ray_initialized()
    try:
        doc = driver.run(
            cfg, out, compare=compare, address=args.address,
            on_progress=live.update if live else None, split=split, resume=args.resume is not None,
            announce=lambda line: console.print(line, highlight=False, soft_wrap=True),
        )
    except RegionError as exc:
        failure = str(exc)
    except UserError as exc:  # found once Ray is up (a pinned region no node can host): still before any region starts
        usage = str(exc)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the driver stopped and drained the regions; their checkpoints stay
        stopped = exc
    finally:
        if live:
            live.close()
        if owns_ray:  # before the last line, so that nothing Ray prints while stopping follows it
            try:
                teardown.shut_down_ray()
            except KeyboardInterrupt as exc:  # a stop signal while Ray stops: its processes are gone all the same
                stopped = stopped or exc
    if stopped is not None:
        return _stopped(console, out, _exit_code(stopped))
    if usage:
        return _fail(console, usage, EXIT_USAGE)
    if failure:
        return _fail(console, failure, EXIT_FAILED)
    console.print(results_table(doc))
    console.print(f"results: {out / 'results.json'}  metrics: {out / 'metrics.jsonl'}", highlight=False)
    return 0


def _exit_code(exc: KeyboardInterrupt) -> int:
    """What a shell reports for a process ended by the signal that stopped it (interrupt.Interrupted says which)."""
    return EXIT_TERMINATED if getattr(exc, "signum", signal.SIGINT) == signal.SIGTERM else EXIT_STOPPED


def _stopped(console: Console, out: Path, code: int) -> NoReturn:
    """One line: how to continue the run (or that none had started)."""
    if _is_run_folder(out):
        line = f"codistill: stopped; continue with: codistill run --resume {shlex.quote(str(out))}"
    else:
        line = "codistill: stopped before the run started"
    console.print(escape(line), highlight=False, soft_wrap=True)
    console.file.flush()
    sys.stderr.flush()
    # Everything the run needs to resume is on disk by now. Interpreter teardown after an
    # interrupt can abort in native threads still winding down (exit -6 instead of 130), so
    # leave with the promised code (130 or 143) at once.
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (`ray job stop`, `docker compose down`, Kubernetes, systemd) stops a command as Ctrl-C does.
    with interrupt.sigterm_as_ctrl_c():
        try:
            return _main(argv)
        except KeyboardInterrupt as exc:  # outside a run (loading data, Ray starting, a report): no traceback
            print("codistill: stopped", file=sys.stderr)
            return _exit_code(exc)


def _main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:  # logs and CI: wide enough for the tables, no wrapping
        console = Console(width=140)
    if args.command == "run":
        _importable_from_cwd()
        return cmd_run(args, console)
    if args.command == "bench":
        from codistill.bench import load_suite, run_bench

        try:
            suite = load_suite(args.suite)
            if args.seeds is not None and args.seeds < 1:
                raise ConfigError("--seeds must be at least 1")
            out = args.out or Path("runs") / f"bench-{suite.name}"
            preflight.check_out(out, force=True, reuse=True)  # finished cells in it are reused
        except UserError as exc:
            return _fail(console, str(exc), EXIT_USAGE)
        try:
            command = "codistill " + " ".join(sys.argv[1:])
            run_bench(
                args.suite, out, args.seeds, announce=lambda line: console.print(line, highlight=False),
                report=args.report, command=command, cached_only=args.cached_only,
            )
        except RegionError as exc:
            return _fail(console, str(exc), EXIT_FAILED)
        except UserError as exc:  # cells of different code versions cannot be reported together
            return _fail(console, str(exc), EXIT_USAGE)
        console.print(f"bench: {out / 'bench.json'}  report: {args.report or out / 'report.md'}", highlight=False)
        return 0
    if args.command == "certs":
        from codistill.certs import make_certs

        try:
            written = make_certs(args.folder, args.regions, args.host, args.days, args.force)
        except UserError as exc:
            return _fail(console, str(exc), EXIT_USAGE)
        console.print(f"wrote {len(written)} certificates to {args.folder}; set security.tls_dir={args.folder}", highlight=False)
        return 0
    if args.command in ("predict", "export", "distill"):
        _importable_from_cwd()  # a user model's factory is imported as in `codistill run`
        return cli_models.run(args, console, _fail, EXIT_USAGE)
    if args.command == "report":
        from codistill.report import report

        try:
            paths = report(args.run_dir)
        except UserError as exc:
            return _fail(console, str(exc), EXIT_USAGE)
        for path in paths:
            console.print(str(path), highlight=False)
        return 0
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
