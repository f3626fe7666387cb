"""``--workers N``: one supervisor process and N worker processes sharing the listeners.

The supervisor owns everything there must be one of: the config source (it
pushes each snapshot to the workers), the in-memory rate-limit counters
(:mod:`shared_limits`), the admin port (metrics added up across workers) and,
in a cluster, the heartbeat Lease. Each worker is a full :class:`Gateway`
bound with SO_REUSEPORT to the same ports (the supervisor reserves them, so
port 0 means one port for all), so the kernel spreads connections.

A reload is two-phase: every worker builds the new snapshot (``prepare``);
only when all have, every worker swaps (``commit``); one refusal aborts it
everywhere, so no worker ever serves a config another refused.
``loaded_hash`` (what the heartbeat announces, hence ``Programmed``) is a
config hash only while every listening worker serves it. A worker listens
only once it serves the current config (or at once while there is none yet),
so a restarted worker never answers with an old or no config. A dead worker
is restarted; one that does not answer a reload in ``WORKER_TIMEOUT`` seconds
is killed (and restarted with the current config).

A worker is this package's ``worker`` module, started with the same Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kubegate.config import CompiledConfig, SecretBundle, config_hash

from .launch import reserve

log = logging.getLogger("kubegate.supervisor")

WORKER_TIMEOUT = 30.0
STOP_GRACE = 15.0  # a worker's own shutdown grace (server.SHUTDOWN_GRACE) plus a margin
class WorkerFailed(Exception):
    """A worker died or did not answer in time."""


@dataclass(eq=False)
class _Worker:
    index: int
    pid: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    serving: str | None = None
    listening: bool = False

    async def call(self, message: tuple, timeout: float = WORKER_TIMEOUT) -> tuple:
        from .ipc import receive, send

        async with self.lock:
            try:
                await asyncio.wait_for(send(self.writer, message), timeout)
                reply = await asyncio.wait_for(receive(self.reader), timeout)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                raise WorkerFailed(f"worker {self.index} (pid {self.pid}): {type(exc).__name__}") from None
        assert isinstance(reply, tuple)
        if reply[0] == "serving":
            self.serving, self.listening = reply[1], reply[2]
        return reply


class Supervisor:
    """What the config sources and the heartbeat see instead of a Gateway: ``apply``, ``reject``,
    ``loaded_hash``, ``ready``, ``ports``; ``on_loaded(hash)`` fires when all workers serve a new config."""

    def __init__(self, workers: int, options: dict[str, Any], *, admin_port: int, redis_url: str | None,
                 metrics_dir: str, metrics: Any) -> None:
        self.count = workers
        self.options = dict(options)
        self.host = options["host"]
        self.ports = {"http": options["http_port"], "https": options["https_port"], "admin": admin_port}
        self.redis_url = redis_url
        self.metrics_dir = metrics_dir
        self.metrics = metrics
        self.on_loaded: Callable[[str], None] | None = None
        self._dir = tempfile.mkdtemp(prefix="kubegate-workers-")  # mode 0700
        self._control_path = os.path.join(self._dir, "control.sock")
        self._limits_path = os.path.join(self._dir, "limits.sock")
        self._reserved: list[socket.socket] = []
        self._control: asyncio.AbstractServer | None = None
        self._owner: Any = None
        self._admin: web.AppRunner | None = None
        self._workers: dict[int, _Worker] = {}
        self._keepers: list[asyncio.Task] = []
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False
        # (hash, what the workers get, the config: None when they decode it and report its counts)
        self._committed: tuple[str, bytes, CompiledConfig | None] | None = None
        self._desired: tuple[str, bytes, CompiledConfig | None] | None = None
        self._counts: dict[str, dict[str, Any]] = {}  # hash -> config_counts a worker reported
        self._reloader: asyncio.Task | None = None
        self._outcomes: dict[str, asyncio.Future] = {}
        self._loaded: tuple[str, dict[str, Any], float] | None = None  # (hash, config_counts, when)
        self._loaded_changed = asyncio.Event()
        self._dropped: dict[str, dict[str, str]] = {}  # config hash -> objects the workers left out
        self._replicas = 1  # live data-plane replicas (failureMode: local shares a limit among them)

    # --- what the config sources and the heartbeat use ---------------------------------------------

    def set_live_replicas(self, replicas: int) -> None:
        """Tell every worker how many replicas are alive, so that while Redis is down (failureMode:
        local) each worker enforces its share: requests / (replicas x workers)."""
        if replicas == self._replicas:
            return
        self._replicas = replicas
        for worker in list(self._workers.values()):
            task = asyncio.create_task(self._tell(worker, ("replicas", replicas)))
            self._keepers.append(task)
            task.add_done_callback(self._keepers.remove)

    async def _tell(self, worker: _Worker, message: tuple) -> None:
        with contextlib.suppress(WorkerFailed):
            await worker.call(message)

    @property
    def loaded_hash(self) -> str | None:
        return self._loaded[0] if self._loaded else None

    @property
    def ready(self) -> bool:
        return self._loaded is not None

    @property
    def dropped(self) -> dict[str, str]:
        """Objects of the served config that the workers could not load (reported on the Lease)."""
        return self._dropped.get(self.loaded_hash or "", {})

    def apply(self, config: CompiledConfig, secrets: SecretBundle, digest: str | None = None,
              blob: bytes | None = None) -> str:
        """Start distributing a config to every worker; returns its hash at once. A refusal is logged
        and counted when the workers report it (:meth:`outcome` waits for it). ``blob``: the pickled
        ``(config, secrets)`` when the caller already made it."""
        digest = digest or config_hash(config, secrets)
        if not self._held(digest):
            self._distribute(digest, blob or pickle.dumps(("models", config, secrets), protocol=pickle.HIGHEST_PROTOCOL),
                             config)
        return digest

    def apply_encoded(self, encoded: tuple[bytes, bytes], digest: str) -> str:
        """Start distributing the ConfigMap/Secret payloads ``encoded`` (decode.halves), whose content hash
        is known to be ``digest`` (decode.canonical_digest), without decoding them here: every worker
        decodes them itself (and refuses the reload if they are not a valid config)."""
        if not self._held(digest):
            self._distribute(digest, pickle.dumps(("encoded", *encoded), protocol=pickle.HIGHEST_PROTOCOL), None)
        return digest

    def _held(self, digest: str) -> bool:
        """``digest`` is already on its way to the workers, or what they serve (then it is desired again)."""
        if self._desired is not None and self._desired[0] == digest:
            return True
        if self._committed is not None and self._committed[0] == digest:  # back to what is served
            self._desired = self._committed
            return True
        return False

    def _distribute(self, digest: str, blob: bytes, config: CompiledConfig | None) -> None:
        self._desired = (digest, blob, config)
        self._outcomes.setdefault(digest, asyncio.get_running_loop().create_future())
        if self._reloader is None or self._reloader.done():
            self._reloader = asyncio.create_task(self._reload_until_current(), name="reload workers")

    async def apply_off_loop(self, config: CompiledConfig, secrets: SecretBundle, digest: str | None = None,
                             encoded: tuple[str, bytes] | None = None) -> str:
        """What the config sources call: the workers build the snapshot (each off its own loop).
        With ``encoded`` (the Kubernetes source) they get the ConfigMap/Secret payloads and decode them
        with their own IncrementalDecoder, reusing what did not change; otherwise the config is hashed
        and pickled for them here, in a worker thread (a second each at 10,000 routes), and unpickled
        there whole."""
        from .snapshot import off_loop

        digest = digest or await off_loop(config_hash, config, secrets)
        if digest in {held[0] for held in (self._desired, self._committed) if held is not None}:
            return self.apply(config, secrets, digest)
        if encoded is not None:
            blob = pickle.dumps(("encoded", *encoded), protocol=pickle.HIGHEST_PROTOCOL)  # two strings
        else:
            blob = await off_loop(pickle.dumps, ("models", config, secrets), pickle.HIGHEST_PROTOCOL)
        return self.apply(config, secrets, digest, blob)

    async def outcome(self, digest: str) -> str | None:
        """Wait until every worker serves ``digest`` (None) or it was refused (the reason)."""
        return await asyncio.shield(self._outcomes[digest])

    def reject(self, reason: str) -> None:
        self.metrics.config_reloads.labels("rejected").inc()
        log.warning("config rejected, keeping %s: %s",
                    self.loaded_hash[:12] if self.loaded_hash else "no config", reason)

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        from .ipc import encode  # noqa: F401 - fail here, not in a worker, if the module is broken

        try:
            for name in ("http", "https"):
                try:
                    sock = reserve(self.host, self.ports[name])
                except OSError as exc:
                    raise OSError(exc.errno, f"cannot listen on {self.host}:{self.ports[name]} ({name}): "
                                             f"{exc.strerror}") from None
                self._reserved.append(sock)
                self.ports[name] = sock.getsockname()[1]
            self._control = await asyncio.start_unix_server(self._connected, self._control_path)
            if not self.redis_url:
                from .shared_limits import CounterOwner

                self._owner = CounterOwner(self._limits_path)
                await self._owner.start()
            await self._start_admin()
            self._keepers = [asyncio.create_task(self._keep(i), name=f"worker {i}") for i in range(self.count)]
        except BaseException:
            await self.stop()
            raise

    async def wait_listening(self, timeout: float = 60.0) -> None:
        """Until every worker listens (with the current config, if there is one)."""
        deadline = time.monotonic() + timeout
        while not (len(self._workers) == self.count and all(w.listening for w in self._workers.values())):
            if time.monotonic() > deadline:
                raise WorkerFailed(f"{self.count - len(self._workers)} worker(s) did not start")
            self._loaded_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loaded_changed.wait(), 0.2)

    async def stop(self) -> None:
        """SIGTERM every worker (each finishes its in-flight requests), then stop serving."""
        self._stopping = True
        if self._reloader is not None:
            self._reloader.cancel()
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        waits = [asyncio.wait_for(proc.wait(), STOP_GRACE) for proc in self._procs.values()]
        for proc, result in zip(list(self._procs.values()), await asyncio.gather(*waits, return_exceptions=True)):
            if isinstance(result, BaseException):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._keepers:
            task.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)
        if self._control is not None:
            self._control.close()
        if self._owner is not None:
            await self._owner.close()
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        for sock in self._reserved:
            sock.close()
        self._reserved = []
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _keep(self, index: int) -> None:
        """Run worker ``index``; restart it whenever it exits (backing off while it keeps crashing)."""
        from prometheus_client import multiprocess

        backoff = 0.1
        while not self._stopping:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kubegate.dataplane.worker", self._control_path, str(index),
                start_new_session=True)  # terminal signals go to the supervisor, which stops the workers
            self._procs[index] = proc
            code = await proc.wait()
            worker = self._workers.get(index)
            if worker is not None and worker.pid == proc.pid:
                del self._workers[index]
            multiprocess.mark_process_dead(proc.pid, self.metrics_dir)
            if self._stopping:
                return
            self._update_loaded()  # the others may agree now
            log.warning("worker %d (pid %d) exited with %s; restarting it", index, proc.pid,
                        f"signal {-code}" if code < 0 else f"code {code}")
            backoff = 0.1 if time.monotonic() - started > 10 else min(backoff * 2, 5.0)
            await asyncio.sleep(backoff)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A worker says hello; it gets its settings and the current config (or the word to listen)."""
        from .ipc import receive, send

        try:
            hello = await asyncio.wait_for(receive(reader), WORKER_TIMEOUT)
            _, index, pid = hello  # type: ignore[misc]
            await send(writer, ("settings", {
                "gateway": {**self.options, "http_port": self.ports["http"], "https_port": self.ports["https"]},
                "redis_url": self.redis_url, "limits": None if self.redis_url else self._limits_path,
                "workers": self.count, "replicas": self._replicas,
            }))
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, TypeError):
            writer.close()
            return
        worker = self._workers[index] = _Worker(index, pid, reader, writer)
        committed = self._committed
        try:
            if committed is None:
                await worker.call(("listen",))
            else:
                await self._load(worker, committed)
        except WorkerFailed as exc:
            log.warning("%s", exc)
            self._kill(worker)
        self._update_loaded()

    async def _load(self, worker: _Worker, committed: tuple[str, bytes, CompiledConfig | None]) -> None:
        reply = await worker.call(("load", committed[0], committed[1]))
        if reply[0] == "rejected":  # the others serve it: this worker cannot be trusted with traffic
            raise WorkerFailed(f"worker {worker.index} refused the current config: {reply[2]}")

    def _kill(self, worker: _Worker) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)

    # --- reloads -------------------------------------------------------------------------------------------

    async def _reload_until_current(self) -> None:
        while self._desired is not None and (self._committed is None or self._desired[0] != self._committed[0]):
            desired = self._desired
            try:
                await self._reload(desired)
            except Exception as exc:  # noqa: BLE001 - a reload bug must not end reloading
                log.warning("reload to %s failed: %s", desired[0][:12], exc)
                self._settle(desired[0], f"internal error: {exc}")
                return
            if self._desired is desired:
                return

    async def _reload(self, desired: tuple[str, bytes, CompiledConfig | None]) -> None:
        digest, blob, _config = desired
        workers = list(self._workers.values())
        replies = await asyncio.gather(*(w.call(("prepare", digest, blob)) for w in workers),
                                       return_exceptions=True)
        prepared = []
        refusal = None
        for worker, reply in zip(workers, replies):
            if isinstance(reply, WorkerFailed):
                log.warning("%s; restarting it", reply)
                self._kill(worker)
            elif isinstance(reply, BaseException):
                raise reply
            elif reply[0] == "rejected":
                refusal = refusal or reply[2]
            else:
                prepared.append(worker)
                if len(reply) > 2:  # every worker builds the same snapshot: any one's list will do
                    self._dropped = {digest: reply[2]}
                if len(reply) > 3:
                    self._counts = {held[0]: self._counts[held[0]] for held in (self._committed, self._loaded)
                                    if held is not None and held[0] in self._counts}
                    self._counts[digest] = reply[3]
        if refusal is not None:
            await asyncio.gather(*(w.call(("abort", digest)) for w in prepared), return_exceptions=True)
            if self._desired is desired:
                self._desired = self._committed
            self.reject(refusal)
            self._settle(digest, refusal)
            return
        self._committed = desired
        await asyncio.gather(*(w.call(("commit", digest)) for w in prepared), return_exceptions=True)
        # workers that joined meanwhile got the previous config: bring them up to date
        for worker in list(self._workers.values()):
            if worker.serving != digest:
                try:
                    await self._load(worker, desired)
                except WorkerFailed as exc:
                    log.warning("%s", exc)
                    self._kill(worker)
        self.metrics.config_reloads.labels("ok").inc()
        self._update_loaded()

    def _settle(self, digest: str, refusal: str | None) -> None:
        waiter = self._outcomes.pop(digest, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(refusal)

    def _update_loaded(self) -> None:
        """``loaded_hash`` := the hash every listening worker serves, if they agree."""
        self._loaded_changed.set()
        listening = [w for w in self._workers.values() if w.listening]
        hashes = {w.serving for w in listening}
        if len(hashes) != 1 or None in hashes or self._committed is None:
            return
        (digest,) = hashes
        if digest != self._committed[0] or (self._loaded and self._loaded[0] == digest):
            return
        from .server import config_counts

        config = self._committed[2]
        counts = config_counts(config) if config is not None else self._counts.get(digest)
        if counts is None:  # no worker was there to prepare it and report them: nothing to tell but the hash
            counts = {"routes": 0, "api_keys": 0, "tls_policies": 0, "generations": {}}
        self._loaded = (digest, counts, time.time())
        self._settle(digest, None)
        m = self.metrics
        m.config_info.info({"hash": digest, **{k: str(counts[k]) for k in ("routes", "api_keys", "tls_policies")}})
        log.info("config %s served by every listening worker (%d of %d): %d routes", digest[:12], len(listening),
                 self.count, counts["routes"])
        if self.on_loaded is not None:
            self.on_loaded(digest)

    # --- admin port ----------------------------------------------------------------------------------------

    async def _start_admin(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from .metrics import aggregated
        from .server import config_summary, serve_admin

        registry = aggregated(self.metrics_dir, self.metrics)

        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(_request: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "workers": self.count,
                                      "listening": sum(w.listening for w in self._workers.values())})

        async def readyz(_request: web.Request) -> web.Response:
            if self._stopping:  # draining: the workers answer what is in flight, take nothing new
                return web.json_response({"status": "shutting down"}, status=503)
            if self._loaded is None:
                return web.json_response({"status": "no configuration loaded"}, status=503)
            return web.json_response({"status": "ready", "hash": self._loaded[0]})

        async def config(_request: web.Request) -> web.Response:
            loaded = self._loaded
            return web.json_response(config_summary(*(loaded[1], loaded[0], loaded[2]) if loaded else (None,) * 3))

        self._admin, self.ports["admin"] = await serve_admin(self.host, self.ports["admin"], {
            "/metrics": metrics, "/healthz": healthz, "/readyz": readyz, "/config": config,
        })
