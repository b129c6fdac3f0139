"""The pinned POST: to the checked address, with TLS verified against the host name the tenant registered."""

import datetime
import http.server
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.webhooks import pinned
from service.webhooks.addresses import Target
from tests.support import free_port

NAME = "hooks.pinned.test"


def _certificate(tmp_path):
    """A CA of our own and a certificate it signed for NAME: (CA file, certificate chain file, key file)."""
    now = datetime.datetime.now(datetime.UTC)

    def build(subject, issuer, key, signer, ca: bool, names=()):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("Chatlink test CA", "Chatlink test CA", ca_key, ca_key, True)
    cert = build(NAME, "Chatlink test CA", key, ca_key, False, [NAME])
    files = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


@pytest.fixture
def https_receiver(tmp_path):
    """An HTTPS server on loopback with a certificate for NAME; keeps the Host header of each POST."""
    ca_file, cert_file, key_file = _certificate(tmp_path)
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port(30000, 31000)), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], str(ca_file), received
    server.shutdown()
    server.server_close()


def test_tls_to_the_pinned_address_is_verified_against_the_registered_name(https_receiver):
    port, ca_file, received = https_receiver
    target = Target("https", NAME, port, "/in", "127.0.0.1")
    assert pinned.post(target, b"{}", {"Content-Type": "application/json"}, 5, ca_certs=ca_file) == 204
    assert received == [f"{NAME}:{port}"]


def test_a_certificate_for_another_name_is_refused(https_receiver):
    port, ca_file, received = https_receiver
    target = Target("https", "other.pinned.test", port, "/in", "127.0.0.1")
    with pytest.raises(pinned.PostFailed):
        pinned.post(target, b"{}", {}, 5, ca_certs=ca_file)
    assert received == []


def test_a_certificate_from_an_unknown_authority_is_refused(https_receiver):
    port, _, received = https_receiver
    with pytest.raises(pinned.PostFailed):
        pinned.post(Target("https", NAME, port, "/in", "127.0.0.1"), b"{}", {}, 5)
    assert received == []


def test_a_redirect_is_not_followed(receiver):
    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            self.send_response(307)
            self.send_header("Location", f"{receiver.url}/internal")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port(31000, 32000)), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        target = Target("http", "hooks.pinned.test", server.server_address[1], "/in", "127.0.0.1")
        assert pinned.post(target, b"{}", {}, 5) == 307
    finally:
        server.shutdown()
        server.server_close()
    assert receiver.received == []
