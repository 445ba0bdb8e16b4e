"""report.html in a real browser: headless Chromium loads the page, which holds its tables
and plots, and draws it. Needs the Debian package chromium (`make test` installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import make_run

from bslrun import report

BROWSERS = ("chromium", "chromium-browser")


def chromium() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        pytest.fail(
            "no headless browser for the report's HTML test: install the Debian package "
            "chromium (apt-get install chromium)"
        )
    return found


def browse(page: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium on ``page`` with its profile (and HOME) in ``home``: nothing is written to
    the user's own; --no-sandbox as root in a container."""
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={home / 'profile'}", *args, page.resolve().as_uri(),
    ]  # fmt: skip
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    env["XDG_CACHE_HOME"] = str(home / ".cache")
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def page(tmp_path) -> Path:
    root = tmp_path / "runs"
    for job, (posterior, seed) in enumerate([("map", 0), ("map", 1), ("mean_field", 0)]):
        run = make_run(root, str(job), [f"model.posterior={posterior}", f"seed={seed}"],
                       {"rmse": 0.6 + job / 10, "coverage_95": 0.9})  # fmt: skip
        (run / "history.csv").write_text("epoch,train_loss,val_nll\n1,2.0,1.5\n2,1.0,1.2\n")
    assert report.main([str(root), "--out", str(tmp_path / "out")]) == 0
    return tmp_path / "out" / "report.html"


def test_the_page_loads_with_its_tables_and_plots(page, tmp_path):
    result = browse(page, tmp_path / "home", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "<h1>bslrun report</h1>" in dom
    assert dom.count("<table") == 2  # the groups, the runs (no shared settings here)
    # One image per metric (coverage, rmse) and the learning curves, all inline.
    assert dom.count("<img ") == 3 and dom.count("data:image/png;base64,") == 3
    assert "test.rmse ↓" in dom and "mean_field" in dom
    assert (tmp_path / "home" / "profile").is_dir()  # the browser's files went there


def test_the_page_draws(page, tmp_path):
    shot = tmp_path / "page.png"
    result = browse(page, tmp_path / "home", f"--screenshot={shot}", "--window-size=1200,1600")
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 1600)
    assert len(data) > 20_000  # text, tables and plots; a blank page compresses to ~5 kB


def test_a_missing_browser_fails_saying_what_to_install(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="install the Debian package chromium"):
        chromium()
