"""What a local pipeline run shows an operator: one line per step start and end, compact epochs, the full log in a file.

KFP's local runner streams every task's output (its executor-input JSON, local-runner warnings, TensorFlow's
start-up chatter) through the parent's `sys.stdout`, from one thread per running task. `RunOutput` stands
in for `sys.stdout`/`sys.stderr` during the run: every line goes to the run's log file
(but TensorFlow's start-up chatter, see pipelines/tf_noise.py), and the lines that
mark a step's start, end and training epochs become one short console line each, with the step's key
figure read from its `executor_output.json`. Lines are attributed to tasks by the thread that writes
them, which is how the runner runs tasks in parallel (ParallelFor).
"""

from __future__ import annotations

import collections
import io
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from components.home import display_text
from pipelines.tf_noise import gpu_present, is_noise

EPOCH_LINES_PER_FIT = 3  # progress lines per model per Keras fit; a run of 3 models stays within ~50 lines
TAIL_LINES = 15  # lines of a failed step shown on the console

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXECUTING = re.compile(r"Executing task '([\w.-]+)'")
_FINISHED = re.compile(r"Task '([\w.-]+)' finished with status (\w+)")
_SKIPPED = re.compile(r"Skipping (?:conditional )?task ([\w.-]+)")
_EPOCH = re.compile(r"^Epoch (\d+)/(\d+)$")
_NUMBER = r"(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"  # Keras writes small losses as 9.0189e-04
_EPOCH_END = re.compile(r"^\d+/\d+ - .*\bval_accuracy: " + _NUMBER)
_VAL_LOSS = re.compile(r"\bval_loss: " + _NUMBER)


def plain(text: str) -> str:
    """`text` without the runner's ANSI colours."""
    return _ANSI.sub("", text)


def step_name(task: str) -> str:
    """`validate-op` -> `validate`; the runner's group tasks by what they hold."""
    if task.startswith("condition-"):  # the pipeline's conditions (gate passed, promotion enabled) guard promotion
        return "promote"
    if task.startswith("for-loop-"):
        return "train and evaluate"
    return task[:-3] if task.endswith("-op") else task


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and digits == 0 else f"{value:.{digits}f}"
    return str(value)


def _metadata(output: dict) -> dict[str, dict]:
    return {
        name: (a.get("artifacts") or [{}])[0].get("metadata") or {}
        for name, a in (output.get("artifacts") or {}).items()
    }


def key_figure(task: str, output: dict) -> str:
    """The one figure worth reading when `task` ends, from its executor_output.json."""
    md, params = _metadata(output), output.get("parameterValues") or {}
    m = md.get("metrics", {})
    n = lambda v: _fmt(float(v), 0) if isinstance(v, (int, float)) else str(v)  # noqa: E731
    if task == "validate-op":
        return (
            f"{n(m['images'])} images: {n(m['valid'])} valid, {n(m['quarantined'])} quarantined, "
            f"{n(m['failed_expectations'])} failed expectations"
        )
    if task == "dedup-op":
        return (
            f"{n(m['images'])} in, {n(m['kept'])} kept (duplicate groups: {n(m.get('exact_groups', 0))} exact, "
            f"{n(m.get('near_groups', 0))} near; label conflicts: {n(m.get('conflict_groups', 0))})"
        )
    if task == "preprocess-op":
        shards = md.get("shards", {})
        return f"{n(shards['count'])} images at {n(shards['image_size'])} px"
    if task == "split-op":
        return f"train {n(m['train_images'])}, val {n(m['val_images'])}, test {n(m['test_images'])}"
    if task == "train-op":
        return f"val accuracy {_fmt(m['val_accuracy'])} after {n(m['epochs_run'])} epochs"
    if task == "evaluate-op":
        return f"test accuracy {_fmt(m['accuracy'])}, macro-F1 {_fmt(m['macro_f1'])}"
    if task == "reference-op":
        return f"reference features of {params['Output']} training images"
    if task == "gate-op":
        gate = md.get("gate", {})  # the reason follows in the run's summary
        return f"pass, promote {gate.get('model')}" if gate.get("promote") else "hold: nothing to promote"
    if task == "promote-op":
        promotion = md.get("promotion", {})
        return f"{promotion.get('model')} is version {params['version']} ({promotion.get('label')})"
    return ""


@dataclass
class _Task:
    name: str
    started: float
    model: str | None = None
    root: Path | None = None
    announced: bool = False
    ended: bool = False
    epoch: tuple[int, int] | None = None
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    executor_input: list[str] | None = None  # lines of the executor-input JSON while it is being printed

    @property
    def label(self) -> str:
        return f"{step_name(self.name)} {self.model}" if self.model else step_name(self.name)


def _loss(value: float) -> str:
    """Four decimals, or two significant digits in scientific notation below 0.001 (not "0.0009" or "9.0189")."""
    return f"{value:.4f}" if value >= 1e-3 or value == 0 else f"{value:.2e}"


class RunOutput(io.TextIOBase):
    """A stand-in for sys.stdout/sys.stderr during a local run (see the module docstring)."""

    def __init__(
        self,
        log: TextIO,
        console: TextIO,
        verbose: bool = False,
        gpu: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.log, self.console, self.verbose = log, console, verbose
        self.gpu = gpu_present() if gpu is None else gpu
        self.clock = clock
        self.started = clock()
        self.dropped = 0
        self.steps: list[dict[str, Any]] = []  # each ended step: name, model, status, wall_time_s, figure
        self._lock = threading.RLock()
        self._partial: dict[int, str] = {}
        self._tasks: dict[int, _Task] = {}
        self._skipped: list[str] = []

    # ------------------------------------------------------------- the stream
    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        with self._lock:
            thread = threading.get_ident()
            buffered = self._partial.pop(thread, "") + text
            *lines, rest = buffered.split("\n")
            if rest:
                self._partial[thread] = rest
            for line in lines:
                self._line(thread, line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self.log.flush()
            self.console.flush()

    # ------------------------------------------------------------- lines
    def say(self, text: str) -> None:
        """A console line (also in the log), prefixed with the time since the run started."""
        elapsed = int(self.clock() - self.started)
        line = f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}"
        self.log.write(f"leukoflow: {line}\n")
        self.console.write(display_text(line) + "\n")
        self.console.flush()

    def _line(self, thread: int, raw: str) -> None:
        line = plain(raw).rstrip()
        text = line.strip()
        if is_noise(text, self.gpu):  # TensorFlow start-up lines (pipelines/tf_noise.py)
            self.dropped += 1
            return
        self.log.write(line + "\n")
        if self.verbose:
            self.console.write(line + "\n")
        task = self._tasks.get(thread)
        if match := _EXECUTING.search(text):
            self._tasks[thread] = _Task(match.group(1), self.clock())
            return
        if match := _FINISHED.search(text):
            if task and task.name == match.group(1) and not task.ended:
                self._end(task, "ok" if match.group(2) == "SUCCESS" else "FAILED")
            return
        if match := _SKIPPED.search(text):
            name = match.group(1)
            if "upstream" in text:  # after a failure: named once, in finish()
                if step_name(name) not in self._skipped:
                    self._skipped.append(step_name(name))
                return
            self.say(f"{step_name(name):<18} skipped ({text.split(name, 1)[1].strip(' :()') or 'condition false'})")
            return
        if task is None or task.ended:
            return
        if task.executor_input is not None:
            self._collect_executor_input(task, text)
            return
        if text.endswith("Got executor_input:"):
            task.executor_input = []
            return
        if text:
            task.tail.append(text)
        if match := _EPOCH.match(text):
            task.epoch = (int(match.group(1)), int(match.group(2)))
        elif (match := _EPOCH_END.match(text)) and task.epoch:
            epoch, total = task.epoch
            every = max(1, math.ceil(total / EPOCH_LINES_PER_FIT))
            if epoch % every == 0 or epoch == total:
                loss = _VAL_LOSS.search(text)
                self.say(
                    f"{task.label:<18} epoch {epoch}/{total}: val accuracy {float(match.group(1)):.4f}"
                    + (f", val loss {_loss(float(loss.group(1)))}" if loss else "")
                )

    def _collect_executor_input(self, task: _Task, text: str) -> None:
        task.executor_input.append(text)
        if text != "}" and len(task.executor_input) < 20_000:
            return
        try:
            spec = json.loads("\n".join(task.executor_input))
        except json.JSONDecodeError:
            if len(task.executor_input) < 20_000:
                return  # a nested "}" line: keep collecting
            spec = {}
        task.executor_input = None
        inputs = spec.get("inputs") or {}
        # train names its model; evaluate reads one trained model; the gate reads them all (no single model).
        models = {
            a.get("metadata", {}).get("model")
            for art in (inputs.get("artifacts") or {}).values()
            for a in art.get("artifacts", [])
        } - {None}
        task.model = (inputs.get("parameterValues") or {}).get("model_name") or (
            models.pop() if len(models) == 1 else None
        )
        output_file = (spec.get("outputs") or {}).get("outputFile")
        task.root = Path(output_file).parent if output_file else None
        self._announce(task)

    def _announce(self, task: _Task) -> None:
        if not task.announced:
            task.announced = True
            self.say(f"{task.label:<18} started")

    def _end(self, task: _Task, status: str) -> None:
        self._announce(task)
        task.ended = True
        wall = self.clock() - task.started
        figure = ""
        if status == "ok" and task.root is not None:
            try:
                figure = key_figure(task.name, json.loads((task.root / "executor_output.json").read_text()))
            except (
                OSError,
                ValueError,
                KeyError,
                TypeError,
                AttributeError,
            ) as exc:  # a figure is never worth a failed run
                logging.getLogger(__name__).debug("no key figure for %s: %s", task.name, exc)
        self.steps.append(
            {
                "step": step_name(task.name),
                "model": task.model,
                "status": status,
                "wall_time_s": round(wall, 1),
                "figure": figure,
            }
        )
        self.say(f"{task.label:<18} {status} in {wall:.1f} s" + (f": {figure}" if figure else ""))
        if status != "ok":
            self.console.write(f"  last lines of {task.label}:\n")
            for line in task.tail:
                self.console.write(f"  | {display_text(line)}\n")

    def finish(self, error: str | None = None) -> list[str]:
        """Close the run: steps still running when the runner raised have failed. Returns the failed steps' labels."""
        with self._lock:
            for thread, rest in list(self._partial.items()):
                self._line(thread, rest)
            self._partial.clear()
            for task in self._tasks.values():
                if not task.ended and error is not None:
                    self._end(task, "FAILED")
            if self._skipped:
                self.say(f"not run after the failure: {', '.join(self._skipped)}")
            if self.dropped:
                self.log.write(
                    f"leukoflow: dropped {self.dropped} TensorFlow start-up lines "
                    f"(oneDNN/CPU-feature notes{'' if self.gpu else ', CUDA probes on a machine without a GPU'})\n"
                )
            self.flush()
            return [
                f"{step['step']} {step['model']}" if step["model"] else step["step"]
                for step in self.steps
                if step["status"] != "ok"
            ]
