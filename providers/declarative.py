"""The declarative catalog (manage.py catalog): providers, their keys, models, aliases, tenant enablements and ACL
grants as a YAML file that operators keep in Git.

- `catalog_parse` reads and validates a catalog dict (ours, or the LiteLLM Proxy's config.yaml with `model_list`)
  and names the offending entry in every error (`providers[2].models[0].model_type: ...`).
- `catalog_apply` compares it with the database and writes only the differences, through the services (audited,
  catalog bumped), in one transaction: applying the same file twice changes nothing the second time. Nothing is
  removed unless `prune`. Keys are environment references (`os.environ/NAME`), read at apply time; a key in clear
  in the file is refused.
- `catalog_export` writes the database as a catalog; a key only ever as the environment reference it was set from.
"""
from __future__ import annotations

import dataclasses
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

import yaml
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import transaction
from django.db.models import F

from credentials import crypto
from credentials.provider_rules import UnknownProviderType, normalise_provider_type
from tenants.actors import Actor
from tenants.models import Tenant

from providers import services
from providers.choices import AclRole, ModelStatus, ModelType, ProviderStatus
from providers.models import AIModel, Provider
from providers.provider_types import KnownModel, get_spec, known_model
from providers.selectors import acl_list

CATALOG_ACTOR = Actor(name="cli:catalog", source="command")
CATALOG_VERSION = 1
ENV_PREFIX = "os.environ/"
_ENV_REF = re.compile(r"^os\.environ/([A-Za-z_][A-Za-z0-9_]*)$")
# Settings whose name says they are secret are treated like the type's secret fields: env references only.
_SECRET_NAME = re.compile(r"(?i)(key|secret|token|password|credential)")
_PRICE_STEP = Decimal("0.0001")


class CatalogError(Exception):
    """A catalog that cannot be applied; the message starts with the path of the offending entry."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


@dataclass(frozen=True)
class EnvRef:
    """`os.environ/NAME` in the file: the value is read from the environment when the catalog is applied."""

    name: str
    path: str = field(compare=False)

    @property
    def text(self) -> str:
        return ENV_PREFIX + self.name


@dataclass
class GrantSpec:
    path: str
    kind: str  # user | group
    name: str
    role: str


@dataclass
class ModelSpec:
    path: str
    model_id: str
    fields: dict  # AIModel fields given in the file (absent = left as is, or LiteLLM's registry on create)
    model_config: object = ...  # ... = absent
    enabled_for: list[str] | None = None  # None = absent
    grants: list[GrantSpec] | None = None
    names: dict = field(default_factory=dict)  # our field -> its name in the file, where they differ (LiteLLM)


@dataclass
class ProviderSpec:
    path: str
    tenant: str | None  # slug; None = instance level
    name: str
    provider_type: str
    fields: dict  # Provider fields given in the file (values may be EnvRef for base_url / api_version)
    config: object = ...  # ... = absent; else a dict whose values may be EnvRef
    api_key: EnvRef | None = None
    models: list[ModelSpec] | None = None  # None = absent
    grants: list[GrantSpec] | None = None
    names: dict = field(default_factory=dict)  # our field -> its name in the file, where they differ (LiteLLM)


@dataclass
class Catalog:
    providers: list[ProviderSpec]
    tenant: str | None = None  # a tenant's catalog (export --tenant): its providers default to it, prune stays in it
    warnings: list[str] = field(default_factory=list)


# --- Reading a catalog -------------------------------------------------------------------------------------

def _is_secret_setting(provider_type: str, name: str) -> bool:
    try:
        sensitive = get_spec(provider_type).sensitive_parameters
    except KeyError:
        sensitive = ()
    return name in sensitive or bool(_SECRET_NAME.search(name))


def _env_ref(value, path: str) -> EnvRef | None:
    if isinstance(value, str):
        match = _ENV_REF.match(value.strip())
        if match:
            return EnvRef(match.group(1), path)
    return None


def _mapping(value, path: str, allowed: set[str] | None = None, required: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise CatalogError(path, "must be a mapping (key: value)")
    if any(not isinstance(k, str) for k in value):
        raise CatalogError(path, "keys must be text")
    if allowed is not None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise CatalogError(path, f"unknown field(s): {', '.join(unknown)}. Known: {', '.join(sorted(allowed))}")
    for name in required:
        if value.get(name) in (None, ""):
            raise CatalogError(f"{path}.{name}", "is required")
    return value


def _list(value, path: str) -> list:
    if not isinstance(value, list):
        raise CatalogError(path, "must be a list")
    return value


def _text(value, path):
    if value is None:
        return ""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise CatalogError(path, "must be text")
    return str(value).strip()


def _text_or_env(value, path):
    return _env_ref(value, path) or _text(value, path)


def _flag(value, path):
    if not isinstance(value, bool):
        raise CatalogError(path, "must be true or false")
    return value


def _count(value, path):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CatalogError(path, "must be a whole number >= 0, or null")
    return value


def _price(value, path):
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise InvalidOperation
        price = Decimal(str(value).strip())
        if not price.is_finite() or price < 0:
            raise InvalidOperation
        return price.quantize(_PRICE_STEP)
    except InvalidOperation:
        raise CatalogError(path, "must be a price >= 0 (per 1M tokens), or null") from None


def _choice(choices):
    def check(value, path):
        if value not in choices.values:
            raise CatalogError(path, f"must be one of {', '.join(choices.values)}")
        return value
    return check


def _capabilities(value, path):
    flags = _mapping(value, path, set(services.CAPABILITY_FLAGS))
    return {k: _flag(v, f"{path}.{k}") for k, v in flags.items()}


PROVIDER_FIELDS = {
    "base_url": _text_or_env, "api_version": _text_or_env, "capabilities": _capabilities,
    "instance_wide": _flag, "status": _choice(ProviderStatus), "rpm": _count, "tpm": _count, "max_concurrency": _count,
}
MODEL_FIELDS = {
    "display_label": _text, "alias": _text, "model_type": _choice(ModelType), "status": _choice(ModelStatus),
    "instance_wide": _flag, "context_window": _count, "max_output_tokens": _count,
    "input_cost_per_million": _price, "output_cost_per_million": _price, "drop_unsupported_params": _flag,
}
MODEL_FLAGS = {flag: f"supports_{flag}" for flag in services.CAPABILITY_FLAGS}  # capabilities.vision -> supports_vision
_PROVIDER_KEYS = {"name", "tenant", "type", "api_key", "config", "models", "grants", *PROVIDER_FIELDS}
_MODEL_KEYS = {"model_id", "capabilities", "model_config", "enabled_for", "grants", *MODEL_FIELDS}


def _provider_type(value, path: str) -> str:
    try:
        return normalise_provider_type(_text(value, path))
    except UnknownProviderType:
        raise CatalogError(path, f"unknown provider type '{str(value)[:60]}' (a LiteLLM provider, e.g. openai, "
                                 "azure, anthropic, hosted_vllm)") from None


def _grants(value, path: str) -> list[GrantSpec]:
    grants, seen = [], {}
    for i, raw in enumerate(_list(value, path)):
        p = f"{path}[{i}]"
        entry = _mapping(raw, p, {"user", "group", "role"}, required=("role",))
        kinds = [k for k in ("user", "group") if k in entry]
        if len(kinds) != 1:
            raise CatalogError(p, "needs exactly one of user (a username) or group (a group name)")
        grant = GrantSpec(p, kinds[0], _text(entry[kinds[0]], f"{p}.{kinds[0]}"),
                          _choice(AclRole)(entry["role"], f"{p}.role"))
        if (grant.kind, grant.name) in seen:
            raise CatalogError(p, f"{grant.kind} '{grant.name}' is already granted in {seen[grant.kind, grant.name]}")
        seen[grant.kind, grant.name] = p
        grants.append(grant)
    return grants


def _settings(value, path: str, provider_type: str) -> dict:
    """A provider's config: plain values, or env references; a secret setting in clear is refused."""
    settings = dict(_mapping(value, path)) if value is not None else {}
    for name, item in settings.items():
        ref = _env_ref(item, f"{path}.{name}")
        if ref is not None:
            settings[name] = ref
        elif _is_secret_setting(provider_type, name):
            raise CatalogError(f"{path}.{name}", "a secret must be an environment reference (os.environ/NAME), "
                                                 "never the value itself")
    return settings


def _key(value, path: str) -> EnvRef | None:
    if value in (None, ""):
        return None
    ref = _env_ref(value, path)
    if ref is None:
        raise CatalogError(path, "a key must be an environment reference (os.environ/NAME), never the key itself")
    return ref


def _model(raw, path: str, provider_type: str) -> ModelSpec:
    entry = _mapping(raw, path, _MODEL_KEYS, required=("model_id",))
    spec = ModelSpec(path, _text(entry["model_id"], f"{path}.model_id"), {})
    for name, check in MODEL_FIELDS.items():
        if name in entry:
            spec.fields[name] = check(entry[name], f"{path}.{name}")
    if "capabilities" in entry:
        for flag, value in _capabilities(entry["capabilities"], f"{path}.capabilities").items():
            spec.fields[MODEL_FLAGS[flag]] = value
    if "model_config" in entry:
        spec.model_config = dict(_mapping(entry["model_config"] or {}, f"{path}.model_config"))
    if "enabled_for" in entry:
        spec.enabled_for = [_text(s, f"{path}.enabled_for[{i}]")
                            for i, s in enumerate(_list(entry["enabled_for"] or [], f"{path}.enabled_for"))]
    if "grants" in entry:
        spec.grants = _grants(entry["grants"] or [], f"{path}.grants")
    return spec


def _provider(raw, path: str, default_tenant: str | None) -> ProviderSpec:
    entry = _mapping(raw, path, _PROVIDER_KEYS, required=("name", "type"))
    provider_type = _provider_type(entry["type"], f"{path}.type")
    tenant = _text(entry["tenant"], f"{path}.tenant") if entry.get("tenant") else default_tenant
    if default_tenant and tenant != default_tenant:
        raise CatalogError(f"{path}.tenant", f"this is tenant '{default_tenant}''s catalog")
    spec = ProviderSpec(path, tenant, _text(entry["name"], f"{path}.name"), provider_type, {},
                        api_key=_key(entry.get("api_key"), f"{path}.api_key"))
    for name, check in PROVIDER_FIELDS.items():
        if name in entry:
            spec.fields[name] = check(entry[name], f"{path}.{name}")
    if "config" in entry:
        spec.config = _settings(entry["config"], f"{path}.config", provider_type)
    if "models" in entry:
        spec.models, seen = [], {}
        for i, raw_model in enumerate(_list(entry["models"] or [], f"{path}.models")):
            model = _model(raw_model, f"{path}.models[{i}]", provider_type)
            if model.model_id in seen:
                raise CatalogError(model.path, f"model '{model.model_id}' is already listed in {seen[model.model_id]}")
            seen[model.model_id] = model.path
            spec.models.append(model)
    if "grants" in entry:
        spec.grants = _grants(entry["grants"] or [], f"{path}.grants")
    return spec


def catalog_parse(data) -> Catalog:
    """Validate a catalog (the dict of a YAML file): ours (`providers`) or the LiteLLM Proxy's (`model_list`)."""
    if not isinstance(data, dict):
        raise CatalogError("", "a catalog is a mapping with 'providers' (or a LiteLLM config.yaml with 'model_list')")
    if "model_list" in data and "providers" not in data:
        return litellm_config_parse(data)
    _mapping(data, "", {"version", "tenant", "providers"})
    if data.get("version", CATALOG_VERSION) != CATALOG_VERSION:
        raise CatalogError("version", f"must be {CATALOG_VERSION}")
    tenant = _text(data["tenant"], "tenant") or None if data.get("tenant") else None
    catalog = Catalog([], tenant=tenant)
    seen = {}
    for i, raw in enumerate(_list(data.get("providers") or [], "providers")):
        spec = _provider(raw, f"providers[{i}]", tenant)
        if (spec.tenant, spec.name) in seen:
            raise CatalogError(spec.path, f"provider '{spec.name}' is already listed in {seen[spec.tenant, spec.name]}")
        seen[spec.tenant, spec.name] = spec.path
        catalog.providers.append(spec)
    return catalog


def catalog_load(text: str) -> Catalog:
    """Parse YAML text (yaml.safe_load only) into a validated catalog."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CatalogError("", f"not valid YAML{where}: {getattr(exc, 'problem', None) or 'syntax error'}") from None
    return catalog_parse(data)


# --- The LiteLLM Proxy's config.yaml -------------------------------------------------------------------------

_LITELLM_MODES = {"chat": ModelType.INFERENCE, "completion": ModelType.INFERENCE, "responses": ModelType.INFERENCE,
                  "embedding": ModelType.EMBEDDING, "rerank": ModelType.RERANK}
# Where our fields come from in a model_list entry (for errors the services report).
_LITELLM_PROVIDER_NAMES = {"base_url": "litellm_params.api_base", "api_version": "litellm_params.api_version",
                           "api_key": "litellm_params.api_key", "rpm": "litellm_params.rpm",
                           "tpm": "litellm_params.tpm", "config": "litellm_params"}
_LITELLM_MODEL_NAMES = {"alias": "model_name", "display_label": "model_name", "model_type": "model_info.mode",
                        "model_config": "litellm_params", "context_window": "model_info.max_input_tokens",
                        "input_cost_per_million": "litellm_params.input_cost_per_token",
                        "output_cost_per_million": "litellm_params.output_cost_per_token"}
# Client behaviour the gateway sets itself: ignored (with a warning) rather than refused.
_LITELLM_IGNORED = ("timeout", "stream_timeout", "max_retries")


def _alias(model_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", model_name).strip("-")[:100]


def _per_token_price(value, path: str) -> Decimal:
    """LiteLLM's price per token as ours per 1M tokens."""
    price = _price(value, path)  # validates; quantized to 4 places, so scale the exact value
    return _price(Decimal(str(value).strip()) * 1_000_000, path) if price is not None else None


def _litellm_model(params: dict, path: str) -> tuple[str, str]:
    """(provider type, model id) of litellm_params.model (+ custom_llm_provider)."""
    model = _text(params.get("model"), f"{path}.model")
    if not model:
        raise CatalogError(f"{path}.model", "is required")
    if "*" in model:
        raise CatalogError(f"{path}.model", "wildcard routes are not imported: list each model")
    custom = params.get("custom_llm_provider")
    if custom:
        provider_type = _provider_type(custom, f"{path}.custom_llm_provider")
        return provider_type, model.removeprefix(f"{custom}/")
    prefix, _, rest = model.partition("/")
    if rest:
        try:
            return normalise_provider_type(prefix), rest
        except UnknownProviderType:
            pass
    import litellm  # late: it is large

    try:
        model_id, provider_type, _key, _base = litellm.get_llm_provider(model)
        return normalise_provider_type(provider_type), model_id
    except Exception:  # noqa: BLE001 - LiteLLM raises its own BadRequestError for an unknown provider
        raise CatalogError(f"{path}.model", f"cannot tell the provider of '{model[:100]}': write it as "
                                            "<provider>/<model>, e.g. azure/my-deployment") from None


def litellm_config_parse(data: dict) -> Catalog:
    """The LiteLLM Proxy's config.yaml as a catalog: one provider per distinct (type, api_base, api_key reference,
    api_version), one model per model_list entry (model id = the part after the provider prefix, alias =
    model_name). Its other sections (litellm_settings, router_settings, ...) are not part of a catalog."""
    from providers.gateway.request_schema import REQUEST_ONLY, request_fields, routing_keys

    catalog = Catalog([])
    others = sorted(k for k in data if k != "model_list")
    if others:
        catalog.warnings.append(f"ignored (not part of a catalog): {', '.join(map(str, others))}")
    groups: dict[tuple, dict] = {}
    for i, raw in enumerate(_list(data["model_list"] or [], "model_list")):
        path = f"model_list[{i}]"
        entry = _mapping(raw, path, required=("model_name", "litellm_params"))
        params = dict(_mapping(entry["litellm_params"], f"{path}.litellm_params"))
        ppath = f"{path}.litellm_params"
        provider_type, model_id = _litellm_model(params, ppath)
        info = _mapping(entry.get("model_info") or {}, f"{path}.model_info")
        mode = info.get("mode", "chat")
        if not isinstance(mode, str) or mode not in _LITELLM_MODES:
            raise CatalogError(f"{path}.model_info.mode", f"'{str(mode)[:60]}' is not supported: one of "
                                                          f"{', '.join(_LITELLM_MODES)}")
        extra = sorted(set(entry) - {"model_name", "litellm_params", "model_info"})
        if extra:
            catalog.warnings.append(f"{path}: ignored {', '.join(extra)} (limits go in litellm_params)")
        model_type = _LITELLM_MODES[mode]
        for name in ("model", "custom_llm_provider"):
            params.pop(name, None)
        key = _key(params.pop("api_key", None), f"{ppath}.api_key")
        base_url = _text_or_env(params.pop("api_base", None), f"{ppath}.api_base")
        api_version = _text_or_env(params.pop("api_version", None), f"{ppath}.api_version")
        limits = {name: _count(params.pop(name), f"{ppath}.{name}") for name in ("rpm", "tpm") if name in params}
        fields = {"display_label": _text(entry["model_name"], f"{path}.model_name"), "model_type": model_type}
        fields["alias"] = _alias(fields["display_label"])
        if not fields["alias"]:
            raise CatalogError(f"{path}.model_name", "needs at least one letter or digit (it becomes the alias)")
        for ours, theirs in (("input_cost_per_million", "input_cost_per_token"),
                             ("output_cost_per_million", "output_cost_per_token")):
            per_token = params.pop(theirs, info.get(theirs))
            if per_token is not None:
                fields[ours] = _per_token_price(per_token, f"{ppath}.{theirs}")
        if info.get("max_input_tokens") is not None:
            fields["context_window"] = _count(info["max_input_tokens"], f"{path}.model_info.max_input_tokens")
        ignored = [name for name in _LITELLM_IGNORED if params.pop(name, None) is not None]
        if ignored:
            catalog.warnings.append(f"{ppath}: ignored {', '.join(ignored)} (the gateway sets its own)")
        endpoint = "embeddings" if model_type == ModelType.EMBEDDING else "chat.completions"
        call_params = {k: params.pop(k) for k in list(params) if k in request_fields(endpoint) - REQUEST_ONLY}
        refused = sorted(k for k in params if k in routing_keys())
        if refused:
            raise CatalogError(ppath, f"not allowed: {', '.join(refused)}. The endpoint is api_base, the key is "
                                      "api_key, and headers or transport settings cannot be set")
        config = _settings(params, ppath, provider_type)
        group_key = (provider_type, str(getattr(base_url, "text", base_url)), key.text if key else "",
                     str(getattr(api_version, "text", api_version)))
        group = groups.setdefault(group_key, {"path": path, "base_url": base_url, "api_version": api_version,
                                              "key": key, "config": {}, "limits": {}, "models": {}})
        for what, values in (("config", config), ("limits", limits)):
            for name, value in values.items():
                if group[what].setdefault(name, value) != value:
                    raise CatalogError(f"{ppath}.{name}", f"differs from {group['path']} for the same provider "
                                                          "(limits and settings are per provider here)")
        if model_id in group["models"]:
            raise CatalogError(path, f"the same model as {group['models'][model_id].path} "
                                     f"({provider_type}/{model_id} at the same endpoint); a model has one alias "
                                     "here: keep one entry")
        group["models"][model_id] = ModelSpec(path, model_id, fields, model_config=call_params if call_params else ...,
                                              names=_LITELLM_MODEL_NAMES)
    names = _litellm_provider_names(groups)
    for group_key, group in groups.items():
        provider_fields = {"base_url": group["base_url"], "api_version": group["api_version"], **group["limits"]}
        catalog.providers.append(ProviderSpec(
            group["path"], None, names[group_key], group_key[0], provider_fields,
            config=group["config"] if group["config"] else ..., api_key=group["key"],
            models=list(group["models"].values()), names=_LITELLM_PROVIDER_NAMES))
    return catalog


def _litellm_provider_names(groups: dict) -> dict:
    """Stable names: the type, then as much of endpoint host, key variable and API version as tells them apart."""
    def host(base_url):
        if isinstance(base_url, EnvRef):
            return base_url.name.lower()
        return urlsplit(base_url).hostname or "" if base_url else ""

    def name(key, level):
        provider_type, _, key_ref, version = key
        parts = [provider_type, host(groups[key]["base_url"]), key_ref.removeprefix(ENV_PREFIX).lower(), version]
        return "-".join(p for p in parts[:level + 1] if p)[:200]

    names = {}
    for provider_type in {k[0] for k in groups}:
        keys = [k for k in groups if k[0] == provider_type]
        for level in range(4):
            candidate = {k: name(k, level) for k in keys}
            if len(set(candidate.values())) == len(keys):
                break
        names.update(candidate)
    return names


# --- Applying a catalog --------------------------------------------------------------------------------------

@dataclass
class ApplyResult:
    changes: list[str]
    dry_run: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        if not self.changes:
            return "No changes."
        counts = {sign: sum(line.startswith(sign + " ") for line in self.changes) for sign in "+~-"}
        text = f"{counts['+']} to add, {counts['~']} to change, {counts['-']} to remove"
        return f"Dry run, nothing written: {text}." if self.dry_run else f"Applied: {text}."


def _environment(ref: EnvRef, what: str) -> str:
    value = os.environ.get(ref.name, "").strip()
    if not value:
        raise CatalogError(ref.path, f"environment variable {ref.name} is not set ({what})")
    return value


def _resolve(value, what: str):
    """Env references replaced by their values (dicts too)."""
    if isinstance(value, EnvRef):
        return _environment(value, what)
    if isinstance(value, dict):
        return {k: _resolve(v, what) for k, v in value.items()}
    return value


@dataclass
class _Resolved:
    tenants: dict  # slug -> Tenant
    users: dict  # username -> User
    groups: dict  # name -> Group
    keys: dict  # id(ProviderSpec) -> key value


def _lookups(catalog: Catalog) -> _Resolved:
    """Everything the file names, checked before anything is written: tenants, users, groups, env variables."""
    slugs = {catalog.tenant} if catalog.tenant else set()
    grants = []
    for spec in catalog.providers:
        slugs.add(spec.tenant)
        grants += spec.grants or []
        for model in spec.models or []:
            slugs.update(model.enabled_for or ())
            grants += model.grants or []
    tenants = {t.slug: t for t in Tenant.objects.filter(slug__in=[s for s in slugs if s])}
    users = {u.get_username(): u for u in get_user_model().objects.filter(
        username__in=[g.name for g in grants if g.kind == "user"])}
    groups = {g.name: g for g in Group.objects.filter(name__in=[g.name for g in grants if g.kind == "group"])}
    if catalog.tenant and catalog.tenant not in tenants:
        raise CatalogError("tenant", f"no tenant with slug '{catalog.tenant}'")
    keys = {}
    for spec in catalog.providers:
        what = f"provider '{spec.name}'"
        if spec.tenant and spec.tenant not in tenants:
            raise CatalogError(f"{spec.path}.tenant", f"no tenant with slug '{spec.tenant}'")
        if spec.api_key is not None:
            keys[id(spec)] = _environment(spec.api_key, what)
        _resolve(spec.fields, what)
        _resolve(spec.config if spec.config is not ... else {}, what)
        for model in spec.models or []:
            for i, slug in enumerate(model.enabled_for or ()):
                if slug not in tenants:
                    raise CatalogError(f"{model.path}.enabled_for[{i}]", f"no tenant with slug '{slug}'")
    for grant in grants:
        if grant.name not in (users if grant.kind == "user" else groups):
            raise CatalogError(f"{grant.path}.{grant.kind}", f"no {grant.kind} named '{grant.name}'")
    return _Resolved(tenants, users, groups, keys)


def _file_field(name: str, names: dict | None = None) -> str:
    head, dot, rest = name.partition(".")
    if names and head in names:
        return names[head] + dot + rest
    if name.startswith("supports_"):
        return "capabilities." + name.removeprefix("supports_")
    return {"provider_type": "type", "endpoint": "base_url"}.get(name, name)


@contextmanager
def _at(path: str, names: dict | None = None):
    """A service's refusal, reported at the file entry (and field) that caused it."""
    try:
        yield
    except ValidationError as exc:
        if hasattr(exc, "error_dict"):
            parts = [(path if name == NON_FIELD_ERRORS else f"{path}.{_file_field(name, names)}", " ".join(messages))
                     for name, messages in exc.message_dict.items()]
        else:
            parts = [(path, " ".join(exc.messages))]
        raise CatalogError(parts[0][0], "; ".join([parts[0][1], *(f"{p}: {m}" for p, m in parts[1:])])) from None
    except services.Conflict as exc:
        raise CatalogError(path, str(exc)) from None


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Decimal):
        return _decimal_text(value)
    return str(value)


def _decimal_text(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _same(current, wanted) -> bool:
    if isinstance(wanted, str) or isinstance(current, str):
        return (current or "").strip() == (wanted or "").strip()
    if isinstance(wanted, Decimal) or isinstance(current, Decimal):
        if current is None or wanted is None:
            return current is wanted
        return Decimal(current).quantize(_PRICE_STEP) == Decimal(wanted).quantize(_PRICE_STEP)
    return current == wanted


def _revealed(sealed) -> dict:
    if sealed is None:
        return {}
    try:
        value = sealed.reveal()
    except crypto.DecryptionError:
        return {}
    return value if isinstance(value, dict) else {}


class _Apply:
    def __init__(self, catalog: Catalog, resolved: _Resolved, *, actor: Actor, prune: bool):
        self.catalog, self.resolved, self.actor, self.prune = catalog, resolved, actor, prune
        self.changes: list[str] = []

    def run(self) -> list[str]:
        existing = {(p.tenant.slug if p.tenant else None, p.name): p
                    for p in Provider.objects.select_related("tenant")}
        kept = set()
        for spec in self.catalog.providers:
            provider = existing.get((spec.tenant, spec.name))
            if provider is not None and provider.env_source:
                raise CatalogError(spec.path, f"provider '{spec.name}' is defined by environment variables "
                                              "(ensure_env_providers): change it there, or use another name")
            provider = self.provider(spec, provider)
            kept.add(provider.pk)
            self.key(spec, provider)
            for model_spec in spec.models or []:
                self.model(provider, model_spec)
            if spec.models is not None and self.prune:
                listed = {m.model_id for m in spec.models}
                for model in provider.models.exclude(model_id__in=listed).order_by("model_id"):
                    with _at(spec.path):
                        services.model_delete(actor=self.actor, model=model)
                    self.changes.append(f"- model {self.label(provider)}/{model.model_id}")
            if spec.grants is not None:
                self.grants(provider, spec.grants, self.label(provider))
        if self.prune:
            scope = Provider.objects.filter(env_source="").exclude(pk__in=kept).select_related("tenant")
            if self.catalog.tenant:
                scope = scope.filter(tenant=self.resolved.tenants[self.catalog.tenant])
            for provider in scope.order_by(F("tenant__slug").asc(nulls_first=True), "name"):
                count = provider.models.count()
                services.provider_delete(actor=self.actor, provider=provider, force=True)
                self.changes.append(f"- provider {self.label(provider)}" + (f" (with {count} model(s))" if count else ""))
        return self.changes

    @staticmethod
    def label(provider: Provider) -> str:
        return f"{provider.tenant.slug}:{provider.name}" if provider.tenant_id else provider.name

    def provider(self, spec: ProviderSpec, provider: Provider | None) -> Provider:
        what = f"provider '{spec.name}'"
        fields = _resolve(spec.fields, what)
        wanted_config = _resolve(spec.config, what) if spec.config is not ... else ...
        if provider is None:
            with _at(spec.path, spec.names):
                provider = services.provider_create(
                    actor=self.actor, tenant=self.resolved.tenants.get(spec.tenant), name=spec.name,
                    provider_type=spec.provider_type, config=wanted_config if wanted_config is not ... else None,
                    **fields)
            self.changes.append(f"+ provider {self.label(provider)} ({spec.provider_type})")
            return provider
        if provider.provider_type != spec.provider_type:
            raise CatalogError(f"{spec.path}.type", f"provider '{spec.name}' is of type '{provider.provider_type}'; "
                                                    "a type cannot change (use another name)")
        if "base_url" in fields:
            fields["base_url"] = (fields["base_url"] or "").strip().rstrip("/")
        changed = {k: v for k, v in fields.items() if not _same(getattr(provider, k), v)}
        lines = [f"{k} {_show(getattr(provider, k))} -> {_show(v)}" for k, v in changed.items()]
        update = dict(changed)
        if wanted_config is not ...:
            current = _revealed(provider.config)
            # Secret settings are never exported: one missing from the file keeps its stored value.
            kept = {k: v for k, v in current.items()
                    if k not in wanted_config and _is_secret_setting(provider.provider_type, k)}
            wanted_config = {**kept, **wanted_config}
            if wanted_config != current:
                names = sorted(k for k in {*current, *wanted_config} if current.get(k) != wanted_config.get(k))
                lines.append(f"config ({', '.join(names)})")
                update["config"] = wanted_config
        if update:
            with _at(spec.path, spec.names):
                services.provider_update(actor=self.actor, provider=provider, **update)
            self.changes += [f"~ provider {self.label(provider)}: {line}" for line in lines]
        return provider

    def key(self, spec: ProviderSpec, provider: Provider) -> None:
        if spec.api_key is None:
            return
        value, label = self.resolved.keys[id(spec)], spec.api_key.text
        active = services.provider_active_key(provider)
        try:
            current = active.secret.reveal() if active is not None else None
        except crypto.DecryptionError:
            current = None  # never overwritten: the new key is added beside it
        if current == value:
            if active.label != label:
                with _at(f"{spec.path}.{_file_field('api_key', spec.names)}"):
                    services.provider_key_update(actor=self.actor, key=active, label=label)
                self.changes.append(f"~ key {self.label(provider)}: label {_show(active.label)} -> {_show(label)}")
            return
        with _at(f"{spec.path}.{_file_field('api_key', spec.names)}"):
            key = services.provider_key_add(actor=self.actor, provider=provider, secret=value, label=label)
            for old in provider.keys.filter(is_active=True).exclude(pk=key.pk):
                services.provider_key_set_active(actor=self.actor, key=old, is_active=False)
        replaced = f", replaces {active.masked} (disabled)" if active is not None else ""
        self.changes.append(f"+ key {self.label(provider)}: {label} ({key.masked}){replaced}")

    def model(self, provider: Provider, spec: ModelSpec) -> None:
        name = f"{self.label(provider)}/{spec.model_id}"
        model = provider.models.filter(model_id=spec.model_id).first()
        if model is None:
            # LiteLLM's registry fills what the file does not say; what it says (null included) wins.
            known = known_model(provider.provider_type, spec.model_id)
            registry = {f.name: getattr(known, f.name) for f in dataclasses.fields(KnownModel)
                        if f.name != "model_id"} if known else {}
            fields = {**registry, **spec.fields}
            with _at(spec.path, spec.names):
                model = services.model_create(
                    actor=self.actor, provider=provider, model_id=spec.model_id, from_registry=False,
                    model_config=spec.model_config if spec.model_config is not ... else None, **fields)
            self.changes.append(f"+ model {name}")
        else:
            changed = {k: v for k, v in spec.fields.items() if not _same(getattr(model, k), v)}
            lines = [f"{_file_field(k)} {_show(getattr(model, k))} -> {_show(v)}" for k, v in changed.items()]
            if spec.model_config is not ... and (spec.model_config or {}) != _revealed(model.model_config):
                changed["model_config"] = spec.model_config or None
                lines.append("model_config")
            if changed:
                with _at(spec.path, spec.names):
                    services.model_update(actor=self.actor, model=model, **changed)
                self.changes += [f"~ model {name}: {line}" for line in lines]
        if spec.enabled_for is not None:
            self.enablements(model, spec, name)
        if spec.grants is not None:
            self.grants(model, spec.grants, name, model=True)

    def enablements(self, model: AIModel, spec: ModelSpec, name: str) -> None:
        current = set(model.tenant_enablements.values_list("tenant__slug", flat=True))
        wanted = set(spec.enabled_for)
        changes = [(slug, True) for slug in sorted(wanted - current)]
        if self.prune:
            changes += [(slug, False) for slug in sorted(current - wanted)]
        for slug, enabled in changes:
            with _at(f"{spec.path}.enabled_for"):
                services.model_set_tenant_enabled(actor=self.actor, model=model, enabled=enabled,
                                                  tenant=self.resolved.tenants.get(slug) or Tenant.objects.get(slug=slug))
            self.changes.append(f"{'+' if enabled else '-'} enable {name} for {slug}")

    def grants(self, obj, grants: list[GrantSpec], name: str, *, model: bool = False) -> None:
        what = f"{'model' if model else 'provider'} {name}"
        current = {(g.kind, str(g.grantee)): g for g in acl_list(obj=obj)}
        for grant in grants:
            held = current.pop((grant.kind, grant.name), None)
            if held is not None and held.role == grant.role:
                continue
            grantee = (self.resolved.users if grant.kind == "user" else self.resolved.groups)[grant.name]
            with _at(grant.path):
                services.acl_grant(actor=self.actor, obj=obj, grantee=grantee, role=grant.role)
            if held is None:
                self.changes.append(f"+ grant {what}: {grant.kind} {grant.name} {grant.role}")
            else:
                self.changes.append(f"~ grant {what}: {grant.kind} {grant.name} {held.role} -> {grant.role}")
        if self.prune:
            for (kind, grantee_name), held in sorted(current.items()):
                services.acl_revoke(actor=self.actor, obj=obj, grantee=held.grantee)
                self.changes.append(f"- grant {what}: {kind} {grantee_name}")


def catalog_apply(catalog: Catalog, *, actor: Actor = CATALOG_ACTOR, prune: bool = False,
                  dry_run: bool = False) -> ApplyResult:
    """Make the database match the catalog, in one transaction; return the changes, one line each.

    Nothing is written when anything fails (CatalogError naming the entry). `dry_run`: the same work, rolled back.
    `prune`: providers (in the catalog's scope: its tenant, else all but those defined by environment variables),
    models of listed providers, enablements and grants of listed models and providers that the file does not list
    are removed.
    """
    resolved = _lookups(catalog)
    with transaction.atomic():
        changes = _Apply(catalog, resolved, actor=actor, prune=prune).run()
        if dry_run:
            transaction.set_rollback(True)
    return ApplyResult(changes, dry_run, list(catalog.warnings))


# --- Exporting ------------------------------------------------------------------------------------------------

def _key_reference(provider: Provider) -> str | None:
    active = services.provider_active_key(provider)
    if active is not None and _ENV_REF.match(active.label or ""):
        return active.label
    return None


def _grant_entries(obj, warnings: list[str], what: str) -> list[dict]:
    entries = []
    for grant in acl_list(obj=obj):
        if grant.role == "custom":
            warnings.append(f"{what}: {grant.kind} '{grant.grantee}' holds permissions no role matches "
                            f"({', '.join(grant.actions)}); not exported")
            continue
        entries.append({grant.kind: str(grant.grantee), "role": grant.role})
    return entries


def catalog_export(*, tenant: Tenant | None = None) -> tuple[dict, list[str]]:
    """The catalog as a dict, and warnings for what it cannot carry (keys not set from the environment, secret
    settings). Keys are never exported, only the environment reference they were set from. Providers defined by
    environment variables (ensure_env_providers) are left out: that command manages them."""
    warnings: list[str] = []
    providers = (Provider.objects.filter(env_source="").select_related("tenant")
                 .order_by(F("tenant__slug").asc(nulls_first=True), "name"))
    data: dict = {"version": CATALOG_VERSION}
    if tenant is not None:
        providers = providers.filter(tenant=tenant)
        data["tenant"] = tenant.slug
    data["providers"] = []
    for provider in providers:
        label = _Apply.label(provider)
        entry = {"name": provider.name}
        if provider.tenant_id and tenant is None:
            entry["tenant"] = provider.tenant.slug
        entry["type"] = provider.provider_type
        entry.update({"base_url": provider.base_url, "api_version": provider.api_version})
        reference = _key_reference(provider)
        if reference:
            entry["api_key"] = reference
        elif provider.keys.filter(is_active=True).exists():
            warnings.append(f"provider {label}: its key was not set from an environment variable and is not "
                            "exported; add api_key: os.environ/NAME before applying this file elsewhere")
        if provider.config is not None:
            try:
                config = provider.config.reveal()
            except crypto.DecryptionError:
                config = {}
                warnings.append(f"provider {label}: its config cannot be decrypted; not exported")
            secret = sorted(k for k in config if _is_secret_setting(provider.provider_type, k))
            if secret:
                warnings.append(f"provider {label}: secret setting(s) {', '.join(secret)} not exported; add them "
                                "as os.environ/NAME (absent ones keep their stored value)")
            entry["config"] = {k: v for k, v in config.items() if k not in secret}
        entry.update({"capabilities": dict(provider.capabilities or {}), "instance_wide": provider.instance_wide,
                      "status": provider.status, "rpm": provider.rpm, "tpm": provider.tpm,
                      "max_concurrency": provider.max_concurrency})
        entry["grants"] = _grant_entries(provider, warnings, f"provider {label}")
        entry["models"] = [_model_entry(model, warnings, f"{label}/{model.model_id}")
                           for model in provider.models.order_by("model_id")]
        data["providers"].append(entry)
    return data, warnings


def _model_entry(model: AIModel, warnings: list[str], name: str) -> dict:
    entry = {"model_id": model.model_id}
    for field_name in MODEL_FIELDS:
        value = getattr(model, field_name)
        entry[field_name] = float(value) if isinstance(value, Decimal) else value
    entry["capabilities"] = {flag: getattr(model, attr) for flag, attr in MODEL_FLAGS.items()}
    if model.model_config is not None:
        try:
            entry["model_config"] = model.model_config.reveal()
        except crypto.DecryptionError:
            warnings.append(f"model {name}: its model_config cannot be decrypted; not exported")
    entry["enabled_for"] = sorted(model.tenant_enablements.values_list("tenant__slug", flat=True))
    entry["grants"] = _grant_entries(model, warnings, f"model {name}")
    return entry


def catalog_dump(data: dict, warnings: list[str]) -> str:
    """YAML text (yaml.safe_dump only), the warnings as comments at the top."""
    header = ["# Eneo catalog: manage.py catalog apply FILE [--dry-run] [--prune]",
              "# Keys are environment references (os.environ/NAME), read when the file is applied."]
    header += [f"# WARNING: {w}" for w in warnings]
    return "\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True,
                                                      default_flow_style=False)
