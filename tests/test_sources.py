"""The data sources beyond MNIST: Fashion-MNIST, a folder of images, NumPy arrays, CSV tables.
Every file is synthetic and written here; nothing is downloaded."""

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from test_data import write_idx
from vaekit import DataConfig, ModelConfig, RunConfig, TrainConfig, fit, load_data
from vaekit.cli.main import main
from vaekit.data.sources import FASHION_MNIST, MNIST, SOURCES, IDXFile
from vaekit.errors import ConfigError, DataError

TINY = ["--hidden", "16", "--latent-dim", "2", "--epochs", "2", "--val-size", "5", "--no-progress", "--no-report"]


def image_folder(root, n=40, size=32):
    """n RGB images in two class folders: 'cat' reddish, 'dog' bluish; PNG and JPEG alternately."""
    rng = np.random.default_rng(0)
    for i in range(n):
        cls, channel = ("cat", 0) if i % 2 == 0 else ("dog", 2)
        pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
        pixels[..., channel] += 150
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / cls / f"{i:03d}.{'png' if i % 4 < 2 else 'jpg'}")
    return root


def table(path, n=200, seed=0):
    """A CSV of n rows: 5 numeric columns on different scales, and a label column in the middle
    ('b' where height > 170, else 'a'). Returns the numeric values (n, 5) and the column names."""
    rng = np.random.default_rng(seed)
    values = np.column_stack([rng.normal(170, 10, n), rng.normal(70, 15, n), rng.uniform(0, 1, n),
                              rng.integers(0, 5, n), rng.normal(-3e3, 500, n)])
    names = ["height", "weight", "score", "count", "balance"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names[:2] + ["label"] + names[2:])
        for row in values:
            w.writerow([f"{v:.6f}" for v in row[:2]] + ["b" if row[0] > 170 else "a"] + [f"{v:.6f}" for v in row[2:]])
    return values, names


def all_rows(d):
    return torch.cat([ds.examples() for ds in (d.train, d.val, d.test) if ds is not None])


# ----------------------------------------------------------------------------- loading

def test_a_folder_of_rgb_images_loads_with_labels_from_its_sub_folders(tmp_path):
    folder = image_folder(tmp_path / "pets")
    d = load_data(DataConfig("folder", path=str(folder), val_size=5))
    assert d.input_shape == (3, 32, 32) and (len(d.train), len(d.val), len(d.test)) == (31, 5, 4)
    x, y = all_rows(d), torch.cat([d.train.y, d.val.y, d.test.y])
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.bincount().tolist() == [20, 20]                          # cat = 0, dog = 1 (sorted names)
    red, blue = x[:, 0].mean((1, 2)), x[:, 2].mean((1, 2))
    assert ((red > blue) == (y == 0)).all()                            # each label went with its own images
    again = load_data(DataConfig("folder", path=str(folder), val_size=5))
    assert torch.equal(again.test.examples(), d.test.examples()) and torch.equal(again.val.y, d.val.y)


def test_folder_images_are_resized_and_grey_stays_grey(tmp_path):
    folder = tmp_path / "grey"
    folder.mkdir()
    for i, (w, h) in enumerate([(20, 24), (40, 30)] * 5):
        Image.fromarray(np.full((h, w), 25 * i, np.uint8), "L").save(folder / f"{i}.png")
    d = load_data(DataConfig("folder", path=str(folder), val_size=0, image_size=16))
    assert d.input_shape == (1, 16, 16) and d.train.y is None and d.test.y is None
    assert sorted(all_rows(d).mean((1, 2, 3)).mul(255).round().tolist()) == [25.0 * i for i in range(10)]
    with pytest.raises(DataError, match=r"differ in size \(0.png is 20x24, 1.png is 40x30\); pass --image-size"):
        load_data(DataConfig("folder", path=str(folder), val_size=0))


def test_one_colour_image_makes_the_whole_folder_rgb(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8), "L").save(folder / f"grey{i}.png")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(folder / "colour.png")
    d = load_data(DataConfig("folder", path=str(folder), val_size=0, test_fraction=0.2))
    x = all_rows(d)
    assert d.input_shape == (3, 8, 8) and len(x) == 5
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey images copied to R, G and B


def test_npy_and_npz_arrays(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (30, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "grey.npy", grey)
    d = load_data(DataConfig("npy", path=str(tmp_path / "grey.npy"), val_size=3))
    assert d.input_shape == (1, 8, 8) and d.train.y is None and (len(d.train), len(d.val), len(d.test)) == (24, 3, 3)
    torch.testing.assert_close(all_rows(d).sum().double(), torch.tensor(grey.sum() / 255.0, dtype=torch.float64))

    rows, labels = rng.normal(size=(30, 6)).astype(np.float32), rng.integers(0, 3, 30)
    np.savez(tmp_path / "rows.npz", x=rows, y=labels)
    d = load_data(DataConfig("npy", path=str(tmp_path / "rows.npz"), val_size=0))
    assert d.input_shape == (6,) and d.mean is None                   # floats are used as they are
    found = {tuple(r) for r in all_rows(d).tolist()}
    assert found == {tuple(r) for r in rows.tolist()}
    pairs = {(tuple(r), int(c)) for ds in (d.train, d.test) for r, c in zip(ds.x.tolist(), ds.y.tolist())}
    assert pairs == {(tuple(r), int(c)) for r, c in zip(rows.tolist(), labels)}

    np.savez(tmp_path / "hwc.npz", x=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), y=np.array(["cat", "dog"] * 10))
    d = load_data(DataConfig("npy", path=str(tmp_path / "hwc.npz"), val_size=0))
    assert d.input_shape == (3, 8, 8) and set(d.train.y.tolist()) == {0, 1}  # channels last moved first; names numbered


def test_csv_is_standardised_with_the_training_split(tmp_path):
    values, names = table(tmp_path / "t.csv")
    cfg = DataConfig("csv", path=str(tmp_path / "t.csv"), label_column="label", val_size=20)
    d = load_data(cfg)
    assert d.input_shape == (5,) and d.columns == tuple(names) and (len(d.train), len(d.val), len(d.test)) == (160, 20, 20)
    torch.testing.assert_close(d.train.x.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(d.train.x.std(0, correction=0), torch.ones(5), atol=1e-5, rtol=0)
    raw = d.unstandardise(torch.cat([d.train.x, d.val.x, d.test.x])).double()
    order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731  (rows sorted, to compare as sets)
    np.testing.assert_allclose(order(raw.numpy()), order(values), rtol=1e-5, atol=1e-3)
    for ds in (d.train, d.val, d.test):                               # 'a' = 0, 'b' = 1: tall rows are 'b'
        assert torch.equal(ds.y, (d.unstandardise(ds.x)[:, 0] > 170).long())
    again = load_data(cfg)                                             # eval and sample see the same units
    assert torch.equal(again.mean, d.mean) and torch.equal(again.std, d.std) and torch.equal(again.test.x, d.test.x)


def test_csv_without_label_column_keeps_a_numeric_label_column_as_a_feature(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,kind\n" + "".join(f"{i},{i * i},{i % 3}\n" for i in range(30)))
    d = load_data(DataConfig("csv", path=str(path), val_size=0))
    assert d.input_shape == (3,) and d.train.y is None
    d = load_data(DataConfig("csv", path=str(path), val_size=0, label_column="kind"))
    assert d.input_shape == (2,) and d.columns == ("a", "b")
    assert all(torch.equal(ds.y, d.unstandardise(ds.x)[:, 0].round().long() % 3) for ds in (d.train, d.test))


def test_fashion_mnist_is_mnist_s_loader_with_its_own_folder_and_checksums(tmp_path):
    assert SOURCES["fashion-mnist"] is FASHION_MNIST and FASHION_MNIST.folder == "fashion-mnist"
    files = ("train_images", "train_labels", "test_images", "test_labels")
    for f in files:  # the official file names and shapes of MNIST, other bytes
        ours, theirs = getattr(FASHION_MNIST, f), getattr(MNIST, f)
        assert ours.name == theirs.name and ours.shape == theirs.shape and ours.md5 != theirs.md5
    with pytest.raises(DataError) as e:
        load_data(DataConfig("fashion-mnist", data_dir=str(tmp_path)), download=False)
    msg, details = str(e.value), e.value.details
    assert str(tmp_path / "fashion-mnist") in msg and "t10k-images-idx3-ubyte.gz" in details and "fashion-mnist.s3" in details
    # the same reader on small synthetic files in fashion-mnist/ (the real sizes would only cost time)
    small = dataclasses.replace(FASHION_MNIST, **{f: IDXFile(getattr(FASHION_MNIST, f).name, "", s) for f, s in zip(
        files, [(12, 28, 28), (12,), (4, 28, 28), (4,)])})
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for f, shape, payload in zip(files, [(12, 28, 28), (12,), (4, 28, 28), (4,)],
                                 [bytes(12 * 784), bytes(range(10)) + b"\x01\x02", bytes(4 * 784), bytes([9, 8, 7, 6])]):
        write_idx(folder / getattr(small, f).name, payload, shape)
    a = small.load(tmp_path, download=False)
    assert a.train_x.shape == (12, 1, 28, 28) and a.test_y.tolist() == [9, 8, 7, 6] and a.scale == 255.0


# ----------------------------------------------------------------------------- errors

def _write(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


def _bad_image_folder(tmp_path):
    folder = image_folder(tmp_path / "pets", n=4)
    (folder / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    return str(folder)


def _npz_without_x(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((4, 2)))
    return str(tmp_path / "a.npz")


ERRORS = [
    ("folder", lambda t: str(t / "nowhere"), {}, DataError, "nowhere does not exist; pass --path"),
    ("folder", lambda t: (t / "empty").mkdir() or str(t / "empty"), {}, DataError, "holds no .png/.jpg/.jpeg images"),
    ("folder", _bad_image_folder, {}, DataError, r"cannot read image .*broken.png .*remove or replace"),
    ("folder", lambda t: _write(t, "x.csv", "a\n1\n"), {}, DataError, "is a file"),
    ("csv", lambda t: _write(t, "r.csv", "a,b,c\n1,2,3\n4,5\n"), {}, DataError,
     "r.csv line 3 has 2 cells but the header has 3 columns"),
    ("csv", lambda t: _write(t, "n.csv", "a,b\n1,2\n3,4\n5,abc\n"), {}, DataError,
     "n.csv line 4, column 'b': 'abc' is not a number"),
    ("csv", lambda t: _write(t, "e.csv", "a,b\n1,2\n3,\n"), {}, DataError, "line 3, column 'b' is empty"),
    ("csv", lambda t: _write(t, "l.csv", "a,b\n1,2\n3,4\n"), {"label_column": "kind"}, DataError,
     r"label column 'kind' is not in .*l.csv \(its columns: a, b\)"),
    ("csv", lambda t: _write(t, "h.csv", "1,2\n3,4\n"), {}, DataError, "holds only numbers; add a header row"),
    ("npy", _npz_without_x, {}, DataError, r"a.npz has no array 'x' \(it holds images\)"),
    ("npy", lambda t: _write(t, "junk.npy", "not numpy"), {}, DataError, "cannot read .*junk.npy as a NumPy file"),
    ("csv", lambda t: None, {}, ConfigError, "data source 'csv' reads a .csv file: pass --path"),
    ("digits", lambda t: None, {"label_column": "y"}, ConfigError,
     r"label_column \(DataConfig.label_column, --label-column\) does not apply to data source 'digits'; it is for csv"),
]


@pytest.mark.parametrize("source,make,options,error,message", ERRORS)
def test_bad_files_are_one_line_errors_that_say_what_to_do(tmp_path, source, make, options, error, message):
    with pytest.raises(error, match=message) as e:
        load_data(DataConfig(source, path=make(tmp_path), val_size=0, **options))
    assert "\n" not in str(e.value)


def test_config_checks_and_json_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig(data=DataConfig("csv", path="t.csv", label_column="y", test_fraction=0.25))
    assert cfg.data.path == str(tmp_path / "t.csv")                  # absolute: a saved run finds it from anywhere
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad, message in [({"test_fraction": 1.0}, "between 0 and 1"), ({"image_size": 0}, "image_size=0 is impossible")]:
        with pytest.raises(ConfigError, match=message):
            DataConfig("folder", **bad)


def test_a_bernoulli_likelihood_on_a_table_is_refused_before_training(tmp_path):
    table(tmp_path / "t.csv")
    data = DataConfig("csv", path=str(tmp_path / "t.csv"), label_column="label", val_size=0)
    config = RunConfig(ModelConfig(likelihood="bernoulli", hidden_dims=(8,), latent_dim=2), data, TrainConfig(epochs=1))
    with pytest.raises(ConfigError, match=r"bernoulli likelihood models data in \[0, 1\] .*pass --likelihood gaussian-learned"):
        fit(config, tmp_path / "run", progress=False, log=lambda s: None)
    with pytest.raises(ConfigError, match=r"pixels static \(DataConfig.pixels, --pixels\) draws Bernoulli pixels from data in"):
        load_data(dataclasses.replace(data, pixels="static"))


# ----------------------------------------------------------------------------- the command line

def test_an_rgb_image_folder_trains_evaluates_and_samples_from_the_command_line(tmp_path, capsys):
    folder, run = image_folder(tmp_path / "pets"), tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--data", "folder", "--path", str(folder), "--image-size", "32", *TINY]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["input_shape"] == [3, 32, 32] and saved["model"]["likelihood"] == "bernoulli"
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 4 and np.isfinite(result["objective"]) and result["objective"] == pytest.approx(result["recon"] + result["kl"])
    assert main(["sample", str(run), "-n", "6", "--nrow", "3", "--scale", "1", "--out", str(tmp_path / "s.png")]) == 0
    img = Image.open(tmp_path / "s.png")
    assert img.mode == "RGB" and img.size == (3 * 34 + 2, 2 * 34 + 2)  # 32x32 tiles, 2-pixel padding


@pytest.mark.slow
def test_a_csv_table_trains_evaluates_samples_and_plots_from_the_command_line(tmp_path, capsys):
    _, names = table(tmp_path / "t.csv")
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--data", "csv", "--path", str(tmp_path / "t.csv"),
                 "--label-column", "label", *TINY]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["input_shape"] == [5] and saved["model"]["likelihood"] == "gaussian-learned"  # picked for a table
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 20 and np.isfinite(result["objective"])
    assert main(["sample", str(run), "-n", "7", "--out", str(tmp_path / "s.csv")]) == 0
    with open(tmp_path / "s.csv", newline="") as f:
        rows = list(csv.reader(f))
    samples = np.array(rows[1:], dtype=float)
    assert rows[0] == names and samples.shape == (7, 5) and np.isfinite(samples).all()
    assert 100 < samples[:, 0].mean() < 250 and samples[:, 4].mean() < -1000   # in the file's units, not standardised
    capsys.readouterr()
    assert main(["sample", str(run), "--out", str(tmp_path / "s.png")]) == 2
    assert "not images; write its samples as CSV: --out" in capsys.readouterr().err
    assert main(["plot", str(run), "--out", str(tmp_path / "fig")]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["curves.png", "scatter.png"]
    assert out.count("models table rows of 5 columns, not images") == 5  # samples, reconstructions, manifold, ...
    assert main(["report", str(run)]) == 0 and 'id="fig-scatter"' in (run / "report.html").read_text()


@pytest.mark.parametrize("args,message", [
    (["--data", "csv", "--path", "{tmp}/missing.csv"], "missing.csv does not exist"),
    (["--data", "folder", "--path", "{tmp}", "--label-column", "x"],
     "label_column (DataConfig.label_column, --label-column) does not apply to data source 'folder'"),
    (["--data", "csv", "--path", "{tmp}/t.csv", "--label-column", "label", "--likelihood", "bernoulli"], "pass --likelihood gaussian-learned"),
])
def test_data_errors_from_the_command_line_are_one_line(tmp_path, capsys, args, message):
    table(tmp_path / "t.csv")
    assert main(["train", "--run-dir", str(tmp_path / "r"), *[a.format(tmp=tmp_path) for a in args], *TINY]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("vaekit: error:") and len(err.strip().splitlines()) == 1
