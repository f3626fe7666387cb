"""Forged tokens with malformed time claims, through a real data plane.

A validly signed token whose ``exp`` was the string ``"9999999999"`` was admitted and never
expired (pyjwt compares ``int("9999999999")``, the gateway then saw no number and cached it as
a token without ``exp``). Time claims must be NumericDates in a sane range; anything else is a
401 whose audit line says why.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time

import aiohttp
import pytest
from kubegate.dataplane.audit import AuditLog

from kubegate.config import CompiledAuth, CompiledConfig, CompiledJwt, SecretBundle

SECRET = "claims-test-hmac-secret-0123456789abcdef"


def forge(payload: str) -> str:
    """An HS256 token over exactly this JSON text (so NaN, 1e400 and strings reach the gateway as sent)."""
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(payload.encode())
    signature = b64(hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


@pytest.fixture
async def gateway(backend, start_gateway, make_route):
    b = await backend()
    route = make_route("/*rest", b.url, auth=CompiledAuth(methods=("jwt",), jwt=CompiledJwt(
        algorithms=("HS256",), hmac_secret="jwt")))
    audit = io.StringIO()
    gw = await start_gateway(CompiledConfig(routes=(route,)), SecretBundle(values={"jwt": SECRET}),
                             audit=AuditLog(audit))
    return gw, audit


async def status_of(gw, token: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{gw.ports['http']}/x", headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json(content_type=None)


SOON = int(time.time()) + 86400  # fixed at collection: the suite may reach these tests many minutes later


@pytest.mark.parametrize("claims,why", [
    ('{"sub":"a","exp":"9999999999"}', "exp claim is not a number"),
    ('{"sub":"a","exp":"abc"}', "exp claim is not a number"),
    ('{"sub":"a","exp":true}', "exp claim is not a number"),
    ('{"sub":"a","exp":[1]}', "exp claim is not a number"),
    ('{"sub":"a","exp":1e400}', "exp claim is out of range"),
    ('{"sub":"a","exp":NaN}', "exp claim is out of range"),
    ('{"sub":"a","exp":1e300}', "exp claim is out of range"),
    ('{"sub":"a","exp":99999999999999999999999}', "exp claim is out of range"),
    (f'{{"sub":"a","exp":{SOON},"nbf":"0"}}', "nbf claim is not a number"),
    (f'{{"sub":"a","exp":{SOON},"iat":"now"}}', "iat claim is not a number"),
    (f'{{"sub":"a","exp":{SOON},"iat":-5}}', "iat claim is out of range"),
])
async def test_malformed_time_claims_get_401_with_the_reason_audited(gateway, claims, why):
    gw, audit = gateway
    for _ in range(2):  # and the second time too: a refused token is never cached as valid
        status, body = await status_of(gw, forge(claims))
        assert status == 401 and body["reason"] == "invalid_time_claim" and why in body["error"]
    lines = [json.loads(line) for line in audit.getvalue().splitlines()]
    assert [line["reason"] for line in lines] == ["invalid_time_claim"] * 2
    assert forge(claims).split(".")[2] not in audit.getvalue()


async def test_well_formed_time_claims_still_admit_and_expire(gateway):
    gw, _ = gateway
    now = time.time()
    assert (await status_of(gw, forge(f'{{"sub":"a","exp":{int(now) + 600},"nbf":{now - 5},"iat":{int(now)}}}')))[0] == 200
    status, body = await status_of(gw, forge(f'{{"sub":"a","exp":{int(now) - 120}}}'))
    assert status == 401 and body["reason"] == "token_expired"
    status, body = await status_of(gw, forge(f'{{"sub":"a","nbf":{int(now) + 600}}}'))
    assert status == 401 and body["reason"] == "token_not_yet_valid"
