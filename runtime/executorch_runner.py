"""ExecuTorchRunner: an executorch artifact's programs (``.pte`` + ``.ptd``) run by ExecuTorch's runtime on the CPU.

The programs run with the XNNPACK delegate, the CPU kernels ExecuTorch uses on Android and iOS (here their x86
build). An artifact holds one program (``model``) or one per stage (``--split stages``); the manifest lists them in
order with the tensors each reads and writes, and the runner is generic: it keeps a table of named tensors and runs
each program on its inputs. A stage with a ``patch_batch`` runs once per batch of that many rows of its inputs, and
its outputs are concatenated.

A split artifact is run as an app would: each program is loaded, run and released before the next is loaded, so
only one stage's weights are in memory at a time (``release=False`` keeps them loaded, for timing). An unsplit
artifact's program stays loaded between calls.

Bad files get one line before the C++ runtime sees them: the ``.pte`` and ``.ptd`` headers are read here (magic,
and the size the header promises against the file's), and each program's input shapes are checked against the
tensors it is given, so a program from another export is named instead of failing inside ExecuTorch.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharp_export.artifact import IOSpec
from sharp_export.errors import MissingDependencyError, UserInputError
from sharp_export.reference.gaussians import Gaussians3D
from sharp_export.runtime.base import Runner, omp_threads, outputs_to_gaussians

_REEXPORT = "export the artifact again with `sharp-export executorch`, or copy the whole folder again"


@dataclass(frozen=True)
class ProgramSpec:
    """One program of an artifact, as its manifest lists it (``conversion.programs``)."""

    name: str
    program: str  # .pte file name
    data: str | None  # .ptd file name (the weights); None for a program without constants
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    patch_batch: int | None = None

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> ProgramSpec:
        return cls(
            name=str(details["name"]),
            program=str(details["program"]),
            data=details.get("data"),
            inputs=tuple(details["inputs"]),
            outputs=tuple(details["outputs"]),
            patch_batch=details.get("patch_batch"),
        )


def _header_size(head: bytes, magic: bytes, header_magic: bytes, fields: str) -> int | None:
    """The file size a .pte / .ptd header promises, or None when the file is not of that kind."""
    if len(head) < 8 or head[4:8] != magic:
        return None
    if head[8:12] != header_magic:
        return 0  # no extended header: nothing to compare
    values = struct.unpack_from(fields, head, 16)
    base, size = values[-2], values[-1]
    return base + size if size else values[0]


def check_program_file(path: Path, kind: str) -> None:
    """One line when ``path`` is missing, not an ExecuTorch ``kind`` ('program' / 'data') file, or truncated."""
    if not path.is_file():
        raise UserInputError(f"the ExecuTorch {kind} file is missing", path=path, fix=_REEXPORT)
    with open(path, "rb") as handle:
        head = handle.read(64)
    if kind == "program":  # "ET12" flatbuffer id, "eh00" header: program size, segment base offset, segment size
        expected = _header_size(head, b"ET12", b"eh00", "<QQQ")
    else:  # "FT01" id, "FH01" header: flatbuffer offset and size, segment base offset, segment size
        expected = _header_size(head, b"FT01", b"FH01", "<QQQQ")
    if expected is None:
        raise UserInputError(f"not an ExecuTorch {kind} file (.{'pte' if kind == 'program' else 'ptd'})", path=path,
                             fix=_REEXPORT)  # fmt: skip
    actual = path.stat().st_size
    if expected and actual < expected:
        raise UserInputError(
            f"truncated ExecuTorch {kind} file: {actual} bytes, its header says {expected}", path=path, fix=_REEXPORT
        )


def _runtime() -> Any:
    try:
        from executorch.runtime import Runtime
    except ImportError:
        raise MissingDependencyError("executorch", "executorch", "running an ExecuTorch artifact") from None
    return Runtime.get()


class ExecuTorchRunner(Runner):
    def __init__(
        self,
        artifact_dir: Path,
        programs: Sequence[ProgramSpec],
        io: IOSpec,
        device: str = "cpu",
        release: bool | None = None,  # free each program after its run (default: when there are several)
    ):
        super().__init__(io, device)
        self.artifact_dir = Path(artifact_dir)
        self.programs = tuple(programs)
        self.release = len(self.programs) > 1 if release is None else release
        self.loaded: dict[str, Any] = {}  # program name -> (Program, Method) while loaded
        self.last_stage_seconds: dict[str, float] = {}

    def _open(self) -> None:
        if self.device != "cpu":
            raise UserInputError(
                f"ExecuTorch artifacts run on the CPU here, not '{self.device}'", fix="use --device cpu"
            )
        runtime = _runtime()
        threads = omp_threads()
        if threads is not None:  # one variable bounds every runtime's pool (XNNPACK's threadpool here)
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(threads)
        for spec in self.programs:
            check_program_file(self.artifact_dir / spec.program, "program")
            if spec.data is not None:
                check_program_file(self.artifact_dir / spec.data, "data")
        self._runtime = runtime
        if not self.release:
            for spec in self.programs:
                self.loaded[spec.name] = self._load(spec)

    def _load(self, spec: ProgramSpec) -> Any:
        path = self.artifact_dir / spec.program
        data = self.artifact_dir / spec.data if spec.data is not None else None
        try:
            program = self._runtime.load_program(path, data_path=data)
            return program, program.load_method("forward")
        except RuntimeError as error:  # ExecuTorch's error codes (0x23 truncated, 0x20 missing weights key, ...)
            first = (str(error).strip().splitlines() or [""])[0][:200]
            raise UserInputError(
                f"ExecuTorch cannot load this program with {spec.data} ({first})", path=path, fix=_REEXPORT
            ) from None

    def run_program(self, spec: ProgramSpec, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One program on its inputs (all rows at once; the caller chunks), loading it if it is not loaded."""
        if spec.name not in self.loaded:
            self.loaded[spec.name] = self._load(spec)
        _, method = self.loaded[spec.name]
        meta = method.metadata
        if meta.num_inputs() != len(inputs) or meta.num_outputs() != len(spec.outputs):
            raise UserInputError(
                f"program {spec.program} takes {meta.num_inputs()} inputs and gives {meta.num_outputs()} outputs, "
                f"the manifest says {len(inputs)} and {len(spec.outputs)}: it is from another export",
                path=self.artifact_dir / spec.program,
                fix=_REEXPORT,
            )
        for index, (name, value) in enumerate(zip(spec.inputs, inputs, strict=True)):
            expected = tuple(meta.input_tensor_meta(index).sizes())
            if expected != tuple(value.shape):
                raise UserInputError(
                    f"program {spec.program} expects input '{name}' of shape {expected}, got {tuple(value.shape)}: "
                    "it is from another export or preset",
                    path=self.artifact_dir / spec.program,
                    fix=_REEXPORT,
                )
        try:
            return [torch.as_tensor(t) for t in method.execute([t.contiguous() for t in inputs])]
        except RuntimeError as error:
            first = (str(error).strip().splitlines() or [""])[0][:200]
            raise UserInputError(f"ExecuTorch failed to run {spec.program} ({first})", path=self.artifact_dir,
                                 fix=_REEXPORT) from None  # fmt: skip

    def run_stage(self, spec: ProgramSpec, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One program on all its rows: ``patch_batch`` rows a run when the program was exported for that many."""
        if spec.patch_batch is None:
            return self.run_program(spec, inputs)
        rows, size = int(inputs[0].shape[0]), spec.patch_batch
        pieces = [self.run_program(spec, [t[s : s + size] for t in inputs]) for s in range(0, rows, size)]
        return [torch.cat(list(group), dim=0) for group in zip(*pieces, strict=True)]

    def _infer(self, image: np.ndarray, disparity_factor: np.ndarray) -> Gaussians3D:
        values: dict[str, torch.Tensor] = {
            "image": torch.from_numpy(image),
            "disparity_factor": torch.from_numpy(disparity_factor),
        }
        self.last_stage_seconds = {}
        for position, spec in enumerate(self.programs):
            start = time.perf_counter()
            outputs = self.run_stage(spec, [values[name] for name in spec.inputs])
            if self.release:
                self.loaded.pop(spec.name, None)
            values.update(zip(spec.outputs, outputs, strict=True))
            for name in spec.inputs:  # free what no later program reads
                if all(name not in later.inputs for later in self.programs[position + 1 :]):
                    values.pop(name, None)
            self.last_stage_seconds[spec.name] = time.perf_counter() - start
        names = list(self.programs[-1].outputs)
        return outputs_to_gaussians(names, [values[name].numpy() for name in names])

    def _close(self) -> None:
        self.loaded.clear()


def open_executorch_artifact(artifact_dir: Path, conversion: Mapping[str, Any], io: IOSpec, device: str = "cpu",
                             release: bool | None = None) -> ExecuTorchRunner:  # fmt: skip
    """The executorch target's ``open_runner``: the programs the manifest's ``conversion`` lists."""
    programs = [ProgramSpec.from_details(details) for details in conversion.get("programs", [])]
    if not programs:
        raise UserInputError("the manifest lists no ExecuTorch programs", path=artifact_dir, fix=_REEXPORT)
    return ExecuTorchRunner(artifact_dir, programs, io, device, release)
