"""Which model versions are loaded: model config, version policy, labels, polling and hot swap.

Follows TF Serving's ServerCore / AspiredVersionsManager semantics:
- versions are the integer-named directories under each model's base path (a directory without
  `saved_model.pb` is still being written and is skipped);
- policy `latest { num_versions }` (default 1), `all`, or `specific { versions }`;
- a new version is loaded and warmed up before it becomes visible; older versions that leave the
  policy are unloaded only after that (availability preserving), so no request sees a gap;
- `version_labels` must point at versions that are available and stay so under the new config, else
  the whole config is refused with FAILED_PRECONDITION (TF Serving's message) before any version
  changes: a refused reload leaves versions, labels and config as they were.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.servable import Servable
from serving.errors import (
    ServingError,
    detached_error,
    failed_precondition,
    invalid_argument,
    not_found,
    servable_not_found,
)

log = logging.getLogger(__name__)

# ModelVersionStatus.State values (get_model_status.proto).
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50


@dataclass(frozen=True)
class ModelEntry:
    """One model of the config: name, base path, version policy and labels."""

    name: str
    base_path: Path
    policy: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)


@dataclass
class VersionState:
    """State of one version as GetModelStatus reports it."""

    state: int
    error_code: int = 0  # tensorflow.error.Code
    error_message: str = ""


def entries_from_proto(config: Any) -> list[ModelEntry]:
    """ModelServerConfig proto -> entries (only model_config_list is supported, as in TF Serving's RPC)."""
    if config.WhichOneof("config") != "model_config_list":
        raise invalid_argument("ServerConfig is not of type ModelConfigList, which is not supported")
    entries, seen = [], set()
    for mc in config.model_config_list.config:
        if not mc.name:
            raise invalid_argument("Illegal setting for ModelConfig: model name is empty")
        if mc.name in seen:
            raise invalid_argument(f"Illegal to list model {mc.name} multiple times in config list")
        seen.add(mc.name)
        if mc.model_platform and mc.model_platform != "tensorflow":
            raise invalid_argument(
                f"Model {mc.name}: model_platform {mc.model_platform!r} is not supported (tensorflow)"
            )
        policy = mc.model_version_policy.WhichOneof("policy_choice") or "latest"
        num = mc.model_version_policy.latest.num_versions or 1
        versions = tuple(mc.model_version_policy.specific.versions)
        entries.append(
            ModelEntry(
                name=mc.name,
                base_path=Path(mc.base_path).absolute(),
                policy=policy,
                num_versions=num,
                versions=versions,
                labels=dict(mc.version_labels),
            )
        )
    return entries


def parse_model_config(text: str) -> Any:
    """ModelServerConfig text proto -> message (INVALID_ARGUMENT on a syntax error)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as exc:
        raise invalid_argument(f"cannot parse model config: {exc}") from None


def load_model_config(path: str | Path) -> list[ModelEntry]:
    """Read a --model_config_file."""
    return entries_from_proto(parse_model_config(Path(path).read_text()))


def versions_on_disk(base_path: Path) -> list[int]:
    """Integer version directories that hold a complete SavedModel (saved_model.pb lands last)."""
    if not base_path.is_dir():
        return []
    out = []
    for child in base_path.iterdir():
        if child.name.isdigit() and (child / "saved_model.pb").is_file():
            out.append(int(child.name))
    return sorted(out)


def aspired_versions(entry: ModelEntry, on_disk: list[int]) -> set[int]:
    """The versions the policy wants loaded."""
    if entry.policy == "all":
        return set(on_disk)
    if entry.policy == "specific":
        return set(entry.versions) & set(on_disk)
    return set(sorted(on_disk)[-entry.num_versions :]) if on_disk else set()


class ModelManager:
    """Loaded servables by model and version; resolve() is what every request goes through."""

    def __init__(
        self,
        entries: list[ModelEntry],
        warmup: bool = True,
        on_change: Callable[[str, list[int], list[int]], None] | None = None,
        allow_unavailable_labels: bool = False,
    ) -> None:
        self.allow_unavailable_labels = allow_unavailable_labels  # --allow_version_labels_for_unavailable_models
        self.limits: Any = None  # set by the server; the page reads it
        self._entries: dict[str, ModelEntry] = {e.name: e for e in entries}
        self._servables: dict[str, dict[int, Servable]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._states: dict[str, dict[int, VersionState]] = {}
        self._missing_warned: set[tuple[str, int]] = set()
        self._failed: dict[tuple[str, int], float] = {}  # (model, version) -> saved_model.pb mtime that failed
        self._lock = threading.RLock()
        self._reconcile_lock = threading.Lock()
        self._warmup = warmup
        self._on_change = on_change
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ------------------------------------------------------------ requests

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable for a ModelSpec: latest available, a specific version, or a version label."""
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        if version is not None and label:
            raise invalid_argument(
                f"Both model version ({version}) and model version label ({label}) cannot be supplied."
            )
        with self._lock:
            if label:
                version = self._label_version(name, label)
            versions = self._servables.get(name, {})
            if version is None:
                if not versions:
                    raise servable_not_found(name)
                return versions[max(versions)]
            if version not in versions:
                raise servable_not_found(name, version)
            return versions[version]

    def _label_version(self, name: str, label: str) -> int:
        """The version a label points at (caller holds the lock); TF Serving's error when it is unknown."""
        labels = self._labels.get(name, {})
        if label not in labels:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return labels[label]

    def labels_of(self, name: str, version: int) -> list[str]:
        """Labels that currently point at a version."""
        with self._lock:
            return sorted(k for k, v in self._labels.get(name, {}).items() if v == version)

    def labels(self, name: str) -> dict[str, int]:
        with self._lock:
            return dict(self._labels.get(name, {}))

    def models(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def loaded_versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._servables.get(name, {}))

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[tuple[int, VersionState]]:
        """GetModelStatus: states of one version or of every version ever seen (newest first)."""
        if not name:
            raise invalid_argument("Missing ModelSpec")
        with self._lock:
            if label:
                version = self._label_version(name, label)
            states = self._states.get(name, {})
            if version is not None:
                if version not in states:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [(version, states[version])]
            if not states:
                raise not_found(f"Could not find any versions of model {name}")
            return [(v, states[v]) for v in sorted(states, reverse=True)]

    # ------------------------------------------------------------ loading

    def _set_state(self, name: str, version: int, state: int, error: ServingError | None = None) -> None:
        with self._lock:
            code = error.code.value[0] if error is not None else 0
            self._states.setdefault(name, {})[version] = VersionState(state, code, error.message if error else "")

    def _load(self, entry: ModelEntry, version: int) -> None:
        path = entry.base_path / str(version)
        mtime = (path / "saved_model.pb").stat().st_mtime
        if self._failed.get((entry.name, version)) == mtime:
            return  # it failed before and has not changed: do not retry every poll
        self._set_state(entry.name, version, LOADING)
        log.info("loading %s version %d from %s", entry.name, version, path)
        try:
            servable = Servable.load(path, name=entry.name)
            if self._warmup:
                servable.warmup()
        except Exception as exc:  # noqa: BLE001 - a broken version must not take the server down
            err = detached_error(exc)
            log.error("%s version %d failed to load: %s", entry.name, version, err.message)
            self._failed[(entry.name, version)] = mtime
            self._set_state(entry.name, version, END, err)
            return
        with self._lock:
            before = sorted(self._servables.get(entry.name, {}))
            self._servables.setdefault(entry.name, {})[version] = servable
            self._states.setdefault(entry.name, {})[version] = VersionState(AVAILABLE)
            after = sorted(self._servables[entry.name])
        log.info("%s version %d is available", entry.name, version)
        if self._on_change:
            self._on_change(entry.name, after, before)

    def _unload(self, name: str, version: int) -> None:
        self._set_state(name, version, UNLOADING)
        with self._lock:
            before = sorted(self._servables.get(name, {}))
            # Requests already holding the Servable finish on it; Python frees it after the last one.
            self._servables.get(name, {}).pop(version, None)
            self._states.setdefault(name, {})[version] = VersionState(END)
            after = sorted(self._servables.get(name, {}))
        log.info("unloaded %s version %d", name, version)
        if self._on_change:
            self._on_change(name, after, before)

    def reconcile(self) -> None:
        """Bring loaded versions in line with the config and the base paths (one pass)."""
        with self._reconcile_lock:
            with self._lock:
                entries = list(self._entries.values())
                gone = [n for n in self._servables if n not in self._entries]
            for entry in entries:
                on_disk = versions_on_disk(entry.base_path)
                aspired = aspired_versions(entry, on_disk)
                if entry.policy == "specific":
                    for v in sorted(set(entry.versions) - set(on_disk)):
                        if (entry.name, v) not in self._missing_warned:  # once, not every poll
                            self._missing_warned.add((entry.name, v))
                            log.warning(
                                "%s: version %d named by the specific policy is not in %s",
                                entry.name,
                                v,
                                entry.base_path,
                            )
                for v in sorted(aspired - set(self.loaded_versions(entry.name))):
                    self._load(entry, v)
                loaded = set(self.loaded_versions(entry.name))
                # Availability preserving: unload only once an aspired version is available.
                if loaded & aspired or not aspired:
                    for v in sorted(loaded - aspired):
                        self._unload(entry.name, v)
            for name in gone:
                for v in self.loaded_versions(name):
                    self._unload(name, v)
                with self._lock:
                    self._labels.pop(name, None)

    def _check_labels(self, entries: list[ModelEntry], available: Callable[[ModelEntry], set[int]]) -> None:
        """FAILED_PRECONDITION unless every label of the config names a version in `available(entry)`."""
        if self.allow_unavailable_labels:
            return
        for entry in entries:
            ok = available(entry)
            for _label, version in sorted(entry.labels.items()):
                if version not in ok:
                    raise failed_precondition(
                        f"Request to assign label to version {version} of model {entry.name}, "
                        "which is not currently available for inference"
                    )

    def _install_labels(self, entries: list[ModelEntry]) -> None:
        with self._lock:
            for entry in entries:
                self._labels[entry.name] = dict(entry.labels)

    def _staying(self, entry: ModelEntry) -> set[int]:
        """Versions loaded now that the entry's policy keeps: the only ones a reload may label."""
        aspired = aspired_versions(entry, versions_on_disk(entry.base_path))
        return set(self.loaded_versions(entry.name)) & aspired

    def set_config(self, entries: list[ModelEntry], initial: bool = False, quiet: bool = False) -> None:
        """Apply a new model config (ServerCore::ReloadConfig semantics), all or nothing.

        At start-up the versions are loaded first and the labels checked after. On a reload, as in TF
        Serving, the whole config is validated before any version changes: a label may only name a version
        that is available now and that the new policy keeps. A refused config (FAILED_PRECONDITION) leaves
        the versions, labels and config exactly as they were; moving a label to a version the same config
        introduces is therefore two steps (load it, then label it), as the gate writes them.
        """
        if initial or self.allow_unavailable_labels:
            with self._lock:
                self._entries = {e.name: e for e in entries}
            self.reconcile()
            self._check_labels(entries, lambda e: set(self.loaded_versions(e.name)))
            self._install_labels(entries)
            return
        with self._reconcile_lock:  # no poll may load or unload between the check and the switch
            try:
                self._check_labels(entries, self._staying)
            except ServingError as exc:
                if not quiet:
                    log.error("model config refused; loaded versions and labels are unchanged: %s", exc.message)
                raise
            with self._lock:
                self._entries = {e.name: e for e in entries}
        # Labels first: they only name versions that stay loaded, so no request is sent to one being unloaded.
        self._install_labels(entries)
        self.reconcile()

    def start(self) -> None:
        """Initial load; raises if a configured label cannot be applied (the server must not start)."""
        self.set_config(list(self._entries.values()), initial=True)

    # ------------------------------------------------------------ polling

    def start_polling(
        self, fs_poll_seconds: float, config_file: Path | None = None, config_poll_seconds: float = 0
    ) -> None:
        """Poll base paths every fs_poll_seconds and the config file every config_poll_seconds (0 = never)."""
        if fs_poll_seconds <= 0 and not (config_file and config_poll_seconds > 0):
            return

        def loop() -> None:
            last_text = config_file.read_text() if config_file and config_file.exists() else None
            refused_text: str | None = None  # a refused config is retried every poll, but reported once
            next_fs = time.monotonic() + fs_poll_seconds if fs_poll_seconds > 0 else float("inf")
            next_cfg = (
                time.monotonic() + config_poll_seconds if config_file and config_poll_seconds > 0 else float("inf")
            )
            while not self._stop.wait(max(0.01, min(next_fs, next_cfg) - time.monotonic())):
                now = time.monotonic()
                try:
                    if now >= next_cfg:
                        next_cfg = now + config_poll_seconds
                        text = config_file.read_text()
                        if text != last_text:
                            quiet = text == refused_text
                            if not quiet:
                                log.info("model config %s changed; reloading", config_file)
                            try:
                                entries = entries_from_proto(parse_model_config(text))
                            except ServingError as exc:
                                entries = None
                                refused_text = text
                                if not quiet:
                                    log.error(
                                        "model config %s refused; nothing was changed: %s", config_file, exc.message
                                    )
                            if entries is not None:
                                try:
                                    self.set_config(entries, quiet=quiet)
                                    last_text = text
                                except ServingError:
                                    refused_text = text  # set_config said what and why
                    if now >= next_fs:
                        next_fs = now + fs_poll_seconds
                        self.reconcile()
                except Exception as exc:  # noqa: BLE001 - keep serving what is loaded
                    log.error("poll failed; nothing was changed: %s", getattr(exc, "message", exc))

        self._poller = threading.Thread(target=loop, name="model-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller:
            self._poller.join(timeout=5)
