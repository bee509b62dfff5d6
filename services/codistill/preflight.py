"""Everything a run checks before it starts, shared by the command line and `codistill.run`.

Each check raises a user error (ConfigError, DataError, PartitionError, SecurityError) with one
line naming what is wrong; none starts Ray, a region or a server.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from codistill import config as config_mod
from codistill import data, plugins
from codistill.config import STRATEGIES, ConfigError, RunConfig, excerpt, excerpt_path


def check_compare(cfg: RunConfig, compare: list[str]) -> None:
    """Every --compare strategy must be known and runnable now, not after the others ran."""
    unknown = [s for s in compare if s not in STRATEGIES]
    if unknown:
        raise ConfigError(f"--compare: unknown strategy {excerpt(unknown[0])} (expected one of {', '.join(STRATEGIES)})")
    for strategy in compare:
        config_mod.for_strategy(cfg, strategy)


def default_out(name: str) -> Path:
    """Where a run goes without --out (out= in codistill.run): runs/<timestamp>-<name>/."""
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def check_out(out: Path, *, force: bool, reuse: bool = False) -> None:
    """Fail unless `out` is, or can be created as, a folder we can write.

    `reuse`: the folder's files are expected there (a resumed run, a bench's finished cells).
    """
    shown = excerpt_path(out)
    try:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output folder {shown} is a file; choose another --out")
        if out.is_dir() and not reuse and not force and any(out.iterdir()):
            raise ConfigError(f"output folder {shown} already holds files; choose another --out or pass --force")
        base = next((p for p in (out, *out.parents) if p.exists()), Path(out.anchor or "."))
        if not base.is_dir():
            raise ConfigError(f"output folder {shown} lies under {excerpt_path(base)}, which is a file")
        # Creating and removing a folder is the one test of writability that holds for every
        # user (root ignores permission bits) and every filesystem (read-only mounts).
        os.rmdir(tempfile.mkdtemp(prefix=".codistill-", dir=base))
    except OSError as exc:
        raise ConfigError(f"output folder {shown} cannot be created ({exc.strerror or exc.__class__.__name__})") from None


def check_security(cfg: RunConfig) -> None:
    """The token and every region's TLS files must be readable."""
    from codistill.region.security import TlsFiles

    cfg.security.resolved_token()
    if cfg.security.tls_dir:
        for region in range(cfg.regions.count):
            TlsFiles.load(cfg.security.tls_dir, region, cfg.regions.count)


def check_encoding(cfg: RunConfig, num_classes: int) -> None:
    """topk keeps at most every class; k = classes is allowed (exact, but it saves nothing)."""
    ex = cfg.exchange
    if ex.encoding == "topk" and ex.topk > num_classes:
        raise ConfigError(f"exchange.topk: {ex.topk} exceeds the dataset's {num_classes} classes (choose fewer than {num_classes} to save bytes)")


def prepare(cfg: RunConfig) -> data.Split:
    """Security files, the dataset (built-in, npz or a user loader), the split, and every model of
    the run on a tiny CPU batch: the split the run will use, or a user error."""
    from codistill.launch import driver

    check_security(cfg)
    split = driver.prepare(cfg)  # data.load_dataset, then data.make_split
    check_encoding(cfg, split.dataset.num_classes)
    plugins.check_models(cfg, split.dataset)
    return split
