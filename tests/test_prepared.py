"""`vaekit prepare`: an image source written once as 8-bit rows, read a batch at a time; training on it gives the
weights training on the source in memory gives."""

import json

import numpy as np
import pytest
import torch

from vaekit import DataConfig, load_data
from vaekit.cli.main import main
from vaekit.data.sources.prepared import RowFile
from vaekit.store.checkpoint import load_model

TINY = ["--latent-dim", "2", "--hidden", "16", "--precision", "fp32", "--batch-size", "32", "--epochs", "2",
        "--no-report", "--no-progress", "--threads", "1"]


@pytest.fixture
def images(tmp_path, capsys):
    """200 labelled 8-bit images (1 x 6 x 6) as an .npz, and the same prepared."""
    g = np.random.default_rng(0)
    y = g.integers(0, 3, 200)
    x = (g.random((200, 1, 6, 6)) * 60 + y[:, None, None, None] * 60).astype(np.uint8)
    path = tmp_path / "imgs.npz"
    np.savez(path, x=x, y=y)
    out = tmp_path / "prepared"
    assert main(["prepare", "--data", "npy", "--path", str(path), "--out", str(out)]) == 0
    assert "prepared 200 training images of 1x6x6" in capsys.readouterr().out
    return path, out


def test_a_row_file_reads_any_rows_in_any_order(tmp_path):
    data = np.arange(50 * 6, dtype=np.uint8).reshape(50, 1, 2, 3)
    (tmp_path / "x.u8").write_bytes(data.tobytes())
    rows = RowFile(tmp_path / "x.u8", 50, (1, 2, 3))
    for idx in ([3, 4, 5], [49, 0, 7, 7, 8, 6], list(range(50))[::-1], []):
        got = rows.index_select(0, torch.tensor(idx, dtype=torch.int64))
        assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), data[idx])
    with pytest.raises(IndexError):
        rows.index_select(0, torch.tensor([50]))


def test_prepared_data_trains_the_weights_of_the_source_in_memory(tmp_path, images, capsys):
    path, out = images
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train"] == 200 and meta["shape"] == [1, 6, 6] and len(meta["train_sha256"]) == 64
    memory, prepared = load_data(DataConfig("npy", path=str(path))), load_data(DataConfig("prepared", path=str(out)))
    assert prepared.train.stored and memory.train.stored   # 8-bit either way: files, or a uint8 tensor
    for a, b in ((memory.train, prepared.train), (memory.val, prepared.val), (memory.test, prepared.test)):
        assert len(a) == len(b) and torch.equal(a.head(len(a)), b.head(len(b))) and torch.equal(a.y, b.y)
    assert main(["train", "--data", "npy", "--path", str(path), "--run-dir", str(tmp_path / "m"), *TINY]) == 0
    assert main(["train", "--data", "prepared", "--path", str(out), "--run-dir", str(tmp_path / "p"), *TINY]) == 0
    (wa, wb) = (load_model(tmp_path / r)[0].state_dict() for r in ("m", "p"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert main(["eval", str(tmp_path / "p")]) == 0
    assert main(["train", "--data", "prepared", "--path", str(out), "--pixels", "dynamic", "--run-dir",
                 str(tmp_path / "d"), *TINY]) == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "digits"], "is not 8-bit images"),
    (["--data", "prepared"], "cannot be prepared"),
])
def test_prepare_refuses_what_it_cannot_write(tmp_path, capsys, args, message):
    assert main(["prepare", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_bad_prepared_folders_are_one_line_errors(tmp_path, images, capsys):
    path, out = images
    assert main(["prepare", "--data", "npy", "--path", str(path), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    (out / "train_x.u8").write_bytes((out / "train_x.u8").read_bytes()[:-7])   # truncated
    assert main(["train", "--data", "prepared", "--path", str(out), "--run-dir", str(tmp_path / "r"), *TINY]) == 2
    assert "prepare the data again" in capsys.readouterr().err
    (out / "meta.json").write_text("{}")
    assert main(["train", "--data", "prepared", "--path", str(out), "--run-dir", str(tmp_path / "r"), *TINY]) == 2
    assert "make the folder with vaekit prepare" in capsys.readouterr().err
    assert main(["train", "--data", "prepared", "--path", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "r"),
                 *TINY]) == 2
    assert "does not exist" in capsys.readouterr().err
