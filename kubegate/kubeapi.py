"""The Kubernetes API as both halves use it: credentials, CRUD, server-side apply, list+watch.

Built on ``kubernetes_asyncio`` (the async port of the official client), so
the operator can write hundreds of statuses concurrently and the data plane
never blocks its event loop. Objects stay plain JSON dicts addressed by REST
path (``ApiClient.call_api``): kubegate reads and writes its CRs, generated
objects and Leases all alike, and typed models would only add conversions.
Watches use the library's ``Watch`` (resume at the last resourceVersion;
410 Gone ends it so the caller relists). kopf watches the kubegate kinds
with its own HTTP client, logged in through this same library.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from kubegate.errors import UserError
from kubegate.spec import PLURALS as KUBEGATE_PLURALS

log = logging.getLogger("kubegate.kubeapi")

FIELD_MANAGER = "kubegate"
AUTH = ["BearerToken"]  # the one auth setting the client knows; client certificates live in the TLS context
JSON_ANSWERS = {200: "object", 201: "object", 202: "object"}  # "object": the parsed JSON, no model
REQUEST_TIMEOUT = 30
WATCH_SERVER_TIMEOUT = 240  # the server ends each stream; Watch resumes it where it stopped
WATCH_CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
# Environment variables aiohttp's trust_env reads (proxies, netrc credentials).
ENVIRONMENT_SETTINGS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "WS_PROXY", "WSS_PROXY", "NETRC")


class ApiError(Exception):
    """A non-2xx answer from the API server in one line; ``status`` is the HTTP code."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        message = " ".join(message.split())  # e.g. a webhook's multi-line denial
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status} {message}")
        self.status, self.reason, self.message = status, reason, message


def api_error(exc: ApiException) -> ApiError:
    """The library's multi-line exception (headers and all) as a one-line ApiError."""
    status = int(exc.status or 0)
    if exc.body is None:  # raised by Watch from an ERROR event: reason is "Reason: message"
        reason, _, message = str(exc.reason or "").partition(": ")
        return ApiError(status, reason, message)
    try:
        body = json.loads(exc.body)
        return ApiError(status, body.get("reason", ""), str(body.get("message", exc.body)))
    except (ValueError, AttributeError):
        return ApiError(status, str(exc.reason or ""), str(exc.body)[:200])


# --- credentials -----------------------------------------------------------------------


async def load_credentials(kubeconfig: str | None = None) -> client.Configuration:
    """In-cluster service account when running in a Pod, else KUBECONFIG / ~/.kube/config."""
    cfg = client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(
            "/var/run/secrets/kubernetes.io/serviceaccount/token"
        ):
            config.load_incluster_config(client_configuration=cfg)  # re-reads the rotated token itself
        else:
            path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            if not os.path.exists(path.split(os.pathsep)[0]):
                raise UserError(f"no kubeconfig: {path} does not exist (set KUBECONFIG or run in a cluster)")
            loader = await config.load_kube_config(config_file=path, client_configuration=cfg)
            cfg.refresh_api_key_hook = _renewing(loader)
    except UserError:
        raise
    except (config.ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot load Kubernetes credentials: {exc}") from None
    return cfg


def _renewing(loader: Any) -> Callable[[client.Configuration], Any] | None:
    """Exec-plugin, OIDC and GCP tokens expire; before each request the loader renews an expired one."""
    if loader.provider is None and getattr(loader, "exec_plugin_expiry", None) is None:
        return None  # a static token or client certificate: nothing to renew

    async def renew(cfg: client.Configuration) -> None:
        await loader.load_and_set(cfg)

    return renew


def micro_time(ts: float) -> str:
    """Kubernetes MicroTime (Lease renewTime/acquireTime)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- paths -------------------------------------------------------------------------

# kind -> plural, for every kind kubegate reads or writes (its own kinds: kubegate.spec).
PLURALS = {
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "Event": "events",
    "Lease": "leases",
    "NetworkPolicy": "networkpolicies",
    "Certificate": "certificates",
    **KUBEGATE_PLURALS,
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
    """One ``ApiClient`` (one connection pool) per process; at most ``concurrency`` requests in flight."""

    def __init__(self, configuration: client.Configuration, *, concurrency: int = 16) -> None:
        self.client = client.ApiClient(configuration)
        self._slots = asyncio.Semaphore(concurrency)
        if not needs_environment(os.environ):
            _ignore_environment(self.client)

    async def __aenter__(self) -> KubeApi:  # noqa: PYI034
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.client.close()

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json") -> dict[str, Any]:
        async with self._slots:
            try:
                answer = await self.client.call_api(
                    path, method, query_params=_params(params), body=body,
                    header_params={"Accept": "application/json", "Content-Type": content_type},
                    response_types_map=JSON_ANSWERS, auth_settings=AUTH,
                    _return_http_data_only=True, _request_timeout=REQUEST_TIMEOUT,
                )
            except ApiException as exc:
                raise api_error(exc) from None
        return answer if isinstance(answer, dict) else {}

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
        params = {"fieldManager": FIELD_MANAGER, "force": force}
        return await self.request("PATCH", object_path(obj), params=params, body=obj,
                                  content_type="application/apply-patch+yaml")

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
        """Watch events ({type, object}) from resource_version on, across server-side stream ends.

        Ends only by raising: ApiError 410 Gone once that version is compacted away (relist then).
        """
        async with Watch() as stream:
            try:
                async for event in stream.stream(self._open_watch, path, resource_version=resource_version,
                                                 **params):
                    if not isinstance(event, dict):
                        raise ValueError(f"watch {path}: not a JSON event: {str(event)[:100]}")  # noqa: TRY004
                    yield event
            except ApiException as exc:
                raise api_error(exc) from None

    async def _open_watch(self, path: str, *, watch: bool, resource_version: str, _preload_content: bool,
                          **params: Any) -> aiohttp.ClientResponse:
        """The streaming response ``Watch`` reads line by line (it re-opens it with a newer version).

        A refused watch raises here: ``Watch`` would otherwise take an empty error body for the
        normal end of a stream and reconnect at once, forever.
        """
        query = {**params, "watch": watch, "resourceVersion": resource_version, "allowWatchBookmarks": True,
                 "timeoutSeconds": WATCH_SERVER_TIMEOUT}
        response = await self.client.call_api(
            path, "GET", query_params=_params(query), header_params={"Accept": "application/json"},
            auth_settings=AUTH, _preload_content=_preload_content, _request_timeout=WATCH_CLIENT_TIMEOUT,
        )
        if response.status >= 300:
            refused = ApiException(status=response.status, reason=response.reason)
            refused.body = await response.text()
            response.release()
            raise refused
        return response


def needs_environment(environ: Mapping[str, str]) -> bool:
    """Whether a proxy or netrc setting is present that aiohttp's ``trust_env`` would honour (pure)."""
    return any(environ.get(name) or environ.get(name.lower()) for name in ENVIRONMENT_SETTINGS)


def _ignore_environment(api_client: client.ApiClient) -> None:
    """Swap the library's ``trust_env=True`` session for one that skips the per-request proxy/netrc lookups.

    Those lookups run in a worker thread on every request; with no proxy
    configured they find nothing. Same connector, same
    TLS context, same read buffer.
    """
    rest = api_client.rest_client
    old = rest.pool_manager
    connector = old.connector
    old.detach()  # closes the old session without closing the shared connector
    rest.pool_manager = aiohttp.ClientSession(connector=connector, trust_env=False, read_bufsize=2**21)


def _params(params: dict[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items() if v is not None}


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
                await self._watch(version)
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

    async def _watch(self, version: str) -> None:
        """Apply watch events until ``version`` is too old to resume from (410 Gone): then relist."""
        try:
            async for event in self.api.watch(self.path, version, **self.params):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "BOOKMARK":
                    continue
                key = _key(obj)
                if kind == "DELETED":
                    self.objects.pop(key, None)
                else:
                    self.objects[key] = obj
                self._emit(kind, obj)
        except ApiError as exc:
            if exc.status != 410:
                raise

    def _emit(self, kind: str, obj: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, obj)


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""
