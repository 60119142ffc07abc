"""The explorer in headless Chromium: the page loads from a server the test starts on a free localhost port,
moving the slider changes the image and the shown w, a bad request shows its message (not a traceback), and
the server shuts down cleanly. Screenshots land in the test's tmp_path."""

import json
import re
import socket
import urllib.error
import urllib.request

import pytest

from cfgdiff.serve import Explorer, ExplorerServer, Limits
from cfgdiff.training import load_model
from tests.browser import PageProblems, chromium
from tests.serve.test_serve import image_mixture


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def _status(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_explorer_page_in_chromium(browser, tmp_path):
    from playwright.sync_api import expect

    eps_fn = image_mixture()  # an exact model whose grid visibly changes with w (see tests/serve/test_serve.py)
    explorer = Explorer(eps_fn, data_shape=eps_fn.data_shape, name="stripes", limits=Limits(max_samples=40))
    server = ExplorerServer(explorer, port=0).start()
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        problems = PageProblems(page, allowed_prefixes=(server.url, "data:"))
        page.goto(server.url)
        stats, grid = page.locator("#stats"), page.locator("#grid")
        expect(stats).to_have_attribute("data-w", "1")  # the first grid, at the default w
        expect(stats).to_contain_text("NFE/sample 20")  # dpmpp_2m, 10 guided steps: 10 calls of 2B rows
        expect(stats).to_contain_text("ms per grid")
        expect(page.locator("#row-labels div")).to_have_count(10)  # every class, 4 each within the limit of 40
        expect(stats).to_contain_text("40 samples")
        first = grid.get_attribute("src")
        assert first.startswith("data:image/png;base64,")
        page.screenshot(path=str(tmp_path / "explorer_w1.png"), full_page=True)
        page.locator("#w").fill("4")  # moving the slider (an input event, as a drag sends)
        expect(page.locator("#w-value")).to_have_text("4")
        expect(stats).to_have_attribute("data-w", "4")
        expect(stats).to_contain_text("w = 4")
        expect(grid).not_to_have_attribute("src", first)
        assert grid.get_attribute("data-w") == "4"
        page.locator("#w").fill("0")  # w = 0: the conditional model, one call of B rows per step
        expect(stats).to_have_attribute("data-w", "0")
        expect(stats).to_contain_text("NFE/sample 10")
        page.screenshot(path=str(tmp_path / "explorer_w0.png"), full_page=True)
        assert problems.errors == [] and problems.outside == []
        # a bad value from the page: the server's one-line message is shown, the last good grid stays
        page.locator("#steps").fill("0")
        page.locator("#steps").dispatch_event("change")
        expect(page.locator("#error")).to_have_text("steps must lie in [1, 256], got 0")
        assert "Traceback" not in page.content()
        page.locator("#steps").fill("5")
        page.locator("#steps").dispatch_event("change")
        expect(page.locator("#error")).to_be_hidden()
        expect(stats).to_contain_text("5 steps")
        unexpected = [e for e in problems.errors if not re.search(r"status of 400", e)]
        assert unexpected == [] and problems.outside == []
        page.close()
        # the checks behind the page, as any client sees them
        for query, needle in (("w=1&classes=12", "class 12 outside [0, 10)"), ("w=1&steps=0", "steps must"),
                              ("w=x", "w must be a number"), ("w=1&n=20", "at most 40 per request")):
            status, body = _status(server.url + "api/grid?" + query)
            assert status == 400 and needle in body["error"]
    finally:
        server.stop()
    with pytest.raises(OSError):  # shut down: nothing listens any more
        socket.create_connection(("127.0.0.1", server.port), timeout=1)


def test_explorer_on_a_trained_run_in_chromium(browser, digits_run, tmp_path):
    """The tiny digits_run model, loaded as ``cfgdiff serve`` loads it: the page draws its grid."""
    from playwright.sync_api import expect

    model = load_model(digits_run)
    explorer = Explorer(model, data_shape=model.data_shape, class_names=model.class_names, x_bound=model.x_bound)
    with ExplorerServer(explorer, port=0) as server:
        page = browser.new_page()
        problems = PageProblems(page, allowed_prefixes=(server.url, "data:"))
        page.goto(server.url)
        expect(page.locator("#stats")).to_contain_text("80 samples")
        page.locator("#sampler").select_option("ancestral")
        expect(page.locator("#v-row")).to_be_visible()
        expect(page.locator("#stats")).to_contain_text("ancestral, 10 steps")
        page.locator("#classes-none").click()
        expect(page.locator("#error")).to_have_text("classes: pick at least one class")
        page.locator("#classes input").nth(3).check()
        expect(page.locator("#stats")).to_contain_text("8 samples")
        page.screenshot(path=str(tmp_path / "explorer_digits.png"), full_page=True)
        page.close()
    assert [e for e in problems.errors if "status of 400" not in e] == [] and problems.outside == []
