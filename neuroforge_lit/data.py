"""MNIST from the official IDX files, verified by MD5 before use.

Hand-written (not generated from the book).

    >>> from neuroforge_lit.data import load_mnist
    >>> images, labels = load_mnist("train")      # (60000, 784) float32 in [0, 1], int64
    >>> images, labels = load_mnist("test", flatten=False)   # (10000, 1, 28, 28)

Fashion-MNIST (same format and sizes) loads the same way: ``load_dataset("fashion-mnist", "train")``.

Where the files are looked for, in order:

1. ``$NEUROFORGE_DATA_DIR`` -- in ``mnist/`` (the layout of the project's ``shared/data``),
   torchvision's ``MNIST/raw/``, or the folder itself; gzipped or decompressed;
2. the user cache folder (``$XDG_CACHE_HOME/neuroforge_lit``, else ``~/.cache/neuroforge_lit``),
   same layouts (``fashion-mnist/`` and ``FashionMNIST/raw/`` for Fashion-MNIST);
3. ``/usr/share/datasets`` (Debian's ``dataset-fashion-mnist`` package installs there);
4. if still absent, a download through ``torchvision.datasets`` into the cache folder.

Every file's *decompressed* content is checked against the published MD5 before it is used:
a corrupt or truncated copy is an error naming the file and both checksums, never silently used.
MNIST and Fashion-MNIST name their files alike, so a file whose MD5 is the *other* dataset's is
passed over (the search goes on); if nothing else is found, the error says whose file it is and
where this dataset's files belong.

``NEUROFORGE_DATA_LIMIT=N`` in the environment cuts each split to its first ``N`` examples, for
smoke runs of the documentation and the packaging tests only: the full files are still found and
verified first, and each cut split prints ``neuroforge_lit.quick.MARKER`` (to stderr), so the full
book build refuses a page trained that way.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from neuroforge_lit.quick import MARKER

__all__ = ["DataError", "load_mnist", "load_dataset", "default_dataset", "read_idx", "train_val_split",
           "search_dirs"]


class DataError(RuntimeError):
    """A data file is missing, corrupt, or not what it claims to be."""


@dataclass(frozen=True)
class DatasetFiles:
    """The four IDX files of an MNIST-shaped dataset, with the MD5 of each decompressed file."""

    name: str
    subdirs: tuple[str, ...]          # layouts looked for below each search folder
    files: dict[str, tuple[str, str]]  # role -> (file name, md5 of decompressed content)
    torchvision_class: str             # for the download fallback


MNIST = DatasetFiles(
    name="mnist",
    subdirs=("mnist", "MNIST/raw", "."),
    files={
        "train-images": ("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb"),
        "train-labels": ("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624"),
        "test-images": ("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
        "test-labels": ("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
    },
    torchvision_class="MNIST",
)

FASHION_MNIST = DatasetFiles(
    name="fashion-mnist",
    subdirs=("fashion-mnist", "FashionMNIST/raw", "."),
    files={  # MD5 of the decompressed files (Debian's dataset-fashion-mnist recompresses the .gz)
        "train-images": ("train-images-idx3-ubyte", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        "train-labels": ("train-labels-idx1-ubyte", "9018921c3c673c538a1fc5bad174d6f9"),
        "test-images": ("t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a"),
        "test-labels": ("t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965"),
    },
    torchvision_class="FashionMNIST",
)

DATASETS = {"mnist": MNIST, "fashion-mnist": FASHION_MNIST}
_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}   # for messages
LIMIT_VARIABLE = "NEUROFORGE_DATA_LIMIT"  # smoke runs: each split cut to its first N examples
SYSTEM_DIR = Path("/usr/share/datasets")  # where Debian's dataset-* packages install

_IDX_MAGIC = {2049: 1, 2051: 3}  # 0x801: labels (1 dim), 0x803: images (3 dims), dtype uint8
_loaded: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}  # verified reads only
_announced_limits: set[tuple[str, str, int]] = set()


def search_dirs() -> list[Path]:
    """The folders searched for data files, in order: $NEUROFORGE_DATA_DIR, the user cache, and
    /usr/share/datasets (Debian's dataset-fashion-mnist installs there)."""
    dirs = []
    if os.environ.get("NEUROFORGE_DATA_DIR"):
        dirs.append(Path(os.environ["NEUROFORGE_DATA_DIR"]).expanduser())
    return dirs + [_cache_dir(), SYSTEM_DIR]


def default_dataset() -> str:
    """The dataset the chapters train on: $NEUROFORGE_DATASET ("mnist" or "fashion-mnist"), else MNIST."""
    return os.environ.get("NEUROFORGE_DATASET", "mnist")


def _data_limit() -> int | None:
    """$NEUROFORGE_DATA_LIMIT as a positive int, or None where it is unset or empty."""
    value = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not value:
        return None
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"{LIMIT_VARIABLE} must be a positive whole number of examples per split, got {value!r}")
    return limit


def _title(spec: DatasetFiles) -> str:
    return _TITLES.get(spec.name, spec.name)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "neuroforge_lit"


def _candidates(spec: DatasetFiles, file_name: str) -> list[Path]:
    return [
        d / sub / (file_name + suffix)
        for d in search_dirs()
        for sub in spec.subdirs
        for suffix in (".gz", "")
    ]


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:   # EOFError: truncated; zlib.error: a damaged stream
        raise DataError(f"{path}: cannot be read ({type(e).__name__}: {e}); the file is truncated, damaged "
                        "or not gzip data") from e


def read_idx(path: str | Path, expected_md5: str | None = None) -> torch.Tensor:
    """Read one IDX file (optionally gzipped) into a uint8 tensor.

    With ``expected_md5``, the decompressed content must have that MD5 or a ``DataError`` names
    the file and both checksums. The header's magic number and sizes are checked either way.
    """
    path = Path(path)
    return _parse_idx(path, _read_bytes(path), expected_md5)


def _parse_idx(path: Path, raw: bytes, expected_md5: str | None, actual: str | None = None) -> torch.Tensor:
    """read_idx on the decompressed content ``raw`` of ``path`` (whose MD5 is ``actual``, if known)."""
    if expected_md5 is not None:
        actual = actual or hashlib.md5(raw).hexdigest()
        if actual != expected_md5:
            raise DataError(
                f"{path}: checksum mismatch (MD5 of the decompressed content is {actual}, expected "
                f"{expected_md5}); the file is corrupt or truncated: delete it and provide a fresh copy"
            )
    if len(raw) < 8:
        raise DataError(f"{path}: only {len(raw)} bytes, too short for an IDX header")
    magic, count = struct.unpack(">II", raw[:8])
    if magic not in _IDX_MAGIC:
        raise DataError(
            f"{path}: wrong magic number {magic:#010x}; an MNIST IDX file starts with "
            "0x00000801 (labels) or 0x00000803 (images)"
        )
    ndim = _IDX_MAGIC[magic]
    header = 4 + 4 * ndim
    dims = (count, *struct.unpack(">" + "I" * (ndim - 1), raw[8:header]))
    expected_len = header + int(torch.tensor(dims).prod())
    if len(raw) != expected_len:
        raise DataError(
            f"{path}: {len(raw)} bytes, but its header (dims {dims}) promises {expected_len}"
        )
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


@dataclass(frozen=True)
class _Found:
    """What the search for one file of a dataset found: the file to use (with its decompressed
    content and that content's MD5), or None; and the other datasets' files it passed over."""

    path: Path | None
    raw: bytes | None
    md5: str | None
    passed_over: tuple[tuple[Path, str], ...]   # (path, the name of the dataset it belongs to)


def _locate(spec: DatasetFiles, role: str) -> _Found:
    """The first candidate file for ``role`` that is not another dataset's file of the same name.

    A file whose MD5 is another dataset's official MD5 is intact, merely not this dataset's (MNIST
    and Fashion-MNIST name their files alike, and a folder's own layout "." matches both), so the
    search goes on past it. Any other file is returned, and its checksum is checked by the caller.
    """
    file_name, _ = spec.files[role]
    others = {md5: other.name for other in DATASETS.values() if other.name != spec.name
              for _, md5 in other.files.values()}
    passed_over = []
    for path in _candidates(spec, file_name):
        if not path.is_file():
            continue
        raw = _read_bytes(path)
        md5 = hashlib.md5(raw).hexdigest()
        if md5 in others and md5 != spec.files[role][1]:
            passed_over.append((path, others[md5]))
            continue
        return _Found(path, raw, md5, tuple(passed_over))
    return _Found(None, None, None, tuple(passed_over))


def _find(spec: DatasetFiles, role: str) -> Path | None:
    """The file ``load_dataset`` would read for ``role`` (another dataset's file of the same name
    is passed over), or None."""
    return _locate(spec, role).path


def _download(spec: DatasetFiles) -> None:
    """Fetch the dataset through torchvision into the cache folder (a no-op where it is present)."""
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise DataError("torchvision is not installed, so the files cannot be downloaded") from e
    cls = getattr(tvd, spec.torchvision_class)
    for train in (True, False):
        cls(root=str(_cache_dir()), train=train, download=True)


def _passed_over_message(spec: DatasetFiles, passed_over) -> str:
    """One line per file of another dataset that the search passed over: whose it is, and where
    this dataset's files go instead (a folder of their own below the same search folder)."""
    lines = []
    for path, owner in passed_over:
        base = next((d for d in search_dirs() if path.is_relative_to(d)), path.parent)
        lines.append(f"{path} is {_title(DATASETS[owner])}'s file, not {_title(spec)}'s; put {_title(spec)} "
                     f"in {base / spec.subdirs[0]} (or in {_cache_dir() / spec.subdirs[0]})")
    return "".join(line + "\n" for line in lines)


def _missing_message(spec: DatasetFiles, missing: list[str], why: str, passed_over=()) -> str:
    names = ", ".join(spec.files[r][0] + "[.gz]" for r in missing)
    where = "\n  ".join(str(d / s) for d in search_dirs() for s in spec.subdirs)
    return (
        _passed_over_message(spec, passed_over) +
        f"{spec.name}: could not find {names}.\nLooked in:\n  {where}\n"
        f"The download through torchvision failed too: {why}\n"
        f"Provide the files: set NEUROFORGE_DATA_DIR to a folder that holds them "
        f"(in {spec.subdirs[0]}/ or {spec.subdirs[1]}/), or copy them into {_cache_dir() / spec.subdirs[0]}."
    )


def load_dataset(
    name: str | None = None, split: str = "train", *, flatten: bool = True, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 in [0, 1], (N, 784) or (N, 1, 28, 28), and int64 labels (N,).

    name: "mnist" or "fashion-mnist" (the same IDX format and sizes); None means default_dataset().
    With ``NEUROFORGE_DATA_LIMIT=N`` in the environment (smoke runs only), the first ``N`` examples
    of the split, after the full files were verified.
    """
    name = default_dataset() if name is None else name
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    spec = DATASETS[name]
    limit = _data_limit()
    key = (name, split)
    if key not in _loaded:
        roles = [f"{split}-images", f"{split}-labels"]
        found = {r: _locate(spec, r) for r in roles}
        missing = [r for r in roles if found[r].path is None]
        if missing:
            why = "download=False"
            if download:
                try:
                    _download(spec)
                    why = "it reported success, yet the files are still absent"
                except Exception as e:  # noqa: BLE001 - any failure ends in the same clear message
                    why = f"{type(e).__name__}: {e}"
            found.update({r: _locate(spec, r) for r in missing})
            missing = [r for r in roles if found[r].path is None]
            if missing:
                passed_over = [p for r in missing for p in found[r].passed_over]
                raise DataError(_missing_message(spec, missing, why, passed_over))
        images, labels = (_parse_idx(found[r].path, found[r].raw, spec.files[r][1], found[r].md5) for r in roles)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{found[roles[0]].path} holds images of shape {tuple(images.shape)} but "
                f"{found[roles[1]].path} holds {len(labels)} labels; expected (N, 28, 28) and N"
            )
        _loaded[key] = (images, labels)
    images, labels = _loaded[key]
    if limit is not None and limit < len(images):
        if (name, split, limit) not in _announced_limits:
            _announced_limits.add((name, split, limit))
            print(f"{MARKER} {LIMIT_VARIABLE}={limit}: {name} {split} cut to its first {limit} of "
                  f"{len(images)} examples", file=sys.stderr)
        images, labels = images[:limit], labels[:limit]
    x = images.to(torch.float32).div_(255.0)
    x = x.reshape(len(x), -1) if flatten else x.unsqueeze(1)
    return x, labels.to(torch.int64)


def load_mnist(split: str = "train", *, flatten: bool = True, download: bool = True):
    """The official MNIST ``split`` ("train": 60,000 digits, "test": 10,000); see ``load_dataset``."""
    return load_dataset("mnist", split, flatten=flatten, download=download)


def train_val_split(images: torch.Tensor, labels: torch.Tensor, n_val: int, seed: int = 0):
    """Carve a random validation set of ``n_val`` examples out of a training set (never the test set).

    Returns ``(train_images, train_labels), (val_images, val_labels)``.
    """
    if not 0 < n_val < len(images):
        raise ValueError(f"n_val must be in (0, {len(images)}), got {n_val}")
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val], perm[n_val:]
    return (images[train], labels[train]), (images[val], labels[val])
