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


def test_data_dir_env_is_searched_first(tmp_path, monkeypatch):
    _fake_fashion(tmp_path / "fm")
    monkeypatch.setenv("CODISTILL_DATA_DIR", str(tmp_path / "fm"))
    ds = data.load_fashion_mnist(download=False)
    assert ds.train.x.shape == (50, 1, 28, 28) and ds.test.y.shape == (20,)


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


def test_canonical_checksums_are_the_published_ones():
    assert data.FASHION_MNIST_FILES["train-images-idx3-ubyte.gz"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert len(data.FASHION_MNIST_FILES) == 4


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
