"""TLSPolicy: one certificate per hostname (older policy wins), from a Secret or a cert-manager issuer.

A certificate/key pair the data plane's OpenSSL would refuse is refused here
first (``_pem_problem``), so a bad Secret never breaks a reload.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from kubegate.config import CompiledClientAuth, CompiledHsts, CompiledTls
from kubegate.resources import CertificateRequest, SourceObject
from kubegate.spec import TLSPolicySpec

from .common import (
    ACCEPTED_OK,
    CERTIFICATE_NOT_READY,
    CONFLICTED,
    INVALID_CERTIFICATE,
    SECRET_NOT_FOUND,
    ascii_text,
    certificate_name,
    key_kind,
)
from .memo import Fragment, Scope, Verdict
from .run import Processor, Run

KIND = "TLSPolicy"


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]


# What the data plane's OpenSSL (security level 2: 112-bit security) refuses to serve, decided here first.
MIN_RSA_BITS, MIN_EC_BITS = 2048, 224
_WEAK_HASHES = (hashes.MD5, hashes.SHA1)


def _serving_key_problem(public_key: object) -> str | None:
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < MIN_RSA_BITS:
        return f"the certificate has {key_kind(public_key)}; at least RSA-{MIN_RSA_BITS} is required"
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.key_size < MIN_EC_BITS:
        return f"the certificate has {key_kind(public_key)}; EC keys need at least {MIN_EC_BITS} bits"
    if isinstance(public_key, dsa.DSAPublicKey):
        return "the certificate has a DSA key, which no TLS cipher suite of the gateway can use"
    return None


def _pem_problem(cert: bytes, key: bytes) -> str | None:
    """Why a certificate/key pair cannot be served, or None; a bad PEM must not break reloads."""
    if ascii_text(cert) is None or ascii_text(key) is None:
        return "tls.crt and tls.key must be ASCII PEM text"
    try:
        certs = x509.load_pem_x509_certificates(cert)
    except ValueError:
        return "tls.crt is not a PEM certificate chain"
    try:
        private = load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        return "tls.key is not an unencrypted PEM private key"
    except Exception:  # noqa: BLE001 - cryptography refuses some key types with UnsupportedAlgorithm
        return "tls.key holds a key type that cannot be served"
    if _spki(certs[0].public_key()) != _spki(private.public_key()):
        return "tls.key does not match the certificate in tls.crt"
    problem = _serving_key_problem(certs[0].public_key())
    if problem:
        return problem
    for cert_obj in certs:
        if cert_obj.issuer == cert_obj.subject:
            continue  # a self-signed root's own signature is never checked
        try:
            algorithm = cert_obj.signature_hash_algorithm
        except Exception:  # noqa: BLE001 - UnsupportedAlgorithm for exotic signatures
            algorithm = None
        if isinstance(algorithm, _WEAK_HASHES):
            return (f"{cert_obj.subject.rfc4514_string() or 'a certificate'} in tls.crt is signed with "
                    f"{algorithm.name.upper()}; SHA-256 or better is required")
    return None


def _tls(scope: Scope, spec: TLSPolicySpec) -> CompiledTls | None:
    obj, inp = scope.obj, scope.inp
    prefix = f"tls.{obj.namespace}.{obj.name}"
    if spec.certificate.issuerRef is not None:
        scope.certificate = certificate_name(obj.namespace, obj.name)
        where = (inp.gateway_namespace, scope.certificate)
        data = scope.secret(*where) or {}
        if not data.get("tls.crt") or not data.get("tls.key"):
            scope.unresolved(
                CERTIFICATE_NOT_READY,
                f"Certificate {inp.gateway_namespace}/{scope.certificate} has not been issued yet "
                f"(Secret {where[0]}/{where[1]} has no tls.crt/tls.key)",
            )
            return None
    else:
        where = (obj.namespace, spec.certificate.secretRef.name)
        data = scope.secret(*where)
        if data is None or not data.get("tls.crt") or not data.get("tls.key"):
            scope.unresolved(
                SECRET_NOT_FOUND,
                f"certificate.secretRef: Secret {where[0]}/{where[1]} "
                + ("not found" if data is None else "has no tls.crt/tls.key"),
            )
            if data is None:
                scope.warn(f"{obj.ref}: Secret {where[0]}/{where[1]} is not among the inputs (kept elsewhere?)")
            return None
    problem = _pem_problem(data["tls.crt"], data["tls.key"])
    if problem:
        scope.unresolved(INVALID_CERTIFICATE, f"Secret {where[0]}/{where[1]}: {problem}")
        return None
    client_auth = None
    if spec.clientAuth is not None:
        ca_ref = None
        if spec.clientAuth.mode != "none" and spec.clientAuth.caSecretRef is not None:
            ca = scope.secret_value(obj.namespace, spec.clientAuth.caSecretRef, "clientAuth.caSecretRef")
            if ca is None:
                return None
            try:
                x509.load_pem_x509_certificates(ca)
                ca_text = ca.decode("ascii")
            except (ValueError, UnicodeDecodeError):
                scope.unresolved(INVALID_CERTIFICATE, "clientAuth.caSecretRef is not an ASCII PEM CA bundle")
                return None
            ca_ref = f"{prefix}.ca"
            scope.put(ca_ref, ca_text)
        client_auth = CompiledClientAuth(
            mode=spec.clientAuth.mode, ca_bundle=ca_ref, allowed_subjects=tuple(spec.clientAuth.allowedSubjects)
        )
    scope.put(f"{prefix}.crt", data["tls.crt"].decode())
    scope.put(f"{prefix}.key", data["tls.key"].decode())
    hsts = spec.hsts
    return CompiledTls(
        id=f"{obj.namespace}/{obj.name}",
        hostnames=tuple(h.lower() for h in spec.hostnames),
        cert_chain=f"{prefix}.crt",
        private_key=f"{prefix}.key",
        min_version=spec.minVersion,
        hsts=CompiledHsts(max_age=hsts.maxAge, include_subdomains=hsts.includeSubDomains, preload=hsts.preload)
        if hsts else None,
        client_auth=client_auth,
    )


def _hostname_claims(run: Run) -> None:
    """A hostname has one certificate: the older TLSPolicy wins, the other is Conflicted."""
    owner: dict[str, SourceObject] = {}
    for verdict in run.of(KIND):
        hostnames = verdict.entry.model.hostnames  # type: ignore[union-attr]
        clash = sorted(h for h in {x.lower() for x in hostnames} if h in owner)
        if clash:
            winner = owner[clash[0]]
            verdict.reject(
                CONFLICTED,
                f"hostname {clash[0]} is already served by the older TLSPolicy {winner.namespace}/{winner.name}",
            )
            continue
        for host in hostnames:
            owner[host.lower()] = verdict.obj


def _prepare(run: Run) -> None:
    """Hostname conflicts; then a Certificate to issue for every accepted policy with an issuerRef
    (issued before the policy can be served, so whether it compiles does not matter)."""
    _hostname_claims(run)
    for verdict in run.of(KIND):
        spec: TLSPolicySpec = verdict.entry.model  # type: ignore[assignment]
        issuer = spec.certificate.issuerRef
        if verdict.accepted is not ACCEPTED_OK or issuer is None:
            continue
        run.certificates.append(CertificateRequest(
            name=certificate_name(verdict.obj.namespace, verdict.obj.name),
            policy=verdict.ref,
            dns_names=tuple(sorted({h.lower() for h in spec.hostnames})),
            issuer_name=issuer.name,
            issuer_kind=issuer.kind,
            issuer_group=issuer.group,
            duration=spec.certificate.duration or None,
            renew_before=spec.certificate.renewBefore or None,
        ))


def _serve(verdict: Verdict, fragment: Fragment, run: Run) -> tuple[str, CompiledTls, bytes]:
    policy_tls, payload = verdict.entry.serve(fragment)
    return policy_tls.id, policy_tls, payload


PROCESSOR = Processor(kind=KIND, output="tls", prepare=_prepare, build=_tls, serve=_serve)
