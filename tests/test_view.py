"""`sharp-export view` as a person uses it: start it on the golden scene, open the URL in a real headless Chromium,
look at the picture, press Ctrl-C. Plus the parts that need no browser (arrays, camera, ports)."""

from __future__ import annotations

import math
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from chromium_page import browser_page, png_pixels, require_chromium, save_screenshot
from click.testing import CliRunner

from sharp_export.cli import cli
from sharp_export.reference.gaussians import Gaussians3D, SceneMeta, compose_covariance_matrices
from sharp_export.reference.ply import save_ply

pytest.importorskip("viser", reason="the 'view' extra (viser) is not installed")
FIELDS = ("mean_vectors", "singular_values", "quaternions", "colors", "opacities")


def golden_scene(golden_dir: Path) -> tuple[Gaussians3D, SceneMeta]:
    """What ml-sharp predicted for input_640x480.png with the perturbed tiny weights (73,728 Gaussians)."""
    data = np.load(golden_dir / "out_640x480_perturbed.npz")
    width, height = (int(v) for v in data["image_size_wh"])
    return Gaussians3D(*(torch.from_numpy(data[k]) for k in FIELDS)), SceneMeta(float(data["f_px"]), width, height)


@pytest.fixture(scope="module")
def scene_files(golden_dir, tmp_path_factory) -> dict[str, Path]:
    gaussians, meta = golden_scene(golden_dir)
    folder = tmp_path_factory.mktemp("view")
    return {"official": save_ply(gaussians, meta, folder / "golden.ply")}


# The CLI as a person's terminal runs it: Ctrl-C raises KeyboardInterrupt. A suite started in the background by a
# shell (`cmd &`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler: the viewer ignored
# the test's Ctrl-C twice that way (its main thread still in its sleep loop, shown by the stack dump). A thread-stack
# dump on SIGUSR1 (faulthandler) stays for the diagnosis in Viewer.stop.
DUMPABLE_CLI = (
    "import faulthandler, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "faulthandler.register(signal.SIGUSR1, all_threads=True); from sharp_export.cli import main; main()"
)


class Viewer:
    """`sharp-export view SCENE --port 0` in a child process; its URL from stdout; stopped with SIGINT."""

    def __init__(self, scene: Path, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, "-c", DUMPABLE_CLI, "view", str(scene), "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = self._wait_for(r"viewer: (http://127\.0\.0\.1:\d+/)", timeout=120).group(1)
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def _wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.output.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.output))

    def stop(self) -> int:
        """Ctrl-C, as a person would; returns the exit code. Every process it started must be gone."""
        children = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # Ask it for every thread's stack, so that the failure says where it hangs.
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(3)
            while not self.lines.empty():
                self.output.append(self.lines.get())
            output = "\n".join(self.output)
            raise AssertionError(f"`view` still runs 30 s after Ctrl-C; its output:\n{output}") from None
        self._wait_for("viewer stopped", timeout=10)
        alive = [child.pid for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], f"processes left behind: {alive}"
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def port_is_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_for_splats(page, timeout: float = 120.0) -> np.ndarray:  # -> [H, W, 3] uint8 screenshot
    """Screenshots until the splats have arrived and the picture has settled; viser's overlays put away first."""
    deadline, previous, shot = time.monotonic() + timeout, None, None
    while time.monotonic() < deadline:
        put_overlays_away(page)
        shot = png_pixels(page.screenshot())
        if shot.std() > 20 and previous is not None and np.abs(shot.astype(int) - previous).mean() < 0.5:
            return shot
        previous = shot.astype(int)
        time.sleep(1.0)
    raise AssertionError(f"the viewer drew nothing in {timeout:.0f} s (pixel std {shot.std():.1f})")


def empty_viewer_screenshot(page) -> np.ndarray:
    """viser's page with the viewer's theme and nothing in the scene: the 'empty canvas' to compare with."""
    import viser

    from sharp_export.viewer import THEME

    server = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
    try:
        server.gui.configure_theme(**THEME)
        server.scene.world_axes.visible = False
        page.goto(f"http://127.0.0.1:{server.get_port()}/")
        page.wait_for_selector("canvas")
        time.sleep(2)
        put_overlays_away(page)
        time.sleep(1)
        return png_pixels(page.screenshot())
    finally:
        server.stop()


def put_overlays_away(page) -> None:
    """Close viser's "software WebGL" notice, minimise its control panel, move the mouse off it (no tooltip)."""
    # element.click() from the page: Playwright's own click waits for a quiet page, which software WebGL is not.
    page.evaluate(
        """() => ['.mantine-Notification-closeButton', '[aria-label="Minimize panel"]'].forEach(
            selector => document.querySelector(selector)?.click())"""
    )
    page.mouse.move(200, 300)


def overlay_free(image: np.ndarray) -> np.ndarray:  # [480, 640, 3] -> [M, 3] pixels no viser overlay covers
    keep = np.ones(image.shape[:2], bool)
    keep[:64, 352:] = False  # the minimised control panel, top right
    keep[-64:, :64] = False  # the orientation gizmo, bottom left
    return image[keep]


def blocks(image: np.ndarray, size: int = 16) -> np.ndarray:  # [H, W, 3] -> [M, 3] means of overlay-free blocks
    h, w = image.shape[0] // size, image.shape[1] // size
    means = image[: h * size, : w * size].astype(np.float64).reshape(h, size, w, size, 3).mean(axis=(1, 3))
    keep = np.ones((h, w), bool)
    keep[: 64 // size, 352 // size :] = False
    keep[-64 // size :, : 64 // size] = False
    return means[keep]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(blocks(a).ravel(), blocks(b).ravel())[0, 1])


def reference_picture(gaussians: Gaussians3D, meta: SceneMeta, background: np.ndarray) -> np.ndarray:
    """Our CPU renderer at the input camera over the viewer's background colour: [H, W, 3] uint8."""
    from sharp_export.reference.gaussians import srgb_to_linear
    from sharp_export.reference.render import make_trajectory, render_scene

    camera = make_trajectory(gaussians, meta, "rotate_forward", num_frames=2)[0]  # frame 0: the input camera
    linear = srgb_to_linear(torch.tensor(background / 255.0, dtype=torch.float32))
    color = render_scene(gaussians, camera, backend="torch", background=tuple(linear.tolist())).color
    return (color.numpy() * 255).round().astype(np.uint8)


def test_viewer_draws_the_golden_scene_in_chromium(scene_files, golden_dir):
    """The official PLY (the other formats reach the viewer through the same load_scene, tested in test_compact)."""
    require_chromium()
    viewer = Viewer(scene_files["official"])
    try:
        assert port_is_open(viewer.port)
        with browser_page(640, 480) as page:
            page.goto(viewer.url)
            shot = wait_for_splats(page)
            webgl = page.evaluate("() => !!document.createElement('canvas').getContext('webgl2')")
            empty = empty_viewer_screenshot(page)
        save_screenshot(shot, "viewer.png")
        code = viewer.stop()
    finally:
        viewer.kill()
    assert webgl and code == 0, "\n".join(viewer.output)
    assert not port_is_open(viewer.port)
    assert any("73,728 Gaussians" in line for line in viewer.output)
    # Splats were drawn: far more variance than the empty canvas, and many distinct colours.
    scene, blank = overlay_free(shot), overlay_free(empty)
    assert blank.std() < 3 and scene.std() > 10 * max(blank.std(), 1.0), (blank.std(), scene.std())
    assert len(np.unique(scene // 16, axis=0)) > 150
    # The scene's picture, seen from the input camera: our CPU render of the same scene agrees block by block
    # (viser blends sRGB colours, our renderer linear ones: the same picture, not the same pixels). Upside
    # down it does not: OpenCV's y-down axes were handled.
    gaussians, meta = golden_scene(golden_dir)
    background = np.median(blank, axis=0)
    expected = reference_picture(gaussians, meta, background)
    assert expected.shape == shot.shape
    # measured 0.996 (docs/viewer.png); one earlier run, on the SPZ of the same scene, measured 0.82 (cause not
    # established: SPZ quantisation or a frame taken before viser had settled)
    assert correlation(shot, expected) > 0.75, correlation(shot, expected)
    assert correlation(shot, expected[::-1]) < 0.5, correlation(shot, expected[::-1])  # measured -0.14
    assert reddish_fraction(shot) > 0.01  # the pattern's red disk (0.9, 0.3, 0.2); measured 0.26


def reddish_fraction(image: np.ndarray) -> float:
    """Share of pixels of a red well above green and blue."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return float(((r > 100) & (r - g > 40) & (r - b > 40)).mean())


def test_splat_arrays_keep_the_picture_and_fit_float16(golden_dir):
    from sharp_export.viewer import splat_arrays, vertical_fov

    gaussians, meta = golden_scene(golden_dir)
    arrays = splat_arrays(gaussians)
    k = arrays.world_scale
    # Scaling the world about the camera keeps every projection: x/z and y/z are unchanged.
    means = gaussians.mean_vectors[0].double().numpy()
    centers = arrays.centers.astype(np.float64)
    np.testing.assert_allclose(centers[:, :2] / centers[:, 2:], means[:, :2] / means[:, 2:], rtol=1e-5, atol=1e-6)
    expected = compose_covariance_matrices(gaussians.quaternions[0].double(), gaussians.singular_values[0].double())
    np.testing.assert_allclose(arrays.covariances, expected.numpy() * k * k, rtol=1e-4, atol=1e-6)
    # viser sends covariances as float16: after scaling, every diagonal entry is a normal float16 number.
    diagonal = np.einsum("nii->ni", arrays.covariances)
    assert diagonal.min() > np.finfo(np.float16).tiny and diagonal.max() < np.finfo(np.float16).max / 4
    assert 0 < arrays.near < centers[:, 2].min() and arrays.far > centers[:, 2].max()
    assert arrays.opacities.shape == (73728, 1) and arrays.rgbs.min() >= 0 and arrays.rgbs.max() <= 1
    assert math.isclose(vertical_fov(meta), 2 * math.atan(240 / meta.f_px))


def test_a_busy_port_is_one_line(scene_files):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["view", str(scene_files["official"]), "--port", str(port)])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == f"error: port {port} on 127.0.0.1 is in use (pass another --port (e.g. --port {port + 1}))"
    )


def test_listening_beyond_loopback_warns(monkeypatch, scene_files):
    from sharp_export import viewer

    started = []

    class NoServer:
        def __init__(self, arrays, meta, host, port, label):
            started.append((host, port))
            self.url = f"http://{host}:{port}/"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(viewer, "SceneServer", NoServer)
    monkeypatch.setattr(viewer, "check_port_free", lambda host, port: None)

    def ctrl_c(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", ctrl_c)  # Ctrl-C as soon as the server is up
    result = CliRunner().invoke(cli, ["view", str(scene_files["official"]), "--host", "0.0.0.0", "--port", "8123"])
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: --host 0.0.0.0 serves this scene to every machine that can reach this one on port 8123"
    ], result.output
    assert started == [("0.0.0.0", 8123)] and result.exit_code == 0, result.output
    assert "viewer: http://0.0.0.0:8123/" in result.output and "viewer stopped" in result.output
