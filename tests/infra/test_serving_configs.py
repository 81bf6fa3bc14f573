"""serving/*.config parse with TensorFlow Serving's own messages and say what production needs."""

from __future__ import annotations

from google.protobuf import text_format

from components import settings
from infra.helpers import REPO
from infra.tfs_protos import BatchingParameters, MonitoringConfig


def _parse(name: str, message):
    return text_format.Parse((REPO / "serving" / name).read_text(), message)


def test_models_config():
    from tensorflow_serving.config import model_server_config_pb2

    config = _parse("models.config", model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == settings.SERVED_MODEL_NAME
    assert model.base_path == f"/models/{settings.SERVED_MODEL_NAME}"
    assert model.model_platform == "tensorflow"
    versions = list(model.model_version_policy.specific.versions)
    assert versions, "production pins specific versions"
    # TF Serving rejects a config whose labels name versions it does not serve.
    assert "stable" in model.version_labels
    assert set(model.version_labels.values()) <= set(versions)


def test_batching_config():
    params = _parse("batching.config", BatchingParameters())
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        assert params.HasField(field), field
        assert getattr(params, field).value > 0, field
    # Batches run at most max_execution_batch_size rows; larger requests are split across them.
    assert params.enable_large_batch_splitting.value is True
    assert 0 < params.max_execution_batch_size.value <= params.max_batch_size.value


def test_monitoring_config():
    monitoring = _parse("monitoring.config", MonitoringConfig())
    assert monitoring.prometheus_config.enable is True
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_a_typo_is_rejected():
    import pytest

    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_sise { value: 8 }", BatchingParameters())
