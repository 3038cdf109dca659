"""/mcp: the MCP server (providers.mcp) as an ASGI app beside Django, with authentication in front of it.

- The MCP SDK's streamable-HTTP app needs its session manager running; Django's ASGI handler does not speak
  lifespan, so eneo_site.asgi's router hands lifespan events to this app alone, which runs the session manager
  from startup to shutdown (or from the first /mcp request, when the server sends no lifespan events).
- Stateless: every POST is answered on its own (JSON responses, no session to keep), so any uvicorn worker can
  answer any request.
- Authentication before the MCP layer: `Authorization: Bearer <tenant API key>` (or the key, or the sysadmin's
  super key, in `X-API-Key`). No key or a wrong one: 401 with `WWW-Authenticate: Bearer`, before any tool runs;
  failures count against the client address like REST's (tenants.throttle), a locked-out address gets 429.
- DNS-rebinding protection: the SDK's Host/Origin check, allowed hosts from ALLOWED_HOSTS, origins from
  MCP_ALLOWED_ORIGINS (a request without Origin, as from non-browser clients, passes). ALLOWED_HOSTS=* turns
  the check off, as it does for Django.
"""
from __future__ import annotations

import asyncio
import contextlib
import json

from asgiref.sync import sync_to_async
from django.conf import settings

PATH = "/mcp"


def _allowed_hosts() -> list[str]:
    hosts = settings.ALLOWED_HOSTS or (["localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    out = []
    for host in hosts:
        if host == "*":
            continue
        if host.startswith("."):  # Django's subdomain wildcard: not expressible here, the exact domain only
            host = host[1:]
        out += [host, f"{host}:*"]
    return out


def _authenticate(token: str, address: str | None):
    from django.db import close_old_connections

    from tenants.auth import key_principal

    close_old_connections()
    return key_principal(token, ip=address, source="mcp")


async def _reply(send, status: int, body: dict, headers: dict | None = None):
    payload = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload})


class McpMount:
    def __init__(self):
        from mcp.server.transport_security import TransportSecuritySettings

        from providers.mcp import build_mcp_server

        self.server = build_mcp_server()
        checked = "*" not in settings.ALLOWED_HOSTS
        self.app = self.server.streamable_http_app(
            streamable_http_path=PATH, stateless_http=True, json_response=True,
            max_request_body_size=settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=checked,
                                                         allowed_hosts=_allowed_hosts(),
                                                         allowed_origins=list(settings.MCP_ALLOWED_ORIGINS)))
        self._task: asyncio.Task | None = None

    @staticmethod
    def handles(path: str) -> bool:
        return path == PATH or path.startswith(PATH + "/")

    async def lifespan(self, scope, receive, send):
        """ASGI lifespan: the session manager runs from startup to shutdown."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start(self):
        """Run the SDK's session manager in a task of this event loop (at startup; or at the first request when
        the server sends no lifespan events, e.g. uvicorn --lifespan off)."""
        if self._task is not None:
            return
        ready = asyncio.Event()

        async def run():
            async with self.server.session_manager.run():
                ready.set()
                await asyncio.Event().wait()  # until cancelled at shutdown

        self._task = asyncio.get_running_loop().create_task(run(), name="mcp-session-manager")
        await ready.wait()

    async def _stop(self):
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __call__(self, scope, receive, send):
        from providers.mcp import SCOPE_KEY
        from tenants.throttle import auth_throttle, scope_address, throttled_message

        address = scope_address(scope)
        retry_after = await auth_throttle.aretry_after(address)
        if retry_after:
            return await _reply(send, 429, {"error": throttled_message(retry_after)},
                                {"Retry-After": str(retry_after)})
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        bearer = headers.get("authorization", "")
        token = bearer[7:].strip() if bearer[:7].lower() == "bearer " else headers.get("x-api-key", "").strip()
        auth = await sync_to_async(_authenticate, thread_sensitive=True)(token, address) if token else None
        if auth is None:
            if token:
                await auth_throttle.arecord_failure(address)
            message = ("Invalid API key." if token else
                       "Authentication required: send 'Authorization: Bearer <tenant API key>' (or the sysadmin's "
                       "super key in X-API-Key).")
            return await _reply(send, 401, {"error": message}, {"WWW-Authenticate": 'Bearer realm="mcp"'})
        scope[SCOPE_KEY] = (auth, address)
        if self._task is None:
            await self._start()
        await self.app(scope, receive, send)
