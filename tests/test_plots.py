"""Figures from saved runs: every kind for latent_dim 1, 2 and 10, their sizes, their content
(tiles that differ, true labels, KL order), side-by-side comparison, skips and one-line errors."""

import shutil

import pytest
import torch
from PIL import Image

from vaekit import (
    ConfigError,
    DataConfig,
    DiagonalGaussian,
    ModelConfig,
    RunConfig,
    TrainConfig,
    VaekitError,
    fit,
    load_data,
    plots,
)
from vaekit.cli.main import main
from vaekit.outputs.plots.decoded import slerp

LATENT_DIMS = [1, 2, 10]
DATA = DataConfig("digits", val_size=100)
DPI = 100

# (width, height) in pixels at 100 dpi; traversal and interpolate grow by 55 px per row of images
FIXED_SIZES = {"samples": (600, 660), "reconstructions": (900, 210), "manifold": (750, 800), "scatter": (800, 700),
               "curves": (800, 600)}


def expected_size(kind: str, latent_dim: int, opt: plots.PlotOptions) -> tuple[int, int]:
    if kind == "traversal":
        return 900, 140 + 55 * min(latent_dim, opt.max_rows)
    if kind == "interpolate":
        return 900, 150 + 55 * opt.n_pairs * (2 if opt.great_circle and latent_dim > 1 else 1)
    return FIXED_SIZES[kind]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """Tiny runs on the bundled 8x8 digits: a VAE per latent size and a 2-D AE (fp32: fastest at this size)."""
    root = tmp_path_factory.mktemp("runs")
    data = load_data(DATA)
    dirs = {}
    for name, model, latent_dim in [*(("vae", "vae", d) for d in LATENT_DIMS), ("ae", "ae", 2)]:
        config = RunConfig(ModelConfig(model=model, latent_dim=latent_dim, hidden_dims=(32,)), DATA,
                           TrainConfig(loss="elbo" if model == "vae" else "ae", epochs=3, batch_size=64, precision="fp32"))
        result = fit(config, root / f"{name}{latent_dim}", data=data, progress=False, log=lambda s: None)
        dirs[f"{name}{latent_dim}"] = result.run_dir
    return dirs


@pytest.fixture(scope="module")
def runs(run_dirs):
    """The runs opened once (model, test set and posterior codes are loaded on first use and shared)."""
    return {name: plots.open_run(d) for name, d in run_dirs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("latent_dim", LATENT_DIMS)
@pytest.mark.parametrize("kind", list(plots.KINDS))
def test_each_kind_writes_a_png_of_the_expected_size_or_says_why_not(runs, tmp_path, kind, latent_dim):
    run, opt, log = runs[f"vae{latent_dim}"], plots.PlotOptions(), []
    result = plots.plot(run, kind, tmp_path / f"{kind}.png", opt, log=log.append)
    if kind == "manifold" and latent_dim == 1:
        assert isinstance(result, plots.Skipped) and not (tmp_path / f"{kind}.png").exists()
        assert "needs latent_dim >= 2" in result.reason
        assert log == [f"skipped manifold: {result.reason}"] and "\n" not in log[0]
        return
    assert result == tmp_path / f"{kind}.png" and log == [f"wrote {result}"]
    with Image.open(result) as img:
        img.verify()
    with Image.open(result) as img:
        assert img.format == "PNG" and img.size == expected_size(kind, latent_dim, opt)
        assert plots.pixel_size(kind, [run], opt) == img.size


def test_sizes_follow_the_dpi_and_the_rows(runs, tmp_path):
    opt = plots.PlotOptions(dpi=50, great_circle=True, n_pairs=2)
    path = plots.interpolate(runs["vae2"], tmp_path / "i.png", opt, log=None)
    assert Image.open(path).size == (450, round((1.5 + 0.55 * 4) * 50))
    assert plots.samples(runs["vae2"], tmp_path / "s.png", dpi=50, log=None) == tmp_path / "s.png"
    assert Image.open(tmp_path / "s.png").size == (300, 330)


def test_the_manifold_decodes_a_grid_of_different_images_labelled_with_z(runs):
    opt = plots.PlotOptions(resolution=6, z_range=(-3.0, 3.0))
    fig, reason = plots.figure("manifold", [runs["vae2"]], opt)
    assert reason is None
    ax = fig.axes[0]
    grid = torch.from_numpy(ax.images[0].get_array().astype("float32"))      # (6*8, 6*8): 8x8 digits, no padding
    tiles = grid.reshape(6, 8, 6, 8).permute(0, 2, 1, 3).reshape(36, 64)
    assert len({tuple(t.tolist()) for t in tiles}) > 30                       # the decoder output moves with z
    assert (tiles[0] - tiles[-1]).abs().mean() > 5                            # opposite corners: clearly different
    step = 6 / 5
    assert ax.get_xlim() == pytest.approx((-3 - step / 2, 3 + step / 2)) and ax.get_ylim() == pytest.approx(ax.get_xlim())
    assert ax.get_xlabel() == "$z_{0}$" and ax.get_ylabel() == "$z_{1}$"


def test_a_higher_dimensional_manifold_uses_two_dims_and_holds_the_rest_at_zero(runs):
    run = runs["vae10"]
    fig, _ = plots.figure("manifold", [run], plots.PlotOptions(resolution=4, dims=(7, 3)))
    assert fig.axes[0].get_xlabel() == "$z_{7}$" and "other 8 dimensions held at 0" in fig._suptitle.get_text()
    first, second = run.by_usage()[:2]
    fig, _ = plots.figure("manifold", [run], plots.PlotOptions(resolution=4))
    assert fig.axes[0].get_xlabel() == f"$z_{{{first}}}$" and fig.axes[0].get_ylabel() == f"$z_{{{second}}}$"


@pytest.mark.parametrize("name,projection", [("vae1", "pca"), ("vae2", "pca"), ("ae2", "pca"), ("vae10", "pca"),
                                             ("vae10", "dims")])
def test_the_scatter_colours_each_posterior_mean_by_its_true_label(runs, name, projection):
    run = runs[name]
    dims = (4, 2) if projection == "dims" else None
    fig, _ = plots.figure("scatter", [run], plots.PlotOptions(projection=projection, dims=dims))
    ax = fig.axes[0]
    y, mu = run.test.y, run.mu
    classes = sorted(set(y.tolist()))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [str(c) for c in classes]
    assert [c.get_label() for c in ax.collections] == [str(c) for c in classes]
    if run.latent_dim == 2:
        expected = mu
    elif projection == "dims":
        expected = mu[:, [4, 2]]
    else:
        expected = None
    for c, points in zip(classes, ax.collections, strict=True):
        offsets = torch.from_numpy(points.get_offsets().data).float()
        assert len(offsets) == int((y == c).sum())                    # every image of this digit, none other
        if expected is not None:
            torch.testing.assert_close(offsets, expected[y == c])
        elif run.latent_dim == 1:
            torch.testing.assert_close(offsets[:, 0], mu[y == c, 0])  # z along x, the digit (jittered) along y
            assert (offsets[:, 1] - c).abs().max() <= 0.3
    title = fig._suptitle.get_text()
    assert ("PCA of the 10-D means" in title) == (run.latent_dim == 10 and projection == "pca")
    assert ("codes of" in title) == (name == "ae2")


def test_traversal_rows_are_ordered_by_average_kl_per_dimension(runs):
    run = runs["vae10"]
    fig, _ = plots.figure("traversal", [run], plots.PlotOptions(max_rows=6))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    with torch.no_grad():
        q = run.model.encode(run.test.examples())
        kl = DiagonalGaussian(q.mu, q.logvar, event_ndim=0).kl().mean(0)   # (D,)
    order = torch.argsort(kl, descending=True)[:6].tolist()
    assert labels == [f"$z_{{{d}}}$  KL {kl[d]:.2f} nats" for d in order]
    assert "the 6 most used of 10 dimensions" in fig._suptitle.get_text()
    ae, _ = plots.figure("traversal", [runs["ae2"]], plots.PlotOptions())
    assert all(" var " in t.get_text() for t in ae.axes[0].get_yticklabels())
    assert "an AE has no KL" in ae._suptitle.get_text()


def test_the_great_circle_joins_the_two_codes(runs):
    za, zb, t = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 3.0]), torch.linspace(0, 1, 7)
    path = slerp(za, zb, t)
    torch.testing.assert_close(path[0], za)
    torch.testing.assert_close(path[-1], zb)
    torch.testing.assert_close(path.norm(dim=1), torch.full((7,), 3.0))       # on the sphere through both
    torch.testing.assert_close(slerp(za, 2 * za, t), torch.lerp(za, 2 * za, t[:, None]))  # angle 0: the line
    fig, _ = plots.figure("interpolate", [runs["vae2"]], plots.PlotOptions(great_circle=True, n_pairs=2))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["0 → 1  line", "0 → 1  great circle", "2 → 3  line", "2 → 3  great circle"]
    y = runs["vae1"].test.y
    fig, _ = plots.figure("interpolate", [runs["vae1"]], plots.PlotOptions(great_circle=True, pairs=[(5, 9)]))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [f"{int(y[5])} → {int(y[9])}  line"]
    assert "undefined for a 1-D latent" in fig._suptitle.get_text()


@pytest.mark.slow
def test_compare_puts_runs_side_by_side_with_model_latent_dim_and_test_loss(runs, tmp_path):
    ae, vae = runs["ae2"], runs["vae2"]
    result = plots.compare_runs([ae, vae], ["scatter", "strip"], tmp_path / "cmp", log=None)
    assert set(result.written) == {"scatter", "traversal"} and not result.skipped
    assert Image.open(tmp_path / "cmp" / "compare-scatter.png").size == (1600, 730)
    fig, _ = plots.figure("scatter", [ae, vae], plots.PlotOptions())
    titles = [panel._suptitle.get_text() for panel in fig.subfigs]
    assert titles[0].startswith(f"ae2: ae, latent_dim=2, test ae loss {ae.test_metrics['loss']:.2f} (recon only)")
    assert titles[1].startswith(f"vae2: vae, latent_dim=2, test elbo loss {vae.test_metrics['loss']:.2f}\n")
    # a kind that applies to one run only: a panel says why; to none: skipped
    fig, _ = plots.figure("manifold", [runs["vae1"], vae], plots.PlotOptions(resolution=3))
    assert any("not applicable" in t.get_text() for t in fig.subfigs[0].texts)
    result = plots.compare_runs([runs["vae1"], runs["vae1"]], "manifold", tmp_path / "cmp", log=None)
    assert "manifold" in result.skipped and not (tmp_path / "cmp" / "compare-manifold.png").exists()


@pytest.mark.slow
def test_a_figure_that_does_not_apply_is_skipped_with_its_reason(runs, run_dirs, tmp_path):
    log = []
    result = plots.plot_run(run_dirs["vae1"], out=tmp_path / "figs", log=log.append)
    assert set(result.written) == set(plots.KINDS) - {"manifold"} and list(result.skipped) == ["manifold"]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(f"{k}.png" for k in result.written)
    assert sum(line.startswith("skipped manifold: ") for line in log) == 1
    bare = tmp_path / "no-metrics"
    shutil.copytree(run_dirs["vae2"], bare)
    (bare / "metrics.jsonl").unlink()
    assert "no finished epoch" in plots.curves(bare, tmp_path / "c.png", log=None).reason


def test_figures_are_reproducible_and_leave_the_global_rng_alone(runs, tmp_path):
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    plots.samples(runs["vae2"], tmp_path / "a.png", log=None)
    assert torch.equal(torch.rand(3), expected)
    plots.samples(runs["vae2"], tmp_path / "b.png", log=None)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.mark.parametrize("options,message", [
    (dict(z_range=(5, -5)), r"z_range=\(5.0, -5.0\) is impossible \(PlotOptions.z_range, --range\)"),
    (dict(resolution=1), r"resolution=1 is impossible \(PlotOptions.resolution, --resolution\)"),
    (dict(temperature=0), r"temperature=0 is impossible \(PlotOptions.temperature, --temperature\)"),
    (dict(dims=(3, 3)), r"dims=\(3, 3\) is impossible \(PlotOptions.dims, --dims\)"),
    (dict(projection="umap"), r"projection='umap' is impossible \(PlotOptions.projection, --projection\)"),
    (dict(dpi=5), r"dpi=5 is impossible \(PlotOptions.dpi, --dpi\)"),
])
def test_impossible_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        plots.PlotOptions(**options)


@pytest.mark.parametrize("args,message", [
    (["plot", "{vae2}", "--kind", "bogus"], "figure kind 'bogus' is unknown"),
    (["plot", "{tmp}/nowhere"], "does not exist"),
    (["plot", "{vae2}", "--range", "1", "1"], "z_range=(1.0, 1.0) is impossible (PlotOptions.z_range, --range)"),
    (["plot", "{vae10}", "--kind", "manifold", "--dims", "0", "12"], "vae10 has latent_dim=10"),
    (["plot", "{vae2}", "--kind", "interpolate", "--pair", "0", "5000"], "the test set of vae2 has 297 images"),
    (["compare", "{vae2}"], "compare needs at least two runs"),
    (["report", "{vae2}", "--out", "{tmp}"], "is a folder"),
])
def test_bad_input_is_one_line_on_the_command_line(run_dirs, tmp_path, capsys, args, message):
    assert main([a.format(tmp=tmp_path, **run_dirs) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("vaekit: error: ")


@pytest.mark.parametrize("args,message", [
    (["plot", "{vae10}", "--dims", "0", "12"], "vae10 has latent_dim=10"),
    (["plot", "{vae2}", "--pair", "0", "5000"], "the test set of vae2 has 297 images"),
    (["plot", "{vae2}", "--label", "3"], "vae2 is not a conditional model"),
    (["compare", "{vae2}", "{vae10}", "--dims", "0", "3"], "vae2 has latent_dim=2"),
    (["report", "{vae2}", "--pair", "0", "5000", "--out", "{tmp}/out/report.html"], "the test set of vae2 has 297 images"),
])
def test_an_option_that_does_not_fit_the_run_fails_before_any_figure_is_written(run_dirs, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, **run_dirs) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
    assert main([*args, *out]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_plot_and_compare_from_the_command_line(run_dirs, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["plot", str(run_dirs["vae1"]), "--kind", "manifold", "strip", "--out", str(out), "--dpi", "50"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("skipped manifold: ") and printed[1] == f"wrote {out / 'traversal.png'}"
    assert Image.open(out / "traversal.png").size == (450, 98)
    assert main(["compare", str(run_dirs["ae2"]), str(run_dirs["vae2"]), "--kind", "samples", "--out", str(out),
                 "-n", "4"]) == 0
    assert (out / "compare-samples.png").is_file()
    assert main(["plot", str(run_dirs["vae2"])]) == 0                     # default: every kind into RUN/figures
    assert {p.name for p in (run_dirs["vae2"] / "figures").iterdir()} == {f"{k}.png" for k in plots.KINDS}


def test_errors_are_vaekit_errors_in_python_too(run_dirs, tmp_path):
    with pytest.raises(VaekitError, match="unknown"):
        plots.plot(run_dirs["vae2"], "histogram", tmp_path / "x.png")
    with pytest.raises(VaekitError, match="is a folder"):
        plots.samples(run_dirs["vae2"], tmp_path)


def test_the_command_line_help_names_every_kind(capsys):
    with pytest.raises(SystemExit):
        main(["plot", "--help"])
    text = capsys.readouterr().out
    assert all(kind in text for kind in [*plots.KINDS, *plots.ALIASES])
