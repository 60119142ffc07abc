"""Screenshots of the two pages for the README: the report of an eval output and the explorer on a run.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/page_screenshots.py --eval-dir runs/digits/eval/cfg-ancestral-T128 \
        --run runs/digits --out-dir docs/figures

writes docs/figures/report.png (the report's plot with the lowest-FID point's grid, and its table) and
docs/figures/explorer.png (the explorer at --w with DPM-Solver++ at 10 steps). Several --eval-dir give one
report with a curve per sweep (as ``cfgdiff report``). The report is rewritten into a temporary file, so the
eval directories are only read. Needs Playwright for Python and a Chromium (Debian's ``chromium`` package, or
--chromium PATH); no browser is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium(explicit: str | None) -> str:
    for candidate in ([explicit] if explicit else ["chromium", "chromium-browser", "google-chrome"]):
        path = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if path:
            return path
    sys.exit("page_screenshots: no Chromium found (apt-get install chromium, or pass --chromium PATH)")


def report_screenshot(browser, eval_dirs: list[Path], out: Path, *, width: int = 1280, height: int = 1100) -> None:
    """The report page of these eval directories: the plot, the pinned grid and (below) the first table."""
    from cfgdiff.evaluation.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        page_path = write_report(eval_dirs, Path(tmp) / "report.html")
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(page_path.as_uri())
        page.locator("#plot circle.pt").first.wait_for()
        page.locator("#preview-img").wait_for()
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        page.close()


def explorer_screenshot(browser, run_dir: Path, out: Path, *, w: float, sampler: str, steps: int,
                        width: int = 1200, height: int = 820) -> str:
    """The explorer page on this run at weight w; returns the stats line it showed."""
    from playwright.sync_api import expect

    from cfgdiff.serve import Explorer, ExplorerServer
    from cfgdiff.training import load_model

    model = load_model(run_dir)
    explorer = Explorer(model, data_shape=model.data_shape, name=str(run_dir),
                        class_names=getattr(model, "class_names", ()), x_bound=getattr(model, "x_bound", 1.0))
    with ExplorerServer(explorer, port=0) as server:
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(server.url)
        stats = page.locator("#stats")
        expect(stats).to_have_attribute("data-w", "1", timeout=60_000)
        page.locator("#sampler").select_option(sampler)
        page.locator("#steps").fill(str(steps))
        page.locator("#steps").dispatch_event("change")
        page.locator("#w").fill(f"{w:g}")
        expect(stats).to_have_attribute("data-w", f"{w:g}", timeout=60_000)
        expect(stats).to_contain_text(f"{sampler}, {steps} steps", timeout=60_000)
        page.wait_for_timeout(300)  # let the image paint
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        text = stats.inner_text()
        page.close()
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-dir", type=Path, action="append", required=True,
                        help="a cfgdiff eval output directory (repeat for several curves)")
    parser.add_argument("--run", type=Path, required=True, help="the run the explorer serves")
    parser.add_argument("--out-dir", type=Path, default=Path("docs/figures"), help="where the PNGs go")
    parser.add_argument("--w", type=float, default=2.0, help="the explorer's w in the screenshot (default 2)")
    parser.add_argument("--sampler", default="dpmpp_2m", help="the explorer's sampler (default dpmpp_2m)")
    parser.add_argument("--steps", type=int, default=10, help="the explorer's steps (default 10)")
    parser.add_argument("--chromium", default=None, help="the Chromium executable (default: found on the PATH)")
    args = parser.parse_args(argv)

    import torch
    from playwright.sync_api import sync_playwright

    torch.set_num_threads(1)
    executable = _chromium(args.chromium)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
                                             chromium_sandbox=False)
        try:
            report_png = args.out_dir / "report.png"
            report_screenshot(browser, args.eval_dir, report_png)
            print(f"wrote {report_png}")
            explorer_png = args.out_dir / "explorer.png"
            stats = explorer_screenshot(browser, args.run, explorer_png, w=args.w, sampler=args.sampler,
                                        steps=args.steps)
            print(f"wrote {explorer_png} ({stats})")
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
