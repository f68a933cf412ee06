"""The target row: one ``Target`` per export format (onnx, coreml, tensorrt, ...), and what rows share.

Each ``converters/<name>/target.py`` defines its row; ``converters/__init__.py`` lists them and
``sharp_export/registry.py`` looks them up. The row is the single source of truth for what a target can do
(precisions, dynamic batch, calibration, devices, its own flags): the CLI builds each target's command from it
and rejects unsupported combinations before any work starts, so nothing is ever silently rewritten. Rows hold
plain callables and never import a heavy toolchain at module level, which keeps ``sharp-export --help`` instant
even when a toolchain is missing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sharp_export.contract import ConvertFn, OpenRunnerFn, ParityHook, ProxyFn, ValidateFn
from sharp_export.parity.tolerances import PROFILES  # plain data, no torch

if TYPE_CHECKING:
    from sharp_export.artifact import Manifest
    from sharp_export.contract import ExportRequest

# Every precision name a target row may list; what each target really offers is its own row.
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
CALIBRATED_PRECISIONS = ("int8", "fp8")  # need --calib-data: activation ranges come from real photos


@dataclass(frozen=True)
class TargetOption:
    """A target-specific flag, e.g. ``--opset`` for onnx. ``name`` uses underscores; the flag uses dashes."""

    name: str  # python identifier, e.g. "external_data" -> flag --external-data
    type: type  # int, float, str or bool (bool becomes an on/off flag pair)
    default: Any
    help: str
    choices: tuple[str, ...] | None = None  # only for type str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True, kw_only=True)
class Target:
    """What one export format can do and how to run it. See converters/onnx/target.py for a complete example."""

    name: str  # command name and manifest "target" value, e.g. "onnx"
    suffix: str  # suffix of the native model file inside the artifact directory, e.g. ".onnx"
    extra: str  # pip extra that installs the toolchain: pip install 'sharp-export[<extra>]'
    description: str  # one line for --help
    precisions: tuple[str, ...]  # subset of PRECISIONS
    check_environment: Callable[[], str | None]  # None when usable here, else the reason and the install hint
    convert: ConvertFn  # see sharp_export/contract.py
    open_runner: OpenRunnerFn
    default_precision: str = "fp32"
    supports_dynamic_batch: bool = False
    supports_calibration: bool = False
    # Reduced precisions this target quantizes while it runs (each activation's scale is computed from the tensor
    # itself, per token: executorch int8): no calibration photos, so they need no --calib-data.
    runtime_quantized: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu",)  # devices the exported artifact can run on
    options: tuple[TargetOption, ...] = ()
    # Parity tolerance rows per precision: precision -> profile name in sharp_export/parity/tolerances.py.
    # A precision not named here uses the profile of the same name ("fp16" -> "fp16").
    tolerance_profiles: Mapping[str, str] = field(default_factory=dict)
    # Rows that depend on an option: (precision, option name, option value) -> profile name, e.g. openvino's
    # ("int8", "float_ops", "bf16"). Looked up with the artifact's manifest options before ``tolerance_profiles``.
    option_tolerance_profiles: Mapping[tuple[str, str, Any], str] = field(default_factory=dict)
    # Optional extra check of target-specific option combinations; raises UserInputError before any work.
    validate: ValidateFn | None = None
    # Optional parity check for targets whose artifacts cannot run here (Core ML off macOS); gets the same
    # contract.ParityContext as sharp_export.export.default_parity_hook. None means: run the artifact through its
    # own runner.
    parity_hook: ParityHook | None = None
    # Optional torch stand-in for the artifact, run while the model is loaded (contract.ProxyOutputs).
    proxy: ProxyFn | None = None
    # Optional, when what an export or an artifact needs depends on options (tensorrt --no-build needs onnx, not
    # TensorRT): same convention as check_environment. None: check_environment for both.
    check_export_environment: Callable[[ExportRequest], str | None] | None = None
    check_runner_environment: Callable[[Manifest], str | None] | None = None
    # Optional: the --device an export uses when none is given, from its options. None: "cpu" when listed in
    # ``devices``, else the first device.
    default_device: Callable[[Mapping[str, Any]], str] | None = None

    def __post_init__(self) -> None:
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            raise ValueError(
                f"target {self.name!r}: precisions {self.precisions} must be a non-empty subset of {PRECISIONS}"
            )
        if self.default_precision not in self.precisions:
            raise ValueError(
                f"target {self.name!r}: default precision {self.default_precision!r} not in {self.precisions}"
            )
        calibrated = [p for p in self.precisions if self.needs_calibration(p)]
        if calibrated and not self.supports_calibration:
            raise ValueError(
                f"target {self.name!r}: {'/'.join(calibrated)} needs supports_calibration=True "
                "(calibration data is required)"
            )
        names = [o.name for o in self.options]
        if len(set(names)) != len(names):
            raise ValueError(f"target {self.name!r}: duplicate option names {names}")
        for precision in self.precisions:
            if self.tolerance_profile(precision) not in PROFILES:
                raise ValueError(
                    f"target {self.name!r}: no tolerance profile {self.tolerance_profile(precision)!r} for "
                    f"{precision}; known: {', '.join(PROFILES)}"
                )
        for (precision, option, _), profile in self.option_tolerance_profiles.items():
            if precision not in self.precisions or option not in names or profile not in PROFILES:
                raise ValueError(
                    f"target {self.name!r}: option tolerance profile {profile!r} names precision {precision!r} "
                    f"and option {option!r}; each must exist"
                )

    def needs_calibration(self, precision: str) -> bool:
        """True when an export at ``precision`` needs calibration photos (--calib-data)."""
        return precision in CALIBRATED_PRECISIONS and precision not in self.runtime_quantized

    def tolerance_profile(self, precision: str, options: Mapping[str, Any] | None = None) -> str:
        """Name of the tolerance rows that gate this target at ``precision`` (with an artifact's ``options``)."""
        for (rows_precision, option, value), profile in self.option_tolerance_profiles.items():
            if rows_precision == precision and options is not None and options.get(option) == value:
                return profile
        return self.tolerance_profiles.get(precision, precision)

    def export_environment(self, request: ExportRequest) -> str | None:
        """None when ``request`` can be exported here, else the reason and the install hint."""
        check = self.check_export_environment
        return check(request) if check is not None else self.check_environment()

    def runner_environment(self, manifest: Manifest) -> str | None:
        """None when the artifact of ``manifest`` can be opened here, else the reason and the install hint."""
        check = self.check_runner_environment
        return check(manifest) if check is not None else self.check_environment()

    def device_for(self, options: Mapping[str, Any]) -> str:
        """The --device an export with these target options uses by default."""
        if self.default_device is not None:
            return self.default_device(options)
        return "cpu" if "cpu" in self.devices else self.devices[0]

    def option(self, name: str) -> TargetOption:
        for opt in self.options:
            if opt.name == name:
                return opt
        raise KeyError(f"target {self.name!r} has no option {name!r}")

    def status(self) -> str:
        """'usable' or the reason it is not (for --help and `sharp-export env`)."""
        reason = self.check_environment()
        return "usable" if reason is None else reason


def missing_packages(requirements: dict[str, str]) -> str | None:
    """Check import names without importing them: ``{"onnx": "onnx", "onnxruntime": "onnxruntime"}``.

    Maps import name -> distribution name; returns None when all are importable, else a short reason naming
    the missing ones. ``find_spec`` does not execute the package, so this is cheap enough for --help.
    """
    missing = [dist for module, dist in requirements.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return None
    return f"{', '.join(missing)} not installed"


def package_version(dist: str) -> str | None:
    """Installed version of a distribution, or None (no import of the package itself)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
