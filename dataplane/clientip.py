"""The client's address: the socket peer, or X-Forwarded-For only through trusted proxies.

Walking X-Forwarded-For right to left and skipping trusted hops means a client
can prepend whatever it likes: only the hop our own proxies appended is used.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDRs or plain addresses; ValueError names the bad entry."""
    out = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"invalid trusted proxy {cidr!r}: use a CIDR such as 10.0.0.0/8") from None
    return tuple(out)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.7:5000"
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class ClientAddress:
    """Resolves the client IP for one listener configuration; immutable."""

    __slots__ = ("_trusted",)

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self._trusted = parse_networks(trusted_proxies)

    def _is_trusted(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(addr in net for net in self._trusted if net.version == addr.version)

    def of(self, peer: str | None, headers: CIMultiDictProxy[str]) -> str:
        """:meth:`resolve` for a request's headers (X-Forwarded-For is not even read without trusted proxies)."""
        if not self._trusted:
            return peer or ""
        return self.resolve(peer, headers.getall("X-Forwarded-For", []))

    def resolve(self, peer: str | None, forwarded_for: list[str]) -> str:
        """peer: the socket address; forwarded_for: every X-Forwarded-For header value in order."""
        peer = peer or ""
        if not self._trusted or not forwarded_for:
            return peer
        peer_ip = _parse_ip(peer)
        if peer_ip is None or not self._is_trusted(peer_ip):
            return peer
        hops = [h for value in forwarded_for for h in value.split(",")]
        client = str(peer_ip)
        for hop in reversed(hops):
            addr = _parse_ip(hop)
            if addr is None:  # garbage: stop at the last address we could trust
                return client
            client = str(addr)
            if not self._is_trusted(addr):
                return client
        return client
