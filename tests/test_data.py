"""Batch sources, the IDX reader and the checksummed downloader (against a local http.server only)."""
from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import http.server
import re
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from depthscope import data
from depthscope.data import DataError, DataNotFound



def _shared_mnist() -> Path:
    """../shared/data/mnist beside the repo root (or beside a parent, for git worktrees)."""
    root = Path(__file__).resolve().parents[1]
    for base in (root, *root.parents[:2]):
        for cand in (base / ".." / "shared" / "data" / "mnist", base / "shared" / "data" / "mnist"):
            if (cand / "t10k-images-idx3-ubyte.gz").is_file():
                return cand.resolve()
    return root / ".." / "shared" / "data" / "mnist"


SHARED_MNIST = _shared_mnist()
MNIST_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test sees the user's cache, data dir or proxies."""
    monkeypatch.setenv("DEPTHSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DEPTHSCOPE_DATA", raising=False)
    for v in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", copy.deepcopy(data.DATASETS["fashion-mnist"]))
    data.DATASETS["fashion-mnist"]["system_dirs"] = (str(tmp_path / "no-system-dir"),)


def idx_bytes_reference(arr: np.ndarray) -> bytes:
    """The IDX encoding written out by hand with struct (independent of data.write_idx)."""
    code = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}[arr.dtype.type]
    fmt = {0x08: "B", 0x0C: "i", 0x0D: "f"}[code]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + b"".join(struct.pack(">" + fmt, v) for v in arr.ravel().tolist())


def write_fake_split(directory: Path, prefix: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    data.write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
    data.write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return images, labels


# ----------------------------------------------------------------------------- IDX reader
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_matches_hand_encoding(tmp_path, dtype, suffix):
    arr = (np.arange(2 * 3 * 4) * 7 % 251).astype(dtype).reshape(2, 3, 4)
    raw = idx_bytes_reference(arr)
    p = tmp_path / f"a.idx{suffix}"
    p.write_bytes(gzip.compress(raw) if suffix else raw)
    got = data.read_idx(p)
    assert got.dtype == np.dtype(dtype) and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    q = data.write_idx(tmp_path / f"b.idx{suffix}", arr)
    assert (gzip.decompress(q.read_bytes()) if suffix else q.read_bytes()) == raw


def test_truncated_idx_is_an_error(tmp_path):
    raw = idx_bytes_reference(np.zeros((5, 28, 28), np.uint8))
    p = tmp_path / "t.idx"
    p.write_bytes(raw[:-10])
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(p)
    p.write_bytes(raw + b"xx")
    with pytest.raises(DataError, match="trailing"):
        data.read_idx(p)
    p.write_bytes(raw[:9])
    with pytest.raises(DataError, match="truncated IDX header"):
        data.read_idx(p)


def test_bad_magic_and_type_code(tmp_path):
    p = tmp_path / "m.idx"
    p.write_bytes(b"\x01\x02\x08\x01" + bytes(8))
    with pytest.raises(DataError, match="bad magic"):
        data.read_idx(p)
    p.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match="unknown IDX type code 0x07"):
        data.read_idx(p)


def test_truncated_and_corrupt_gzip_are_errors(tmp_path):
    gz = gzip.compress(idx_bytes_reference(np.arange(4000, dtype=np.int32)))
    p = tmp_path / "g.idx.gz"
    p.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        data.read_idx(p)
    bad = bytearray(gz)
    bad[-6] ^= 0xFF  # flip a CRC byte
    p.write_bytes(bytes(bad))
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        data.read_idx(p)


# ----------------------------------------------------------------------------- loading
def test_load_scales_to_unit_interval_then_centres(tmp_path):
    images, labels = write_fake_split(tmp_path, "train", 50)
    x, y = data.load_dataset("mnist", "train", tmp_path, download=False)
    assert x.dtype == torch.float32 and x.shape == (50, 784)
    assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    scaled = images.reshape(50, 784).astype(np.float64) / 255.0
    np.testing.assert_allclose(x.numpy(), scaled - scaled.mean(0), atol=1e-6)
    assert x.mean(0).abs().max() < 1e-6


def test_limit_keeps_first_samples_and_centres_them(tmp_path):
    images, _ = write_fake_split(tmp_path, "t10k", 30)
    x, y = data.load_dataset("mnist", "test", tmp_path, limit=10, download=False)
    assert x.shape == (10, 784) and y.shape == (10,)
    scaled = images[:10].reshape(10, 784) / 255.0
    np.testing.assert_allclose(x.numpy(), scaled - scaled.mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="limit"):
        data.load_dataset("mnist", "test", tmp_path, limit=0, download=False)


def test_split_any_prefers_train_and_falls_back_to_test_with_a_note(tmp_path):
    write_fake_split(tmp_path, "t10k", 12)
    x, _, info = data.load_dataset_info("mnist", "any", tmp_path, download=False)
    assert info.split == "test" and x.shape[0] == 12 and "used the test split" in info.note
    write_fake_split(tmp_path, "train", 20)
    x, _, info = data.load_dataset_info("mnist", "any", tmp_path, download=False)
    assert info.split == "train" and x.shape[0] == 20 and "test split" not in info.note and not info.verified


def test_search_order_data_dir_then_env_then_cache(tmp_path, monkeypatch):
    write_fake_split(tmp_path / "a", "t10k", 3)
    write_fake_split(tmp_path / "b" / "mnist", "t10k", 4)  # dataset-named sub-directory
    write_fake_split(tmp_path / "cache" / "mnist", "t10k", 5)
    monkeypatch.setenv("DEPTHSCOPE_DATA", str(tmp_path / "b"))
    assert data.load_dataset("mnist", "test", tmp_path / "a", download=False)[0].shape[0] == 3
    assert data.load_dataset("mnist", "test", download=False)[0].shape[0] == 4
    monkeypatch.delenv("DEPTHSCOPE_DATA")
    assert data.load_dataset("mnist", "test", download=False)[0].shape[0] == 5


def test_uncompressed_files_are_found(tmp_path):
    images = np.full((2, 28, 28), 255, np.uint8)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 4], np.uint8))
    x, y = data.load_dataset("mnist", "test", tmp_path, download=False)
    assert x.shape == (2, 784) and y.tolist() == [3, 4] and float(x.abs().max()) == 0.0


def test_fashion_mnist_found_in_system_dir(tmp_path):
    sysdir = tmp_path / "usr-share"
    write_fake_split(sysdir, "t10k", 7)
    data.DATASETS["fashion-mnist"]["system_dirs"] = (str(sysdir),)
    x, _, info = data.load_dataset_info("fashion-mnist", "any", download=False)
    assert x.shape == (7, 784) and info.images.parent == sysdir


def test_label_count_mismatch_and_range_are_errors(tmp_path):
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8))
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="3 images but"):
        data.load_dataset("mnist", "test", tmp_path, download=False)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 12], np.uint8))
    with pytest.raises(DataError, match="label 12 out of range"):
        data.load_dataset("mnist", "test", tmp_path, download=False)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 9, 10], np.uint8))  # the first bad one
    with pytest.raises(DataError, match="label 10 out of range 0..9"):
        data.load_dataset("mnist", "test", tmp_path, download=False)


def test_missing_offline_names_the_four_files(tmp_path):
    with pytest.raises(DataNotFound) as e:
        data.load_dataset("mnist", "train", tmp_path / "empty", download=False)
    msg = str(e.value)
    assert all(f in msg for f in MNIST_FILES) and "--data-dir" in msg and "DEPTHSCOPE_DATA" in msg
    assert "\n" not in msg
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        data.load_dataset("cifar")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        data.load_dataset("mnist", "val")


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="../shared/data/mnist not present")
def test_real_mnist_test_set():
    for fn, md5 in data.DATASETS["mnist"]["files"]["test"]:
        assert data.md5sum(SHARED_MNIST / fn) == md5
    x, y, info = data.load_dataset_info("mnist", "any", SHARED_MNIST, download=False)
    assert info.split == "test" and x.shape == (10000, 784)
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    raw = data.read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz")
    assert raw.shape == (10000, 28, 28) and raw.max() == 255
    assert x.mean(0).abs().max() < 1e-5
    # per-pixel variance of [0, 1]-scaled MNIST averages about 0.067
    assert 0.05 < float(x.var(0).mean()) < 0.08


# ----------------------------------------------------------------------------- downloading
@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/'www'; yields (root, base_url)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _fake_mnist_spec(files: dict[str, Path], mirrors: list[str]) -> dict:
    md5 = {fn: hashlib.md5(p.read_bytes()).hexdigest() for fn, p in files.items()}
    spec = copy.deepcopy(data.DATASETS["mnist"])
    spec["files"] = {s: tuple((fn, md5.get(fn, "0" * 32)) for fn, _ in pairs) for s, pairs in spec["files"].items()}
    spec["mirrors"] = tuple(mirrors)
    return spec


def test_download_verifies_md5_and_lands_atomically_in_cache(tmp_path, http_dir, monkeypatch):
    root, url = http_dir
    good = tmp_path / "good"
    write_fake_split(good, "t10k", 9)
    (root / "bad").mkdir()
    (root / "good").mkdir()
    for fn in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (root / "good" / fn).write_bytes((good / fn).read_bytes())
        (root / "bad" / fn).write_bytes(b"not the file")  # right name, wrong MD5
    spec = _fake_mnist_spec({fn: good / fn for fn in MNIST_FILES[2:]}, [f"{url}/bad/", f"{url}/good/"])
    monkeypatch.setitem(data.DATASETS, "mnist", spec)
    x, y, info = data.load_dataset_info("mnist", "test", tmp_path / "empty")
    assert info.downloaded and x.shape == (9, 784)
    cache = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(MNIST_FILES[2:])  # no .part left behind
    assert info.images.parent == cache
    # second load: found on disk, no download
    spec["mirrors"] = ()
    _, _, info2 = data.load_dataset_info("mnist", "test")
    assert not info2.downloaded


def test_download_md5_mismatch_everywhere_is_an_error(tmp_path, http_dir, monkeypatch):
    root, url = http_dir
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(b"corrupt")
    spec = _fake_mnist_spec({}, [f"{url}/"])
    monkeypatch.setitem(data.DATASETS, "mnist", spec)
    with pytest.raises(DataNotFound, match="MD5"):
        data.download_split("mnist", "test")
    assert not any((tmp_path / "cache" / "mnist").iterdir())  # the bad copy was deleted
    with pytest.raises(DataNotFound) as e:  # through load_dataset: the one "put the files here" message
        data.load_dataset("mnist", "test")
    assert all(f in str(e.value) for f in MNIST_FILES)


def test_unreachable_mirror_gives_the_offline_message(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = copy.deepcopy(data.DATASETS["mnist"])
    spec["mirrors"] = (f"http://127.0.0.1:{port}/",)
    monkeypatch.setitem(data.DATASETS, "mnist", spec)
    with pytest.raises(DataNotFound) as e:
        data.load_dataset("mnist", "any")
    assert all(f in str(e.value) for f in MNIST_FILES)


# ----------------------------------------------------------------------------- synthetic sources
def test_gaussian_is_seeded_and_has_the_asked_variance():
    a = data.gaussian(4000, 50, 0.1, seed=3)
    assert a.dtype == torch.float32 and a.shape == (4000, 50)
    assert torch.equal(a, data.gaussian(4000, 50, 0.1, seed=3))
    assert not torch.equal(a, data.gaussian(4000, 50, 0.1, seed=4))
    assert abs(float(a.var()) - 0.1) < 0.003 and abs(float(a.mean())) < 0.003
    with pytest.raises(ValueError, match="variance"):
        data.gaussian(3, 3, -1.0, seed=0)


def test_xor_points_and_targets():
    x, y = data.xor()
    assert x.tolist() == [[-1, -1], [-1, 1], [1, -1], [1, 1]] and y.tolist() == [0, 1, 1, 0]
    assert torch.equal(y, (x[:, 0] * x[:, 1] < 0).long())
    xn, yn = data.xor(8, noise=0.1, seed=1)
    assert xn.shape == (8, 2) and yn.tolist() == [0, 1, 1, 0] * 2
    assert 0 < float((xn - x.repeat(2, 1)).abs().max()) < 1


def test_batch_source_uniform_entry_point(tmp_path):
    write_fake_split(tmp_path, "t10k", 40)
    b = data.batch_source("mnist", 16, seed=2, data_dir=tmp_path, download=False)
    assert b.x.shape == (16, 784) and b.y.shape == (16,) and "test" in b.note
    assert float(b.x.mean(0).abs().max()) < 1e-6
    assert torch.equal(b.x, data.batch_source("mnist", 16, seed=2, data_dir=tmp_path, download=False).x)
    g = data.batch_source("gaussian", 10, dim=5, variance=0.1, seed=0)
    assert g.x.shape == (10, 5) and g.y is None
    assert data.batch_source("xor").x.shape == (4, 2)
    seen = torch.cat([xb for xb, _ in b.minibatches(5, seed=0)])
    assert seen.shape == b.x.shape
    with pytest.raises(ValueError, match="unknown batch source 'cifar'"):
        data.batch_source("cifar", 3)
    with pytest.raises(ValueError, match="has 40"):
        data.batch_source("mnist", 41, data_dir=tmp_path, download=False)


# ----------------------------------------------------------------------------- whitening
def _correlated(n: int, d: int, rank: int, seed: int) -> np.ndarray:
    """n samples of d features mixed from ``rank`` latent sources of unequal scales, plus a non-zero mean
    and one constant feature (so the covariance has rank ``rank`` and d - rank zero eigenvalues)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, rank)) * np.geomspace(3.0, 0.05, rank)
    x = z @ rng.standard_normal((rank, d)) + rng.uniform(-2, 2, d)
    x[:, -1] = 0.7
    return x


def _numpy_whitening(x: np.ndarray, variance: float, tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference: eigendecomposition of np.cov (ddof 1), keep eigenvalues > tol; returns (U_k, lambda_k, Z)."""
    lam, u = np.linalg.eigh(np.cov(x, rowvar=False))
    keep = lam > tol
    u, lam = u[:, keep], lam[keep]
    z = (x - x.mean(0)) @ u / np.sqrt(lam) * np.sqrt(variance)
    return u, lam, z


def test_whitening_matches_numpy_eigendecomposition_on_correlated_data():
    x = _correlated(300, 12, rank=8, seed=0)
    w = data.fit_whitening(torch.from_numpy(x), variance=0.3)
    u, lam, z_ref = _numpy_whitening(x, 0.3, tol=1e-9)
    assert w.k == 8 == np.linalg.matrix_rank(x - x.mean(0)) and w.dropped == 4
    np.testing.assert_allclose(w.eigenvalues.numpy(), np.sort(lam)[::-1], rtol=1e-10)
    # the kept subspace (projector U_k U_k^T) and the whitened Gram matrix Z Z^T do not depend on eigenvector signs
    np.testing.assert_allclose((w.basis @ w.basis.T).numpy(), u @ u.T, atol=1e-10)
    z = w(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(z @ z.T, z_ref @ z_ref.T, rtol=1e-4, atol=1e-4)
    # covariance on the kept subspace is variance * identity, and the mean is zero
    np.testing.assert_allclose(np.cov(z, rowvar=False), 0.3 * np.eye(8), atol=2e-6)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)


def test_whitening_scale_is_exactly_the_asked_variance():
    """Catches a wrong scaling: ddof 0 vs 1 (a 1/40 error at n=40), a missing square root, or unit variance."""
    x = torch.from_numpy(_correlated(40, 6, rank=6, seed=1))
    for variance in (0.1, 2.5):
        z = data.fit_whitening(x, variance=variance)(x).double()
        np.testing.assert_allclose(z.var(0, correction=1).numpy(), variance, rtol=1e-5)
    # a rescaled input gives the same features; sqrt(variance) scales them linearly
    z1 = data.fit_whitening(x, variance=1.0)(x)
    torch.testing.assert_close(data.fit_whitening(37.0 * x, variance=1.0)(37.0 * x), z1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(data.fit_whitening(x, variance=4.0)(x), 2.0 * z1, rtol=1e-5, atol=1e-6)


def test_whitening_cutoff_drops_exactly_the_directions_below_it():
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((200, 4)) - 0.0)
    q -= q.mean(0)  # centred columns, then re-orthonormalised: sample covariance exactly diag(want)
    q, _ = np.linalg.qr(q)
    want = np.array([4.0, 1.0, 1e-3, 1e-7])
    rot, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    x = torch.from_numpy(q * np.sqrt(want * 199) @ rot.T)
    w = data.fit_whitening(x, min_eigenvalue=1e-5)
    assert (w.k, w.dropped, w.cutoff) == (3, 1, 1e-5)
    np.testing.assert_allclose(w.eigenvalues.numpy(), want[:3], rtol=1e-8)
    assert data.fit_whitening(x, min_eigenvalue=0.0).k == 4  # 1e-7 is well above round-off
    assert data.fit_whitening(x, min_eigenvalue=2e-3).k == 2


def test_whitening_bad_input_is_a_one_line_error():
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    for kwargs, needle in [({"variance": 0.0}, "variance must be a finite number > 0, got 0.0"),
                           ({"variance": float("nan")}, "got nan"),
                           ({"min_eigenvalue": -1.0}, "min_eigenvalue must be a finite number >= 0, got -1.0")]:
        with pytest.raises(ValueError, match=needle):
            data.fit_whitening(x, **kwargs)
    with pytest.raises(ValueError, match=r"samples >= 2, features\) matrix, got shape \(1, 3\)"):
        data.fit_whitening(x[:1])
    with pytest.raises(ValueError, match="nothing to whiten"):
        data.fit_whitening(torch.ones(5, 3))
    with pytest.raises(ValueError, match=r"fitted on 3 features, got shape \(4, 2\)"):
        data.fit_whitening(x)(x[:4, :2])
    with pytest.raises(ValueError, match="unknown preprocess 'zca'; expected one of: center, whiten") as e:
        data.load_dataset("mnist", "test", preprocess="zca")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown preprocess 'zca'"):
        data.batch_source("gaussian", 3, preprocess="zca")


def test_load_dataset_whiten_option(tmp_path):
    images, _ = write_fake_split(tmp_path, "t10k", 60)
    x, y, info = data.load_dataset_info("mnist", "test", tmp_path, download=False, preprocess="whiten",
                                        variance=0.1)
    # 60 random images span 59 directions (centring costs one)
    assert x.shape == (60, 59) and y.shape == (60,) and "PCA-whitened: 59 of 784" in info.preprocess
    np.testing.assert_allclose(np.cov(x.double().numpy(), rowvar=False), 0.1 * np.eye(59), atol=1e-5)
    ref = data.fit_whitening(torch.from_numpy(images.reshape(60, -1) / 255.0), 0.1,
                             min_eigenvalue=data.PIXEL_NOISE_VARIANCE)
    torch.testing.assert_close(x, ref(torch.from_numpy(images.reshape(60, -1) / 255.0)), rtol=1e-4, atol=1e-4)
    b = data.batch_source("mnist", 20, seed=1, data_dir=tmp_path, download=False, preprocess="whiten", variance=0.1)
    # whitened over the whole split, then the 20 picked samples are centred
    assert b.x.shape == (20, 59) and float(b.x.mean(0).abs().max()) < 1e-5 and "PCA-whitened" in b.note


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="../shared/data/mnist not present")
def test_real_mnist_whitened():
    x, _, info = data.load_dataset_info("mnist", "any", SHARED_MNIST, download=False, preprocess="whiten",
                                        variance=0.1)
    # 116 pixels are constant over the 10k test images; 19 more directions lie below 8-bit rounding noise
    assert x.shape == (10000, 649) and "649 of 784 directions kept" in info.preprocess
    cov = np.cov(x.double().numpy(), rowvar=False)
    np.testing.assert_allclose(np.diag(cov), 0.1, rtol=1e-4)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-5
    centred, _ = data.load_dataset("mnist", "any", SHARED_MNIST, download=False)
    from depthscope.metrics import vni

    # the point of whitening: input VNI falls from 0.034 (correlated pixels) to 1/k
    assert float(vni(centred)) > 0.03 and float(vni(x)) == pytest.approx(1 / 649, rel=1e-3)


# ----------------------------------------------------------------------------- issue 11: crafted headers, identity
def _raw_idx(path: Path, code: int, dims: tuple[int, ...], body: bytes = b"") -> Path:
    import struct

    path.write_bytes(bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body)
    return path


@pytest.mark.parametrize("dims,needle", [
    ((10, 0, 28), "field 'dimension 2 of 3' is 0"),
    ((0,), "field 'dimension 1 of 1' is 0"),
    # 2^16 ^ 4 = 2^64: numpy's int64 product wrapped to 0, so an empty body "matched" and reshape then failed
    ((65536, 65536, 65536, 65536), "need 18446744073709551636 bytes"),
    ((2**32 - 1, 2**32 - 1, 2**32 - 1), "IDX file truncated"),
], ids=["zero-middle", "zero-count", "wraps-int64", "huge"])
def test_crafted_idx_headers_name_the_file_and_field(tmp_path, dims, needle):
    p = _raw_idx(tmp_path / "crafted-idx", 0x08, dims)
    with pytest.raises(data.DataError, match=re.escape(needle)) as e:
        data.read_idx(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="../shared/data/mnist not present")
def test_fashion_mnist_refuses_mnist_files(tmp_path):
    """`--inputs fashion-mnist` with a directory of MNIST files used to read MNIST silently."""
    import gzip
    import shutil

    with pytest.raises(data.DataError, match=r"is MNIST's t10k-images-idx3-ubyte.gz \(by its MD5\), not "
                                             r"Fashion-MNIST's"):
        data.load_dataset("fashion-mnist", "test", SHARED_MNIST, download=False, limit=10)
    # a gunzipped copy is identified by the MD5 of its content
    raw = tmp_path / "raw"
    raw.mkdir()
    for fn in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / fn).write_bytes(gzip.decompress((SHARED_MNIST / f"{fn}.gz").read_bytes()))
    with pytest.raises(data.DataError, match="is MNIST's t10k-images-idx3-ubyte"):
        data.load_dataset("fashion-mnist", "test", raw, download=False, limit=10)
    # a re-compressed copy (unknown MD5) is told apart by its pixels
    regz = tmp_path / "regz"
    regz.mkdir()
    for fn in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (regz / f"{fn}.gz").write_bytes(gzip.compress((raw / fn).read_bytes(), mtime=0))
    with pytest.raises(data.DataError, match="look like MNIST's, not Fashion-MNIST's"):
        data.load_dataset("fashion-mnist", "test", regz, download=False, limit=10)
    # and the same files serve MNIST: verified when they are the distribution's, noted when not
    _, _, info = data.load_dataset_info("mnist", "test", SHARED_MNIST, download=False, limit=10)
    assert info.verified and "MD5" not in info.note
    _, _, info = data.load_dataset_info("mnist", "test", regz, download=False, limit=10)
    assert not info.verified and "MD5 is not the distribution's" in info.note
    shutil.rmtree(regz)


def test_labels_in_place_of_images_are_refused(tmp_path):
    """A known file under another name (here MNIST's test labels named as its images) is refused by identity."""
    if not SHARED_MNIST.is_dir():
        pytest.skip("../shared/data/mnist not present")
    d = tmp_path / "swap"
    d.mkdir()
    (d / "t10k-images-idx3-ubyte.gz").write_bytes((SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes((SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(data.DataError, match="is MNIST's t10k-labels-idx1-ubyte.gz"):
        data.load_dataset("mnist", "test", d, download=False)


def test_data_dir_that_is_a_file_is_an_error(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(data.DataError, match="is a file, expected a directory"):
        data.load_dataset("mnist", "test", f, download=False)
