"""`sharp-export view`: serve one scene to the browser (viser's web client), until Ctrl-C.

torch, the reference model and viser are imported inside the command: the CLI imports this module for
`sharp-export --help`, which must stay instant.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from sharp_export.commands.base import OneLineCommand
from sharp_export.progress import echo


@click.command("view", cls=OneLineCommand)
@click.argument("scene", type=click.Path(path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0: any free port.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 serves the scene to every machine that can reach this one.",
)
@click.option("--y-up", is_flag=True, help="The scene was written with --y-up: rotate it back.")
def command(scene: Path, port: int, host: str, y_up: bool) -> None:
    """Show SCENE (.ply, .splat, .spz or .compressed.ply) as Gaussian splats in the browser.

    The camera starts at the input photo's camera. Prints the URL to open; Ctrl-C stops the server.
    """
    from sharp_export.reference.ply import check_scene
    from sharp_export.reference.scenes import check_scene_file, load_scene
    from sharp_export.viewer import SceneServer, check_port_free, is_loopback, splat_arrays, viser_module

    viser_module()  # a missing extra, a missing file or a busy port fails before the scene is read
    check_scene_file(scene)
    check_port_free(host, port)
    start = time.perf_counter()
    echo(f"loading {scene} ...")
    gaussians, meta, kind = load_scene(scene, y_up=y_up)
    check_scene(gaussians, meta, scene)  # the same refusals as `render`
    count = gaussians.mean_vectors.shape[1]
    echo(f"{count:,} Gaussians ({kind}), camera {meta.width}x{meta.height} f={meta.f_px:.1f} px; preparing splats ...")
    arrays = splat_arrays(gaussians)
    del gaussians
    if not is_loopback(host):
        echo(f"warning: --host {host} serves this scene to every machine that can reach this one on port {port}")
    with SceneServer(arrays, meta, host=host, port=port, label=scene.name) as server:
        echo(f"ready in {time.perf_counter() - start:.1f} s; the browser receives {count * 32 / 1e6:.0f} MB of splats")
        click.echo(f"viewer: {server.url}  (Ctrl-C stops)")
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            echo("stopping the viewer ...")
    echo("viewer stopped")
