"""`dvc plots show` renders offline: .dvc/config points it at vendor/dvc_plots.html, which carries
Vega, Vega-Lite and vega-embed inline instead of loading them from a CDN."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory) -> Path:
    """The page `dvc plots show` writes in a project configured as this one (its .dvc/config and
    vendor/), for a curve declared the way dvc.yaml declares the report's."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "vendor", root / "vendor")
    (root / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", root / ".dvc" / "config")
    (root / "curve.csv").write_text("kl,gold\n0,0.1\n1,0.4\n4,0.6\n9,0.5\n")
    (root / "dvc.yaml").write_text("plots:\n  - curve.csv:\n      x: kl\n      y: gold\n")
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", "dvc_plots"], cwd=root,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "dvc_plots" / "index.html"


def test_the_plots_page_loads_no_script_from_the_network(plots_page):
    page = plots_page.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page)  # every script is inline
    assert "vegaEmbed(" in page and "curve.csv" in page  # the plot is on the page
    for library in ("vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"):
        assert f"<!-- {library}, from its npm package -->" in page


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_headless_chromium_with_no_network_draws_the_plot(plots_page):
    # Any request to the network would go to a closed local port and fail: what renders, renders offline.
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
                           "--virtual-time-budget=10000", "--dump-dom", plots_page.as_uri()],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    # vega-embed ran (its action menu) and Vega drew the chart (its canvas of marks)
    assert "View Compiled Vega" in done.stdout and re.search(r'<canvas[^>]*class="marks"', done.stdout)
