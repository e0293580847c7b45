"""Public cloud host names answered on loopback, for gateways that cannot be pointed elsewhere.

Some endpoints a cloud upstream needs are fixed in a gateway. Anthropic's
gateway posts Google token grants to ``https://oauth2.googleapis.com/token``
whatever the key file's ``token_uri`` says, and calls AssumeRole at
``https://sts.<region>.amazonaws.com`` whatever ``AWS_ENDPOINT_URL_STS`` says;
it honours ``HTTPS_PROXY`` and trusts ``NODE_EXTRA_CA_CERTS`` for both
(reference cag-cloud-upstreams §4).

:class:`FrontDoor` makes such names answer on loopback without touching DNS
or the machine's trust store: it is an HTTP proxy that accepts only
``CONNECT <name>:443`` for the names it routes, completes the TLS handshake
itself with a certificate for those names issued by a throwaway CA
(:attr:`ca_pem`, valid a day), and pipes the decrypted bytes to the plain-HTTP
fake on loopback that stands for that name
(:class:`~protocol_spec.fakes.google.FakeGoogleToken`,
:class:`~protocol_spec.fakes.sts.FakeSts`). Any other CONNECT target, and any
request that is not a CONNECT, gets 403: nothing leaves loopback. ``tunnels``
lists the targets asked for, refused ones included.

Point a gateway at it with ``HTTPS_PROXY=<url>``, ``NO_PROXY=127.0.0.1,localhost``
and ``NODE_EXTRA_CA_CERTS=<ca file>`` (or the trust setting of its runtime).
It stands in for the clouds' front doors, not for a corporate proxy: Gatehouse's
own proxy support is tested against proxy.py (tests/upstreams/test_egress_proxy.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["GOOGLE_TOKEN_HOST", "FrontDoor", "sts_host"]

GOOGLE_TOKEN_HOST = "oauth2.googleapis.com"
MAX_HEAD_BYTES = 8192
HEAD_TIMEOUT_S = 10.0
_CHUNK = 65536


def sts_host(region: str) -> str:
    """AWS STS's regional endpoint name, where AssumeRole goes by default."""
    return f"sts.{region}.amazonaws.com"


class FrontDoor:
    """A CONNECT-only proxy that answers for each name of ``routes`` (port 443) with the server at its port."""

    def __init__(self, routes: dict[str, int], *, host: str = "127.0.0.1", port: int = 0, target_host: str = "127.0.0.1") -> None:
        if not routes:
            raise ValueError("a front door needs at least one name to answer for")
        self.host = host
        self.port = port
        self.routes = dict(routes)
        self.target_host = target_host
        self.tunnels: list[str] = []
        self.ca_pem, cert_pem, key_pem = _issue(tuple(self.routes))
        self._tls = _server_context(cert_pem, key_pem)
        self._server: asyncio.Server | None = None
        # Both ends of every open tunnel: closing them is how close() ends the tunnels
        # (cancelling a start_server handler would make asyncio report it as an error).
        self._ends: set[asyncio.StreamWriter] = set()
        self._done = asyncio.Event()
        self._handlers = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.ca_pem)
        return path

    async def start(self) -> FrontDoor:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            for end in list(self._ends):
                end.close()
            if self._handlers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._done.wait(), 5.0)
            await server.wait_closed()

    async def __aenter__(self) -> FrontDoor:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers += 1
        self._done.clear()
        self._ends.add(writer)
        try:
            await self._tunnel(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the client went away or spoke something else: nothing to report to it
        finally:
            self._ends.discard(writer)
            self._handlers -= 1
            if not self._handlers:
                self._done.set()
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        if len(head) > MAX_HEAD_BYTES:
            return
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        authority = rest.partition(" ")[0]
        self.tunnels.append(authority)
        name, _, port = authority.rpartition(":")
        if method != "CONNECT" or name not in self.routes or port != "443":
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        # From here the client speaks TLS to what it believes is Google.
        await writer.start_tls(self._tls)
        inner_reader, inner_writer = await asyncio.open_connection(self.target_host, self.routes[name])
        self._ends.add(inner_writer)
        try:
            await asyncio.gather(_pipe(reader, inner_writer), _pipe(inner_reader, writer))
        finally:
            self._ends.discard(inner_writer)
            inner_writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(_CHUNK):
            sink.write(chunk)
            await sink.drain()
    finally:
        # Half-close so the other side sees the end of this direction.
        with contextlib.suppress(OSError, RuntimeError, ssl.SSLError):
            if sink.can_write_eof():
                sink.write_eof()


def _issue(names: tuple[str, ...]) -> tuple[bytes, bytes, bytes]:
    """A throwaway CA and a leaf for ``names`` signed by it: (CA PEM, leaf PEM, leaf key PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conformance fixtures throwaway CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


def _server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # load_cert_chain reads files only; they are needed for this call and no longer.
    with tempfile.TemporaryDirectory(prefix="google-front-") as tmp:
        cert, key = Path(tmp) / "leaf.pem", Path(tmp) / "leaf.key"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        key.chmod(0o600)
        context.load_cert_chain(cert, key)
    return context
