"""Helpers for the serving tests: install a version the way the model store does, write models.config."""

from __future__ import annotations

import shutil
from pathlib import Path


def install_version(exported: dict[int, Path], base: Path, version: int) -> Path:
    """Copy a version into base/<version> the way the model store does: build aside, rename into place."""
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{version}"
    shutil.copytree(exported[version], tmp)
    final = base / str(version)
    tmp.rename(final)
    return final


def models_config(entries: list[tuple[str, Path, list[int], dict[str, int]]]) -> str:
    """A ModelServerConfig text proto with the specific policy and labels (as the gate writes it)."""
    parts = ["model_config_list {"]
    for name, base, versions, labels in entries:
        parts.append("  config {")
        parts.append(f'    name: "{name}"')
        parts.append(f'    base_path: "{base}"')
        parts.append('    model_platform: "tensorflow"')
        parts.append("    model_version_policy { specific { " + " ".join(f"versions: {v}" for v in versions) + " } }")
        for label, v in labels.items():
            parts.append(f'    version_labels {{ key: "{label}" value: {v} }}')
        parts.append("  }")
    parts.append("}")
    return "\n".join(parts) + "\n"


MONITORING_CONFIG = 'prometheus_config {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n'
