"""report.html: written by every eval sweep, self-contained, tables that say what results.json says, and
``cfgdiff report`` over several sweeps. The browser half (the page drawn in Chromium) is test_report_browser.py."""

import html
import json
import math
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from cfgdiff.evaluation.report import (
    format_value,
    load_sweep_dir,
    render_report,
    sweep_labels,
    table_columns,
    write_report,
)
from cfgdiff.evaluation.report.page import ReportError
from cfgdiff.evaluation.sweep import SweepResult, SweepRow, write_sweep
from tests.helpers import run_cli

META = {"kind": "images", "fid_name": "FID (toy features)", "is_name": "IS (toy classifier)", "reference_count": 100,
        "reference_is": 2.5, "fid_floor": 0.25, "fid_floor_std": 0.02, "fid_floor_definition": "30 real images",
        "command": "cfgdiff eval RUN --w 0,1,3", "run_dir": "RUN"}


def make_sweep(out, *, sampler="ddim", ws=(0.0, 1.0, 3.0), extra=None, title="Toy sweep", seed=0):
    """A hand-made sweep written by evaluation.write_sweep: rows, per-w grids [K, n, C, H, W], results.json.
    (About a second of matplotlib: tests share them through the module fixtures and ``copy_sweep``.)"""
    rng = np.random.default_rng(seed)
    rows = [SweepRow(w=w, fid=1.0 + (w - 1.0) ** 2 + 0.01 * i, inception_score=1.5 + w / 2, inception_score_std=0.1,
                     n=30, steps=4, sampler=sampler, seed=0, guidance="cfg", nfe_per_sample=4.0 if w == 0 else 8.0,
                     classifier_evals_per_sample=0.0, seconds_per_sample=0.001 * (i + 1))
            for i, w in enumerate(ws)]
    grids = {w: rng.uniform(-1, 1, size=(3, 2, 1, 4, 4)).astype(np.float32) for w in ws}
    write_sweep(SweepResult(rows, grids, dict(META)), out, title=title, class_names=["a", "b", "c"])
    return copy_sweep(out, out, extra=extra) if extra else out


def copy_sweep(src, dst, *, extra=None, title=None):
    """A copy of sweep ``src`` at ``dst`` with fields added to its rows (``extra``: one dict per row) or another
    title, its report.html rewritten."""
    if dst != src:
        shutil.copytree(src, dst)
    data = json.loads((dst / "results.json").read_text())
    for row, values in zip(data["rows"], extra or [{}] * len(data["rows"]), strict=True):
        row.update(values)  # fields a later evaluation may add: the page must show them without an edit
    if title is not None:
        data["title"] = title
    (dst / "results.json").write_text(json.dumps(data))
    write_report([dst], dst / "report.html")
    return dst


@pytest.fixture(scope="module")
def sweep_ddim(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("sweeps") / "ddim", sampler="ddim")


@pytest.fixture(scope="module")
def sweep_dpm(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("sweeps") / "dpm", sampler="dpmpp_2m", ws=(0.0, 2.0), seed=1)


def cells(page: str, table: int = 0) -> list[dict[str, str]]:
    """Per row of table ``table``: data-key -> data-value (raw JSON) from the page's HTML."""
    body = page.split(f'id="table-{table}"', 1)[1].split("</table>", 1)[0]
    out = []
    for row in re.findall(r'<tr class="row[^"]*"[^>]*>(.*?)</tr>', body):
        out.append({k: html.unescape(v) for k, v in re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', row)})
    return out


def test_eval_output_gets_a_self_contained_report(sweep_ddim):
    out = sweep_ddim
    page = (out / "report.html").read_text()
    data = json.loads((out / "results.json").read_text())
    # images embedded, nothing fetched: no http(s) URL in any src/href, and a CSP that forbids the network
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "default-src 'none'" in page and "img-src data:" in page
    assert page.count('src="data:image/png;base64,') == 3  # one grid per w
    for name in ("grids/w_0.png", "grids/w_1.png", "grids/w_3.png"):
        assert (out / name).is_file()
    # the run and the command
    assert html.escape(META["command"]) in page and "RUN" in page
    # the table's raw values are results.json's, exactly
    for row, json_row in zip(cells(page), data["rows"], strict=True):
        for key in ("w", "fid", "inception_score", "n", "steps", "nfe_per_sample"):
            assert json.loads(row[key]) == json_row[key]
    # the embedded data the plot is drawn from is results.json's rows
    embedded = json.loads(re.search(r'id="cfgdiff-data">(.*?)</script>', page, re.S).group(1))
    assert embedded["sweeps"][0]["rows"] == data["rows"]
    assert embedded["default_x"] == "inception_score" and embedded["default_y"] == "fid"


def test_unknown_and_spread_columns_are_shown_generically(sweep_ddim, tmp_path):
    extra = [{"fid_std": 0.05, "fid_test": 2.0, "memorisation": 0.125, "note": "x"},
             {"fid_std": 0.07, "fid_test": 2.5, "memorisation": 0.25, "note": "y"},
             {"fid_std": float("nan"), "fid_test": 3.0, "memorisation": 0.5, "note": "z"}]
    out = copy_sweep(sweep_ddim, tmp_path / "sweep", extra=extra)
    page = (out / "report.html").read_text()
    columns = table_columns(json.loads((out / "results.json").read_text())["rows"], META)
    keys = [c.key for c in columns]
    assert keys[:3] == ["w", "fid", "fid_test"] and keys.index("inception_score") < keys.index("n")
    assert "fid_std" not in keys and "inception_score_std" not in keys  # folded into their metric's cell
    fid = next(c for c in columns if c.key == "fid")
    assert fid.std_key == "fid_std" and fid.header == "FID (toy features)"
    assert {"fid_test", "memorisation", "note"} <= set(keys)
    assert "FID (toy features), vs test split" in page and ">memorisation<" in page
    assert "± 0.050" in page  # fid ± fid_std
    rows = cells(page)
    assert [json.loads(r["memorisation"]) for r in rows] == [0.125, 0.25, 0.5]
    # non-finite numbers become null in the page (JSON has no NaN), and the axis list offers the new columns
    embedded = json.loads(re.search(r'id="cfgdiff-data">(.*?)</script>', page, re.S).group(1))
    assert embedded["sweeps"][0]["rows"][2]["fid_std"] is None
    axes = {a["key"]: a for a in embedded["axes"]}
    assert axes["fid"]["std_key"] == "fid_std" and "memorisation" in axes and "seed" not in axes


@pytest.mark.parametrize(("key", "value", "text"), [
    ("fid", 1.23456, "1.235"), ("w", 0.1, "0.1"), ("n", 2000, "2000"), ("seconds_per_sample", 0.0123, "12.30"),
    ("nfe_per_sample", 20.0, "20"), ("memorisation", 0.000123456, "0.0001235"), ("fid", float("nan"), "nan"),
    ("note", None, "–"), ("flag", True, "yes"), ("params", {"phi": 0.7}, '{"phi":0.7}'),
    ("term_prob", {"3:+1": 0.93125, "8:-1": None}, "3:+1 0.931, 8:-1 –"),
])
def test_format_value(key, value, text):
    assert format_value(key, value) == text


def test_hostile_text_is_escaped(sweep_ddim, tmp_path):
    out = copy_sweep(sweep_ddim, tmp_path / "sweep", title="</script><script>alert(1)</script> & <b>")
    page = (out / "report.html").read_text()
    assert "<script>alert(1)</script>" not in page
    assert page.count("<script") == 2  # the JSON block and the page's own script
    embedded = json.loads(re.search(r'id="cfgdiff-data">(.*?)</script>', page, re.S).group(1))
    assert embedded["title"].startswith("</script>")  # the JSON carries the text itself, safely encoded


def test_labels_name_what_differs_between_sweeps(sweep_ddim, sweep_dpm, tmp_path):
    a, b = load_sweep_dir(sweep_ddim), load_sweep_dir(sweep_dpm)
    assert sweep_labels([a, b]) == ["sampler ddim", "sampler dpmpp_2m"]
    c = load_sweep_dir(copy_sweep(sweep_ddim, tmp_path / "c"))
    assert sweep_labels([a, c]) == ["ddim", "c"]  # nothing recorded differs: the directory names
    assert sweep_labels([a]) == ["Toy sweep"]


def test_report_command_puts_several_sweeps_on_one_page(capsys, tmp_path, sweep_ddim, sweep_dpm):
    a, b = sweep_ddim, sweep_dpm
    out = tmp_path / "page.html"
    code, stdout, err = run_cli(capsys, ["report", str(a), str(b), "--out", str(out), "--title", "Samplers"])
    assert code == 0, err
    assert str(out) in stdout
    page = out.read_text()
    embedded = json.loads(re.search(r'id="cfgdiff-data">(.*?)</script>', page, re.S).group(1))
    assert [s["label"] for s in embedded["sweeps"]] == ["sampler ddim", "sampler dpmpp_2m"]
    assert [len(s["rows"]) for s in embedded["sweeps"]] == [3, 2]
    assert 'id="table-0"' in page and 'id="table-1"' in page and "<title>Samplers</title>" in page
    assert page.count('src="data:image/png;base64,') == 5
    code, _, err = run_cli(capsys, ["report", str(a), str(b), "--out", str(out), "--labels", "first,second"])
    assert code == 0, err
    assert '"label":"first"' in out.read_text()


@pytest.mark.parametrize(("argv", "needle"), [
    (["NOWHERE", "--out", "OUT/p.html"], "no results.json"),
    (["SWEEP", "--out", "OUT/p.png"], "--out must be an .html path"),
    (["SWEEP", "--out", "OUT/p.html", "--labels", "a,b"], "--labels has 2 names for 1 directories"),
    (["SWEEP", "BROKEN", "--out", "OUT/p.html"], "not readable as JSON"),
    (["SWEEP"], "--out"),
])
def test_report_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, sweep_ddim, argv, needle):
    sweep = sweep_ddim
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text("{not json")
    names = {"NOWHERE": tmp_path / "nowhere", "SWEEP": sweep, "BROKEN": broken}
    argv = [str(names.get(a, a)).replace("OUT", str(tmp_path / "out")) for a in argv]
    code, _, err = run_cli(capsys, ["report", *argv])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("cfgdiff: error:"), err
    assert needle in lines[0]
    assert not (tmp_path / "out").exists()


def test_render_report_refuses_nothing_and_a_bad_results_file(tmp_path):
    with pytest.raises(ReportError, match="no sweeps"):
        render_report([])
    (tmp_path / "results.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ReportError, match="non-empty list of rows"):
        load_sweep_dir(tmp_path)


def test_static_files_ship_as_package_data():
    """The page's CSS and JS are files in the package: pyproject's package-data must include them."""
    from importlib import resources
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["cfgdiff"]
    for package in ("evaluation/report", "serve"):
        files = [p.name for p in resources.files("cfgdiff." + package.replace("/", ".")).joinpath("static").iterdir()]
        assert files
        for name in files:
            rel = f"{package}/static/{name}"
            assert any(Path(rel).match(p) for p in patterns), f"{rel} is not in pyproject's package-data"


def test_nan_rows_still_render(sweep_ddim, tmp_path):
    out = copy_sweep(sweep_ddim, tmp_path / "sweep")
    data = json.loads((out / "results.json").read_text())
    data["rows"][1]["fid"] = math.inf
    (out / "results.json").write_text(json.dumps(data))
    page = write_report([out], tmp_path / "r.html").read_text()
    assert json.loads(cells(page)[1]["fid"]) is None and ">inf<" in page


def test_2d_sweeps_plot_their_own_metrics(tmp_path):
    """Rows of 2-D data carry no FID or IS (None) but a sliced Wasserstein distance and a log-density: those are
    the table's and the plot's, with the SW floor, and samples.png stands in for the grids."""
    rows = [{"w": w, "fid": None, "inception_score": None, "sliced_wasserstein": 0.1 + w / 10,
             "sliced_wasserstein_std": 0.01, "sliced_wasserstein_per_class": [0.1, 0.2, 0.3],
             "log_density": -1.0 + w, "n": 300, "steps": 16, "sampler": "ddim", "guidance": "cfg"} for w in (0.0, 2.0)]
    meta = {"kind": "vectors", "sw_name": "sliced Wasserstein SW_2 to held-out points", "sw_floor": 0.05,
            "sw_floor_std": 0.005, "log_density_name": "mean log p̃_w(x|c)"}
    (tmp_path / "results.json").write_text(json.dumps({"title": "2-D", "meta": meta, "rows": rows}))
    Image.new("RGB", (40, 20), "white").save(tmp_path / "samples.png")
    page = write_report([tmp_path], tmp_path / "report.html").read_text()
    keys = [c.key for c in table_columns(rows, meta)]
    assert "fid" not in keys and "inception_score" not in keys  # None in every row: left out
    assert keys[:3] == ["w", "sliced_wasserstein", "log_density"]
    assert "0.1 / 0.2 / 0.3" in page and "0.050 ± 0.005" in page  # per-class list; the floor ± its spread
    embedded = json.loads(re.search(r'id="cfgdiff-data">(.*?)</script>', page, re.S).group(1))
    assert (embedded["default_x"], embedded["default_y"]) == ("log_density", "sliced_wasserstein")
    assert embedded["sweeps"][0]["floors"] == {"sliced_wasserstein": 0.05}
    assert embedded["sweeps"][0]["best"] == "sliced_wasserstein"
    assert 'class="samples"' in page and 'id="row-0-0"' in page and 'class="row best"' in page
