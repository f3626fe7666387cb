"""Which public key may verify which JWT algorithm: one rule for the translator and the data plane.

Key confusion is ruled out here: every algorithm is tied to the one key type it
may use (HMAC secrets for HS*, RSA keys for RS*/PS*, the matching EC curve for
ES*, Ed25519/Ed448 for EdDSA). The translator refuses a route whose key does
not fit one of its algorithms, so the data plane never has to.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

_EC_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


def key_fits(alg: str, key: Any) -> bool:
    """May ``key`` verify tokens signed with ``alg``? The one place that rules out key confusion."""
    if alg.startswith("HS"):
        return isinstance(key, bytes)
    if alg[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES[alg])
    if alg == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return False


def load_public_key(pem: str) -> Any:
    """A public key from a PEM public key or certificate."""
    data = pem.strip().encode()
    try:
        if b"BEGIN CERTIFICATE" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        return serialization.load_pem_public_key(data)
    except ValueError:
        raise ValueError("JWT public key is not a PEM public key or certificate") from None
