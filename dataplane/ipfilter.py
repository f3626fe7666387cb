"""Client IP matching against CIDR lists, compiled once per config snapshot.

Networks are merged into sorted, disjoint integer intervals per IP version,
so a lookup is one ``bisect`` whatever the number of CIDRs. IPv4-mapped IPv6
addresses (``::ffff:10.0.0.1``, what a dual-stack socket reports) are
matched as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable
from functools import lru_cache

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=65_536)
def parse_ip(value: str) -> IpAddress | None:
    """The client address as an ip_address (IPv4-mapped IPv6 unwrapped); None if unparsable."""
    try:
        ip = ipaddress.ip_address(value.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=65_536)
def ip_key(value: str) -> tuple[int, int] | None:
    """(version, integer) of a client address, the form CidrSet looks up; None if unparsable."""
    ip = parse_ip(value)
    return None if ip is None else (ip.version, int(ip))


@lru_cache(maxsize=65_536)
def canonical_ip(value: str) -> str | None:
    """The normalised text form of a client address (rate-limit keys); None if unparsable."""
    ip = parse_ip(value)
    return None if ip is None else str(ip)


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    net = ipaddress.ip_network(cidr.strip(), strict=False)
    if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d/104 means the IPv4 network a.b.c.d/8
        return ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}", strict=False)
    return net


class CidrSet:
    """A set of networks answering ``ip in cidrs`` in O(log n)."""

    __slots__ = ("_ends", "_starts", "size")

    def __init__(self, cidrs: Iterable[str]) -> None:
        intervals: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        self.size = 0
        for cidr in cidrs:
            try:
                net = _network(cidr)
            except ValueError:
                raise ValueError(f"invalid CIDR {cidr!r}") from None
            intervals[net.version].append((int(net.network_address), int(net.broadcast_address)))
            self.size += 1
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        for version, spans in intervals.items():
            merged: list[list[int]] = []
            for start, end in sorted(spans):
                if merged and start <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], end)
                else:
                    merged.append([start, end])
            self._starts[version] = [s for s, _ in merged]
            self._ends[version] = [e for _, e in merged]

    def __contains__(self, ip: IpAddress) -> bool:
        return self.contains(ip.version, int(ip))

    def contains(self, version: int, number: int) -> bool:
        i = bisect_right(self._starts[version], number) - 1
        return i >= 0 and number <= self._ends[version][i]

    def __bool__(self) -> bool:
        return self.size > 0


class IpFilter:
    """A route's allow/deny lists: deny wins; a non-empty allow list denies everything else.

    The decisions for the last few hundred client addresses are remembered (a
    dict lookup instead of parsing and two bisects: most traffic comes from
    few addresses, e.g. load balancers); built per snapshot, so never stale.
    """

    __slots__ = ("_allow", "_deny", "decisions")

    VERDICTS_KEPT = 256  # per filter; the memory stays small however many routes have filters

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self._allow = CidrSet(allow)
        self._deny = CidrSet(deny)
        self.decisions: dict[str, bool] = {}  # client address -> permits(); read directly on hot paths

    def __bool__(self) -> bool:
        return bool(self._allow) or bool(self._deny)

    def permits(self, client_ip: str) -> bool:
        decision = self.decisions.get(client_ip)
        if decision is None:
            decision = self._decide(client_ip)
            if len(self.decisions) >= self.VERDICTS_KEPT:
                self.decisions.clear()
            self.decisions[client_ip] = decision
        return decision

    def _decide(self, client_ip: str) -> bool:
        key = ip_key(client_ip)
        if key is None:  # an unparsable address can never be proven allowed
            return False
        if self._deny and self._deny.contains(*key):
            return False
        return not self._allow or self._allow.contains(*key)
