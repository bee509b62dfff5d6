"""codistill.storage: local paths, file:// and s3:// URIs (a real moto_server on loopback)."""

import os
import pickle
import socket
import subprocess
import sys
import threading
import time

import pyarrow.fs
import pytest
import torch

from codistill import storage
from codistill.errors import ConfigError
from codistill.region import checkpoint
from codistill.storage import Location


# ------------------------------------------------------------------ parsing
def test_paths_and_file_uris_are_local_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.location("runs/") == Location(str(tmp_path / "runs"))
    assert storage.location(tmp_path / "a").path == tmp_path / "a"
    uri = storage.location(f"file://{tmp_path}/a/")
    assert uri.uri == f"file://{tmp_path}/a" and uri.is_local and uri.path == tmp_path / "a"
    assert storage.location(f"file://localhost{tmp_path}").path == tmp_path
    assert uri.child("b c", "d").path == tmp_path / "a" / "b c" / "d"
    assert not storage.location("s3://bucket/x").is_local


@pytest.mark.parametrize(
    "text, names",
    [
        ("ftp://host/x", "unknown scheme 'ftp'"),
        ("hdfs://namenode/x", "unknown scheme 'hdfs'"),
        ("s3:bucket/x", "malformed URI"),
        ("s3://", "no valid bucket"),
        ("gs:///key", "no valid bucket"),
        ("s3://My_Bucket/x", "no valid bucket"),
        ("s3://bucket/x#frag", "malformed URI"),
        ("file://otherhost/x", "names host 'otherhost'"),
        ("file:relative/x", "malformed URI"),
        ("file:///x?a=1", "malformed URI"),
        ("runs\nx", "is not a path or URI"),
        ("", "is not a path or URI"),
    ],
)
def test_unusable_text_is_one_line_config_error(text, names):
    with pytest.raises(ConfigError) as err:
        storage.location(text)
    message = str(err.value)
    assert message.startswith("storage: ") and "\n" not in message
    assert names in message
    assert "s3://bucket/path" in message or "file:///absolute/path" in message  # says what is accepted


def test_secrets_stay_out_of_str_and_errors():
    loc = storage.location("s3://KEYID:SeCrEt@bucket/run?region=us-east-1&session_token=T0KEN")
    assert "SeCrEt" not in str(loc) and "T0KEN" not in str(loc)
    assert "KEYID" in str(loc) and "region=us-east-1" in str(loc)
    assert "SeCrEt" in loc.uri  # the text itself keeps them, for pyarrow
    with pytest.raises(ConfigError) as err:
        storage.location("s3://KEYID:SeCrEt@Bad_Bucket/run")
    assert "SeCrEt" not in str(err.value)


def test_location_pickles_to_an_equal_location():
    for loc in (storage.location("/data/runs"), storage.location("s3://k:s@bucket/run?region=us-east-1").child("region-0")):
        again = pickle.loads(pickle.dumps(loc))
        assert again == loc and hash(again) == hash(loc)
        assert again.child("x") == loc.child("x")


def test_child_keeps_the_uri_options_and_refuses_climbing_out():
    loc = storage.location("s3://bucket/run/?region=us-east-1&scheme=http")
    assert loc.child("region-0", "step-1.pt").uri == "s3://bucket/run/region-0/step-1.pt?region=us-east-1&scheme=http"
    assert loc.child("region-0").name == "region-0"
    with pytest.raises(ValueError):
        loc.child("..", "other")


def test_run_location_is_storage_slash_run_name_or_out(tmp_path):
    out = tmp_path / "run-20240101"
    assert storage.run_location(None, out) == storage.location(out)
    assert storage.run_location(str(tmp_path / "shared"), out).path == tmp_path / "shared" / "run-20240101"
    assert storage.run_location("s3://bucket/runs?region=eu-west-1", out).uri == "s3://bucket/runs/run-20240101?region=eu-west-1"


# ------------------------------------------------------------------ local files
def test_check_writable_creates_the_folder_and_leaves_nothing(tmp_path):
    loc = storage.location(f"file://{tmp_path}/new/run")
    storage.check_writable(loc)
    assert (tmp_path / "new" / "run").is_dir() and os.listdir(tmp_path / "new" / "run") == []


def test_check_writable_on_an_unwritable_folder_is_one_line_config_error(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    loc = storage.location(tmp_path / "a-file" / "run")  # unwritable for any user, root included
    with pytest.raises(ConfigError) as err:
        storage.check_writable(loc)
    message = str(err.value)
    assert message.startswith(f"storage: cannot write {loc} (") and "\n" not in message


def test_write_read_list_delete(tmp_path):
    folder = storage.location(f"file://{tmp_path}/f")
    assert storage.list_names(folder) == []
    storage.write_bytes(folder.child("b"), b"2")
    source = tmp_path / "src.json"
    source.write_bytes(b"{}")
    storage.upload(source, folder.child("a"))
    assert storage.list_names(folder) == ["a", "b"]
    assert (tmp_path / "f" / "a").read_bytes() == b"{}" and storage.read_bytes(folder.child("b")) == b"2"
    storage.delete(folder.child("a"))
    storage.delete(folder.child("a"))  # already gone: fine
    assert storage.list_names(folder) == ["b"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(folder.child("a"))


def test_a_failing_upload_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    dest = storage.location(tmp_path / "results.json")
    storage.write_bytes(dest, b"old")
    source = tmp_path / "new.json"
    source.write_bytes(b"new" * 100_000)

    def no_disk_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_disk_space)
    with pytest.raises(OSError):
        storage.upload(source, dest)
    with pytest.raises(OSError):
        storage.upload(source, storage.location(tmp_path / "fresh.json"))
    monkeypatch.undo()
    assert dest.path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["new.json", "results.json"]  # no fresh.json, no tmp file


def _readers_see_only_whole_files(dest: Location, write) -> int:
    """Rewrite `dest` with two different big payloads while a thread reads it; returns the reads made."""
    payloads = [b"a" * 4_000_000, b"b" * 1_000_000]  # sizes differ: a read sized for one must not return the other
    write(dest, payloads[0])
    done, seen, reads = threading.Event(), set(), [0]

    def read():
        while not done.is_set():
            data = storage.read_bytes(dest)
            seen.add(data if data in payloads else data[:20] + b"...%d bytes" % len(data))
            reads[0] += 1

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(30):
            write(dest, payloads[i % 2])
    finally:
        done.set()
        reader.join()
    assert seen <= set(payloads), seen - set(payloads)
    return reads[0]


def test_readers_never_see_a_partial_upload(tmp_path):
    source = tmp_path / "src"

    def upload(dest, data):
        source.write_bytes(data)
        storage.upload(source, dest)

    assert _readers_see_only_whole_files(storage.location(tmp_path / "out" / "ckpt"), upload) > 0


# ------------------------------------------------------------------ s3:// against a real S3-compatible server
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """A moto_server on 127.0.0.1 with an empty bucket `bucket`; yields its host:port."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")  # the AWS SDK must never look beyond loopback
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, "moto_server did not start"
                    time.sleep(0.1)
            endpoint = f"127.0.0.1:{port}"
            admin = pyarrow.fs.S3FileSystem(
                access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
                endpoint_override=endpoint, allow_bucket_creation=True,
            )
            admin.create_dir("bucket")
            yield endpoint, admin
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _s3(endpoint: str, path: str) -> Location:
    return storage.location(f"s3://testing:testing@{path}?endpoint_override={endpoint}&scheme=http&region=us-east-1")


def _objects(admin, prefix: str) -> list[str]:
    infos = admin.get_file_info(pyarrow.fs.FileSelector(prefix, allow_not_found=True, recursive=True))
    return sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.File)


def test_s3_checkpoints_are_saved_listed_loaded_and_pruned(s3_server):
    endpoint, admin = s3_server
    folder = _s3(endpoint, "bucket/run/region-0")
    storage.check_writable(folder)
    for step in (10, 20, 30, 40):
        saved = checkpoint.save(folder, step, {"x": torch.tensor([step])})
        assert saved == folder.child(f"step-{step:09d}.pt")
    # In the bucket, not on this machine; the oldest pruned, no probe left behind.
    assert _objects(admin, "bucket/run") == [f"bucket/run/region-0/step-0000000{s}0.pt" for s in (2, 3, 4)]
    assert [checkpoint.step_of(p) for p in checkpoint.checkpoints(folder)] == [20, 30, 40]
    state = checkpoint.load_latest(pickle.loads(pickle.dumps(folder)))  # as a restarted Ray actor gets it
    assert state["step"] == 40 and state["x"].item() == 40
    with admin.open_output_stream("bucket/run/region-0/step-000000050.pt") as out:
        out.write(b"torn")
    assert checkpoint.load_latest(folder)["step"] == 40
    assert checkpoint.load_latest(_s3(endpoint, "bucket/run/none")) is None


def test_s3_align_removes_the_newer_checkpoints(s3_server):
    endpoint, admin = s3_server
    folders = [_s3(endpoint, f"bucket/align/region-{i}") for i in range(2)]
    for folder, steps in zip(folders, [[700, 800, 900], [700, 800]]):
        for step in steps:
            checkpoint.save(folder, step, {}, keep=10)
    assert checkpoint.align(folders) == 800
    assert _objects(admin, "bucket/align") == [
        f"bucket/align/region-{i}/step-000000{s}.pt" for i in range(2) for s in (700, 800)
    ]


def test_s3_write_read_list_delete_and_whole_uploads(s3_server, tmp_path):
    endpoint, _ = s3_server
    folder = _s3(endpoint, "bucket/files")
    assert storage.list_names(folder) == []
    (tmp_path / "results.json").write_bytes(b"{}")
    storage.upload(tmp_path / "results.json", folder.child("results.json"))
    storage.write_bytes(folder.child("metrics.jsonl"), b"{}\n")
    assert storage.list_names(folder) == ["metrics.jsonl", "results.json"]
    assert storage.read_bytes(folder.child("results.json")) == b"{}"
    storage.delete(folder.child("results.json"))
    storage.delete(folder.child("results.json"))
    assert storage.list_names(folder) == ["metrics.jsonl"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(folder.child("results.json"))
    assert _readers_see_only_whole_files(folder.child("big"), storage.write_bytes) > 0


def test_s3_check_writable_on_a_missing_bucket_is_one_line_config_error(s3_server):
    endpoint, _ = s3_server
    loc = _s3(endpoint, "no-such-bucket/run")
    with pytest.raises(ConfigError) as err:
        storage.check_writable(loc)
    message = str(err.value)
    assert message.startswith(f"storage: cannot write {loc} (") and "\n" not in message
    assert "testing:testing" not in message and "bucket" in message


def test_s3_unknown_option_is_config_error(s3_server):
    endpoint, _ = s3_server
    loc = storage.location(f"s3://bucket/run?endpoint_override={endpoint}&region=us-east-1&colour=blue")
    with pytest.raises(ConfigError) as err:
        storage.check_writable(loc)
    assert str(err.value).startswith("storage: ") and "colour" in str(err.value) and "\n" not in str(err.value)
