"""The HTTPS listener: one SSLContext per TLSPolicy, chosen by SNI before the handshake.

OpenSSL's SNI callback can swap certificates but not the protocol floor or the
client-certificate mode (those are fixed when the connection is created), so
the listener reads the ClientHello itself, picks the policy's context from the
*current* snapshot (certificates rotate without restart) and only then starts
asyncio's TLS protocol. Every failed handshake is counted in
``tls_errors_total{reason}`` and audit-logged.

The connection and its requests must agree (API.md, TLSPolicy): each request's
Host must select the same policy as the connection's SNI did
(:meth:`TlsSet.admits`; 421 otherwise). A connection without SNI, or with a
name no policy claims, gets the *fallback* context: the certificate of the
first policy without client authentication, and only hostnames of policies
without client authentication are reachable on it. When every policy asks
for client certificates, such a handshake is refused.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import tempfile
from asyncio import sslproto
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from kubegate.config import CompiledTls, SecretBundle

from .mtls_auth import SubjectMatcher
from .router import wildcard_suffixes

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
HANDSHAKE_TIMEOUT = 10.0
MAX_HELLO_BYTES = 16 * 1024 + 5
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_CLIENT_MODES = {"require": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


class PolicyContext(ssl.SSLContext):
    """An SSLContext that remembers its policy (HSTS, the client-auth rules checked on each request)."""

    policy_id: str
    hsts: str | None
    client_mode: str  # "require" | "optional" | "none" (no clientAuth)
    subjects: SubjectMatcher | None  # clientAuth.allowedSubjects; None = any verified client
    handshake: tuple  # what the handshake enforced: a connection made under other rules must reconnect
    fallback: bool  # serves connections without (or with an unclaimed) SNI


def _secret(secrets: SecretBundle, key: str | None, what: str, policy: str) -> str:
    value = secrets.values.get(key or "")
    if not value:
        raise ValueError(f"TLSPolicy {policy}: {what} is missing from the secret bundle")
    return value


def build_context(policy: CompiledTls, secrets: SecretBundle) -> tuple[PolicyContext, float | None]:
    """The server context of one policy and its certificate's notAfter (unix time)."""
    chain = _secret(secrets, policy.cert_chain, "certificate chain", policy.id)
    key = _secret(secrets, policy.private_key, "private key", policy.id)
    ctx = PolicyContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[policy.min_version]
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    private_dir = tempfile.mkdtemp(prefix="kubegate-tls-")  # mode 0700
    try:
        cert_path, key_path = os.path.join(private_dir, "tls.crt"), os.path.join(private_dir, "tls.key")
        for path, text in ((cert_path, chain), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
        ctx.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise ValueError(f"TLSPolicy {policy.id}: unusable certificate or key ({exc.reason or exc})") from None
    finally:
        shutil.rmtree(private_dir, ignore_errors=True)
    client = policy.client_auth
    if client is not None and client.mode != "none":
        ca = _secret(secrets, client.ca_bundle, "client CA bundle", policy.id)
        try:
            ctx.load_verify_locations(cadata=ca)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"TLSPolicy {policy.id}: unusable client CA bundle ({exc})") from None
        ctx.verify_mode = _CLIENT_MODES[client.mode]
    ctx.policy_id = policy.id
    ctx.hsts = policy.hsts.header_value() if policy.hsts else None
    mode = client.mode if client is not None else "none"
    ctx.client_mode = mode
    subjects = client.allowed_subjects if client is not None and mode != "none" else ()
    ctx.subjects = SubjectMatcher(subjects) if subjects else None
    ctx.handshake = (policy.id, policy.min_version, mode, client.ca_bundle if mode != "none" else None,
                     secrets.values.get(client.ca_bundle or "") if mode != "none" else None)
    ctx.fallback = False
    try:
        leaf = x509.load_pem_x509_certificate(chain.encode())
        not_after: float | None = leaf.not_valid_after_utc.timestamp()
    except ValueError:
        not_after = None
    return ctx, not_after


@dataclass(frozen=True, slots=True)
class TlsSet:
    """The contexts of one snapshot, indexed by SNI hostname."""

    exact: dict[str, PolicyContext]
    wildcard: dict[str, PolicyContext]  # ".example.com" -> context
    fallback: PolicyContext | None  # no SNI, or one no policy claims (see the module docstring)
    expiry: dict[str, float]  # policy id -> notAfter

    def owner(self, hostname: str) -> PolicyContext | None:
        """The policy claiming a (normalised) hostname: exact, then the longest wildcard."""
        ctx = self.exact.get(hostname)
        if ctx is not None or not self.wildcard:
            return ctx
        for suffix in wildcard_suffixes(hostname):
            ctx = self.wildcard.get(suffix)
            if ctx is not None:
                return ctx
        return None

    def select(self, server_name: str | None) -> PolicyContext | None:
        """The context for a ClientHello's SNI: its owner policy, else the fallback."""
        if server_name:
            ctx = self.owner(server_name.lower().rstrip("."))
            if ctx is not None:
                return ctx
        return self.fallback

    def admits(self, connection: PolicyContext, hostname: str) -> PolicyContext | None:
        """The policy of a request's Host when the connection may carry it; None means 421.

        A Host must select the policy the SNI selected, under the same handshake
        rules (TLS floor, client auth; after a reload that changed them, the client
        reconnects); on a fallback connection only policies without client auth
        whose TLS floor is not above the fallback policy's.
        """
        owner = self.owner(hostname)
        if owner is None:
            return None
        if connection.fallback:  # its handshake enforced the fallback policy's floor and no client auth
            open_enough = owner.client_mode == "none" and owner.minimum_version <= connection.minimum_version
            return owner if open_enough else None
        return owner if owner.handshake == connection.handshake else None


EMPTY_TLS = TlsSet({}, {}, None, {})


def build_tls_set(policies: tuple[CompiledTls, ...], secrets: SecretBundle,
                  dropped: dict[str, str] | None = None) -> TlsSet:
    """Build every policy's context; ValueError (naming the policy) on unusable material, or with
    ``dropped`` that policy is left out and named there ("TLSPolicy/ns/name" -> reason)."""
    exact: dict[str, PolicyContext] = {}
    wildcard: dict[str, PolicyContext] = {}
    open_policy: CompiledTls | None = None  # the first policy without client authentication
    expiry: dict[str, float] = {}
    for policy in policies:
        try:
            ctx, not_after = build_context(policy, secrets)
        except ValueError as exc:
            if dropped is None:
                raise
            dropped[f"TLSPolicy/{policy.id}"] = str(exc)
            continue
        if not_after is not None:
            expiry[policy.id] = not_after
        if open_policy is None and ctx.client_mode == "none":
            open_policy = policy
        for host in policy.hostnames:
            host = host.lower().rstrip(".")
            if host.startswith("*."):
                wildcard.setdefault(host[1:], ctx)
            else:
                exact.setdefault(host, ctx)
    fallback = None
    if open_policy is not None:
        fallback, _ = build_context(open_policy, secrets)
        fallback.fallback = True
    return TlsSet(exact, wildcard, fallback, expiry)


def server_name_from_hello(data: bytes) -> tuple[bool, str | None]:
    """Parse the SNI of a TLS ClientHello: (complete, name). complete=False: need more bytes."""
    if len(data) < 5:
        return False, None
    if data[0] != 0x16:  # not a handshake record (plain HTTP, garbage): let TLS fail it
        return True, None
    end = 5 + int.from_bytes(data[3:5], "big")
    if len(data) < end and len(data) < MAX_HELLO_BYTES:
        return False, None
    body = data[5:end]
    try:
        if body[0] != 0x01:
            return True, None
        pos = 4 + 2 + 32  # handshake header, client_version, random
        pos += 1 + body[pos]  # session id
        pos += 2 + int.from_bytes(body[pos:pos + 2], "big")  # cipher suites
        pos += 1 + body[pos]  # compression methods
        ext_end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
        pos += 2
        while pos + 4 <= min(ext_end, len(body)):
            ext_type = int.from_bytes(body[pos:pos + 2], "big")
            ext_len = int.from_bytes(body[pos + 2:pos + 4], "big")
            pos += 4
            if ext_type == 0:  # server_name: list length, type 0 (host_name), length, name
                if body[pos + 2] == 0:
                    name_len = int.from_bytes(body[pos + 3:pos + 5], "big")
                    return True, body[pos + 5:pos + 5 + name_len].decode("ascii", "replace")
                return True, None
            pos += ext_len
    except IndexError:
        pass
    return True, None


def _reason(exc: BaseException) -> str:
    """A bounded label for tls_errors_total (OpenSSL reason words, lowercased)."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower()
    if isinstance(exc, ConnectionAbortedError | TimeoutError):
        return "handshake_timeout"
    return type(exc).__name__.lower()


ErrorSink = Callable[[str, str | None, str], None]  # (reason, server name, peer)


class _TlsServerProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol, reporting failed handshakes instead of dropping them silently."""

    def __init__(self, *args, on_error: ErrorSink, server_name: str | None, peer: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._on_error = on_error
        self._server_name = server_name
        self._peer = peer

    def _on_handshake_complete(self, handshake_exc):
        if handshake_exc is not None:
            self._on_error(_reason(handshake_exc), self._server_name, self._peer)
        super()._on_handshake_complete(handshake_exc)

    def _check_handshake_timeout(self):
        if self._state == sslproto.SSLProtocolState.DO_HANDSHAKE:
            self._on_error("handshake_timeout", self._server_name, self._peer)
        super()._check_handshake_timeout()


class SniPeekProtocol(asyncio.Protocol):
    """Reads the ClientHello, chooses the policy context, then hands the socket to TLS."""

    def __init__(self, tls: Callable[[], TlsSet], app_factory: Callable[[], asyncio.Protocol],
                 on_error: ErrorSink) -> None:
        self._tls = tls
        self._app_factory = app_factory
        self._on_error = on_error
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timeout: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's are no asyncio.Transport subclass
        self._timeout = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._expire)

    def _peer(self) -> str:
        peer = self._transport.get_extra_info("peername") if self._transport else None
        return str(peer[0]) if peer else ""

    def _expire(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._on_error("handshake_timeout", None, self._peer())
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        complete, server_name = server_name_from_hello(self._buffer)
        if not complete:
            return
        if self._timeout is not None:
            self._timeout.cancel()
        transport = self._transport
        assert transport is not None
        ctx = self._tls().select(server_name)
        if ctx is None:
            self._on_error("no_certificate", server_name, self._peer())
            transport.abort()
            return
        loop = asyncio.get_running_loop()
        protocol = _TlsServerProtocol(
            loop, self._app_factory(), ctx, None, server_side=True,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT, on_error=self._on_error,
            server_name=server_name, peer=self._peer(),
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buffer = self._buffer, b""
        view = memoryview(data)
        while view:
            buf = protocol.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
        self._transport = None
