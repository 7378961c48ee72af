"""Tests for the data home, downloads and the tabular and ODDS loaders.

Everything runs offline: the raw files of the tabular data sets are built
here in their published formats, downloads go to a local HTTP server, and
the ODDS tests read the real copies under ``<repo>/../shared/data/odds``
(or ``$SKFLOW_TEST_DATA/odds``) when they are present.
"""

import hashlib
import http.server
import io
import os
import shutil
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from sklearn.utils import Bunch

from skflow.datasets import (
    ODDS_DATASETS,
    RemoteFile,
    _odds,
    _tabular,
    fetch_file,
    get_data_home,
    load_bsds300,
    load_gas,
    load_hepmass,
    load_miniboone,
    load_odds,
    load_power,
)
from skflow.datasets._base import extract_tar

pd = pytest.importorskip("pandas")

SHARED_DATA = Path(
    os.environ.get(
        "SKFLOW_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _tar_gz(files):
    """Bytes of a .tar.gz archive holding ``{name: bytes}``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _leftovers(folder):
    """Temporary or partial files left in a folder."""
    return [p.name for p in Path(folder).iterdir() if p.name.startswith(".")]


@pytest.fixture
def data_home(tmp_path):
    return tmp_path / "skflow_data"


@pytest.fixture
def server():
    """A local HTTP server serving ``server.files`` and logging requests."""
    files = {}
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            data = files.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll interval keeps shutdown (once per test) fast.
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    host, port = httpd.server_address[:2]
    yield Bunch(url=f"http://{host}:{port}/", files=files, requests=requests)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


# --------------------------------------------------------------------------
# Data home


def test_get_data_home_explicit(tmp_path):
    path = get_data_home(tmp_path / "a" / "b")
    assert isinstance(path, Path)
    assert path == tmp_path / "a" / "b"
    assert path.is_dir()
    # Also from a str, and when the folder exists already.
    assert get_data_home(str(path)) == path


def test_get_data_home_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("SKFLOW_DATA", str(tmp_path / "from_env"))
    assert get_data_home() == tmp_path / "from_env"
    assert (tmp_path / "from_env").is_dir()
    # The argument wins over the environment variable.
    assert get_data_home(tmp_path / "arg") == tmp_path / "arg"


def test_get_data_home_default(tmp_path, monkeypatch):
    monkeypatch.delenv("SKFLOW_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_data_home() == tmp_path / "skflow_data"
    assert (tmp_path / "skflow_data").is_dir()


def test_get_data_home_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_data_home("~/elsewhere") == tmp_path / "elsewhere"


# --------------------------------------------------------------------------
# fetch_file


def test_remote_file_default_checksum():
    remote = RemoteFile("a/b.bin", "http://example.invalid/b.bin")
    assert remote.sha256 is None
    assert remote.filename == "a/b.bin"


def test_fetch_file_downloads_verifies_and_caches(server, data_home):
    payload = _tar_gz({"data/x.txt": b"hello"})
    server.files["archive.tar.gz"] = payload
    remote = RemoteFile(
        "sub/archive.tar.gz", server.url + "archive.tar.gz", _sha256(payload)
    )

    path = fetch_file(remote, data_home)
    assert path == data_home / "sub" / "archive.tar.gz"
    assert path.read_bytes() == payload
    assert server.requests == ["/archive.tar.gz"]
    assert _leftovers(path.parent) == []

    # Cached: the second call reads the local copy (and checks it) only.
    assert fetch_file(remote, data_home) == path
    assert fetch_file(remote, data_home, download_if_missing=False) == path
    assert len(server.requests) == 1


def test_fetch_file_checksum_is_case_insensitive(server, data_home):
    server.files["f.bin"] = b"abc"
    remote = RemoteFile("f.bin", server.url + "f.bin", _sha256(b"abc").upper())
    assert fetch_file(remote, data_home).read_bytes() == b"abc"


def test_fetch_file_without_checksum(server, data_home):
    server.files["f.bin"] = b"anything"
    path = fetch_file(RemoteFile("f.bin", server.url + "f.bin"), data_home)
    assert path.read_bytes() == b"anything"


def test_fetch_file_wrong_checksum(server, data_home):
    server.files["f.bin"] = b"tampered"
    expected = _sha256(b"original")
    remote = RemoteFile("d/f.bin", server.url + "f.bin", expected)
    with pytest.raises(OSError, match=expected) as excinfo:
        fetch_file(remote, data_home)
    assert _sha256(b"tampered") in str(excinfo.value)
    # Nothing left behind: neither the file nor a temporary one.
    assert not (data_home / "d" / "f.bin").exists()
    assert _leftovers(data_home / "d") == []


def test_fetch_file_verifies_existing_file(server, data_home):
    (data_home / "f.bin").parent.mkdir(parents=True)
    (data_home / "f.bin").write_bytes(b"corrupt")
    expected = _sha256(b"good")
    remote = RemoteFile("f.bin", server.url + "f.bin", expected)
    got = _sha256(b"corrupt")
    with pytest.raises(OSError, match=f"expected {expected}, got {got}"):
        fetch_file(remote, data_home)
    assert server.requests == []


def test_fetch_file_missing_without_download(data_home):
    remote = RemoteFile("odds/x.npz", "https://example.invalid/x.npz")
    with pytest.raises(FileNotFoundError) as excinfo:
        fetch_file(remote, data_home, download_if_missing=False)
    message = str(excinfo.value)
    assert str(data_home / "odds" / "x.npz") in message
    assert "https://example.invalid/x.npz" in message
    assert "by hand" in message


def test_fetch_file_download_fails_http_error(server, data_home):
    remote = RemoteFile("nothere.bin", server.url + "nothere.bin")
    with pytest.raises(OSError) as excinfo:
        fetch_file(remote, data_home)
    message = str(excinfo.value)
    assert str(data_home / "nothere.bin") in message
    assert remote.url in message
    assert "by hand" in message
    assert not (data_home / "nothere.bin").exists()
    assert _leftovers(data_home) == []


def test_fetch_file_download_fails_no_server(data_home):
    # A port with nothing listening, as when offline.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    remote = RemoteFile("f.bin", f"http://127.0.0.1:{port}/f.bin")
    with pytest.raises(OSError, match="Could not download") as excinfo:
        fetch_file(remote, data_home)
    assert remote.url in str(excinfo.value)
    assert str(data_home / "f.bin") in str(excinfo.value)
    assert not (data_home / "f.bin").exists()
    assert _leftovers(data_home) == []


@pytest.mark.parametrize("filename", ["../escape.bin", "/abs/path.bin", ""])
def test_fetch_file_rejects_bad_filename(data_home, filename):
    with pytest.raises(ValueError, match="relative path"):
        fetch_file(RemoteFile(filename, "http://example.invalid/"), data_home)


# --------------------------------------------------------------------------
# extract_tar


def test_extract_tar_strip_and_select(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(
        _tar_gz(
            {
                "data/power/data.npy": b"p",
                "data/gas/ethylene_CO.pickle": b"g",
                "data/mnist/mnist.pkl.gz": b"m",
            }
        )
    )
    out = tmp_path / "out"
    written = extract_tar(archive, out, members=["power", "gas"], strip_prefix="data")
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        "gas/ethylene_CO.pickle",
        "power/data.npy",
    ]
    assert (out / "power" / "data.npy").read_bytes() == b"p"
    assert not (out / "mnist").exists()
    assert not (out / "data").exists()


@pytest.mark.parametrize(
    "name", ["../evil.txt", "data/../../evil.txt", "/tmp/evil.txt"]
)
def test_extract_tar_rejects_escaping_members(tmp_path, name):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_tar_gz({name: b"x"}))
    out = tmp_path / "sub" / "out"
    with pytest.raises(OSError, match="outside"):
        extract_tar(archive, out)
    assert not (tmp_path / "sub" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_extract_tar_rejects_links(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("data/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(OSError, match="links"):
        extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "data" / "link").exists()


# --------------------------------------------------------------------------
# Tabular loaders on synthetic raw files


def _maf_file(data_home, relative):
    path = Path(data_home) / "maf" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _check_split_sizes(bunch, n_total):
    n_test = int(0.1 * n_total)
    n_val = int(0.1 * (n_total - n_test))
    assert bunch.test.shape[0] == n_test
    assert bunch.validation.shape[0] == n_val
    assert bunch.train.shape[0] == n_total - n_test - n_val


def _check_bunch(bunch, n_features):
    assert isinstance(bunch, Bunch)
    assert bunch.n_features == n_features
    assert isinstance(bunch.DESCR, str) and bunch.DESCR
    for key in ("train", "validation", "test"):
        array = bunch[key]
        assert array.dtype == np.float64
        assert array.ndim == 2 and array.shape[1] == n_features
        assert np.all(np.isfinite(array))


def _check_standardized_by_train_and_validation(bunch, n_features, n_total):
    """Check a loaded bunch whose train and validation rows together have mean 0 and std 1.

    Returns those rows, stacked.
    """
    _check_bunch(bunch, n_features)
    _check_split_sizes(bunch, n_total)
    fit = np.vstack([bunch.train, bunch.validation])
    np.testing.assert_allclose(fit.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(fit.std(axis=0), 1, rtol=1e-10)
    return fit


def _raw_power(n, rng):
    raw = np.empty((n, 8))
    raw[:, 0] = rng.gamma(2.0, 0.5, n).round(3)  # global active power
    raw[:, 1] = 0.5  # global reactive power: dropped (constant here)
    raw[:, 2] = rng.normal(240, 3, n).round(2)  # voltage
    raw[:, 3] = 7.0  # global intensity: dropped (constant here)
    raw[:, 4:7] = rng.integers(0, 4, (n, 3))  # sub-meterings, integers
    raw[:, 7] = np.arange(n)  # time: no noise, marks the row order
    return raw


def test_load_power(data_home):
    n = 1000
    raw = _raw_power(n, np.random.default_rng(0))
    np.save(_maf_file(data_home, "power/data.npy"), raw)

    power = load_power(data_home, download_if_missing=False)
    # Constant columns 1 and 3 were dropped: nothing is nan after scaling.
    fit = _check_standardized_by_train_and_validation(power, 6, n)
    everything = np.vstack([fit, power.test])
    # Rows were shuffled with RandomState(42); the time column carries no
    # noise, so its ranks give the permutation back.
    ranks = np.argsort(np.argsort(everything[:, 5]))
    np.testing.assert_array_equal(ranks, np.random.RandomState(42).permutation(n))
    # Dequantization noise breaks all ties of the integer sub-meterings...
    for j in (2, 3, 4):
        assert len(np.unique(everything[:, j])) == n
    # The published recipe, step by step: the noise is drawn from the same
    # seeded generator after the shuffle, voltage noise first.
    rng = np.random.RandomState(42)
    shuffled = raw[rng.permutation(n)][:, [0, 2, 4, 5, 6, 7]]
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    noisy = shuffled + np.hstack([gap_noise, voltage_noise, sm_noise, np.zeros((n, 1))])
    n_fit = power.train.shape[0] + power.validation.shape[0]
    mean, std = noisy[:n_fit].mean(axis=0), noisy[:n_fit].std(axis=0)
    np.testing.assert_allclose(everything, (noisy - mean) / std, atol=1e-10)
    # Deterministic: same arrays on a second load.
    np.testing.assert_array_equal(load_power(data_home).train, power.train)


def test_load_power_wrong_columns(data_home):
    np.save(_maf_file(data_home, "power/data.npy"), np.zeros((20, 5)))
    with pytest.raises(ValueError, match="8 columns"):
        load_power(data_home)


def _raw_gas(n, rng):
    s0 = rng.normal(size=n)
    s3 = rng.normal(size=n)
    return pd.DataFrame(
        {
            "Time": np.arange(n, dtype=float),
            "Meth": rng.uniform(size=n),
            "Eth": rng.uniform(size=n),
            "s0": s0,
            "s1": rng.normal(size=n),
            # s0, s2 and s6 form one group of correlated sensors: removing
            # them takes two rounds, and the last of them is kept.
            "s2": s0 + 0.01 * rng.normal(size=n),
            "s3": s3,
            # Strong negative correlation is kept, as published.
            "s4": -s3 + 0.01 * rng.normal(size=n),
            "s5": rng.normal(size=n) * 10 + 3,
            "s6": s0 + 0.01 * rng.normal(size=n),
        }
    )


def test_load_gas(data_home):
    n = 1000
    frame = _raw_gas(n, np.random.default_rng(0))
    frame.to_pickle(_maf_file(data_home, "gas/ethylene_CO.pickle"))

    gas = load_gas(data_home, download_if_missing=False)
    kept = ["s1", "s3", "s4", "s5", "s6"]
    _check_bunch(gas, len(kept))
    _check_split_sizes(gas, n)
    everything = np.vstack([gas.train, gas.validation, gas.test])
    # Standardized with the mean and (ddof=1) std of all rows, not shuffled.
    np.testing.assert_allclose(everything.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(everything.std(axis=0, ddof=1), 1, rtol=1e-10)
    expected = frame[kept]
    expected = ((expected - expected.mean()) / expected.std()).to_numpy()
    np.testing.assert_allclose(everything, expected, rtol=1e-12, atol=1e-12)


def test_load_gas_missing_columns(data_home):
    pd.DataFrame({"Time": [0.0, 1.0], "a": [1.0, 2.0]}).to_pickle(
        _maf_file(data_home, "gas/ethylene_CO.pickle")
    )
    with pytest.raises(ValueError, match="Eth"):
        load_gas(data_home)


def _raw_hepmass(n, rng, test=False):
    columns = {
        "# label": rng.integers(0, 2, n).astype(float),
        "f0": rng.normal(size=n),
        # Smallest value repeated more than 5 times: dropped.
        "f1": rng.integers(0, 3, n).astype(float),
        "f2": rng.normal(size=n),
        # Many repeats, but not of the smallest value: kept by the
        # published rule (it counts the smallest value).
        "f3": np.where(np.arange(n) % 2 == 0, 1.0, rng.normal(size=n)),
        "mass": np.full(n, 1000.0) + rng.normal(size=n),
    }
    columns["f3"][0] = -100.0
    if test:
        # The published test file has one column more.
        columns["extra"] = np.full(n, 1e6)
    frame = pd.DataFrame(columns)
    # Background rows (label 0) are far away, so that keeping them shows.
    frame.loc[frame["# label"] == 0, "f0"] = 1e3
    return frame


def test_load_hepmass(data_home):
    rng = np.random.default_rng(0)
    train_raw = _raw_hepmass(1200, rng)
    test_raw = _raw_hepmass(500, rng, test=True)
    train_raw.to_csv(_maf_file(data_home, "hepmass/1000_train.csv"), index=False)
    test_raw.to_csv(_maf_file(data_home, "hepmass/1000_test.csv"), index=False)

    hepmass = load_hepmass(data_home, download_if_missing=False)
    kept = ["f0", "f2", "f3", "mass"]
    _check_bunch(hepmass, len(kept))
    n_signal = int((train_raw["# label"] == 1).sum())
    assert hepmass.validation.shape[0] == int(0.1 * n_signal)
    assert hepmass.train.shape[0] == n_signal - int(0.1 * n_signal)
    assert hepmass.test.shape[0] == int((test_raw["# label"] == 1).sum())
    # Standardized with the mean and (ddof=1) std of the whole training file.
    fit = np.vstack([hepmass.train, hepmass.validation])
    np.testing.assert_allclose(fit.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(fit.std(axis=0, ddof=1), 1, rtol=1e-10)
    signal = train_raw[train_raw["# label"] == 1][kept]
    mean, std = signal.mean(), signal.std()
    np.testing.assert_allclose(fit, ((signal - mean) / std).to_numpy(), atol=1e-12)
    # The test rows use the training statistics; background rows and the
    # extra last column are gone.
    test_signal = test_raw[test_raw["# label"] == 1][kept]
    np.testing.assert_allclose(
        hepmass.test, ((test_signal - mean) / std).to_numpy(), atol=1e-12
    )


def test_load_miniboone(data_home):
    n = 1234
    rng = np.random.default_rng(0)
    raw = rng.normal(3.0, 2.0, (n, 7)) * np.arange(1, 8)
    np.save(_maf_file(data_home, "miniboone/data.npy"), raw)

    miniboone = load_miniboone(data_home, download_if_missing=False)
    _check_standardized_by_train_and_validation(miniboone, 7, n)
    # Not shuffled: the test rows are the last rows of the file.
    n_test = miniboone.test.shape[0]
    mean, std = raw[:-n_test].mean(axis=0), raw[:-n_test].std(axis=0)
    np.testing.assert_allclose(miniboone.test * std + mean, raw[-n_test:], rtol=1e-10)
    assert abs(miniboone.test.mean()) > 1e-6  # test is not re-centred itself


def test_split_sizes_of_published_miniboone():
    # 36,488 rows give the published 29,556 / 3,284 / 3,648 split.
    splits = _tabular._three_way_split(np.zeros((36488, 1)))
    assert [len(s) for s in splits] == [29556, 3284, 3648]


def test_load_miniboone_matches_shared_splits_shape():
    # The shared copy holds the published validation and test splits.
    folder = SHARED_DATA / "maf_miniboone"
    if not folder.is_dir():
        pytest.skip(f"shared MINIBOONE splits not found at {folder}")
    assert np.load(folder / "val.npy").shape == (3284, 43)
    assert np.load(folder / "test.npy").shape == (3648, 43)


def _has_h5py():
    try:
        import h5py  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_h5py(), reason="h5py is not installed")
def test_load_bsds300(data_home):
    import h5py

    rng = np.random.default_rng(0)
    arrays = {
        "train": rng.normal(size=(50, 63)).astype(np.float32),
        "validation": rng.normal(size=(10, 63)),
        "test": rng.normal(size=(20, 63)),
    }
    with h5py.File(_maf_file(data_home, "BSDS300/BSDS300.hdf5"), "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    bsds = load_bsds300(data_home, download_if_missing=False)
    _check_bunch(bsds, 63)
    for key, value in arrays.items():
        np.testing.assert_array_equal(bsds[key], value.astype(np.float64))


@pytest.mark.skipif(_has_h5py(), reason="h5py is installed")
def test_load_bsds300_without_h5py(data_home):
    _maf_file(data_home, "BSDS300/BSDS300.hdf5").write_bytes(b"not read")
    with pytest.raises(ImportError, match="requires h5py.*pip install h5py"):
        load_bsds300(data_home)


@pytest.mark.parametrize(
    "loader, relative",
    [
        (load_power, "power/data.npy"),
        (load_gas, "gas/ethylene_CO.pickle"),
        (load_hepmass, "hepmass/1000_train.csv"),
        (load_miniboone, "miniboone/data.npy"),
        (load_bsds300, "BSDS300/BSDS300.hdf5"),
    ],
)
def test_tabular_missing_file(data_home, loader, relative, server):
    with pytest.raises(FileNotFoundError) as excinfo:
        loader(data_home, download_if_missing=False)
    message = str(excinfo.value)
    assert str(data_home / "maf" / relative) in message
    assert _tabular.MAF_ARCHIVE.url in message
    assert "by hand" in message
    assert server.requests == []


def test_tabular_download_extracts_only_requested(server, data_home, monkeypatch):
    rng = np.random.default_rng(0)
    miniboone_raw = rng.normal(size=(200, 4))
    archive = _tar_gz(
        {
            "data/miniboone/data.npy": _npy_bytes(miniboone_raw),
            "data/power/data.npy": _npy_bytes(_raw_power(300, rng)),
            "data/cifar10/big.bin": b"not needed",
        }
    )
    server.files["data.tar.gz"] = archive
    monkeypatch.setattr(
        _tabular,
        "MAF_ARCHIVE",
        RemoteFile("maf/data.tar.gz", server.url + "data.tar.gz", _sha256(archive)),
    )

    miniboone = load_miniboone(data_home)
    _check_split_sizes(miniboone, 200)
    assert (data_home / "maf" / "miniboone" / "data.npy").is_file()
    assert not (data_home / "maf" / "power").exists()
    assert not (data_home / "maf" / "cifar10").exists()
    assert len(server.requests) == 1

    # The archive is kept: another data set needs no new download.
    power = load_power(data_home)
    _check_split_sizes(power, 300)
    assert len(server.requests) == 1


def test_tabular_archive_without_the_data_set(server, data_home, monkeypatch):
    archive = _tar_gz({"data/power/data.npy": b"x"})
    server.files["data.tar.gz"] = archive
    monkeypatch.setattr(
        _tabular,
        "MAF_ARCHIVE",
        RemoteFile("maf/data.tar.gz", server.url + "data.tar.gz"),
    )
    with pytest.raises(OSError, match="did not provide"):
        load_miniboone(data_home)


# --------------------------------------------------------------------------
# ODDS

ODDS_EXPECTED = {
    "thyroid": (3772, 6, 93),
    "cardio": (1831, 21, 176),
    "mammography": (11183, 6, 260),
    "annthyroid": (7200, 6, 534),
}


@pytest.fixture
def odds_home(tmp_path):
    source = SHARED_DATA / "odds"
    if not source.is_dir():
        pytest.skip(f"shared ODDS data not found at {source} (set SKFLOW_TEST_DATA)")
    home = tmp_path / "odds_home"
    (home / "odds").mkdir(parents=True)
    for name in ODDS_DATASETS:
        shutil.copy(source / f"{name}.npz", home / "odds" / f"{name}.npz")
    return home


def test_odds_datasets_names():
    assert set(ODDS_DATASETS) == set(ODDS_EXPECTED)


@pytest.mark.parametrize("name", sorted(ODDS_EXPECTED))
def test_load_odds_real(odds_home, name):
    n_samples, n_features, n_anomalies = ODDS_EXPECTED[name]
    bunch = load_odds(name, data_home=odds_home, download_if_missing=False)
    assert isinstance(bunch, Bunch)
    assert bunch.data.shape == (n_samples, n_features)
    assert bunch.data.dtype == np.float64
    assert bunch.target.shape == (n_samples,)
    assert bunch.target.dtype == np.int64
    assert set(np.unique(bunch.target)) == {0, 1}
    assert int(bunch.target.sum()) == n_anomalies
    assert name in bunch.DESCR and str(n_anomalies) in bunch.DESCR

    X, y = load_odds(name, data_home=odds_home, return_X_y=True)
    np.testing.assert_array_equal(X, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)


def test_load_odds_unknown_name(data_home):
    with pytest.raises(ValueError, match="Unknown ODDS data set.*'thyroid'"):
        load_odds("satellite", data_home=data_home)


def test_load_odds_missing_file(data_home):
    with pytest.raises(FileNotFoundError) as excinfo:
        load_odds("cardio", data_home=data_home, download_if_missing=False)
    message = str(excinfo.value)
    assert str(data_home / "odds" / "cardio.npz") in message
    assert "6_cardio.npz" in message
    assert "by hand" in message


def test_load_odds_bad_file(data_home):
    (data_home / "odds").mkdir(parents=True)
    np.savez(data_home / "odds" / "thyroid.npz", features=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="'X' and 'y'"):
        load_odds("thyroid", data_home=data_home)
    # Pickled (object) arrays are refused.
    np.savez(
        data_home / "odds" / "thyroid.npz",
        X=np.array([{"a": 1}], dtype=object),
        y=np.zeros(1),
    )
    with pytest.raises(ValueError, match="allow_pickle"):
        load_odds("thyroid", data_home=data_home)


def test_load_odds_download(server, data_home, monkeypatch):
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, X=rng.normal(size=(30, 6)), y=(np.arange(30) < 3).astype(int))
    server.files["38_thyroid.npz"] = buffer.getvalue()
    monkeypatch.setattr(_odds, "_ADBENCH_URL", server.url)

    X, y = load_odds("thyroid", data_home=data_home, return_X_y=True)
    assert X.shape == (30, 6) and y.sum() == 3
    assert (data_home / "odds" / "thyroid.npz").is_file()
    load_odds("thyroid", data_home=data_home)
    assert server.requests == ["/38_thyroid.npz"]
