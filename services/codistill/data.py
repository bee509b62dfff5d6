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
`synthetic` (Gaussian classes, for fast tests), `npz` (a user's arrays in a
file), and a user loader `package.module:loader` returning a `Dataset` (whose
docstring is the contract).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codistill import partition
from codistill.config import RunConfig, excerpt_path
from codistill.errors import DataError  # noqa: F401  (raised here; importable from here too)

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


@dataclass
class Images:
    """Examples [N, *input_shape] (uint8 pixels, or float32) with int64 labels [N]."""

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True, eq=False, init=False)
class Dataset:
    """Train and test examples with their labels, and the class names: what every run trains on.

    This is the contract for user data (`data.dataset: "package.module:loader"`, where
    `loader(**data.loader_args)` returns a Dataset, or `dataset=` in `codistill.run`):

    * `x_train`, `x_test`: numpy arrays or torch tensors [N, *input_shape]; every example has the
      same shape, in both. uint8 values are pixels and are scaled to [0, 1]; any other numeric
      dtype is used as float32, as given, and must be finite. The built-in `mlp` flattens any
      shape; `cnn` expects [C, H, W]; a user model is built for `input_shape`.
    * `y_train`, `y_test`: class ids [N] in 0..num_classes-1 (integers, or whole-number floats).
    * `class_names`: one name per class; None names them "0".."K-1", K = the largest label + 1.
    * `name`: shown in `results.json`.

    Everything is checked here, so a bad dataset fails before anything starts. A run splits
    `x_train` into the transfer set, the validation split and the regions' labeled slices
    (`data.transfer_size`, `data.validation_size`, `data.partition`); `x_test` evaluates every
    region (`data.test_size` applies to the built-in digits and synthetic sets only).
    """

    name: str
    train: Images
    test: Images
    class_names: list[str]

    def __init__(self, x_train, y_train, x_test, y_test, class_names=None, name: str = "custom"):
        xtr, xte = _features(x_train, "x_train"), _features(x_test, "x_test")
        ytr, yte = _labels(y_train, "y_train", len(xtr), "x_train"), _labels(y_test, "y_test", len(xte), "x_test")
        if xtr.shape[1:] != xte.shape[1:]:
            raise DataError(f"x_train examples are {list(xtr.shape[1:])} but x_test examples are {list(xte.shape[1:])}")
        names = _class_names(class_names, ytr, yte)
        for labels, field_name in ((ytr, "y_train"), (yte, "y_test")):
            outside = labels[(labels < 0) | (labels >= len(names))]
            if len(outside):
                raise DataError(
                    f"{field_name} has {len(outside)} labels outside 0..{len(names) - 1} (e.g. {int(outside[0])}), "
                    f"for {len(names)} class names"
                )
        object.__setattr__(self, "name", str(name))
        object.__setattr__(self, "train", Images(xtr, ytr))
        object.__setattr__(self, "test", Images(xte, yte))
        object.__setattr__(self, "class_names", names)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.train.y)}, test={len(self.test.y)}, "
            f"input_shape={list(self.input_shape)}, classes={self.num_classes})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.train.x.shape[1:])


def _as_array(value, field_name: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor, on any device
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{field_name} is not an array ({type(exc).__name__}: {exc})") from None


def _features(value, field_name: str) -> np.ndarray:
    x = _as_array(value, field_name)
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"{field_name} must be [N, *input_shape] with N >= 1 (got shape {list(x.shape)})")
    if x.dtype == np.uint8:  # pixels: kept compact, scaled by to_float where a region trains
        return x
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == np.bool_):
        raise DataError(f"{field_name} must hold numbers (got dtype {x.dtype})")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise DataError(f"{field_name} holds NaN or infinite values")
    return x


def _labels(value, field_name: str, n: int, x_name: str) -> np.ndarray:
    y = _as_array(value, field_name)
    if y.ndim != 1:
        raise DataError(f"{field_name} must be one class id per example, [N] (got shape {list(y.shape)})")
    if len(y) != n:
        raise DataError(f"{x_name} has {n} examples but {field_name} has {len(y)} labels")
    if np.issubdtype(y.dtype, np.floating):
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise DataError(f"{field_name} must hold whole-number class ids (got fractional or non-finite floats)")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{field_name} must hold integer class ids (got dtype {y.dtype})")
    return y.astype(np.int64, copy=False)


def _class_names(given, y_train: np.ndarray, y_test: np.ndarray) -> list[str]:
    if given is None:
        return [str(c) for c in range(int(max(y_train.max(), y_test.max(), 1)) + 1)]
    names = [str(n) for n in _as_array(given, "class_names").reshape(-1).tolist()]
    if len(names) < 2:
        raise DataError(f"class_names must name at least 2 classes (got {len(names)})")
    return names


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
    return Dataset(xtr[:, None], ytr, xte[:, None], yte, FASHION_MNIST_CLASSES, name="fashion-mnist")


def _holdout(name: str, x: np.ndarray, y: np.ndarray, test_size: int, seed: int, classes: list[str]) -> Dataset:
    if test_size >= len(y):
        raise DataError(f"data.test_size={test_size} leaves no training data (dataset has {len(y)} samples)")
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[:test_size], order[test_size:]
    return Dataset(x[train], y[train], x[test], y[test], classes, name=name)


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


NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | Path) -> Dataset:
    """A Dataset from an .npz file holding x_train, y_train, x_test, y_test and optional class_names."""
    shown = f"data.path {excerpt_path(path)}"
    path = Path(path).expanduser()
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise DataError(f"{shown}: file not found") from None
    except OSError as exc:
        raise DataError(f"{shown}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if magic != b"PK\x03\x04":  # every .npz is a zip archive; anything else np.load would try to unpickle
        raise DataError(f"{shown}: not an .npz archive (save it with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError:  # arrays of Python objects, which only pickle can load
        raise DataError(f"{shown}: holds arrays of Python objects; save plain arrays (class_names as strings)") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{shown}: not a readable .npz file ({type(exc).__name__})") from None
    missing = [k for k in NPZ_ARRAYS if k not in arrays]
    unknown = sorted(set(arrays) - set(NPZ_ARRAYS) - {"class_names"})
    if missing or unknown:
        problem = f"lacks {', '.join(missing)}" if missing else f"holds unknown arrays {', '.join(unknown)}"
        raise DataError(f"{shown}: {problem} (expected {', '.join(NPZ_ARRAYS)} and optional class_names)")
    try:
        return Dataset(*(arrays[k] for k in NPZ_ARRAYS), arrays.get("class_names"), name=Path(path).stem)
    except DataError as exc:
        raise DataError(f"{shown}: {exc}") from None


def load_dataset(cfg: RunConfig) -> Dataset:
    d = cfg.data
    if d.dataset == "digits":
        return load_digits(d.test_size, cfg.seed)
    if d.dataset == "fashion-mnist":
        return load_fashion_mnist(d.data_dir)
    if d.dataset == "npz":
        return load_npz(d.path)
    if d.dataset == "synthetic":
        return make_synthetic(d.synthetic_samples, d.synthetic_classes, d.test_size, cfg.seed)
    from codistill import plugins

    return plugins.load_dataset(d.dataset, d.loader_args)


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
