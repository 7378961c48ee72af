"""Data home, downloads, checksums and archive extraction."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import IO, NamedTuple

__all__ = ["RemoteFile", "extract_tar", "fetch_file", "get_data_home"]

_CHUNK_SIZE = 1 << 20
_TIMEOUT = 60  # seconds without progress before a download is given up


def get_data_home(data_home: str | os.PathLike | None = None) -> Path:
    """Return the path of the skflow data folder, creating it if needed.

    Data sets that are downloaded are stored here so that they are fetched
    only once. By default the folder is ``~/skflow_data``; the environment
    variable ``SKFLOW_DATA`` overrides it, and the ``data_home`` argument
    overrides both.

    Parameters
    ----------
    data_home : str or path-like, default=None
        The path to the data folder. If None, ``$SKFLOW_DATA`` or
        ``~/skflow_data`` is used. A leading ``~`` is expanded.

    Returns
    -------
    data_home : pathlib.Path
        The path to the data folder, which exists on return.

    Examples
    --------
    >>> import tempfile
    >>> from skflow.datasets import get_data_home
    >>> get_data_home(tempfile.mkdtemp()).is_dir()
    True
    """
    if data_home is None:
        data_home = os.environ.get("SKFLOW_DATA", os.path.join("~", "skflow_data"))
    data_home = Path(os.fspath(data_home)).expanduser()
    data_home.mkdir(parents=True, exist_ok=True)
    return data_home


class RemoteFile(NamedTuple):
    """Description of a file that can be downloaded.

    Parameters
    ----------
    filename : str
        Path of the local copy, relative to the data home, with ``/`` as
        separator (e.g. ``"odds/thyroid.npz"``).

    url : str
        Where the file is downloaded from.

    sha256 : str or None, default=None
        Expected SHA-256 hex digest of the file. None when it is not known:
        the file is then accepted as it is, without integrity check.

    Examples
    --------
    >>> from skflow.datasets import RemoteFile
    >>> remote = RemoteFile("odds/thyroid.npz", "https://example.com/thyroid.npz")
    >>> remote.filename, remote.sha256
    ('odds/thyroid.npz', None)
    """

    filename: str
    url: str
    sha256: str | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _local_path(remote: RemoteFile, data_home: Path) -> Path:
    relative = PurePosixPath(remote.filename)
    # The file name comes from code, but a bad one must not write outside
    # the data home.
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(
            f"RemoteFile.filename must be a relative path inside the data home, "
            f"got {remote.filename!r}."
        )
    return Path(data_home).joinpath(*relative.parts)


def _missing_message(path: Path, url: str) -> str:
    return (
        f"Data file {path.name!r} is missing: it was looked for at {path}. "
        f"It can be downloaded from {url} and placed there by hand "
        f"(or call again with download_if_missing=True while online)."
    )


def _check_existing(path: Path, expected: str | None, url: str) -> None:
    """Raise if a file already in the data home does not match its checksum."""
    if expected is None:
        return
    got = _sha256(path)
    if got != expected:
        raise OSError(
            f"The file {path} does not have the expected SHA-256 checksum "
            f"(expected {expected}, got {got}). It may be corrupt or "
            f"incomplete: delete it to download it again from {url}."
        )


def _temporary_sibling(path: Path) -> tuple[int, Path]:
    # In the same folder as ``path``, so that the final os.replace is atomic.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    return fd, Path(tmp_name)


def _download(url: str, path: Path, expected: str | None) -> None:
    """Download ``url`` to ``path``, verified before it is moved into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_path = _temporary_sibling(path)
    try:
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
                url, timeout=_TIMEOUT
            ) as response:
                for chunk in iter(lambda: response.read(_CHUNK_SIZE), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as exc:
            raise OSError(
                f"Could not download {url} ({exc}). " + _missing_message(path, url)
            ) from exc
        got = digest.hexdigest()
        if expected is not None and got != expected:
            raise OSError(
                f"Checksum mismatch for {url}: expected SHA-256 "
                f"{expected}, got {got}. The download was discarded."
            )
        os.replace(tmp_path, path)
    finally:
        # Never leave a partial or unverified download behind.
        tmp_path.unlink(missing_ok=True)


def fetch_file(
    remote: RemoteFile,
    data_home: str | os.PathLike | None = None,
    download_if_missing: bool = True,
) -> Path:
    """Return the local path of a remote file, downloading it if needed.

    A file already present in the data home is used as it is, after its
    checksum is verified when one is known. Otherwise it is downloaded to a
    temporary file next to its final place, verified, and only then moved
    into place, so an interrupted or corrupt download never leaves a file
    that looks complete.

    Parameters
    ----------
    remote : RemoteFile
        The file: local name (relative to the data home), URL and expected
        SHA-256 digest. When ``remote.sha256`` is None the checksum is not
        known and any file is accepted; in that case nothing guards against
        a corrupt or changed file.

    data_home : str or path-like, default=None
        The data folder, see :func:`get_data_home`.

    download_if_missing : bool, default=True
        If False, raise a ``FileNotFoundError`` instead of downloading a
        missing file.

    Returns
    -------
    path : pathlib.Path
        The path of the local copy.

    Raises
    ------
    FileNotFoundError
        If the file is missing and ``download_if_missing`` is False.
    OSError
        If the download fails (e.g. no internet access) or the checksum of
        the file does not match the expected one.

    Examples
    --------
    A file already in the data home is verified and used, nothing is
    downloaded:

    >>> import hashlib
    >>> import tempfile
    >>> from pathlib import Path
    >>> from skflow.datasets import RemoteFile, fetch_file
    >>> data_home = Path(tempfile.mkdtemp())
    >>> _ = (data_home / "notes.txt").write_bytes(b"hello")
    >>> digest = hashlib.sha256(b"hello").hexdigest()
    >>> remote = RemoteFile("notes.txt", "https://example.com/notes.txt", digest)
    >>> fetch_file(remote, data_home, download_if_missing=False).read_bytes()
    b'hello'
    """
    path = _local_path(remote, get_data_home(data_home))
    expected = remote.sha256.lower() if remote.sha256 else None
    if path.exists():
        _check_existing(path, expected, remote.url)
        return path
    if not download_if_missing:
        raise FileNotFoundError(_missing_message(path, remote.url))
    _download(remote.url, path, expected)
    return path


def _refuse(member: tarfile.TarInfo, archive_path: str | os.PathLike, reason: str) -> OSError:
    return OSError(f"Refusing to extract {member.name!r} from {archive_path}: {reason}")


def _member_parts(
    member: tarfile.TarInfo,
    archive_path: str | os.PathLike,
    prefix: tuple[str, ...],
    extract_dir: Path,
) -> tuple[str, ...]:
    """The path parts of a member below ``extract_dir``, with ``prefix`` stripped."""
    name = PurePosixPath(member.name)
    # Check the raw name: a stripped name must not hide an escape.
    if name.is_absolute() or ".." in name.parts:
        raise _refuse(member, archive_path, f"it would be written outside {extract_dir}.")
    parts = tuple(p for p in name.parts if p != ".")
    if prefix and parts[: len(prefix)] == prefix:
        parts = parts[len(prefix) :]
    return parts


def _copy_atomically(source: IO[bytes], target: Path) -> None:
    """Write ``source`` to ``target`` through a temporary file, never half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_path = _temporary_sibling(target)
    try:
        with os.fdopen(fd, "wb") as out, source:
            shutil.copyfileobj(source, out, _CHUNK_SIZE)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def extract_tar(
    archive_path: str | os.PathLike,
    extract_dir: str | os.PathLike,
    members: Iterable[str] | None = None,
    strip_prefix: str | None = None,
) -> list[Path]:
    """Safely extract (part of) a tar archive, e.g. a ``.tar.gz`` file.

    Only regular files and folders are extracted. Members that would land
    outside ``extract_dir`` (absolute paths, ``..`` components) and links
    or special files are refused, so a malicious archive cannot write
    elsewhere on disk. Each file is written to a temporary name and moved
    into place, so an interrupted extraction leaves no truncated file.

    Parameters
    ----------
    archive_path : str or path-like
        The archive, in any compression :mod:`tarfile` reads.

    extract_dir : str or path-like
        The folder to extract into; created if needed.

    members : iterable of str, default=None
        If given, only members whose (stripped) path equals one of these or
        lies below one of them are extracted, e.g. ``["power"]``.

    strip_prefix : str, default=None
        A leading folder to remove from the member paths when present,
        e.g. ``"data"`` turns ``data/power/data.npy`` into
        ``power/data.npy``.

    Returns
    -------
    extracted : list of pathlib.Path
        The files written.

    Raises
    ------
    OSError
        If a member would be written outside ``extract_dir`` or is a link
        or special file.

    Examples
    --------
    >>> import io
    >>> import tarfile
    >>> import tempfile
    >>> from pathlib import Path
    >>> from skflow.datasets._base import extract_tar
    >>> folder = Path(tempfile.mkdtemp())
    >>> with tarfile.open(folder / "data.tar.gz", "w:gz") as tar:
    ...     for name in ("data/power/data.npy", "data/gas/gas.pickle"):
    ...         tar.addfile(tarfile.TarInfo(name), io.BytesIO())
    >>> written = extract_tar(folder / "data.tar.gz", folder / "maf", ["power"], "data")
    >>> [path.relative_to(folder).as_posix() for path in written]
    ['maf/power/data.npy']
    """
    extract_dir = Path(extract_dir)
    extract_dir.mkdir(parents=True, exist_ok=True)
    root = extract_dir.resolve()
    wanted = None if members is None else [PurePosixPath(m).parts for m in members]
    prefix = PurePosixPath(strip_prefix).parts if strip_prefix else ()

    extracted = []
    with tarfile.open(archive_path, "r:*") as tar:
        for member in tar:
            parts = _member_parts(member, archive_path, prefix, extract_dir)
            if not parts:
                continue
            if wanted is not None and not any(parts[: len(w)] == w for w in wanted):
                continue
            target = extract_dir.joinpath(*parts)
            if not target.resolve().is_relative_to(root):
                raise _refuse(
                    member, archive_path, f"it would be written outside {extract_dir}."
                )
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                _copy_atomically(tar.extractfile(member), target)
                extracted.append(target)
            else:
                raise _refuse(
                    member,
                    archive_path,
                    "only regular files and folders are extracted, not links or "
                    "special files.",
                )
    return extracted
