"""The round page in a real browser: Debian's Chromium, headless, driven by Playwright (its own
browser downloads are never used). No console error, every plot drawn, and no request that
leaves the machine. Also the page of real rounds: ``alloop report`` for the last and a past
round, a round from before pages rendered from its recorded files, and ``alloop status``'s
first line."""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_satimage_workspace, run_cli
from test_report_page import SVG, get_svgs, make_page_data

from tasks.report_page import render_round_page

CHROMIUM = Path("/usr/bin/chromium")
#: a browser that reaches nothing: no sandbox (root in CI), no GPU, no QUIC, no first-run,
#: background, component-update or sync traffic, and a fresh profile each time
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: what the page may load: itself (file://) and inline data
LOCAL = ("file://", "data:")


@dataclass(frozen=True)
class Visit:
    console_errors: list[str]
    page_errors: list[str]
    requests: list[str]
    #: per SVG on the page: its title, drawn size and number of drawn elements
    plots: list[dict]


def _require_browser():
    if not CHROMIUM.exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: `apt-get install chromium` (Debian's package; "
            ".ci/run installs it when it runs as root with apt-get)"
        )
    return pytest.importorskip("playwright.sync_api", reason="playwright (dev group) missing")


def visit(path: Path) -> Visit:
    """Open ``path`` in headless Chromium; what the console said and the page fetched."""
    sync_api = _require_browser()
    console_errors: list[str] = []
    page_errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,  # --user-data-dir: a fresh profile
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(FLAGS),
            offline=True,
        )
        try:
            page = context.new_page()
            page.on(
                "console", lambda m: console_errors.append(m.text) if m.type == "error" else None
            )
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.resolve().as_uri(), wait_until="load")
            plots = page.evaluate(
                """() => Array.from(document.querySelectorAll('svg')).map(s => {
                    const box = s.getBoundingClientRect();
                    return {title: s.querySelector('title')?.textContent ?? '',
                            width: box.width, height: box.height,
                            drawn: s.querySelectorAll(
                                'path,rect,circle,polygon,line,text').length};
                })"""
            )
        finally:
            context.close()
    return Visit(console_errors, page_errors, requests, plots)


def assert_clean(result: Visit, expected_plots: int) -> None:
    assert result.console_errors == [] and result.page_errors == []
    assert result.requests and all(url.startswith(LOCAL) for url in result.requests), (
        result.requests
    )
    assert len(result.plots) == expected_plots, result.plots
    for plot in result.plots:
        assert plot["width"] > 100 and plot["height"] > 50 and plot["drawn"] > 5, plot


def test_the_full_page_in_a_browser(tmp_path):
    path = tmp_path / "round.html"
    path.write_text(render_round_page(make_page_data()))
    assert_clean(visit(path), expected_plots=7)


def test_a_first_round_page_in_a_browser(tmp_path):
    from tasks.report_page import RoundPageData

    path = tmp_path / "round.html"
    path.write_text(render_round_page(RoundPageData(round_id=1)))
    result = visit(path)
    assert result.console_errors == [] and result.plots == []


@pytest.fixture(scope="module")
def workspace(prefect_api, tmp_path_factory):
    """Three recorded rounds: the seed batch, the first model, a second model (a kappa)."""
    from flows.demo import annotate_outbox
    from flows.round import al_round

    root = tmp_path_factory.mktemp("page") / "ws"
    catalog, _ = make_satimage_workspace(root)
    for round_id in (1, 2, 3):
        al_round(str(root))
        annotate_outbox(catalog, round_id, noise=0.05, seed=0)
    return catalog


def test_a_real_round_page_in_a_browser(workspace):
    path = workspace.path("round_page")
    # the trend, labels, per-class F1, confusion matrix, class balance, rating, stop signal
    assert_clean(visit(path), expected_plots=7)
    text = path.read_text()
    assert len(get_svgs(text)) == 7  # each one well-formed XML too
    assert "alloop round-0003" in text and "Model rating <b>" in text


def test_report_prints_the_last_and_a_past_rounds_page(workspace):
    root = workspace.root
    last = run_cli(["alloop", "report", "-w", str(root)], root)
    assert last.returncode == 0, last.stderr
    assert last.stdout == f"{workspace.path('round_page')}\n"
    past = run_cli(["alloop", "report", "-w", str(root), "--round", "2"], root)
    assert past.returncode == 0, past.stderr
    page = Path(past.stdout.strip())
    assert page.parent == workspace.state_dir / "pages" and page.name == "round-0002.html"
    assert "alloop round-0002" in page.read_text()
    assert run_cli(["git", "status", "--porcelain"], root).stdout == ""
    missing = run_cli(["alloop", "report", "-w", str(root), "--round", "9"], root)
    assert missing.returncode == 1
    assert missing.stderr == (
        f"error: round 9 is not recorded in {root} (rounds: round-0001 to round-0003)\n"
    )


def test_a_round_from_before_pages_is_rendered_from_its_recorded_files(workspace, tmp_path):
    """The files a tag pins, without the page (as a round of an older alloop left them)."""
    from flows.report import render_recorded_round

    class Files:  # the part of DVC's file system the renderer uses, over a copy of the round
        def __init__(self, root: Path) -> None:
            self.root = root

        def exists(self, path: str) -> bool:
            return (self.root / path).exists()

        def isfile(self, path: str) -> bool:
            return (self.root / path).is_file()

        def read_bytes(self, path: str) -> bytes:
            return (self.root / path).read_bytes()

    copy = tmp_path / "round"
    shutil.copytree(workspace.root / "reports", copy / "reports")
    shutil.copytree(workspace.root / "data" / "labels", copy / "data" / "labels")
    shutil.copytree(workspace.root / "data" / "interim", copy / "data" / "interim")
    for name in ("params.yaml", "round.yaml"):
        shutil.copy(workspace.root / name, copy / name)
    (copy / "reports" / "round.html").unlink()
    page = render_recorded_round(Files(copy), 3)
    # the same page the round wrote: the same files, params and seed
    assert page == workspace.path("round_page").read_text()


def test_status_leads_with_the_rating_and_the_stop_advice(workspace):
    done = run_cli(["alloop", "status", "-w", str(workspace.root)], workspace.root)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("model rating ") and "; stop: " in first, first
    # the batch's slices read as words, not as a Python dict
    batch = next(line for line in done.stdout.splitlines() if line.startswith("batch out: "))
    assert re.search(r"answered\): [a-z_]+ \d+(, [a-z_]+ \d+)*$", batch), batch


def test_the_svgs_of_a_real_page_carry_titles(workspace):
    svgs = get_svgs(workspace.path("round_page").read_text())
    assert all(s.find(f"{SVG}title").text for s in svgs)
