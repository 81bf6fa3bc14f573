"""Servable: load a version, its SignatureDefs, typed runs, and the warmup replay."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fixtures.images import encode_png, sample_image
from fixtures.serving_model import SIZE, write_warmup

pytestmark = pytest.mark.timeout(120)


def test_load_signatures_run_and_warmup(exported_versions, tmp_path):
    from components.servable import InputError, Servable, SignatureNotFound

    version_dir = tmp_path / "leukemia" / "4"
    shutil.copytree(exported_versions[1], version_dir)
    s = Servable.load(version_dir)
    assert (s.name, s.version, s.path) == ("leukemia", 4, version_dir.resolve())
    assert {"serving_default", "predict_pixels", "classify"} <= set(s.signatures)
    assert s.signatures["classify"].method_name == "tensorflow/serving/classify"
    assert s.warmup() == 1 and s.warmed_up
    out = s.run("", {"images": np.array([encode_png(sample_image(1))] * 3, dtype=object)})
    assert out["probabilities"].shape == (3, 4) and out["label"].shape == (3,)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1, rtol=1e-5)
    px = s.run("predict_pixels", {"pixels": np.zeros((1, SIZE, SIZE, 3), np.float64)})  # cast to float32
    assert px["probabilities"].dtype == np.float32
    with pytest.raises(SignatureNotFound, match='Serving signature key "nope" not found.'):
        s.run("nope", {})
    with pytest.raises(InputError, match="Missing but required: {images}"):
        s.run("", {"pixels": np.zeros((1,))})
    with pytest.raises(InputError, match="must be string"):
        s.run("", {"images": np.zeros((1,), np.float32)})
    with pytest.raises(InputError, match="shape"):
        s.run("predict_pixels", {"pixels": np.zeros((1, SIZE, SIZE, 4), np.float32)})


def test_bad_warmup_record_fails_the_version(exported_versions, tmp_path):
    import tensorflow as tf

    from components.servable import Servable

    version_dir = tmp_path / "leukemia" / "1"
    shutil.copytree(exported_versions[1], version_dir)
    write_warmup(version_dir, images=[b"not an image"])
    s = Servable.load(version_dir)
    with pytest.raises(tf.errors.InvalidArgumentError):
        s.warmup()
    assert not s.warmed_up


def test_not_a_saved_model(tmp_path):
    from components.servable import Servable

    with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
        Servable.load(tmp_path)
