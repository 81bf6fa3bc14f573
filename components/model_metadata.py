"""A model version's metadata: `assets.extra/leukoflow.json` inside the exported SavedModel.

The trainer's export writes it; evaluation, the model card and the serving page read it. This
module is the only place that knows the file's name and fields, so a new field is one line in
`ModelMetadata`: give it a default (None for an optional value), and files written before it
existed still read, with that default. Keys this version does not know (a newer writer) are
ignored on read, so an older server can load a newer model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import atomic_files, domain, settings

ASSETS_EXTRA = "assets.extra"
META_FILE = "leukoflow.json"
# Older exports spelled the threshold this way.
_ALIASES = {"low_confidence": "low_confidence_threshold"}


class MetadataError(ValueError):
    """`leukoflow.json` is missing, not JSON, or has a field of the wrong type."""


@dataclass(frozen=True)
class ModelMetadata:
    """What a served version says about itself (docs/architecture.md, "The exported SavedModel")."""

    model: str
    image_size: int  # the model's input size; the graph resizes every image to it
    brightness: str = "none"  # domain.BRIGHTNESS_METHODS, applied inside the graph
    class_names: tuple[str, ...] = domain.CLASS_NAMES  # index order of the outputs
    low_confidence_threshold: float | None = None  # None: an export before it was written; see `low_confidence`
    signatures: tuple[str, ...] = ()
    keras_model: str | None = None  # assets.extra/<this> is the Keras copy for Grad-CAM
    source_size: int | None = None  # the stored image size the model was trained from
    # Knowing when it does not know (components/train/calibration.py); None: exported without them.
    temperature: float | None = None  # calibrated probabilities = softmax(logits / temperature)
    ood_threshold: float | None = None  # ood_score above this: out of distribution, refer
    ood_layer: str | None = None  # the mid-level layer the OOD score reads
    ood_val_referral_rate: float | None = None  # the share of in-distribution val images the threshold refers
    conformal_quantile: float | None = None  # class c is in the prediction set when p_c >= 1 - quantile
    conformal_coverage: float | None = None  # the target coverage the quantile was fitted for

    @property
    def low_confidence(self) -> float:
        """The threshold below which a top probability is flagged, this model's or the default."""
        if self.low_confidence_threshold is None:
            return settings.LOW_CONFIDENCE_THRESHOLD
        return self.low_confidence_threshold

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        if not isinstance(data, dict):
            raise MetadataError(f"model metadata must be a JSON object, got {type(data).__name__}")
        data = {_ALIASES.get(k, k): v for k, v in data.items()}
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known or value is None:
                continue
            values[name] = _coerce(name, value, known[name].type)
        missing = [n for n, f in known.items() if f.default is dataclasses.MISSING and n not in values]
        if missing:
            raise MetadataError(f"model metadata lacks {', '.join(missing)}")
        return cls(**values)


def _coerce(name: str, value: Any, annotation: str) -> Any:
    """The JSON value as the field's type; a wrong type names the field."""
    try:
        if annotation.startswith("tuple"):
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise TypeError("expected a list of strings")
            return tuple(value)
        if annotation.startswith("int"):
            if isinstance(value, bool) or int(value) != value:
                raise TypeError("expected an integer")
            return int(value)
        if annotation.startswith("float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError("expected a number")
            return float(value)
        if annotation.startswith("str"):
            if not isinstance(value, str):
                raise TypeError("expected a string")
            return value
    except (TypeError, ValueError) as exc:
        raise MetadataError(f"model metadata field {name!r}: {exc}, got {value!r}") from None
    return value


def path(saved_model_dir: str | Path) -> Path:
    return Path(saved_model_dir) / ASSETS_EXTRA / META_FILE


def write(saved_model_dir: str | Path, meta: ModelMetadata) -> Path:
    return atomic_files.write_text(path(saved_model_dir), json.dumps(meta.to_dict(), indent=2))


def read(saved_model_dir: str | Path) -> ModelMetadata:
    """The metadata of an exported model; MetadataError when the file is missing or malformed."""
    file = path(saved_model_dir)
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise MetadataError(f"{file} is missing: not a leukoflow export") from None
    except (OSError, ValueError) as exc:
        raise MetadataError(f"cannot read {file}: {exc}") from None
    try:
        return ModelMetadata.from_dict(data)
    except MetadataError as exc:
        raise MetadataError(f"{file}: {exc}") from None


def read_or_none(saved_model_dir: str | Path | None) -> ModelMetadata | None:
    """The metadata, or None when there is none to read (a model from elsewhere, a broken file)."""
    if not saved_model_dir:
        return None
    try:
        return read(saved_model_dir)
    except MetadataError:
        return None
