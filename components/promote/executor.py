"""run_promote: gate the candidates, validate the chosen one in the serving layer, and promote it.

Promotion writes three things that must agree: the MLflow registry version, the model store version and
`models.config`. The order is: (1) an MLflow run and model version with no alias yet (status `pending`;
its number becomes the store version, so one number names the model everywhere), (2) the store version,
(3) `models.config` in TF Serving's two steps, (4) the model card, the aliases and status `promoted`.
If any step fails, everything done so far is undone (config restored from its snapshot, store version
removed, registry version and its run deleted, aliases restored) and the run fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from components import atomic_files, home
from components.promote import gate as gate_mod
from components.promote import model_store, model_card, registry
from components.promote.gate import Candidate, Decision, Policy

log = logging.getLogger(__name__)


class PromotionError(RuntimeError):
    """A promotion failed; the model store, models.config and the registry were restored."""


# ---------------------------------------------------------------- inputs and provenance


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


def dvc_data_hash(dvc_file: Path | None = None) -> str:
    """The md5 of `data/` recorded in data.dvc at the repo root ('unknown' if absent)."""
    import yaml

    dvc_file = dvc_file or home.REPO_ROOT / "data.dvc"
    try:
        outs = yaml.safe_load(dvc_file.read_text()).get("outs") or []
        return str(outs[0].get("md5") or "unknown")
    except (OSError, AttributeError, IndexError, yaml.YAMLError):
        return "unknown"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=home.REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_decision(decision: Decision, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    atomic_files.write_text(out / "decision.json", json.dumps(decision.to_dict(), indent=2, default=str))
    atomic_files.write_text(out / "decision.md", gate_mod.to_markdown(decision))
    return out / "decision.json", out / "decision.md"


def read_decision(path: str | Path) -> Decision:
    path = Path(path)
    path = path / "decision.json" if path.is_dir() else path
    return Decision.from_dict(json.loads(path.read_text()))


# ---------------------------------------------------------------- the gate


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
    from components.promote.infra_validation import serving_predictions

    preds = serving_predictions(saved_model, images)
    return float(f1_score(labels, preds, average="macro", labels=list(range(domain.NUM_CLASSES)), zero_division=0))


def compare_with_champion(cand: Candidate, champion: dict[str, Any], cand_split: str | None,
                          split_dir: str | Path | None, policy: Policy, cache: dict[str, float] | None = None) -> dict[str, Any]:
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
        why = (f"champion v{champion['version']} was evaluated on split {str(ch_split)[:12]}, "
               f"the candidates on {str(cand_split)[:12]}")
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
            return {"ok": False, "reason": f"{why}, and they cannot be compared on one split ({exc}); promote "
                    "manually with `leukoflow registry promote` after checking", "measured_on": None,
                    "candidate_f1": None, "champion_f1": None, "delta": 0.0}
        measured = (f"the candidates' test split {str(cand_split)[:12]} ({len(images)} images, champion and "
                    "candidate re-evaluated through serving_default)")
    ok, reason = gate_mod.check_regression(cand_f1, ch_f1, policy)
    return {"ok": ok, "reason": f"{cand.name}: {reason}", "measured_on": measured, "candidate_f1": cand_f1,
            "champion_f1": ch_f1, "delta": cand_f1 - ch_f1}


def run_gate(candidates: list[str | Path], out_dir: str | Path, split_dir: str | Path | None = None,
             policy: Policy = Policy(), infra_images: int = 8, registry_uri: str | None = None) -> Decision:
    """Decide (floors, margin, cost, infra validation, champion); writes decision.json and decision.md."""
    from components.promote import infra_validation

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
        champion_info = {"version": champ["version"], "model": t.get("model"), "macro_f1": _f(t.get("macro_f1")),
                         "split_hash": t.get("split_hash"), "model_path": t.get("model_path")}
        cache: dict[str, float] = {}
        for c in cands:
            if gate_mod.floor_failures(c, policy):
                continue  # the floors already exclude it
            if t.get("saved_model_sha256") and c.saved_model and Path(c.saved_model).is_dir() \
                    and t["saved_model_sha256"] == tree_hash(c.saved_model):
                regression[c.name] = {"ok": False, "reason": f"{c.name} is identical to the champion v{champ['version']}",
                                      "measured_on": None, "candidate_f1": None, "champion_f1": None, "delta": 0.0}
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


def _f(v: Any) -> float | None:
    return None if v in (None, "") else float(v)


def _warmup_only_images(saved_model: str | Path) -> list[bytes]:
    """Without a split, send the warmup request's images as the test requests."""
    try:
        from serving.servable import Servable

        import tensorflow as tf

        images: list[bytes] = []
        for entry in Servable(name="", version=0, path=Path(saved_model), signatures={}).warmup_records():
            if entry.WhichOneof("log_type") == "predict_log" and "images" in entry.predict_log.request.inputs:
                images += [bytes(b) for b in tf.make_ndarray(entry.predict_log.request.inputs["images"]).reshape(-1)]
        return images
    except Exception:  # no usable warmup: validation then fails with "no test images"
        return []


# ---------------------------------------------------------------- applying a decision


def _train_info(saved_model: str | Path) -> dict[str, Any]:
    path = Path(saved_model).parent / "train.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


REFERENCE_NAMES = ("reference_features.parquet", "reference.parquet", "reference_features.csv", "reference.csv")


def reference_file(reference: str | Path | None) -> Path | None:
    """The drift reference profile: a file, or the first known name in a directory (None if not given)."""
    if reference is None or str(reference) == "":
        return None
    path = Path(reference)
    if path.is_file():
        return path
    for name in REFERENCE_NAMES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"no reference profile ({', '.join(REFERENCE_NAMES)}) at {path}")


def _run_undo(steps: list[tuple[str, Callable[[], None]]]) -> list[str]:
    """Run every undo step even if one fails; returns what could not be undone."""
    failed = []
    for name, fn in steps:
        try:
            fn()
        except Exception as exc:  # keep undoing the rest; report every failure
            log.error("could not undo %s: %s", name, exc)
            failed.append(f"{name}: {exc}")
    return failed


def apply_decision(decision: Decision, out_dir: str | Path, label: str = "stable", pipeline_run_id: str = "",
                   base: str | Path | None = None, config_path: str | Path | None = None,
                   registry_uri: str | None = None,
                   between: Callable[[model_store.ServingState, int], None] | None = None,
                   reference: str | Path | None = None, drift_report: str = "") -> Decision:
    """Write registry, model store and models.config for a promoted decision, all or nothing.

    `reference` (the training split's feature profile) is stored in the version as
    `assets.extra/reference_features.<ext>` for the drift monitor and logged to the registry run;
    `drift_report` (the report that triggered this retraining, if any) is recorded as a tag.
    """
    if not decision.promoted:
        raise PromotionError(decision.summary)
    if label not in model_store.LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(model_store.LABELS)}")
    out_dir = Path(out_dir)
    write_decision(decision, out_dir)  # the registry run logs decision.md
    saved_model = Path(decision.chosen_saved_model)
    metrics = json.loads((Path(decision.chosen_source) / "metrics.json").read_text())
    train = _train_info(saved_model)
    provenance = {"data_hash": dvc_data_hash(), "git_commit": git_commit(),
                  "pipeline_run_id": pipeline_run_id or "manual", "split_hash": decision.split_hash or "unknown"}
    tags = {**provenance, "model": decision.chosen, "macro_f1": metrics.get("macro_f1"),
            "accuracy": metrics.get("accuracy"), "gate_decision": decision.summary[:4900],
            "saved_model_sha256": tree_hash(saved_model), "status": "pending"}
    params = {"model": decision.chosen, "config": train.get("config") or {},
              "weights_used": train.get("weights_used", "unknown"), "epochs_run": train.get("epochs_run", "unknown")}
    ref = reference_file(reference)
    extras = {f"assets.extra/reference_features{ref.suffix}": ref} if ref else {}
    if drift_report:
        tags["drift_report"] = str(drift_report)
    config_path = Path(config_path or home.models_config_path())
    step = "start"
    with model_store.store_lock(base):
        model_store.clean_stale_temporaries(base)
        config_snap = model_store.snapshot_config(config_path)
        model_store.read_models_config(config_path)  # refuse to start on an unreadable config
        reg_snap = registry.snapshot(uri=registry_uri)
        version = run_id = None
        wrote_store = False
        try:
            step = "registry version"
            version, run_id = registry.create_version(saved_model, metrics, params, tags,
                                                      artifacts=[out_dir / "decision.md"] + ([ref] if ref else []),
                                                      uri=registry_uri,
                                                      description=f"{decision.chosen}: {decision.reason}"[:4000])
            step = "model store"
            version_dir = model_store.write_version(saved_model, version, base, extras=extras)
            wrote_store = True
            step = "models.config"
            model_store.move_label(label, version, config_path, base, between=between)
            step = "model card"
            decision.version, decision.label = version, label
            card_path = out_dir / "model_card.md"
            atomic_files.write_text(card_path, model_card.render(version, metrics, train, provenance, decision.summary,
                                                       model_card.low_confidence_threshold(saved_model)))
            c = registry.client(registry_uri)
            c.log_artifact(run_id, str(card_path))
            c.log_artifact(run_id, str(write_decision(decision, out_dir)[1]))
            run = c.get_run(run_id)
            step = "registry aliases"
            registry.set_version_tags(version, {
                "model_card": f"{run.info.artifact_uri}/model_card.md", "model_path": str(version_dir),
                "serving_version": str(version), "status": "promoted",
                "low_confidence_threshold": str(model_card.low_confidence_threshold(saved_model)),
                **({"reference_profile": str(version_dir / next(iter(extras)))} if extras else {}),
            }, uri=registry_uri)
            registry.assign_label(version, label, uri=registry_uri)
        except BaseException as exc:
            log.error("promotion failed at %s: %s; restoring the previous state", step, exc)
            undo = [("models.config", lambda: model_store.restore_config(config_snap, config_path))]
            if wrote_store and version is not None:
                undo.append(("model store", lambda: model_store.remove_version(version, base)))
            if version is not None:
                undo.append(("registry version", lambda: registry.delete_version(version, run_id, uri=registry_uri)))
            undo.append(("registry aliases", lambda: registry.restore(reg_snap, uri=registry_uri)))
            failed = _run_undo(undo)
            decision.version = decision.label = None
            state = ("the model store, models.config and the registry keep their previous state" if not failed else
                     f"UNDO INCOMPLETE ({'; '.join(failed)}): check `leukoflow registry list` and models.config")
            raise PromotionError(f"promotion failed at step '{step}': {exc}; {state}") from exc
    write_decision(decision, out_dir)
    return decision


def run_promote(candidates: list[str | Path], out_dir: str | Path | None = None, split_dir: str | Path | None = None,
                label: str = "stable", pipeline_run_id: str = "", policy: Policy = Policy(), dry_run: bool = False,
                step_wait_s: float = 0.0, registry_uri: str | None = None, reference: str | Path | None = None,
                drift_report: str = "", serving_rest: str | None = None) -> dict[str, Any]:
    """Gate the candidates and promote the chosen one; returns the result dict the CLI prints."""
    out_dir = Path(out_dir or home.reports_dir() / f"promote-{uuid.uuid4().hex[:8]}")
    decision = run_gate(candidates, out_dir, split_dir, policy, registry_uri=registry_uri)
    if decision.promoted and not dry_run:
        decision = apply_decision(decision, out_dir, label, pipeline_run_id, registry_uri=registry_uri,
                                  between=_between(step_wait_s, serving_rest), reference=reference,
                                  drift_report=drift_report)
    return {
        "promoted": decision.promoted and not dry_run, "chosen": decision.chosen, "version": decision.version,
        "label": decision.label, "summary": decision.summary if not dry_run or not decision.promoted
        else f"would promote {decision.chosen} (dry run): {decision.reason}",
        "decision_md": str(out_dir / "decision.md"), "decision_json": str(out_dir / "decision.json"),
        "model_card": str(out_dir / "model_card.md") if decision.version is not None else None,
        "model_path": str(model_store.version_path(decision.version)) if decision.version is not None else None,
        "rows": [asdict(r) for r in decision.rows],
    }


# ---------------------------------------------------------------- operations


def _between(step_wait_s: float, serving_rest: str | None) -> Callable[[model_store.ServingState, int], None]:
    """Between the two models.config steps: pause, then wait for a running server to load the version."""
    rest = model_store.default_serving_rest() if serving_rest is None else serving_rest
    return model_store.between_steps(step_wait_s, rest)



def list_models(registry_uri: str | None = None, config_path: str | Path | None = None) -> list[dict[str, Any]]:
    """Registry versions joined with the labels and served versions of models.config."""
    state = model_store.read_state(config_path)
    labels_of: dict[int, list[str]] = {}
    for lab, v in (state.labels if state else {}).items():
        labels_of.setdefault(v, []).append(lab)
    out = []
    for v in registry.versions(uri=registry_uri):
        t = v["tags"]
        labs = sorted(labels_of.get(v["version"], []))
        out.append({
            "version": v["version"], "aliases": v["aliases"], "label": labs[0] if labs else None, "labels": labs,
            "served": bool(state and v["version"] in state.versions), "model": t.get("model"),
            "macro_f1": _f(t.get("macro_f1")), "accuracy": _f(t.get("accuracy")), "model_path": t.get("model_path"),
            "status": t.get("status"), "model_card": t.get("model_card"), "split_hash": t.get("split_hash"),
            "data_hash": t.get("data_hash"), "git_commit": t.get("git_commit"), "pipeline_run_id": t.get("pipeline_run_id"),
        })
    return out


def _set_label(version: int, label: str, registry_uri: str | None, config_path: str | Path | None,
               history: list[int] | None, between: Callable | None, server: str | None = None) -> str:
    """Move a label in models.config and the matching alias in the registry, together or not at all.

    With `server` (gRPC HOST:PORT) each config step is sent to it and the move is confirmed by the label
    answering with the version; returns what the running server was told.
    """
    from components.promote import server_reload

    config_path = Path(config_path or home.models_config_path())
    step_hook = between
    if server:
        def step_hook(step1: Any, v: int) -> None:  # step 1 (the version loaded beside) is served before step 2
            if between is not None:
                between(step1, v)
            server_reload.tell_server(server, config_path, v)
    with model_store.store_lock():
        config_snap = model_store.snapshot_config(config_path)
        reg_snap = registry.snapshot(uri=registry_uri)
        try:
            model_store.move_label(label, version, config_path, between=step_hook)
            registry.assign_label(version, label, uri=registry_uri, history=history)
            if server:
                server_reload.tell_server(server, config_path, version, label)
        except BaseException as exc:
            failed = _run_undo([("models.config", lambda: model_store.restore_config(config_snap, config_path)),
                                ("registry aliases", lambda: registry.restore(reg_snap, uri=registry_uri))])
            state = "previous state kept" if not failed else f"UNDO INCOMPLETE ({'; '.join(failed)})"
            raise PromotionError(f"moving label {label} to version {version} failed: {exc}; {state}") from exc
    return f"server {server} answers {label} with version {version}" if server else server_reload.NOT_TOLD


def promote_version(version: int, label: str, registry_uri: str | None = None, config_path: str | Path | None = None,
                    step_wait_s: float = 0.0, serving_rest: str | None = None, server: str | None = None) -> dict[str, Any]:
    """Manual step: put `label` (stable|canary) on a registered version that is in the model store."""
    record = registry.get_version(version, uri=registry_uri)
    if record is None:
        raise ValueError(f"version {version} is not in the registry")
    if record["tags"].get("status") != "promoted" or not model_store.version_path(version).is_dir():
        raise ValueError(f"version {version} is not a complete version in the model store")
    told = _set_label(version, label, registry_uri, config_path, None, _between(step_wait_s, serving_rest), server)
    return {"version": version, "label": label, "aliases": registry.get_aliases(uri=registry_uri),
            "serving": model_store.read_state(config_path).to_dict(), "server": told}


def rollback(registry_uri: str | None = None, config_path: str | Path | None = None,
             step_wait_s: float = 0.0, serving_rest: str | None = None, server: str | None = None) -> dict[str, Any]:
    """Stable back to the previous champion: models.config label and registry alias together."""
    history = registry.champion_history(uri=registry_uri)
    if len(history) < 2:
        raise ValueError("no previous champion to roll back to" + (f" (only version {history[0]})" if history else ""))
    current, previous = history[-1], history[-2]
    if not model_store.version_path(previous).is_dir():
        raise ValueError(f"previous champion version {previous} is no longer in the model store")
    told = _set_label(previous, "stable", registry_uri, config_path, history[:-1], _between(step_wait_s, serving_rest),
                      server)
    registry.set_version_tags(current, {"rolled_back": "true"}, uri=registry_uri)
    return {"rolled_back_from": current, "version": previous, "label": "stable",
            "aliases": registry.get_aliases(uri=registry_uri), "serving": model_store.read_state(config_path).to_dict(),
            "server": told}
