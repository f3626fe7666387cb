"""Reloads built off the event loop: requests are served while a big snapshot builds, swaps keep their order,
a bad config is still refused, and an old snapshot leaves no reference cycles (so the swap needs no full GC)."""

from __future__ import annotations

import asyncio
import gc

import aiohttp

from kubegate.config import (
    CompiledApiKey,
    CompiledAuth,
    CompiledBackend,
    CompiledConfig,
    CompiledRoute,
    SecretBundle,
)


def big(backend: str, n: int, variant: str) -> tuple[CompiledConfig, SecretBundle]:
    routes = [CompiledRoute(id=f"ns{i % 10}/r{i}", namespace=f"ns{i % 10}", name=f"r{i}", hosts=(f"h{i % 10}.test",),
                            path=f"/{variant}{i}/items/:id", backends=(CompiledBackend(url=backend),),
                            **({"auth": CompiledAuth(methods=("apiKey",))} if i % 4 == 0 else {}))
              for i in range(n)]
    routes.append(CompiledRoute(id="ns0/probe", namespace="ns0", name="probe", path="/probe",
                                backends=(CompiledBackend(url=backend),)))
    keys = [CompiledApiKey(id=f"k{i:010d}", namespace=f"ns{i % 10}", name=f"k{i}", hash_ref=f"apikey/k{i}")
            for i in range(n)]
    return (CompiledConfig(routes=tuple(routes), api_keys=tuple(keys)),
            SecretBundle(values={f"apikey/k{i}": f"{i:064x}" for i in range(n)}))


async def test_requests_are_served_while_a_big_snapshot_builds(backend, start_gateway):
    b = await backend()
    gw = await start_gateway(*big(b.url, 10, "a"))
    base = f"http://127.0.0.1:{gw.ports['http']}"
    served_during = 0
    async with aiohttp.ClientSession() as session:
        reload = asyncio.create_task(gw.apply_off_loop(*big(b.url, 3000, "b")))
        while not reload.done():
            async with session.get(f"{base}/probe") as response:
                assert response.status == 200
                served_during += 1
        digest = await reload
        assert gw.loaded_hash == digest
        async with session.get(f"{base}/b2999/items/1", headers={"Host": "h9.test"}) as response:
            assert response.status == 200
    assert served_during > 1  # on the loop, apply() would have let none through until it was done


async def test_off_loop_reloads_apply_in_order_and_refuse_bad_configs(backend, start_gateway, make_route):
    b = await backend()
    gw = await start_gateway(*big(b.url, 10, "a"))
    first, second = big(b.url, 500, "first"), big(b.url, 20, "second")
    done = await asyncio.gather(gw.apply_off_loop(*first), gw.apply_off_loop(*second))
    assert gw.loaded_hash == done[1]  # the later request wins, never an older config swapped in last
    # One object the data plane cannot load is left out (and reported), the rest served: off the loop too.
    bad = CompiledConfig(routes=(make_route("/x", b.url, request_schema={"type": "no-such-type"}),
                                 make_route("/ok", b.url)))
    digest = await gw.apply_off_loop(bad, SecretBundle())
    assert gw.loaded_hash == digest != done[1]
    assert len(gw.dropped) == 1 and "requestSchema" in next(iter(gw.dropped.values()))


async def test_an_old_snapshot_leaves_no_reference_cycles(backend, start_gateway):
    b = await backend()
    gw = await start_gateway(*big(b.url, 300, "a"))
    gc.collect()
    await gw.apply_off_loop(*big(b.url, 300, "b"))
    await gw.apply_off_loop(*big(b.url, 300, "c"))
    gc.unfreeze()
    try:
        gc.collect()  # what the test's own scaffolding left
        await gw.apply_off_loop(*big(b.url, 300, "d"))
        gc.unfreeze()
        assert gc.collect() == 0  # the replaced snapshot went by reference counting alone
    finally:
        gc.freeze()
