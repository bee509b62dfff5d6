import functools
import http.server
import threading

import numpy as np
import pytest

from codistill import config, data


def _fake_fashion(folder, n_train=50, n_test=20):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    data.write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (n_train, 28, 28)))
    data.write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train))
    data.write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (n_test, 28, 28)))
    data.write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test))
    return {name: data.md5sum(folder / name) for name in data.FASHION_MNIST_FILES}


def test_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data.write_idx(tmp_path / "a.gz", a)
    assert np.array_equal(data.read_idx(tmp_path / "a.gz"), a)


def test_truncated_idx_is_an_error(tmp_path):
    data.write_idx(tmp_path / "a.gz", np.zeros((4, 4), np.uint8))
    import gzip

    raw = gzip.open(tmp_path / "a.gz").read()[:-3]
    with gzip.open(tmp_path / "b.gz", "wb") as fh:
        fh.write(raw)
    with pytest.raises(data.DataError, match="header says"):
        data.read_idx(tmp_path / "b.gz")


@pytest.fixture
def search_dirs(tmp_path, monkeypatch):
    """The user cache and Debian's folder, moved under tmp_path and empty."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CODISTILL_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    return tmp_path / "home" / ".cache" / "codistill", tmp_path / "debian"


def test_data_dir_env_is_searched_first(tmp_path, monkeypatch, search_dirs):
    cache, debian = search_dirs
    _fake_fashion(cache, n_train=30)
    _fake_fashion(debian, n_train=40)
    _fake_fashion(tmp_path / "fm")
    monkeypatch.setenv("CODISTILL_DATA_DIR", str(tmp_path / "fm"))
    ds = data.load_fashion_mnist(download=False)
    assert ds.train.x.shape == (50, 1, 28, 28) and ds.test.y.shape == (20,)
    monkeypatch.delenv("CODISTILL_DATA_DIR")
    assert len(data.load_fashion_mnist(download=False).train.y) == 30  # then the user cache
    (cache / "t10k-labels-idx1-ubyte.gz").unlink()  # an incomplete folder is passed over
    assert len(data.load_fashion_mnist(download=False).train.y) == 40  # then Debian's package


def test_missing_dataset_without_download_names_the_folders(search_dirs):
    cache, debian = search_dirs
    with pytest.raises(data.DataError, match=f"fashion-mnist not found in {cache}, {debian}"):
        data.load_fashion_mnist(download=False)


@pytest.fixture
def http_folder(tmp_path):
    src = tmp_path / "served"
    sums = _fake_fashion(src)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", sums
    server.shutdown()


def test_download_verifies_checksums(tmp_path, http_folder):
    url, sums = http_folder
    dest = data.download_fashion_mnist(tmp_path / "dl", base_url=url, checksums=sums)
    for name, md5 in sums.items():
        assert data.md5sum(dest / name) == md5


def test_download_with_wrong_checksum_keeps_nothing(tmp_path, http_folder):
    url, sums = http_folder
    wrong = dict(sums, **{"train-labels-idx1-ubyte.gz": "0" * 32})
    with pytest.raises(data.DataError, match="checksum mismatch"):
        data.download_fashion_mnist(tmp_path / "dl", base_url=url, checksums=wrong)
    assert not (tmp_path / "dl" / "train-labels-idx1-ubyte.gz").exists()
    assert not list((tmp_path / "dl").glob("*.part"))


def test_download_checks_the_published_checksums_by_default(tmp_path):
    # Generated files are not the published ones, so without explicit checksums the first is refused.
    src = tmp_path / "served"
    _fake_fashion(src)
    first = next(iter(data.FASHION_MNIST_FILES))
    with pytest.raises(data.DataError, match=f"{first}: checksum mismatch .*expected {data.FASHION_MNIST_FILES[first]}"):
        data.download_fashion_mnist(tmp_path / "dl", base_url=src.as_uri() + "/")
    assert not list((tmp_path / "dl").iterdir())


def _corrupt(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_file_corrupted_at_the_source_is_discarded(tmp_path):
    src = tmp_path / "served"
    sums = _fake_fashion(src)
    _corrupt(src / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte.gz: checksum mismatch"):
        data.download_fashion_mnist(tmp_path / "dl", base_url=src.as_uri() + "/", checksums=sums)
    # Files fetched before it verified and are kept; the bad one and its partial download are not.
    assert sorted(f.name for f in (tmp_path / "dl").iterdir()) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_a_corrupted_local_copy_is_fetched_again_and_a_good_one_is_kept(tmp_path, http_folder):
    url, sums = http_folder
    dest = data.download_fashion_mnist(tmp_path / "dl", base_url=url, checksums=sums)
    _corrupt(dest / "train-labels-idx1-ubyte.gz")
    data.download_fashion_mnist(dest, base_url=url, checksums=sums)
    assert data.md5sum(dest / "train-labels-idx1-ubyte.gz") == sums["train-labels-idx1-ubyte.gz"]
    # Every file is now good: nothing is fetched, so an unreachable source does not matter.
    gone = (tmp_path / "nowhere").as_uri() + "/"
    assert data.download_fashion_mnist(dest, base_url=gone, checksums=sums) == dest
    with pytest.raises(data.DataError, match="could not download"):
        data.download_fashion_mnist(tmp_path / "empty", base_url=gone, checksums=sums)


def test_split_is_disjoint_and_deterministic():
    cfg = config.from_dict({"regions": {"count": 5}, "data": {"partition": {"kind": "dirichlet", "alpha": 0.5}}})
    ds = data.load_dataset(cfg)
    a, b = data.make_split(cfg, ds), data.make_split(cfg, ds)
    assert all(np.array_equal(x, y) for x, y in zip(a.slices, b.slices))
    everything = np.concatenate([a.transfer, a.validation, *a.slices])
    assert len(everything) == len(np.unique(everything)) == len(ds.train.y)
    # The validation split is 10% of the training examples by default, never trained or distilled on.
    assert len(a.validation) == len(ds.train.y) // 10
    assert np.array_equal(a.validation, b.validation)


def test_validation_split_can_be_turned_off_and_leaves_the_rest_as_it_was():
    raw = {"regions": {"count": 4}, "data": {"partition": {"kind": "iid"}}}
    off = config.from_dict({**raw, "data": {**raw["data"], "validation_size": 0}})
    on = config.from_dict({**raw, "data": {**raw["data"], "validation_size": 200}})
    ds = data.load_dataset(off)
    a, b = data.make_split(off, ds), data.make_split(on, ds)
    assert len(a.validation) == 0 and len(b.validation) == 200
    assert np.array_equal(a.transfer, b.transfer)
    assert set(np.concatenate(b.slices)) == set(np.concatenate(a.slices)) - set(b.validation)


def test_validation_that_leaves_no_labeled_data_is_a_data_error():
    cfg = config.from_dict({"data": {"dataset": "synthetic", "synthetic_samples": 100, "transfer_size": 40, "test_size": 30, "validation_size": 30}})
    with pytest.raises(data.DataError, match="data.validation_size=30"):
        data.make_split(cfg, data.load_dataset(cfg))


def test_too_many_regions_is_a_data_error():
    cfg = config.from_dict({"regions": {"count": 50}, "data": {"dataset": "synthetic", "synthetic_samples": 100, "transfer_size": 40, "test_size": 30, "validation_size": 0}})
    with pytest.raises(data.DataError, match="regions.count=50 exceeds the 30 labeled samples"):
        data.make_split(cfg, data.load_dataset(cfg))
