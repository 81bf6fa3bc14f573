"""The model's accuracy and referral targets through the served signature: the promoted model behind
`leukoflow serve`, over gRPC.

    .venv/bin/python -m checks.served_checks [--split DIR] [--external-dir DIR] [--batch 16]

Starts the project's own server (`leukoflow serve`, the Makefile's flags: the state home's models.config,
server batching, the request log on, its default) on free loopback ports, waits until the promoted model
is AVAILABLE, and sends through the official tensorflow-serving-api stubs (PredictionService/Predict, model
`leukemia`, label `stable`, signature `serving_default`), in batches:
- the test split's original encoded images (components/records.py, the latest pipeline run's split);
- every perturbation of components/evaluate/robustness.py (`perturbed_bytes`);
- both halves of the external smears (components/evaluate/trust.py `external_halves`).
Every figure is computed from the gRPC responses only, with the project's own definitions (classification
metrics, ECE over 15 bins, referral summary), and set beside the in-process figure the pipeline wrote into
the run's metrics.json for the same model. The clean test set also runs through the SavedModel in this
process, for the largest probability difference between the two paths.

The request log goes to a temporary folder (counted, then removed): the benchmark's perturbed and external
images must not enter the state home's log, which the drift monitor reads. Loopback only; bounded by a
per-call deadline and a total time limit; the server is stopped at the end, also on error or Ctrl-C.
Writes checks/results/served_checks.json and served_checks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.harness import REPO, start_server, stop_server

RESULTS = harness.results_dir(__file__)
DEFAULT_EXTERNAL = REPO.parent / "shared" / "external" / "chula-rbc-12" / "images"
LABEL = "stable"
SIGNATURE = "serving_default"
OUTPUTS = ("probabilities", "refer", "in_distribution", "prediction_set", "ood_score")
AVAILABLE = 30  # tensorflow.serving.ModelVersionStatus.State.AVAILABLE


class Deadline:
    """The total time limit: every step checks it, so the run is bounded however the server behaves."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise TimeoutError(f"time limit reached while {what}")


# ---------------------------------------------------------------- what to serve, what to compare with


def promoted_model() -> tuple[Path, int]:
    """The SavedModel directory the `stable` label points at in the state home's models.config."""
    from components import home, settings
    from components.promote.pusher.model_store import read_state

    config = home.models_config_path()
    state = read_state(config)
    if state is None or LABEL not in state.labels:
        raise SystemExit(
            f"no promoted model: {home.display(config)} has no {settings.SERVED_MODEL_NAME!r} "
            f"with a {LABEL!r} label; run `make run` first"
        )
    version = state.labels[LABEL]
    path = Path(state.base_path) / str(version)
    if not (path / "saved_model.pb").is_file():
        raise SystemExit(f"the {LABEL!r} version {version} has no SavedModel at {home.display(path)}")
    return path, version


def latest_run() -> Path:
    from components import home

    runs = [p for p in home.pipeline_root().iterdir() if p.is_dir()] if home.pipeline_root().is_dir() else []
    if not runs:
        raise SystemExit(f"no pipeline run under {home.display(home.pipeline_root())}; run `make run` first")
    return max(runs, key=lambda p: p.stat().st_mtime)


def run_containing(path: Path) -> Path | None:
    """The pipeline run folder that holds `path` (a split or a metrics.json), if it lies under the pipeline root."""
    from components import home

    root = home.pipeline_root().resolve()
    return next((parent for parent in path.resolve().parents if parent.parent == root), None)


def find_split(run: Path) -> Path:
    candidates = sorted(p for p in run.glob("**/split") if (p / "test").is_dir())
    if not candidates:
        from components import home

        raise SystemExit(f"no split with a test/ folder under {home.display(run)}; pass --split")
    return candidates[0]


def fingerprint(saved_model: Path) -> str | None:
    path = saved_model / "fingerprint.pb"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def find_metrics(run: Path, model: str) -> Path | None:
    """The run's evaluation metrics.json for `model` (the in-process figures)."""
    for path in sorted(run.glob("**/evaluation/metrics.json")):
        if json.loads(path.read_text()).get("model") == model:
            return path
    return None


# ---------------------------------------------------------------- the server


def wait_available(channel, model: str, deadline: Deadline, startup_s: float) -> int:
    """Poll ModelService/GetModelStatus until the `stable` version is AVAILABLE; returns that version."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    request.model_spec.version_label = LABEL
    end = time.monotonic() + min(startup_s, deadline.left())
    last = "no answer"
    while time.monotonic() < end:
        try:
            status = stub.GetModelStatus(request, timeout=10)
            for v in status.model_version_status:
                if v.state == AVAILABLE:
                    return int(v.version)
            last = ", ".join(f"version {v.version} state {v.state}" for v in status.model_version_status)
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        time.sleep(1.0)
    raise RuntimeError(f"model {model!r} label {LABEL!r} not AVAILABLE in time ({last})")


def signature_outputs(channel, model: str) -> list[str]:
    """GetModelMetadata: the output names of `serving_default` as the server lists them."""
    from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model
    request.model_spec.version_label = LABEL
    request.metadata_field.append("signature_def")
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=30)
    defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(defs)
    return sorted(defs.signature_def[SIGNATURE].outputs)


class Predictor:
    """PredictionService/Predict on encoded image bytes, in batches; returns the outputs evaluation reads."""

    def __init__(self, channel, model: str, batch: int, deadline: Deadline, call_timeout_s: float):
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self.model, self.batch, self.deadline, self.call_timeout_s = model, batch, deadline, call_timeout_s
        self.requests = self.images = 0
        self.versions: set[int] = set()  # the versions that answered (the label's)

    def __call__(self, images: list[bytes], what: str) -> dict[str, np.ndarray]:
        import tensorflow as tf
        from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorflow_serving.apis import predict_pb2

        parts: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(images), self.batch):
            self.deadline.check(f"sending {what}")
            chunk = images[i : i + self.batch]
            request = predict_pb2.PredictRequest()
            request.model_spec.name = self.model
            request.model_spec.version_label = LABEL
            request.model_spec.signature_name = SIGNATURE
            request.inputs["images"].CopyFrom(
                tensor_pb2.TensorProto(
                    dtype=types_pb2.DT_STRING,
                    tensor_shape=tensor_shape_pb2.TensorShapeProto(
                        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(chunk))]
                    ),
                    string_val=chunk,
                )
            )
            response = self.stub.Predict(request, timeout=min(self.call_timeout_s, max(self.deadline.left(), 1.0)))
            missing = [k for k in OUTPUTS if k not in response.outputs]
            if missing:
                raise RuntimeError(
                    f"the served {SIGNATURE} returned no {', '.join(missing)} (a model without calibration?)"
                )
            for key in OUTPUTS:
                parts.setdefault(key, []).append(tf.make_ndarray(response.outputs[key]))
            self.versions.add(int(response.model_spec.version.value))
            self.requests += 1
            self.images += len(chunk)
        return {k: np.concatenate(v) for k, v in parts.items()}


# ---------------------------------------------------------------- figures


def served_figures(
    clean: dict, labels: np.ndarray, perturbed: dict[str, dict], external: dict[str, dict], meta
) -> dict:
    """Every figure of the accuracy and referral targets from the gRPC outputs, with the evaluation's own definitions."""
    from components import domain
    from components.evaluate import trust
    from components.evaluate.metrics import classification_metrics
    from components.evaluate.robustness import SEPARATE_FLOOR, plausible
    from components.train import calibration

    probs = clean["probabilities"]
    cls = classification_metrics(labels, probs.argmax(axis=1))
    referral = trust.referral_summary(
        probs, labels, clean["refer"], clean["in_distribution"], clean["prediction_set"], meta.conformal_coverage
    )
    accuracy = {n: float((o["probabilities"].argmax(axis=1) == labels).mean()) for n, o in perturbed.items()}
    gated = {n: a for n, a in accuracy.items() if n in plausible()}
    worst = min(gated, key=gated.get) if gated else None
    figures = {
        "accuracy": cls["accuracy"],
        "macro_f1": cls["macro_f1"],
        "benign_recall": cls["per_class"][domain.CLASS_NAMES[0]]["recall"],
        "per_class": cls["per_class"],
        "confusion_matrix": cls["confusion_matrix"],
        "test_referral_rate": referral["test_referral_rate"],
        "ood_referral_rate": referral["ood_referral_rate"],
        "accepted_accuracy": referral["accepted_accuracy"],
        "ece": calibration.expected_calibration_error(probs, labels, calibration.ECE_BINS),
        "ece_before": calibration.expected_calibration_error(
            trust.uncalibrated(probs, meta.temperature or 1.0), labels, calibration.ECE_BINS
        ),
        "coverage": referral["coverage"],
        "mean_set_size": referral["mean_set_size"],
        "robustness": accuracy,
        "robustness_referred": {n: float(o["refer"].mean()) for n, o in perturbed.items()},
        "robustness_worst_name": worst,
        "robustness_worst": gated[worst] if worst else None,
        "grayscale": accuracy.get(SEPARATE_FLOOR[0]) if SEPARATE_FLOOR else None,
        "external": {},
    }
    for half, out in external.items():
        scores_in = trust.detection_scores(probs, clean["ood_score"], None)
        scores_out = trust.detection_scores(out["probabilities"], out["ood_score"], None)
        figures["external"][half] = {
            "images": int(len(out["refer"])),
            "referred": float(out["refer"].mean()),
            "out_of_distribution": float((~out["in_distribution"]).mean()),
            "confident_stage": float(
                (~out["refer"] & (out["probabilities"].max(axis=1) >= meta.low_confidence)).mean()
            ),
            "auroc": {name: trust.auroc(scores_in[name], scores_out[name]) for name in scores_in},
        }
    return figures


def in_process_figures(metrics: dict) -> dict:
    """The same figures as the pipeline's evaluation wrote them (in-process on the SavedModel)."""
    from components import domain

    referral, calibration = metrics.get("referral", {}), metrics.get("calibration", {})
    external = metrics.get("external", {})
    robustness = metrics.get("robustness", {})
    return {
        "accuracy": metrics.get("accuracy"),
        "macro_f1": metrics.get("macro_f1"),
        "benign_recall": metrics.get("per_class", {}).get(domain.CLASS_NAMES[0], {}).get("recall"),
        "test_referral_rate": referral.get("test_referral_rate"),
        "accepted_accuracy": referral.get("accepted_accuracy"),
        "ece": calibration.get("ece_after"),
        "ece_before": calibration.get("ece_before"),
        "coverage": referral.get("coverage"),
        "mean_set_size": referral.get("mean_set_size"),
        "robustness": robustness,
        "robustness_worst_name": metrics.get("robustness_worst_name"),
        "robustness_worst": metrics.get("robustness_worst"),
        "grayscale": robustness.get("grayscale"),
        "external": {
            h: {
                "referred": external[h].get("referred"),
                "images": external[h].get("images"),
                "auroc": external[h].get("auroc", {}),
            }
            for h in ("choose", "report")
            if h in external
        },
    }


def targets() -> list[tuple[str, str, str, Callable[[float], bool]]]:
    """(key, figure, target text, met?) for the model's accuracy and referral targets.

    Floors that the gate also enforces come from components/settings.py; the others are the product's
    targets (accuracy: clean accuracy, macro-F1, Benign recall; referral: accuracy of the accepted images).
    """
    from components import settings

    cov, tol = settings.CONFORMAL_COVERAGE, settings.GATE_COVERAGE_TOLERANCE
    return [
        ("accuracy", "clean accuracy", ">= 98.5%", lambda v: v >= 0.985),
        ("macro_f1", "macro-F1", ">= 0.985", lambda v: v >= 0.985),
        ("benign_recall", "Benign recall", ">= 0.98", lambda v: v >= 0.98),
        (
            "robustness_worst",
            "worst plausible perturbation",
            f">= {settings.GATE_MIN_ROBUST_ACCURACY:.0%}",
            lambda v: v >= settings.GATE_MIN_ROBUST_ACCURACY,
        ),
        (
            "grayscale",
            "grayscale",
            f">= {settings.GATE_MIN_GRAYSCALE_ACCURACY:.0%}",
            lambda v: v >= settings.GATE_MIN_GRAYSCALE_ACCURACY,
        ),
        (
            "test_referral_rate",
            "test referral",
            f"<= {settings.GATE_MAX_TEST_REFERRAL:.0%}",
            lambda v: v <= settings.GATE_MAX_TEST_REFERRAL,
        ),
        ("accepted_accuracy", "accuracy of accepted", ">= 99%", lambda v: v >= 0.99),
        ("ece", "ECE (15 bins)", f"<= {settings.GATE_MAX_ECE}", lambda v: v <= settings.GATE_MAX_ECE),
        (
            "coverage",
            "conformal coverage",
            f"{cov:.0%} +/- {tol * 100:.0f} points",
            lambda v: abs(v - cov) <= tol + 1e-12,
        ),
        (
            "external_report_referred",
            "external smears referred, report half",
            f">= {settings.GATE_MIN_OOD_DETECTION:.0%}",
            lambda v: v >= settings.GATE_MIN_OOD_DETECTION,
        ),
    ]


def rows(served: dict, reference: dict | None) -> list[dict]:
    """The comparison table: each figure through gRPC, in-process, their difference, its target."""
    from components.evaluate.robustness import PERTURBATIONS

    def pick(figs: dict | None, key: str):
        if figs is None:
            return None
        if key.startswith("external_"):
            _, half, field = key.split("_", 2)
            return figs.get("external", {}).get(half, {}).get(field)
        if key.startswith("perturbation:"):
            return figs.get("robustness", {}).get(key.split(":", 1)[1])
        return figs.get(key)

    checks = {key: (figure, text, met) for key, figure, text, met in targets()}
    names = {
        "ece_before": "ECE before temperature scaling",
        "mean_set_size": "mean prediction-set size",
        "external_choose_referred": "external smears referred, choose half",
    }
    keys = [
        "accuracy",
        "macro_f1",
        "benign_recall",
        "test_referral_rate",
        "accepted_accuracy",
        "ece",
        "ece_before",
        "coverage",
        "mean_set_size",
        "robustness_worst",
        "grayscale",
    ]
    keys += [f"perturbation:{n}" for n in PERTURBATIONS if n != "grayscale"]
    keys += ["external_choose_referred", "external_report_referred"]
    out = []
    for key in keys:
        value, ref = pick(served, key), pick(reference, key)
        figure, text, met = checks.get(key, (names.get(key, key.replace("perturbation:", "")), "", None))
        if key == "robustness_worst":
            figure += f" ({served.get('robustness_worst_name')})"
        out.append(
            {
                "key": key,
                "figure": figure,
                "grpc": value,
                "in_process": ref,
                "abs_diff": abs(value - ref) if value is not None and ref is not None else None,
                "target": text or None,
                "met": (bool(met(value)) if value is not None else False) if met else None,
            }
        )
    return out


# ---------------------------------------------------------------- report


def fmt(key: str, v) -> str:
    if v is None:
        return "n/a"
    if key in ("macro_f1", "benign_recall", "ece", "ece_before", "mean_set_size") or key.startswith("abs"):
        return f"{v:.4f}"
    return f"{v * 100:.2f}%"


def markdown(result: dict) -> str:
    lines = [
        "### The accuracy and referral targets through the served signature (gRPC)",
        "",
        f"`python -m checks.served_checks`, {result['when']}: `leukoflow serve` (server batching, request log on) on "
        f"the promoted {result['model']['name']} (version {result['model']['version']}, label `{LABEL}`), every image "
        f"sent as encoded bytes through PredictionService/Predict (`{SIGNATURE}`, batches of {result['batch']}): "
        f"{result['test_images']} test images of run `{result['run']}`, each of the {len(result['served']['robustness'])} "
        f"perturbations of components/evaluate/robustness.py, and the external smears "
        f"(`{result['external_dir']}`, {sum(h['images'] for h in result['served']['external'].values())} images) in both halves: "
        f"{result['grpc']['requests']} requests, {result['grpc']['images']} images in {result['grpc']['seconds']:.0f} s. "
        f"In-process: the run's `{result['metrics_file']}`"
        + (
            " (the same SavedModel: fingerprints match)."
            if result["model"]["same_as_run"]
            else " (WARNING: the promoted SavedModel's fingerprint differs from the evaluated one)."
        ),
        "",
        "| figure | gRPC | in-process (metrics.json) | abs diff | target | |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        key = r["key"]
        status = "" if r["met"] is None else ("met" if r["met"] else "**not met**")
        lines.append(
            f"| {r['figure']} | {fmt(key, r['grpc'])} | {fmt(key, r['in_process'])} | "
            f"{_abs_diff_cell(r)} | "
            f"{r['target'] or ''} | {status} |"
        )
    met = [r for r in result["rows"] if r["met"] is not None]
    lines += [
        "",
        f"Targets met: {sum(r['met'] for r in met)} of {len(met)}"
        + ("." if all(r["met"] for r in met) else f"; not met: {', '.join(r['figure'] for r in met if not r['met'])}."),
    ]
    p = result.get("probability_check")
    if p:
        lines.append(
            f"Clean test set, gRPC vs this process's `{SIGNATURE}` on the same SavedModel: max |probability "
            f"difference| {p['max_abs_probability_diff']:.2g}, max |ood_score difference| "
            f"{p['max_abs_ood_score_diff']:.2g}, top class differs on {p['top_class_differs']}, refer differs on "
            f"{p['refer_differs']} of {result['test_images']} images."
        )
    auroc = result["served"]["external"].get("report", {}).get("auroc", {})
    if auroc:
        lines.append(
            "AUROC test vs external report half, from the served outputs: "
            + ", ".join(f"{k} {v:.4f}" for k, v in auroc.items())
            + "."
        )
    lines.append(
        f"Request log (a temporary folder, not the state home's): {result['request_log_records']} records written."
    )
    return "\n".join(lines) + "\n"


def _abs_diff_cell(r: dict) -> str:
    return "n/a" if r["abs_diff"] is None else f"{r['abs_diff']:.2g}"


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m checks.served_checks",
        description="Serve the promoted model with `leukoflow serve` on loopback and measure the accuracy and referral "
        "targets through gRPC Predict (test split, every perturbation, the external smears), beside the "
        "pipeline's in-process figures. Writes checks/results/served_checks.{json,md}.",
    )
    parser.add_argument(
        "--split", help="split folder with a test/ shard directory (default: the latest pipeline run's)"
    )
    parser.add_argument(
        "--metrics",
        help="the in-process metrics.json to compare with (default: the latest run's, for the promoted model)",
    )
    parser.add_argument(
        "--external-dir",
        default=None,
        help="external smears folder (default: LEUKOFLOW_EXTERNAL_OOD_DIR, else ../shared/external/"
        "chula-rbc-12/images); 'none' skips them",
    )
    parser.add_argument("--batch", type=int, default=16, help="images per Predict request (default 16)")
    parser.add_argument(
        "--limit", type=int, default=0, help="send only the first N test images (a smoke check; 0: all)"
    )
    parser.add_argument(
        "--time-limit-s", type=float, default=1800, help="stop with an error after this long (default 1800)"
    )
    parser.add_argument(
        "--startup-s", type=float, default=300, help="wait this long for the server to serve (default 300)"
    )
    parser.add_argument("--call-timeout-s", type=float, default=120, help="deadline of one Predict call (default 120)")
    parser.add_argument(
        "--no-in-process",
        action="store_true",
        help="skip running the clean test set through the SavedModel in this process",
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only; write no results files")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.limit < 0:
        parser.error("--batch must be at least 1 and --limit at least 0")

    # SIGTERM (a supervisor, `timeout`) ends the run through the `finally` that stops the server.
    signal.signal(signal.SIGTERM, _interrupt)
    deadline = Deadline(args.time_limit_s)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from components import domain, home, model_metadata, records, settings

    model_dir, version = promoted_model()
    meta = model_metadata.read(model_dir)
    # The run the figures come from: the one holding --metrics or --split when given, else the latest.
    given = args.metrics or args.split
    run = (run_containing(Path(given)) if given else None) or latest_run()
    split = Path(args.split) if args.split else find_split(run)
    if not (split / "test").is_dir():
        parser.error(f"--split {split}: no test/ folder in it")
    metrics_path = Path(args.metrics) if args.metrics else find_metrics(run, meta.model)
    reference = json.loads(metrics_path.read_text()) if metrics_path else None
    same_as_run = bool(
        reference
        and reference.get("saved_model")
        and fingerprint(model_dir) == fingerprint(Path(reference["saved_model"]))
    )
    external_dir = args.external_dir or settings.EXTERNAL_OOD_DIR or str(DEFAULT_EXTERNAL)
    external_dir = None if external_dir.lower() == "none" else Path(external_dir)

    from components.evaluate import trust
    from components.evaluate.robustness import PERTURBATIONS, perturbed_bytes

    examples = list(records.iter_examples(split / "test"))
    if args.limit:
        examples = examples[: args.limit]
    encoded = [e["encoded"] for e in examples]
    labels = np.array([e["label"] for e in examples], dtype=np.int64)
    halves = trust.external_halves(external_dir) if external_dir else {}
    print(
        f"promoted {meta.model} version {version} ({home.display(model_dir)}); run {run.name}; "
        f"{len(encoded)} test images; {sum(len(v) for v in halves.values())} external images",
        flush=True,
    )

    import grpc

    workdir = Path(tempfile.mkdtemp(prefix="served-checks-"))
    request_log = workdir / "requests"
    proc = None
    channel = None
    try:
        started = time.monotonic()
        # The Makefile's `make serve` flags: server batching, the models.config polled for promotions.
        proc, grpc_port, _ = start_server(
            home.models_config_path(),
            workdir / "server.log",
            request_log=request_log,
            batching=True,
            extra_flags=("--model_config_file_poll_wait_seconds", "5"),
            startup_s=min(args.startup_s, deadline.left()),
        )
        limit = 64 * 1024 * 1024
        channel = grpc.insecure_channel(
            f"127.0.0.1:{grpc_port}",
            options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)],
        )
        served_version = wait_available(channel, settings.SERVED_MODEL_NAME, deadline, args.startup_s)
        outputs = signature_outputs(channel, settings.SERVED_MODEL_NAME)
        print(
            f"serving version {served_version} on 127.0.0.1:{grpc_port} after {time.monotonic() - started:.0f} s; "
            f"{SIGNATURE} outputs: {', '.join(o for o in outputs if not o.startswith('feature_'))} "
            f"+ {sum(o.startswith('feature_') for o in outputs)} feature_*",
            flush=True,
        )
        predict = Predictor(channel, settings.SERVED_MODEL_NAME, args.batch, deadline, args.call_timeout_s)

        begin = time.monotonic()
        clean = predict(encoded, "the clean test images")
        print(f"clean: accuracy {(clean['probabilities'].argmax(axis=1) == labels).mean():.4f}", flush=True)
        rgb = [domain.load_rgb(b) for b in encoded]
        perturbed = {}
        for name in PERTURBATIONS:
            deadline.check(f"perturbing {name}")
            perturbed[name] = predict(perturbed_bytes(rgb, name), name)
            print(
                f"{name}: accuracy {(perturbed[name]['probabilities'].argmax(axis=1) == labels).mean():.4f}", flush=True
            )
        external = {
            half: predict([p.read_bytes() for p in paths], f"external {half} half") for half, paths in halves.items()
        }
        grpc_seconds = time.monotonic() - begin
    finally:
        if channel is not None:
            channel.close()
        if proc is not None:
            stop_server(proc)
            print(f"server stopped (exit {proc.returncode})", flush=True)
    records_logged = (
        sum(len(p.read_bytes().splitlines()) for p in request_log.glob("*.jsonl*")) if request_log.is_dir() else 0
    )
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)

    probability_check = None
    if not args.no_in_process:
        import tensorflow as tf

        serve = tf.saved_model.load(str(model_dir)).signatures[SIGNATURE]
        local: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(encoded), 32):  # the evaluation's batch size
            out = serve(images=tf.constant(encoded[i : i + 32]))
            for key in OUTPUTS:
                local.setdefault(key, []).append(out[key].numpy())
        mine = {k: np.concatenate(v) for k, v in local.items()}
        probability_check = {
            "max_abs_probability_diff": float(np.abs(mine["probabilities"] - clean["probabilities"]).max()),
            "max_abs_ood_score_diff": float(np.abs(mine["ood_score"] - clean["ood_score"]).max()),
            "top_class_differs": int((mine["probabilities"].argmax(1) != clean["probabilities"].argmax(1)).sum()),
            "refer_differs": int((mine["refer"] != clean["refer"]).sum()),
        }

    served = served_figures(clean, labels, perturbed, external, meta)
    reference_figs = in_process_figures(reference) if reference and not args.limit else None
    result = {
        "when": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "host": harness.host_facts(),
        "model": {
            "name": meta.model,
            "version": version,
            "served_version": served_version,
            "path": harness.shown_path(model_dir),
            "same_as_run": same_as_run,
        },
        "run": run.name,
        "split": harness.shown_path(split),
        "metrics_file": harness.shown_path(metrics_path) if metrics_path else None,
        "external_dir": harness.shown_path(external_dir) if external_dir else None,
        "batch": args.batch,
        "test_images": len(encoded),
        "limit": args.limit or None,
        "signature_outputs": outputs,
        "grpc": {
            "requests": predict.requests,
            "images": predict.images,
            "answered_by_versions": sorted(predict.versions),
            "seconds": round(grpc_seconds, 1),
        },
        "request_log_records": records_logged,
        "served": served,
        "in_process": reference_figs,
        "probability_check": probability_check,
    }
    result["rows"] = rows(served, reference_figs)
    text = markdown(result)
    print()
    print(text)
    if not args.no_write:
        from components import atomic_files

        RESULTS.mkdir(parents=True, exist_ok=True)
        atomic_files.write_json(RESULTS / "served_checks.json", result)
        atomic_files.write_text(RESULTS / "served_checks.md", text)
        print(f"wrote {home.display(RESULTS / 'served_checks.json')} and {home.display(RESULTS / 'served_checks.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
