"""How fast `vaekit explore` answers: the latency of one pointer decode (median, p95) over HTTP with a
kept-alive connection, as the page makes it, and 20 concurrent clients x 50 requests each (all must
succeed). The server is the real command in its own process, on loopback; this process is the client.

    VAEKIT_DATA=../shared/datasets python benchmarks/explore.py                 # trains the runs it needs (~2 min)
    python benchmarks/explore.py --runs runs/vae2 runs/vae50                    # or measures given runs
    python benchmarks/explore.py --screenshot docs/images/explore.png    # also the docs' picture (Playwright)

Writes results/explore.{json,md}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from common import write
from vaekit import DataConfig, ModelConfig, RunConfig, TrainConfig, fit

REQUESTS = 1000           # sequential pointer decodes per run
CLIENTS, EACH = 20, 50    # the concurrent test


def train_runs(root: Path) -> list[Path]:
    """MNIST runs to explore: the notes' 2-D VAE and AE (784-400-2, 5 epochs), and a 784-500-500-50 VAE (1 epoch: the
    decode cost does not depend on how well it is trained)."""
    data = DataConfig("mnist")
    wanted = [("vae2", ModelConfig(model="vae", latent_dim=2), "elbo", 5),
              ("ae2", ModelConfig(model="ae", latent_dim=2), "ae", 5),
              ("vae50", ModelConfig(model="vae", latent_dim=50, hidden_dims=(500, 500)), "elbo", 1)]
    dirs = []
    for name, model, loss, epochs in wanted:
        config = RunConfig(model, data, TrainConfig(loss=loss, epochs=epochs))
        dirs.append(fit(config, root / name, progress=False, log=lambda s: None).run_dir)
    return dirs


def ctrl_c_on() -> None:
    """In the child before it starts: SIGINT at its default, so Python turns it into KeyboardInterrupt (a shell
    starts background jobs with SIGINT ignored, and a child inherits that: `benchmarks/explore.py &` would hang)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Server:
    """`vaekit explore RUN [RUN_B] --port 0` in its own process."""

    def __init__(self, *runs: Path):
        self.p = subprocess.Popen([sys.executable, "-m", "vaekit", "explore", *map(str, runs), "--port", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"},
                                  preexec_fn=ctrl_c_on)
        line = self.p.stdout.readline()
        found = re.search(r"http://(127\.0\.0\.1):(\d+)/", line)
        if not found:
            raise SystemExit(f"the explorer did not start: {line}{self.p.stderr.read()}")
        self.host, self.port = found.group(1), int(found.group(2))
        self.url = f"http://{self.host}:{self.port}/"

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; it must exit within 10 s."""
        self.p.send_signal(signal.SIGINT)
        try:
            out, err = self.p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.send_signal(signal.SIGABRT)   # PYTHONFAULTHANDLER: every thread's stack to stderr
            raise SystemExit(f"the explorer did not stop on Ctrl-C: {self.p.communicate()[1][-6000:]}") from None
        if self.p.returncode != 0 or "explorer stopped" not in out:
            raise SystemExit(f"the explorer ended with {self.p.returncode}: {out} {err[-2000:]}")


def post(conn: http.client.HTTPConnection, path: str, body: dict) -> tuple[int, dict]:
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def pointer_codes(latent_dim: int, n: int, seed: int) -> list[list[float]]:
    """Codes a pointer sweeping [-5, 5]^2 makes (the other dimensions at 0)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.zeros(n, latent_dim)
    z[:, :2] = torch.rand(n, 2, generator=g) * 10 - 5
    return z.tolist()


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def latency(server: Server, latent_dim: int) -> dict:
    conn = server.connection()
    for z in pointer_codes(latent_dim, 20, 1):   # warm-up
        post(conn, "/api/decode", {"z": [z]})
    times = []
    for z in pointer_codes(latent_dim, REQUESTS, 2):
        t0 = time.perf_counter()
        status, answer = post(conn, "/api/decode", {"z": [z]})
        times.append((time.perf_counter() - t0) * 1e3)
        assert status == 200 and len(answer["images"]) == 1, answer
    conn.close()
    return {"median_ms": statistics.median(times), "p95_ms": percentile(times, 95), "p99_ms": percentile(times, 99),
            "max_ms": max(times)}


def concurrent(server: Server, latent_dim: int) -> dict:
    errors, times = [], []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client(k: int) -> None:
        conn = server.connection()
        start.wait()
        for z in pointer_codes(latent_dim, EACH, 100 + k):
            t0 = time.perf_counter()
            try:
                status, answer = post(conn, "/api/decode", {"z": [z]})
                ok = status == 200 and len(answer["images"]) == 1
            except OSError as e:
                ok, answer = False, str(e)
            with lock:
                (times.append((time.perf_counter() - t0) * 1e3) if ok else errors.append(answer))
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    seconds = time.perf_counter() - t0
    return {"clients": CLIENTS, "requests": CLIENTS * EACH, "errors": len(errors), "answered": len(times),
            "seconds": seconds, "requests_per_s": len(times) / seconds, "median_ms_loaded": statistics.median(times),
            "p95_ms_loaded": percentile(times, 95)}


def screenshot(server: Server, out: Path) -> None:
    """The page for two runs side by side: images A and B picked by index, the pointer near the origin."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415  (only for --screenshot)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url)
        page.wait_for_selector("body[data-ready='1']")
        page.fill("#index-a", "3")
        page.dispatch_event("#index-a", "change")
        page.fill("#index-b", "2")
        page.dispatch_event("#index-b", "change")
        box = page.locator("#plane-1").bounding_box()
        for f in (0.3, 0.4, 0.47):
            page.mouse.move(box["x"] + box["width"] * f, box["y"] + box["height"] * (1 - f), steps=3)
        page.wait_for_timeout(300)
        page.wait_for_selector("body[data-pending='0']")
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", type=Path, help="runs to measure (default: train MNIST vae2, ae2, vae50)")
    ap.add_argument("--screenshot", type=Path, help="also save the page for the first two runs (AE beside VAE)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or train_runs(Path(tmp))
        load = os.getloadavg()[0]
        rows = []
        for run in runs:
            latent_dim = json.loads((run / "config.json").read_text())["model"]["latent_dim"]
            server = Server(run)
            try:
                row = {"run": run.name, "latent_dim": latent_dim, **latency(server, latent_dim), **concurrent(server, latent_dim)}
            finally:
                server.stop()
            rows.append(row)
            print(json.dumps(row))
        if args.screenshot:
            by_name = {r.name: r for r in runs}
            pair = [by_name["ae2"], by_name["vae2"]] if {"ae2", "vae2"} <= set(by_name) else runs[:2]
            server = Server(*pair)
            try:
                screenshot(server, args.screenshot)
            finally:
                server.stop()
        load_after = os.getloadavg()[0]
    write("explore", {"requests": REQUESTS, "load_average_before": load, "load_average_after": load_after}, rows,
          ["run", "latent_dim", "median_ms", "p95_ms", "p99_ms", "clients", "requests", "errors", "requests_per_s",
           "median_ms_loaded", "p95_ms_loaded"])
    print(f"load average {load:.2f} before, {load_after:.2f} after")


if __name__ == "__main__":
    main()
