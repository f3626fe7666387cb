"""Token buckets in both stores, against a real redis-server (killed to prove the failure modes)."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import pytest
from kubegate.dataplane.metrics import Metrics
from kubegate.dataplane.ratelimit import (
    ALLOWED_EMPTY,
    Charge,
    ChargeSet,
    MemoryRateLimiter,
    RateResult,
    build_rate_limiter,
    decide,
    local_share,
    refill,
)
from kubegate.dataplane.redis_limits import CircuitBreaker, Deadline, RedisRateLimiter, _Packed

sys.path.insert(0, str(Path(__file__).parent))
from redis_fixture import RedisServer, free_port, running_redis

SLOW = 1 / 60  # one token per minute: no refill during a test


def charge(bucket: str, burst: int, per_second: float = SLOW, requests: int | None = None,
           dimension: str = "ip") -> Charge:
    return Charge(f"kg:{{t}}:rl:{bucket}", requests or burst, burst, per_second, dimension)


@pytest.fixture
def redis_server():
    yield from running_redis()


@pytest.fixture(params=["memory", "redis"])
async def limiter(request):
    if request.param == "memory":
        store = MemoryRateLimiter()
    else:
        server = request.getfixturevalue("redis_server")
        store = RedisRateLimiter(server.url, timeout=0.5)
    yield store
    await store.close()


# --- pure arithmetic ------------------------------------------------------------


def test_refill_is_capped_at_capacity():
    c = charge("a", 5, per_second=1.0)
    assert refill(0.0, 10.0, 12.5, c) == 2.5
    assert refill(4.0, 10.0, 100.0, c) == 5.0
    assert refill(3.0, 10.0, 9.0, c) == 3.0  # a clock going backwards never adds tokens


def test_decide_reports_the_binding_and_the_refusing_limit():
    a, b = charge("a", 10, per_second=1.0), charge("b", 2, per_second=0.5, dimension="user")
    ok = decide([10.0, 2.0], [a, b])
    assert (ok.allowed, ok.limit, ok.remaining, ok.reset_seconds) == (True, 2, 1, 2)
    refused = decide([10.0, 0.25], [a, b])
    assert not refused.allowed and refused.denied_dimension == "user"
    assert refused.retry_after == 2  # (1 - 0.25) / 0.5 = 1.5 s, rounded up
    assert refused.headers()["Retry-After"] == "2"


def test_unavailable_result_has_no_headers():
    assert RateResult(allowed=True, store_unavailable=True).headers() == {}


async def test_memory_one_limit_fast_path_agrees_with_the_general_path():
    import random

    rng = random.Random(3)
    clock = [0.0]
    fast, general = MemoryRateLimiter(clock=lambda: clock[0]), MemoryRateLimiter(clock=lambda: clock[0])
    c = charge("same", 4, per_second=2.0)
    for _ in range(300):
        clock[0] += rng.choice([0.0, 0.0, 0.1, 0.3, 1.7])
        assert await fast.hit([c], "open") == general.hit_now([c])


def test_memory_decisions_over_several_limits_agree_with_the_pure_arithmetic():
    """hit_now's one-pass loop against refill() + decide(), over random clocks and limit mixes."""
    import random

    rng = random.Random(7)
    clock = [0.0]
    store = MemoryRateLimiter(clock=lambda: clock[0])
    model: dict[str, tuple[float, float]] = {}
    pool = [charge("a", 3, per_second=1.0), charge("b", 5, per_second=0.5, dimension="user"),
            charge("c", 2, per_second=4.0, dimension="apiKey"), charge("d", 1, per_second=0.2, dimension="header")]
    for _ in range(2000):
        clock[0] += rng.choice([0.0, 0.0, 0.05, 0.3, 1.1, 4.0])
        charges = rng.sample(pool, rng.randint(1, 4))
        levels = [c.capacity if c.bucket not in model else refill(*model[c.bucket], clock[0], c) for c in charges]
        expected = decide(levels, charges)
        if expected.allowed:
            for c, level in zip(charges, levels):
                model[c.bucket] = (level - 1.0, clock[0])
        assert store.hit_now(charges) == expected


def test_lines_now_is_hit_now_with_an_admitting_result_as_its_lines():
    """Admission asks an in-memory store lines_now(): the same decisions and buckets as hit_now(), an admitting
    result given as RateResult.lines() and any other as the RateResult, for one bucket and several."""
    import random

    rng = random.Random(11)
    clock = [0.0]
    fast, general = MemoryRateLimiter(clock=lambda: clock[0]), MemoryRateLimiter(clock=lambda: clock[0])
    pool = [charge("a", 3, per_second=1.0), charge("b", 5, per_second=0.5, dimension="user")]
    outcomes = set()
    for _ in range(1000):
        clock[0] += rng.choice([0.0, 0.0, 0.05, 0.3, 1.1])
        charges = rng.sample(pool, rng.randint(1, 2))
        expected = general.hit_now(charges)
        got = fast.lines_now(charges)
        assert got == (expected.lines() if expected.allowed else expected)
        outcomes.add((len(charges), expected.allowed))
    assert outcomes == {(1, True), (1, False), (2, True), (2, False)}
    assert fast._buckets == general._buckets
    assert fast.lines_now([]) is ALLOWED_EMPTY


def test_a_sweep_never_forgets_a_bucket_that_is_not_full_again():
    """The memory sweep drops idle buckets; one of a slow limit (2 a day) spent an hour ago is not full:
    forgetting it would hand out a new burst (a client could wait out the sweep instead of the day)."""
    clock = [0.0]
    store = MemoryRateLimiter(clock=lambda: clock[0], sweep_every=10)
    daily = charge("daily", 2, per_second=2 / 86_400)
    busy = charge("busy", 1000, per_second=1000.0)
    assert [store.hit_now([daily]).allowed for _ in range(3)] == [True, True, False]
    clock[0] += 2 * 3600  # two hours later: 1/6 of a token back
    for _ in range(50):  # other traffic triggers sweeps
        store.hit_now([busy])
    assert not store.hit_now([daily]).allowed
    clock[0] += 86_400  # a day later it is full again, and may be forgotten
    for _ in range(50):
        store.hit_now([busy])
    assert [store.hit_now([daily]).allowed for _ in range(3)] == [True, True, False]


def test_build_rate_limiter_picks_the_store():
    assert isinstance(build_rate_limiter(None), MemoryRateLimiter)
    assert isinstance(build_rate_limiter("redis://127.0.0.1:1/0"), RedisRateLimiter)


# --- both stores: exact behaviour -----------------------------------------------------


async def test_n_plus_first_request_is_refused_with_headers(limiter):
    c = charge("exact", 3)
    results = [await limiter.hit([c], "open") for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results] == [2, 1, 0, 0]
    assert results[0].headers() == {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "2",
                                    "X-RateLimit-Reset": "60"}
    refused = results[3].headers()
    assert refused["X-RateLimit-Limit"] == "3" and refused["X-RateLimit-Remaining"] == "0"
    assert 59 <= int(refused["Retry-After"]) <= 60
    assert int(refused["X-RateLimit-Reset"]) == 180


async def test_refused_request_consumes_no_other_limit(limiter):
    wide, narrow = charge("wide", 5), charge("narrow", 2, dimension="user")
    assert (await limiter.hit([wide, narrow], "open")).allowed
    assert (await limiter.hit([wide, narrow], "open")).allowed
    refused = await limiter.hit([wide, narrow], "open")
    assert not refused.allowed and refused.denied_dimension == "user"
    # the refused request took nothing from "wide": 5 - 2 charged, one more now -> 2 left
    assert (await limiter.hit([wide], "open")).remaining == 2


async def test_buckets_refill_over_time(limiter):
    c = charge("fast", 1, per_second=20.0)  # one token every 50 ms
    assert (await limiter.hit([c], "open")).allowed
    assert not (await limiter.hit([c], "open")).allowed
    await asyncio.sleep(0.08)
    assert (await limiter.hit([c], "open")).allowed


async def test_no_charges_always_admit(limiter):
    assert (await limiter.hit([], "closed")).allowed


# --- Redis specifics --------------------------------------------------------------------


async def test_two_gateways_share_one_redis(redis_server):
    first, second = RedisRateLimiter(redis_server.url), RedisRateLimiter(redis_server.url)
    try:
        c = charge("shared", 4)
        allowed = [(await (first if i % 2 else second).hit([c], "open")).allowed for i in range(6)]
        assert allowed == [True, True, True, True, False, False]
    finally:
        await first.close()
        await second.close()


async def test_hit_then_hands_admission_lines_or_the_result_from_the_store(redis_server):
    """What admission asks Redis (hit_then): the store's admitting answer as RateResult.lines(), a refusal and
    the failure mode's answer as the RateResult, each passed to ``then`` with its arguments."""
    store, reference = RedisRateLimiter(redis_server.url), RedisRateLimiter(redis_server.url)
    dead = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    try:
        c, twin = charge("then", 2), charge("then-twin", 2)

        def then(outcome, tag):
            return tag, outcome
        for tag in ("a", "b"):  # the same limit on a bucket of its own, asked through hit()
            expected = (await reference.hit([twin], "closed")).lines()
            assert await store.hit_then([c], "closed", then, tag) == (tag, expected)
        tag, refused = await store.hit_then([c], "closed", then, "c")
        assert tag == "c" and type(refused) is RateResult and not refused.allowed and refused.retry_after >= 1
        tag, down = await dead.hit_then([c], "closed", then, "d")
        assert tag == "d" and down.store_unavailable and not down.allowed
        assert await store.hit_then([], "closed", then, "e") == ("e", ALLOWED_EMPTY)
    finally:
        for each in (store, reference, dead):
            await each.close()


async def test_noscript_is_recovered(redis_server):
    store = RedisRateLimiter(redis_server.url)
    try:
        c = charge("flushed", 3)
        assert (await store.hit([c], "closed")).remaining == 2
        assert redis_server.command("SCRIPT", "FLUSH").startswith(b"+OK")
        after = await store.hit([c], "closed")
        assert after.allowed and not after.store_unavailable and after.remaining == 1
    finally:
        await store.close()


async def test_password_and_database_from_the_url(caplog):
    import redis.asyncio as aioredis

    password = "s3cret-Pass-Word"
    server = RedisServer("--requirepass", password).start()
    base = f"127.0.0.1:{server.port}"
    good = RedisRateLimiter(f"redis://:{password}@{base}/3", timeout=0.5)
    wrong = RedisRateLimiter(f"redis://:not-{password}@{base}/3", timeout=0.5)
    try:
        assert (await good.hit([charge("authed", 4)], "closed")).remaining == 3
        for db, count in ((3, 1), (0, 0)):
            client = aioredis.from_url(f"redis://:{password}@{base}/{db}")
            assert await client.exists("kg:{t}:rl:authed") == count
            await client.aclose()
        refused = await wrong.hit([charge("authed", 4)], "closed")
        assert refused.store_unavailable and not refused.allowed
        assert password not in caplog.text
    finally:
        await good.close()
        await wrong.close()
        server.stop()


async def test_buckets_expire_in_redis(redis_server):
    import redis.asyncio as aioredis

    store = RedisRateLimiter(redis_server.url)
    client = aioredis.from_url(redis_server.url)
    try:
        await store.hit([charge("ttl", 2, per_second=1.0)], "open")
        ttl = await client.pttl("kg:{t}:rl:ttl")
        assert 0 < ttl <= 3000  # 2 s to refill from empty + 1 s slack
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_dead_redis_applies_failure_mode_fast_and_trips_the_breaker(redis_server: RedisServer, mode):
    metrics = Metrics()
    store = RedisRateLimiter(redis_server.url, metrics=metrics, timeout=0.05,
                             breaker=CircuitBreaker(threshold=3, cooldown=0.3))
    c = charge("dead", 100)
    try:
        assert (await store.hit([c], mode)).allowed  # warm: connection pooled
        redis_server.stop()
        for _ in range(3):
            started = time.perf_counter()
            result = await store.hit([c], mode)
            assert time.perf_counter() - started < 0.2
            assert result.store_unavailable and result.allowed == (mode == "open")
            assert result.headers() == {}
        calls = store.calls
        assert store.breaker.is_open
        started = time.perf_counter()
        for _ in range(50):
            assert (await store.hit([c], mode)).allowed == (mode == "open")
        assert time.perf_counter() - started < 0.05  # breaker open: Redis not even tried
        assert store.calls == calls
        errors = metrics.registry.get_sample_value("kubegate_ratelimit_store_errors_total", {"failure_mode": mode})
        assert errors == 53

        redis_server.start()  # same port: after the cool-down a half-open probe closes the breaker
        await asyncio.sleep(0.35)
        recovered = await store.hit([c], mode)
        assert recovered.allowed and not recovered.store_unavailable
        assert not store.breaker.is_open
    finally:
        await store.close()


def test_local_share_divides_requests_burst_and_refill():
    share = local_share([charge("a", 10, 10 / 60), charge("b", 2, 1.0)], 3)
    assert [(c.requests, c.capacity, round(c.per_second * 60, 6)) for c in share] == [(3, 3, 3.333333), (1, 1, 20.0)]
    assert local_share([charge("a", 10)], 0)[0].capacity == 10  # no count yet: this replica alone


async def test_local_failure_mode_admits_exactly_the_replicas_share_while_redis_is_down(redis_server: RedisServer):
    """Three live replicas share requests=9: while the store is dead this one admits exactly 3 per window,
    refuses the rest with headers (a real decision, not a store error), and Redis decides again once back."""
    replicas = 3
    store = RedisRateLimiter(redis_server.url, timeout=0.05, breaker=CircuitBreaker(threshold=1, cooldown=0.3),
                             live_replicas=lambda: replicas)
    shared = ChargeSet([charge("local", 9)])
    try:
        assert (await store.hit(shared, "local")).remaining == 8  # Redis decides: 8 of 9 left
        redis_server.stop()
        results = [await store.hit(shared, "local") for _ in range(20)]
        assert [r.allowed for r in results] == [True] * 3 + [False] * 17
        assert not any(r.store_unavailable for r in results)
        assert results[-1].headers()["X-RateLimit-Limit"] == "3" and results[-1].retry_after >= 1
        replicas = 1  # the others went: a bigger share refills faster, but what was spent stays spent
        assert not (await store.hit(shared, "local")).allowed

        redis_server.start()  # empty: Redis counts afresh, the local bucket (exhausted) no longer decides
        await asyncio.sleep(0.35)
        back = [await store.hit(shared, "local") for _ in range(10)]
        assert [r.allowed for r in back] == [True] * 9 + [False]
        assert back[0].remaining == 8 and redis_server.command("EXISTS", "kg:{t}:rl:local").startswith(b":1")
    finally:
        await store.close()


async def test_hung_redis_is_detected_by_the_watchdog(redis_server: RedisServer):
    store = RedisRateLimiter(redis_server.url, timeout=0.05, breaker=CircuitBreaker(threshold=1, cooldown=0.2))
    c = charge("hung", 100)
    try:
        assert not (await store.hit([c], "closed")).store_unavailable
        redis_server.pause()
        started = time.perf_counter()
        results = await asyncio.gather(*(store.hit([c], "closed") for _ in range(20)))
        assert time.perf_counter() - started < 0.2  # every waiter failed together, within ~1.5 x timeout
        assert all(r.store_unavailable and not r.allowed for r in results)
        redis_server.resume()
        await asyncio.sleep(0.25)
        assert not (await store.hit([c], "closed")).store_unavailable  # fresh connection after the cool-down
    finally:
        redis_server.resume()
        await store.close()


@pytest.mark.parametrize("turns", [1, 2, 3, 4, 5, 6])
async def test_busy_event_loop_is_not_taken_for_a_dead_redis(redis_server: RedisServer, turns):
    """The loop blocks 4 x the store timeout a few turns in: before, during or after the write."""
    store = RedisRateLimiter(redis_server.url, timeout=0.05)
    c = charge("busy", 1000)
    try:
        await store.hit([c], "closed")

        async def hog():
            for _ in range(turns):
                await asyncio.sleep(0)
            time.sleep(0.2)  # noqa: ASYNC251 - block the loop while the batch is in flight

        results = await asyncio.gather(*(store.hit([c], "closed") for _ in range(10)), hog())
        assert not any(r.store_unavailable for r in results[:10])
    finally:
        await store.close()


async def test_concurrent_calls_share_a_batch_and_each_gets_its_own_reply(redis_server):
    store = RedisRateLimiter(redis_server.url, timeout=0.5)
    c = charge("crowd", 20)
    try:
        results = await asyncio.gather(*(store.hit([c], "open") for _ in range(30)))
        assert [r.allowed for r in results] == [True] * 20 + [False] * 10  # exactly the burst, in order
        assert [r.remaining for r in results[:20]] == list(range(19, -1, -1))
        assert all(r.headers()["Retry-After"] for r in results[20:])
    finally:
        await store.close()


def evalsha_calls(server: RedisServer) -> int:
    stats = server.command("INFO", "commandstats").decode()
    found = re.search(r"cmdstat_evalsha:calls=(\d+)", stats)
    return int(found.group(1)) if found else 0


async def test_a_batch_is_one_round_trip_and_one_script_call_per_slot(redis_server):
    store = RedisRateLimiter(redis_server.url, timeout=0.5)
    store.MAX_REQUESTS_PER_CALL = 4  # so one slot's requests also span several calls
    ours = ChargeSet([charge("ours", 5)])  # hash tag {t}
    theirs = ChargeSet([Charge("kg:{u}:rl:theirs", 3, 3, SLOW, "ip")])  # another slot: never in the same call
    try:
        assert (await store.hit(ours, "closed")).remaining == 4  # warm: connected, script cached
        trips, calls = store.round_trips, evalsha_calls(redis_server)
        results = await asyncio.gather(*(store.hit(c, "closed") for c in [ours, theirs] * 6))
        assert store.round_trips == trips + 1
        assert evalsha_calls(redis_server) == calls + 4  # {t}: 6 requests in 2 calls, {u}: 6 in 2
        assert [(r.allowed, r.remaining) for r in results[0::2]] == [(True, 3), (True, 2), (True, 1), (True, 0),
                                                                   (False, 0), (False, 0)]
        assert [r.allowed for r in results[1::2]] == [True, True, True, False, False, False]
        assert {r.denied_dimension for r in results if not r.allowed} == {"ip"}
        # the state written once per bucket at the end of a call is what one write per request left
        assert not (await store.hit(ours, "closed")).allowed
        assert not (await store.hit(theirs, "closed")).allowed
        assert ours.wire is not None  # encoded once, reused by every request of this shape
    finally:
        await store.close()


def test_a_one_slot_batch_is_encoded_as_the_general_path_encodes_that_slot():
    """The usual batch (one slot group) takes _calls' short path: the same script call, bytes and argument
    count, as the general path gives that group when another slot's request is in the batch too."""
    store = RedisRateLimiter("redis://127.0.0.1:1/0")
    shapes = [ChargeSet([charge("one", 5)]), ChargeSet([charge("two", 5), charge("three", 2, dimension="user")]),
              ChargeSet([charge("one", 5)])]
    for shape in shapes:
        shape.wire = _Packed(shape, store._ttl_args)
    other = ChargeSet([Charge("kg:{u}:rl:other", 3, 3, SLOW, "ip")])
    other.wire = _Packed(other, store._ttl_args)
    ours = [(shape.wire, None) for shape in shapes]
    (indexes, argc, body), = store._calls(ours)
    general = store._calls([*ours, (other.wire, None)])
    assert (list(indexes), argc, body) == (general[0][0], general[0][1], general[0][2])
    assert [c[0] for c in general] == [[0, 1, 2], [3]]
    assert argc == 3 + 4 + 1 + 3 + 3 * 4  # EVALSHA sha numkeys, 4 keys, the request count, 3 n, 3 per bucket


async def test_a_request_with_several_buckets_in_a_crowded_batch(redis_server):
    store = RedisRateLimiter(redis_server.url, timeout=0.5)
    shared = charge("per-route", 6)
    clients = [ChargeSet([shared, charge(f"client-{i}", 2)]) for i in range(3)]
    try:
        results = await asyncio.gather(*(store.hit(c, "closed") for c in clients * 3))
        # in order: clients 0,1,2 (route 5,4,3 left), again (2,1,0 left; each client 0 left), then refused:
        # the route bucket has nothing left, and a refusal takes nothing from the client buckets
        assert [r.allowed for r in results] == [True] * 6 + [False] * 3
        assert [r.remaining for r in results[:6]] == [1, 1, 1, 0, 0, 0]
        assert all(r.denied_dimension == "ip" and r.retry_after >= 1 for r in results[6:])
    finally:
        await store.close()


async def test_an_error_reply_fails_only_its_own_call(redis_server):
    store = RedisRateLimiter(redis_server.url, timeout=0.5)
    assert redis_server.command("SET", "kg:{t}:rl:wrongtype", "x").startswith(b"+OK")
    good, bad = charge("fine", 5), charge("wrongtype", 5)
    try:
        results = await asyncio.gather(store.hit([good], "closed"), store.hit([bad], "closed"),
                                       store.hit([good], "closed"))
        assert [r.store_unavailable for r in results] == [False, True, False]
        assert [results[0].remaining, results[2].remaining] == [4, 3]
        assert (await store.hit([good], "closed")).remaining == 2  # the connection stayed in step
    finally:
        await store.close()


async def test_redis_restarted_while_idle_costs_no_request(redis_server: RedisServer):
    store = RedisRateLimiter(redis_server.url, timeout=0.5)
    c = charge("restart", 5)
    try:
        assert (await store.hit([c], "closed")).remaining == 4
        redis_server.stop()
        redis_server.start()  # same port, empty, no script cached
        await asyncio.sleep(0.05)  # the loop sees the old connection closed
        after = await store.hit([c], "closed")
        assert after.allowed and not after.store_unavailable and after.remaining == 4
        assert store.breaker.allow() and not store.breaker.is_open
    finally:
        await store.close()


async def test_deadline_counts_only_time_the_loop_was_responsive():
    expired_at = []
    started = time.perf_counter()
    deadline = Deadline(0.05, lambda: expired_at.append(time.perf_counter() - started))
    time.sleep(0.15)  # noqa: ASYNC251 - a blocked loop: these 150 ms must not count
    await asyncio.sleep(0.12)
    assert deadline.expired and 0.19 <= expired_at[0] < 0.27


async def test_deadline_gives_up_on_a_loop_that_is_never_on_time():
    expired = []
    deadline = Deadline(0.05, lambda: expired.append(True), hard_limit=0.3)
    started = time.perf_counter()
    while not expired and time.perf_counter() - started < 2:
        time.sleep(0.04)  # noqa: ASYNC251 - every tick comes late
        await asyncio.sleep(0)
    assert deadline.expired and 0.3 <= time.perf_counter() - started < 0.5


async def test_cancelled_deadline_never_fires():
    fired = []
    Deadline(0.02, lambda: fired.append(True)).cancel()
    await asyncio.sleep(0.05)
    assert not fired


async def test_one_deadline_watches_waits_one_after_another_and_never_expires_one_early():
    """A limiter's batches share one Deadline (restart per batch, release when answered): a released wait
    never expires, and a wait restarted while the last one's timer is still armed gets its full timeout."""
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    deadline = Deadline(0.04, lambda: fired.append("released"))
    deadline.release()
    await asyncio.sleep(0.1)
    assert not fired and not deadline.expired and deadline._handle is None  # its timer lapsed
    for pause in (0.0, 0.005, 0.015):  # restarted with the timer lapsed, then mid-tick twice
        deadline.restart(lambda: fired.append("first"))
        await asyncio.sleep(pause)
        deadline.release()
        deadline.restart(lambda: fired.append(loop.time()))
        started = loop.time()
        while not deadline.expired and loop.time() - started < 2:
            await asyncio.sleep(0.002)
        assert deadline.expired and fired[-1] - started >= 0.04
    assert "first" not in fired and "released" not in fired
    deadline.cancel()


def test_breaker_half_open_lets_one_probe_through():
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=1.0, clock=lambda: now[0])
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert not breaker.allow()
    now[0] = 1.5
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else waits for it
    breaker.failure()
    assert not breaker.allow()  # probe failed: open again for a cool-down
    now[0] = 3.0
    assert breaker.allow()
    breaker.success()
    assert breaker.allow() and breaker.allow()


async def test_a_store_slower_to_reach_than_one_decision_is_still_reached(redis_server):
    """Reaching Redis (DNS, TCP, TLS, AUTH) can take longer than the 100 ms a request may wait, as
    on a busy node. Each request may time out, but the connection attempt must survive it, so
    the limiter is not stuck in its failure mode forever."""
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.4)  # a slow path to the store: the connect's SELECT waits 400 ms
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", redis_server.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    store = RedisRateLimiter(f"redis://127.0.0.1:{port}/1", timeout=0.1)  # db 1: SELECT is part of connecting
    try:
        outcomes = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (outcomes and outcomes[-1] == "redis"):
            result = await store.hit([charge("slow-connect", 100)], "closed")
            outcomes.append("redis" if result.allowed else "failed")
            await asyncio.sleep(0.05)
        assert outcomes[0] == "failed"  # the first decision could not wait for the connection
        assert outcomes[-1] == "redis", outcomes  # ... but the connection was made: Redis admits (mode closed)
    finally:
        await store.close()
        proxy.close()
