"""API key format: ``kg_<base62 of 32 random bytes>_<base62 CRC32 checksum>``.

Users may also bring their own keys (from Kong or another gateway), in any
format of at least :data:`MIN_KEY_BYTES` bytes. For keys in the generated
format the checksum lets the data plane reject typos and garbage without a
table lookup (and lets secret scanners recognise leaked keys); other keys
are simply looked up by hash. Only
:func:`key_hash` of a key ever leaves its Secret, and :func:`key_id` is a
short, non-secret label for status and audit logs.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib

PREFIX = "kg_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKSUM_LEN = 6  # base62 of a 32-bit CRC fits in 6 characters
_MAX_KEY_LEN = 256
MIN_KEY_BYTES = 16
_GENERATED = re.compile(r"kg_[0-9A-Za-z]{20,}_[0-9A-Za-z]{6}")


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


def generated_format(key: str) -> bool:
    """Does ``key`` look like a key kubegate generates (so its checksum must hold)?"""
    return len(key) <= _MAX_KEY_LEN and _GENERATED.fullmatch(key) is not None


def worth_a_lookup(key: str) -> bool:
    """The data plane's pre-check: a generated-format key must carry its checksum; any other key
    of at least MIN_KEY_BYTES is looked up by hash."""
    if generated_format(key):
        return checksum_ok(key)
    return len(key) >= MIN_KEY_BYTES  # str length <= byte length: a shorter str is never a valid key


def key_problem(key: str) -> str | None:
    """Why a key from a Secret cannot be used (never quoting the key), or None."""
    size = len(key.encode())
    if size < MIN_KEY_BYTES:
        return f"the key is {size} bytes long; keys need at least {MIN_KEY_BYTES} bytes"
    if generated_format(key) and not checksum_ok(key):
        return "the key has kubegate's generated format (kg_..._checksum) but its checksum is wrong"
    return None


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
