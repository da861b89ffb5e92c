"""The caller's address from the real check-IP service address, without SPOTRUN_CHECKIP_URL.

Other tests point SPOTRUN_CHECKIP_URL at a loopback server; this one runs the production branch:
`public_ip()` asks https://checkip.amazonaws.com itself. Nothing outside this machine can be
reached, so the standard client settings do the routing, as on a laptop behind a proxy:
`https_proxy` names a loopback CONNECT proxy that sends every tunnel to a loopback TLS server
holding a certificate for checkip.amazonaws.com, signed by a test CA that `SSL_CERT_FILE` trusts.
The certificate is checked as usual (name and chain), so the test also shows that the address is
asked over verified HTTPS.
"""

from __future__ import annotations

import datetime
import http.server
import socket
import socketserver
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ec2.cloud.network import CHECKIP_URL, public_ip
from ec2.errors import ToolkitError

HOST = "checkip.amazonaws.com"
ANSWER = "198.51.100.23"


def _cert(subject: str, issuer_key, issuer_name, key, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pki(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A test CA and a certificate for `name` signed by it: (ca.pem, cert.pem, key.pem)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spotrun test CA")])
    ca = _cert("spotrun test CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(name, ca_key, ca.subject, key, ca=False)
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).requests.append((self.headers.get("Host"), self.path))
        body = f"{ANSWER}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Connect(socketserver.StreamRequestHandler):
    """An HTTP CONNECT proxy whose every tunnel leads to the loopback TLS server."""

    def handle(self):
        line = self.rfile.readline().decode()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        type(self).tunnels.append(line.split()[1] if line.startswith("CONNECT ") else line)
        if not line.startswith("CONNECT "):
            self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return
        upstream = socket.create_connection(self.server.upstream)
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        pump = threading.Thread(target=_pipe, args=(upstream, self.connection), daemon=True)
        pump.start()
        _pipe(self.connection, upstream)
        pump.join(5)
        upstream.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _serve(server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def checkip_via_proxy(tmp_path, monkeypatch):
    """checkip.amazonaws.com as the client reaches it through a proxy; yields (tunnels, requests)."""
    ca, cert, key = _pki(tmp_path, HOST)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    class Answer(_Answer):
        requests: list = []

    tls = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    tls.socket = context.wrap_socket(tls.socket, server_side=True)

    class Connect(_Connect):
        tunnels: list = []

    proxy = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Connect)
    proxy.daemon_threads = True
    proxy.upstream = tls.server_address
    _serve(tls), _serve(proxy)

    monkeypatch.delenv("SPOTRUN_CHECKIP_URL", raising=False)
    for var in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY", "HTTPS_PROXY", "SSL_CERT_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    yield Connect.tunnels, Answer.requests, tmp_path
    proxy.shutdown(), tls.shutdown()
    proxy.server_close(), tls.server_close()


def test_public_ip_asks_the_real_service_over_verified_https(checkip_via_proxy):
    tunnels, requests, _ = checkip_via_proxy
    assert CHECKIP_URL == f"https://{HOST}"
    assert public_ip(timeout=10) == ANSWER
    assert tunnels == [f"{HOST}:443"]
    assert requests == [(HOST, "/")]


def test_an_untrusted_certificate_is_refused(checkip_via_proxy, monkeypatch):
    """The same route with an untrusted CA: the address is not taken from an unverified answer."""
    _, requests, folder = checkip_via_proxy
    other = folder / "other"
    other.mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(_pki(other, HOST)[0]))  # a CA that did not sign it
    with pytest.raises(ToolkitError, match=r"could not learn your public IP from https://checkip.*ssh_cidr"):
        public_ip(timeout=10)
    assert requests == []
