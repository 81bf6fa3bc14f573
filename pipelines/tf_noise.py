"""TensorFlow's start-up chatter, and how `leukoflow` keeps it off an operator's screen without hiding errors.

TensorFlow 2.21 writes its start-up lines (oneDNN and CPU-feature notes, and on a machine without a GPU
the CUDA driver probe: `failed call to cuInit`) from C++ before absl logging is initialised, so neither
TF_CPP_MIN_LOG_LEVEL nor CUDA_VISIBLE_DEVICES silences them. They are dropped by line instead: the
start-up notes always, the CUDA probe lines only where no GPU device exists, so on a GPU machine a CUDA
error stays visible. Nothing else is dropped.
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import shutil
import subprocess
import sys

STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "port.cc:153] oneDNN custom operations are on",
    "cpu_feature_guard.cc:",
    "To enable the following instructions:",
)
CPU_ONLY_NOISE = (
    "cudart_stub.cc:31] Could not find cuda drivers on your machine",
    "cuda_platform.cc:52] failed call to cuInit",
)

# Runs in a child so that a crash of the parent (an abort in C++) still gets its last lines through.
_FILTER = """
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the command; the filter ends at its EOF
signal.signal(signal.SIGTERM, signal.SIG_IGN)
markers = __MARKERS__
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    text = line.decode("utf-8", "replace")
    if not any(m in text for m in markers):
        out.write(line)
        out.flush()
"""


def gpu_present() -> bool:
    """True where an NVIDIA device node or `nvidia-smi` exists: there, CUDA messages are never dropped."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None


def markers(gpu: bool) -> tuple[str, ...]:
    return STARTUP_NOISE if gpu else STARTUP_NOISE + CPU_ONLY_NOISE


def is_noise(line: str, gpu: bool) -> bool:
    """A TensorFlow start-up line that says nothing on this machine."""
    return any(m in line for m in markers(gpu))


def filter_stderr() -> None:
    """Route this process's fd 2 (and its children's) through a filter child that drops `is_noise` lines.

    Off with LEUKOFLOW_TF_NOISE=show. At exit the original stderr is put back and the filter drained,
    so nothing printed before the exit arrives after it.
    """
    if os.environ.get("LEUKOFLOW_TF_NOISE") == "show" or os.environ.get("_LEUKOFLOW_STDERR_FILTERED"):
        return
    try:
        original = os.dup(2)
        read_end, write_end = os.pipe()
        child = subprocess.Popen(
            [sys.executable, "-S", "-c", _FILTER.replace("__MARKERS__", json.dumps(markers(gpu_present())))],
            stdin=read_end,
            stdout=original,
            stderr=original,
            close_fds=True,
        )
    except OSError:
        return  # no filter is better than no command
    os.close(read_end)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    os.environ["_LEUKOFLOW_STDERR_FILTERED"] = "1"  # children inherit the filtered fd 2: no filter of a filter

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # closes our end of the pipe: the filter sees EOF once children close theirs
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:  # a child process still holds the pipe; leave the filter to it
            pass

    atexit.register(restore)
