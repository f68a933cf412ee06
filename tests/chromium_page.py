"""Headless Chromium for the browser tests: Debian's `chromium` (installed by .ci/run), driven by Playwright.

No browser is ever downloaded: the tests use the system binary ($SHARP_CHROMIUM, else /usr/bin/chromium) and
skip, saying why, where there is none (e.g. a developer's Mac without it). Chromium starts without a GPU; its
WebGL2 then runs on SwiftShader (software), which viser's splat renderer needs.

Set SHARP_SCREENSHOT_DIR to keep the tests' screenshots (docs/viewer.png and docs/parity-report.png are made
that way, see benchmarks/make_screenshots.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# The flags this closed network needs (no background connections, no QUIC), no GPU, software WebGL.
FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-angle=swiftshader",  # WebGL through SwiftShader: the software path, the same on every machine
    "--enable-unsafe-swiftshader",  # newer Chromium refuses the software WebGL fallback without it
)


def chromium_path() -> str | None:
    wanted = os.environ.get("SHARP_CHROMIUM")
    if wanted:
        return wanted if Path(wanted).is_file() else None
    found = next((path for path in CANDIDATES if Path(path).is_file()), None)
    return found or shutil.which("chromium")


def require_chromium() -> str:
    """The Chromium binary and Playwright, or skip the test with the reason."""
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium here: .ci/run installs Debian's chromium (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is in the dev extra")
    return path


@contextlib.contextmanager
def browser_page(width: int, height: int) -> Iterator:
    """A Playwright page in a fresh headless Chromium (own empty profile), closed afterwards."""
    from playwright.sync_api import sync_playwright

    executable = require_chromium()
    with tempfile.TemporaryDirectory(prefix="sharp-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=list(FLAGS),
            viewport={"width": width, "height": height},
        )  # fmt: skip
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def save_screenshot(image: np.ndarray, name: str) -> None:
    """Keep a screenshot in $SHARP_SCREENSHOT_DIR when set (for the README's pictures)."""
    folder = os.environ.get("SHARP_SCREENSHOT_DIR")
    if folder:
        from PIL import Image

        Path(folder).mkdir(parents=True, exist_ok=True)
        small = Image.fromarray(image).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        small.save(Path(folder) / name, optimize=True)  # 256 colours: a README picture, not a measurement


def png_pixels(data: bytes) -> np.ndarray:  # -> [H, W, 3] uint8
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
