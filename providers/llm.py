"""LiteLLM, configured once for this project: call it through `from .llm import litellm`.

Imported where a call is made, not at start-up: importing LiteLLM takes about 2 s, which every manage.py
command, the beat scheduler and the admin would otherwise pay for nothing.

Every HTTP client LiteLLM builds (its own handlers' and the OpenAI/Azure SDK clients it creates) gets the
project's egress transport (credentials.egress): the egress policy is applied to the address each connection
really goes to, redirects are never followed, and environment proxies are not used. These are LiteLLM's client
factories (`create_async_transport`, `_create_sync_transport`, `_get_sync_http_client`); a LiteLLM upgrade that
renames them fails tests/test_egress.py, which calls each provider family against an address the policy refuses.
"""
import re

import httpx
import litellm
from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler, HTTPHandler
from litellm.llms.openai.common_utils import BaseOpenAILLM

from credentials.egress import EgressTransport, PolicyResolver, SyncEgressTransport

litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on stdout
litellm.telemetry = False
litellm.disable_hf_tokenizer_download = True  # never fetch a tokenizer from HuggingFace at run time (it blocked
# the event loop ~45 s when pricing a llama stream); token counts fall back to LiteLLM's default encoding
# /v1/messages on an OpenAI-wire provider goes to its chat completions, which every OpenAI-compatible server has
# (LiteLLM's default, the Responses API, is missing on most of them: vLLM, Ollama, older gateways)
litellm.use_chat_completions_url_for_anthropic_messages = True
litellm.success_callback, litellm.failure_callback, litellm.callbacks = [], [], []


_litellm_async_transport = AsyncHTTPHandler.create_async_transport  # LiteLLM's own (aiohttp: its fast path)


def _strict_aiohttp_transport():
    """LiteLLM's aiohttp transport, its connector resolving through the egress policy (PolicyResolver)."""
    from aiohttp import ClientSession, DummyCookieJar, TCPConnector
    from litellm import constants
    from litellm.llms.custom_httpx.aiohttp_transport import LiteLLMAiohttpTransport

    def session():
        connector = TCPConnector(resolver=PolicyResolver(), keepalive_timeout=constants.AIOHTTP_KEEPALIVE_TIMEOUT,
                                 ttl_dns_cache=constants.AIOHTTP_TTL_DNS_CACHE,
                                 limit=constants.AIOHTTP_CONNECTOR_LIMIT,
                                 limit_per_host=constants.AIOHTTP_CONNECTOR_LIMIT_PER_HOST)
        return ClientSession(connector=connector, cookie_jar=DummyCookieJar(), trust_env=False)

    return LiteLLMAiohttpTransport(client=session)


def _async_transport(*args, **kwargs):
    """Every async client LiteLLM builds: its own transport for operators' endpoints, the checking one for calls
    under the tenant rule (EgressTransport picks per call)."""
    kwargs.pop("shared_session", None)
    open_transport = _litellm_async_transport(*args, **kwargs)
    if isinstance(open_transport, httpx.AsyncHTTPTransport) or open_transport is None:
        return EgressTransport()  # LiteLLM without aiohttp: httpx both ways
    return EgressTransport(strict=_strict_aiohttp_transport(), open=open_transport)


def _sync_openai_client():
    return httpx.Client(transport=SyncEgressTransport(), follow_redirects=False, trust_env=False)


AsyncHTTPHandler.create_async_transport = staticmethod(_async_transport)
AsyncHTTPHandler._create_async_transport = staticmethod(_async_transport)
AsyncHTTPHandler.create_httpx_proxy_mounts = staticmethod(lambda *args, **kwargs: None)
HTTPHandler._create_sync_transport = lambda self: SyncEgressTransport()
HTTPHandler._create_sync_proxy_mounts = lambda self, *args, **kwargs: None
BaseOpenAILLM._get_sync_http_client = staticmethod(_sync_openai_client)

# Keys and LiteLLM's client cache: LiteLLM keeps one SDK client per (api_key, api_base, ...) in memory for an hour.
# To keep plaintext keys out of memory, the SDK-client types get a placeholder key and the real key travels only in
# this call's headers (checked per type against the fake upstream with LiteLLM 1.108.6, and by
# tests/test_egress.py::test_no_key_in_litellm_client_cache). The other types use LiteLLM's own HTTP handlers,
# which build headers per call and cache no key.
PLACEHOLDER_KEY = "sk-eneo-gateway-placeholder"
KEY_IN_HEADERS = frozenset({
    "openai", "custom_openai", "scaleway", "lm_studio", "deepinfra", "nebius", "perplexity", "cerebras",
    "sambanova", "nvidia_nim", "litellm_proxy", "llamafile", "github", "codestral", "volcengine", "dashscope",
    "moonshot", "novita", "featherless_ai", "nscale", "hyperbolic", "lambda_ai", "galadriel", "friendliai",
    "xinference", "docker_model_runner",
})


def call_kwargs(provider_type: str, cred, model: str) -> dict:
    """model, api_key, api_base, api_version, the type's settings (AWS region and keys, Vertex project, ...) and key
    headers for one LiteLLM call with a resolved credential: the gateway, connectivity tests, model validation
    and health probes all build their calls here. `model` is the LiteLLM model name; a tenant's Azure credential
    with a deployment name routes the call to that deployment."""
    from credentials.provider_rules import auth_present
    from providers.provider_types import get_spec

    if provider_type == "azure" and cred.deployment_name:
        model = f"azure/{cred.deployment_name}"
    params = {**cred.settings, **cred.litellm_kwargs(), "model": model}
    if not cred.api_key and auth_present(provider_type, None, cred.settings, ambient=True):
        del params["api_key"]  # authenticated by its settings (AWS keys, a service account, an AD token)
    key = cred.api_key
    if provider_type == "azure":
        params["api_key"] = PLACEHOLDER_KEY
        params["extra_headers"] = {"api-key": key or ""}
    elif get_spec(provider_type).litellm_prefix in KEY_IN_HEADERS:
        params["api_key"] = PLACEHOLDER_KEY
        params["extra_headers"] = {"Authorization": f"Bearer {key}"} if key else {}
    return params


# "litellm.APIError: APIError: OpenAIException - <the provider's text>": callers see only the provider's text.
_LIBRARY_PREFIX = re.compile(r"^\s*(?:litellm\.\w+:\s*)*(?:\w+Error:\s*)?(?:\w+Exception(?:\s+\w+Error)?\s*-\s*)?")
_LIBRARY_HINT = re.compile(r"\s*Handle with `litellm\.\w+`\.?\s*$")


def upstream_text(exc: BaseException, limit: int = 300) -> str:
    """What went wrong upstream, for a caller or an operator: the first line of the error, masked, without
    library class names; a redirect is named as such (it is never followed)."""
    from credentials.masking import mask_text

    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 300 <= status < 400:
        return f"the provider answered with a redirect (HTTP {status}), which is never followed"
    line = (str(exc).splitlines() or [""])[0]
    line = _LIBRARY_PREFIX.sub("", _LIBRARY_PREFIX.sub("", line, count=1), count=1)
    line = _LIBRARY_HINT.sub("", line).strip()
    return mask_text(line or "no details")[:limit]


__all__ = ["litellm", "call_kwargs", "upstream_text"]
