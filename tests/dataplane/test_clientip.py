"""Client address resolution through trusted proxies (IPv4 and IPv6)."""

from __future__ import annotations

import pytest
from kubegate.dataplane.clientip import ClientAddress


def test_untrusted_peer_ignores_forwarded_for():
    assert ClientAddress(["10.0.0.0/8"]).resolve("203.0.113.5", ["1.2.3.4"]) == "203.0.113.5"
    assert ClientAddress().resolve("203.0.113.5", ["1.2.3.4"]) == "203.0.113.5"


def test_walks_right_to_left_skipping_trusted_hops():
    resolver = ClientAddress(["10.0.0.0/8", "2001:db8::/32"])
    assert resolver.resolve("10.0.0.1", ["6.6.6.6, 198.51.100.7, 10.1.1.1"]) == "198.51.100.7"
    assert resolver.resolve("2001:db8::1", ["2001:db8::2", "2001:db9::5"]) == "2001:db9::5"
    assert resolver.resolve("10.0.0.1", ["10.2.2.2"]) == "10.2.2.2"  # all trusted: leftmost


def test_garbage_hop_stops_the_walk():
    assert ClientAddress(["10.0.0.0/8"]).resolve("10.0.0.1", ["1.1.1.1, not-an-ip"]) == "10.0.0.1"


def test_bad_trusted_proxy_is_a_clear_error():
    with pytest.raises(ValueError, match="invalid trusted proxy 'nope'"):
        ClientAddress(["nope"])
