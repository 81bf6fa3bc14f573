"""The TF Serving model store: `<model_base>/leukemia/<version>/` and `models.config`.

A version appears in one rename: it is built in a hidden temporary directory on the same filesystem
(every file but `saved_model.pb`, then `saved_model.pb` last, fsync), then renamed to its integer name.
TF Serving only considers integer-named directories, so a crash leaves nothing it could load.
Versions are never overwritten.

`models.config` is TF Serving's `ModelServerConfig` text proto (version policy `specific`,
`version_labels` stable/canary), always replaced atomically (temp + fsync + rename). Moving a label
takes the two steps TF Serving requires (a label may only point at a loaded version):
`plan_label_move` returns both configs, `move_label` writes them in order with an optional hook between.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from components import home, settings

log = logging.getLogger(__name__)

LABELS: tuple[str, ...] = ("stable", "canary")
PB_NAME = "saved_model.pb"
TMP_PREFIX = ".tmp-"


class VersionExists(FileExistsError):
    """The version directory is already in the store (versions are never overwritten)."""


# ---------------------------------------------------------------- versions


def model_dir(base: str | Path | None = None, name: str = settings.SERVED_MODEL_NAME) -> Path:
    """`<model_base>/<served name>`: TF Serving's base_path for the model."""
    return Path(base or home.model_base()).resolve() / name


def list_versions(base: str | Path | None = None, name: str = settings.SERVED_MODEL_NAME) -> list[int]:
    """Integer versions present in the store (complete ones: hidden temporaries are not listed)."""
    root = model_dir(base, name)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def version_path(version: int, base: str | Path | None = None, name: str = settings.SERVED_MODEL_NAME) -> Path:
    return model_dir(base, name) / str(int(version))


@contextlib.contextmanager
def store_lock(base: str | Path | None = None, name: str = settings.SERVED_MODEL_NAME) -> Iterator[None]:
    """An exclusive lock so two promotions never write the store or models.config at once."""
    root = model_dir(base, name)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Each step is its own function so the crash-safety tests can make any one of them fail.
def _make_temp(root: Path, version: int) -> Path:
    tmp = root / f"{TMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def _copy_all_but_pb(src: Path, tmp: Path) -> None:
    for item in src.iterdir():
        if item.name == PB_NAME:
            continue
        if item.is_dir():
            shutil.copytree(item, tmp / item.name)
        else:
            shutil.copy2(item, tmp / item.name)


def _copy_extras(extras: dict[str, Path], tmp: Path) -> None:
    for rel, path in extras.items():
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)


def _copy_pb(src: Path, tmp: Path) -> None:
    shutil.copy2(src / PB_NAME, tmp / PB_NAME)


def _fsync_tree(tmp: Path) -> None:
    for dirpath, _dirs, files in os.walk(tmp):
        for f in files:
            _fsync_path(Path(dirpath) / f)
        _fsync_path(Path(dirpath))


def _rename_into_place(tmp: Path, final: Path) -> None:
    if final.exists():  # os.rename would silently replace an empty directory
        raise VersionExists(f"model version {final} already exists; versions are never overwritten")
    os.rename(tmp, final)
    _fsync_path(final.parent)


def clean_stale_temporaries(base: str | Path | None = None, name: str = settings.SERVED_MODEL_NAME) -> list[str]:
    """Remove temporaries a crashed promotion left behind (call under the store lock)."""
    root = model_dir(base, name)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def write_version(
    saved_model_dir: str | Path,
    version: int,
    base: str | Path | None = None,
    name: str = settings.SERVED_MODEL_NAME,
    extras: dict[str, Path] | None = None,
) -> Path:
    """Copy a SavedModel into the store as `version`, atomically; never overwrites. Returns the version dir.

    `extras` maps paths relative to the version dir (e.g. `assets.extra/reference_features.parquet`) to files
    added to the copy; TF Serving ignores them.
    """
    src = Path(saved_model_dir)
    if not (src / PB_NAME).is_file():
        raise FileNotFoundError(f"{src}: no {PB_NAME} (not a SavedModel directory)")
    root = model_dir(base, name)
    root.mkdir(parents=True, exist_ok=True)
    final = root / str(int(version))
    if final.exists():
        raise VersionExists(f"model version {final} already exists; versions are never overwritten")
    tmp = _make_temp(root, version)
    try:
        _copy_all_but_pb(src, tmp)
        _copy_extras(extras or {}, tmp)
        _copy_pb(src, tmp)  # last: a reader polling for saved_model.pb never sees a half-copied model
        _fsync_tree(tmp)
        _rename_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("model store: wrote %s", final)
    return final


def remove_version(version: int, base: str | Path | None = None, name: str = settings.SERVED_MODEL_NAME) -> None:
    """Take a version out of the store (used to undo a failed promotion): hide it by rename, then delete."""
    final = version_path(version, base, name)
    if not final.exists():
        return
    hidden = final.parent / f"{TMP_PREFIX}removed-{final.name}-{uuid.uuid4().hex[:8]}"
    os.rename(final, hidden)
    _fsync_path(final.parent)
    shutil.rmtree(hidden, ignore_errors=True)


# ---------------------------------------------------------------- models.config


@dataclass
class ServingState:
    """What models.config says about our model: served versions and labels."""

    name: str
    base_path: str
    versions: list[int] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "base_path": self.base_path,
            "versions": list(self.versions),
            "labels": dict(self.labels),
        }


def read_models_config(path: str | Path | None = None):
    """Parse models.config into a `ModelServerConfig` proto (empty one if the file does not exist)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = Path(path or home.models_config_path())
    config = model_server_config_pb2.ModelServerConfig()
    if path.is_file():
        try:
            text_format.Parse(path.read_text(), config)
        except text_format.ParseError as exc:
            raise ValueError(f"{path}: not a valid ModelServerConfig text proto: {exc}") from exc
    return config


def state_from_config(config, name: str = settings.SERVED_MODEL_NAME) -> ServingState | None:
    """Our model's entry in a ModelServerConfig, or None."""
    for mc in config.model_config_list.config:
        if mc.name == name:
            policy = mc.model_version_policy
            versions = list(policy.specific.versions) if policy.WhichOneof("policy_choice") == "specific" else []
            return ServingState(
                name=name,
                base_path=mc.base_path,
                versions=sorted(int(v) for v in versions),
                labels={k: int(v) for k, v in mc.version_labels.items()},
            )
    return None


def read_state(path: str | Path | None = None, name: str = settings.SERVED_MODEL_NAME) -> ServingState | None:
    return state_from_config(read_models_config(path), name)


def build_config(state: ServingState, existing=None):
    """A ModelServerConfig with our model's entry set to `state`; other models in `existing` are kept."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    if existing is not None:
        config.CopyFrom(existing)
    entries = config.model_config_list.config
    mc = next((m for m in entries if m.name == state.name), None)
    if mc is None:
        mc = entries.add()
    mc.Clear()
    mc.name = state.name
    mc.base_path = state.base_path
    mc.model_platform = "tensorflow"
    mc.model_version_policy.specific.versions.extend(sorted(set(state.versions)))
    for label, version in sorted(state.labels.items()):
        if version not in state.versions:
            raise ValueError(f"label {label!r} points at version {version}, which is not served")
        mc.version_labels[label] = version
    return config


def config_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def _write_temp_config(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    return tmp


def _fsync_config(tmp: Path) -> None:
    _fsync_path(tmp)


def _replace_config(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    _fsync_path(path.parent)


def write_models_config(config, path: str | Path | None = None) -> Path:
    """Replace models.config atomically (temp + fsync + rename)."""
    path = Path(path or home.models_config_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    text = config_text(config)
    tmp = _write_temp_config(path, text)
    try:
        _fsync_config(tmp)
        _replace_config(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def snapshot_config(path: str | Path | None = None) -> bytes | None:
    """The current models.config bytes (None when absent), for restoring after a failure."""
    path = Path(path or home.models_config_path())
    return path.read_bytes() if path.is_file() else None


def restore_config(snapshot: bytes | None, path: str | Path | None = None) -> None:
    """Put back a snapshot taken with `snapshot_config` (atomically; removes the file if there was none)."""
    path = Path(path or home.models_config_path())
    if snapshot is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.restore")
    tmp.write_bytes(snapshot)
    _fsync_path(tmp)
    os.replace(tmp, path)
    _fsync_path(path.parent)


def plan_label_move(
    current: ServingState | None, label: str, version: int, base_path: str, name: str = settings.SERVED_MODEL_NAME
) -> tuple[ServingState, ServingState]:
    """The two configs TF Serving needs to move `label` to `version`.

    Step 1 serves the new version beside the old ones, labels unchanged. Step 2 moves the label and keeps
    serving the labelled versions plus the one that just lost `stable` (so a rollback is instant).
    """
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    version = int(version)
    old_versions = list(current.versions) if current else []
    old_labels = dict(current.labels) if current else {}
    step1 = ServingState(name, base_path, sorted(set(old_versions) | {version}), old_labels)
    labels = dict(old_labels)
    previous = labels.get(label)
    labels[label] = version
    if label == "stable" and labels.get("canary") == version:
        labels.pop("canary")  # the canary graduated
    # The previous stable stays loaded for an instant rollback; a replaced canary is simply dropped.
    keep = set(labels.values()) | ({previous} if previous is not None and label == "stable" else set())
    step2 = ServingState(name, base_path, sorted(keep), labels)
    return step1, step2


def move_label(
    label: str,
    version: int,
    path: str | Path | None = None,
    base: str | Path | None = None,
    name: str = settings.SERVED_MODEL_NAME,
    between: Callable[[ServingState, int], None] | None = None,
) -> tuple[ServingState, ServingState]:
    """Write both steps of a label move to models.config; `between(step1, version)` runs after step 1 (wait for load)."""
    path = Path(path or home.models_config_path())
    existing = read_models_config(path)
    current = state_from_config(existing, name)
    base_path = current.base_path if current else str(model_dir(base, name))
    root = Path(base_path)
    present = {int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()} if root.is_dir() else set()
    if int(version) not in present:
        raise FileNotFoundError(f"version {version} is not in the model store at {base_path}")
    step1, step2 = plan_label_move(current, label, version, base_path, name)
    write_models_config(build_config(step1, existing), path)
    log.info("models.config step 1: serve versions %s, labels %s", step1.versions, step1.labels)
    if between is not None:
        between(step1, int(version))
    write_models_config(build_config(step2, existing), path)
    log.info("models.config step 2: serve versions %s, labels %s", step2.versions, step2.labels)
    return step1, step2


def remove_label(label: str, path: str | Path | None = None, name: str = settings.SERVED_MODEL_NAME) -> ServingState:
    """Take `label` off models.config in one write, and its version with it unless another label names it.

    One step suffices (TF Serving checks only the labels a config has), so stable clients never see a change.
    """
    path = Path(path or home.models_config_path())
    existing = read_models_config(path)
    current = state_from_config(existing, name)
    if current is None or label not in current.labels:
        raise ValueError(f"models.config has no {label!r} label")
    labels = dict(current.labels)
    version = labels.pop(label)
    keep = [v for v in current.versions if v != version or v in labels.values()]
    state = ServingState(name, current.base_path, keep, labels)
    write_models_config(build_config(state, existing), path)
    log.info("models.config: %s removed (version %s); serve versions %s, labels %s", label, version, keep, labels)
    return state


def version_state(
    rest_url: str, version: int, name: str = settings.SERVED_MODEL_NAME, timeout_s: float = 2.0
) -> str | None:
    """A version's state from a TF-Serving-style REST status endpoint; None when no server answers for the model."""
    import json
    import urllib.error
    import urllib.request

    url = f"{rest_url.rstrip('/')}/v1/models/{name}/versions/{int(version)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = json.loads(resp.read().decode() or "{}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # model unknown: maybe another config; version not loaded yet: keep waiting
            try:
                text = exc.read().decode()
            except Exception:  # noqa: BLE001
                text = ""
            return "NOT_LOADED" if "version" in text.lower() else None
        return "ERROR"
    except (OSError, ValueError):
        return None  # nothing listening
    states = [s.get("state") for s in body.get("model_version_status", []) if str(s.get("version")) == str(version)]
    return states[0] if states else "NOT_LOADED"


def wait_for_version(
    version: int,
    rest_url: str | None,
    name: str = settings.SERVED_MODEL_NAME,
    timeout_s: float = 60.0,
    poll_s: float = 0.5,
) -> str:
    """Between the two config steps: wait until a running server reports `version` AVAILABLE.

    Returns at once when no server answers (nothing to wait for). On timeout it logs a warning and returns:
    the store and registry are consistent either way, and the server picks the version up on its next reload.
    """
    if not rest_url:
        return "no server configured"
    deadline = time.monotonic() + timeout_s
    state = version_state(rest_url, version, name)
    if state is None:
        return f"no server for {name} at {rest_url}"
    while state != "AVAILABLE" and time.monotonic() < deadline:
        time.sleep(poll_s)
        state = version_state(rest_url, version, name) or "UNREACHABLE"
    if state != "AVAILABLE":
        log.warning(
            "server at %s did not report %s version %s AVAILABLE within %.0fs (state %s); moving the label anyway",
            rest_url,
            name,
            version,
            timeout_s,
            state,
        )
        return f"timed out ({state})"
    log.info("server at %s reports %s version %s AVAILABLE", rest_url, name, version)
    return "AVAILABLE"


def default_serving_rest() -> str:
    """The REST endpoint of a local server to wait on between the steps (LEUKOFLOW_SERVING_REST; empty disables)."""
    return os.environ.get("LEUKOFLOW_SERVING_REST", "http://127.0.0.1:8501")


def between_steps(
    step_wait_s: float = 0.0,
    rest_url: str | None = None,
    load_timeout_s: float = 60.0,
    name: str = settings.SERVED_MODEL_NAME,
) -> Callable[[ServingState, int], None]:
    """The hook run after step 1: a fixed pause, then wait for a running server to load the labelled version."""

    def hook(_step1: ServingState, version: int) -> None:
        if step_wait_s > 0:
            time.sleep(step_wait_s)
        wait_for_version(version, rest_url, name, load_timeout_s)

    return hook
