"""`vaekit explore`: the JSON API over HTTP for every registered model (what it decodes is the
decoder's answer for that z), its 4xx answers to bad requests while it goes on serving, the
command's one-line errors and a clean Ctrl-C, and the page in headless Chromium (Playwright)."""

import base64
import http.client
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit import MODELS, ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, explore_server, fit, load_data
from vaekit.explore.server import MAX_BODY
from vaekit.explore.views import MAX_BATCH, MAX_STEPS
from vaekit.outputs.images import to_uint8
from vaekit.outputs.plots.decoded import slerp

DATA = DataConfig("digits", val_size=100)
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """A tiny run of every registered model on the bundled 8x8 digits (latent_dim 2), a VAE with latent_dim 4
    (the plane shows two of its dimensions; trained until its codes spread out enough to click one) and one
    with latent_dim 1."""
    root, data = tmp_path_factory.mktemp("explore"), load_data(DATA)
    wanted = {name: (name, 2) for name in MODELS} | {"vae4": ("vae", 4), "vae1": ("vae", 1)}
    dirs = {}
    for key, (model, latent_dim) in wanted.items():
        upper = {"upper_latent_dims": (2,), "upper_hidden_dims": (16,)} if model == "hvae" else {}
        config = RunConfig(ModelConfig(model=model, latent_dim=latent_dim, hidden_dims=(32,), **upper), DATA,
                           TrainConfig(loss=MODELS[model].default_loss, epochs=30 if key == "vae4" else 2, batch_size=64, precision="fp32",
                                       **({"prior_epochs": 2} if MODELS[model].discrete else {})))
        dirs[key] = fit(config, root / key, data=data, progress=False, log=lambda s: None).run_dir
    return dirs


class Client:
    """The explorer served from a thread of this process, and requests to it."""

    def __init__(self, *runs):
        self.server = explore_server(*runs, port=0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = self.server.url

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def raw(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path.lstrip("/"), body, headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def post(self, path: str, **body) -> tuple[int, dict]:
        return self.raw("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def ok(self, path: str, **body) -> dict:
        status, answer = self.post(path, **body)
        assert status == 200, answer
        return answer

    def info(self) -> dict:
        status, answer = self.raw("GET", "/api/info")
        assert status == 200
        return answer


@pytest.fixture(scope="module")
def clients(run_dirs):
    made = {}

    def client(*keys) -> Client:
        if keys not in made:
            made[keys] = Client(*(run_dirs[k] for k in keys))
        return made[keys]

    yield client
    for c in made.values():
        c.close()


def pixels(uri: str) -> np.ndarray:
    """A PNG data URI -> its (H, W) grey pixels."""
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as img:
        return np.asarray(img.convert("L"))


def decoded(server, z: torch.Tensor, label=None) -> np.ndarray:
    """What the run's decoder gives for z (N, D), as uint8 pixels (N, H, W): computed here, not by the explorer."""
    model = server.views[0].model
    with torch.no_grad():
        x = (model.given(label) if label is not None else model).decode(z).mean
    return to_uint8(x)[..., 0]


CONTINUOUS = [m for m in MODELS if not MODELS[m].discrete]


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
def test_info_describes_each_model(clients, model):
    info = clients(model).info()
    run = info["runs"][0]
    assert run["model"] == model and run["n_test"] > 100 and run["image_shape"] == [1, 8, 8]
    assert run["num_classes"] == 10 and run["class_names"] == [str(k) for k in range(10)]
    assert run["conditional"] == MODELS[model].conditional and run["discrete"] == MODELS[model].discrete
    if run["discrete"]:
        assert math.prod(run["code_grid"]) == run["code_positions"] == 2
    else:
        assert sorted(run["order"]) == list(range(run["latent_dim"])) and len(run["usage"]) == run["latent_dim"]
        usage = [run["usage"][i] for i in run["order"]]
        assert usage == sorted(usage, reverse=True) and run["extent"] >= 5


@pytest.mark.parametrize("model", CONTINUOUS)
def test_decode_answers_the_decoders_mean_for_that_z(clients, model):
    c = clients(model)
    z = torch.tensor([[0.0, 0.0], [1.5, -2.0], [-4.0, 3.0]])
    label = 3 if MODELS[model].conditional else None
    body = {"z": z.tolist(), **({"label": label} if label is not None else {})}
    got = np.stack([pixels(u) for u in c.ok("/api/decode", **body)["images"]])
    np.testing.assert_array_equal(got, decoded(c.server, z, label))
    assert len({g.tobytes() for g in got}) == 3   # different z, different images


@pytest.mark.parametrize("model", CONTINUOUS)
def test_points_are_the_test_sets_posterior_means(clients, model):
    c = clients(model)
    view = c.server.views[0]
    p = c.ok("/api/points", dims=[1, 0])
    idx = torch.tensor(p["index"])
    assert len(idx) == view.n_test   # fewer than MAX_POINTS: every test image
    test = view.run.test
    with torch.no_grad():
        q = view.model.given(test.y[idx]).encode(test.take(idx))
        mu = view.model.shown(q.mode)
    np.testing.assert_allclose(p["x"], mu[:, 1], atol=1e-4)
    np.testing.assert_allclose(p["y"], mu[:, 0], atol=1e-4)
    assert p["label"] == test.y[idx].tolist()


def test_a_large_test_set_shows_a_fixed_subset_on_the_plane(run_dirs):
    from vaekit.explore.views import RunView
    from vaekit.outputs.plots import open_run

    view = RunView(open_run(run_dirs["vae"]), max_points=50)
    p = view.points([0, 1])
    assert len(p["index"]) == 50 == len(set(p["index"])) and p["index"] == sorted(p["index"])
    assert RunView(open_run(run_dirs["vae"]), max_points=50).points([0, 1]) == p


@pytest.mark.parametrize("model", CONTINUOUS)
def test_the_interpolation_strip_runs_from_a_to_b_on_the_line_and_the_great_circle(clients, model):
    c = clients(model)
    view = c.server.views[0]
    a, b, steps = 3, 17, 7
    label = 2 if MODELS[model].conditional else None
    strip = c.ok("/api/interpolate", a=a, b=b, steps=steps, **({"label": label} if label is not None else {}))
    za, zb = view.mu[a], view.mu[b]
    t = torch.linspace(0, 1, steps)
    line = np.stack([pixels(u) for u in strip["line"]])
    circle = np.stack([pixels(u) for u in strip["circle"]])
    np.testing.assert_array_equal(line, decoded(c.server, za + t[:, None] * (zb - za), label))
    # the great circle: the angle to za grows evenly from 0 to the angle between za and zb; the norm is interpolated
    path = slerp(za, zb, t)
    angle = torch.arccos((path @ za / (path.norm(dim=1) * za.norm())).clamp(-1, 1))
    omega = torch.arccos((za @ zb / (za.norm() * zb.norm())).clamp(-1, 1))
    torch.testing.assert_close(angle, t * omega, atol=1e-3, rtol=0)
    np.testing.assert_array_equal(circle, decoded(c.server, path, label))
    np.testing.assert_array_equal(line[[0, -1]], circle[[0, -1]])


def test_a_1d_latent_has_a_line_but_no_great_circle(clients):
    c = clients("vae1")
    strip = c.ok("/api/interpolate", a=0, b=1)
    assert len(strip["line"]) == 10 and strip["circle"] is None
    assert len(c.ok("/api/points", dims=[0])["x"]) == c.server.views[0].n_test
    assert c.post("/api/points", dims=[0, 1])[0] == 400


@pytest.mark.parametrize("model", list(MODELS))
def test_samples_follow_the_seed_the_temperature_and_the_class(clients, model):
    c = clients(model)
    kw = {"label": 1} if MODELS[model].conditional else {}
    first = c.ok("/api/samples", n=6, seed=5, **kw)["images"]
    assert len(first) == 6 and pixels(first[0]).shape == (8, 8)
    assert c.ok("/api/samples", n=6, seed=5, **kw)["images"] == first
    assert c.ok("/api/samples", n=6, seed=6, **kw)["images"] != first
    assert c.ok("/api/samples", n=6, seed=5, temperature=0.2, **kw)["images"] != first
    if kw:
        assert c.ok("/api/samples", n=6, seed=5, label=7)["images"] != first


@pytest.mark.parametrize("model", CONTINUOUS)
def test_a_test_image_comes_with_its_code_and_reconstruction(clients, model):
    c = clients(model)
    view = c.server.views[0]
    t = c.ok("/api/test", index=11, **({"label": 4} if MODELS[model].conditional else {}))
    np.testing.assert_allclose(t["z"], view.mu[11], atol=1e-4)
    assert t["label"] == int(view.run.test.y[11])
    np.testing.assert_array_equal(pixels(t["image"]), to_uint8(view.run.test.take(torch.tensor([11])))[0, ..., 0])
    label = 4 if MODELS[model].conditional else None
    np.testing.assert_array_equal(pixels(t["reconstruction"]), decoded(c.server, view.mu[11:12], label)[0])


def test_a_vq_vae_shows_its_codes_and_redraws_one_position(clients):
    c = clients("vqvae")
    view = c.server.views[0]
    t = c.ok("/api/test", index=5)
    codes = t["codes"]
    with torch.no_grad():
        expected = view.model.encode(view.run.test.take(torch.tensor([5]))).indices[0].tolist()
    assert codes == expected
    assert c.ok("/api/codes", codes=[codes])["images"] == [t["reconstruction"]]
    for seed in range(3):
        r = c.ok("/api/redraw", codes=codes, position=1, seed=seed)
        assert r["codes"][0] == codes[0] and r["codes"][1] != codes[1] and 0 <= r["codes"][1] < 128
        assert r["image"] == c.ok("/api/codes", codes=[r["codes"]])["images"][0]
    for path, body in [("/api/decode", {"z": [[0, 0]]}), ("/api/points", {"dims": [0, 1]}), ("/api/interpolate", {"a": 0, "b": 1})]:
        status, answer = c.post(path, **body)
        assert status == 400 and "VQ-VAE" in answer["error"]
    assert c.post("/api/codes", codes=[[0, 128]])[0] == 400
    assert c.post("/api/redraw", codes=codes, position=2)[0] == 400


def bad_requests(c: Client):
    """(what, status, answer) of each bad request; the JSON ones are sent as raw bytes, NaN included."""
    json_type = {"Content-Type": "application/json"}
    raw = [
        ("malformed JSON", "POST", "/api/decode", b'{"z": [[0, 0]', json_type),
        ("not an object", "POST", "/api/decode", b"[1, 2]", json_type),
        ("NaN", "POST", "/api/decode", b'{"z": [[NaN, 0]]}', json_type),
        ("Infinity", "POST", "/api/decode", b'{"z": [[Infinity, 0]]}', json_type),
        ("huge", "POST", "/api/decode", b'{"z": [[1e300, 0]]}', json_type),
        ("wrong latent size", "POST", "/api/decode", b'{"z": [[0, 0, 0]]}', json_type),
        ("flat z", "POST", "/api/decode", b'{"z": [0, 0]}', json_type),
        ("a string in z", "POST", "/api/decode", b'{"z": [["0", 0]]}', json_type),
        ("batch too large", "POST", "/api/decode", json.dumps({"z": [[0, 0]] * (MAX_BATCH + 1)}).encode(), json_type),
        ("no codes", "POST", "/api/decode", b'{"z": []}', json_type),
        ("unknown run", "POST", "/api/decode", b'{"run": 7, "z": [[0, 0]]}', json_type),
        ("run not a number", "POST", "/api/decode", b'{"run": "0", "z": [[0, 0]]}', json_type),
        ("unknown index", "POST", "/api/test", b'{"index": 100000}', json_type),
        ("negative index", "POST", "/api/interpolate", b'{"a": -1, "b": 2}', json_type),
        ("index not an integer", "POST", "/api/test", b'{"index": 1.5}', json_type),
        ("too many steps", "POST", "/api/interpolate", json.dumps({"a": 0, "b": 1, "steps": MAX_STEPS + 1}).encode(), json_type),
        ("too many samples", "POST", "/api/samples", json.dumps({"n": MAX_BATCH + 1}).encode(), json_type),
        ("zero temperature", "POST", "/api/samples", b'{"temperature": 0}', json_type),
        ("a label for an unconditional run", "POST", "/api/samples", b'{"label": 1}', json_type),
        ("the same dimension twice", "POST", "/api/points", b'{"dims": [1, 1]}', json_type),
        ("a dimension beyond latent_dim", "POST", "/api/points", b'{"dims": [0, 2]}', json_type),
        ("unknown field", "POST", "/api/decode", b'{"z": [[0, 0]], "zz": 1}', json_type),
        ("missing field", "POST", "/api/decode", b"{}", json_type),
        ("wrong content type", "POST", "/api/decode", b'{"z": [[0, 0]]}', {"Content-Type": "text/plain"}),
        ("body too large", "POST", "/api/decode", b" " * (MAX_BODY + 1), json_type),
        ("deeply nested", "POST", "/api/decode", b"[" * 100000, json_type),
        ("unknown API", "POST", "/api/delete", b"{}", json_type),
        ("GET on a POST route", "GET", "/api/decode", None, {}),
        ("POST to the info route", "POST", "/api/info", b"{}", json_type),
        ("a file path", "GET", "/../../../etc/passwd", None, {}),
        ("the server's own source", "GET", "/server.py", None, {}),
        ("a static folder listing", "GET", "/static/", None, {}),
        ("a foreign Host", "GET", "/api/info", None, {"Host": "evil.example:80"}),
    ]
    return [(what, *c.raw(method, path, body, headers)) for what, method, path, body, headers in raw]


def test_bad_requests_get_a_4xx_with_a_json_error_and_the_server_serves_on(clients):
    c = clients("vae")
    answers = bad_requests(c)
    for what, status, answer in answers:
        assert 400 <= status < 500, (what, status, answer)
        assert isinstance(answer["error"], str) and "\n" not in answer["error"] and "Traceback" not in answer["error"], what
    by = {what: (status, answer["error"]) for what, status, answer in answers}
    assert by["NaN"] == (400, "z must be a finite number, not nan")
    assert by["body too large"][0] == 413 and by["wrong content type"][0] == 415 and by["unknown API"][0] == 404
    assert by["unknown run"][0] == 404 and by["unknown index"][0] == 404 and by["a foreign Host"][0] == 403
    assert "latent_dim" in by["wrong latent size"][1]
    assert c.info()["runs"][0]["model"] == "vae"
    assert len(c.ok("/api/decode", z=[[0, 0]])["images"]) == 1


def test_a_request_without_content_length_gets_411(clients):
    c = clients("vae")
    host, port = c.server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\r\n")
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 411")
    assert c.info()["runs"]


def _exchange(c: Client, request: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send raw bytes on a new connection; (status, headers, body) of the answer, read until the server closes."""
    with socket.create_connection(c.server.server_address[:2], timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    return int(lines[0].split()[1]), dict(line.split(": ", 1) for line in lines[1:]), body


def _request(method: str, host: str = "127.0.0.1", extra: str = "", body: bytes = b"") -> bytes:
    return f"{method} /api/decode HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode() + body


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_405_json_with_the_security_headers(clients, method):
    """They were answered by http.server's own 501 HTML page, without the security headers."""
    status, headers, body = _exchange(clients("vae"), _request(method, extra="Content-Length: 2\r\n", body=b"{}"))
    assert status == 405 and "takes GET" in json.loads(body)["error"]
    assert headers["Content-Type"] == "application/json" and "default-src 'self'" in headers["Content-Security-Policy"]


@pytest.mark.parametrize("length", ["\u00b2", "1e3", "-1", "12, 12", "1" * 5000])
def test_a_malformed_content_length_is_400(clients, length):
    """'\u00b2' passed str.isdigit and made int() fail: a 500."""
    extra = f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
    status, _, body = _exchange(clients("vae"), _request("POST", extra=extra, body=b"{}").replace(b"\xc2\xb2", b"\xb2"))
    assert status == 400 and "Content-Length" in json.loads(body)["error"]


@pytest.mark.parametrize(("host", "allowed"), [("localhost:8765", True), ("LOCALHOST", True), ("[::1]:80", True),
                                               ("[::1]", True), ("localhost:evil", False), ("localhost.evil.com", False),
                                               ("evil.com@localhost", False), ("127.0.0.1:80:80", False)])
def test_the_host_header_is_parsed_strictly(clients, host, allowed):
    """'localhost:evil' passed the old check (it split at the last colon); '[::1]' was refused."""
    status, _, _ = _exchange(clients("vae"), f"GET /api/info HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    assert status == (200 if allowed else 403)


def test_two_host_headers_are_refused(clients):
    request = b"GET /api/info HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    assert _exchange(clients("vae"), request)[0] == 403


def test_open_connections_are_capped_and_slow_clients_cut_off(run_dirs, monkeypatch):
    """About 1,020 idle connections used to stop the explorer answering anyone, and a client sending a byte every
    few seconds held its connection for good. Now connections beyond the cap are answered 503 at once, and a request
    must arrive whole within REQUEST_SECONDS."""
    from vaekit.explore import server as server_module
    monkeypatch.setattr(server_module, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(server_module, "REQUEST_SECONDS", 1.5)
    c = Client(run_dirs["vae"])
    try:
        idle = [socket.create_connection(c.server.server_address[:2], timeout=10) for _ in range(4)]
        time.sleep(0.3)
        status, headers, body = _exchange(c, b"GET /api/info HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status == 503 and "open connections" in json.loads(body)["error"] and "Content-Security-Policy" in headers
        slow = idle[0]
        for byte in b"GET /api/info HTTP/1.1\r\n":   # a byte every 0.1 s: each read is quick, the whole is not
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        assert slow.recv(100) == b""   # cut off at the deadline
        time.sleep(0.5)                # the idle ones too, and their slots are free again
        assert all(s.recv(100) == b"" for s in idle[1:])
        assert c.info()["runs"][0]["model"] == "vae"
    finally:
        c.close()


def test_a_client_gone_mid_answer_prints_nothing(clients, capfd):
    """socketserver's handle_error printed a 27-line traceback for a client that closed its connection early."""
    server = clients("vae").server
    for error in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "Connection reset by peer"), TimeoutError()):
        try:
            raise error
        except OSError:
            server.handle_error(None, ("127.0.0.1", 5555))
    assert capfd.readouterr().err == ""


def test_the_page_and_its_files_are_served_with_a_strict_content_policy(clients):
    c = clients("vae")
    for path, kind in [("/", "text/html"), ("/explore.js", "text/javascript"), ("/explore.css", "text/css")]:
        with urllib.request.urlopen(c.url + path.lstrip("/"), timeout=10) as r:
            assert r.headers["Content-Type"].startswith(kind) and r.read()
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]


def test_two_runs_side_by_side(clients):
    c = clients("ae", "vae")
    info = c.info()
    assert [r["model"] for r in info["runs"]] == ["ae", "vae"]
    a = c.ok("/api/decode", run=0, z=[[1.0, 1.0]])["images"]
    b = c.ok("/api/decode", run=1, z=[[1.0, 1.0]])["images"]
    assert a != b
    assert c.post("/api/decode", run=2, z=[[1.0, 1.0]])[0] == 404


def test_seeded_samples_stay_the_same_when_two_runs_are_asked_at_once(clients):
    c = clients("ae", "vae")
    reference = [c.ok("/api/samples", run=k, n=8, seed=3)["images"] for k in (0, 1)]
    answers = []

    def ask(k):
        for _ in range(5):
            answers.append((k, c.ok("/api/samples", run=k, n=8, seed=3)["images"]))

    threads = [threading.Thread(target=ask, args=(k % 2,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(answers) == 40 and all(images == reference[k] for k, images in answers)


def test_concurrent_clients_all_get_their_answers(clients):
    c = clients("vae")
    errors, done = [], []

    def client(k):
        for i in range(10):
            status, answer = c.post("/api/decode", z=[[k / 10, i / 10]])
            (done if status == 200 and len(answer["images"]) == 1 else errors).append((k, i, status))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(done) == 200


def test_a_table_run_is_refused_in_one_line():
    from vaekit.explore.views import RunView

    class Table:
        name = "rows"
        config = RunConfig(ModelConfig(input_shape=(5,)), DataConfig("csv"), TrainConfig())

    with pytest.raises(ConfigError, match="table rows"):
        RunView(Table())


# ---- the command
def explore_command(*args, **popen):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # SIGINT at its default in the child: pytest started from a background job would hand it down ignored
    return subprocess.Popen([sys.executable, "-m", "vaekit", "explore", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


@pytest.mark.slow
@pytest.mark.subprocess
def test_ctrl_c_stops_the_command_cleanly(run_dirs):
    p = explore_command(run_dirs["vae"], "--port", "0")
    line = p.stdout.readline()
    found = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
    assert found, (line, p.stderr.read() if p.poll() is not None else "")
    with urllib.request.urlopen(found.group(1) + "api/info", timeout=30) as r:
        assert json.loads(r.read())["runs"][0]["model"] == "vae"
    host, port = found.group(1)[7:-1].split(":")
    browser_like = http.client.HTTPConnection(host, int(port), timeout=30)   # kept alive, as a browser keeps it
    browser_like.request("GET", "/api/info")
    assert browser_like.getresponse().read()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)   # not held by the open connection
    browser_like.close()
    assert p.returncode == 0 and "explorer stopped" in out and "Traceback" not in err, (out, err)


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_busy_port_is_one_line(run_dirs):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        p = explore_command(run_dirs["vae"], "--port", port)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.strip().count("\n") == 0, err
    assert f"port {port} on 127.0.0.1 is in use" in err and "--port" in err


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port 70000 is impossible"),
    (["--host", "10.255.255.254"], "is not an address of this machine"),
])
@pytest.mark.subprocess
def test_bad_flags_are_one_line(run_dirs, args, message):
    p = explore_command(run_dirs["vae"], *args)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and message in err and err.strip().count("\n") == 0, err


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_missing_run_is_one_line(tmp_path):
    p = explore_command(tmp_path / "nothing")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.startswith("vaekit: error:") and err.strip().count("\n") == 0, err


# ---- the page in a real browser
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install 'vaekit[browser]' for the browser tests")
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (.ci/run installs Debian's chromium)")
    return playwright.sync_playwright()


def plane_xy(extent: float, box: dict, u: float, v: float) -> tuple[float, float]:
    """The page coordinates of the point z = (u, v) on a run's plane (as explore.js maps them)."""
    return box["x"] + (u / extent + 1) / 2 * box["width"], box["y"] + (1 - (v / extent + 1) / 2) * box["height"]


def isolated(points: dict, extent: float, pixels_apart: float = 4.0) -> list[int]:
    """Positions in `points` of test points with no other within `pixels_apart` on the 380-pixel plane."""
    xy = torch.tensor([points["x"], points["y"]]).T * (380 / (2 * extent))
    gaps = torch.cdist(xy, xy).fill_diagonal_(float("inf")).min(dim=1).values
    inside = (xy.abs() < 170).all(dim=1)
    return torch.nonzero((gaps > pixels_apart) & inside).flatten().tolist()


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_in_headless_chromium(clients, tmp_path):
    c = clients("cvae", "vae4")
    info = c.info()["runs"]
    extent = max(r["extent"] for r in info)
    with browser() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = chromium.new_page(viewport={"width": 1400, "height": 1000})
            problems = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(c.url)
            page.wait_for_selector("body[data-ready='1']", timeout=30000)
            settle = lambda: (page.wait_for_timeout(50), page.wait_for_selector("body[data-pending='0']", timeout=30000))
            # 0. before the first hover, an image with nothing to show is hidden, not a broken-image icon
            visibility = "e => getComputedStyle(e).visibility"
            assert page.get_attribute("#pointer-0", "src") is None
            assert page.eval_on_selector("#pointer-0", visibility) == "hidden"

            # 1. the pointer moves across the plane: the decoded image under it changes, in both runs
            box = page.locator("#plane-0").bounding_box()
            seen = {0: set(), 1: set()}
            for f in (0.2, 0.4, 0.6, 0.8):
                page.mouse.move(box["x"] + f * box["width"], box["y"] + (1 - f) * box["height"])
                settle()
                for k in seen:
                    seen[k].add(page.get_attribute(f"#pointer-{k}", "src"))
            assert all(len(s) == 4 for s in seen.values()), {k: len(s) for k, s in seen.items()}
            assert page.eval_on_selector("#pointer-0", visibility) == "visible"
            # the VAE's plane shows its two dimensions with the highest KL; the pointer's image is the decoder's answer
            i, j = info[1]["order"][:2]
            u, v = (0.8 * 2 - 1) * extent, (0.8 * 2 - 1) * extent
            z = [0.0] * 4
            z[i], z[j] = u, v
            shown = pixels(page.get_attribute("#pointer-1", "src")).astype(int)
            expected = pixels(c.ok("/api/decode", run=1, z=[z])["images"][0]).astype(int)
            assert np.abs(shown - expected).max() <= 1   # the page's pixel-to-z arithmetic may differ in the last bits

            # 2. a slider re-decodes the pinned code
            before = page.get_attribute("#pinned-1", "src")
            slider = page.locator(".slider-1").first
            sbox = slider.bounding_box()
            page.mouse.move(sbox["x"] + sbox["width"] / 2, sbox["y"] + sbox["height"] / 2)
            page.mouse.down()
            page.mouse.move(sbox["x"] + sbox["width"] * 0.95, sbox["y"] + sbox["height"] / 2, steps=5)
            page.mouse.up()
            settle()
            assert float(slider.input_value()) > 1.0
            assert page.get_attribute("#pinned-1", "src") != before

            # 3. two clicks on test points pick images A and B; the strips run between their codes
            points = c.ok("/api/points", run=1, dims=info[1]["order"][:2])
            picks = isolated(points, extent)[:2]   # a click picks the nearest point: none other is near these
            box1 = page.locator("#plane-1").bounding_box()
            for n in picks:
                page.mouse.click(*plane_xy(extent, box1, points["x"][n], points["y"][n]))
                settle()
            a, b = (points["index"][n] for n in picks)
            assert (page.input_value("#index-a"), page.input_value("#index-b")) == (str(a), str(b))
            line = page.locator("#strip-line-1 img")
            assert line.count() == 10 and page.locator("#strip-circle-1 img").count() == 10
            assert page.locator("#strip-line-0 img").count() == 10
            strip = c.ok("/api/interpolate", run=1, a=a, b=b, steps=10)
            assert [line.nth(k).get_attribute("src") for k in range(10)] == strip["line"]

            # 4. the class picker conditions the CVAE's images (and leaves the VAE's as they were)
            samples = lambda k: [page.locator(f"#samples-{k} img").nth(m).get_attribute("src") for m in range(16)]
            before = samples(0), samples(1), page.get_attribute("#pointer-0", "src")
            page.select_option("#class", "7")
            settle()
            after = samples(0), samples(1), page.get_attribute("#pointer-0", "src")
            assert after[0] != before[0] and after[1] == before[1]
            assert after[0] == c.ok("/api/samples", run=0, n=16, seed=0, label=7)["images"]
            page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.3 * box["height"])
            settle()
            assert page.locator("#status").inner_text() == "" and not problems, problems

            # 5. a screenshot that is not blank
            shot = tmp_path / "explore.png"
            page.screenshot(path=str(shot), full_page=True)
            with Image.open(shot) as img:
                grey = np.asarray(img.convert("L"))
            assert grey.shape[1] == 1400 and len(np.unique(grey)) > 32 and grey.std() > 20
        finally:
            chromium.close()


@pytest.mark.slow
@pytest.mark.browser
def test_a_vq_vae_page_redraws_a_code_on_a_click(clients):
    c = clients("vqvae")
    with browser() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = chromium.new_page()
            page.goto(c.url)
            page.wait_for_selector("body[data-ready='1']", timeout=30000)
            page.wait_for_selector("#codes-0 td", timeout=30000)
            cells = page.locator("#codes-0 td")
            assert cells.count() == 2
            before = [cells.nth(m).inner_text() for m in range(2)]
            cells.nth(1).click()
            page.wait_for_selector("#codes-0 td.changed", timeout=30000)
            after = [cells.nth(m).inner_text() for m in range(2)]
            assert after[0] == before[0] and after[1] != before[1]
            assert page.get_attribute("#recon-0", "src") == c.ok("/api/codes", codes=[[int(t) for t in after]])["images"][0]
        finally:
            chromium.close()
