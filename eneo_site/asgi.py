"""ASGI entry point (uvicorn eneo_site.asgi:application).

Two lanes:
- /v1/ (the OpenAI-compatible gateway) runs its async django-ninja handlers directly: no middleware chain and
  no request_started/request_finished signals. Django's ASGIHandler.handle() sends request_started through
  Signal.asend and closes every response through sync_to_async: their receivers (close_old_connections,
  reset_queries) are sync, so each request makes two hops through the one thread-sensitive executor thread,
  measured at 0.18 ms CPU per request (8 % of a whole gateway call) and serialising every request of the worker
  through that thread. The lane therefore keeps Django's public building blocks (read_body, create_request,
  listen_for_disconnect, send_response) and orders them itself. What the
  skipped middleware would do for a JSON API is done here: the Host header is checked against ALLOWED_HOSTS
  before the body is read, and the security headers are set (HSTS on https under production settings). The
  gateway's few database touches (catalog refresh, usage batches) manage their own connections. Each request
  carries the process's Gateway (providers/gateway/core.py).
- /metrics (Prometheus text format, providers/metrics.py) is answered here too: GET only, with METRICS_TOKEN as a
  bearer token when set, 404 when METRICS_ENABLED is false. The files are read in the thread-sensitive executor.
- Everything else (admin, REST API) goes through Django's normal handler. Static admin assets are served by
  Django's staticfiles handler, which only intercepts STATIC_URL paths.

Both lanes sit behind BodyLimit: Django's ASGI handler spools a whole request body to disk before anything
looks at it, and then checks DATA_UPLOAD_MAX_MEMORY_SIZE against the Content-Length header only (a chunked body
has none, so it passed whatever its size).
"""
import asyncio
import hmac
import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eneo_site.settings")
django_application = get_asgi_application()

from asgiref.sync import iscoroutinefunction, sync_to_async  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.exceptions import DisallowedHost, RequestAborted  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.urls import Resolver404, resolve  # noqa: E402

from providers.gateway.core import bearer_token  # noqa: E402
from providers.gateway.messages import anthropic_error_response, is_messages_path  # noqa: E402
from tenants.request_id import current_request_id, request_id_from  # noqa: E402
from tenants.throttle import scope_address  # noqa: E402

from .exceptions import too_large_message  # noqa: E402

FAST_PREFIX = "/v1/"
METRICS_PATH = "/metrics"
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"}


def _error(status: int, message: str, code: str, param: str | None = None) -> HttpResponse:
    return JsonResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                   "code": code}}, status=status)


def _host_allowed(scope) -> bool:
    """ALLOWED_HOSTS, checked on the Host header before any of the body is read."""
    from django.http.request import split_domain_port, validate_host

    host = next((v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"host"), "")
    domain, _port = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS or (["localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    return bool(domain) and validate_host(domain, allowed)


def _security_headers(scope) -> dict:
    """What SecurityMiddleware and XFrameOptionsMiddleware would send, HSTS included (on https, when enabled)."""
    headers = dict(SECURITY_HEADERS)
    secure = scope.get("scheme") == "https" or (
        settings.SECURE_PROXY_SSL_HEADER is not None and any(
            k.decode("latin-1").upper().replace("-", "_") == settings.SECURE_PROXY_SSL_HEADER[0][5:]
            and v.decode("latin-1") == settings.SECURE_PROXY_SSL_HEADER[1] for k, v in scope.get("headers") or []))
    if secure and settings.SECURE_HSTS_SECONDS:
        value = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            value += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            value += "; preload"
        headers["Strict-Transport-Security"] = value
    return headers


def _origin_allowed(scope) -> str | None:
    origin = dict(scope.get("headers") or []).get(b"origin", b"").decode("latin-1")
    allowed = settings.GATEWAY_CORS_ORIGINS
    return origin if origin and ("*" in allowed or origin in allowed) else None


def _cors(scope, response: HttpResponse):
    """CORS headers for an allowed browser origin (GATEWAY_CORS_ORIGINS); none otherwise."""
    origin = _origin_allowed(scope)
    if origin is not None:
        response["Access-Control-Allow-Origin"] = origin
        response["Access-Control-Expose-Headers"] = ("X-Request-Id, Retry-After, X-Eneo-Budget-Limit, "
                                                     "X-Eneo-Budget-Remaining")
        response["Vary"] = "Origin"


def _preflight(scope) -> HttpResponse:
    """A CORS preflight (OPTIONS): 204 with what an allowed origin may send; 403 for any other origin."""
    if _origin_allowed(scope) is None:
        response = _error(403, "Cross-origin requests are not allowed from this origin (GATEWAY_CORS_ORIGINS).",
                          "cors_origin_not_allowed")
    else:
        response = HttpResponse(status=204)
        response["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        # the SDKs send headers of their own (x-stainless-*, anthropic-version...): whatever the browser asks for
        # (nothing in a header chooses where a call goes: the body allowlist and the API key decide)
        asked = dict(scope.get("headers") or []).get(b"access-control-request-headers", b"").decode("latin-1")
        response["Access-Control-Allow-Headers"] = asked[:2000] or "Authorization, Content-Type, X-Request-Id"
        response["Access-Control-Max-Age"] = "600"
        _cors(scope, response)
    for header, value in _security_headers(scope).items():
        response.headers.setdefault(header, value)
    return response


def _token(scope) -> str:
    headers = dict(scope.get("headers") or [])
    return bearer_token(*(headers.get(name, b"").decode("latin-1") for name in (b"authorization", b"api-key",
                                                                                   b"x-api-key")))


class GatewayLane(ASGIHandler):
    """Django's ASGI handler for /v1/ requests, minus middleware and per-request signal threads. Every request
    gets this process's Gateway (catalog, limiter, breaker, usage writer) as `request.gateway`."""

    def __init__(self, gateway):
        super().__init__()
        self.gateway = gateway

    async def handle(self, scope, receive, send):
        if not _host_allowed(scope):
            await self.send_response(_error(400, "Invalid Host header.", "invalid_host"), send)
            return
        if scope["method"] == "OPTIONS":
            await self.send_response(_preflight(scope), send)
            return
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        request, error_response = self.create_request(scope, body_file)
        if request is not None:
            request.gateway = self.gateway
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            return
        tasks = [asyncio.create_task(self.listen_for_disconnect(receive)),
                 asyncio.create_task(self._process(request, send))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
            else:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, RequestAborted):
                    pass
        body_file.close()

    async def _process(self, request, send):
        request_id = request_id_from(request.headers.get("X-Request-Id"))
        current_request_id.set(request_id)  # this task's context: the call, its stream, its usage record, its logs
        response = await self._preparse(request) or await self._respond(request)
        if response.status_code >= 400 and is_messages_path(request.path):  # Anthropic's API, Anthropic's errors
            response = anthropic_error_response(response)
        for header, value in _security_headers(request.scope).items():
            response.headers.setdefault(header, value)
        response["X-Request-Id"] = request_id
        _cors(request.scope, response)
        try:
            await self.send_response(response, send)
        except asyncio.CancelledError:
            pass

    async def _preparse(self, request) -> HttpResponse | None:
        """A large body is parsed in a worker thread, so one 5 MB request does not hold up every other request on
        this event loop; one with more messages than GATEWAY_MAX_MESSAGES is refused before anything else looks
        at it. Small bodies are parsed where they are (cheaper than a thread hop)."""
        if request.method != "POST" or len(request.body) < settings.GATEWAY_PARSE_IN_THREAD_BYTES:
            return None
        from tenants.parsers import JsonParser

        try:
            data = await asyncio.to_thread(JsonParser().parse_body, request)
        except Exception:  # noqa: BLE001 - ninja parses again and answers with the precise error
            return None
        request.preparsed_json = data
        messages = data.get("messages") if isinstance(data, dict) else None
        if isinstance(messages, list) and len(messages) > settings.GATEWAY_MAX_MESSAGES:
            model = data.get("model")
            self.gateway.record_refusal(_token(request.scope), scope_address(request.scope), request.path, 400,
                                        "invalid_value", model if isinstance(model, str) else "")
            return _error(400, f"Too many messages: {len(messages)} (at most {settings.GATEWAY_MAX_MESSAGES}).",
                          "invalid_value", "messages")
        return None

    async def _respond(self, request) -> HttpResponse:
        try:
            request.get_host()
        except DisallowedHost:
            return _error(400, "Invalid Host header.", "invalid_host")
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return _error(404, f"Unknown endpoint {request.path_info[:100]}.", "unknown_endpoint")
        request.resolver_match = match
        if iscoroutinefunction(match.func):  # the API operations
            response = await match.func(request, *match.args, **match.kwargs)
        else:  # ninja's docs and schema views are sync: run them off the event loop, as Django would
            response = await sync_to_async(match.func)(request, *match.args, **match.kwargs)
        if response.status_code == 405:  # ninja's plain-text answer, in OpenAI's shape
            allowed = response.get("Allow", "")
            response = _error(405, f"{request.method} is not allowed on {request.path_info[:100]}; use {allowed}.",
                              "method_not_allowed")
            response["Allow"] = allowed
        return response


async def _send_plain(send, status: int, body: bytes, headers: dict | None = None):
    head = {"content-type": "text/plain; charset=utf-8", "content-length": str(len(body)), **SECURITY_HEADERS,
            **(headers or {})}
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in head.items()]})
    await send({"type": "http.response.body", "body": body})


def _metrics_token_ok(scope) -> bool:
    """No METRICS_TOKEN: open. Else `Authorization: Bearer <METRICS_TOKEN>`, compared in constant time."""
    expected = settings.METRICS_TOKEN
    if not expected:
        return True
    authorization = dict(scope.get("headers") or []).get(b"authorization", b"")
    token = authorization[7:].strip() if authorization[:7].lower() == b"bearer " else b""
    return hmac.compare_digest(token, expected.encode())


async def metrics_endpoint(scope, receive, send):
    """GET /metrics: every process's metrics (providers.metrics.render)."""
    if not settings.METRICS_ENABLED:
        return await _send_plain(send, 404, b"Not found.\n")
    if not _host_allowed(scope):
        return await _send_plain(send, 400, b"Invalid Host header.\n")
    if scope["method"] != "GET":
        return await _send_plain(send, 405, b"Use GET.\n", {"Allow": "GET"})
    if not _metrics_token_ok(scope):
        return await _send_plain(send, 401, b"Send 'Authorization: Bearer <METRICS_TOKEN>'.\n",
                                 {"WWW-Authenticate": 'Bearer realm="metrics"'})
    from providers.metrics import CONTENT_TYPE, render

    body = await sync_to_async(render, thread_sensitive=True)()
    await _send_plain(send, 200, body, {"content-type": CONTENT_TYPE, "cache-control": "no-store"})


def _closing_lean_sessions(send):
    """The lifespan's `send`, closing the gateway's lean-lane HTTP sessions before shutdown completes."""
    async def closing(message):
        if message["type"] == "lifespan.shutdown.complete":
            from providers.gateway.lean import close_sessions

            await close_sessions()
        await send(message)

    return closing


class Router:
    """/v1/ to the gateway lane, /mcp to the MCP server (which alone gets the lifespan events: its session manager
    runs for the server's life), /metrics to `metrics_endpoint`, everything else to Django."""

    def __init__(self, default, fast, mcp=None):
        self.default, self.fast, self.mcp = default, fast, mcp

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith(FAST_PREFIX):
                return await self.fast.handle(scope, receive, send)
            if self.mcp is not None and self.mcp.handles(path):
                return await self.mcp(scope, receive, send)
            if path == METRICS_PATH:
                return await metrics_endpoint(scope, receive, send)
        elif scope["type"] == "lifespan" and self.mcp is not None:
            return await self.mcp.lifespan(scope, receive, _closing_lean_sessions(send))
        return await self.default(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body larger than DATA_UPLOAD_MAX_MEMORY_SIZE is answered 413 (JSON) at once
    when its Content-Length says so, and as soon as it passes the limit when it is sent chunked: the app then
    sees a client disconnect and never gets the body. (The app gets no file uploads, so the limit is the one
    Django applies to everything else.) A /v1 call refused so by a known tenant's key is recorded in `gateway`'s
    usage ledger."""

    def __init__(self, app, gateway=None):
        self.app, self.gateway = app, gateway

    async def __call__(self, scope, receive, send):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if scope["type"] != "http" or limit is None:
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return await self._too_large(scope, send)
        received, exceeded, started = 0, False, False

        async def limited_receive():
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, tracked_send)
        if exceeded and not started:
            await self._too_large(scope, send)

    async def _too_large(self, scope, send):
        if scope["path"].startswith(FAST_PREFIX):
            response = _error(413, too_large_message(), "request_too_large")
            response["X-Request-Id"] = request_id_from(dict(scope.get("headers") or []).get(b"x-request-id"))
            current_request_id.set(response["X-Request-Id"])
            _cors(scope, response)
            if self.gateway is not None:
                self.gateway.record_refusal(_token(scope), scope_address(scope), scope["path"], 413,
                                            "request_too_large")
        else:
            response = JsonResponse({"detail": too_large_message()}, status=413)
        if is_messages_path(scope["path"]):
            response = anthropic_error_response(response)
        for header, value in SECURITY_HEADERS.items():
            response.headers.setdefault(header, value)
        response["Content-Length"], response["Connection"] = str(len(response.content)), "close"
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": response.content})


def _warm_up():
    """Import LiteLLM now (not on the first request), then move everything loaded so far out of the cyclic
    garbage collector's way: with gc.freeze() and a larger first-generation threshold, collections run less
    often over far fewer objects (about 10 % less CPU per gateway call). GATEWAY_GC_THRESHOLD=0 keeps Python's
    defaults."""
    import gc

    import providers.gateway.service  # noqa: F401
    import providers.llm  # noqa: F401  (LiteLLM, configured)

    if settings.GATEWAY_GC_THRESHOLD:
        gc.collect()
        gc.freeze()
        gc.set_threshold(settings.GATEWAY_GC_THRESHOLD, 20, 20)


_warm_up()
# LiteLLM adds log handlers of its own when imported (just now): they mask too.
from credentials.masking import install_masking_everywhere  # noqa: E402

install_masking_everywhere()


def build_application(gateway=None):
    """The whole ASGI app around one Gateway (the process's own by default; tests build their own)."""
    from providers.gateway.core import process_gateway

    from eneo_site.mcp_app import McpMount

    gateway = gateway or process_gateway()
    return BodyLimit(Router(ASGIStaticFilesHandler(django_application), GatewayLane(gateway), McpMount()), gateway)


application = build_application()
