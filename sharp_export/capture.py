"""The terminal shows our lines; the toolchains' own output goes to the artifact's export.log.

During an export, torch.onnx, onnxscript, ONNX Runtime, OpenVINO and coremltools print pages of their own (torch's
"torchvision is not installed" registration warnings, "Skipping constant folding for node ...", optimiser rewrites,
FutureWarnings) through ``print``, ``warnings``, Python logging and, in C++, straight to file descriptors 1 and 2.
``capture_log`` sends all of that to a buffer that becomes ``export.log``, while ``progress.echo`` (our progress,
stage and parity lines) goes to the terminal and the buffer. With ``show`` (``sharp-export -v``) the toolchains'
output is shown as well.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, TextIO

from sharp_export.progress import echo_to


class _Sink(io.TextIOBase):
    """A text stream that writes to the log buffer, and to the terminal as well when ``show``."""

    def __init__(self, buffer: io.StringIO, terminal: TextIO | None):
        self.buffer = buffer
        self.terminal = terminal

    def write(self, text: str) -> int:
        self.buffer.write(text)
        if self.terminal is not None:
            self.terminal.write(text)
        return len(text)

    def flush(self) -> None:
        if self.terminal is not None:
            self.terminal.flush()

    def isatty(self) -> bool:
        return False


def _stream_handlers(streams: tuple[Any, ...]) -> list[logging.StreamHandler]:
    """Every logging handler that writes to one of ``streams`` (root, torch's own, any library's)."""
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    handlers = {id(h): h for logger in loggers for h in logger.handlers}
    return [
        h for h in handlers.values()
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        and any(h.stream is stream for stream in streams)
    ]  # fmt: skip


def _fd_backed(stream: Any, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, ValueError, io.UnsupportedOperation, OSError):
        return False


@contextlib.contextmanager
def _native_output(buffer: io.StringIO) -> Iterator[TextIO | None]:
    """Point file descriptors 1 and 2 (where C++ toolchains write) at a temporary file whose text is appended to
    ``buffer`` at the end; yield a stream on the original stderr for our own lines (None: stderr is not fd 2,
    e.g. under click's test runner, and nothing is redirected)."""
    if not (_fd_backed(sys.stderr, 2) and _fd_backed(sys.stdout, 1)):
        yield None
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = open(os.dup(saved[2]), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            yield terminal
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            for fd in (1, 2):
                os.dup2(saved[fd], fd)
                os.close(saved[fd])
            terminal.close()
            sink.seek(0)
            native = sink.read().decode("utf-8", errors="replace")
            if native:
                buffer.write("---- output of native toolchain code (file descriptors 1 and 2) ----\n" + native)


@contextlib.contextmanager
def capture_log(show: bool = False) -> Iterator[io.StringIO]:
    """While the block runs, everything but ``progress.echo`` lines goes only to the returned buffer (``show``:
    to the terminal as well); ``echo`` lines go to both. Our stdout stays clean for the artifact path."""
    buffer = io.StringIO()
    before = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    native = contextlib.nullcontext(None) if show else _native_output(buffer)  # -v: native output as it comes
    with native as native_terminal:
        terminal = native_terminal or sys.stderr
        sink = _Sink(buffer, terminal if show else None)
        handlers = _stream_handlers(before)
        previous = [h.setStream(sink) for h in handlers]
        try:
            with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink), echo_to(terminal, buffer):
                yield buffer
        finally:
            for handler, stream in zip(handlers, previous, strict=True):
                handler.setStream(stream)
