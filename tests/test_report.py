"""RUN/report.html: written by `vaekit train`, `vaekit report` and the demo; self-contained; and
rendered by a real browser (headless Chromium) with every image loaded and the metrics table there."""

import base64
import html
import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaekit import plots, write_report
from vaekit.cli.main import main
from vaekit.outputs.demo import run_demo

CHROMIUM = Path("/usr/bin/chromium")
TINY = ["--data", "digits", "--val-size", "100", "--hidden", "32", "--epochs", "2", "--precision", "fp32", "--no-progress"]
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="(\w+)"')


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`vaekit train` runs with latent_dim 1 and 2: each writes its report at the end."""
    root = tmp_path_factory.mktemp("runs")
    for d in (1, 2):
        assert main(["train", "--run-dir", str(root / f"vae{d}"), "--latent-dim", str(d), *TINY]) == 0
    return root


def embedded_pngs(page: str) -> dict[str, Image.Image]:
    return {kind: Image.open(io.BytesIO(base64.b64decode(data))) for data, kind in DATA_URI.findall(page)}


@pytest.mark.slow
@pytest.mark.parametrize("latent_dim", [1, 2])
def test_train_writes_a_self_contained_report_with_every_figure_that_applies(trained, latent_dim):
    run = trained / f"vae{latent_dim}"
    page = (run / "report.html").read_text()
    images = embedded_pngs(page)
    expected = set(plots.KINDS) - ({"manifold"} if latent_dim == 1 else set())
    assert set(images) == expected and page.count("<img ") == len(expected)
    for img in images.values():
        img.verify()
    if latent_dim == 1:
        assert "<b>manifold</b>: a 2-D manifold needs latent_dim &gt;= 2" in page
    # nothing to fetch: no external scripts, styles, fonts or images
    assert not re.search(r"(src|href)=\"(?!data:)|<link|<script|@import|url\(", page)
    # the metrics table holds the last epoch of metrics.jsonl
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    table = re.search(r'<table id="metrics">(.*?)</table>', page).group(1)
    assert [html.unescape(r) for r in re.findall(r"<tr><td>([^<]+)</td>", table)] == \
        ["train (mean over the last epoch)", "validation", "test (297 examples)"]
    assert f">{last['val_loss']:.2f}<" in table and f">{last['train_kl']:.2f}<" in table
    assert '<table id="config">' in page and "<td>latent_dim</td><td>" + str(latent_dim) in page


@pytest.mark.slow
def test_report_command_and_no_report_flag(trained, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(trained / "vae2"), "--out", str(out), "--dpi", "50"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"wrote {out}")
    assert {k: im.size for k, im in embedded_pngs(out.read_text()).items()}["samples"] == (300, 330)
    assert main(["train", "--run-dir", str(tmp_path / "quiet"), "--no-report", *TINY]) == 0
    assert not (tmp_path / "quiet" / "report.html").exists()
    epochs = TINY[TINY.index("--epochs") + 1]
    # a resume keeps the run's --no-report (it used to write the report), unless it says --report
    assert main(["train", "--resume", str(tmp_path / "quiet"), "--epochs", str(int(epochs) + 1)]) == 0
    assert not (tmp_path / "quiet" / "report.html").exists()
    assert main(["train", "--resume", str(tmp_path / "quiet"), "--epochs", str(int(epochs) + 2), "--report"]) == 0
    assert (tmp_path / "quiet" / "report.html").exists()


@pytest.mark.slow
def test_the_report_embeds_exactly_the_figures_it_can_also_save(trained, tmp_path):
    out = write_report(trained / "vae1", tmp_path / "r.html", figures_dir=tmp_path / "figs", log=None)
    embedded = {kind: base64.b64decode(data) for data, kind in DATA_URI.findall(out.read_text())}
    assert {p.name for p in (tmp_path / "figs").iterdir()} == {f"{k}.png" for k in embedded}
    assert all((tmp_path / "figs" / f"{k}.png").read_bytes() == png for k, png in embedded.items())


@pytest.mark.slow
def test_the_demo_writes_the_figures_and_the_report(tmp_path):
    run_demo(tmp_path / "demo", epochs=1, source="digits", device="cpu", progress=False, log=lambda s: None)
    assert {p.name for p in (tmp_path / "demo" / "figures").iterdir()} == {f"{k}.png" for k in plots.KINDS}
    assert len(embedded_pngs((tmp_path / "demo" / "report.html").read_text())) == len(plots.KINDS)


# Appended to a copy of the report: once the page has loaded, write what the browser saw into the DOM.
PROBE = """<script>
window.addEventListener("load", () => {
  const seen = {widths: [...document.images].map(i => i.naturalWidth),
                metrics: !!document.querySelector("table#metrics"),
                metric_rows: document.querySelectorAll("table#metrics tbody tr").length};
  const out = document.createElement("pre"); out.id = "probe"; out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});
</script>"""


def chromium(*args, user_data_dir: Path) -> subprocess.CompletedProcess:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={user_data_dir}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (.ci/run installs Debian's chromium)")
def test_the_report_renders_in_headless_chromium(trained, tmp_path):
    report = trained / "vae2" / "report.html"
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    r = chromium("--dump-dom", "--virtual-time-budget=5000", probed.as_uri(), user_data_dir=tmp_path / "profile1")
    found = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout)
    assert found, f"no probe output from chromium (rc {r.returncode}): {r.stderr[-2000:]}"
    seen = json.loads(html.unescape(found.group(1)))
    assert len(seen["widths"]) == len(plots.KINDS) and all(w > 0 for w in seen["widths"]), seen
    assert sorted(seen["widths"]) == sorted(im.size[0] for im in embedded_pngs(report.read_text()).values())
    assert seen["metrics"] and seen["metric_rows"] == 3
    shot = tmp_path / "report.png"
    r = chromium(f"--screenshot={shot}", "--window-size=1200,3000", "--hide-scrollbars", report.as_uri(),
                 user_data_dir=tmp_path / "profile2")
    assert shot.is_file(), f"no screenshot (rc {r.returncode}): {r.stderr[-2000:]}"
    with Image.open(shot) as img:
        assert img.size == (1200, 3000)
        assert len(np.unique(np.asarray(img.convert("L")))) > 16   # a rendered page, not a blank one
