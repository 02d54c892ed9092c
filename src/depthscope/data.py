"""Batch sources: i.i.d. Gaussian, XOR, MNIST and Fashion-MNIST (IDX reader and checksummed downloader).

The thesis' analysis (seed 002, section 3.1) assumes a zero-mean input whose
features are i.i.d. Real images are not: every source here is therefore
returned *centred*, and the docs say how.

* ``gaussian``  i.i.d. N(0, variance) features (the thesis uses variance 0.1).
* ``xor``       the four points (+-1, +-1), targets 1 where the signs differ.
* ``mnist``, ``fashion-mnist``  28 x 28 images flattened to 784 features,
  scaled to [0, 1] (pixel / 255), then centred: the per-feature (per-pixel) mean
  of the returned samples is subtracted, so every feature has mean exactly 0.
  Per-pixel variances still differ and neighbouring pixels are correlated (the
  thesis' i.i.d. assumption does not hold for images, which is what Fig. 3.2 tests).
  ``preprocess="whiten"`` goes further, to meet that assumption: PCA whitening
  (:func:`fit_whitening`) gives k <= 784 uncorrelated features of equal variance.

Where the IDX files are looked for, in order: ``data_dir`` (``--data-dir``), then
``$DEPTHSCOPE_DATA``, then the cache directory (``$DEPTHSCOPE_CACHE``, else
``$XDG_CACHE_HOME/depthscope``, else ``~/.cache/depthscope``); Fashion-MNIST also
in ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
In each directory the files may lie directly in it or in a sub-directory named
after the dataset (``mnist/``, ``fashion-mnist/``), gzipped (``.gz``, as
distributed) or not. When they are missing and ``download`` is true, they are
fetched from the usual mirrors into the cache directory, MD5-verified, and
moved into place atomically; when that fails, one error names the four files
and where to put them.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

SPLITS = ("train", "test", "any")
SOURCES = ("gaussian", "xor", "mnist", "fashion-mnist")
PREPROCESS = ("center", "whiten")

#: Variance of the rounding error of an 8-bit pixel scaled to [0, 1]: uniform on
#: +-1/510, so (1/255)^2 / 12 ~ 1.28e-6. The default eigenvalue cut-off of image
#: whitening (see :func:`fit_whitening`).
PIXEL_NOISE_VARIANCE = (1.0 / 255.0) ** 2 / 12.0

#: File names and MD5 sums of the original distributions (the .gz files).
DATASETS: dict[str, dict] = {
    "mnist": {
        "title": "MNIST",
        "files": {
            "train": (("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                      ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432")),
            "test": (("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
                     ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")),
        },
        "mirrors": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        "system_dirs": (),
    },
    "fashion-mnist": {
        "title": "Fashion-MNIST",
        "files": {
            "train": (("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                      ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe")),
            "test": (("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
                     ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")),
        },
        "mirrors": (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        "system_dirs": ("/usr/share/datasets/fashion-mnist",),
    },
}

#: MD5 of the decompressed IDX files that are known here (computed from the distribution's .gz files);
#: lets a gunzipped copy be identified too. Files not listed are identified by their .gz MD5 only.
RAW_MD5: dict[str, tuple[str, str]] = {
    "2646ac647ad5339dbf082846283269ea": ("mnist", "t10k-images-idx3-ubyte"),
    "27ae3e4e09519cfbb04c329615203637": ("mnist", "t10k-labels-idx1-ubyte"),
}

#: Mean pixel (scaled to [0, 1]) and share of zero pixels of each dataset's images (train and test agree to
#: 0.002): MNIST's digits leave most of the frame black, Fashion-MNIST's garments fill it. Used to tell
#: one dataset's images from the other's when a file's checksum is unknown (a re-compressed or raw copy).
PIXEL_SIGNATURE = {"mnist": (0.131, 0.81), "fashion-mnist": (0.286, 0.50)}

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """A data file is missing, truncated, corrupt or of the wrong shape (one clear line)."""


class DataNotFound(DataError, FileNotFoundError):
    """The dataset's files are not on this machine and could not be downloaded."""


# ----------------------------------------------------------------------------- IDX
def _open_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:  # truncated stream, bad CRC, bad header
            raise DataError(f"{path}: corrupt or truncated gzip file ({e}); delete it and fetch it again") from None
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file (``.gz`` or raw), validating magic, dimensions and length.

    IDX layout: two zero bytes, a type code (0x08 ubyte ... 0x0E float64), the
    number of dimensions d, d big-endian uint32 sizes, then the data, row-major,
    big-endian. Any mismatch (bad magic, unknown type, too few or too many
    bytes) raises :class:`DataError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFound(f"no such IDX file: {path}")
    buf = _open_bytes(path)
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {buf[:4].hex() or 'empty'})")
    code, ndim = buf[2], buf[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{code:02x}; expected one of "
                        f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}")
    if ndim < 1:
        raise DataError(f"{path}: IDX file declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: truncated IDX header ({len(buf)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    for i, d in enumerate(dims):
        if d == 0:  # an array with a zero dimension would load as an empty (or featureless) dataset
            raise DataError(f"{path}: IDX header field 'dimension {i + 1} of {ndim}' is 0 (dimensions {dims}); "
                            "the header is corrupt")
    # exact integer product: numpy's int64 product wraps around for crafted sizes such as 3 x 2^32-1
    expected = header + math.prod(dims) * dtype.itemsize
    if len(buf) != expected:
        what = "truncated" if len(buf) < expected else "has trailing bytes"
        raise DataError(f"{path}: IDX file {what}: its header's dimensions {dims} need {expected} bytes, "
                        f"the file has {len(buf)}")
    return np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when the name ends in .gz); the inverse of :func:`read_idx`."""
    path = Path(path)
    arr = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    native = arr.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}; use one of uint8, int8, int16, int32, float32, float64")
    body = bytes([0, 0, codes[native], arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    body += arr.astype(np.dtype(_IDX_DTYPES[codes[native]])).tobytes()
    path.write_bytes(gzip.compress(body, mtime=0) if path.suffix == ".gz" else body)
    return path


# ----------------------------------------------------------------------------- locating files
def cache_dir() -> Path:
    """``$DEPTHSCOPE_CACHE``, else ``$XDG_CACHE_HOME/depthscope``, else ``~/.cache/depthscope``."""
    if os.environ.get("DEPTHSCOPE_CACHE"):
        return Path(os.environ["DEPTHSCOPE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "depthscope"


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for ``name``'s files, in order (each also with a ``name/`` sub-directory)."""
    _check_name(name)
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    if os.environ.get("DEPTHSCOPE_DATA"):
        roots.append(Path(os.environ["DEPTHSCOPE_DATA"]))
    roots.append(cache_dir())
    out: list[Path] = []
    for r in roots:
        out += [r, r / name]
    out += [Path(d) for d in DATASETS[name]["system_dirs"]]
    seen: set[Path] = set()
    return [d for d in out if not (d in seen or seen.add(d))]


def _find(directory: Path, filename: str) -> Path | None:
    for cand in (directory / filename, directory / filename.removesuffix(".gz")):
        if cand.is_file():
            return cand
    return None


@dataclass
class DatasetInfo:
    """Which files a load used, and a one-line note saying so (e.g. that the test split stood in for train)."""

    name: str
    split: str  # the split actually used: "train" or "test"
    requested: str  # the split asked for: "train", "test" or "any"
    images: Path
    labels: Path
    n: int = 0
    note: str = ""
    downloaded: bool = False
    preprocess: str = ""  # how the returned inputs were preprocessed (one phrase)
    verified: bool = False  # both files' checksums are the distribution's (see identify_file)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}")


def _locate_split(name: str, split: str, data_dir) -> tuple[Path, Path] | None:
    for d in search_dirs(name, data_dir):
        found = [_find(d, fn) for fn, _ in DATASETS[name]["files"][split]]
        if all(found):
            return found[0], found[1]
    return None


def _known_files() -> dict[str, tuple[str, str]]:
    """MD5 -> (dataset, file name) of every distribution file, gzipped and (where known) raw."""
    out = {md5: (ds, fn) for ds, spec in DATASETS.items() for files in spec["files"].values()
           for fn, md5 in files}
    out.update(RAW_MD5)
    return out


_IDENTITY_CACHE: dict[tuple, tuple[str, str] | None] = {}


def identify_file(path: str | os.PathLike) -> tuple[str, str] | None:
    """(dataset, file name) of a distribution file, by the MD5 of the file (.gz) or of its content (raw);
    None when the checksum is not a known one (a custom or re-compressed copy). Cached per path, size and mtime."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _IDENTITY_CACHE:
        _IDENTITY_CACHE[key] = _known_files().get(md5sum(p))
    return _IDENTITY_CACHE[key]


def check_identity(name: str, split: str, images: Path, labels: Path) -> bool:
    """Refuse files that are another dataset's (or another split's, or labels for images); True when both
    are the distribution's own files (checksum verified), False when their checksums are unknown."""
    title = DATASETS[name]["title"]
    verified = True
    for path, (fn, _) in zip((images, labels), DATASETS[name]["files"][split]):
        ident = identify_file(path)
        if ident is None:
            verified = False
            continue
        ds, real = ident
        if ds != name or real.removesuffix(".gz") != fn.removesuffix(".gz"):
            raise DataError(f"{path} is {DATASETS[ds]['title']}'s {real} (by its MD5), not {title}'s {fn}; "
                            f"put {title}'s files there, or pass the directory that holds them with --data-dir")
    return verified


def _check_pixels(name: str, images: np.ndarray, path: Path) -> None:
    """For images of unknown checksum: refuse them when their pixel statistics are the *other* dataset's."""
    if images.ndim != 3 or images.shape[0] < 1000 or name not in PIXEL_SIGNATURE:
        return  # too few images for the statistics to be clear
    sample = images[:2000]
    mean, zeros = float(sample.mean()) / 255.0, float((sample == 0).mean())
    for other, (m, z) in PIXEL_SIGNATURE.items():
        own_m, own_z = PIXEL_SIGNATURE[name]
        if other != name and abs(mean - m) < 0.02 and abs(zeros - z) < 0.05 \
                and abs(mean - own_m) > 0.1:
            raise DataError(f"{path}: these images look like {DATASETS[other]['title']}'s, not "
                            f"{DATASETS[name]['title']}'s (mean pixel {mean:.3f} and {zeros:.0%} zero pixels; "
                            f"{DATASETS[other]['title']}: {m:.3f}, {z:.0%}; {DATASETS[name]['title']}: "
                            f"{own_m:.3f}, {own_z:.0%}); put {DATASETS[name]['title']}'s files there")


def missing_message(name: str, split: str, data_dir=None) -> str:
    """The one message shown when a dataset is neither on disk nor downloadable."""
    spec = DATASETS[name]
    files = [fn for s in ("train", "test") for fn, _ in spec["files"][s]]
    where = [str(d) for d in search_dirs(name, data_dir)]
    return (f"{spec['title']} ({split} split) not found and could not be downloaded. Put the four files "
            f"{', '.join(files)} (from {spec['mirrors'][0] if spec['mirrors'] else 'the dataset distribution'}) in a directory and pass it with --data-dir "
            f"or DEPTHSCOPE_DATA (or in {cache_dir() / name}); searched: {', '.join(where)}")


def locate(name: str, split: str = "train", data_dir=None, *, download: bool = True,
           mirrors: Sequence[str] | None = None, quiet: bool = True) -> DatasetInfo:
    """Find (or download) the IDX files of ``name``/``split``; ``split="any"`` prefers train, falls back to test."""
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
    title = DATASETS[name]["title"]
    if data_dir is not None and Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise DataError(f"data directory {data_dir} is a file, expected a directory")
    order = ("train", "test") if split == "any" else (split,)
    for s in order:
        found = _locate_split(name, s, data_dir)
        if found:
            verified = check_identity(name, s, found[0], found[1])  # before use: MNIST is not Fashion-MNIST
            note = ""
            if split == "any" and s == "test":
                note = f"{title} training files not found; used the test split instead"
            if not verified:
                note = (note + "; " if note else "") + \
                    f"local files whose MD5 is not the distribution's ({found[0].parent})"
            return DatasetInfo(name, s, split, found[0], found[1], note=note, verified=verified)
    if download:
        errors = []
        for s in order:
            try:
                paths = download_split(name, s, mirrors=mirrors, quiet=quiet)
            except DataNotFound as e:
                errors.append(str(e))
                continue
            note = f"{title} {s} split downloaded to {paths[0].parent}"
            return DatasetInfo(name, s, split, paths[0], paths[1], note=note, downloaded=True, verified=True)
    raise DataNotFound(missing_message(name, split, data_dir))


# ----------------------------------------------------------------------------- downloading
def md5sum(path: str | os.PathLike) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_file(filename: str, md5: str, dest_dir: str | os.PathLike, mirrors: Sequence[str], *,
                  timeout: float = 30.0, quiet: bool = True) -> Path:
    """Fetch ``filename`` from the first mirror that serves it with the right MD5; atomic rename into dest_dir.

    A mirror that fails or serves a file with the wrong MD5 is skipped (the bad
    copy is deleted); when none works, :class:`DataNotFound` lists what each said.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / filename
    problems = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + filename
        fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out)
            got = md5sum(tmp)
            if got != md5:
                problems.append(f"{url}: MD5 {got} != expected {md5}")
                continue
            os.replace(tmp, target)
            if not quiet:
                import sys

                print(f"downloaded {url} -> {target}", file=sys.stderr)
            return target
        except (urllib.error.URLError, OSError, ValueError) as e:
            problems.append(f"{url}: {getattr(e, 'reason', e)}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataNotFound(f"could not download {filename}: " + "; ".join(problems))


def download_split(name: str, split: str, *, dest_dir: str | os.PathLike | None = None,
                   mirrors: Sequence[str] | None = None, quiet: bool = True) -> tuple[Path, Path]:
    """Download (MD5-verified) the images and labels of ``name``/``split`` into the cache directory."""
    _check_name(name)
    spec = DATASETS[name]
    dest = Path(dest_dir) if dest_dir is not None else cache_dir() / name
    mirrors = tuple(mirrors) if mirrors is not None else spec["mirrors"]
    paths = []
    for fn, md5 in spec["files"][split]:
        existing = dest / fn
        if existing.is_file() and md5sum(existing) == md5:
            paths.append(existing)
        else:
            paths.append(download_file(fn, md5, dest, mirrors, quiet=quiet))
    return paths[0], paths[1]


# ----------------------------------------------------------------------------- loading
def _to_tensors(images: np.ndarray, labels: np.ndarray, info: DatasetInfo) -> tuple[torch.Tensor, torch.Tensor]:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{info.images}: expected uint8 images of shape (n, rows, cols), got "
                        f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{info.labels}: expected uint8 labels of shape (n,), got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{info.images} holds {images.shape[0]} images but {info.labels} holds "
                        f"{labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"{info.labels}: label {int(labels.max())} out of range 0..9")
    x = torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def center(x: torch.Tensor) -> torch.Tensor:
    """x - mean over samples, per feature (the thesis' zero-mean input assumption)."""
    return x - x.mean(dim=0, keepdim=True)


def check_preprocess(preprocess: str) -> str:
    """``preprocess`` if it is one of :data:`PREPROCESS`, else a one-line ValueError listing them."""
    if preprocess not in PREPROCESS:
        raise ValueError(f"unknown preprocess {preprocess!r}; expected one of: {', '.join(PREPROCESS)}")
    return preprocess


@dataclass(frozen=True, eq=False)
class Whitening:
    """A fitted PCA whitening: z = sqrt(variance) * Lambda_k^{-1/2} U_k^T (x - mean).

    ``basis`` (d, k) holds the kept eigenvectors U_k of the sample covariance
    C = X_c^T X_c / (n - 1) as columns, by decreasing eigenvalue; ``eigenvalues``
    (k,) the kept lambda_1 >= ... >= lambda_k > ``cutoff``. On the samples it was
    fitted on, z has mean 0 and sample covariance (ddof 1) exactly variance * I_k.
    Each eigenvector's sign is fixed (largest-magnitude entry positive).
    """

    mean: torch.Tensor  # (d,) float64
    basis: torch.Tensor  # (d, k) float64
    eigenvalues: torch.Tensor  # (k,) float64
    variance: float
    cutoff: float  # eigenvalues <= cutoff were dropped
    dropped: int  # how many directions were dropped

    @property
    def k(self) -> int:
        """Number of output features (directions kept)."""
        return int(self.eigenvalues.shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten x (n, d) -> (n, k) float32."""
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"whitening was fitted on {self.mean.shape[0]} features, got shape {tuple(x.shape)}")
        scale = (self.variance / self.eigenvalues).sqrt()
        return ((x.to(torch.float64) - self.mean) @ (self.basis * scale)).to(torch.float32)

    def describe(self) -> str:
        return (f"PCA-whitened: {self.k} of {self.k + self.dropped} directions kept (eigenvalue > "
                f"{self.cutoff:.3g}), each scaled to variance {self.variance:g}, uncorrelated")


def fit_whitening(x: torch.Tensor, variance: float = 1.0, *, min_eigenvalue: float = 0.0) -> Whitening:
    """PCA whitening fitted on x (n samples, d features), keeping the directions of non-negligible variance.

    Eigendecomposition (float64) of the sample covariance C = X_c^T X_c / (n - 1)
    = U Lambda U^T. A direction is kept when lambda_i > max(min_eigenvalue,
    d * eps64 * lambda_max): below the second term lambda_i is round-off (e.g.
    exactly constant pixels, or n <= d), and dividing by its square root would
    turn round-off into a feature. Images pass ``min_eigenvalue =``
    :data:`PIXEL_NOISE_VARIANCE`: a direction with less variance than 8-bit
    rounding noise carries no image, and whitening would amplify that noise to
    the variance of the digit strokes. Kept directions are scaled to ``variance``
    each (the thesis' sigma_x^2 of i.i.d. inputs).
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"whitening needs a (samples >= 2, features) matrix, got shape {tuple(x.shape)}")
    if not (variance > 0 and math.isfinite(variance)):
        raise ValueError(f"whitening variance must be a finite number > 0, got {variance!r}")
    if not (min_eigenvalue >= 0 and math.isfinite(min_eigenvalue)):
        raise ValueError(f"min_eigenvalue must be a finite number >= 0, got {min_eigenvalue!r}")
    xd = x.to(torch.float64)
    mean = xd.mean(0)
    xc = xd - mean
    cov = xc.T @ xc / (xd.shape[0] - 1)
    lam, vec = torch.linalg.eigh(cov)
    lam, vec = lam.flip(0), vec.flip(1)
    # eigenvectors are defined up to sign; fix it (largest |entry| positive) so the features are reproducible
    big = vec.abs().argmax(0)
    vec = vec * torch.sign(vec[big, torch.arange(vec.shape[1])])  # never 0: a unit vector's largest entry
    cutoff = max(float(min_eigenvalue), float(lam[0]) * xd.shape[1] * float(torch.finfo(torch.float64).eps))
    keep = int((lam > cutoff).sum())
    if keep == 0:
        raise ValueError(f"no direction has variance above the cut-off {cutoff:.3g} (largest eigenvalue "
                         f"{float(lam[0]):.3g}); nothing to whiten")
    return Whitening(mean, vec[:, :keep].contiguous(), lam[:keep].clone(), float(variance), cutoff,
                     int(lam.shape[0]) - keep)


def preprocess_images(x: torch.Tensor, preprocess: str = "center", variance: float = 1.0) -> tuple[torch.Tensor, str]:
    """Scaled images x (n, 784) -> (inputs, note). "center": x - mean (784 features);
    "whiten": :func:`fit_whitening` with the pixel-noise cut-off (k features of variance ``variance``)."""
    check_preprocess(preprocess)
    if preprocess == "center":
        return center(x), "scaled to [0, 1], centred per pixel"
    w = fit_whitening(x, variance, min_eigenvalue=PIXEL_NOISE_VARIANCE)
    return w(x), f"scaled to [0, 1], {w.describe()}"


def load_dataset_info(name: str, split: str = "train", data_dir=None, *, limit: int | None = None,
                      download: bool = True, mirrors: Sequence[str] | None = None,
                      quiet: bool = True, preprocess: str = "center",
                      variance: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """Like :func:`load_dataset`, also returning the :class:`DatasetInfo` (files used, note)."""
    check_preprocess(preprocess)
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    info = locate(name, split, data_dir, download=download, mirrors=mirrors, quiet=quiet)
    images = read_idx(info.images)
    if not info.verified:
        _check_pixels(name, images, info.images)
    x, y = _to_tensors(images, read_idx(info.labels), info)
    if limit is not None:
        x, y = x[: int(limit)], y[: int(limit)]
    info.n = int(x.shape[0])
    if info.n < 1:
        raise DataError(f"{info.images}: holds no images")
    x, info.preprocess = preprocess_images(x, preprocess, variance)
    return x, y, info


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None, *,
                 limit: int | None = None, download: bool = True, preprocess: str = "center",
                 variance: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of MNIST or Fashion-MNIST: x float32 scaled to [0, 1] then preprocessed, y int64 (n,).

    ``preprocess="center"`` (default): x (n, 784) centred per feature.
    ``preprocess="whiten"``: x (n, k) PCA-whitened (:func:`fit_whitening`, fitted
    on these n images, cut-off :data:`PIXEL_NOISE_VARIANCE`), every feature of
    sample variance ``variance`` and uncorrelated (``variance`` is unused by "center").
    ``split`` is "train", "test" or "any" (train when its files are present, else
    test; :func:`load_dataset_info` returns a note saying which was used).
    ``limit`` keeps the first ``limit`` samples (preprocessing fitted on those).
    """
    x, y, _ = load_dataset_info(name, split, data_dir, limit=limit, download=download, preprocess=preprocess,
                                variance=variance)
    return x, y


def describe_dataset(name: str, split: str = "any", data_dir=None) -> str:
    """One line saying which files a load of ``name``/``split`` would use (no download, no reading)."""
    try:
        info = locate(name, split, data_dir, download=False)
    except DataNotFound as e:
        return str(e)
    return info.note or f"{DATASETS[name]['title']} {info.split} split from {info.images.parent}"


# ----------------------------------------------------------------------------- synthetic sources
def gaussian(n: int, dim: int, variance: float = 1.0, *, seed: int) -> torch.Tensor:
    """n i.i.d. samples of dim i.i.d. N(0, variance) features (float32), drawn from ``seed``."""
    if isinstance(n, bool) or int(n) < 1 or isinstance(dim, bool) or int(dim) < 1:
        raise ValueError(f"n and dim must be positive integers, got n={n!r}, dim={dim!r}")
    if not (variance >= 0 and np.isfinite(variance)):
        raise ValueError(f"variance must be a finite number >= 0, got {variance!r}")
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(int(n), int(dim), generator=g) * float(np.sqrt(variance))


def xor(n: int = 4, *, noise: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The XOR problem: points (+-1, +-1) (zero-mean), targets y = 1 where the two signs differ, else 0.

    ``n`` samples cycle through the four corners (n=4: each once); ``noise`` adds
    N(0, noise^2) to every coordinate (drawn from ``seed``).
    """
    if isinstance(n, bool) or int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not (noise >= 0):
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    corners = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 1, 1, 0], dtype=torch.int64)
    idx = torch.arange(int(n)) % 4
    x, y = corners[idx].clone(), targets[idx].clone()
    if noise > 0:
        x += torch.randn(x.shape, generator=torch.Generator().manual_seed(int(seed))) * noise
    return x, y


# ----------------------------------------------------------------------------- uniform entry point
@dataclass
class Batch:
    """Inputs (and targets, when the source has them) plus a note saying where they came from."""

    source: str
    x: torch.Tensor
    y: torch.Tensor | None = None
    note: str = ""
    info: DatasetInfo | None = field(default=None, repr=False)

    def minibatches(self, batch_size: int, *, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """One shuffled pass over the samples in minibatches of ``batch_size`` (last one may be smaller)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        perm = torch.randperm(self.x.shape[0], generator=torch.Generator().manual_seed(int(seed)))
        for i in range(0, len(perm), batch_size):
            j = perm[i:i + batch_size]
            yield self.x[j], (None if self.y is None else self.y[j])


def batch_source(name: str, n: int | None = None, *, seed: int = 0, dim: int = 784, variance: float = 1.0,
                 split: str = "any", data_dir=None, download: bool = True, noise: float = 0.0,
                 preprocess: str = "center") -> Batch:
    """One batch from any source: "gaussian" (n x dim, i.i.d. N(0, variance)), "xor" (n points, +-1),
    "mnist" / "fashion-mnist" (n images chosen at random by ``seed`` from ``split``, all when n is None;
    scaled to [0, 1], then ``preprocess``: "center" (784 features) or "whiten" (k features of variance
    ``variance``, the whitening fitted on the whole split), then centred over the returned samples)."""
    check_preprocess(preprocess)  # image sources only; the synthetic ones are zero-mean i.i.d. already
    if name == "gaussian":
        if n is None:
            raise ValueError("the gaussian source needs a sample count n")
        return Batch(name, gaussian(n, dim, variance, seed=seed),
                     note=f"{n} i.i.d. Gaussian samples, {dim} features of variance {variance:g}")
    if name == "xor":
        x, y = xor(4 if n is None else n, noise=noise, seed=seed)
        return Batch(name, x, y, note=f"{x.shape[0]} XOR points (+-1 corners, noise {noise:g})")
    if name in DATASETS:
        x, y, info = load_dataset_info(name, split, data_dir, download=download, preprocess=preprocess,
                                       variance=variance)
        total = x.shape[0]
        if n is not None:
            if isinstance(n, bool) or int(n) < 1:
                raise ValueError(f"n must be a positive integer or None, got {n!r}")
            if n > total:
                raise ValueError(f"asked for {n} {name} samples but the {info.split} split has {total}")
            idx = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))[: int(n)]
            x, y = center(x[idx]), y[idx]
        title = DATASETS[name]["title"]
        note = f"{x.shape[0]} {title} {info.split} images ({info.images.parent}; {info.preprocess})"
        if info.note:
            note += f"; {info.note}"
        return Batch(name, x, y, note=note, info=info)
    raise ValueError(f"unknown batch source {name!r}; expected one of: {', '.join(SOURCES)}")
