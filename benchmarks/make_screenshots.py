"""The README's two pictures, taken by the browser tests themselves: docs/viewer.png and docs/parity-report.png.

    python benchmarks/make_screenshots.py

Runs the two Chromium tests with SHARP_SCREENSHOT_DIR=docs (tests/chromium_page.py keeps their screenshots, as
256-colour PNGs to stay small). Needs what those tests need: Debian's chromium, Playwright, viser, matplotlib.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/test_view.py::test_viewer_draws_the_golden_scene_in_chromium",
    "tests/test_parity_cli.py::test_parity_page_in_chromium",
]

if __name__ == "__main__":
    env = {**os.environ, "SHARP_SCREENSHOT_DIR": str(REPO / "docs")}
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-rs", *TESTS], cwd=REPO, env=env)
    for name in ("viewer.png", "parity-report.png"):
        path = REPO / "docs" / name
        print(f"{path}: {path.stat().st_size:,} bytes" if path.is_file() else f"{path}: not written")
    sys.exit(code)
