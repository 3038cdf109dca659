"""Egress policy: where a call may go, decided by who configured its endpoint.

Trust model (README, Security):
- Sysadmins (superusers, the super API key, management commands) configure instance-level providers and tenant
  credentials. Their endpoints may point anywhere, internal hosts included: a self-hosted vLLM on a private
  network is a core use case.
- Everything a tenant controls (the base URL of a tenant-owned provider, a credential endpoint set by a tenant
  admin) may reach only globally routable addresses (`ipaddress` is_global) or what ENDPOINT_ALLOWED_HOSTS
  approves (names, `*.domain`, networks).

The rule is checked twice: when the endpoint is saved (`endpoint_allowed`), and when a connection is opened, on
the address it actually connects to (`EgressTransport`: a DNS answer that changed since the save cannot move a
call to an internal address). Every outbound HTTP client of the project (LiteLLM's, the OpenAI SDK's inside
LiteLLM, discovery, health probes) uses these transports; none follows redirects.

Which rule applies to a connection is set by the caller with `egress_scope(tenant_controlled=...)`; without a
scope the strict (tenant) rule applies.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import socket

import httpcore
import httpx
from django.conf import settings

_INTERNAL_SUFFIXES = (".local", ".localhost", ".internal", ".lan", ".home.arpa", ".intranet", ".corp")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

_tenant_controlled: contextvars.ContextVar[bool] = contextvars.ContextVar("egress_tenant_controlled", default=True)


class EgressDenied(httpx.ConnectError):
    """A connection to an address the egress policy does not allow. Its message names the host, never a key."""


@contextlib.contextmanager
def egress_scope(*, tenant_controlled: bool):
    """Connections opened in this block follow the tenant rule (True) or may go anywhere (False)."""
    token = _tenant_controlled.set(bool(tenant_controlled))
    try:
        yield
    finally:
        _tenant_controlled.reset(token)


def _normalise(address: ipaddress._BaseAddress) -> ipaddress._BaseAddress:
    """IPv4 behind IPv6 forms (::ffff:a.b.c.d, 64:ff9b::a.b.c.d) is judged as the IPv4 address it reaches."""
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _allowlist():
    names, networks = [], []
    for entry in settings.ENDPOINT_ALLOWED_HOSTS:
        entry = entry.strip().lower().rstrip(".")
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.append(entry)
    return names, networks


def name_allowed(host: str) -> bool:
    """The host name itself is listed in ENDPOINT_ALLOWED_HOSTS (exactly or by *.domain)."""
    name = host.lower().rstrip(".").strip("[]")
    for entry in _allowlist()[0]:
        if name == entry or (entry.startswith("*.") and (name.endswith(entry[1:]) or name == entry[2:])):
            return True
    return False


def address_allowed(address) -> bool:
    """A globally routable address, or one inside an ENDPOINT_ALLOWED_HOSTS network."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%")[0])
    address = _normalise(address)
    if address.is_global and not address.is_multicast:
        return True
    return any(address.version == net.version and address in net for net in _allowlist()[1])


def _literal(host: str):
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def endpoint_allowed(host: str) -> str | None:
    """Save-time check of a tenant-controlled host: None if allowed, else the reason (for a 422 message).

    Names that resolve here are judged by every address they resolve to; names that do not resolve (yet) are
    judged by their form: single-label and .internal-style names must be listed. The connection is checked again.
    """
    name = host.lower().rstrip(".")
    if name_allowed(name):
        return None
    literal = _literal(name)
    if literal is not None:
        return None if address_allowed(literal) else f"'{host}' is not a public address"
    if name == "localhost" or "." not in name or name.endswith(_INTERNAL_SUFFIXES):
        return f"'{host}' is an internal name"
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    for info in infos:
        if not address_allowed(info[4][0]):
            return f"'{host}' resolves to {info[4][0]}, which is not a public address"
    return None


def _check(host: str, addresses: list[str]) -> list[str]:
    """The addresses a connection may use: all of them, unless the tenant rule applies and one is refused."""
    if name_allowed(host):
        return addresses
    refused = [a for a in addresses if not address_allowed(a)]
    if refused or not addresses:
        raise EgressDenied(f"Connection to '{host}' refused by the egress policy: it resolves to "
                           f"{', '.join(refused) or 'nothing'}, which is not a public address and not in "
                           f"ENDPOINT_ALLOWED_HOSTS.")
    return addresses


def _targets(host: str, infos) -> list[str]:
    """The checked addresses to connect to: from getaddrinfo's answer, or the host itself (infos None) when it is
    an IP literal."""
    addresses = [str(_literal(host))] if infos is None else list(dict.fromkeys(info[4][0] for info in infos))
    return _check(host, addresses)


def _unresolvable(host: str, exc: OSError) -> httpcore.ConnectError:
    return httpcore.ConnectError(f"Could not resolve '{host}': {exc.strerror or exc}")


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    """For the pools of the tenant rule: resolves the host itself, applies the rule to every address, then
    connects to a checked address (so the name is not resolved again between check and connect). TLS still
    verifies the host name."""

    def __init__(self):
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        infos = None
        if _literal(host) is None:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise _unresolvable(host, exc) from None
        last = None
        for address in _targets(host, infos):
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"Could not connect to '{host}'")

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise EgressDenied("Unix sockets are not an allowed endpoint.")

    async def sleep(self, seconds):
        await self._inner.sleep(seconds)


class _SyncBackend(httpcore.SyncBackend):
    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        infos = None
        if _literal(host) is None:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise _unresolvable(host, exc) from None
        last = None
        for address in _targets(host, infos):
            try:
                return super().connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                           socket_options=socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"Could not connect to '{host}'")

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise EgressDenied("Unix sockets are not an allowed endpoint.")


def _no_redirect(response: httpx.Response) -> httpx.Response:
    """A redirect is handed back as the error it is for an API call: without its Location, no client follows it."""
    if 300 <= response.status_code < 400:
        response.headers.pop("location", None)
    return response


class EgressTransport(httpx.AsyncBaseTransport):
    """httpx transport with the egress policy at connect time and no redirects.

    Two connection pools: `strict` for calls under the tenant rule, `open` for the others, so that a connection
    opened for an operator's internal endpoint is never reused by a call the tenant rule governs. By default both
    are httpx's own transport with a checking network backend; LiteLLM gets aiohttp-based ones (providers.llm,
    with `PolicyResolver`: same rule, LiteLLM's faster client). Not a subclass of httpx's transport on purpose:
    libraries then add no environment-proxy mounts beside it (a proxy would connect for us, past the check)."""

    def __init__(self, *, strict: httpx.AsyncBaseTransport | None = None,
                 open: httpx.AsyncBaseTransport | None = None, **kwargs):  # noqa: A002
        kwargs.setdefault("retries", 0)
        if strict is None:
            strict = httpx.AsyncHTTPTransport(**kwargs)
            strict._pool._network_backend = _AsyncBackend()
        self._strict, self._open = strict, open or httpx.AsyncHTTPTransport(**kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        strict = _tenant_controlled.get()
        if strict:
            _check_literal(request.url.host)
        try:
            return _no_redirect(await (self._strict if strict else self._open).handle_async_request(request))
        except EgressDenied as exc:
            raise EgressDenied(str(exc), request=request) from None

    async def aclose(self) -> None:
        await self._strict.aclose()
        await self._open.aclose()


def tenant_rule_applies() -> bool:
    """Whether a connection opened now follows the tenant rule: the `egress_scope` in force (strict without one).
    For clients of our own that pick their connection pool per call (the gateway's lean lane)."""
    return _tenant_controlled.get()


def check_literal_host(host: str) -> None:
    """Raise EgressDenied if `host` is an IP literal the tenant rule refuses (clients that connect to literals
    without resolving them, as aiohttp does, check them here; names are checked by PolicyResolver)."""
    _check_literal(host)


def _check_literal(host: str) -> None:
    """An IP-literal host is judged as it is (some clients never resolve, or check, a literal)."""
    literal = _literal(host)
    if literal is not None:
        _check(host, [str(literal)])


class PolicyResolver:
    """An aiohttp resolver that applies the tenant rule to every address a name resolves to, so the connection
    goes only to checked addresses (aiohttp connects to what its resolver returns; IP literals, which it does not
    resolve, are checked by EgressTransport)."""

    def __init__(self):
        from aiohttp.resolver import DefaultResolver

        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        answers = await self._inner.resolve(host, port, family)
        _check(host, [a["host"] for a in answers])
        return answers

    async def close(self) -> None:
        await self._inner.close()


class SyncEgressTransport(httpx.BaseTransport):
    """The synchronous EgressTransport (LiteLLM's sync calls: connectivity tests, model validation)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("retries", 0)
        self._strict = httpx.HTTPTransport(**kwargs)
        self._strict._pool._network_backend = _SyncBackend()
        self._open = httpx.HTTPTransport(**kwargs)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        strict = _tenant_controlled.get()
        if strict:
            _check_literal(request.url.host)
        try:
            return _no_redirect((self._strict if strict else self._open).handle_request(request))
        except EgressDenied as exc:
            raise EgressDenied(str(exc), request=request) from None

    def close(self) -> None:
        self._strict.close()
        self._open.close()


def async_client(*, limits: httpx.Limits | None = None, **kwargs) -> httpx.AsyncClient:
    """An httpx client for our own outbound calls (discovery, health probes)."""
    transport = EgressTransport(**({"limits": limits} if limits else {}))
    return httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False, **kwargs)


def sync_client(**kwargs) -> httpx.Client:
    return httpx.Client(transport=SyncEgressTransport(), follow_redirects=False, trust_env=False, **kwargs)


def egress_denied(exc: BaseException | None) -> EgressDenied | None:
    """The EgressDenied behind an exception raised by a library (LiteLLM wraps what httpx raised)."""
    for _ in range(10):
        if exc is None:
            return None
        if isinstance(exc, EgressDenied):
            return exc
        if isinstance(exc, httpcore.ConnectError) and "egress policy" in str(exc):
            return EgressDenied(str(exc))
        exc = exc.__cause__ or exc.__context__
    return None
