"""CIDR matching: IPv4, IPv6, IPv4-mapped addresses, merged intervals, deny over allow."""

from __future__ import annotations

import ipaddress
import random

import pytest
from kubegate.dataplane.ipfilter import CidrSet, IpFilter, parse_ip


def test_parse_ip_normalises():
    assert parse_ip("::ffff:10.1.2.3") == ipaddress.ip_address("10.1.2.3")
    assert parse_ip("[2001:db8::1]") == ipaddress.ip_address("2001:db8::1")
    assert parse_ip("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert parse_ip("not an ip") is None and parse_ip("") is None


def test_deny_wins_over_allow():
    f = IpFilter(allow=["10.0.0.0/8"], deny=["10.6.0.0/16"])
    assert f.permits("10.1.2.3")
    assert not f.permits("10.6.0.1")
    assert not f.permits("192.168.1.1")  # an allow list denies everything else


def test_deny_only_admits_the_rest():
    f = IpFilter(deny=["192.0.2.0/24", "2001:db8:bad::/48"])
    assert not f.permits("192.0.2.77") and not f.permits("::ffff:192.0.2.77")
    assert not f.permits("2001:db8:bad::5")
    assert f.permits("2001:db8:600d::5") and f.permits("198.51.100.1")
    assert not f.permits("garbage")  # unparsable addresses are never admitted by a filter


def test_mapped_cidr_entries_match_ipv4_clients():
    f = IpFilter(allow=["::ffff:10.0.0.0/104"])
    assert f.permits("10.200.0.1") and not f.permits("11.0.0.1")


def test_families_do_not_mix():
    f = IpFilter(allow=["0.0.0.0/0"])
    assert f.permits("1.2.3.4") and not f.permits("2001:db8::1")


def test_invalid_cidr_is_a_config_error():
    with pytest.raises(ValueError, match="invalid CIDR"):
        CidrSet(["10.0.0.0/33"])


def test_many_cidrs_agree_with_brute_force():
    rng = random.Random(7)
    cidrs = [f"{rng.randrange(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.0/{rng.choice([16, 20, 24, 28])}"
             for _ in range(1500)]
    cidrs += [f"2001:db8:{rng.randrange(65536):x}::/48" for _ in range(200)]
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    table = CidrSet(cidrs)
    probes = [ipaddress.ip_address(rng.getrandbits(32)) for _ in range(400)]
    probes += [n.network_address + 1 for n in nets[:200]]
    probes += [ipaddress.ip_address(f"2001:db8:{rng.randrange(65536):x}::1") for _ in range(100)]
    for ip in probes:
        assert (ip in table) == any(ip in n for n in nets), ip


def test_remembered_verdicts_agree_and_stay_bounded():
    f = IpFilter(allow=["10.0.0.0/8"], deny=["10.6.0.0/16"])
    addresses = [f"10.{i % 12}.{i // 12 % 256}.1" for i in range(3 * IpFilter.VERDICTS_KEPT)] + ["garbage", "::1"]
    fresh = [IpFilter(allow=["10.0.0.0/8"], deny=["10.6.0.0/16"]).permits(a) for a in addresses]
    for _ in range(2):  # second pass: partly from memory (the memory was cleared on the way)
        assert [f.permits(a) for a in addresses] == fresh
        assert len(f.decisions) <= IpFilter.VERDICTS_KEPT
    assert fresh.count(False) == 3 * IpFilter.VERDICTS_KEPT // 12 + 2  # 10.6.x.x, garbage and ::1 refused
