"""TLS: gRPC and HTTPS round trips with a self-signed certificate from TF Serving's SSLConfig file."""

from __future__ import annotations

import grpc
import pytest
import requests
from fixtures.images import encode_png, sample_image
from fixtures.model_base import install_version, start_server
from fixtures.tls import self_signed

pytestmark = pytest.mark.timeout(120)


def test_tls_grpc_and_https_round_trip(exported_versions, tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving.server import parse_ssl_config

    key_pem, cert_pem = self_signed()
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    ssl_config = tmp_path / "ssl.config"
    # TF Serving's SSLConfig holds the PEM text itself, escaped as a text-proto string.
    escaped = lambda b: b.decode().replace("\n", "\\n")  # noqa: E731
    ssl_config.write_text(
        f'server_key: "{escaped(key_pem)}"\nserver_cert: "{escaped(cert_pem)}"\nclient_verify: false\n'
    )
    assert parse_ssl_config(ssl_config.read_text()).server_cert == cert_pem
    base = tmp_path / "leukemia"
    install_version(exported_versions, base, 1)
    srv = start_server(base, ssl_config_file=str(ssl_config))
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert_pem)
        with grpc.secure_channel(f"localhost:{srv.grpc_port}", creds) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "leukemia"
            req.inputs["images"].CopyFrom(tf.make_tensor_proto([encode_png(sample_image(1))], dtype=tf.string))
            assert stub.Predict(req, timeout=30).model_spec.version.value == 1
        r = requests.get(
            f"https://localhost:{srv.rest_port}/v1/models/leukemia", verify=str(tmp_path / "cert.pem"), timeout=30
        )
        assert r.status_code == 200 and r.json()["model_version_status"][0]["state"] == "AVAILABLE"
        with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP to the TLS port is refused
            requests.get(f"http://localhost:{srv.rest_port}/v1/models/leukemia", timeout=10)
        with grpc.insecure_channel(f"localhost:{srv.grpc_port}") as plain:
            with pytest.raises(grpc.RpcError) as info:
                prediction_service_pb2_grpc.PredictionServiceStub(plain).Predict(req, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert requests.get(
            f"https://localhost:{srv.rest_port}/v1/models/leukemia", verify=str(tmp_path / "cert.pem"), timeout=30
        ).ok
    finally:
        srv.stop()


def test_mutual_tls_requires_a_client_certificate(exported_versions, tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    key_pem, cert_pem = self_signed()
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    ssl_config = tmp_path / "ssl.config"
    # File paths are accepted too (an extension: TF Serving wants the PEM text inline).
    ssl_config.write_text(
        f'server_key: "{tmp_path / "key.pem"}"\nserver_cert: "{tmp_path / "cert.pem"}"\n'
        f'custom_ca: "{tmp_path / "cert.pem"}"\nclient_verify: true\n'
    )
    base = tmp_path / "leukemia"
    install_version(exported_versions, base, 1)
    srv = start_server(base, ssl_config_file=str(ssl_config))
    try:
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "leukemia"
        req.inputs["images"].CopyFrom(tf.make_tensor_proto([encode_png(sample_image(1))], dtype=tf.string))
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=cert_pem, private_key=key_pem, certificate_chain=cert_pem
        )
        with grpc.secure_channel(f"localhost:{srv.grpc_port}", with_cert) as channel:
            assert (
                prediction_service_pb2_grpc.PredictionServiceStub(channel)
                .Predict(req, timeout=30)
                .model_spec.version.value
                == 1
            )
        without = grpc.ssl_channel_credentials(root_certificates=cert_pem)
        with grpc.secure_channel(f"localhost:{srv.grpc_port}", without) as channel:
            with pytest.raises(grpc.RpcError):
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=10)
        url = f"https://localhost:{srv.rest_port}/v1/models/leukemia"
        ca = str(tmp_path / "cert.pem")
        assert requests.get(url, verify=ca, cert=(ca, str(tmp_path / "key.pem")), timeout=30).status_code == 200
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(url, verify=ca, timeout=10)
    finally:
        srv.stop()
