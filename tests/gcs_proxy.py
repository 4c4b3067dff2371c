"""TensorFlow's own GCS client (`tf.io.gfile` on gs://) against a GCS server on 127.0.0.1.

TensorFlow's endpoints are compiled in (https://www.googleapis.com/storage/v1/, its /upload/
twin, https://storage.googleapis.com/) and no setting points them elsewhere. Its HTTP client,
libcurl, does honour the standard proxy variables, and TensorFlow passes `CURL_CA_BUNDLE` to it:
so a process started with `HTTPS_PROXY`/`HTTP_PROXY` naming the proxy below and `CURL_CA_BUNDLE`
naming the certificate authority made here sends its GCS requests to this proxy, which answers
TLS for Google's storage host names with a certificate from that authority (trusted by that
process only) and forwards each request, unchanged but for its target, to the emulator.
"""
from __future__ import annotations

import datetime
import os
import socket
import ssl
import threading

HOSTS = ["www.googleapis.com", "storage.googleapis.com"]


def make_certificates(directory: str) -> tuple[str, str, str]:
    """A certificate authority and a server certificate for HOSTS signed by it: (ca, cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(hours=1), not_valid_after=now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audionet_tf test authority")])
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid["not_valid_before"])
          .not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTS[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in HOSTS]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tuple(os.path.join(directory, name) for name in ("ca.pem", "server.pem", "server.key"))
    with open(paths[0], "wb") as handle:
        handle.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return paths


def _read_head(conn) -> tuple[str | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


def _more(conn, data: bytes) -> bytes:
    chunk = conn.recv(65536)
    if not chunk:
        raise ConnectionError("the client closed the connection inside a request body")
    return data + chunk


def _dechunk(conn, data: bytes) -> bytes:
    body = b""
    while True:
        while b"\r\n" not in data:
            data = _more(conn, data)
        size_line, data = data.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        while len(data) < size + 2:
            data = _more(conn, data)
        body, data = body + data[:size], data[size + 2:]
        if size == 0:
            return body


def _forward(conn, head: str, rest: bytes, upstream: tuple[str, int]) -> None:
    """One request from `conn` to the emulator (origin-form target, whole body, `Connection: close`)."""
    lines = head.split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    if "://" in target:  # a plain-HTTP request through a proxy names the whole URL
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    headers = [line for line in lines[1:]
               if not line.lower().startswith(("connection:", "proxy-connection:", "expect:"))]
    # A client that asked "Expect: 100-continue" sends its body after a short wait anyway; answered with
    # "100 Continue" here, TensorFlow's uploads closed the connection instead of sending it.
    if any(line.lower().replace(" ", "") == "transfer-encoding:chunked" for line in headers):
        body = _dechunk(conn, rest)
        headers = [line for line in headers if not line.lower().startswith(("transfer-encoding:", "content-length:"))]
        headers.append(f"Content-Length: {len(body)}")
    else:
        length = next((int(line.split(":", 1)[1]) for line in headers
                       if line.lower().startswith("content-length:")), 0)
        body = rest
        while len(body) < length:
            body = _more(conn, body)
    with socket.create_connection(upstream) as out:
        out.sendall(("\r\n".join([f"{method} {target} {version}", *headers, "Connection: close"]) + "\r\n\r\n")
                    .encode("latin-1") + body)
        while chunk := out.recv(65536):
            conn.sendall(chunk)


def _handle(client, upstream, context) -> None:
    try:
        head, rest = _read_head(client)
        if head is None:
            return
        if head.startswith("CONNECT "):
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            client = context.wrap_socket(client, server_side=True)
            head, rest = _read_head(client)
            if head is None:
                return
        _forward(client, head, rest, upstream)
    except (OSError, ValueError, ConnectionError):
        pass  # the client sees a closed connection and retries, as against a real server
    finally:
        try:
            client.close()
        except OSError:
            pass


class TlsProxy:
    """The proxy on 127.0.0.1 (one thread per connection, one request per connection)."""

    def __init__(self, upstream: tuple[str, int], cert: str, key: str):
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.upstream = upstream
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.port = self.socket.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.socket.accept()
            except OSError:
                return  # closed
            threading.Thread(target=_handle, args=(client, self.upstream, self.context), daemon=True).start()

    def close(self) -> None:
        """Stop accepting connections."""
        self.socket.close()


def tensorflow_env(proxy: TlsProxy, ca: str) -> dict[str, str]:
    """Environment for a process whose `tf.io.gfile` should reach the emulator on gs://."""
    url = f"http://127.0.0.1:{proxy.port}"
    env = {**os.environ, "HTTPS_PROXY": url, "HTTP_PROXY": url, "https_proxy": url, "http_proxy": url,
           "CURL_CA_BUNDLE": ca,
           # No credentials here: no metadata-server lookup, an empty bearer token (the emulator takes it).
           "NO_GCE_CHECK": "true", "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "100000"}
    for name in ("NO_PROXY", "no_proxy", "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        env.pop(name, None)
    return env
