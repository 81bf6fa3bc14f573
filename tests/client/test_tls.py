"""The client's optional TLS (root certificate) against a real TLS gRPC server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from fixtures.images import encode_png
from fixtures.tls import self_signed

from client.test_client import FlakyServer
from serving.client import ServerUnavailable, ServingClient


def _self_signed(tmp_path):
    """Key and certificate PEMs, and the certificate written to a file for the client's --root-cert."""
    key_pem, cert_pem = self_signed()
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    return key_pem, cert_pem, tmp_path / "cert.pem"


def test_tls_round_trip_and_plaintext_refused(tmp_path):
    key_pem, cert_pem, cert_path = _self_signed(tmp_path)
    image = encode_png(np.zeros((4, 4, 3), np.uint8))
    with FlakyServer(credentials=grpc.ssl_server_credentials([(key_pem, cert_pem)])) as server:
        target = f"localhost:{server.port}"
        with ServingClient(target=target, root_cert=cert_path) as client:
            (prediction,) = client.predict([image])
        assert prediction.label == "Pre"
        with ServingClient(target=target, retries=1, initial_backoff_s=0.01, deadline_s=3) as plain:
            with pytest.raises(ServerUnavailable):
                plain.predict([image])
    assert len(server.calls) == 1  # the plaintext attempts never reached the servicer
