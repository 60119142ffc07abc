"""report.html in headless Chromium: it draws without errors or network, its table shows results.json's numbers,
and clicking a point of the trade-off plot shows that point's grid. Screenshots land in the test's tmp_path."""

import json
import re

import pytest

from tests.browser import PageProblems, chromium
from tests.evaluation.test_report import copy_sweep, make_sweep


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    return make_sweep(root / "ddim", sampler="ddim"), make_sweep(root / "dpm", sampler="dpmpp_2m", ws=(0.0, 2.0),
                                                                 seed=1)


def _open(browser, path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = PageProblems(page, allowed_prefixes=("file://", "data:"))
    page.goto(path.as_uri())
    return page, problems


def test_report_page_in_chromium(browser, sweeps, tmp_path):
    from playwright.sync_api import expect

    out = copy_sweep(sweeps[0], tmp_path / "sweep", extra=[{"fid_std": 0.05}, {"fid_std": 0.06}, {"fid_std": 0.07}])
    rows = json.loads((out / "results.json").read_text())["rows"]
    page, problems = _open(browser, out / "report.html")
    points = page.locator("#plot circle.pt")
    expect(points).to_have_count(len(rows))
    # the table's numbers, as shown and as carried, equal results.json's
    for j, row in enumerate(rows):
        tr = page.locator(f"#row-0-{j}")
        assert float(tr.locator('td[data-key="w"]').inner_text()) == row["w"]
        fid_cell = tr.locator('td[data-key="fid"]')
        assert json.loads(fid_cell.get_attribute("data-value")) == row["fid"]
        assert json.loads(fid_cell.get_attribute("data-std")) == row["fid_std"]
        shown, spread = fid_cell.inner_text().split("±")
        assert float(shown) == pytest.approx(row["fid"], abs=5e-4)
        assert float(spread) == pytest.approx(row["fid_std"], abs=5e-4)
        is_cell = tr.locator('td[data-key="inception_score"]')
        assert float(is_cell.inner_text().split("±")[0]) == pytest.approx(row["inception_score"], abs=5e-4)
        assert int(tr.locator('td[data-key="n"]').inner_text()) == row["n"]
    # the plot puts each point where its numbers say: x = IS, y = FID (SVG y grows downwards)
    xs = [float(points.nth(j).get_attribute("cx")) for j in range(len(rows))]
    ys = [float(points.nth(j).get_attribute("cy")) for j in range(len(rows))]
    order = sorted(range(len(rows)), key=lambda j: rows[j]["w"])
    by_is = sorted(order, key=lambda j: rows[j]["inception_score"])
    assert sorted(range(len(rows)), key=lambda j: xs[j]) == by_is
    assert sorted(range(len(rows)), key=lambda j: -ys[j]) == sorted(order, key=lambda j: rows[j]["fid"])
    # clicking a point shows its grid (the same embedded PNG as that w's figure) and marks its table row
    for j in (len(rows) - 1, 0):
        page.locator(f'#plot circle.pt[data-row="{j}"]').click()
        grid_src = page.locator(f"#grid-0-{j} img").get_attribute("src")
        expect(page.locator("#preview-img")).to_have_attribute("src", grid_src)
        expect(page.locator("#preview-caption")).to_contain_text(f"w = {rows[j]['w']:g}")
        expect(page.locator(f"#row-0-{j}")).to_have_class(re.compile(r"\bpinned\b"))
    assert grid_src.startswith("data:image/png;base64,")
    # hovering another point previews it; leaving returns to the clicked one
    page.locator('#plot circle.pt[data-row="1"]').hover()
    expect(page.locator("#preview-img")).to_have_attribute("src", page.locator("#grid-0-1 img").get_attribute("src"))
    page.mouse.move(2, 2)
    expect(page.locator("#preview-img")).to_have_attribute("src", grid_src)
    # any numeric column can be an axis: w on x puts the points in w order
    page.select_option("#x-axis", "w")
    xs = [float(page.locator(f'#plot circle.pt[data-row="{j}"]').get_attribute("cx")) for j in order]
    assert xs == sorted(xs)
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 0
    assert problems.errors == [] and problems.outside == []
    page.close()


def test_several_sweeps_on_one_plot_in_chromium(browser, sweeps, tmp_path):
    from playwright.sync_api import expect

    from cfgdiff.evaluation.report import write_report

    path = write_report(list(sweeps), tmp_path / "page.html")
    page, problems = _open(browser, path)
    expect(page.locator('#plot circle.pt[data-sweep="0"]')).to_have_count(3)
    expect(page.locator('#plot circle.pt[data-sweep="1"]')).to_have_count(2)
    expect(page.locator("#plot polyline.curve")).to_have_count(2)
    expect(page.locator("#legend")).to_contain_text("sampler dpmpp_2m")
    page.locator('#plot circle.pt[data-sweep="1"][data-row="1"]').click()
    src = page.locator("#grid-1-1 img").get_attribute("src")
    expect(page.locator("#preview-img")).to_have_attribute("src", src)
    expect(page.locator("#preview-caption")).to_contain_text("sampler dpmpp_2m · w = 2")
    # clicking a grid figure pins that point too
    page.locator("#grid-0-2").click()
    expect(page.locator('#plot circle.pt[data-sweep="0"][data-row="2"]')).to_have_class(re.compile(r"\bpinned\b"))
    page.screenshot(path=str(tmp_path / "several.png"), full_page=True)
    assert problems.errors == [] and problems.outside == []
    page.close()


def test_precision_against_recall_plot_in_chromium(browser, sweeps, tmp_path):
    """Rows with precision and recall get a second plot: x = recall, y = precision, a point per w, a curve per
    sweep; clicking one of its points pins that row as on the trade-off plot."""
    from playwright.sync_api import expect

    from cfgdiff.evaluation.report import write_report

    def pr(count, offset):
        return [{"precision": 0.6 + 0.1 * j - offset, "precision_std": 0.01, "recall": 0.9 - 0.2 * j - offset,
                 "recall_std": 0.02} for j in range(count)]

    first = copy_sweep(sweeps[0], tmp_path / "a", extra=pr(3, 0.0))
    second = copy_sweep(sweeps[1], tmp_path / "b", extra=pr(2, 0.15))
    path = write_report([first, second], tmp_path / "page.html")
    page, problems = _open(browser, path)
    expect(page.locator('#pr-plot circle.pt[data-sweep="0"]')).to_have_count(3)
    expect(page.locator('#pr-plot circle.pt[data-sweep="1"]')).to_have_count(2)
    expect(page.locator("#pr-plot polyline.curve")).to_have_count(2)
    xs = [float(page.locator(f'#pr-plot circle.pt[data-sweep="0"][data-row="{j}"]').get_attribute("cx"))
          for j in range(3)]
    ys = [float(page.locator(f'#pr-plot circle.pt[data-sweep="0"][data-row="{j}"]').get_attribute("cy"))
          for j in range(3)]
    assert xs == sorted(xs, reverse=True) and ys == sorted(ys, reverse=True)  # recall falls, precision rises
    page.locator('#pr-plot circle.pt[data-sweep="0"][data-row="1"]').click()
    expect(page.locator("#row-0-1")).to_have_class(re.compile(r"\bpinned\b"))
    expect(page.locator('#plot circle.pt[data-sweep="0"][data-row="1"]')).to_have_class(re.compile(r"\bpinned\b"))
    assert problems.errors == [] and problems.outside == []
    page.close()


def test_no_precision_recall_plot_without_those_columns(browser, sweeps):
    page, problems = _open(browser, sweeps[0] / "report.html")
    assert page.locator("#pr-plot").count() == 0 and page.locator("#plot circle.pt").count() == 3
    assert problems.errors == []
    page.close()
