"""Write and read Gaussian scenes: ml-sharp's PLY, a vertex-only PLY for 3DGS viewers, and .splat.

All three are written with numpy (no plyfile), atomically: bytes go to a temporary file in the target
directory, which takes the target's name only once complete (``publish.write_file``), so a failure never leaves a
partial file and of two writers of one file exactly one wins unless ``replace`` is given.

* ``official``: byte layout of ml-sharp's ``save_ply`` (docs/architecture.md §7.3): binary little endian;
  ``vertex`` with x y z f_dc_0..2 opacity scale_0..2 rot_0..3, then extrinsic, intrinsic, image_size, frame,
  disparity, color_space, version. Colours are stored as sRGB SH DC (color_space 0), opacities as logits, scales
  as natural logs, rotations as unit quaternions wxyz. OpenCV axes (x right, y down, z forward).
* ``viewer``: only the ``vertex`` element, in the INRIA 3DGS property order with zero normals and
  zero f_rest_0..44, for viewers that require those fields or trip over extra elements.
* ``splat``: antimatter15's 32-byte records (position f32 x3, linear scale f32 x3, RGBA u8 with sRGB
  colour and opacity, quaternion wxyz u8 as q*128+128), sorted by descending opacity * volume.
* ``spz`` and ``compressed-ply``: Niantic's SPZ and PlayCanvas's compressed PLY, quantised files a few times
  smaller, encoded by gsply (optional, see compact.py); written atomically like the others.

``y_up`` (viewer, splat, compressed-ply) rotates the scene 180 degrees about x for y-up viewers. SPZ fixes its
own axes (x right, y up, z back), so every SPZ is written rotated and ``y_up`` does not apply.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from sharp_export.errors import UserInputError
from sharp_export.reference.gaussians import (
    Gaussians3D,
    SceneMeta,
    linear_to_srgb,
    logit,
    rgb_to_sh,
    sh_to_rgb,
    srgb_to_linear,
)
from sharp_export.reference.publish import write_file, write_with

PLY_FORMATS = ("official", "viewer", "splat", "spz", "compressed-ply")
Y_UP_FORMATS = ("viewer", "splat", "compressed-ply")  # SPZ is y-up by definition; the official PLY keeps OpenCV
FORMAT_SUFFIXES = {  # file name ending of each format
    "official": ".ply", "viewer": ".ply", "splat": ".splat", "spz": ".spz", "compressed-ply": ".compressed.ply",
}  # fmt: skip
OFFICIAL_VERTEX_PROPS = (
    ["x", "y", "z"] + [f"f_dc_{i}" for i in range(3)] + ["opacity"] + [f"scale_{i}" for i in range(3)]
) + [f"rot_{i}" for i in range(4)]
VIEWER_VERTEX_PROPS = (
    ["x", "y", "z", "nx", "ny", "nz"]
    + [f"f_dc_{i}" for i in range(3)]
    + [f"f_rest_{i}" for i in range(45)]
    + ["opacity"]
    + [f"scale_{i}" for i in range(3)]
    + [f"rot_{i}" for i in range(4)]
)
PLY_VERSION = (1, 5, 0)  # ml-sharp's PLY version element
COLOR_SPACE_SRGB = 0  # ml-sharp's encoding: 0 = sRGB, 1 = linear RGB
DISPARITY_QUANTILES = (0.1, 0.9)
SPLAT_RECORD_BYTES = 32
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_PLY_NAMES = {"f4": "float", "u4": "uint", "i4": "int", "u1": "uchar"}


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------


def save_ply(
    gaussians: Gaussians3D,
    meta: SceneMeta,
    path: str | Path,
    format: str = "official",
    y_up: bool = False,
    replace: bool = False,
) -> Path:
    """Write a batch-of-one metric camera-space scene (unit quaternions) in one of ``PLY_FORMATS``.

    An existing ``path`` is an ``OutputError`` unless ``replace`` (``--force``) is given; then it is replaced
    atomically.
    """
    path = Path(path)
    if format not in PLY_FORMATS:
        raise UserInputError(f"unknown scene format '{format}'", fix=f"use one of {', '.join(PLY_FORMATS)}")
    if gaussians.mean_vectors.ndim != 3 or gaussians.mean_vectors.shape[0] != 1:
        raise ValueError(f"save_ply expects a batch of one, got means {tuple(gaussians.mean_vectors.shape)}")
    # Encode from float32 like ml-sharp, whatever precision the runner produced.
    gaussians = gaussians.to(device="cpu", dtype=torch.float32)
    if y_up and format not in Y_UP_FORMATS:
        raise UserInputError(
            f"y_up applies to the {', '.join(Y_UP_FORMATS)} formats; "
            + ("SPZ is y-up by definition" if format == "spz" else "the official PLY keeps OpenCV axes")
        )
    if format == "official":
        write_atomic(path, official_ply_chunks(gaussians, meta), replace=replace)
        return path
    scene = gaussians.select(0)
    if y_up or format == "spz":  # SPZ stores x right, y up, z back (its readers convert to their own axes)
        scene = rotate_x_180(scene)
    if format in ("spz", "compressed-ply"):
        from sharp_export.reference import compact

        write_with(path, compact.writer(format, _attributes(scene)), replace=replace)
    else:
        write_atomic(path, viewer_ply_chunks(scene) if format == "viewer" else splat_chunks(scene), replace=replace)
    return path


def _attributes(gaussians: Gaussians3D) -> np.ndarray:  # [N, 14] float32, official vertex order
    """Vertex properties computed in float32 torch, in the same op order as ml-sharp's writer."""
    with torch.no_grad():
        attributes = torch.cat(
            (
                gaussians.mean_vectors.flatten(0, 1),
                rgb_to_sh(linear_to_srgb(gaussians.colors.flatten(0, 1))),
                logit(gaussians.opacities).flatten(0, 1).unsqueeze(-1),
                torch.log(gaussians.singular_values).flatten(0, 1),
                gaussians.quaternions.flatten(0, 1),
            ),
            dim=1,
        )
    return attributes.detach().to("cpu", torch.float32).numpy()


def _header(elements: list[tuple[str, int, list[tuple[str, str]]]]) -> bytes:
    """PLY header, written like plyfile does: element / property lines, no comments."""
    lines = ["ply", "format binary_little_endian 1.0"]
    for name, count, props in elements:
        lines.append(f"element {name} {count}")
        lines += [f"property {_PLY_NAMES[kind]} {prop}" for kind, prop in props]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def disparity_quantiles(depth: torch.Tensor) -> np.ndarray:  # depth [N] -> [2] float32
    """10% / 90% quantiles of 1/z, bit-identical to ml-sharp's ``torch.quantile`` (linear interpolation).

    torch.quantile refuses inputs above 2^24 elements, so its arithmetic is reproduced instead: ranks
    q * (n - 1) in the input's dtype, floor / ceil neighbours of the sorted values, ``lerp``. NaN
    anywhere gives NaN, as in torch.quantile.
    """
    disparity = 1.0 / depth.detach().flatten()
    ordered = torch.sort(disparity).values
    ranks = torch.tensor(DISPARITY_QUANTILES, dtype=disparity.dtype, device=disparity.device) * (ordered.numel() - 1)
    below, above = ranks.floor().long(), ranks.ceil().long()
    values = torch.lerp(ordered[below], ordered[above], ranks - below)
    if torch.isnan(disparity).any():
        values = torch.full_like(values, float("nan"))
    return values.float().cpu().numpy()


def official_ply_chunks(gaussians: Gaussians3D, meta: SceneMeta) -> list[bytes]:
    attributes = _attributes(gaussians)
    count = attributes.shape[0]
    width, height = meta.width, meta.height
    intrinsic = np.array([meta.f_px, 0, width * 0.5, 0, meta.f_px, height * 0.5, 0, 0, 1], dtype="<f4")
    extras: list[tuple[str, str, np.ndarray]] = [
        ("extrinsic", "f4", np.eye(4, dtype="<f4").flatten()),
        ("intrinsic", "f4", intrinsic),
        ("image_size", "u4", np.array([width, height], dtype="<u4")),
        ("frame", "i4", np.array([1, count], dtype="<i4")),
        ("disparity", "f4", disparity_quantiles(gaussians.mean_vectors[0, :, 2]).astype("<f4")),
        ("color_space", "u1", np.array([COLOR_SPACE_SRGB], dtype="u1")),
        ("version", "u1", np.array(PLY_VERSION, dtype="u1")),
    ]
    header = _header(
        [("vertex", count, [("f4", p) for p in OFFICIAL_VERTEX_PROPS])]
        + [(name, len(values), [(kind, name)]) for name, kind, values in extras]
    )
    return [header, attributes.astype("<f4", copy=False).tobytes()] + [values.tobytes() for _, _, values in extras]


def viewer_ply_chunks(scene: Gaussians3D) -> list[bytes]:
    attributes = _attributes(scene)
    count = attributes.shape[0]
    table = np.zeros((count, len(VIEWER_VERTEX_PROPS)), dtype="<f4")
    table[:, 0:3] = attributes[:, 0:3]  # x y z; nx ny nz stay 0
    table[:, 6:9] = attributes[:, 3:6]  # f_dc; f_rest stay 0
    table[:, 54:62] = attributes[:, 6:14]  # opacity, scales, rotation
    header = _header([("vertex", count, [("f4", p) for p in VIEWER_VERTEX_PROPS])])
    return [header, table.tobytes()]


def splat_chunks(scene: Gaussians3D) -> list[bytes]:
    with torch.no_grad():
        means = scene.mean_vectors[0].to("cpu", torch.float32).numpy()
        scales = scene.singular_values[0].to("cpu", torch.float32).numpy()
        srgb = linear_to_srgb(scene.colors[0]).to("cpu", torch.float32).numpy()
        opacity = scene.opacities[0].to("cpu", torch.float32).numpy()
        quats = torch.nn.functional.normalize(scene.quaternions[0].float(), dim=-1).cpu().numpy()
    importance = np.prod(scales.astype(np.float64), axis=1) * opacity
    order = np.argsort(-importance, kind="stable")
    records = np.empty(
        len(order), dtype=[("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)]
    )
    records["position"] = means[order]
    records["scale"] = scales[order]
    # Truncation after clipping, as antimatter15's convert.py does.
    rgba = np.concatenate([srgb, opacity[:, None]], axis=1)[order]
    records["rgba"] = np.clip(rgba * 255, 0, 255).astype(np.uint8)
    records["rot"] = np.clip(quats[order] * 128 + 128, 0, 255).astype(np.uint8)
    return [records.tobytes()]


def rotate_x_180(scene: Gaussians3D) -> Gaussians3D:
    """OpenCV (y down, z forward) -> y up, z backward: (x, y, z) -> (x, -y, -z).

    The rotation is composed onto each quaternion: (0, 1, 0, 0) * (w, x, y, z) = (-x, w, -z, y).
    """
    means = scene.mean_vectors * scene.mean_vectors.new_tensor([1.0, -1.0, -1.0])
    w, x, y, z = scene.quaternions.unbind(-1)
    quats = torch.stack([-x, w, -z, y], dim=-1)
    return scene._replace(mean_vectors=means, quaternions=quats)


def write_atomic(path: Path, chunks: list[bytes], replace: bool = False) -> None:
    """Write ``chunks`` to ``path`` atomically (``publish.write_file``): a temporary sibling, fsync'd, then
    published; an existing ``path`` is replaced only with ``replace``. A failure leaves no partial file and an
    existing ``path`` as it was; a write fault is an ``OutputError`` naming ``path``."""
    write_file(path, chunks, replace=replace)


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------


def read_ply_elements(path: str | Path) -> dict[str, np.ndarray]:
    """Every element of a binary PLY as a numpy structured array (scalar properties only)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError("PLY file not found", path=path)
    with open(path, "rb") as handle:
        if handle.read(4) != b"ply\n":
            raise UserInputError("not a PLY file (no 'ply' magic line)", path=path)
        elements, byte_order = _parse_header(handle, path)
        size = os.fstat(handle.fileno()).st_size
        data = {}
        for name, count, props in elements:
            try:
                dtype = np.dtype([(prop, byte_order + kind) for kind, prop in props])
            except (ValueError, TypeError) as error:  # e.g. a property name used twice
                raise UserInputError(f"bad properties in PLY element '{name}' ({error})", path=path) from error
            # Checked before reading: a header may claim any count, and numpy would allocate it all.
            left = size - handle.tell()
            if count * dtype.itemsize > left:
                raise UserInputError(
                    f"truncated PLY: element '{name}' needs {count} x {dtype.itemsize} bytes, the file has {left} left",
                    path=path,
                    fix="copy or export the scene again",
                )
            if dtype.itemsize == 0:
                data[name] = np.zeros(count, dtype=dtype)
                continue
            array = np.fromfile(handle, dtype=dtype, count=count)
            if len(array) != count:
                raise UserInputError(f"truncated PLY: element '{name}' has {len(array)} of {count} records", path=path)
            data[name] = array
    return data


def _parse_header(handle, path: Path) -> tuple[list[tuple[str, int, list[tuple[str, str]]]], str]:
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    byte_order = None
    while True:
        line = handle.readline(4096)
        if not line.endswith(b"\n"):
            raise UserInputError("truncated or malformed PLY header", path=path)
        words = line.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(words[1] if len(words) > 1 else "")
            if order is None:
                raise UserInputError(f"unsupported PLY format '{' '.join(words[1:])}'", path=path, fix="use binary PLY")
            byte_order = order
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and len(words) == 3 and elements and words[1] in _PLY_TYPES:
            elements[-1][2].append((_PLY_TYPES[words[1]], words[2]))
        else:
            raise UserInputError(f"unsupported PLY header line '{line.decode(errors='replace').strip()}'", path=path)
    if byte_order is None:
        raise UserInputError("PLY header has no format line", path=path)
    return elements, byte_order


def load_ply(path: str | Path, missing_color_space: int = COLOR_SPACE_SRGB) -> tuple[Gaussians3D, SceneMeta]:
    """Read an official or viewer PLY back into linear-RGB Gaussians (batch of one) and its metadata.

    Mirrors ml-sharp's ``load_ply``: exp of the log scales, sigmoid of the opacity logits, SH DC ->
    colour, sRGB -> linear when color_space is 0, f = 512 at 640 x 480 without an intrinsic element.
    Unlike ml-sharp (which assumes linear), a file without a color_space element is taken as
    ``missing_color_space``, sRGB by default: that is what the viewer format and 3DGS files store.
    """
    path = Path(path)
    elements = read_ply_elements(path)
    vertex = elements.get("vertex")
    missing = [p for p in OFFICIAL_VERTEX_PROPS if vertex is None or p not in vertex.dtype.names]
    if missing:
        raise UserInputError(f"PLY vertex element lacks Gaussian properties {missing}", path=path)

    def columns(names: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([vertex[n].astype(np.float32) for n in names], axis=-1))[None]

    colors = sh_to_rgb(columns([f"f_dc_{i}" for i in range(3)]))
    color_space = _color_space(elements, path, missing_color_space)
    if color_space == COLOR_SPACE_SRGB:
        colors = srgb_to_linear(colors)
    gaussians = Gaussians3D(
        mean_vectors=columns(["x", "y", "z"]),
        singular_values=torch.exp(columns([f"scale_{i}" for i in range(3)])),
        quaternions=columns([f"rot_{i}" for i in range(4)]),
        colors=colors,
        opacities=torch.sigmoid(columns(["opacity"])[..., 0]),
    )
    return gaussians, _scene_meta(elements, path)


# PLY properties behind each attribute of a loaded scene, for error messages.
_ATTRIBUTE_PROPS = {
    "mean_vectors": "x/y/z",
    "singular_values": "scale_0..2",
    "quaternions": "rot_0..3",
    "colors": "f_dc_0..2",
    "opacities": "opacity",
}


def check_scene(gaussians: Gaussians3D, meta: SceneMeta, path: str | Path) -> None:
    """Refuse a loaded scene that cannot be rendered: no Gaussians, NaN/Inf values, zero rotations,
    everything behind the camera, or an unusable image size / focal length. Each gets its own message.
    """
    fix = "re-export the scene with `sharp-export predict`, which never writes such values"
    count = gaussians.mean_vectors.shape[1]
    if count == 0:
        raise UserInputError("PLY has no Gaussians (element vertex 0)", path=path, fix=fix)
    bad = []
    for name, props in _ATTRIBUTE_PROPS.items():
        values = getattr(gaussians, name)[0]  # [N, C] or [N]
        rows = ~torch.isfinite(values.reshape(count, -1)).all(dim=1)
        if rows.any():
            bad.append(f"{props} of {int(rows.sum())} Gaussians (first: vertex {int(rows.nonzero()[0, 0])})")
    if bad:
        raise UserInputError(
            "PLY has NaN or Inf values (or scales whose exp overflows): " + "; ".join(bad), path=path, fix=fix
        )
    zero_rotations = int((gaussians.quaternions[0].norm(dim=-1) == 0).sum())
    if zero_rotations:
        raise UserInputError(
            f"PLY has {zero_rotations} Gaussians with an all-zero rotation rot_0..3", path=path, fix=fix
        )
    if not bool((gaussians.mean_vectors[0, :, 2] > 0).any()):
        raise UserInputError("every Gaussian of the PLY is behind the camera (z <= 0)", path=path, fix=fix)
    if not (math.isfinite(meta.f_px) and meta.f_px > 0 and meta.width >= 1 and meta.height >= 1):
        raise UserInputError(
            f"PLY metadata is unusable: focal length {meta.f_px:g} px, image size {meta.width}x{meta.height}",
            path=path,
            fix=fix,
        )


def _element_values(elements: dict[str, np.ndarray], name: str, path: Path, sizes: tuple[int, ...]) -> np.ndarray:
    """The values of the one-property element ``name`` as float64, refused unless there are ``sizes`` of them."""
    element = elements[name]
    if element.dtype.names != (name,):
        raise UserInputError(f"PLY element '{name}' must have one property named '{name}'", path=path)
    values = element[name].astype(np.float64)
    if len(values) not in sizes:
        wanted = " or ".join(str(n) for n in sizes)
        raise UserInputError(f"PLY element '{name}' needs {wanted} values, has {len(values)}", path=path)
    if not np.isfinite(values).all():
        raise UserInputError(f"PLY element '{name}' has NaN or Inf values", path=path)
    return values


def _color_space(elements: dict[str, np.ndarray], path: Path, missing: int) -> int:
    if "color_space" not in elements:
        return missing
    return int(_element_values(elements, "color_space", path, (1,))[0])


def _scene_meta(elements: dict[str, np.ndarray], path: Path) -> SceneMeta:
    if "intrinsic" not in elements:
        return SceneMeta(f_px=512.0, width=640, height=480)  # ml-sharp's VGA default
    if "image_size" not in elements:  # legacy: (fx, fy, W, H)
        intrinsic = _element_values(elements, "intrinsic", path, (4,))
        return SceneMeta(f_px=float(intrinsic[0]), width=int(intrinsic[2]), height=int(intrinsic[3]))
    intrinsic = _element_values(elements, "intrinsic", path, (9,))
    size = _element_values(elements, "image_size", path, (2,))
    return SceneMeta(f_px=float(intrinsic[0]), width=int(size[0]), height=int(size[1]))


def read_splat(path: str | Path) -> dict[str, np.ndarray]:
    """A .splat file as arrays: position [N, 3], scale [N, 3] float32, rgba [N, 4], rot [N, 4] uint8."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) % SPLAT_RECORD_BYTES:
        raise UserInputError(f".splat size {len(raw)} is not a multiple of {SPLAT_RECORD_BYTES} bytes", path=path)
    dtype = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    records = np.frombuffer(raw, dtype=dtype)
    return {name: np.array(records[name]) for name in dtype.names}


def load_splat(path: str | Path) -> Gaussians3D:
    """A .splat file as linear-RGB Gaussians (batch of one); the format keeps no camera, so no SceneMeta."""
    records = read_splat(path)
    rgba = torch.from_numpy(records["rgba"].astype(np.float32) / 255.0)
    return Gaussians3D(
        mean_vectors=torch.from_numpy(records["position"])[None],
        singular_values=torch.from_numpy(records["scale"])[None],
        quaternions=torch.from_numpy((records["rot"].astype(np.float32) - 128.0) / 128.0)[None],
        colors=srgb_to_linear(rgba[:, :3])[None],
        opacities=rgba[:, 3][None],
    )


def gaussians_from_attributes(attributes: np.ndarray) -> Gaussians3D:  # [N, 14] float32, official vertex order
    """The inverse of the writer's vertex table (sRGB SH DC colours, logit opacities, log scales): linear-RGB
    Gaussians, batch of one."""
    table = torch.from_numpy(np.ascontiguousarray(attributes, dtype=np.float32))
    return Gaussians3D(
        mean_vectors=table[None, :, 0:3],
        singular_values=torch.exp(table[None, :, 7:10]),
        quaternions=table[None, :, 10:14],
        colors=srgb_to_linear(sh_to_rgb(table[None, :, 3:6])),
        opacities=torch.sigmoid(table[None, :, 6]),
    )
