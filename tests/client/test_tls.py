"""The client's optional TLS (root certificate) against a real TLS gRPC server."""

from __future__ import annotations

import datetime
import grpc
import numpy as np
import pytest

from client.test_client import FlakyServer, _png
from serving.client import ServerUnavailable, ServingClient


def _self_signed(tmp_path):
    """A CA-less self-signed certificate for 127.0.0.1/localhost, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    return key_pem, cert_pem, tmp_path / "cert.pem"


def test_tls_round_trip_and_plaintext_refused(tmp_path):
    key_pem, cert_pem, cert_path = _self_signed(tmp_path)
    image = _png(np.zeros((4, 4, 3), np.uint8))
    with FlakyServer(credentials=grpc.ssl_server_credentials([(key_pem, cert_pem)])) as server:
        target = f"localhost:{server.port}"
        with ServingClient(target=target, root_cert=cert_path) as client:
            (prediction,) = client.predict([image])
        assert prediction.label == "Pre"
        with ServingClient(target=target, retries=1, initial_backoff_s=0.01, deadline_s=3) as plain:
            with pytest.raises(ServerUnavailable):
                plain.predict([image])
    assert len(server.calls) == 1  # the plaintext attempts never reached the servicer
