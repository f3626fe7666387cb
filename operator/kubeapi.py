"""A small asyncio Kubernetes API client: credentials, CRUD, server-side apply, list+watch.

Why not the ``kubernetes`` package's client: it is synchronous, and the
operator writes hundreds of statuses concurrently while the data plane must
never block its event loop. Credentials are still read by the ``kubernetes``
package (kubeconfig or in-cluster service account), so every auth form
kubectl understands works here too. The data plane imports this module as
well (``kubegate.operator.kubeapi``): both halves talk to the API the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from kubegate.errors import UserError

log = logging.getLogger("kubegate.kubeapi")

FIELD_MANAGER = "kubegate"


class ApiError(Exception):
    """A non-2xx answer from the API server; ``status`` is the HTTP code."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl_context: ssl.SSLContext | bool
    token: Callable[[], str | None]


def load_credentials(kubeconfig: str | None = None) -> Credentials:
    """In-cluster service account when running in a Pod, else KUBECONFIG / ~/.kube/config."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(
            "/var/run/secrets/kubernetes.io/serviceaccount/token"
        ):
            config.load_incluster_config(client_configuration=cfg)
        else:
            path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            if not os.path.exists(path.split(os.pathsep)[0]):
                raise UserError(f"no kubeconfig: {path} does not exist (set KUBECONFIG or run in a cluster)")
            config.load_kube_config(config_file=path, client_configuration=cfg)
    except UserError:
        raise
    except (config.ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot load Kubernetes credentials: {exc}") from None

    if cfg.verify_ssl is False:
        ctx: ssl.SSLContext | bool = False
    else:
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
        if cfg.cert_file and cfg.key_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)

    def token() -> str | None:
        if cfg.refresh_api_key_hook is not None:
            cfg.refresh_api_key_hook(cfg)
        value = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix("BearerToken")
        return value

    return Credentials(server=cfg.host.rstrip("/"), ssl_context=ctx, token=token)


# --- paths -------------------------------------------------------------------------

# apiVersion/kind -> plural, for every kind kubegate reads or writes.
PLURALS = {
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "Event": "events",
    "Lease": "leases",
    "NetworkPolicy": "networkpolicies",
    "Certificate": "certificates",
    "GatewayRoute": "gatewayroutes",
    "RateLimitPolicy": "ratelimitpolicies",
    "ApiKey": "apikeys",
    "TLSPolicy": "tlspolicies",
}


def path_for(api_version: str, kind_or_plural: str, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
    """REST path of a collection or object, e.g. path_for("v1", "ConfigMap", "ns", "x")."""
    plural = PLURALS.get(kind_or_plural, kind_or_plural)
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{plural}"
    if name:
        base += f"/{quote(name)}"
    if subresource:
        base += f"/{subresource}"
    return base


def object_path(obj: dict[str, Any], subresource: str | None = None) -> str:
    meta = obj.get("metadata") or {}
    return path_for(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta.get("name"), subresource)


# --- client ---------------------------------------------------------------------------


class KubeApi:
    """One aiohttp session against one API server."""

    def __init__(self, credentials: Credentials, *, concurrency: int = 16) -> None:
        self.credentials = credentials
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(concurrency)

    async def __aenter__(self) -> KubeApi:  # noqa: PYI034
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context, limit=64)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.credentials.token()
        if token:
            headers["Authorization"] = token if token.startswith("Bearer ") else f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json") -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        async with self._slots, self.session().request(
            method, self.credentials.server + path, params=_params(params), data=data,
            headers=self._headers(content_type if data is not None else None),
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise _error(resp.status, text)
            return json.loads(text) if text else {}

    async def get(self, path: str, **params: Any) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", path, params=params)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=body)

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PUT", path, body=body)

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    async def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply with the one field manager "kubegate"; a no-op apply writes nothing."""
        params = {"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"}
        return await self.request(
            "PATCH", object_path(obj), params=params, body=obj, content_type="application/apply-patch+yaml"
        )

    async def delete(self, path: str, **params: Any) -> bool:
        """True when deleted, False when it was already gone."""
        try:
            await self.request("DELETE", path, params=params)
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    async def list(self, path: str, **params: Any) -> dict[str, Any]:
        return await self.request("GET", path, params=params)

    async def watch(self, path: str, resource_version: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        """Raw watch events ({type, object}) from resource_version until the server ends the stream."""
        query = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": 240, **params}
        async with self.session().get(
            self.credentials.server + path, params=_params(query), headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
        ) as resp:
            if resp.status >= 300:
                raise _error(resp.status, await resp.text())
            async for line in _lines(resp.content):
                yield json.loads(line)


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    buffer = b""
    async for chunk in stream.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _params(params: dict[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    return {k: str(v) for k, v in params.items() if v is not None}


def _error(status: int, text: str) -> ApiError:
    try:
        body = json.loads(text)
        return ApiError(status, body.get("reason", ""), str(body.get("message", text)).strip())
    except ValueError:
        return ApiError(status, "", text.strip()[:200])


# --- informer ------------------------------------------------------------------------

EventHandler = Callable[[str, dict[str, Any]], None]


class Informer:
    """List, then watch, forever: keeps ``objects`` (name key -> object) current.

    ``on_event(type, object)`` is called for every change (ADDED / MODIFIED /
    DELETED, also for objects that vanished between two lists); ``synced`` is
    set once the first list has been delivered, so callers can wait for a
    complete picture before acting on absences.
    """

    def __init__(self, api: KubeApi, path: str, on_event: EventHandler | None = None, *,
                 label_selector: str | None = None, field_selector: str | None = None,
                 retry_seconds: float = 2.0) -> None:
        self.api, self.path, self.on_event = api, path, on_event
        self.params = {"labelSelector": label_selector, "fieldSelector": field_selector}
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.retry_seconds = retry_seconds
        self.last_error: str | None = None

    async def run(self) -> None:
        while True:
            try:
                version = await self._relist()
                self.last_error = None
                while version:
                    version = await self._watch(version)
            except asyncio.CancelledError:
                raise
            except (TimeoutError, ApiError, aiohttp.ClientError, OSError, ValueError) as exc:
                if self.last_error != str(exc):
                    log.warning("watch %s failed: %s; retrying", self.path, exc)
                self.last_error = str(exc)
                missing = isinstance(exc, ApiError) and exc.status == 404  # e.g. a CRD not installed (yet)
                await asyncio.sleep(self.retry_seconds if missing else 1.0)

    async def _relist(self) -> str:
        listing = await self.api.list(self.path, **self.params)
        api_version, kind = listing.get("apiVersion", ""), listing.get("kind", "").removesuffix("List")
        for item in listing.get("items") or []:  # list items carry no apiVersion/kind
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        fresh = {_key(o): o for o in listing.get("items") or []}
        for key, old in list(self.objects.items()):
            if key not in fresh:
                del self.objects[key]
                self._emit("DELETED", old)
        for key, obj in fresh.items():
            old = self.objects.get(key)
            self.objects[key] = obj
            if old is None or old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._emit("ADDED" if old is None else "MODIFIED", obj)
        self.synced.set()
        return listing["metadata"]["resourceVersion"]

    async def _watch(self, version: str) -> str | None:
        """Consume one watch stream; returns where to resume, or None to relist."""
        async for event in self.api.watch(self.path, version, **self.params):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                return None  # 410 Gone and friends: start over with a fresh list
            version = obj.get("metadata", {}).get("resourceVersion", version)
            if kind == "BOOKMARK":
                continue
            key = _key(obj)
            if kind == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = obj
            self._emit(kind, obj)
        return version

    def _emit(self, kind: str, obj: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, obj)


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


async def run_all(*tasks: Awaitable[Any]) -> None:
    """Run background loops until one fails or all are cancelled."""
    await asyncio.gather(*tasks)
