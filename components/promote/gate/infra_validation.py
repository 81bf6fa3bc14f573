"""Infra validation: load the candidate in the serving layer and send it real requests before promotion.

Like TFX's InfraValidator: the exported SavedModel is loaded with `components.servable.Servable` (the same
loader the server uses), its warmup file is replayed, and a few real test images go through
`serving_default` (and `classify` when exported). Probabilities must be finite, in [0, 1], sum to 1,
have shape [N, 4], and the label must be the arg-max class.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from components import domain

log = logging.getLogger(__name__)

SUM_TOLERANCE = 1e-3


class InfraValidationError(RuntimeError):
    """The model does not behave as the serving contract requires."""


def test_images(split_dir: str | Path | None, limit: int = 8) -> list[bytes]:
    """Up to `limit` encoded images of the test split (TFRecord shards, else split.csv paths)."""
    if split_dir is None:
        return []
    split_dir = Path(split_dir)
    out: list[bytes] = []
    if list((split_dir / "test").glob("*.tfrecord")):
        from components import records

        for ex in records.iter_examples(split_dir / "test"):
            out.append(ex["encoded"])
            if len(out) >= limit:
                return out
    csv = split_dir / "split.csv"
    if not out and csv.is_file():
        import pandas as pd

        df = pd.read_csv(csv)
        for p in df.loc[df["split"] == "test", "path"]:
            if Path(p).is_file():
                out.append(Path(p).read_bytes())
            if len(out) >= limit:
                break
    return out


def _check_outputs(probs: np.ndarray, labels: np.ndarray | None, n: int, where: str) -> list[str]:
    """Raise on the first broken output; return the checks that passed."""
    if probs.shape != (n, domain.NUM_CLASSES):
        raise InfraValidationError(
            f"{where}: probabilities have shape {list(probs.shape)}, expected [{n}, {domain.NUM_CLASSES}]"
        )
    if not np.all(np.isfinite(probs)):
        raise InfraValidationError(f"{where}: probabilities are not finite")
    sums = probs.sum(axis=1)
    worst = float(np.max(np.abs(sums - 1.0)))
    if worst > SUM_TOLERANCE:
        raise InfraValidationError(f"{where}: probabilities do not sum to 1 (off by up to {worst:.4f})")
    if probs.min() < -SUM_TOLERANCE or probs.max() > 1 + SUM_TOLERANCE:
        raise InfraValidationError(
            f"{where}: probabilities outside [0, 1] (min {probs.min():.4f}, max {probs.max():.4f})"
        )
    checks = [
        f"{where}: probabilities [{n}, {domain.NUM_CLASSES}], finite, in [0, 1], sum to 1 (max error {worst:.1e})"
    ]
    if labels is not None:
        decoded = [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(labels).reshape(-1)]
        if len(decoded) != n:
            raise InfraValidationError(f"{where}: {len(decoded)} labels for {n} images")
        expected = [domain.CLASS_NAMES[i] for i in probs.argmax(axis=1)]
        if decoded != expected:
            raise InfraValidationError(f"{where}: labels {decoded} are not the arg-max classes {expected}")
        checks.append(f"{where}: labels are the arg-max classes")
    return checks


def _classify_inputs(images: list[bytes]) -> np.ndarray:
    import tensorflow as tf

    examples = [
        tf.train.Example(
            features=tf.train.Features(
                feature={"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[img]))}
            )
        ).SerializeToString()
        for img in images
    ]
    return np.array(examples, dtype=object)


def validate(saved_model_dir: str | Path, images: list[bytes], require_warmup: bool = True) -> dict[str, Any]:
    """Run the checks; returns {"ok", "reason", "checks", "warmup_records", "requests"} (never raises for model faults)."""
    from components.servable import Servable

    checks: list[str] = []
    warmup_count = 0
    try:
        servable = Servable.load(saved_model_dir)
        checks.append(f"loaded with components.servable.Servable ({', '.join(sorted(servable.signatures))})")
        sig = servable.signature("serving_default")
        if set(sig.inputs) != {"images"} or not {"probabilities", "label"} <= set(sig.outputs):
            raise InfraValidationError(
                f"serving_default has inputs {sorted(sig.inputs)} and outputs {sorted(sig.outputs)}; "
                "expected input images and outputs probabilities, label"
            )
        warmup_count = servable.warmup()
        if require_warmup and warmup_count == 0:
            raise InfraValidationError("no warmup records in assets.extra/tf_serving_warmup_requests")
        checks.append(f"replayed {warmup_count} warmup record(s)")
        if not images:
            raise InfraValidationError("no test images to send")
        out = servable.run("serving_default", {"images": np.array(images, dtype=object)})
        checks += _check_outputs(np.asarray(out["probabilities"]), out.get("label"), len(images), "serving_default")
        if "classify" in servable.signatures:
            res = servable.run("classify", {"inputs": _classify_inputs(images)})
            checks += _check_outputs(np.asarray(res["scores"]), None, len(images), "classify")
            if not np.allclose(res["scores"], out["probabilities"], atol=1e-4):
                raise InfraValidationError("classify scores differ from serving_default probabilities")
            checks.append("classify scores match serving_default")
    except Exception as exc:  # any failure to load or answer is a rejection, reported with its cause
        reason = str(exc) if isinstance(exc, InfraValidationError) else f"{type(exc).__name__}: {exc}"
        log.warning("infra validation failed for %s: %s", saved_model_dir, reason)
        return {
            "ok": False,
            "reason": reason,
            "checks": checks,
            "warmup_records": warmup_count,
            "requests": len(images),
        }
    return {
        "ok": True,
        "reason": f"{len(images)} test image(s) and {warmup_count} warmup record(s) answered correctly",
        "checks": checks,
        "warmup_records": warmup_count,
        "requests": len(images),
    }


def serving_predictions(saved_model_dir: str | Path, images: list[bytes], batch_size: int = 32) -> np.ndarray:
    """Class indices predicted through serving_default (used to re-evaluate on one test split)."""
    from components.servable import Servable

    servable = Servable.load(saved_model_dir)
    preds = []
    for i in range(0, len(images), batch_size):
        out = servable.run("serving_default", {"images": np.array(images[i : i + batch_size], dtype=object)})
        preds.append(np.asarray(out["probabilities"]).argmax(axis=1))
    return np.concatenate(preds) if preds else np.zeros(0, dtype=int)
