"""Per-route authorization of a verified client certificate by subject CN or SAN DNS name.

The TLS listener has already verified the chain against the policy's CA;
this module only decides whether that client may use a route. Entries of
the form ``CN=name`` match the subject common name exactly; plain entries
match a SAN DNS name (case-insensitive, as DNS is). An empty list admits
any verified client.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, frozen=True)
class ClientIdentity:
    common_names: tuple[str, ...]
    dns_names: tuple[str, ...]

    @property
    def label(self) -> str:
        """A non-secret name for principals and audit lines."""
        if self.common_names:
            return self.common_names[0]
        return self.dns_names[0] if self.dns_names else "-"


def client_identity(peer_cert: dict[str, Any] | None) -> ClientIdentity | None:
    """Names from an ``ssl.SSLSocket.getpeercert()`` dict; None without a verified certificate."""
    if not peer_cert:
        return None
    cns = tuple(
        value
        for rdn in peer_cert.get("subject", ())
        for name, value in rdn
        if name == "commonName"
    )
    dns = tuple(value for kind, value in peer_cert.get("subjectAltName", ()) if kind == "DNS")
    return ClientIdentity(cns, dns)


class SubjectMatcher:
    """Compiled ``allowedSubjects`` of one route."""

    __slots__ = ("_any", "_cns", "_dns")

    def __init__(self, subjects: Iterable[str]) -> None:
        cns, dns = set(), set()
        for entry in subjects:
            entry = entry.strip()
            if entry[:3].upper() == "CN=":
                cns.add(entry[3:].strip())
            else:
                dns.add(entry.lower())
        self._cns = frozenset(cns)
        self._dns = frozenset(dns)
        self._any = not cns and not dns

    def allows(self, identity: ClientIdentity) -> bool:
        if self._any:
            return True
        if any(cn in self._cns for cn in identity.common_names):
            return True
        return any(name.lower() in self._dns for name in identity.dns_names)
