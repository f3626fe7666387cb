"""API key format: ``kg_<base62 of 32 random bytes>_<base62 CRC32 checksum>``.

The checksum lets the data plane reject typos and garbage without a table
lookup (and lets secret scanners recognise leaked keys); only
:func:`key_hash` of a key ever leaves its Secret, and :func:`key_id` is a
short, non-secret label for status and audit logs.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib

PREFIX = "kg_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKSUM_LEN = 6  # base62 of a 32-bit CRC fits in 6 characters
_MAX_KEY_LEN = 256


def _base62(number: int, width: int = 0) -> str:
    out = []
    while number:
        number, digit = divmod(number, 62)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out)).rjust(width, "0")


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LEN)


def generate_api_key(random_bytes: int = 32) -> str:
    """A new key from the OS CSPRNG; 32 bytes = 256 bits of entropy."""
    body = _base62(int.from_bytes(secrets.token_bytes(random_bytes), "big"), 43)
    return f"{PREFIX}{body}_{_checksum(body)}"


def checksum_ok(key: str) -> bool:
    """Cheap structural check: does this look like a kubegate key with a valid checksum?"""
    if not key.startswith(PREFIX) or len(key) > _MAX_KEY_LEN:
        return False
    body, sep, check = key[len(PREFIX):].rpartition("_")
    return bool(sep and body) and check == _checksum(body)


def key_hash(key: str) -> str:
    """sha256 of the key as hex: what the data plane compares against."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(hashed: str) -> str:
    """Short non-secret id of a key, from its hash (shown in status and audit logs)."""
    return f"ak_{hashed[:10]}"
