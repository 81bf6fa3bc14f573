"""The cluster config: every value a platform team sets to run the pipeline on its cluster, in one file.

The file is KEY=VALUE lines (`#` comments), so kustomize renders the very same file into the
`leukoflow-cluster` ConfigMap (infra/k8s/cluster/): the pipeline's tasks read `MLFLOW_TRACKING_URI`
from that ConfigMap, and the drift CronJob mounts the file itself to compile the package it submits.
`leukoflow pipeline compile --cluster-config FILE`, `leukoflow pipeline schedule --cluster-config FILE` and
the CronJob all compile from it, so they submit byte-identical packages. Example: infra/k8s/cluster/cluster.env.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from components import home

# What kustomize names the ConfigMap it renders from the file (infra/k8s/cluster/kustomization.yaml).
CONFIG_MAP = "leukoflow-cluster"
# The key under which that ConfigMap also holds the whole file (the CronJob mounts it).
CONFIG_MAP_FILE_KEY = "cluster.env"
DEFAULT_PATH = home.REPO_ROOT / "infra" / "k8s" / "cluster" / "cluster.env"

# Where each volume is mounted in a task's container; TF Serving mounts the model store at /models too.
DATA_MOUNT = "/data"
CASES_MOUNT = "/cases"
MODEL_STORE_MOUNT = "/models"
# The Secret keys a DVC remote's credentials are read from (S3 or any S3-compatible store).
DVC_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# What each training task asks for, one of it (the `full` profile trains 224-px networks end to end).
DEFAULT_TRAIN_ACCELERATOR = "nvidia.com/gpu"
NO_ACCELERATOR = "none"

_DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_IMAGE = re.compile(r"^[a-z0-9]+([._/:@-][A-Za-z0-9_.-]+)*$")
_KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class ClusterConfigError(ValueError):
    """The cluster config is missing a value or holds a bad one; the message names the field and the file."""


@dataclass(frozen=True)
class ClusterConfig:
    """The parsed cluster config (field docs: infra/k8s/cluster/cluster.env and docs/kubeflow.md)."""

    image: str
    data_pvc: str
    external_ood_dir: str
    model_store_pvc: str
    mlflow_tracking_uri: str
    cases_pvc: str = ""
    dvc_remote: str = ""
    dvc_secret: str = ""
    train_accelerator: str = DEFAULT_TRAIN_ACCELERATOR  # a resource name, or "none" for CPU-only training
    source: str = ""


# file key -> (field, required)
FIELDS: dict[str, tuple[str, bool]] = {
    "LEUKOFLOW_IMAGE": ("image", True),
    "LEUKOFLOW_DATA_PVC": ("data_pvc", True),
    "LEUKOFLOW_EXTERNAL_OOD_DIR": ("external_ood_dir", True),
    "LEUKOFLOW_MODEL_STORE_PVC": ("model_store_pvc", True),
    "MLFLOW_TRACKING_URI": ("mlflow_tracking_uri", True),
    "LEUKOFLOW_CASES_PVC": ("cases_pvc", False),
    "LEUKOFLOW_DVC_REMOTE": ("dvc_remote", False),
    "LEUKOFLOW_DVC_SECRET": ("dvc_secret", False),
    "LEUKOFLOW_TRAIN_ACCELERATOR": ("train_accelerator", False),
}


def parse_env_text(text: str, source: str = "cluster config") -> dict[str, str]:
    """KEY=VALUE lines as kustomize's env files read them: `#` comments and blank lines skipped, no quoting."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise ClusterConfigError(f"{source} line {number}: expected KEY=VALUE, got {raw!r}")
        if key in values:
            raise ClusterConfigError(f"{source} line {number}: {key} is set twice")
        values[key] = value.strip()
    return values


def _check(key: str, value: str, source: str) -> None:
    def bad(why: str) -> ClusterConfigError:
        return ClusterConfigError(f"{source}: {key}={value!r}: {why}")

    if key.endswith("_PVC") or key == "LEUKOFLOW_DVC_SECRET":
        if len(value) > 253 or not _DNS_1123.match(value):
            raise bad("not a Kubernetes object name (lower-case letters, digits, '-' and '.', at most 253)")
    elif key == "LEUKOFLOW_IMAGE":
        if not _IMAGE.match(value) or value.endswith((":", "@")):
            raise bad("not a container image reference, e.g. ghcr.io/leukoflow/leukoflow:0.1.0")
    elif key == "MLFLOW_TRACKING_URI":
        if not re.match(r"^https?://[^/\s]+", value):
            raise bad(
                "the pipeline's tasks need an MLflow tracking server, http:// or https:// "
                "(a sqlite or file URI would live and die inside one task's container)"
            )
    elif key == "LEUKOFLOW_EXTERNAL_OOD_DIR":
        path = PurePosixPath(value)
        if (
            not path.is_absolute()
            or ".." in path.parts
            or not path.is_relative_to(DATA_MOUNT)
            or path == PurePosixPath(DATA_MOUNT)
        ):
            raise bad(
                f"must be a folder on the data volume, under {DATA_MOUNT}/ (e.g. {DATA_MOUNT}/external/chula-rbc-12)"
            )
    elif key == "LEUKOFLOW_TRAIN_ACCELERATOR":
        if value != NO_ACCELERATOR and not re.match(
            r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$", value
        ):
            raise bad(f"an extended resource name such as nvidia.com/gpu or amd.com/gpu, or {NO_ACCELERATOR!r}")
    elif key == "LEUKOFLOW_DVC_REMOTE":
        if not re.match(r"^[a-z][a-z0-9+.-]*://\S+$", value):
            raise bad("not a DVC remote URL, e.g. s3://bucket/leukoflow-cases")


def parse(text: str, source: str = "cluster config") -> ClusterConfig:
    """The config in `text`; ClusterConfigError naming the field for anything missing, unknown or malformed."""
    values = parse_env_text(text, source)
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ClusterConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    fields: dict[str, str] = {}
    for key, (name, required) in FIELDS.items():
        value = values.get(key, "")
        if not value:
            if required:
                raise ClusterConfigError(f"{source}: {key} is missing or empty (required)")
            continue
        _check(key, value, source)
        fields[name] = value
    config = ClusterConfig(**fields, source=source)
    if config.cases_pvc and config.dvc_remote:
        raise ClusterConfigError(
            f"{source}: LEUKOFLOW_CASES_PVC and LEUKOFLOW_DVC_REMOTE are both set; the cases come from one of them"
        )
    if bool(config.dvc_remote) != bool(config.dvc_secret):
        raise ClusterConfigError(
            f"{source}: LEUKOFLOW_DVC_REMOTE and LEUKOFLOW_DVC_SECRET go together "
            f"(the Secret holds {' and '.join(DVC_SECRET_KEYS)})"
        )
    return config


def load(path: str | Path) -> ClusterConfig:
    """Read and check the cluster config file at `path`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClusterConfigError(
            f"cluster config not found: {path} (copy infra/k8s/cluster/cluster.env and set its values)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterConfigError(f"cluster config {path} cannot be read: {exc}") from exc
    return parse(text, source=str(path))
