"""The run's console lines come from the runner's stream: step starts and ends, epochs, and no TensorFlow noise."""

from __future__ import annotations

import io
import json

from pipelines.progress import RunOutput


def _feed(output: RunOutput, text: str) -> None:
    for line in text.splitlines(keepends=True):
        output.write(line)


def _train_task(root, model="cnn") -> str:
    (root / "executor_output.json").write_text(
        json.dumps(
            {
                "parameterValues": {"Output": 0.9},
                "artifacts": {"metrics": {"artifacts": [{"metadata": {"val_accuracy": 0.9, "epochs_run": 6.0}}]}},
            }
        )
    )
    spec = {
        "inputs": {"parameterValues": {"model_name": model}},
        "outputs": {"outputFile": str(root / "executor_output.json")},
    }
    epochs = "".join(
        f"    Epoch {e}/6\n    5/5 - 1s - accuracy: 0.5 - loss: 1.0 - val_accuracy: 0.{e}000 - val_loss: 1.{e}\n"
        for e in range(1, 7)
    )
    return (
        "12:00:00.000 - INFO - Executing task \x1b[96m'train-op'\x1b[0m\n"
        "    [KFP Executor 2026 INFO]: Got executor_input:\n" + json.dumps(spec, indent=4) + "\n"
        "    W0000 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n"
        "    E0000 00:00:1.1 6554 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
        + epochs
        + "12:00:09.000 - INFO - Task \x1b[96m'train-op'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
    )


def test_a_training_step_is_a_few_lines_and_the_log_keeps_everything(tmp_path):
    log, console = io.StringIO(), io.StringIO()
    output = RunOutput(log, console, gpu=False, clock=lambda: 100.0)
    _feed(output, _train_task(tmp_path))
    output.finish()
    lines = [line.split("] ", 1)[1] for line in console.getvalue().splitlines()]
    assert lines == [
        "train cnn          started",
        "train cnn          epoch 2/6: val accuracy 0.2000, val loss 1.2000",
        "train cnn          epoch 4/6: val accuracy 0.4000, val loss 1.4000",
        "train cnn          epoch 6/6: val accuracy 0.6000, val loss 1.6000",
        "train cnn          ok in 0.0 s: val accuracy 0.9000 after 6 epochs",
    ]
    assert '"model_name": "cnn"' in log.getvalue() and "Epoch 5/6" in log.getvalue()
    assert "cuInit" not in log.getvalue() and "dropped 2 TensorFlow start-up lines" in log.getvalue()
    assert output.steps == [
        {
            "step": "train",
            "model": "cnn",
            "status": "ok",
            "wall_time_s": 0.0,
            "figure": "val accuracy 0.9000 after 6 epochs",
        }
    ]


def test_a_small_validation_loss_keeps_its_exponent(tmp_path):
    console = io.StringIO()
    output = RunOutput(io.StringIO(), console, gpu=False, clock=lambda: 100.0)
    task = _train_task(tmp_path).replace("val_loss: 1.6", "val_loss: 9.0189e-04")
    _feed(output, task.replace("val_accuracy: 0.6000", "val_accuracy: 1.0000"))
    assert "epoch 6/6: val accuracy 1.0000, val loss 9.02e-04" in console.getvalue()


def test_cuda_errors_stay_where_a_gpu_exists(tmp_path):
    log = io.StringIO()
    output = RunOutput(log, io.StringIO(), gpu=True)
    _feed(output, _train_task(tmp_path))
    assert "failed call to cuInit" in log.getvalue()


def test_a_step_that_never_ends_is_reported_failed_with_its_last_lines(tmp_path):
    console = io.StringIO()
    output = RunOutput(io.StringIO(), console, gpu=False)
    _feed(output, "Executing task 'split-op'\n    Traceback (most recent call last):\n    ValueError: no rows\n")
    assert output.finish("RuntimeError: Task 'split-op' failed") == ["split"]
    text = console.getvalue()
    assert "split              FAILED in" in text and "  | ValueError: no rows" in text


def test_a_skipped_promotion_is_one_line():
    console = io.StringIO()
    output = RunOutput(io.StringIO(), console, gpu=False)
    output.write("12:00:00.000 - INFO - Skipping conditional task condition-2 (condition evaluated to False)\n")
    assert console.getvalue().split("] ", 1)[1] == "promote            skipped (condition evaluated to False)\n"


def test_the_cli_stderr_filter_drops_cuda_probes_only_without_a_gpu_and_keeps_errors():
    """What `leukoflow` does to its own stderr (and its children's): C++ writes to fd 2 go through the filter."""
    import os
    import subprocess
    import sys

    from pipelines.tf_noise import gpu_present

    script = (
        "import os; from pipelines.tf_noise import filter_stderr; filter_stderr(); "
        "os.write(2, b'E0000 00:00:1.1 6554 cuda_platform.cc:52] failed call to cuInit: INTERNAL\\n'); "
        "os.write(2, b'W0000 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\\n'); "
        "os.write(2, b'E0000 00:00:1.2 6554 some_op.cc:1] a real error\\n'); raise SystemExit('exit message')"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("_LEUKOFLOW") and k != "LEUKOFLOW_TF_NOISE"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert "a real error" in proc.stderr and "exit message" in proc.stderr
    assert "cpu_feature_guard" not in proc.stderr
    assert ("failed call to cuInit" in proc.stderr) == gpu_present()
