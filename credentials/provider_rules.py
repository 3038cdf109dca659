"""Which provider types exist, which fields each takes, and which of them a credential needs.

The list of types comes from LiteLLM itself (`litellm.provider_list`), so every LiteLLM provider is
accepted without code changes, plus a few OpenAI-compatible services LiteLLM does not name.

The fields of each type come from LiteLLM's own field catalog (litellm/proxy/public_endpoints/
provider_create_fields.json: the form its proxy UI renders for 135 providers), read from the installed package
without importing LiteLLM, with our corrections where it is wrong, silent or unsafe for us (`_CORRECTIONS`,
`OPERATOR_ONLY`). A field is one of:
- a column: `api_key` (a provider's keys / a credential's key), `base_url` (LiteLLM's api_base; a tenant
  credential calls it `endpoint`), `api_version`;
- a setting: everything else (AWS region and keys, Vertex project, location and service account, watsonx
  project, ...), stored encrypted in Provider.config / TenantCredential.extra and passed to every call.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
from dataclasses import dataclass

# OpenAI-compatible services that LiteLLM has no name for: called as openai/<model> at their base URL.
EXTRA_OPENAI_COMPATIBLE = {
    "berget": "https://api.berget.ai/v1",
}

ALIASES = {"vllm": "hosted_vllm"}

COLUMNS = ("api_key", "base_url", "api_version")
SELF_HOSTED = frozenset({"hosted_vllm", "ollama", "ollama_chat", "lm_studio", "llamafile", "openai_like",
                         "xinference", "triton", "infinity", "lemonade", "docker_model_runner", "custom_openai",
                         "litellm_proxy"})

# Settings that make the server use its own ambient identity (an AWS profile or role, a web-identity token file,
# an Entra ID login) or send a secret to a URL of the setter's choice. A sysadmin may set them on an
# instance-level provider; from a tenant (its own provider, its credential) they are refused: a tenant's call
# must never run as the server.
OPERATOR_ONLY = frozenset({
    "aws_profile_name", "aws_role_name", "aws_session_name", "aws_web_identity_token", "aws_sts_endpoint",
    "tenant_id", "client_id", "client_secret", "gigachat_auth_url", "token_exchange_endpoint",
})
# LiteLLM resolves values like "os.environ/NAME" from the server's environment: never accepted in a field.
ENV_REFERENCE = "os.environ/"
MAX_VALUE_CHARS = 20_000

# Our corrections to LiteLLM's catalog, per type and field: None drops the field; a dict overrides attributes.
_CORRECTIONS: dict[str, dict[str, dict | None]] = {
    "*": {"aws_bedrock_runtime_endpoint": None},  # the endpoint is base_url: one place, checked by egress policy
    "azure": {
        "api_key": {"label": "API key", "help": "Write-only; stored encrypted."},
        "base_url": {"help": "Your resource endpoint, e.g. https://my-resource.openai.azure.com"},
        "api_version": {"required": True, "label": "API version", "help": "e.g. 2024-06-01"},
        "base_model": {"help": "The model behind the deployments, for LiteLLM's prices (e.g. azure/gpt-4o)."},
    },
    "hosted_vllm": {"base_url": {"required": False, "help": "e.g. http://vllm.internal:8000/v1 "
                                                               "(empty = VLLM_MODEL_URL)."}},
    "vertex_ai": {"vertex_credentials": {"kind": "json", "help": "The service account's JSON key (the file's "
                                                                 "content). Required for calls on behalf of a "
                                                                 "tenant; empty = the server's default "
                                                                 "credentials, for instance-level providers."}},
    "bedrock": {"aws_region_name": {"required": True, "help": "The region the requests are signed for, "
                                                              "e.g. eu-north-1."}},
}
_KINDS = {"password": "password", "text": "text", "textarea": "text", "select": "select", "upload": "file"}

# Credentials a call on behalf of a tenant must carry itself (any one group, all of its fields): without them
# LiteLLM would fall back to the server's ambient credentials (AWS's default chain, Google's ADC).
_AUTH = {
    "bedrock": (("api_key",), ("aws_access_key_id", "aws_secret_access_key")),
    "sagemaker": (("aws_access_key_id", "aws_secret_access_key"),),
    "vertex_ai": (("vertex_credentials",),),
    "watsonx": (("api_key",), ("token",), ("zen_api_key",)),
    "azure": (("api_key",), ("azure_ad_token",)),
}
# ...and what an instance-level provider may use instead (operator-only settings, or the server's identity).
_AMBIENT_AUTH = {
    "bedrock": (("aws_profile_name",), ("aws_role_name",), ("aws_web_identity_token",)),
    "sagemaker": (("aws_profile_name",), ("aws_role_name",)),
    "vertex_ai": (("vertex_project",),),  # Google's application default credentials of the server
    "azure": (("tenant_id", "client_id", "client_secret"),),
}


@dataclass(frozen=True)
class FieldSpec:
    name: str
    label: str
    required: bool
    secret: bool = False
    kind: str = "text"  # text | password | select | json | file
    options: tuple[str, ...] = ()
    default: str | None = None
    help: str = ""
    placeholder: str = ""
    operator_only: bool = False

    @property
    def is_setting(self) -> bool:
        """Stored in the provider's config / the credential's extra (not a column of its own)."""
        return self.name not in COLUMNS


@dataclass(frozen=True)
class CredentialRequirements:
    provider_type: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    note: str = ""
    auth: tuple[tuple[str, ...], ...] = ()  # one of these groups, complete (empty: no rule beyond `required`)

    def describe(self) -> str:
        text = f"provider '{self.provider_type}' requires: {', '.join(self.required) or 'nothing'}"
        if self.auth:
            text += "; and one of: " + " | ".join(" + ".join(group) for group in self.auth)
        if self.optional:
            text += f"; optional: {', '.join(self.optional)}"
        return text + (f". {self.note}" if self.note else "")


_SPECIAL = {
    "azure": CredentialRequirements("azure", ("endpoint", "api_version", "deployment_name"), (),
                                    auth=_AUTH["azure"]),
    "hosted_vllm": CredentialRequirements(
        "hosted_vllm", ("api_key",), ("endpoint",), "Without an endpoint, VLLM_MODEL_URL is used."
    ),
}


@functools.lru_cache(maxsize=1)
def provider_types() -> tuple[str, ...]:
    import litellm  # imported late: it is large

    names = {p.value for p in litellm.provider_list} | set(EXTRA_OPENAI_COMPATIBLE)
    names -= set(ALIASES)  # an alias is accepted as input but stored under its target
    return tuple(sorted(names))


class UnknownProviderType(ValueError):
    def __init__(self, given: str):
        self.given = given
        super().__init__(
            f"Unknown provider type '{given[:60]}'. Valid types: {', '.join(provider_types())}"
        )


def normalise_provider_type(name: str) -> str:
    """Lower-case, trimmed, aliases resolved (vllm -> hosted_vllm). Raises UnknownProviderType."""
    key = (name or "").strip().lower()
    key = ALIASES.get(key, key)
    if key not in provider_types():
        raise UnknownProviderType(name or "")
    return key


# --- fields ----------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _litellm_catalog() -> dict[str, list[dict]]:
    """LiteLLM's field catalog by provider type (the first entry of a type wins: 'openai' is listed twice)."""
    spec = importlib.util.find_spec("litellm")
    path = os.path.join(spec.submodule_search_locations[0], "proxy", "public_endpoints",
                        "provider_create_fields.json")
    with open(path, encoding="utf-8") as fh:
        entries = json.load(fh)
    catalog: dict[str, list[dict]] = {}
    for entry in entries:
        catalog.setdefault(entry.get("litellm_provider") or "", entry.get("credential_fields") or [])
    return catalog


def _generic_fields(key: str) -> list[dict]:
    self_hosted = key in SELF_HOSTED
    return [{"key": "api_key", "label": "API key", "required": not self_hosted, "field_type": "password"},
            {"key": "api_base", "label": "Base URL", "required": self_hosted and key != "hosted_vllm",
             "field_type": "text"}]


def _field(raw: dict, fixes: dict | None) -> FieldSpec:
    name = "base_url" if raw["key"] == "api_base" else raw["key"]
    kind = _KINDS.get(raw.get("field_type") or "text", "text")
    attrs = {
        "name": name,
        "label": "Base URL" if name == "base_url" else (raw.get("label") or name),
        "required": bool(raw.get("required")),
        "secret": kind in ("password", "file"),
        "kind": kind,
        "options": tuple(raw.get("options") or ()),
        "default": raw.get("default_value"),
        "help": (raw.get("tooltip") or "").replace("You can provide the raw key or the environment variable "
                                                    "(e.g. `os.environ/MY_SECRET_KEY`).", "").strip(),
        "placeholder": raw.get("placeholder") or "",
        "operator_only": name in OPERATOR_ONLY,
    }
    if "os.environ/" in attrs["help"]:
        attrs["help"] = ""  # LiteLLM's proxy resolves env references; we never do (see ENV_REFERENCE)
    if name == "api_key" and not attrs["help"]:
        attrs["help"] = "Write-only; stored encrypted."
    attrs.update(fixes or {})
    if attrs["kind"] == "json":
        attrs["secret"] = True
    return FieldSpec(**attrs)


@functools.lru_cache(maxsize=None)
def type_fields(provider_type: str) -> tuple[FieldSpec, ...]:
    """The fields a provider of this type takes: LiteLLM's catalog with our corrections; columns first."""
    raws = _litellm_catalog().get(provider_type) or _generic_fields(provider_type)
    fixes = {**_CORRECTIONS["*"], **_CORRECTIONS.get(provider_type, {})}
    fields, seen = [], set()
    for raw in raws:
        name = "base_url" if raw["key"] == "api_base" else raw["key"]
        if name in seen or (name in fixes and fixes[name] is None):
            continue
        seen.add(name)
        fields.append(_field(raw, fixes.get(name)))
    if provider_type == "sagemaker":  # LiteLLM lists no AWS fields for it, though it signs like Bedrock
        fields += [f for f in type_fields("bedrock") if f.name.startswith("aws_") and f.name not in seen]
        seen.update(f.name for f in fields)
    if provider_type in SELF_HOSTED and "api_key" in seen:
        fields = [FieldSpec(**{**f.__dict__, "required": False}) if f.name == "api_key" else f for f in fields]
    if "api_key" not in seen and provider_type not in _AUTH:
        fields.append(_field({"key": "api_key", "label": "API key", "field_type": "password"}, None))
    if "base_url" not in seen:
        fields.append(_field({"key": "api_base", "field_type": "text"}, None))
    order = {name: i for i, name in enumerate(COLUMNS)}
    return tuple(sorted(fields, key=lambda f: order.get(f.name, len(order))))


def setting_fields(provider_type: str) -> dict[str, FieldSpec]:
    return {f.name: f for f in type_fields(provider_type) if f.is_setting}


def check_settings(provider_type: str, values, *, tenant_controlled: bool, where: str = "config") -> dict:
    """Validate a provider's config / a credential's extra: the type's own settings only, each of the right
    kind; no environment references; operator-only settings only from sysadmins on instance-level providers.

    Returns the cleaned dict (JSON settings as objects). Raises ValueError({field path: message}).
    """
    if values in (None, ""):
        return {}
    if not isinstance(values, dict):
        raise SettingsError({where: "Must be a JSON object."})
    known = setting_fields(provider_type)
    errors, cleaned = {}, {}
    for name, value in values.items():
        path = f"{where}.{name}"
        spec = known.get(name) if isinstance(name, str) else None
        if spec is None:
            hint = (f"use the {'endpoint' if where == 'extra' else 'base_url'} field" if name in ("api_base",
                                                                                                  "base_url")
                    else "use its own field" if name in COLUMNS
                    else f"settings of '{provider_type}': {', '.join(known) or 'none'}")
            errors[path] = f"Not a setting of this provider type ({hint})."
            continue
        if spec.operator_only and tenant_controlled:
            errors[path] = ("Only a sysadmin can set this, and only on an instance-level provider: it lets a call "
                            "use the server's own identity or send a secret to a URL of the setter's choice.")
            continue
        if value in (None, ""):
            continue
        if spec.kind == "json":
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    errors[path] = "Must be a JSON object (the file's content, not a path)."
                    continue
            if not isinstance(value, dict):
                errors[path] = "Must be a JSON object (the file's content, not a path)."
                continue
            text = json.dumps(value)
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = text = str(value).strip()
        else:
            errors[path] = "Must be a string."
            continue
        if ENV_REFERENCE in text:
            errors[path] = ("Environment references (os.environ/...) are not accepted: enter the value itself; "
                            "it is stored encrypted.")
        elif len(text) > MAX_VALUE_CHARS:
            errors[path] = f"At most {MAX_VALUE_CHARS} characters."
        elif spec.options and value not in spec.options:
            errors[path] = f"Must be one of: {', '.join(spec.options)}."
        else:
            cleaned[name] = value
    if errors:
        raise SettingsError(errors)
    return cleaned


class SettingsError(ValueError):
    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def call_settings(provider_type: str, values: dict | None, *, secrets: bool = True,
                  operator_only: bool = False) -> dict:
    """The stored settings that may reach a call (rows saved before a rule changed are filtered here too), as
    LiteLLM takes them (a JSON setting as its JSON text). `secrets=False`: only the non-secret ones;
    `operator_only`: whether the operator-only ones may pass (an instance-level provider's own calls)."""
    if not values:
        return {}
    known = setting_fields(provider_type)
    out = {}
    for name, value in values.items():
        spec = known.get(name)
        if (spec is None or value in (None, "") or (spec.secret and not secrets)
                or (spec.operator_only and not operator_only)):
            continue
        text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        if ENV_REFERENCE not in text:
            out[name] = text
    return out


# Settings that OpenAI-wire servers read as request headers (the lean lane's calls, model discovery, health).
HEADER_SETTINGS = {"organization": "OpenAI-Organization"}


def setting_headers(settings: dict | None) -> dict:
    """The headers a call's settings become on an OpenAI-wire server."""
    return {header: settings[name] for name, header in HEADER_SETTINGS.items() if (settings or {}).get(name)}


def auth_present(provider_type: str, api_key: str | None, settings: dict, *, ambient: bool) -> bool:
    """Whether a call carries credentials of its own (`ambient`: or may use the server's identity)."""
    groups = _AUTH.get(provider_type, (("api_key",),)) + (_AMBIENT_AUTH.get(provider_type, ()) if ambient else ())
    values = {**settings, "api_key": api_key}
    return any(all(values.get(name) for name in group) for group in groups)


def requirements_for(provider_type: str) -> CredentialRequirements:
    """What a tenant's credential for this type must hold."""
    if provider_type in _SPECIAL:
        return _SPECIAL[provider_type]
    if provider_type in _AUTH:
        required = tuple(f.name for f in type_fields(provider_type) if f.required and f.is_setting)
        return CredentialRequirements(provider_type, required, ("endpoint", "api_version"), auth=_AUTH[provider_type])
    return CredentialRequirements(provider_type, ("api_key",), ("endpoint", "api_version", "deployment_name"))


def missing_fields(provider_type: str, values: dict) -> list[str]:
    """The fields a credential lacks (`values`: api_key, endpoint, api_version, deployment_name and settings)."""
    req = requirements_for(provider_type)
    missing = [f for f in req.required if not str(values.get(f) or "").strip()]
    if req.auth and not any(all(values.get(n) for n in group) for group in req.auth):
        missing.append(" | ".join(" + ".join(group) for group in req.auth))
    return missing
