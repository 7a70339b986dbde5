"""The report folder opened in headless Chromium with no network: every plot renders."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sweep_helpers import run_hpc, write_config

pytestmark = pytest.mark.integration

BROWSERS = ("chromium-headless-shell", "chromium", "google-chrome")
# What each plot's page contains once plotly.js has drawn it (class names of plotly's SVG).
PLOT_MARKS = {
    "optimization_history.html": 'class="trace scatter',
    "edf.html": 'class="trace scatter',
    "contour.html": 'class="contourlevel',
    "parallel_coordinate.html": 'class="trace scatter',
    "timeline.html": 'class="trace bars',
    "param_importances.html": 'class="trace bars',
}
MAX_HTML_BYTES = 1_000_000


def browser() -> str:
    """Find headless Chromium; `make test` installs it as root (scripts/run-tests.sh)."""
    for name in (os.environ.get("HPC_TUNE_TEST_BROWSER"), *BROWSERS):
        if name and shutil.which(name):
            return str(shutil.which(name))
    message = "no headless Chromium: apt-get install chromium-headless-shell"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def offline(command: list[str]) -> list[str]:
    """Run `command` in a network namespace of its own, with no interface but loopback."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n", *command]
    # Without the right to create namespaces, send every request to a closed port.
    return [*command, "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]


def chromium(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        offline([binary, "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", *args]),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_plots_render_offline(tmp_path: Path, database_url: str) -> None:
    binary = browser()
    write_config(tmp_path, n_trials=8, workers=2, executor="local", synthetic={"duration_s": 0.1})
    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = tmp_path / "results"

    pages = sorted(report.glob("*.html"))
    assert {page.name for page in pages} == set(PLOT_MARKS)
    assert [src for page in pages for src in _scripts(page)] == ["plotly.min.js"] * len(pages)
    for page in pages:
        assert page.stat().st_size < MAX_HTML_BYTES, page
        dom = chromium(binary, "--dump-dom", page.as_uri())
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert 'class="main-svg"' in dom.stdout, f"{page.name}: plotly drew nothing"
        assert PLOT_MARKS[page.name] in dom.stdout, f"{page.name}: no {PLOT_MARKS[page.name]}"
        shot = tmp_path / f"{page.stem}.png"
        taken = chromium(binary, "--window-size=1000,700", f"--screenshot={shot}", page.as_uri())
        assert taken.returncode == 0, taken.stderr[-2000:]
        # A blank page compresses to about 3 KB; a drawn plot to 15 KB and more.
        assert shot.stat().st_size > 10_000, f"{page.name}: screenshot looks blank"


def _scripts(page: Path) -> list[str]:
    return re.findall(r"<script[^>]*\bsrc=\"([^\"]*)\"", page.read_text())
