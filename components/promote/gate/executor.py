"""run_gate: the decision (TFX's Evaluator blessing) and the infra validation (TFX's InfraValidator).

Reads the candidates' metrics.json, the champion's record in the registry, and the chosen SavedModel; writes
only `decision.json` and `decision.md`. Nothing here touches the model store, models.config or the registry:
that is the pusher's (components/promote/pusher/), which acts on this decision.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from components import atomic_files
from components.promote import registry
from components.promote.gate import policy as gate_mod
from components.promote.gate.policy import Candidate, Decision, Policy

log = logging.getLogger(__name__)


def load_candidate(path: str | Path) -> Candidate:
    """An evaluation output (directory with metrics.json, or the metrics.json itself) as a Candidate."""
    path = Path(path)
    metrics_path = path / "metrics.json" if path.is_dir() else path
    if not metrics_path.is_file():
        raise FileNotFoundError(f"no metrics.json at {metrics_path}")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{metrics_path}: not valid JSON: {exc}") from exc
    cand = Candidate.from_metrics(metrics, source=str(metrics_path.parent))
    if not cand.saved_model or not (Path(cand.saved_model) / "saved_model.pb").is_file():
        local = metrics_path.parent / "saved_model"
        if (local / "saved_model.pb").is_file():
            cand.saved_model = str(local)
    return cand


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_hash(split_dir: str | Path | None) -> str | None:
    """sha256 of split.csv (the split manifest), or None without a split directory."""
    if split_dir is None:
        return None
    csv = Path(split_dir) / "split.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"no split.csv in {split_dir}")
    return sha256_file(csv)


def tree_hash(directory: str | Path) -> str:
    """sha256 over a directory's relative paths and contents (identifies a SavedModel)."""
    h = hashlib.sha256()
    root = Path(directory)
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def write_decision(decision: Decision, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    atomic_files.write_text(out / "decision.json", json.dumps(decision.to_dict(), indent=2, default=str))
    atomic_files.write_text(out / "decision.md", gate_mod.to_markdown(decision))
    return out / "decision.json", out / "decision.md"


def read_decision(path: str | Path) -> Decision:
    path = Path(path)
    path = path / "decision.json" if path.is_dir() else path
    return Decision.from_dict(json.loads(path.read_text()))


def _test_set(split_dir: str | Path) -> tuple[list[bytes], list[int]]:
    """Encoded test images and labels: the test TFRecord shards, else the files split.csv names."""
    from components import domain, records

    split_dir = Path(split_dir)
    images, labels = [], []
    if list((split_dir / "test").glob("*.tfrecord")):
        for ex in records.iter_examples(split_dir / "test"):
            images.append(ex["encoded"])
            labels.append(ex["label"])
    else:
        import pandas as pd

        df = pd.read_csv(split_dir / "split.csv")
        for path, label in df.loc[df["split"] == "test", ["path", "label"]].itertuples(index=False):
            if Path(path).is_file():
                images.append(Path(path).read_bytes())
                labels.append(domain.class_index(str(label)) if not str(label).isdigit() else int(label))
    if not images:
        raise FileNotFoundError(f"no test images in {split_dir}")
    return images, labels


def _serving_macro_f1(saved_model: str | Path, images: list[bytes], labels: list[int]) -> float:
    from sklearn.metrics import f1_score

    from components import domain
    from components.promote.gate.infra_validation import serving_predictions

    preds = serving_predictions(saved_model, images)
    return float(f1_score(labels, preds, average="macro", labels=list(range(domain.NUM_CLASSES)), zero_division=0))


def compare_with_champion(
    cand: Candidate,
    champion: dict[str, Any],
    cand_split: str | None,
    split_dir: str | Path | None,
    policy: Policy,
    cache: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The no-regression check on one test split: recorded figures if the split is the same, else re-evaluate both.

    `cache` keeps the champion's re-evaluated macro-F1 across candidates.
    """
    tags = champion["tags"]
    ch_split = tags.get("split_hash")
    cache = {} if cache is None else cache
    if cand_split and ch_split == cand_split and tags.get("macro_f1") is not None:
        ch_f1, cand_f1 = float(tags["macro_f1"]), float(cand.macro_f1)
        measured = f"the same test split {cand_split[:12]} (recorded metrics)"
    else:
        model_path = tags.get("model_path")
        why = (
            f"champion v{champion['version']} was evaluated on split {str(ch_split)[:12]}, "
            f"the candidates on {str(cand_split)[:12]}"
        )
        try:
            if split_dir is None or not model_path or not (Path(model_path) / "saved_model.pb").is_file():
                raise FileNotFoundError("no split directory or no champion model in the store")
            images, labels = _test_set(split_dir)
            if "champion" not in cache:
                log.info("%s: re-evaluating on %d test images through serving_default", why, len(images))
                cache["champion"] = _serving_macro_f1(model_path, images, labels)
            ch_f1 = cache["champion"]
            cand_f1 = _serving_macro_f1(cand.saved_model, images, labels)
        except Exception as exc:  # cannot compare: refuse rather than promote blind
            return {
                "ok": False,
                "reason": f"{why}, and they cannot be compared on one split ({exc}); promote "
                "manually with `leukoflow registry promote` after checking",
                "measured_on": None,
                "candidate_f1": None,
                "champion_f1": None,
                "delta": 0.0,
            }
        measured = (
            f"the candidates' test split {str(cand_split)[:12]} ({len(images)} images, champion and "
            "candidate re-evaluated through serving_default)"
        )
    ok, reason = gate_mod.check_regression(cand_f1, ch_f1, policy)
    return {
        "ok": ok,
        "reason": f"{cand.name}: {reason}",
        "measured_on": measured,
        "candidate_f1": cand_f1,
        "champion_f1": ch_f1,
        "delta": cand_f1 - ch_f1,
    }


def run_gate(
    candidates: list[str | Path],
    out_dir: str | Path,
    split_dir: str | Path | None = None,
    policy: Policy = Policy(),
    infra_images: int = 8,
    registry_uri: str | None = None,
) -> Decision:
    """Decide (floors, margin, cost, infra validation, champion); writes decision.json and decision.md."""
    from components.promote.gate import infra_validation

    cands = [load_candidate(p) for p in candidates]
    s_hash = split_hash(split_dir)
    if s_hash:
        for c in cands:
            c.split_hash = c.split_hash or s_hash
    else:
        hashes = {c.split_hash for c in cands if c.split_hash}
        s_hash = hashes.pop() if len(hashes) == 1 else None
    champion_info, regression = None, {}
    champ = registry.champion(uri=registry_uri)
    if champ is not None:
        t = champ["tags"]
        champion_info = {
            "version": champ["version"],
            "model": t.get("model"),
            "macro_f1": tag_float(t.get("macro_f1")),
            "split_hash": t.get("split_hash"),
            "model_path": t.get("model_path"),
        }
        cache: dict[str, float] = {}
        for c in cands:
            if gate_mod.floor_failures(c, policy):
                continue  # the floors already exclude it
            if (
                t.get("saved_model_sha256")
                and c.saved_model
                and Path(c.saved_model).is_dir()
                and t["saved_model_sha256"] == tree_hash(c.saved_model)
            ):
                regression[c.name] = {
                    "ok": False,
                    "reason": f"{c.name} is identical to the champion v{champ['version']}",
                    "measured_on": None,
                    "candidate_f1": None,
                    "champion_f1": None,
                    "delta": 0.0,
                }
            else:
                regression[c.name] = compare_with_champion(c, champ, s_hash, split_dir, policy, cache)
    checks = {name: (r["ok"], r["reason"]) for name, r in regression.items()}
    selection = gate_mod.select(cands, policy, checks if champ is not None else None)
    chosen = selection.chosen
    infra = None
    if chosen is not None:
        if not chosen.saved_model or not (Path(chosen.saved_model) / "saved_model.pb").is_file():
            infra = {"ok": False, "reason": f"no SavedModel at {chosen.saved_model}", "checks": []}
        else:
            images = infra_validation.test_images(split_dir, infra_images)
            infra = infra_validation.validate(chosen.saved_model, images or _warmup_only_images(chosen.saved_model))
    decision = gate_mod.decide(selection, policy, champion_info, regression or None, infra, s_hash)
    write_decision(decision, out_dir)
    log.info("gate: %s", decision.summary)
    return decision


def tag_float(v: Any) -> float | None:
    """A registry tag (a string) as a float; None when unset."""
    return None if v in (None, "") else float(v)


def _warmup_only_images(saved_model: str | Path) -> list[bytes]:
    """Without a split, send the warmup request's images as the test requests."""
    try:
        import tensorflow as tf

        from components.servable import Servable

        images: list[bytes] = []
        for entry in Servable(name="", version=0, path=Path(saved_model), signatures={}).warmup_records():
            if entry.WhichOneof("log_type") == "predict_log" and "images" in entry.predict_log.request.inputs:
                images += [bytes(b) for b in tf.make_ndarray(entry.predict_log.request.inputs["images"]).reshape(-1)]
        return images
    except Exception:  # no usable warmup: validation then fails with "no test images"
        return []
