import gzip
import hashlib
import os
import struct

import numpy as np
import pytest
import torch

from conftest import needs_mnist
from vaekit import DataConfig, DataError, batches, data_root, load_data, read_idx
from vaekit.data.sources import MNIST
from vaekit.data.sources.download import fetch
from vaekit.errors import ConfigError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_idx(path, array_bytes: bytes, shape, dtype_code=0x08, gz=True):
    header = bytes([0, 0, dtype_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    data = header + array_bytes
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    payload = bytes(range(24))
    arr = read_idx(write_idx(tmp_path / ("x.gz" if gz else "x"), payload, (2, 3, 4), gz=gz))
    assert arr.shape == (2, 3, 4) and arr.reshape(-1).tolist() == list(range(24))


def test_a_gz_is_decompressed_once_and_read_back_from_the_cache(tmp_path, monkeypatch):
    from vaekit.data.sources import idx
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    path = write_idx(tmp_path / "x.gz", bytes(range(24)), (2, 3, 4))
    first = read_idx(path)
    copies = list((tmp_path / "cache" / "idx").iterdir())
    assert len(copies) == 1 and copies[0].read_bytes() == gzip.decompress(path.read_bytes())

    def no_gzip(data):
        raise AssertionError("decompressed again")
    monkeypatch.setattr(idx.gzip, "decompress", no_gzip)
    assert np.array_equal(read_idx(path), first)
    monkeypatch.undo()
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))

    copies[0].write_bytes(b"damaged")              # a damaged copy is ignored and written again
    assert np.array_equal(read_idx(path), first)
    assert copies[0].read_bytes() == gzip.decompress(path.read_bytes())

    write_idx(path, bytes(range(100, 124)), (2, 3, 4))   # the file changed: its new bytes, one copy kept
    os.utime(path, ns=(1, 2))
    assert read_idx(path).reshape(-1).tolist() == list(range(100, 124))
    assert len(list((tmp_path / "cache" / "idx").iterdir())) == 1


def test_an_unwritable_cache_still_reads(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache folder would be")
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    path = write_idx(tmp_path / "x.gz", bytes(range(24)), (2, 3, 4))
    assert read_idx(path).reshape(-1).tolist() == list(range(24))


def test_truncated_idx_is_refused_with_a_clear_message(tmp_path):
    path = write_idx(tmp_path / "x.gz", bytes(20), (2, 3, 4))  # header promises 24 bytes
    with pytest.raises(DataError, match="needs 24"):
        read_idx(path)


def test_bad_magic_and_broken_gzip_are_refused(tmp_path):
    (tmp_path / "a").write_bytes(b"\x12\x34\x08\x01" + bytes(8))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "a")
    good = gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 4) + bytes(4))
    (tmp_path / "b.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="corrupt"):
        read_idx(tmp_path / "b.gz")


def test_wrong_dimensions_are_refused(tmp_path):
    path = write_idx(tmp_path / "x.gz", bytes(24), (2, 3, 4))
    with pytest.raises(DataError, match="expected"):
        read_idx(path, expect_shape=(2, 4, 3))


def test_missing_mnist_offline_names_the_folder_and_files(tmp_path):
    cfg = DataConfig("mnist", data_dir=str(tmp_path))
    with pytest.raises(DataError) as e:
        load_data(cfg, download=False)
    msg, details = str(e.value), e.value.details
    assert str(tmp_path / "mnist") in msg and "--data-dir" in msg and "\n" not in msg
    assert len(msg.replace(str(tmp_path / "mnist"), "")) < 200        # the cause and the fix, readable
    assert "train-images-idx3-ubyte.gz" in details and "t10k-labels-idx1-ubyte.gz" in details   # behind --verbose


def test_failed_download_is_a_clear_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    root = tmp_path / "cache"
    with pytest.raises(DataError, match="download failed") as e:
        load_data(DataConfig("mnist", data_dir=str(root)))
    assert "unreachable" in e.value.details and len(e.value.details.splitlines()) >= 3   # each mirror tried
    assert not root.exists()      # no empty folders left behind (before: an empty cache/mnist/)


def test_download_checks_the_md5_and_renames_atomically(tmp_path, monkeypatch):
    class Reply:
        def __init__(self, body): self.body = body
        def __enter__(self): return self
        def __exit__(self, *a): return False
        def read(self): return self.body

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Reply(b"not the real file"))
    path, errors = fetch(MNIST.mirrors, MNIST.train_labels.name, MNIST.train_labels.md5, tmp_path / "mnist", timeout=1)
    assert path is None and errors and all("checksum mismatch" in e for e in errors)
    assert list(tmp_path.iterdir()) == []
    payload = b"the real file"
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Reply(payload))
    path, errors = fetch(MNIST.mirrors, "f.gz", hashlib.md5(payload).hexdigest(), tmp_path / "mnist", timeout=1)
    assert path == tmp_path / "mnist" / "f.gz" and path.read_bytes() == payload and errors == []
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())   # not mkstemp's 0600


def test_cache_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "env"))
    assert data_root(str(tmp_path / "flag")) == tmp_path / "flag"
    assert data_root(None) == tmp_path / "env"
    monkeypatch.delenv("VAEKIT_DATA")
    assert data_root(None).parts[-2:] == (".cache", "vaekit")


def test_a_corrupt_mnist_file_in_the_cache_is_refused(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for f in (MNIST.train_images, MNIST.train_labels, MNIST.test_images, MNIST.test_labels):
        write_idx(folder / f.name, bytes(10), (10,), dtype_code=0x08)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz has shape \(10,\), expected \(60000, 28, 28\)"):
        load_data(DataConfig("mnist", data_dir=str(tmp_path), val_size=0), download=False)


@needs_mnist
def test_mnist_loads_with_official_sizes_and_split():
    d = load_data(DataConfig("mnist", val_size=5000))
    train = d.train.examples()
    assert train.shape == (55000, 1, 28, 28) and d.val.examples().shape == (5000, 1, 28, 28)
    assert d.test.examples().shape == (10000, 1, 28, 28) and d.test.y.max() == 9
    assert 0 <= train.min() and train.max() == 1 and train.dtype == torch.float32
    assert d.train.stored and d.train.x.dtype == torch.uint8   # kept 8-bit, 4x smaller
    again = load_data(DataConfig("mnist", val_size=5000))
    assert torch.equal(d.val.examples(), again.val.examples())  # the split is the same for every run


@needs_mnist
def test_pixel_modes():
    grey = load_data(DataConfig("mnist", pixels="grey", val_size=100, limit=500))
    static = load_data(DataConfig("mnist", pixels="static", val_size=100, limit=500))
    dynamic = load_data(DataConfig("mnist", pixels="dynamic", val_size=100, limit=500))
    assert not grey.train.binarise and set(static.train.examples().unique().tolist()) == {0.0, 1.0}
    assert torch.equal(static.train.examples(), load_data(DataConfig("mnist", pixels="static", val_size=100, limit=500)).train.examples())
    assert dynamic.train.binarise and torch.equal(dynamic.train.examples(), grey.train.examples())    # kept grey, drawn per batch
    assert set(dynamic.test.examples().unique().tolist()) == {0.0, 1.0}                      # evaluation drawn once
    g = torch.Generator().manual_seed(0)
    first = next(batches(dynamic.train, 500, g))[0]
    second = next(batches(dynamic.train, 500, g))[0]
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, second)
    torch.testing.assert_close(first.mean(), grey.train.examples().mean(), atol=0.01, rtol=0)


def test_digits_source_and_val_size_checks():
    d = load_data(DataConfig("digits", val_size=200))
    assert d.train.shape == (1, 8, 8) and len(d.val) == 200 and len(d.test) == 297
    assert d.train.examples().max() == 1.0
    with pytest.raises(ConfigError, match="leaves no training data"):
        load_data(DataConfig("digits", val_size=5000))
    with pytest.raises(ConfigError, match="unknown"):
        load_data(DataConfig("cifar"))


def test_batches_are_slices_of_one_permutation():
    d = load_data(DataConfig("digits", val_size=0))
    seen = torch.cat([y for _, y in batches(d.train, 64, torch.Generator().manual_seed(1), shuffle=True)])
    assert torch.equal(seen.sort().values, d.train.y.sort().values)
    assert not torch.equal(seen, d.train.y)
