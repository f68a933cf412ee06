"""The target registry: where commands, the export pipeline, parity and bench look a target up.

It starts from ``converters.BUILTIN_TARGETS`` (tests and plug-ins may add rows with :func:`register_target`) and
holds the lookups that need a row: the tolerance profile of (target, precision, options), and
:func:`resolve_artifact`, which reads an artifact's manifest once and hands back the manifest with its row, so
nothing downstream reads or looks them up again.

Importing this module imports every row, which import no toolchain and not torch: `sharp-export --help` stays
instant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharp_export.artifact import Manifest, check_file_sizes, read_manifest, verify_files
from sharp_export.converters import BUILTIN_TARGETS
from sharp_export.errors import TargetUnavailableError, UserInputError
from sharp_export.parity.tolerances import REFERENCE_NAME, REFERENCE_PROFILES, Tolerance, profile_tolerances
from sharp_export.targets import Target

if TYPE_CHECKING:
    from sharp_export.runtime.base import Runner

_REGISTRY: dict[str, Target] = {target.name: target for target in BUILTIN_TARGETS}


def register_target(target: Target) -> Target:
    """Add a target. A second target with the same name is an error, never an override."""
    if target.name in _REGISTRY:
        raise ValueError(f"a target named {target.name!r} is already registered ({_REGISTRY[target.name].description})")
    _REGISTRY[target.name] = target
    return target


def unregister_target(name: str) -> None:
    """Remove a target (tests only)."""
    _REGISTRY.pop(name, None)


def get_target(name: str) -> Target:
    if name not in _REGISTRY:
        raise UserInputError(f"unknown target {name!r}; known targets: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def all_targets() -> list[Target]:
    """Registered targets in registration order."""
    return list(_REGISTRY.values())


def all_devices() -> tuple[str, ...]:
    """Every device some registered target runs on, in first-seen order (for commands that open any artifact)."""
    return tuple(dict.fromkeys(d for t in all_targets() for d in t.devices))


# ---- tolerances ----------------------------------------------------------------------------------------------


def tolerance_profile(target: str, precision: str, options: Mapping[str, Any] | None = None) -> str:
    """The profile gating ``target`` (a registered name, or "torch" for the eager reference) at ``precision``; an
    artifact's ``options`` may pick another row set (openvino int8 with ``float_ops`` bf16). UserInputError when the
    target offers no such precision."""
    if target == REFERENCE_NAME:
        offered: dict[str, str] = dict(REFERENCE_PROFILES)
    else:
        row = get_target(target)
        offered = {p: row.tolerance_profile(p, options) for p in row.precisions}
    if precision not in offered:
        raise UserInputError(
            f"no parity tolerances for target '{target}' at precision '{precision}'",
            fix=f"{target} supports {', '.join(offered)}",
        )
    return offered[precision]


def load_tolerances(
    target: str,
    precision: str,
    overrides: Path | str | Mapping[str, object] | None = None,
    *,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Tolerance]:
    """The tolerances of ``target`` at ``precision`` (see :func:`tolerance_profile`), with optional overrides."""
    return profile_tolerances(tolerance_profile(target, precision, options), overrides)


# ---- artifacts -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedArtifact:
    """An artifact directory with its manifest read once and its target row."""

    path: Path
    manifest: Manifest
    target: Target

    @property
    def tolerance_profile(self) -> str:
        """The rows that gate it: its row's profile for its precision and options."""
        return self.target.tolerance_profile(self.manifest.precision, self.manifest.options)

    @property
    def resolution(self) -> int | str | None:
        """The side of the square image input, as the manifest's I/O spec gives it."""
        return self.manifest.io.inputs[0].shape[-1] if self.manifest.io.inputs else None

    def tolerances(self, overrides: Path | str | Mapping[str, object] | None = None) -> dict[str, Tolerance]:
        return profile_tolerances(self.tolerance_profile, overrides)

    def runner(self, device: str = "cpu") -> Runner:
        """An unopened Runner on ``device``; one clear line when the device or this machine cannot run it."""
        if device not in self.target.devices:
            raise UserInputError(
                f"a {self.target.name} artifact runs on {', '.join(self.target.devices)}, not '{device}'",
                path=self.path,
                fix=f"pass --device {self.target.devices[0]}",
            )
        reason = self.target.runner_environment(self.manifest)
        if reason is not None:
            raise TargetUnavailableError(self.target.name, reason)
        return self.target.open_runner(self.path, self.manifest, device)


def resolve_artifact(artifact_dir: str | Path, *, verify: bool = False) -> ResolvedArtifact:
    """Read ``artifact_dir``'s manifest, check its files' sizes (``verify=True``: re-hash them, seconds per GB)
    and find its target row."""
    path = Path(artifact_dir)
    manifest = read_manifest(path)
    check_file_sizes(path, manifest)
    if verify:
        verify_files(path, manifest)
    try:
        target = get_target(manifest.target)
    except UserInputError as error:  # an artifact of a target this installation does not know
        raise UserInputError(
            f"the manifest names target '{manifest.target}', which this sharp-export does not have ({error.message})",
            path=path,
            fix="run it with the sharp-export (and plug-in) that exported it",
        ) from None
    return ResolvedArtifact(path, manifest, target)


def open_runner(artifact_dir: str | Path, device: str = "cpu", *, verify: bool = False) -> Runner:
    """A Runner for an artifact directory, chosen by its manifest's target (not opened)."""
    return resolve_artifact(artifact_dir, verify=verify).runner(device)
