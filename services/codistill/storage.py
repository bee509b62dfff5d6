"""Where a run keeps what must outlive a node: a local folder, a shared mount, or an object store.

A `Location` is only text (a local path or a URI), so it pickles to Ray
actors unchanged; each process builds the pyarrow filesystem behind a URI
the first time it needs it. Local paths (plain or file://) are handled with
os calls, for the durability pyarrow does not give: a tmp file in the same
folder, fsync, os.replace, fsync of the folder. Object stores (s3://, gs://)
go through pyarrow.fs, where one upload becomes visible whole or not at all.

pyarrow reads options from the URI, e.g.
`s3://KEY:SECRET@bucket/runs?region=us-east-1&endpoint_override=host:9000&scheme=http`
for an S3-compatible server; `str(location)` hides the secret.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

from codistill.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow.fs

ACCEPTED = "a local path, file:///absolute/path, s3://bucket/path or gs://bucket/path"
_OBJECT_STORES = ("s3", "gs", "gcs")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# S3 and GCS bucket names: lower-case letters, digits, dots, hyphens (GCS also underscores).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
# Query options whose values are secrets, hidden by str().
_SECRET_OPTIONS = re.compile(r"((?:secret_key|session_token)=)[^&]*")


@dataclass(frozen=True)
class Location:
    """A folder or file: a local absolute path or a URI. Build one with `location()`."""

    uri: str

    def child(self, *parts: str) -> Location:
        """The location `parts` below this one (each part a name, or names joined by '/')."""
        names = [name for part in parts for name in str(part).split("/")]
        if any(name in ("", ".", "..") for name in names):
            raise ValueError(f"not a relative name: {'/'.join(parts)!r}")
        if not _is_uri(self.uri):
            return Location(str(Path(self.uri).joinpath(*names)))
        split = urlsplit(self.uri)
        path = split.path.rstrip("/") + "/" + "/".join(quote(name) for name in names)
        return Location(split._replace(path=path).geturl())

    @property
    def is_local(self) -> bool:
        """A plain path or a file:// URI: `.path` gives it."""
        return not _is_uri(self.uri) or urlsplit(self.uri).scheme == "file"

    @property
    def path(self) -> Path:
        """The local path (only when `is_local`)."""
        if not _is_uri(self.uri):
            return Path(self.uri)
        if not self.is_local:
            raise ValueError(f"{self} is not on a local file system")
        return Path(unquote(urlsplit(self.uri).path))

    @property
    def name(self) -> str:
        """The last name in the location ('' for a bucket's root)."""
        if not _is_uri(self.uri):
            return Path(self.uri).name
        return unquote(urlsplit(self.uri).path.rstrip("/").rpartition("/")[2])

    def __str__(self) -> str:
        if not _is_uri(self.uri):
            return self.uri
        split = urlsplit(self.uri)
        netloc = split.netloc
        if split.password is not None:  # s3://KEY:SECRET@bucket: keep the key id, hide the secret
            netloc = f"{split.username}:***@{netloc.rpartition('@')[2]}"
        return split._replace(netloc=netloc, query=_SECRET_OPTIONS.sub(r"\1***", split.query)).geturl()


def location(text: str | os.PathLike | Location) -> Location:
    """A `Location` from a path or URI; ConfigError (one line) for a scheme or URI it cannot use."""
    if isinstance(text, Location):
        return text
    raw = os.fspath(text)
    if not raw or not raw.strip() or any(ch in raw for ch in "\r\n\0"):
        raise ConfigError(f"storage: {raw!r} is not a path or URI; use {ACCEPTED}")
    match = _SCHEME.match(raw)
    if match is None:
        return Location(os.path.abspath(os.path.expanduser(raw)))
    scheme = match.group(1).lower()
    if not raw[match.end():].startswith("//"):
        raise ConfigError(f"storage: malformed URI {_shown(raw)} (expected {scheme}://...); use {ACCEPTED}")
    if scheme == "file":
        return _file_location(raw)
    if scheme in _OBJECT_STORES:
        return _object_location(raw, scheme)
    raise ConfigError(f"storage: unknown scheme {scheme!r} in {_shown(raw)}; use {ACCEPTED}")


def run_location(storage: str | None, out_dir: Path) -> Location:
    """Where a run's checkpoints and results go: `storage/<out_dir's name>`, or `out_dir` itself."""
    if storage is None:
        return location(out_dir)
    return location(storage).child(Path(out_dir).resolve().name)


def check_writable(loc: Location) -> None:
    """Before a run starts: create `loc`, write a probe, read it back, delete it; ConfigError if any fails."""
    probe = loc.child(f".codistill-probe-{uuid.uuid4().hex}")
    data = b"codistill storage probe\n"
    try:
        if loc.is_local:  # object stores have no folders to create
            loc.path.mkdir(parents=True, exist_ok=True)
        write_bytes(probe, data)
        try:
            back = read_bytes(probe)
        finally:
            delete(probe)
    except ConfigError:
        raise
    except Exception as exc:  # any failure means the run could not keep its checkpoints there
        raise ConfigError(f"storage: cannot write {loc} ({type(exc).__name__}: {_first_line(exc)})") from None
    if back != data:
        raise ConfigError(f"storage: {loc} returned other bytes than were written to it")


def upload(local: Path, dest: Location) -> None:
    """Copy the file `local` to `dest`; a reader sees the old file or the whole new one, never a part."""
    if dest.is_local:
        with open(local, "rb") as src:
            _write_local(dest.path, iter(lambda: src.read(1 << 20), b""))
        return
    # Read whole before the upload starts: pyarrow's streams cannot be aborted from Python, and
    # closing one after a failed read would publish the part already sent.
    write_bytes(dest, Path(local).read_bytes())


def write_bytes(dest: Location, data: bytes) -> None:
    """Write `data` to `dest` with `upload`'s promise: old or whole new, never a part."""
    if dest.is_local:
        _write_local(dest.path, [data])
        return
    fs, path = _remote(dest)
    with fs.open_output_stream(path) as out:  # one object, visible only once the upload completes
        out.write(data)


def read_bytes(src: Location) -> bytes:
    """The content of `src`; FileNotFoundError when it does not exist."""
    if src.is_local:
        return src.path.read_bytes()
    fs, path = _remote(src)
    # A stream would fetch the object in ranges, each of whichever version is current by then: one
    # object replaced meanwhile would read torn. One request for the whole object, then a check
    # that the version (ETag) read is still the one there, rules that out.
    for _ in range(3):
        with fs.open_input_file(path) as file:
            version = file.metadata().get("ETag")
            data = file.read()
        if version is None or _version(fs, path) == version:
            return data
    raise OSError(f"{src} changed each time it was read")


def list_names(folder: Location) -> list[str]:
    """The names in `folder`, sorted ([] when it does not exist)."""
    if folder.is_local:
        try:
            return sorted(os.listdir(folder.path))
        except (FileNotFoundError, NotADirectoryError):
            return []
    import pyarrow.fs

    fs, path = _remote(folder)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def delete(loc: Location) -> None:
    """Delete the file at `loc`; one already gone is fine."""
    if loc.is_local:
        loc.path.unlink(missing_ok=True)
        return
    fs, path = _remote(loc)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def _tmp_name(name: str) -> str:
    """The temporary name this process writes `name` under before renaming it (local folders only)."""
    return f".{name}.{os.getpid()}.tmp"


# ------------------------------------------------------------------ local files
def _write_local(final: Path, chunks: Iterable[bytes]) -> None:
    """tmp file in the same folder, fsync, rename over `final`, fsync the folder: a crash leaves old or new."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(_tmp_name(final.name))
    try:
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ URIs
def _is_uri(text: str) -> bool:
    return "://" in text and _SCHEME.match(text) is not None


def _shown(raw: str) -> str:
    """The user's text for an error message, secrets hidden."""
    return repr(str(Location(raw))) if _is_uri(raw) else repr(raw)


def _file_location(raw: str) -> Location:
    split = urlsplit(raw)
    if split.netloc not in ("", "localhost"):
        raise ConfigError(f"storage: {_shown(raw)} names host {split.netloc!r}; a file:// URI is local: use file:///absolute/path")
    if not split.path.startswith("/") or split.query or split.fragment:
        raise ConfigError(f"storage: malformed URI {_shown(raw)}; use file:///absolute/path (no query)")
    path = split.path.rstrip("/") or "/"
    return Location(f"file://{path}")


def _object_location(raw: str, scheme: str) -> Location:
    split = urlsplit(raw)
    bucket = split.netloc.rpartition("@")[2]
    if not _BUCKET.match(bucket):
        raise ConfigError(f"storage: {_shown(raw)} names no valid bucket ({scheme}://bucket/path, bucket in lower case); use {ACCEPTED}")
    if split.fragment:
        raise ConfigError(f"storage: malformed URI {_shown(raw)} (a '#' has no meaning here); use {ACCEPTED}")
    return Location(split._replace(scheme=scheme, path=split.path.rstrip("/")).geturl())


def _remote(loc: Location) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem behind `loc` (one per bucket and options, per process) and the path in it."""
    split = urlsplit(loc.uri)
    bucket = split.netloc.rpartition("@")[2]
    fs = _filesystem(split._replace(path="", fragment="").geturl())
    return fs, bucket + unquote(split.path)


@functools.lru_cache(maxsize=None)
def _filesystem(root: str) -> pyarrow.fs.FileSystem:
    import pyarrow.fs

    try:
        fs, _ = pyarrow.fs.FileSystem.from_uri(root)
    except Exception as exc:  # e.g. an option pyarrow does not know
        raise ConfigError(f"storage: {_shown(root)} cannot be opened ({_first_line(exc)})") from None
    return fs


def _version(fs: pyarrow.fs.FileSystem, path: str) -> bytes | None:
    with fs.open_input_file(path) as file:
        return file.metadata().get("ETag")


def _first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return text[:300]
