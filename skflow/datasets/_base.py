"""Data home, downloads, checksums and archive extraction."""

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections import namedtuple
from pathlib import Path, PurePosixPath

__all__ = ["RemoteFile", "extract_tar", "fetch_file", "get_data_home"]

_CHUNK_SIZE = 1 << 20
_TIMEOUT = 60  # seconds without progress before a download is given up


def get_data_home(data_home=None):
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


RemoteFile = namedtuple("RemoteFile", ["filename", "url", "sha256"], defaults=[None])
RemoteFile.__doc__ = """\
Description of a file that can be downloaded.

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
"""


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _local_path(remote, data_home):
    relative = PurePosixPath(remote.filename)
    # The file name comes from code, but a bad one must not write outside
    # the data home.
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(
            f"RemoteFile.filename must be a relative path inside the data home, "
            f"got {remote.filename!r}."
        )
    return Path(data_home).joinpath(*relative.parts)


def _missing_message(path, url):
    return (
        f"Data file {path.name!r} is missing: it was looked for at {path}. "
        f"It can be downloaded from {url} and placed there by hand "
        f"(or call again with download_if_missing=True while online)."
    )


def fetch_file(remote, data_home=None, download_if_missing=True):
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
    >>> from skflow.datasets import RemoteFile, fetch_file
    >>> remote = RemoteFile("odds/thyroid.npz", "https://example.com/thyroid.npz")
    >>> path = fetch_file(remote)  # doctest: +SKIP
    """
    path = _local_path(remote, get_data_home(data_home))
    expected = remote.sha256.lower() if remote.sha256 else None

    if path.exists():
        if expected is not None:
            got = _sha256(path)
            if got != expected:
                raise OSError(
                    f"The file {path} does not have the expected SHA-256 checksum "
                    f"(expected {expected}, got {got}). It may be corrupt or "
                    f"incomplete: delete it to download it again from {remote.url}."
                )
        return path

    if not download_if_missing:
        raise FileNotFoundError(_missing_message(path, remote.url))

    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary file in the same folder, so that os.replace is atomic.
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".part"
    )
    tmp_path = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
                remote.url, timeout=_TIMEOUT
            ) as response:
                for chunk in iter(lambda: response.read(_CHUNK_SIZE), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as exc:
            raise OSError(
                f"Could not download {remote.url} ({exc}). "
                + _missing_message(path, remote.url)
            ) from exc
        got = digest.hexdigest()
        if expected is not None and got != expected:
            raise OSError(
                f"Checksum mismatch for {remote.url}: expected SHA-256 "
                f"{expected}, got {got}. The download was discarded."
            )
        os.replace(tmp_path, path)
    finally:
        # Never leave a partial or unverified download behind.
        tmp_path.unlink(missing_ok=True)
    return path


def extract_tar(archive_path, extract_dir, members=None, strip_prefix=None):
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

    members : sequence of str, default=None
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
    """
    extract_dir = Path(extract_dir)
    extract_dir.mkdir(parents=True, exist_ok=True)
    root = extract_dir.resolve()
    wanted = None
    if members is not None:
        wanted = [PurePosixPath(m).parts for m in members]
    prefix = PurePosixPath(strip_prefix).parts if strip_prefix else ()

    extracted = []
    with tarfile.open(archive_path, "r:*") as tar:
        for member in tar:
            name = PurePosixPath(member.name)
            # Check the raw name: a stripped name must not hide an escape.
            if name.is_absolute() or ".." in name.parts:
                raise OSError(
                    f"Refusing to extract {member.name!r} from {archive_path}: "
                    f"it would be written outside {extract_dir}."
                )
            parts = tuple(p for p in name.parts if p != ".")
            if prefix and parts[: len(prefix)] == prefix:
                parts = parts[len(prefix) :]
            if not parts:
                continue
            if wanted is not None and not any(
                parts[: len(w)] == w for w in wanted
            ):
                continue
            target = extract_dir.joinpath(*parts)
            if not target.resolve().is_relative_to(root):
                raise OSError(
                    f"Refusing to extract {member.name!r} from {archive_path}: "
                    f"it would be written outside {extract_dir}."
                )
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                fd, tmp_name = tempfile.mkstemp(
                    dir=target.parent, prefix=f".{target.name}.", suffix=".part"
                )
                try:
                    with os.fdopen(fd, "wb") as out, source:
                        shutil.copyfileobj(source, out, _CHUNK_SIZE)
                    os.replace(tmp_name, target)
                finally:
                    Path(tmp_name).unlink(missing_ok=True)
                extracted.append(target)
            else:
                raise OSError(
                    f"Refusing to extract {member.name!r} from {archive_path}: "
                    f"only regular files and folders are extracted, not links "
                    f"or special files."
                )
    return extracted
