"""The explorer without a browser: request checking, grids equal to ``generate_samples``'s, NFE counted, the
guidance registry read generically, the HTTP answers (4xx with a message, never a traceback), clean shutdown,
and ``cfgdiff serve`` stopping on SIGINT/SIGTERM. The page in Chromium is test_serve_browser.py."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from cfgdiff.cli import main
from cfgdiff.core.toy import GaussianMixture
from cfgdiff.guidance import cfg
from cfgdiff.sampling.generate import generate_samples
from cfgdiff.serve import Explorer, ExplorerServer, Limits, RequestError
from cfgdiff.serve.explorer import MAX_SEED, W_RANGE, request_as_query
from cfgdiff.serve.images import PAD, to_uint8
from cfgdiff.serve.methods import CFG, Method, registry_methods
from cfgdiff.training import load_model


class ImageMixture:
    """An exact eps_fn over 1×8×8 images: a Gaussian mixture (cfgdiff.core.toy) on the flattened pixels."""

    def __init__(self, mixture: GaussianMixture) -> None:
        self.mixture = mixture
        self.num_classes = mixture.num_classes
        self.data_shape = (1, 8, 8)

    def __call__(self, z, logsnr, labels):
        return self.mixture(z.reshape(z.shape[0], -1), logsnr, labels).reshape(z.shape)


def image_mixture(num_classes: int = 10) -> ImageMixture:
    """Class k: a bright stripe (row k for k < 8, a column after) on a dark ground, std 0.35 per pixel. Unlike
    the few-step digits_run fixture, whose samples saturate at ±1 whatever w is, its grids change with w."""
    means = torch.full((num_classes, 8, 8), -0.5, dtype=torch.float64)
    for k in range(num_classes):
        if k < 8:
            means[k, k, :] = 0.5
        else:
            means[k, :, 2 * (k - 8) + 2] = 0.5
    return ImageMixture(GaussianMixture(means.reshape(num_classes, 64), torch.full((num_classes,), 0.35)))


def _decode(png: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(png)))


@pytest.mark.parametrize(("query", "needle"), [
    ({"w": "1", "classes": "12"}, "class 12 outside [0, 10)"),
    ({"w": "1", "classes": "-1"}, "class -1 outside [0, 10)"),
    ({"w": "1", "classes": "seven"}, "unknown class 'seven'"),
    ({"w": "1", "classes": ""}, "pick at least one class"),
    ({"w": "1", "classes": "3,3"}, "class 3 is given twice"),
    ({"w": "1", "steps": "0"}, "steps must lie in [1, 20], got 0"),
    ({"w": "1", "steps": "21"}, "steps must lie in [1, 20], got 21"),
    ({"w": "1", "steps": "2.5"}, "steps must be an integer"),
    ({"w": "abc"}, "w must be a number, got 'abc'"),
    ({"w": "nan"}, "w must be a finite number"),
    ({"w": "inf"}, "w must be a finite number"),
    ({}, "w is required"),
    ({"w": "1", "n": "5", "classes": "0,1,2,3,4,5,6,7,8,9"},
     "10 classes x 5 samples = 50 samples; this server draws at most 40 per request"),
    ({"w": "1", "n": "0"}, "n (samples per class) must lie in [1, 40]"),
    ({"w": "1", "sampler": "euler"}, "unknown sampler 'euler'"),
    ({"w": "1", "method": "magic"}, "unknown guidance method 'magic'"),
    ({"w": "1", "interval": "2,1"}, "0 <= SIGMA_LO < SIGMA_HI"),
    ({"w": "1", "interval": "1"}, "interval takes SIGMA_LO,SIGMA_HI"),
    ({"w": "1", "seed": "-3"}, "seed must lie in [0, 2^63 - 1], got -3"),
    ({"w": "1", "seed": str(10**29)}, "seed must lie in [0, 2^63 - 1]"),
    ({"w": "1e308"}, "w must lie in [-10, 50]"),
    ({"w": "-11"}, "w must lie in [-10, 50]"),
    ({"w": "1", "v_interp": "2"}, "v_interp must lie in [0, 1]"),
    ({"w": "1", "p.phi": "0.5"}, "method cfg has no parameter 'phi'"),
    ({"w": "1", "bogus": "1"}, "unknown parameter 'bogus'"),
])
def test_bad_requests_are_refused_with_one_line(explorer, query, needle):
    with pytest.raises(RequestError) as info:
        explorer.parse(query)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_a_request_round_trips_and_names_classes(explorer):
    request = explorer.parse({"w": "2.5", "classes": "1,7,3", "n": "2", "sampler": "ancestral", "steps": "4",
                              "seed": "11", "interval": "0.5,inf", "v_interp": "0.2"})
    assert request.classes == (1, 7, 3) and request.n == 2 and request.w == 2.5 and request.seed == 11
    assert request.interval == (0.5, float("inf"))
    assert explorer.parse(request_as_query(request)) == request
    named = Explorer(explorer.eps_fn, data_shape=explorer.data_shape, class_names=[f"d{k}" for k in range(10)])
    assert named.parse({"w": "0", "classes": "d7,1"}).classes == (7, 1)  # class names work as well as indices


def test_grid_is_the_samples_of_generate_with_the_same_seeds(explorer, model):
    """The grid's pixels are generate_samples' images for labels classes x n, class by class, seed by seed."""
    request = explorer.parse({"w": "1.5", "classes": "2,5,9", "n": "3", "sampler": "dpmpp_2m", "steps": "4",
                              "seed": "5"})
    result = explorer.render(request)
    labels = torch.tensor([2, 2, 2, 5, 5, 5, 9, 9, 9])
    x = generate_samples(model, labels, w=1.5, sampler="dpmpp_2m", steps=4, seed=5, clip_x=model.x_bound)
    torch.testing.assert_close(torch.from_numpy(result.x), x, rtol=0, atol=1e-6)
    image = _decode(result.png)  # [3 (8+1) + 1, 3 (8+1) + 1] grey
    assert image.shape == (3 * 9 + PAD, 3 * 9 + PAD)
    expected = to_uint8(x.numpy(), model.x_bound)
    for i in range(9):
        r, c = divmod(i, 3)
        cell = image[PAD + r * 9:PAD + r * 9 + 8, PAD + c * 9:PAD + c * 9 + 8]
        np.testing.assert_array_equal(cell, expected[i, 0])
    assert explorer.render(request).png == result.png  # the same request gives the same grid


def test_moving_w_changes_the_grid_and_only_by_guidance():
    """On an exact image mixture, w = 0 is the conditional model itself and a larger w another grid."""
    eps_fn = image_mixture()
    explorer = Explorer(eps_fn, data_shape=eps_fn.data_shape)
    base = {"classes": "0,3", "n": "4", "sampler": "ddim", "steps": "8", "seed": "2"}
    at_0 = explorer.render(explorer.parse({**base, "w": "0"}))
    at_3 = explorer.render(explorer.parse({**base, "w": "3"}))
    assert at_0.png != at_3.png
    labels = torch.tensor([0] * 4 + [3] * 4)
    for result, w in ((at_0, 0.0), (at_3, 3.0)):
        x = generate_samples(eps_fn, labels, w=w, sampler="ddim", steps=8, seed=2, clip_x=1.0)
        torch.testing.assert_close(torch.from_numpy(result.x), x, rtol=0, atol=1e-6)
    # guidance pushes each class away from the other classes: further from the unconditional mean
    centre = eps_fn.mixture.means.mean(0).float()
    spread = [float((torch.from_numpy(r.x).reshape(8, -1) - centre).norm(dim=1).mean()) for r in (at_0, at_3)]
    assert spread[1] > spread[0]


@pytest.mark.parametrize(("query", "nfe"), [
    ({"w": "0", "sampler": "ddim", "steps": "6"}, 6),  # unguided: one call of B rows per step
    ({"w": "2", "sampler": "ddim", "steps": "6"}, 12),  # guided: one call of 2B rows per step
    ({"w": "2", "sampler": "heun", "steps": "4"}, 2 * (2 * 4 - 1)),  # Heun: 2 steps - 1 evaluations
    ({"w": "2", "sampler": "ddim", "steps": "6", "interval": "1e-9,2e-9"}, 6),  # nowhere inside: unguided
    ({"w": "2", "sampler": "ddim", "steps": "6", "interval": "0,inf"}, 12),  # everywhere inside
])
def test_nfe_is_counted(explorer, query, nfe):
    result = explorer.render(explorer.parse({"classes": "0,1", "n": "2", **query}))
    assert result.nfe_per_sample == nfe
    assert result.to_json(explorer.class_names)["nfe_per_sample"] == nfe


def test_points_of_a_2d_model_are_drawn(gmm_run):
    run_dir, _ = gmm_run
    model = load_model(run_dir)
    explorer = Explorer(model, data_shape=model.data_shape, class_names=model.class_names, x_bound=model.x_bound)
    result = explorer.render(explorer.parse({"w": "3", "n": "20", "steps": "8"}))
    assert result.x.shape == (60, 2)
    image = _decode(result.png)
    assert image.shape[2] == 3 and (image != 255).any()
    assert explorer.info()["is_image"] is False


def test_guidance_registry_is_read_from_signatures():
    def scaled(eps_fn, w, *, factor: float = 2.0, skip: int = 0, mode: str = "a"):
        """CFG at factor × w."""
        return cfg(eps_fn, factor * w)

    def needs_classifier(eps_fn, log_prob_fn, w):
        return eps_fn

    entry = types.SimpleNamespace(guide=scaled, doc="CFG at a scaled weight")
    module = types.SimpleNamespace(GUIDANCE_METHODS={"scaled": entry, "plain": scaled, "classifier": needs_classifier,
                                                     "broken": 3})
    methods = registry_methods(module)
    assert set(methods) == {"scaled", "plain"}  # a method needing a classifier cannot come from a request
    params = {p.name: p for p in methods["scaled"].params}
    assert set(params) == {"factor", "skip"} and params["skip"].integer and not params["factor"].integer
    assert methods["scaled"].doc == "CFG at a scaled weight" and methods["plain"].doc == "CFG at factor × w."
    assert registry_methods(types.SimpleNamespace()) == {}


def test_registry_methods_sample_through_the_explorer(model):
    def scaled(eps_fn, w, *, factor: float = 2.0):
        return cfg(eps_fn, factor * w)

    methods = {"cfg": CFG, **registry_methods(types.SimpleNamespace(GUIDANCE_METHODS={"scaled": scaled}))}
    explorer = Explorer(model, data_shape=model.data_shape, methods=methods)
    assert [m["name"] for m in explorer.info()["methods"]] == ["cfg", "scaled"]
    base = {"classes": "4", "n": "2", "steps": "3", "sampler": "ddim"}
    scaled_grid = explorer.render(explorer.parse({**base, "w": "0.5", "method": "scaled", "p.factor": "3"}))
    plain_grid = explorer.render(explorer.parse({**base, "w": "1.5"}))
    np.testing.assert_array_equal(scaled_grid.x, plain_grid.x)  # factor 3 at w = 0.5 is CFG at w = 1.5
    with pytest.raises(RequestError, match="scaled: factor must be a number"):
        explorer.parse({**base, "w": "1", "method": "scaled", "p.factor": "x"})


def test_a_model_the_page_cannot_draw_is_refused(model):
    with pytest.raises(ValueError, match="images"):
        Explorer(model, data_shape=(3, 4))
    assert isinstance(CFG, Method)


# -- over HTTP --------------------------------------------------------------------------------------------


def _get(url, headers=None, method="GET"):
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


@pytest.fixture()
def server(explorer):
    with ExplorerServer(explorer, port=0) as s:
        yield s


def test_http_routes_and_answers(server):
    status, headers, body = _get(server.url)
    assert status == 200 and b"cfgdiff explorer" in body and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    for name in ("explorer.js", "explorer.css"):
        assert _get(server.url + name)[0] == 200
    status, _, body = _get(server.url + "api/info")
    info = json.loads(body)
    assert status == 200 and info["num_classes"] == 10 and "dpmpp_2m" in info["samplers"]
    assert info["limits"] == {"max_samples": 40, "max_steps": 20, "w": list(W_RANGE), "seed": [0, MAX_SEED]}
    assert info["defaults"]["n"] * len(info["defaults"]["classes"]) <= 40
    status, headers, body = _get(server.url + "api/grid?w=1&classes=0,1&n=2&steps=2")
    grid = json.loads(body)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert grid["image"].startswith("data:image/png;base64,") and grid["w"] == 1 and grid["nfe_per_sample"] == 4
    assert grid["class_names"] == ["0", "1"] and grid["seconds"] > 0


@pytest.mark.parametrize(("path", "status", "needle"), [
    ("api/grid?w=1&classes=99", 400, "class 99 outside [0, 10)"),
    ("api/grid?w=1&steps=0", 400, "steps must lie in [1, 20], got 0"),
    ("api/grid?w=abc", 400, "w must be a number, got 'abc'"),
    ("api/grid?w=1e308", 400, f"w must lie in [{W_RANGE[0]:g}, {W_RANGE[1]:g}]"),
    (f"api/grid?w={W_RANGE[1] + 1:g}", 400, f"w must lie in [{W_RANGE[0]:g}, {W_RANGE[1]:g}]"),
    (f"api/grid?w=1&seed={10**29}", 400, "seed must lie in [0, 2^63 - 1]"),
    (f"api/grid?w=1&seed={MAX_SEED + 1}", 400, "seed must lie in [0, 2^63 - 1]"),
    ("api/grid?w=1&n=8", 400, "80 samples; this server draws at most 40 per request"),
    ("api/grid?w=1&w=2", 400, "parameter 'w' is given twice"),
    ("api/grid?" + "&".join(f"x{i}=1" for i in range(40)), 400, "too many query parameters"),
    ("nowhere", 404, "no such page"),
])
def test_bad_http_requests_get_4xx_and_a_message(server, path, status, needle):
    code, headers, body = _get(server.url + path)
    assert code == status and headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert needle in payload["error"] and "Traceback" not in body.decode()


def test_only_get_and_only_localhost(server):
    code, _, body = _get(server.url + "api/grid?w=1", method="POST")
    assert code == 405 and "GET" in json.loads(body)["error"]
    code, _, body = _get(server.url + "api/info", headers={"Host": "attacker.example:80"})
    assert code == 403 and "localhost" in json.loads(body)["error"]  # DNS rebinding refused
    assert _get(server.url.replace("127.0.0.1", "localhost") + "api/info")[0] == 200


def test_an_unexpected_failure_is_a_500_without_traceback(server, monkeypatch, capsys):
    def boom(request):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(server.explorer, "render", boom)
    code, _, body = _get(server.url + "api/grid?w=1&classes=0&n=1&steps=1")
    assert code == 500
    assert "internal error" in json.loads(body)["error"] and b"secret" not in body and b"Traceback" not in body
    assert "secret internals" in capsys.readouterr().err  # the traceback goes to the server's log


def test_stop_is_clean_and_waits_for_the_grid_in_progress(explorer):
    server = ExplorerServer(explorer, port=0).start()
    port = server.port
    results = {}

    def slow_request():
        results["grid"] = _get(server.url + "api/grid?w=1&classes=0,1,2,3&n=10&steps=20&sampler=heun")

    thread = threading.Thread(target=slow_request)
    thread.start()
    deadline = time.monotonic() + 10
    while not explorer.lock.locked() and time.monotonic() < deadline:
        time.sleep(0.005)
    server.stop()
    assert not explorer.lock.locked()  # the grid in progress finished before stop() returned
    thread.join(10)
    assert results["grid"][0] == 200
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    with socket.socket() as s:  # the port is free again (no listener; closed connections may linger)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    server.stop()  # a second stop is harmless


def test_busy_model_is_a_503(model):
    explorer = Explorer(model, data_shape=model.data_shape, limits=Limits(wait_seconds=0.05))
    with ExplorerServer(explorer, port=0) as server, explorer.lock:
        code, _, body = _get(server.url + "api/grid?w=1&classes=0&n=1&steps=1")
    assert code == 503 and "busy" in json.loads(body)["error"]


# -- the command ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_command_answers_then_stops_on_a_signal(digits_run, signum):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cfgdiff", "serve", str(digits_run), "--port", "0",
                             "--max-samples", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        assert json.loads(_get(url + "api/info")[2])["limits"]["max_samples"] == 20
        assert _get(url + "api/grid?w=1&classes=0&n=2&steps=2")[0] == 200
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "explorer stopped" in out and "Traceback" not in err


@pytest.mark.parametrize(("extra", "needle"), [
    (["--port", "70000"], "--port must lie in [0, 65535]"),
    (["--max-samples", "0"], "--max-samples must be >= 1"),
    (["--port", "BUSY"], "cannot listen on 127.0.0.1:"),
])
def test_serve_bad_input_is_one_line_exit_2(capsys, digits_run, extra, needle):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        extra = [str(busy.getsockname()[1]) if e == "BUSY" else e for e in extra]
        code = main(["serve", str(digits_run), *extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("cfgdiff: error:"), err
    assert needle in lines[0]


def test_serve_missing_run_is_exit_2(capsys, tmp_path):
    assert main(["serve", str(tmp_path / "none"), "--port", str(_free_port())]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_infinite_parameters_travel_as_text(server):
    """σ_hi = inf (guide from the start) is a valid interval; JSON has no infinity, so the answer says "inf"."""
    code, _, body = _get(server.url + "api/grid?w=1&classes=0&n=1&steps=2&interval=0.5,inf")
    assert code == 200 and json.loads(body)["interval"] == [0.5, "inf"]


def test_every_registered_method_draws_or_refuses_cleanly(model):
    """Each method the page offers, with the parameters the page sends by default, at a w it accepts and one it
    may refuse: a grid, or a 400 with one line; never a 500."""
    explorer = Explorer(model, data_shape=model.data_shape, class_names=model.class_names, x_bound=model.x_bound)
    with ExplorerServer(explorer, port=0) as server:
        for method in explorer.info()["methods"]:
            params = "".join(f"&p.{p['name']}={str(p['default']).lower()}" for p in method["params"])
            for w in ("-0.5", "2"):
                code, _, body = _get(f"{server.url}api/grid?w={w}&classes=0,1&n=1&steps=3&sampler=ddim"
                                     f"&method={method['name']}{params}")
                payload = json.loads(body)
                assert code in (200, 400), (method["name"], w, payload)
                assert code == 200 or "\n" not in payload["error"]
                if code == 200:
                    assert payload["method"] == method["name"] and payload["nfe_per_sample"] > 0


def test_latent_models_decode_and_models_without_null_label_stay_at_w_0():
    """A latent model (diffusers' DiT path): the sampler draws [1, 4, 4] latents and ``decode`` makes [1, 8, 8]
    images, as ``ModelSource.sampler_options`` supplies it; without a null label only w = 0 is allowed."""
    decoded = []

    def decode(z):
        decoded.append(z.shape)
        return torch.nn.functional.interpolate(z, scale_factor=2, mode="nearest").clamp(-1, 1)

    latent = image_mixture()
    latent.data_shape = (1, 4, 4)
    latent.mixture = GaussianMixture(latent.mixture.means.reshape(10, 8, 8)[:, ::2, ::2].reshape(10, 16),
                                     latent.mixture.stds[:, :16])
    latent_explorer = Explorer(latent, data_shape=(1, 4, 4), image_shape=(1, 8, 8), x_bound=None,
                               sampler_options=lambda sampler: {"decode": decode}, has_null_label=False)
    result = latent_explorer.render(latent_explorer.parse({"w": "0", "classes": "1,2", "n": "3", "steps": "4"}))
    assert decoded == [(6, 1, 4, 4)] and result.x.shape == (6, 1, 8, 8)
    assert _decode(result.png).shape == (2 * 9 + PAD, 3 * 9 + PAD)
    assert latent_explorer.info()["data_shape"] == [1, 8, 8]
    with pytest.raises(RequestError, match="no null"):
        latent_explorer.parse({"w": "1"})
