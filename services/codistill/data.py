"""Datasets and the split every run shares.

A run's examples are divided once, from the seed, into:
  * a test split that evaluates every region,
  * a shared *transfer set* of unlabeled examples on which regions exchange
    predictions (Hinton et al. 2015 distil on such a set),
  * a labeled *validation* split, held out of training and transfer, on which
    every choice (rule, hyperparameters, baselines' settings) is made, so the
    test split only reports, and
  * per-region labeled slices made by `codistill.partition`.

Datasets: `digits` (bundled with scikit-learn, needs no network),
`fashion-mnist` (IDX gz files from a local folder or a checksummed download),
and `synthetic` (Gaussian classes, for fast tests).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codistill import partition
from codistill.config import RunConfig

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# MD5 of the gz files as published by the dataset's authors.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MNIST_CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DataError(RuntimeError):
    pass


@dataclass
class Images:
    """Images as uint8 [N, 1, H, W] (or float32 for synthetic) with int64 labels [N]."""

    x: np.ndarray
    y: np.ndarray


@dataclass
class Dataset:
    name: str
    train: Images
    test: Images
    num_classes: int
    class_names: list[str]


@dataclass
class Split:
    """Everything a run needs, as index arrays into `dataset.train`."""

    dataset: Dataset
    transfer: np.ndarray  # [M] indices of unlabeled transfer examples
    slices: list[np.ndarray]  # per region, indices of labeled examples
    validation: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [V] held-out labeled

    @property
    def labeled(self) -> np.ndarray:
        return np.sort(np.concatenate(self.slices))


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]; float inputs pass through."""
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else np.array(x, dtype=np.float32)


# ---------------------------------------------------------------- IDX files
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX (optionally gzipped) file of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4:
        raise DataError(f"{path}: too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 data as a gzipped IDX file (used to make test fixtures)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fashion_mnist_dirs(data_dir: str | None = None) -> list[Path]:
    """Folders searched, in order: data_dir / $CODISTILL_DATA_DIR, the user cache, Debian's package."""
    dirs = []
    chosen = data_dir or os.environ.get("CODISTILL_DATA_DIR")
    if chosen:
        dirs.append(Path(chosen).expanduser())
    dirs.append(Path("~/.cache/codistill").expanduser())
    dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


def download_fashion_mnist(
    dest: Path,
    base_url: str = FASHION_MNIST_URL,
    checksums: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> Path:
    """Fetch the four IDX gz files into dest, verifying each MD5 before it is kept."""
    checksums = checksums or FASHION_MNIST_FILES
    dest.mkdir(parents=True, exist_ok=True)
    for name, expected in checksums.items():
        target = dest / name
        if target.exists() and md5sum(target) == expected:
            continue
        with tempfile.NamedTemporaryFile(dir=dest, delete=False, suffix=".part") as tmp:
            try:
                with urllib.request.urlopen(base_url + name, timeout=timeout_s) as resp:
                    shutil.copyfileobj(resp, tmp)
            except OSError as exc:
                os.unlink(tmp.name)
                raise DataError(f"could not download {base_url + name}: {exc}") from exc
        got = md5sum(Path(tmp.name))
        if got != expected:
            os.unlink(tmp.name)
            raise DataError(f"{name}: checksum mismatch (md5 {got}, expected {expected}); file discarded")
        os.replace(tmp.name, target)
    return dest


def find_fashion_mnist(data_dir: str | None = None, download: bool = True) -> Path:
    for folder in fashion_mnist_dirs(data_dir):
        if all((folder / name).is_file() for name in FASHION_MNIST_FILES):
            return folder
    if not download:
        searched = ", ".join(str(d) for d in fashion_mnist_dirs(data_dir))
        raise DataError(f"fashion-mnist not found in {searched}")
    cache = Path("~/.cache/codistill").expanduser()
    return download_fashion_mnist(cache)


def load_fashion_mnist(data_dir: str | None = None, download: bool = True) -> Dataset:
    folder = find_fashion_mnist(data_dir, download)
    xtr = read_idx(folder / "train-images-idx3-ubyte.gz")
    ytr = read_idx(folder / "train-labels-idx1-ubyte.gz")
    xte = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    yte = read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DataError(f"{folder}: image and label counts differ")
    return Dataset(
        "fashion-mnist",
        Images(xtr[:, None], ytr.astype(np.int64)),
        Images(xte[:, None], yte.astype(np.int64)),
        10,
        FASHION_MNIST_CLASSES,
    )


def _holdout(name: str, x: np.ndarray, y: np.ndarray, test_size: int, seed: int, classes: list[str]) -> Dataset:
    if test_size >= len(y):
        raise DataError(f"data.test_size={test_size} leaves no training data (dataset has {len(y)} samples)")
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[:test_size], order[test_size:]
    return Dataset(name, Images(x[train], y[train]), Images(x[test], y[test]), len(classes), classes)


def load_digits(test_size: int, seed: int) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    # Pixel values are 0..16; scale to uint8 0..255 so every dataset looks alike.
    x = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]
    return _holdout("digits", x, bunch.target.astype(np.int64), test_size, seed, [str(d) for d in range(10)])


def make_synthetic(n: int, num_classes: int, test_size: int, seed: int) -> Dataset:
    """Overlapping Gaussian classes in 64 dims, shaped as 1x8x8 images so both models apply."""
    rng = np.random.default_rng(seed + 7919)
    centers = rng.normal(0.0, 1.0, size=(num_classes, 64)).astype(np.float32)
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    x = centers[y] + rng.normal(0.0, 1.5, size=(n, 64)).astype(np.float32)
    return _holdout("synthetic", x.reshape(n, 1, 8, 8), y, test_size, seed, [f"c{i}" for i in range(num_classes)])


def load_dataset(cfg: RunConfig) -> Dataset:
    d = cfg.data
    if d.dataset == "digits":
        return load_digits(d.test_size, cfg.seed)
    if d.dataset == "fashion-mnist":
        return load_fashion_mnist(d.data_dir)
    return make_synthetic(d.synthetic_samples, d.synthetic_classes, d.test_size, cfg.seed)


def validation_size(cfg: RunConfig, n_train: int) -> int:
    """Examples held out for validation: as configured, else 10% of the training examples, at most 5,000."""
    chosen = cfg.data.validation_size
    return min(5000, n_train // 10) if chosen is None else chosen


def make_split(cfg: RunConfig, dataset: Dataset) -> Split:
    """Choose the transfer set and the validation split, and partition the rest into labeled region slices."""
    rng = np.random.default_rng(cfg.seed)
    n = len(dataset.train.y)
    if cfg.data.transfer_size >= n:
        raise DataError(f"data.transfer_size={cfg.data.transfer_size} leaves no labeled data ({n} training samples)")
    order = rng.permutation(n)
    transfer = np.sort(order[: cfg.data.transfer_size])
    n_val = validation_size(cfg, n)
    if cfg.data.transfer_size + n_val >= n:
        raise DataError(
            f"data.validation_size={n_val} with data.transfer_size={cfg.data.transfer_size} leaves no labeled data "
            f"({n} training samples)"
        )
    # Drawn from a generator of its own, so the transfer set and the region slices stay what
    # they were without a validation split, apart from the examples it takes out.
    held = np.random.default_rng([cfg.seed, 1]).permutation(order[cfg.data.transfer_size :])
    validation = np.sort(held[:n_val])
    pool = np.sort(held[n_val:])
    labels = dataset.train.y[pool]
    p = cfg.data.partition
    count = cfg.regions.count
    if count > len(pool):
        raise DataError(f"regions.count={count} exceeds the {len(pool)} labeled samples")
    if p.kind == "dirichlet":
        local = partition.dirichlet(labels, count, p.alpha, rng)
    else:
        local = partition.iid(labels, count, rng)
    if p.kind == "omit":
        bad = [c for c in p.omit_classes if not 0 <= c < dataset.num_classes]
        if bad:
            raise DataError(f"data.partition.omit_classes {bad} outside 0..{dataset.num_classes - 1}")
        local = partition.omit(labels, local, p.omit_classes, cfg.omit_regions())
    return Split(dataset, transfer, [pool[s] for s in local], validation)
