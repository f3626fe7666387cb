"""Instructions per call of each per-request step of the policy route, under callgrind (prints figures; not a test).

Usage: python bench/policy_steps.py [--calls 2000] [--batch 24]

bench/instructions.py measures a whole request (the kubegate process under wrk); this script splits
the policy route's extra cost over the bare route into its steps, each run ``--calls`` times in a
plain loop inside ONE Python process under ``valgrind --tool=callgrind``. A call to ``os.getppid``
marks each step's start and end (``--dump-before=os_getppid*``: one callgrind dump per step), so each
figure is the instructions of exactly that step's calls (after a warm-up), less an empty step's (the
loop and the call). Deterministic: the same code gives the same figures on a busy machine.

The steps are the request path's own functions on bench/peers.py's policy route (HS256 JWT, IP allow
list 127.0.0.0/8, one ip-dimension limit, failureMode closed), fed the request wrk sends:

* header: what the Authorization header costs the bare path (llhttp's callback and decode, the
  CIMultiDict, the upstream header filter, the upstream head's encoding), each step with and without it;
* admission: Admission.decide() with in-memory limits and its parts (the JWT cached-token lookup, the
  IP filter's remembered decision, the bucket, the X-RateLimit-* lines, the Decision), and the pipeline's
  own steps around it (RequestFacts, the relayed head with the lines);
* redis: ``--batch`` requests at a time through a real redis-server, as the request path waits for them
  (a task per connection, three coroutine levels, decide() awaited), less the same with in-memory limits;
  and its parts: a future settled and its task woken through those levels, the batch's encoding, hiredis
  parsing the script's reply.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

MARK = os.getppid  # its C function is callgrind's dump marker (--dump-before=os_getppid*)


def _dumps(out: str) -> list[int]:
    """Totals of each dump (<out>.1, <out>.2, ...), in order."""
    totals = []
    n = 1
    while os.path.exists(f"{out}.{n}"):
        with open(f"{out}.{n}") as handle:
            totals.append(max([int(line.split()[1]) for line in handle if line.startswith(("totals:", "summary:"))],
                              default=0))
        n += 1
    return totals


def outer(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per step (default 2000)")
    parser.add_argument("--batch", type=int, default=24,
                        help="requests per Redis round trip in the redis steps (default 24: bench/peers.py's 64 "
                             "connections batch ~24-29)")
    args = parser.parse_args(argv)
    for tool in ("valgrind", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is not installed")
    work = tempfile.mkdtemp(prefix="kubegate-policy-steps-")
    out = os.path.join(work, "callgrind.out")
    try:
        ran = subprocess.run(
            ["valgrind", "--tool=callgrind", "--dump-before=os_getppid*", f"--callgrind-out-file={out}",
             sys.executable, os.path.abspath(__file__), "--inner", str(args.calls), str(args.batch), work],
            capture_output=True, text=True, check=True)
        names = ran.stdout.split("\n")
        trips = [line for line in ran.stderr.split("\n") if line.startswith("redis round trips")]
        steps = [line.split("\t") for line in names if "\t" in line]
        totals = _dumps(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # dump 1 is everything up to the first marker; then one dump per marker interval: step i is dump 2 + 2i
    # (the dumps in between are the gaps between a step's end and the next step's start)
    per_call = {}
    for i, (name, calls, _) in enumerate(steps):
        per_call[name] = totals[1 + 2 * i] / int(calls)
    empty = per_call.pop("empty")
    print(f"instructions per call under callgrind, {args.calls} calls per step after a warm-up, less an empty "
          f"step's {empty:,.0f} (the loop and the call)")
    for name, calls, note in steps:
        if name == "empty":
            continue
        figure = per_call[name] - empty
        if "per batch" in name:
            note = f"{note}: {figure / args.batch:,.0f} per request"
        print(f"{name:48s} {figure:10,.0f}   {note}")
    print(*trips)
    print("\ndifferences (what the policy route adds to the bare one):")
    for name, figure in per_call.items():
        if name.endswith(" +auth"):
            print(f"{'Authorization: ' + name[:-6]:48s} {figure - per_call[name[:-6]]:10,.0f}")
    for a, b in (("redis: batched request", "redis: same with memory limits"),):
        print(f"{'redis over memory (' + a.split(': ')[1] + ')':48s} {per_call[a] - per_call[b]:10,.0f}")
    return 0


# --- the steps, inside the callgrind process ------------------------------------------------------------------


def inner(calls: int, batch: int, work: str) -> None:
    import jwt as pyjwt
    import uvloop
    from kubegate.dataplane import framing, proxy
    from kubegate.dataplane.admission import Admission, Decision, RequestFacts
    from kubegate.dataplane.audit import AuditLog
    from kubegate.dataplane.clientip import ClientAddress
    from kubegate.dataplane.http1 import RequestHead
    from kubegate.dataplane.jwks import JwksCache
    from kubegate.dataplane.metrics import Metrics
    from kubegate.dataplane.ratelimit import MemoryRateLimiter, RateResult
    from kubegate.dataplane.redis_limits import RedisRateLimiter, _Batch
    from multidict import CIMultiDict, CIMultiDictProxy

    from kubegate.config import (
        CompiledAuth,
        CompiledBackend,
        CompiledConfig,
        CompiledJwt,
        CompiledLimit,
        CompiledRateLimit,
        CompiledRoute,
        SecretBundle,
    )

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import dataplane as bd  # bench/dataplane.py: its redis_server and free_port helpers

    huge = 100_000_000
    limit = CompiledRateLimit(policy="bench/limits", scope="route", failure_mode="closed", limits=(
        CompiledLimit(key="bench/limits#0", dimension="ip", requests=huge, period_seconds=1, burst=huge),))
    hs = CompiledJwt(algorithms=("HS256",), hmac_secret="bench/hmac", issuer=bd.ISSUER, audiences=(bd.AUDIENCE,))
    route = CompiledRoute(id="bench/hs256", namespace="bench", name="hs256", path="/hs256/*rest",
                          backends=(CompiledBackend(url="http://127.0.0.1:1"),),
                          auth=CompiledAuth(methods=("jwt",), jwt=hs), ip_allow=("127.0.0.0/8",), rate_limit=limit)
    cfg, secrets = CompiledConfig(routes=(route,)), SecretBundle(values={"bench/hmac": bd.HS_SECRET})
    token = pyjwt.encode({"sub": "bench", "iss": bd.ISSUER, "aud": bd.AUDIENCE, "exp": int(time.time()) + 3600},
                         bd.HS_SECRET, algorithm="HS256")
    authorization = f"Bearer {token}"
    bare_head = b"GET /bare/bench HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"  # what wrk sends
    auth_head = b"GET /hs256/bench HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: " + \
        authorization.encode() + b"\r\n\r\n"
    bare_pairs = [("Host", "127.0.0.1:8080")]
    auth_pairs = [*bare_pairs, ("Authorization", authorization)]
    bare_view, auth_view = CIMultiDictProxy(CIMultiDict(bare_pairs)), CIMultiDictProxy(CIMultiDict(auth_pairs))
    common = {"jwks": JwksCache(), "metrics": Metrics(), "audit": AuditLog(io.StringIO())}
    memory = Admission(cfg, secrets, limiter=MemoryRateLimiter(), **common)
    facts = RequestFacts("GET", "/hs256/bench", "127.0.0.1", "127.0.0.1", auth_view, None, False)
    asyncio.run(memory.admit(route, facts))  # the token verified once: every measured call is a cache hit
    plan = memory._plans[route.id]
    steps: list[tuple[str, Callable[[], object], str]] = []

    def step(name: str, note: str = "") -> Callable[[Callable[[], object]], Callable[[], object]]:
        def add(fn: Callable[[], object]) -> Callable[[], object]:
            steps.append((name, fn, note))
            return fn
        return add

    step("empty")(lambda: None)

    # header ----------------------------------------------------------------------------------------
    reader = RequestHead()

    def parse(head: bytes) -> None:
        reader.feed(head)
        reader.simple()
        reader.reset()
    step("header: llhttp head parse", "RequestHead.feed + simple() + reset(), wrk's bare request")(
        partial(parse, bare_head))
    step("header: llhttp head parse +auth", "the same head with the Authorization line")(partial(parse, auth_head))
    step("header: CIMultiDict of the head")(lambda: CIMultiDictProxy(CIMultiDict(bare_pairs)))
    step("header: CIMultiDict of the head +auth")(lambda: CIMultiDictProxy(CIMultiDict(auth_pairs)))
    upstream = partial(proxy.upstream_headers, peer="127.0.0.1", proto="http", host="127.0.0.1:8080",
                       rid="0123456789abcdef0123456789abcdef")
    step("header: upstream_headers", "hop-by-hop filter + X-Forwarded-*")(lambda: upstream(bare_view))
    step("header: upstream_headers +auth")(lambda: upstream(auth_view))
    origin = type("Origin", (), {"base_path": "", "authority": "127.0.0.1:1"})()
    bare_up, auth_up = upstream(bare_view), upstream(auth_view)
    step("header: upstream request_head")(lambda: framing.request_head("GET", origin, "/bench", bare_up, "\r\n"))
    step("header: upstream request_head +auth")(
        lambda: framing.request_head("GET", origin, "/bench", auth_up, "\r\n"))

    # admission (in-memory limits) ------------------------------------------------------------------
    client = ClientAddress()
    # RequestFacts and Decision as the request path makes them: tuple.__new__ once they are NamedTuples
    facts_of = partial(tuple.__new__, RequestFacts) if issubclass(RequestFacts, tuple) else \
        (lambda fields: RequestFacts(*fields))
    decision_of = partial(tuple.__new__, Decision) if issubclass(Decision, tuple) else \
        (lambda fields: Decision(*fields))
    step("admission: RequestFacts + client address", "Pipeline._facts")(
        lambda: facts_of(("GET", "/hs256/bench", "127.0.0.1", client.of("127.0.0.1", auth_view), auth_view,
                          None, False)))
    decide = memory.decide
    step("admission: decide(), memory limits", "the whole admission of a cached token")(lambda: decide(route, facts))
    ip_filter = plan.ip_filter
    step("admission: IP filter (remembered decision)")(
        lambda: ip_filter.decisions.get("127.0.0.1") or ip_filter.permits("127.0.0.1"))
    lookup = plan.jwt.lookup

    def token_step() -> object:
        value = auth_view.get("Authorization")
        if value is not None and (value.startswith("Bearer ") or value[:7].lower() == "bearer "):
            return lookup(value[7:].strip(), time.time())
        return None
    step("admission: JWT cached token", "header get + prefix + strip + time() + lookup()")(token_step)
    step("admission: JWT lookup() alone")(lambda: lookup(token, 1.0))
    step("admission:   headers.get('Authorization')")(partial(auth_view.get, "Authorization"))
    step("admission:   token = value[7:].strip()")(lambda: authorization[7:].strip())
    step("admission:   time.time()")(time.time)
    charges = plan.charge_sets.get("127.0.0.1")
    hit_now = memory._limiter.hit_now
    step("admission: bucket (hit_now)")(lambda: hit_now(charges))
    if hasattr(memory._limiter, "lines_now"):  # (a tree before it: no such step)
        step("admission: bucket as lines (lines_now)", "what admission asks of an in-memory store")(
            partial(memory._limiter.lines_now, charges))
    result = hit_now(charges)
    step("admission: X-RateLimit lines", "RateResult.lines()")(result.lines)
    step("admission:   the lines' bytes % (3 ints)")(lambda: b"X-RateLimit-Limit: %d\r\nX-RateLimit-Remaining: %d\r\n"
                                                     b"X-RateLimit-Reset: %d\r\n" % (huge, huge - 2, 1))
    who = lookup(token, 1.0)
    step("admission: Decision", "the admitting Decision object")(
        lambda: decision_of((None, "", "", {}, who.upstream_headers, who.principal, b"x")))
    step("admission: RateResult", "the admitting RateResult object")(lambda: RateResult(True, huge, huge, 1))

    class Upstream:  # a relayed answer's head as exchange.UpstreamResponse holds it (nginx's hello world)
        status, reason, connection, dated = 200, "OK", frozenset(), True
        raw = ((b"server", b"Server: nginx\r\n"), (b"date", b"Date: Tue, 01 Dec 2026 22:00:00 GMT\r\n"),
               (b"content-type", b"Content-Type: text/plain\r\n"), (b"content-length", b"Content-Length: 11\r\n"))
    lines, extra = result.lines(), {"X-Request-Id": "0123456789abcdef0123456789abcdef"}
    step("admission: relay_head")(lambda: framing.relay_head(Upstream, extra, b"\r\n", False))
    step("admission: relay_head +limit lines")(lambda: framing.relay_head(Upstream, extra, b"\r\n", False, lines))

    # redis -----------------------------------------------------------------------------------------
    port = bd.free_port()
    redis = bd.redis_server(port, work)
    bd.wait_port(port, timeout=10)
    uvloop.install()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{port}/0", timeout=5.0)
    shared = Admission(cfg, secrets, limiter=limiter, **common)
    loop.run_until_complete(shared.admit(route, facts))

    def tasks(answer: Callable[[], Any], n: int) -> Callable[[], None]:
        """``batch`` connection tasks, each awaiting ``answer()`` n / batch times through 3 coroutine levels
        (answer, serve, the connection's loop), as the request path awaits admission."""
        async def serve() -> Any:
            return await answer()

        async def work(count: int) -> None:
            for _ in range(count):
                await serve()

        async def all_of() -> None:
            await asyncio.gather(*(work(n // batch) for _ in range(batch)))
        return lambda: loop.run_until_complete(all_of())

    def connections(admission: Admission, n: int) -> Callable[[], None]:
        """``batch`` connection tasks, each answering n / batch requests as the request path does."""
        async def answer() -> Decision:
            decision = admission.decide(route, facts)
            if type(decision) is not Decision:
                decision = await decision
            return decision
        return tasks(answer, n)
    loop.run_until_complete(asyncio.sleep(0))
    steps.append(("redis: batched request", connections(shared, calls),
                  f"{batch} connection tasks, decide() awaited through 3 coroutine levels"))
    steps.append(("redis: same with memory limits", connections(memory, calls), "no wait: the baseline"))

    def woken(n: int) -> Callable[[], None]:
        """The future and wake-up alone: the same tasks, each waiting on a future one callback settles."""
        waiting: list[asyncio.Future] = []

        def settle() -> None:
            done, waiting[:] = list(waiting), []
            for future in done:
                future.set_result(None)

        async def answer() -> None:
            future = loop.create_future()
            waiting.append(future)
            if len(waiting) == 1:
                loop.call_soon(settle)
            await future
        return tasks(answer, n)
    steps.append(("redis: future + wake-up", woken(calls), "create, settle, wake the task through 3 levels"))
    packed = shared._plans[route.id].charge_sets["127.0.0.1"].wire
    queue = [(packed, None)] * batch

    def encode() -> None:
        limiter._calls(queue)
    step("redis: batch encode (per batch)", f"_calls() for {batch} requests; divide by the batch")(encode)
    import hiredis
    reply = b"*%d\r\n" % (5 * batch) + b":1\r\n:1\r\n:99999999\r\n:1000\r\n:0\r\n" * batch
    hiredis_reader = hiredis.Reader()

    def parse_reply() -> None:
        hiredis_reader.feed(reply)
        hiredis_reader.gets()
    step("redis: hiredis reply parse (per batch)", f"{batch} requests' [allowed, index, remaining, reset, retry]")(
        parse_reply)
    _ = _Batch  # (its construction needs a live node; its share is in "batched request")

    n_steps = []
    for name, fn, note in steps:
        count = calls if not name.startswith("redis: ") or "per batch" in name else calls // batch * batch
        for _ in range(20 if count == calls and not name.startswith("redis: ") else 0):
            fn()  # warm: specialised bytecode, caches
        if name.startswith("redis: ") and "per batch" not in name:
            fn()  # one whole warm-up run: the tasks' code specialised
            MARK()
            fn()
            MARK()
        else:
            for _ in range(200):
                fn()
            MARK()
            for _ in range(count):
                fn()
            MARK()
        n_steps.append((name, 1 if name.startswith("redis: ") and "per batch" not in name else count, note))
    for name, count, note in n_steps:
        # a whole run of ``calls`` requests counts as calls requests
        print(f"{name}\t{calls // batch * batch if count == 1 else count}\t{note}")
    print(f"redis round trips: {limiter.round_trips}, requests {limiter.calls} (warm-up runs included)", file=sys.stderr)
    loop.run_until_complete(limiter.close())
    redis.terminate()
    redis.wait(10)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inner"]:
        inner(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        sys.exit(0)
    sys.exit(outer(sys.argv[1:]))
