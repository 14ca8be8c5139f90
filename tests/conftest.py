import os
from pathlib import Path

import pytest
import torch

from vaekit import Dataset, DataSplits

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
if "VAEKIT_DATA" not in os.environ and (SHARED / "mnist").is_dir():
    os.environ["VAEKIT_DATA"] = str(SHARED)  # tests never touch the network


def mnist_root() -> Path | None:
    root = Path(os.environ.get("VAEKIT_DATA", "")) / "mnist"
    return root if (root / "train-images-idx3-ubyte.gz").exists() or (root / "train-images-idx3-ubyte").exists() else None


needs_mnist = pytest.mark.skipif(mnist_root() is None, reason="MNIST not found under $VAEKIT_DATA")


HEAVY = ("distributed", "browser", "compile", "subprocess")   # each of these is also slow (docs/contributing.md)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not item.get_closest_marker("slow") and any(item.get_closest_marker(m) for m in HEAVY):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """What vaekit caches (the precision choice, decompressed data) goes to a folder of this test session."""
    before = os.environ.get("VAEKIT_CACHE")
    os.environ["VAEKIT_CACHE"] = str(tmp_path_factory.mktemp("vaekit-cache"))
    yield
    if before is None:
        os.environ.pop("VAEKIT_CACHE", None)
    else:
        os.environ["VAEKIT_CACHE"] = before


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is as fast, and stays fast when other jobs load the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_splits(shape=(1, 6, 6), n=96, classes=3, seed=0) -> DataSplits:
    """Tiny image-like data: each class a different blob, values in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    base = torch.rand(classes, *shape, generator=g)
    x = (base[y] * 0.8 + 0.2 * torch.rand(n, *shape, generator=g)).clamp(0, 1)
    third = n // 3
    return DataSplits(Dataset(x[third:], y[third:]), Dataset(x[:third // 2], y[:third // 2]),
                      Dataset(x[third // 2:third], y[third // 2:third]), "synthetic")
