"""The MNIST loader: layouts, checksums, and every way a file can be bad. Uses small synthetic
IDX files in temporary folders (with their own MD5s), plus one test of the real MNIST."""

import gzip
import hashlib
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuroforge_lit import data
from neuroforge_lit.data import DataError, load_dataset, load_mnist, read_idx


def idx_bytes(array: torch.Tensor) -> bytes:
    magic = 0x803 if array.ndim == 3 else 0x801
    return struct.pack(">I" + "I" * array.ndim, magic, *array.shape) + array.to(torch.uint8).numpy().tobytes()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A tiny MNIST-shaped dataset (train 12, test 5) in $NEUROFORGE_DATA_DIR/mnist/*.gz, offline."""
    g = torch.Generator().manual_seed(0)
    arrays = {
        "train-images": torch.randint(0, 256, (12, 28, 28), generator=g),
        "train-labels": torch.randint(0, 10, (12,), generator=g),
        "test-images": torch.randint(0, 256, (5, 28, 28), generator=g),
        "test-labels": torch.randint(0, 10, (5,), generator=g),
    }
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    files = {}
    for role, array in arrays.items():
        raw = idx_bytes(array)
        name = data.MNIST.files[role][0]
        (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        files[role] = (name, hashlib.md5(raw).hexdigest())
    spec = data.DatasetFiles("mnist", data.MNIST.subdirs, files, "MNIST")
    monkeypatch.setitem(data.DATASETS, "mnist", spec)
    monkeypatch.setattr(data, "MNIST", spec)
    monkeypatch.setattr(data, "_loaded", {})
    monkeypatch.setenv("NEUROFORGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    downloads = []

    def offline(spec):
        downloads.append(spec.name)
        raise ConnectionError("no network here")

    monkeypatch.setattr(data, "_download", offline)
    return {"folder": folder, "arrays": arrays, "downloads": downloads, "tmp": tmp_path}


def test_loads_gz_files_as_float_images_and_int64_labels(fake):
    x, y = load_mnist("train")
    assert x.shape == (12, 784) and x.dtype == torch.float32
    assert y.shape == (12,) and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    torch.testing.assert_close(x, fake["arrays"]["train-images"].reshape(12, -1).float() / 255)
    torch.testing.assert_close(y, fake["arrays"]["train-labels"])
    x4, _ = load_mnist("test", flatten=False)
    assert x4.shape == (5, 1, 28, 28)
    assert fake["downloads"] == []


@pytest.mark.parametrize("layout", ["MNIST/raw", "."])
def test_decompressed_files_and_torchvision_layout(fake, layout):
    target = fake["tmp"] / "data" / layout
    target.mkdir(parents=True, exist_ok=True)
    for path in list(fake["folder"].iterdir()):
        (target / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    x, y = load_mnist("test")
    assert x.shape == (5, 784)


def test_cache_folder_is_searched_after_the_data_dir(fake, monkeypatch):
    cache = fake["tmp"] / "cache" / "neuroforge_lit" / "mnist"
    cache.parent.mkdir(parents=True)
    fake["folder"].rename(cache)
    monkeypatch.delenv("NEUROFORGE_DATA_DIR")
    assert load_mnist("train")[0].shape == (12, 784)


def test_missing_files_error_names_files_places_and_remedy(fake):
    for path in fake["folder"].iterdir():
        path.unlink()
    with pytest.raises(DataError) as err:
        load_mnist("train")
    msg = str(err.value)
    assert "train-images-idx3-ubyte[.gz]" in msg and "train-labels-idx1-ubyte[.gz]" in msg
    assert str(fake["folder"]) in msg and "neuroforge_lit" in msg   # where it looked
    assert "no network here" in msg and "NEUROFORGE_DATA_DIR" in msg  # why, and what to do
    assert fake["downloads"] == ["mnist"]


def test_download_false_does_not_try_the_network(fake):
    (fake["folder"] / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="download=False"):
        load_dataset("mnist", "test", download=False)
    assert fake["downloads"] == []


def _corrupt(path, how):
    raw = gzip.decompress(path.read_bytes())
    if how == "flipped byte":
        raw = raw[:-1] + bytes([raw[-1] ^ 0xFF])
        path.write_bytes(gzip.compress(raw))
    elif how == "truncated content":
        path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    elif how == "truncated archive":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize("how", ["flipped byte", "truncated content"])
def test_corrupt_file_is_an_error_naming_file_and_both_checksums(fake, how):
    path = fake["folder"] / "train-images-idx3-ubyte.gz"
    expected = data.MNIST.files["train-images"][1]
    _corrupt(path, how)
    with pytest.raises(DataError) as err:
        load_mnist("train")
    msg = str(err.value)
    actual = hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest()
    assert str(path) in msg and expected in msg and actual in msg
    assert data._loaded == {}            # nothing cached from a bad read


def test_truncated_archive_is_an_error_naming_the_file(fake):
    path = fake["folder"] / "train-labels-idx1-ubyte.gz"
    _corrupt(path, "truncated archive")
    with pytest.raises(DataError, match=str(path)):
        load_mnist("train")


def test_read_idx_checks_magic_and_size(tmp_path):
    good = idx_bytes(torch.zeros(3, 28, 28))
    (tmp_path / "bad-magic").write_bytes(b"\x00\x00\x09\x99" + good[4:])
    with pytest.raises(DataError, match=r"bad-magic: wrong magic number 0x00000999"):
        read_idx(tmp_path / "bad-magic")
    (tmp_path / "short").write_bytes(good[:-10])
    with pytest.raises(DataError, match=r"short: .* promises"):
        read_idx(tmp_path / "short")
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx(tmp_path / "tiny")


def test_mismatched_image_and_label_counts(fake, monkeypatch):
    raw = idx_bytes(torch.zeros(7, dtype=torch.uint8))  # 7 labels for 12 images
    path = fake["folder"] / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(raw))
    name, _ = data.MNIST.files["train-labels"]
    data.MNIST.files["train-labels"] = (name, hashlib.md5(raw).hexdigest())
    with pytest.raises(DataError, match=r"12, 28, 28\) but .*7 labels"):
        load_mnist("train")


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        load_mnist("val")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_the_real_mnist(mnist_available):
    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    assert x.shape == (60000, 784) and xt.shape == (10000, 784)
    assert y.bincount().tolist()[:2] == [5923, 6742]     # the published class counts of MNIST
    assert yt.bincount().sum() == 10000 and set(yt.unique().tolist()) == set(range(10))


def test_train_val_split_is_disjoint_and_seeded():
    x = torch.arange(100).float()[:, None]
    y = torch.arange(100)
    (xa, ya), (xb, yb) = data.train_val_split(x, y, 10, seed=3)
    assert len(xb) == 10 and len(xa) == 90
    assert set(ya.tolist()).isdisjoint(yb.tolist())
    (_, _), (_, yb2) = data.train_val_split(x, y, 10, seed=3)
    assert torch.equal(yb, yb2)


def test_fashion_mnist_from_debians_package():
    if not (data.SYSTEM_DIR / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist "
                    "(.ci/run installs it)")
    x, y = load_dataset("fashion-mnist", "test")
    assert x.shape == (10000, 784) and y.bincount().tolist() == [1000] * 10
    assert not torch.equal(x[:100], load_mnist("test")[0][:100]) if data._find(data.MNIST, "test-images") else True


def test_default_dataset_follows_the_environment(monkeypatch):
    monkeypatch.delenv("NEUROFORGE_DATASET", raising=False)
    assert data.default_dataset() == "mnist"
    monkeypatch.setenv("NEUROFORGE_DATASET", "fashion-mnist")
    assert data.default_dataset() == "fashion-mnist"


def test_a_flipped_byte_inside_the_compressed_stream_names_the_file(fake):
    path = fake["folder"] / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    failures = 0
    for position in range(10, min(len(raw) - 8, 120)):           # the header, then the deflate stream
        damaged = bytearray(raw)
        damaged[position] ^= 0xFF
        path.write_bytes(bytes(damaged))
        data._loaded.clear()
        with pytest.raises(DataError, match=re.escape(str(path))):
            load_mnist("train")
        failures += 1
    assert failures >= 50


# MNIST and Fashion-MNIST name their files alike: a folder of MNIST files must not make Fashion-MNIST
# report a valid MNIST file as corrupt (and tell the user to delete it).

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture
def mnist_folder(tmp_path, monkeypatch):
    """$NEUROFORGE_DATA_DIR is a folder of the real MNIST test files (symlinks, in the folder itself);
    /usr/share/datasets is an empty temporary folder; no cache, no network."""
    if not (REAL_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"the real MNIST is not at {REAL_MNIST} (see ../shared/data/README.md)")
    folder = tmp_path / "my-mnist"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).symlink_to(REAL_MNIST / name)
    monkeypatch.setenv("NEUROFORGE_DATA_DIR", str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(data, "_loaded", {})
    downloads = []

    def offline(spec):
        downloads.append(spec.name)
        raise ConnectionError("no network here")

    monkeypatch.setattr(data, "_download", offline)
    return {"folder": folder, "tmp": tmp_path, "downloads": downloads}


def test_the_other_datasets_file_is_passed_over_and_the_search_goes_on(mnist_folder, monkeypatch):
    g = torch.Generator().manual_seed(1)
    images, labels = torch.randint(0, 256, (4, 28, 28), generator=g), torch.randint(0, 10, (4,), generator=g)
    system = mnist_folder["tmp"] / "system" / "fashion-mnist"
    system.mkdir(parents=True)
    files = dict(data.FASHION_MNIST.files)
    for role, array in (("test-images", images), ("test-labels", labels)):
        raw = idx_bytes(array)
        (system / f"{files[role][0]}.gz").write_bytes(gzip.compress(raw))
        files[role] = (files[role][0], hashlib.md5(raw).hexdigest())
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", data.DatasetFiles("fashion-mnist", data.FASHION_MNIST.subdirs,
                                                                          files, "FashionMNIST"))
    x, y = load_dataset("fashion-mnist", "test")
    torch.testing.assert_close(y, labels)
    torch.testing.assert_close(x, images.reshape(4, -1).float() / 255)
    assert load_mnist("test")[0].shape == (10000, 784)       # and the MNIST files still load as MNIST
    assert mnist_folder["downloads"] == []


def test_only_the_other_datasets_file_names_whose_it_is_and_where_this_one_goes(mnist_folder):
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", "test")
    msg = str(err.value)
    images = mnist_folder["folder"] / "t10k-images-idx3-ubyte.gz"
    assert (f"{images} is MNIST's file, not Fashion-MNIST's; put Fashion-MNIST in "
            f"{mnist_folder['folder'] / 'fashion-mnist'}") in msg
    assert "corrupt" not in msg and "delete" not in msg and "checksum mismatch" not in msg
    assert mnist_folder["downloads"] == ["fashion-mnist"]    # absent, so the download was tried first


def test_fashion_mnist_beside_a_folder_of_mnist_files():
    """The reported case with the real files: NEUROFORGE_DATA_DIR at a folder of MNIST files, and
    Fashion-MNIST from Debian's package."""
    if not (data.SYSTEM_DIR / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist (.ci/run installs it)")
    if not (REAL_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"the real MNIST is not at {REAL_MNIST}")
    code = ("from neuroforge_lit.data import load_dataset\n"
            "x, y = load_dataset('fashion-mnist', 'test', download=False)\n"
            "print(tuple(x.shape), y.bincount().tolist())\n")
    env = {**os.environ, "NEUROFORGE_DATA_DIR": str(REAL_MNIST), "XDG_CACHE_HOME": "/nonexistent"}
    env.pop("NEUROFORGE_DATA_LIMIT", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"(10000, 784) {[1000] * 10}"


# NEUROFORGE_DATA_LIMIT: smoke runs of the documentation and of the installed package.

def test_data_limit_cuts_each_split_after_verifying_the_full_file(fake, monkeypatch, capsys):
    monkeypatch.setattr(data, "_announced_limits", set())
    monkeypatch.setenv("NEUROFORGE_DATA_LIMIT", "5")
    x, y = load_mnist("train")
    assert x.shape == (5, 784) and y.shape == (5,)
    torch.testing.assert_close(y, fake["arrays"]["train-labels"][:5])
    torch.testing.assert_close(x, fake["arrays"]["train-images"][:5].reshape(5, -1).float() / 255)
    assert load_mnist("test")[0].shape == (5, 784)           # 5 test examples of 5: nothing cut
    load_mnist("train")
    err = capsys.readouterr().err
    assert err.count(data.MARKER) == 1 and "NEUROFORGE_DATA_LIMIT=5: mnist train cut to its first 5 of 12" in err
    monkeypatch.delenv("NEUROFORGE_DATA_LIMIT")
    assert load_mnist("train")[0].shape == (12, 784)         # the cache holds the full split


def test_data_limit_still_checks_the_whole_file(fake, monkeypatch):
    monkeypatch.setenv("NEUROFORGE_DATA_LIMIT", "3")
    path = fake["folder"] / "train-images-idx3-ubyte.gz"
    _corrupt(path, "flipped byte")                           # the last byte: beyond the first 3 images
    with pytest.raises(DataError, match="checksum mismatch"):
        load_mnist("train")


@pytest.mark.parametrize("value", ["0", "-2", "ten", "1.5"])
def test_data_limit_must_be_a_positive_whole_number(fake, monkeypatch, value):
    monkeypatch.setenv("NEUROFORGE_DATA_LIMIT", value)
    with pytest.raises(ValueError, match=f"NEUROFORGE_DATA_LIMIT must be a positive whole number .*{value!r}"):
        load_mnist("train")
