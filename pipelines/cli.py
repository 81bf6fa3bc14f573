"""`leukoflow`: one CLI over every step. Each subcommand lives beside the code it runs."""

from __future__ import annotations

import logging
import sys

from pipelines.lazy_cli import LazyGroup

DATA_COMMANDS = {
    "validate": "components.validate.cli:app",
    "dedup": "components.dedup.cli:app",
    "preprocess": "components.preprocess.cli:app",
    "split": "components.split.cli:app",
}

COMMANDS = {
    "data": "pipelines.cli:data",
    "train": "components.train.cli:app",
    "evaluate": "components.evaluate.cli:app",
    "promote": "components.promote.cli:promote_app",
    "registry": "components.promote.cli:registry_app",
    "rollout": "components.promote.cli:rollout_app",
    "serve": "pipelines.serve_cli:serve_app",
    "predict": "serving.predict:app",
    "monitor": "monitoring.cli:app",
    "pipeline": "pipelines.pipeline_cli:app",
    "report": "pipelines.report:app",
    "status": "pipelines.status:app",
    "cases": "components.cases.cli:app",
}

CONTEXT = {"help_option_names": ["-h", "--help"]}

data = LazyGroup(
    name="data",
    lazy=DATA_COMMANDS,
    help="Data steps: validate, dedup, preprocess, split.",
    context_settings=CONTEXT,
)

app = LazyGroup(
    name="leukoflow",
    lazy=COMMANDS,
    help="Leukemia blood-smear classification: data, training, promotion, serving, monitoring.",
    context_settings=CONTEXT,
)


def main() -> None:
    """Console entry point; logs go to stderr so `--json` output stays clean.

    TensorFlow's INFO lines are off unless TF_CPP_MIN_LOG_LEVEL says otherwise (warnings and errors stay),
    and its start-up lines that logging levels cannot reach are filtered (pipelines/tf_noise.py).
    """
    import os

    from pipelines.tf_noise import filter_stderr

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    filter_stderr()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app(obj={"local_runner": _run_local})


def _run_local(**kwargs) -> dict:
    """The local pipeline runner, handed down to `leukoflow monitor drift --trigger` (monitoring cannot import it)."""
    from pipelines.local import run_local

    return run_local(**kwargs)


if __name__ == "__main__":
    main()
