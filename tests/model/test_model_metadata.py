"""components/model_metadata.py: the one reader and writer of assets.extra/leukoflow.json."""

from __future__ import annotations

import json

import pytest

from components import domain, model_metadata, settings
from components.model_metadata import MetadataError, ModelMetadata


def test_round_trip(tmp_path):
    meta = ModelMetadata(
        "cnn",
        96,
        brightness="mean",
        low_confidence_threshold=0.7,
        signatures=("serving_default",),
        keras_model="model.keras",
    )
    model_metadata.write(tmp_path, meta)
    assert (tmp_path / "assets.extra" / "leukoflow.json").is_file()
    assert model_metadata.read(tmp_path) == meta
    assert json.loads(model_metadata.path(tmp_path).read_text())["class_names"] == list(domain.CLASS_NAMES)


def test_an_old_file_reads_with_defaults_and_its_old_threshold_key(tmp_path):
    """An export from before a field existed: missing fields take their defaults; unknown keys are ignored."""
    model_metadata.path(tmp_path).parent.mkdir(parents=True)
    model_metadata.path(tmp_path).write_text(
        json.dumps({"model": "tiny", "image_size": 32, "low_confidence": 0.9, "written_by_a_newer_version": {"x": 1}})
    )
    meta = model_metadata.read(tmp_path)
    assert (meta.model, meta.image_size, meta.low_confidence, meta.brightness) == ("tiny", 32, 0.9, "none")
    assert meta.class_names == domain.CLASS_NAMES and meta.keras_model is None


def test_a_missing_threshold_falls_back_to_the_one_default(tmp_path):
    model_metadata.write(tmp_path, ModelMetadata("cnn", 32))
    meta = model_metadata.read(tmp_path)
    assert meta.low_confidence_threshold is None and meta.low_confidence == settings.LOW_CONFIDENCE_THRESHOLD


@pytest.mark.parametrize(
    "data, message",
    [
        ({"image_size": 32}, "lacks model"),
        ({"model": "cnn", "image_size": "big"}, "'image_size'"),
        ({"model": "cnn", "image_size": 32, "class_names": "Benign"}, "'class_names'"),
        ({"model": "cnn", "image_size": 32, "low_confidence_threshold": "high"}, "'low_confidence_threshold'"),
        ([1, 2], "JSON object"),
    ],
)
def test_a_malformed_file_is_a_clear_error(tmp_path, data, message):
    model_metadata.path(tmp_path).parent.mkdir(parents=True)
    model_metadata.path(tmp_path).write_text(json.dumps(data))
    with pytest.raises(MetadataError, match=message):
        model_metadata.read(tmp_path)
    assert model_metadata.read_or_none(tmp_path) is None


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(MetadataError, match="leukoflow.json is missing"):
        model_metadata.read(tmp_path)
    assert model_metadata.read_or_none(None) is None
