"""The MNIST loader: layouts, checksums, and every way a file can be bad. Uses small synthetic
IDX files in temporary folders (with their own MD5s), plus one test of the real MNIST."""

import gzip
import hashlib
import re
import struct

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
