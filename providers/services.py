"""All writes to providers, keys, models, enablements and ACL grants. Each writes an audit event."""
from __future__ import annotations

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from credentials import crypto
from credentials.fields import Sealed
from credentials.masking import last4_of
from credentials.provider_rules import SettingsError, UnknownProviderType, check_settings, normalise_provider_type
from credentials.resolution import ProviderEndpoint, ResolvedCredential, credential_resolve
from credentials.services import endpoint_validate
from tenants.actors import Actor
from tenants.models import Tenant, TenantMembership
from tenants.services import audit_record, catalog_bump

from providers.choices import AclRole, ModelType
from providers.models import AIModel, FavouriteProviderType, Provider, ProviderKey, TenantModelEnablement
from providers.provider_types import get_spec, known_model
from providers.gateway.request_schema import REQUEST_ONLY, request_fields, validate_call_settings


class Conflict(Exception):
    """409: the change conflicts with existing data (duplicate name, provider still has models, ...)."""


PROVIDER_FIELDS = ("name", "base_url", "api_version", "capabilities", "instance_wide", "status", "rpm", "tpm",
                   "max_concurrency")
MODEL_FIELDS = ("model_id", "display_label", "alias", "model_type", "context_window", "max_output_tokens",
                "supports_vision", "supports_tools", "supports_reasoning", "supports_json_mode",
                "supports_system_prompt", "supports_streaming", "input_cost_per_million", "output_cost_per_million",
                "instance_wide", "status", "drop_unsupported_params")
CAPABILITY_FLAGS = ("system_prompt", "json_mode", "reasoning", "vision", "tools", "streaming")

ROLE_ACTIONS = {
    AclRole.VIEWER: ("view",),
    AclRole.EDITOR: ("view", "change"),
    AclRole.MANAGER: ("view", "change", "share"),
    AclRole.OWNER: ("view", "change", "share", "delete"),
}


def _seal(value, *, is_json=False):
    import json

    text = json.dumps(value, separators=(",", ":"), sort_keys=True) if is_json else value
    return Sealed(crypto.encrypt(text), is_json=is_json)


def _provider_type(value: str) -> str:
    try:
        return normalise_provider_type(value)
    except UnknownProviderType as exc:
        raise ValidationError({"provider_type": str(exc)}) from None


def _check_capabilities(capabilities) -> dict:
    if capabilities in (None, ""):
        return {}
    if not isinstance(capabilities, dict):
        raise ValidationError({"capabilities": "Must be an object of flags."})
    unknown = set(capabilities) - set(CAPABILITY_FLAGS)
    if unknown:
        raise ValidationError({"capabilities": f"Unknown flag(s): {', '.join(sorted(unknown))}. "
                                               f"Known: {', '.join(CAPABILITY_FLAGS)}."})
    return {k: bool(v) for k, v in capabilities.items()}


def _check_provider_config(provider: Provider, config, actor: Actor | None) -> dict:
    """The type's own settings only (credentials.provider_rules): the endpoint is base_url, keys are provider keys,
    and nothing here may choose a transport or headers (422 naming each field). Operator-only settings (the
    server's own AWS/Entra identity) only from sysadmins on instance-level providers."""
    try:
        return check_settings(provider.provider_type, config, tenant_controlled=(
            provider.tenant_id is not None or actor is None or not actor.is_operator))
    except SettingsError as exc:
        raise ValidationError(exc.errors) from None


def provider_settings(provider: Provider) -> dict:
    """The provider's stored settings (decrypted; for forms and validation, never for output)."""
    try:
        return provider.config.reveal() if isinstance(provider.config, Sealed) else dict(provider.config or {})
    except crypto.DecryptionError:
        return {}  # shown as empty; saving new settings replaces the unreadable ones


def _validate_provider(provider: Provider, settings: dict | None = None):
    spec = get_spec(provider.provider_type)
    errors = {}
    try:
        # A tenant-owned provider's endpoint is tenant-controlled: public addresses or ENDPOINT_ALLOWED_HOSTS only.
        provider.base_url = endpoint_validate(provider.base_url or "", tenant_controlled=provider.tenant_id is not None)
    except ValidationError as exc:
        errors.update({"base_url": exc.message_dict["endpoint"]})
    if settings is None:
        settings = provider_settings(provider)
    for field in spec.fields:
        if not field.required or field.name == "api_key":
            continue  # a key is optional: without one, tenants' credentials or the global env key are used
        name = f"config.{field.name}" if field.is_setting else field.name
        present = settings.get(field.name) if field.is_setting else getattr(provider, field.name, "")
        if not present and name not in errors:
            errors[name] = f"{field.label} is required for {spec.label}."
    if errors:
        raise ValidationError(errors)
    provider.full_clean(exclude=["config"], validate_unique=False, validate_constraints=False)


def provider_validate(provider: Provider, *, actor: Actor | None = None, config=...) -> dict:
    """Raise the ValidationError provider_create/provider_update would raise for these values; returns the cleaned
    settings (`config`: the new settings, else the stored ones).

    For forms' clean(), so that bad input is reported on the form instead of after it was accepted.
    """
    settings = provider_settings(provider) if config is ... else _check_provider_config(provider, config, actor)
    _validate_provider(provider, settings)
    return settings


def _save_unique(obj, message: str):
    try:
        with transaction.atomic():
            obj.save()
    except IntegrityError:
        raise Conflict(message) from None


def _audit_provider(provider: Provider) -> dict:
    return {f: getattr(provider, f) for f in ("name", "provider_type", "base_url", "api_version", "instance_wide",
                                              "status", "rpm", "tpm", "max_concurrency")} | {
        "config": "********" if provider.config is not None else None}


@transaction.atomic
def provider_create(
    *, actor: Actor, tenant: Tenant | None, owner=None, name: str, provider_type: str, base_url: str = "",
    api_version: str = "", config: dict | None = None, capabilities: dict | None = None,
    instance_wide: bool = False, status: str = "active", rpm: int | None = None, tpm: int | None = None,
    max_concurrency: int | None = None, api_key: str | None = None, key_label: str = "",
    sealed_api_key: Sealed | None = None, models: list[dict] | None = None,
    enable_for_tenants: list[Tenant] | tuple[Tenant, ...] = (),
) -> Provider:
    """Create a provider with its first key and models, all or nothing.

    `sealed_api_key` passes a key that is already encrypted (the admin wizard keeps only ciphertext).
    `enable_for_tenants`: tenants that may use the new models of an instance-level provider (the sharing picked in
    the wizard), enabled in the same transaction (model_set_tenant_enabled, audited per model and tenant).
    """
    if enable_for_tenants and tenant is not None:
        raise ValidationError({"enable_for_tenants": "A tenant's own provider cannot be shared with other tenants: "
                                                     "its models are its tenant's already."})
    api_key = (api_key or "").strip()
    provider = Provider(
        tenant=tenant, owner=owner, name=(name or "").strip(), provider_type=_provider_type(provider_type),
        base_url=base_url or "", api_version=(api_version or "").strip(),
        capabilities=_check_capabilities(capabilities), instance_wide=instance_wide, status=status, rpm=rpm,
        tpm=tpm, max_concurrency=max_concurrency,
    )
    settings = _check_provider_config(provider, config, actor)
    if settings:
        provider.config = _seal(settings, is_json=True)
    _validate_provider(provider, settings)
    _save_unique(provider, f"A provider named '{provider.name}' already exists "
                           f"{'in this tenant' if tenant else 'at instance level'}.")
    audit_record(actor=actor, action="provider.create", target=provider, tenant=tenant,
                 changes={"before": None, "after": _audit_provider(provider)})
    catalog_bump(provider.tenant_id)
    if api_key or sealed_api_key:
        provider_key_add(actor=actor, provider=provider, secret=api_key, sealed=sealed_api_key, label=key_label)
    created = [model_create(actor=actor, provider=provider, **spec) for spec in models or []]
    for shared_with in enable_for_tenants:
        for model in created:
            model_set_tenant_enabled(actor=actor, model=model, tenant=shared_with, enabled=True)
    return provider


@transaction.atomic
def provider_update(*, actor: Actor, provider: Provider, config=..., **fields) -> Provider:
    unknown = set(fields) - set(PROVIDER_FIELDS)
    if unknown:
        raise ValidationError({f: "This field cannot be changed." for f in unknown})
    before = _audit_provider(provider)
    if (provider.tenant_id is None and not actor.is_operator and "base_url" in fields
            and (fields["base_url"] or "").strip().rstrip("/") != provider.base_url):
        # The provider's keys (and the global key) are bound to the endpoint a sysadmin configured.
        raise ValidationError({"base_url": "Only a sysadmin can change the endpoint of an instance-level provider: "
                                           "its keys are bound to it."})
    if "capabilities" in fields:
        fields["capabilities"] = _check_capabilities(fields["capabilities"])
    for key, value in fields.items():
        setattr(provider, key, value.strip() if isinstance(value, str) and key != "base_url" else value)
    settings = None
    if config is not ...:
        settings = _check_provider_config(provider, config, actor)
        provider.config = _seal(settings, is_json=True) if settings else None
    _validate_provider(provider, settings)
    _save_unique(provider, f"A provider named '{provider.name}' already exists.")
    after = _audit_provider(provider)
    if config is not ...:
        after["config"] = "***CHANGED***"
    changes = {k: [before[k], after[k]] for k in after if before[k] != after[k]}
    if changes:
        audit_record(actor=actor, action="provider.update", target=provider, tenant=provider.tenant, changes=changes)
        catalog_bump(provider.tenant_id)
    return provider


@transaction.atomic
def provider_delete(*, actor: Actor, provider: Provider, force: bool = False) -> None:
    count = provider.models.count()
    if count and not force:
        raise Conflict(f"Provider '{provider.name}' still has {count} model(s). Delete them first, "
                       "or delete with force=true to remove the provider and its models.")
    view, pk, tenant = _audit_provider(provider), provider.pk, provider.tenant
    provider.delete()
    provider.pk = pk
    audit_record(actor=actor, action="provider.delete", target=provider, tenant=tenant,
                 changes={"before": view, "models_deleted": count})
    catalog_bump(provider.tenant_id)


# --- Keys (rotation: add new, validate, disable old) ----------------------------------------------------

@transaction.atomic
def provider_key_add(*, actor: Actor, provider: Provider, secret: str = "", sealed: Sealed | None = None,
                     label: str = "", is_active: bool = True) -> ProviderKey:
    secret = (secret or "").strip()
    if sealed is not None:
        plaintext = sealed.reveal()
    elif secret:
        plaintext, sealed = secret, _seal(secret)
    else:
        raise ValidationError({"secret": "The key must not be empty."})
    key = ProviderKey(provider=provider, label=(label or "").strip()[:100], secret=sealed,
                      last4=last4_of(plaintext), is_active=is_active)
    del plaintext
    key.full_clean(exclude=["secret"])
    key.save()
    audit_record(actor=actor, action="provider_key.add", target=key, tenant=provider.tenant,
                 changes={"provider": provider.public_id, "label": key.label, "secret": key.masked,
                          "is_active": is_active})
    catalog_bump(provider.tenant_id)
    return key


@transaction.atomic
def provider_key_set_active(*, actor: Actor, key: ProviderKey, is_active: bool) -> ProviderKey:
    if key.is_active != is_active:
        key.is_active = is_active
        key.save(update_fields=["is_active"])
        audit_record(actor=actor, action="provider_key.enable" if is_active else "provider_key.disable", target=key,
                     tenant=key.provider.tenant, changes={"is_active": [not is_active, is_active]})
        catalog_bump(key.provider.tenant_id)
    return key


@transaction.atomic
def provider_key_update(*, actor: Actor, key: ProviderKey, label: str | None = None,
                        is_active: bool | None = None) -> ProviderKey:
    """Relabel a key and/or enable or disable it (None = leave as is). Rotation: add a new key, disable the old."""
    if label is not None and label.strip() != key.label:
        before, key.label = key.label, label.strip()
        key.full_clean(exclude=["secret"])
        key.save(update_fields=["label"])
        audit_record(actor=actor, action="provider_key.relabel", target=key, tenant=key.provider.tenant,
                     changes={"label": [before, key.label]})
    if is_active is not None:
        provider_key_set_active(actor=actor, key=key, is_active=is_active)
    return key


@transaction.atomic
def provider_key_delete(*, actor: Actor, key: ProviderKey) -> None:
    pk, provider = key.pk, key.provider
    view = {"label": key.label, "secret": key.masked, "is_active": key.is_active}
    key.delete()
    key.pk = pk
    audit_record(actor=actor, action="provider_key.delete", target=key, tenant=provider.tenant, changes=view)
    catalog_bump(provider.tenant_id)


def provider_active_key(provider: Provider) -> ProviderKey | None:
    """The key calls use: the newest active one. Disabled keys are never used."""
    return provider.keys.filter(is_active=True).order_by("-created_at", "-id").first()


def provider_credential(*, provider: Provider, tenant: Tenant | None, active_key=..., tenant_credential=...
                        ) -> ResolvedCredential:
    """The credential for calling `provider` on behalf of `tenant`, bound to the endpoint it may go to
    (credentials.resolution decides both; DESIGN.md resolution order).

    A tenant-owned provider is always called on behalf of its tenant (a sysadmin's test of it included).
    `active_key` / `tenant_credential` may be passed from the gateway's catalog (rows, ciphertext) to save
    queries; by default they are looked up.
    """

    def provider_fallback():
        key = provider_active_key(provider) if active_key is ... else active_key
        return key.secret.reveal() if key is not None else None

    if tenant is None and provider.tenant_id is not None:
        tenant = provider.tenant
    endpoint = ProviderEndpoint(provider_type=provider.provider_type, owner_tenant_id=provider.tenant_id,
                                base_url=provider.base_url or "", api_version=provider.api_version or "",
                                label=provider.name, settings=provider.config)
    return credential_resolve(tenant=tenant, provider_type=provider.provider_type,
                              provider_fallback=provider_fallback, tenant_credential=tenant_credential,
                              endpoint=endpoint)


# --- Models ---------------------------------------------------------------------------------------------

def _audit_model(model: AIModel) -> dict:
    view = {f: getattr(model, f) for f in MODEL_FIELDS}
    for f in ("input_cost_per_million", "output_cost_per_million"):
        if isinstance(view[f], Decimal):
            view[f] = str(view[f])
    view["model_config"] = "********" if model.model_config is not None else None
    return view


def _settings_endpoint(model: AIModel) -> str:
    return "embeddings" if model.model_type == ModelType.EMBEDDING else "chat.completions"


def _check_model_config(model: AIModel, value) -> dict:
    """A model's settings are default call parameters of the OpenAI API (temperature, max_tokens, ...), each
    valid per its schema; never an endpoint, key, header or transport setting (422 naming them)."""
    return validate_call_settings(value, endpoint=_settings_endpoint(model), field="model_config")


def model_settings(model: AIModel) -> dict:
    """The model's default call parameters for the gateway and probes (only API parameters: rows saved before
    the rule are filtered, so a stored routing key never reaches a call)."""
    if model.model_config is None:
        return {}
    stored = model.model_config.reveal()
    if not isinstance(stored, dict):
        return {}
    allowed = request_fields(_settings_endpoint(model)) - REQUEST_ONLY
    return {k: v for k, v in stored.items() if k in allowed}


@transaction.atomic
def model_create(*, actor: Actor, provider: Provider, model_id: str, model_config: dict | None = None,
                 from_registry: bool = True, **fields) -> AIModel:
    """Add a model. Unset context window, capability flags and prices are filled from LiteLLM's registry."""
    unknown = set(fields) - set(MODEL_FIELDS)
    if unknown:
        raise ValidationError({f: "Unknown field." for f in unknown})
    model_id = (model_id or "").strip()
    if not model_id:
        raise ValidationError({"model_id": "The model id must not be empty."})
    model = AIModel(provider=provider, model_id=model_id)
    known = known_model(provider.provider_type, model_id) if from_registry else None
    if known is not None:
        for attr in ("model_type", "context_window", "max_output_tokens", "supports_vision", "supports_tools",
                     "supports_reasoning", "supports_json_mode", "supports_system_prompt",
                     "input_cost_per_million", "output_cost_per_million"):
            setattr(model, attr, getattr(known, attr))
    for key, value in fields.items():
        if value is not None:
            setattr(model, key, value.strip() if isinstance(value, str) else value)
    if model.model_type not in ModelType.values:
        raise ValidationError({"model_type": f"One of: {', '.join(ModelType.values)}."})
    if model_config:
        model.model_config = _seal(_check_model_config(model, model_config), is_json=True)
    model.full_clean(exclude=["model_config", "provider"], validate_unique=False, validate_constraints=False)
    _save_unique(model, f"Provider '{provider.name}' already has a model '{model_id}'.")
    audit_record(actor=actor, action="model.create", target=model, tenant=provider.tenant,
                 changes={"provider": provider.public_id, "after": _audit_model(model)})
    catalog_bump(provider.tenant_id)
    return model


@transaction.atomic
def model_update(*, actor: Actor, model: AIModel, model_config=..., **fields) -> AIModel:
    unknown = set(fields) - set(MODEL_FIELDS)
    if unknown:
        raise ValidationError({f: "Unknown field." for f in unknown})
    before = _audit_model(model)
    for key, value in fields.items():
        setattr(model, key, value.strip() if isinstance(value, str) else value)
    if model_config is not ...:
        model.model_config = _seal(_check_model_config(model, model_config), is_json=True) if model_config else None
    model.full_clean(exclude=["model_config", "provider"], validate_unique=False, validate_constraints=False)
    _save_unique(model, f"Provider '{model.provider.name}' already has a model '{model.model_id}'.")
    after = _audit_model(model)
    if model_config is not ...:
        after["model_config"] = "***CHANGED***"
    changes = {k: [before[k], after[k]] for k in after if before[k] != after[k]}
    if changes:
        audit_record(actor=actor, action="model.update", target=model, tenant=model.provider.tenant, changes=changes)
        catalog_bump(model.provider.tenant_id)
    return model


@transaction.atomic
def model_delete(*, actor: Actor, model: AIModel) -> None:
    pk, tenant, view = model.pk, model.provider.tenant, _audit_model(model)
    model.delete()
    model.pk = pk
    audit_record(actor=actor, action="model.delete", target=model, tenant=tenant, changes={"before": view})
    catalog_bump(model.provider.tenant_id)


@transaction.atomic
def model_set_tenant_enabled(*, actor: Actor, model: AIModel, tenant: Tenant, enabled: bool) -> None:
    if model.provider.tenant_id and model.provider.tenant_id != tenant.pk:
        raise ValidationError("A tenant's own model cannot be enabled for another tenant.")
    if enabled:
        _, created = TenantModelEnablement.objects.get_or_create(model=model, tenant=tenant)
    else:
        created = bool(TenantModelEnablement.objects.filter(model=model, tenant=tenant).delete()[0])
    if created:
        audit_record(actor=actor, action="model.enable" if enabled else "model.disable", target=model,
                     tenant=tenant, changes={"tenant": tenant.slug})
        catalog_bump(tenant)  # only this tenant's usable models change


# --- ACL grants (django-guardian) ----------------------------------------------------------------------

def _grantee_tenant_check(obj_tenant_id, grantee):
    """Grants on a tenant's object may only go to that tenant's members (or groups of them)."""
    if obj_tenant_id is None:
        return
    from django.contrib.auth.models import Group

    if isinstance(grantee, Group):
        outsiders = grantee.user_set.exclude(tenant_memberships__tenant_id=obj_tenant_id)
        if outsiders.exists():
            raise ValidationError("Every member of the group must belong to the object's tenant.")
    elif not TenantMembership.objects.filter(user=grantee, tenant_id=obj_tenant_id).exists():
        raise ValidationError(f"User '{grantee}' is not a member of the object's tenant.")


# ACL grants change what users see in admin and REST, never what the gateway routes: a tenant API key acts as its
# tenant (providers.selectors.model_visible_q, tenant branch), which user grants do not enter. So no catalog_bump.

@transaction.atomic
def acl_grant(*, actor: Actor, obj: Provider | AIModel, grantee, role: str) -> None:
    """Give a user or group a role on a provider or model (replacing any role they had)."""
    role = AclRole(role)
    tenant_id = obj.tenant_id if isinstance(obj, Provider) else obj.provider.tenant_id
    _grantee_tenant_check(tenant_id, grantee)
    model_name = obj._meta.model_name
    for action in ROLE_ACTIONS[AclRole.OWNER]:
        remove_perm(f"providers.{action}_{model_name}", grantee, obj)
    for action in ROLE_ACTIONS[role]:
        assign_perm(f"providers.{action}_{model_name}", grantee, obj)
    audit_record(actor=actor, action="acl.grant", target=obj,
                 tenant=obj.tenant if isinstance(obj, Provider) else obj.provider.tenant,
                 changes={"grantee": f"{grantee._meta.model_name}:{grantee}", "role": role.value})


@transaction.atomic
def acl_revoke(*, actor: Actor, obj: Provider | AIModel, grantee) -> None:
    model_name = obj._meta.model_name
    for action in ROLE_ACTIONS[AclRole.OWNER]:
        remove_perm(f"providers.{action}_{model_name}", grantee, obj)
    audit_record(actor=actor, action="acl.revoke", target=obj,
                 tenant=obj.tenant if isinstance(obj, Provider) else obj.provider.tenant,
                 changes={"grantee": f"{grantee._meta.model_name}:{grantee}"})


# --- Favourites -----------------------------------------------------------------------------------------

def favourite_toggle(*, user, provider_type: str) -> bool:
    """Star or unstar a provider type for the wizard. Returns True when it is now a favourite."""
    provider_type = _provider_type(provider_type)
    deleted, _ = FavouriteProviderType.objects.filter(user=user, provider_type=provider_type).delete()
    if deleted:
        return False
    FavouriteProviderType.objects.create(user=user, provider_type=provider_type)
    return True


def key_mark_used(key_id: int) -> None:
    ProviderKey.objects.filter(pk=key_id).update(last_used_at=timezone.now())
