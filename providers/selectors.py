"""All reads of providers and models, filtered by who is asking. The one permission filter (STYLE.md 8.2).

Who can see a provider, in order (DESIGN.md): the user created it; it is instance-wide; the user or one of
their groups holds an ACL grant (django-guardian, direct-FK tables, global permissions ignored). On top:
tenant admins see all of their tenant's providers, sysadmins see everything, and nobody outside a tenant ever
sees that tenant's providers (instance-wide is only possible for instance-level providers).

A tenant API key (no user) sees its tenant's providers, instance-wide ones and instance-level providers with a
model enabled for its tenant.

Reading something you may not see is "not found"; changing something you may only see is "forbidden".
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from guardian.shortcuts import get_objects_for_user

from tenants.models import Tenant, TenantApiKey, TenantMembership

from providers.choices import ModelStatus, ProviderStatus
from providers.models import AIModel, Provider, ProviderKey, TenantModelEnablement


@dataclass(frozen=True)
class Principal:
    """Who is asking: an admin/user (`user`), a tenant API key (`tenant`), or a sysadmin."""

    user: object | None = None
    tenant: Tenant | None = None
    is_sysadmin: bool = False

    @classmethod
    def for_user(cls, user) -> "Principal":
        return cls(user=user, is_sysadmin=bool(user.is_active and user.is_superuser))


class NotFound(Exception):
    pass


class Forbidden(Exception):
    pass


ACTIONS = ("view", "change", "share", "delete")


def _member_tenants(user, *, admin_only=False):
    qs = TenantMembership.objects.filter(user=user)
    if admin_only:
        qs = qs.filter(role=TenantMembership.Role.ADMIN)
    return qs.values("tenant_id")


def _acl_ids(user, model, action: str):
    codename = f"{model._meta.app_label}.{action}_{model._meta.model_name}"
    return get_objects_for_user(user, codename, klass=model, accept_global_perms=False, with_superuser=False).values("pk")


def _tenant_enabled_provider_ids(tenant):
    return TenantModelEnablement.objects.filter(tenant=tenant).values("model__provider_id")


def provider_visible_q(principal: Principal) -> Q:
    if principal.is_sysadmin:
        return Q()
    if principal.user is None:
        tenant = principal.tenant
        return Q(tenant=tenant) | Q(tenant__isnull=True, instance_wide=True) | Q(
            tenant__isnull=True, pk__in=_tenant_enabled_provider_ids(tenant)
        )
    user = principal.user
    in_scope = Q(tenant__isnull=True) | Q(tenant__in=_member_tenants(user))
    visible = (
        Q(owner=user)
        | Q(instance_wide=True)
        | Q(tenant__in=_member_tenants(user, admin_only=True))
        | Q(pk__in=_acl_ids(user, Provider, "view"))
    )
    return in_scope & visible


def provider_list(*, principal: Principal) -> QuerySet[Provider]:
    return Provider.objects.filter(provider_visible_q(principal)).select_related("tenant").order_by("name", "id")


def provider_get(*, principal: Principal, public_id: str, action: str = "view") -> Provider:
    """The provider, if visible (else NotFound) and if `action` is allowed (else Forbidden)."""
    provider = None if "\x00" in public_id else provider_list(principal=principal).filter(public_id=public_id).first()
    if provider is None:
        raise NotFound(f"Provider {public_id[:60]} not found.")
    if action != "view" and not provider_can(principal, provider, action):
        raise Forbidden(f"You may view provider '{provider.name}' but not {action} it.")
    return provider


def provider_can(principal: Principal, provider: Provider, action: str) -> bool:
    assert action in ACTIONS
    if principal.is_sysadmin:
        return True
    if principal.user is None:
        return provider.tenant_id is not None and provider.tenant_id == principal.tenant.pk
    user = principal.user
    if provider.owner_id == user.pk:
        return True
    if provider.tenant_id and TenantMembership.objects.filter(
        user=user, tenant_id=provider.tenant_id, role=TenantMembership.Role.ADMIN
    ).exists():
        return True
    return user.has_perm(f"providers.{action}_provider", provider)


def model_visible_q(principal: Principal) -> Q:
    if principal.is_sysadmin:
        return Q()
    if principal.user is None:
        tenant = principal.tenant
        enabled = TenantModelEnablement.objects.filter(tenant=tenant, model=OuterRef("pk"))
        return Q(provider__tenant=tenant) | Q(provider__tenant__isnull=True) & (
            Q(provider__instance_wide=True, instance_wide=True) | Q(Exists(enabled))
        )
    user = principal.user
    provider_ok = Q(provider__in=Provider.objects.filter(provider_visible_q(principal)).values("pk"))
    managed = Q(provider__owner=user) | Q(provider__tenant__in=_member_tenants(user, admin_only=True))
    enabled_for_my_tenants = Q(
        pk__in=TenantModelEnablement.objects.filter(tenant__in=_member_tenants(user)).values("model_id")
    )
    return (provider_ok & (Q(instance_wide=True) | managed | Q(pk__in=_acl_ids(user, AIModel, "view")))) | (
        Q(provider__tenant__isnull=True) & enabled_for_my_tenants
    )


def model_list(*, principal: Principal, provider: Provider | None = None) -> QuerySet[AIModel]:
    qs = AIModel.objects.filter(model_visible_q(principal)).select_related("provider")
    if provider is not None:
        qs = qs.filter(provider=provider)
    return qs.order_by("provider__name", "model_id")


def list_active_models(*, principal: Principal) -> QuerySet[AIModel]:
    """What a caller may use: active models of active providers that it can see."""
    return model_list(principal=principal).filter(
        status=ModelStatus.ACTIVE, provider__status=ProviderStatus.ACTIVE
    )


def models_by_alias(*, principal: Principal, alias: str) -> QuerySet[AIModel]:
    return list_active_models(principal=principal).filter(alias=alias)


def model_can(principal: Principal, model: AIModel, action: str) -> bool:
    if provider_can(principal, model.provider, action):
        return True
    if principal.user is not None and not principal.is_sysadmin:
        return principal.user.has_perm(f"providers.{action}_aimodel", model)
    return False


def alias_list(*, principal: Principal | None = None) -> list[tuple[str, int]]:
    """(alias, number of models) for every alias in use; with `principal`, only over the models it can see."""
    from django.db.models import Count

    qs = AIModel.objects.all() if principal is None else AIModel.objects.filter(model_visible_q(principal))
    return list(qs.exclude(alias="").values_list("alias").annotate(n=Count("id")).order_by("alias"))


def provider_tenant_choices(*, principal: Principal) -> QuerySet[Tenant]:
    """Tenants in which the principal may create providers: all for sysadmins, else those it administers."""
    if principal.is_sysadmin:
        return Tenant.objects.order_by("name")
    if principal.user is None:
        return Tenant.objects.filter(pk=principal.tenant.pk)
    return Tenant.objects.filter(pk__in=_member_tenants(principal.user, admin_only=True)).order_by("name")


def model_enabled_tenants(*, principal: Principal, model: AIModel) -> QuerySet[Tenant]:
    """The tenants an instance-level model is enabled for, as far as the principal may know: every one for
    sysadmins, else only those it administers (which other tenants use a model is their business)."""
    return (Tenant.objects.filter(model_enablements__model=model)
            .filter(pk__in=provider_tenant_choices(principal=principal).values("pk")).order_by("name"))


def model_list_with_health(*, principal: Principal) -> QuerySet[AIModel]:
    """model_list for the admin's list: the provider and its tenant joined, the model's last validation
    (`last_validation_ok`, `last_validation_at`: NULL when never validated) as subqueries, and the tenants it is
    enabled for that the principal may know of (model_enabled_tenants' rule) prefetched into
    `visible_enablements`. Two queries however many rows."""
    from django.db.models import Prefetch

    from providers.models import ProviderCheck

    last = ProviderCheck.objects.filter(model=OuterRef("pk"), kind=ProviderCheck.Kind.VALIDATE,
                                        state=ProviderCheck.State.DONE).order_by("-created_at", "-id")
    enablements = (TenantModelEnablement.objects.select_related("tenant").order_by("tenant__name")
                   .filter(tenant__in=provider_tenant_choices(principal=principal).order_by().values("pk")))
    return (model_list(principal=principal).select_related("provider__tenant")
            .annotate(last_validation_ok=Subquery(last.values("ok")[:1]),
                      last_validation_at=Subquery(last.values("created_at")[:1]))
            .prefetch_related(Prefetch("tenant_enablements", queryset=enablements, to_attr="visible_enablements")))


def favourite_provider_types(*, user) -> set[str]:
    from providers.models import FavouriteProviderType

    return set(FavouriteProviderType.objects.filter(user=user).values_list("provider_type", flat=True))


def provider_check_list(*, provider: Provider, limit: int = 10):
    """The provider's latest connectivity tests, validations and health checks (callers check visibility)."""
    return provider.checks.select_related("model").order_by("-created_at", "-id")[:limit]


def grantee_choices(*, principal: Principal):
    """(users, groups) the principal may pick as ACL grantees: everyone for sysadmins, else the active users
    sharing a tenant with it and the groups it belongs to. acl_grant still checks tenant membership."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    users = get_user_model().objects.filter(is_active=True).order_by("username")
    groups = Group.objects.order_by("name")
    if principal.is_sysadmin:
        return users, groups
    user = principal.user
    shared = TenantMembership.objects.filter(tenant__in=_member_tenants(user)).values("user_id")
    return users.filter(pk__in=shared), groups.filter(user=user)


@dataclass(frozen=True)
class Grant:
    grantee: object  # a User or a Group
    kind: str  # "user" | "group"
    role: str  # an AclRole value, or "custom" for a set of permissions no role matches
    actions: tuple[str, ...]


def acl_list(*, obj: Provider | AIModel) -> list[Grant]:
    """The users and groups holding ACL grants on a provider or model, with their role."""
    from guardian.shortcuts import get_groups_with_perms, get_users_with_perms

    from providers.services import ROLE_ACTIONS  # the role -> permissions table acl_grant applies

    role_by_actions = {frozenset(actions): role for role, actions in ROLE_ACTIONS.items()}
    grants = []
    for kind, found in (("user", get_users_with_perms(obj, attach_perms=True, with_group_users=False)),
                        ("group", get_groups_with_perms(obj, attach_perms=True))):
        for grantee, codenames in found.items():
            actions = frozenset(c.split("_", 1)[0] for c in codenames)
            role = role_by_actions.get(actions)
            grants.append(Grant(grantee, kind, role.value if role else "custom",
                                tuple(a for a in ACTIONS if a in actions)))
    return sorted(grants, key=lambda g: (g.kind, str(g.grantee)))


# --- REST API reads (ai-providers) ----------------------------------------------------------------------

def _count_per_provider(queryset) -> Coalesce:
    """A correlated COUNT(*) of `queryset`'s rows for the outer provider (0 when none)."""
    counted = queryset.filter(provider=OuterRef("pk")).order_by().values("provider").annotate(n=Count("pk"))
    return Coalesce(Subquery(counted.values("n")[:1]), 0)


def provider_search(*, principal: Principal, provider_type: str | None = None, status: str | None = None,
                    health_status: str | None = None, q: str | None = None) -> QuerySet[Provider]:
    """Visible providers, filtered, each annotated with models_count, keys_count and active_key_last4.

    One query however many rows: the counts and the newest active key's last4 are subqueries.
    active_key_last4 is NULL when the provider has no active key ('' when that key is 4 characters or fewer).
    """
    qs = provider_list(principal=principal)
    if provider_type:
        qs = qs.filter(provider_type=provider_type)
    if status:
        qs = qs.filter(status=status)
    if health_status:
        qs = qs.filter(health_status=health_status)
    if q:
        qs = qs.filter(name__icontains=q)
    active_key = ProviderKey.objects.filter(provider=OuterRef("pk"), is_active=True).order_by("-created_at", "-id")
    return qs.annotate(
        models_count=_count_per_provider(AIModel.objects.all()),
        keys_count=_count_per_provider(ProviderKey.objects.all()),
        active_key_last4=Subquery(active_key.values("last4")[:1]),
    )


def model_get(*, principal: Principal, provider: Provider, pk: int, action: str = "view") -> AIModel:
    """One of `provider`'s models, if visible (else NotFound) and if `action` is allowed (else Forbidden)."""
    model = model_list(principal=principal, provider=provider).filter(pk=pk).first()
    if model is None:
        raise NotFound(f"Model {pk} of provider {provider.public_id} not found.")
    if action != "view" and not model_can(principal, model, action):
        raise Forbidden(f"You may view model '{model}' but not {action} it.")
    return model


def provider_key_list(*, provider: Provider) -> QuerySet[ProviderKey]:
    """A provider's keys, active and newest first (callers check the provider's visibility first)."""
    return provider.keys.all()


def provider_key_get(*, provider: Provider, key_id: int) -> ProviderKey:
    key = provider.keys.filter(pk=key_id).first()
    if key is None:
        raise NotFound(f"Key {key_id} of provider {provider.public_id} not found.")
    return key


# --- Usage ----------------------------------------------------------------------------------------------

def usage_list(*, principal: Principal, tenant_id=None, since=None, until=None, model: str | None = None,
               provider_id: str | None = None, status: str | None = None, streamed: bool | None = None,
               api_key_prefix: str | None = None):
    """Usage records the principal may read: a tenant key its own tenant's, a sysadmin any (or one tenant's)."""
    from providers.models import UsageRecord

    qs = _usage_scope(UsageRecord.objects.select_related("model", "provider", "api_key"), principal, tenant_id)
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    if until is not None:
        qs = qs.filter(created_at__lt=until)
    if model:
        qs = qs.filter(Q(requested_model=model) | Q(model__model_id=model) | Q(model__alias=model))
    if provider_id:
        qs = qs.filter(provider__public_id=provider_id)
    if status:
        qs = qs.filter(status=status)
    if streamed is not None:
        qs = qs.filter(streamed=streamed)
    if api_key_prefix:
        qs = qs.filter(api_key__prefix=api_key_prefix)
    return qs.order_by("-created_at", "-id")


def _usage_scope(qs, principal: Principal, tenant_id=None):
    """The usage rows (raw or hourly) the principal may read: a tenant key its own tenant's, a sysadmin any (or one
    tenant's), a user those of the tenants they administer."""
    if principal.is_sysadmin:
        return qs.filter(tenant_id=tenant_id) if tenant_id is not None else qs
    if principal.user is None:
        return qs.filter(tenant=principal.tenant)
    return qs.filter(tenant__in=_member_tenants(principal.user, admin_only=True))


def usage_hourly_list(*, principal: Principal, tenant_id=None, since=None, until=None, model: str | None = None,
                      provider_id: str | None = None, status: str | None = None, streamed: bool | None = None,
                      api_key_prefix: str | None = None):
    """The hourly roll-ups (providers/rollups.py) the principal may read, with usage_list's filters; `since` and
    `until` are taken as hours (callers pass whole hours: usage_totals_by_model splits the rest off)."""
    from providers.models import UsageHourly

    qs = _usage_scope(UsageHourly.objects.all(), principal, tenant_id)
    if since is not None:
        qs = qs.filter(hour__gte=since)
    if until is not None:
        qs = qs.filter(hour__lt=until)
    if model:  # the same three names as usage_list (a deleted model's hours match by requested name only)
        qs = qs.filter(Q(requested_model=model) | Q(model_id__in=AIModel.objects.filter(
            Q(model_id=model) | Q(alias=model)).values("pk")))
    if provider_id:
        qs = qs.filter(provider_id__in=Provider.objects.filter(public_id=provider_id).values("pk"))
    if status:
        qs = qs.filter(status=status)
    if streamed is not None:
        qs = qs.filter(streamed=streamed)
    if api_key_prefix:
        qs = qs.filter(api_key_id__in=TenantApiKey.objects.filter(prefix=api_key_prefix).values("pk"))
    return qs


def usage_filter_choices(*, principal: Principal, field: str) -> list[tuple]:
    """(pk, name) choices for filtering usage by tenant, provider or model: those the principal may see (the admin
    usage list's filters; no DISTINCT over the records)."""
    if field == "tenant":
        tenants = Tenant.objects.all() if principal.is_sysadmin else (
            Tenant.objects.filter(pk=principal.tenant.pk) if principal.user is None
            else Tenant.objects.filter(pk__in=_member_tenants(principal.user, admin_only=True)))
        return list(tenants.order_by("name").values_list("pk", "name"))
    if field == "provider":
        providers = Provider.objects.all() if principal.is_sysadmin else provider_list(principal=principal)
        return list(providers.order_by("name", "pk").values_list("pk", "name"))
    models = AIModel.objects.all() if principal.is_sysadmin else model_list(principal=principal)
    return [(m.pk, str(m)) for m in models.order_by("provider__name", "model_id", "pk")]


def usage_totals_by_model(*, principal: Principal, since=None, until=None, **filters) -> list[dict]:
    """Totals per requested model (calls, errors, tokens, cost, mean latency) of the usage matching usage_list's
    filters: the whole hours from the roll-ups, the minutes before the first and after the last whole hour (a range
    that does not start or end on an hour) from the raw records. The same numbers as usage_summary over usage_list
    as long as those edges are younger than USAGE_RETENTION_DAYS."""
    from decimal import Decimal

    from django.db.models import Sum

    from providers.rollups import ceil_hour, floor_hour

    first = ceil_hour(since) if since is not None else None
    last = floor_hour(until) if until is not None else None
    parts = []  # (rows, raw?)
    if first is not None and last is not None and first >= last:  # within one hour: raw records only
        parts.append(usage_list(principal=principal, since=since, until=until, **filters))
    else:
        hourly = usage_hourly_list(principal=principal, since=first, until=last, **filters)
        parts.append(hourly.order_by().values("requested_model").annotate(
            n=Sum("calls"), e=Sum("errors"), ti=Sum("tokens_in"), to=Sum("tokens_out"), c=Sum("cost"),
            lat=Sum("latency_ms_sum")))
        if first is not None and first > since:
            parts.append(usage_list(principal=principal, since=since, until=first, **filters))
        if last is not None and until > last:
            parts.append(usage_list(principal=principal, since=last, until=until, **filters))
    totals: dict[str, dict] = {}
    for part in parts:
        if part.model._meta.model_name == "usagerecord":
            part = part.order_by().values("requested_model").annotate(
                n=Count("id"), e=Count("id", filter=Q(status="error")), ti=Sum("tokens_in"), to=Sum("tokens_out"),
                c=Sum("cost"), lat=Sum("latency_ms"))
        for row in part:
            acc = totals.setdefault(row["requested_model"], {"calls": 0, "errors": 0, "tokens_in": 0, "tokens_out": 0,
                                                             "cost": Decimal(0), "latency": 0})
            acc["calls"] += row["n"] or 0
            acc["errors"] += row["e"] or 0
            acc["tokens_in"] += row["ti"] or 0
            acc["tokens_out"] += row["to"] or 0
            acc["cost"] += Decimal(row["c"] or 0)
            acc["latency"] += row["lat"] or 0
    rows = []
    for name in sorted(totals):
        acc = totals[name]
        if not acc["calls"]:
            continue
        latency = acc.pop("latency")
        rows.append({"requested_model": name, **acc, "cost": acc["cost"].quantize(Decimal("0.00000001")),
                     "mean_latency_ms": round(latency / acc["calls"], 1)})
    return rows


def usage_summary(qs) -> list[dict]:
    """Totals per requested model over a usage queryset: calls, errors, tokens, cost, mean latency."""
    from decimal import Decimal

    from django.db.models import Avg, Sum

    rows = list(
        qs.order_by().values("requested_model").annotate(
            calls=Count("id"), errors=Count("id", filter=Q(status="error")), tokens_in=Sum("tokens_in"),
            tokens_out=Sum("tokens_out"), cost=Sum("cost"), mean_latency_ms=Avg("latency_ms"),
        ).order_by("requested_model")
    )
    for row in rows:
        row["cost"] = Decimal(row["cost"] or 0).quantize(Decimal("0.00000001"))
        row["mean_latency_ms"] = round(float(row["mean_latency_ms"] or 0), 1)
    return rows


def check_get(*, principal: Principal, task_id: str):
    """A check by task id, if its provider is visible to the principal (else NotFound)."""
    from providers.models import ProviderCheck

    check = (ProviderCheck.objects.select_related("provider", "model")
             .filter(task_id=task_id[:64], provider__in=Provider.objects.filter(provider_visible_q(principal)))
             .first() if task_id and "\x00" not in task_id else None)
    if check is None:
        raise NotFound(f"Task {task_id[:64]} not found.")
    return check


# --- A tenant's page (admin) ------------------------------------------------------------------------------------

def tenant_model_list(*, tenant: Tenant) -> QuerySet[AIModel]:
    """The models the tenant's API keys may call (model_visible_q for the tenant), each annotated with
    `enabled_here` (an explicit enablement for this tenant); callers check the tenant is in the user's scope."""
    enabled = TenantModelEnablement.objects.filter(tenant=tenant, model=OuterRef("pk"))
    return (model_list(principal=Principal(tenant=tenant)).annotate(enabled_here=Exists(enabled))
            .select_related("provider"))


def tenant_usage_month(*, tenant: Tenant, now=None) -> dict:
    """This month's (UTC) calls, errors, tokens and cost of the tenant, with its budget, spent and remaining
    (one query over the hourly roll-ups; the same month and sum as the budget check, providers.gateway.usage)."""
    from decimal import Decimal

    from django.db.models import Sum

    from providers.gateway.usage import MONEY, month_start
    from providers.models import UsageHourly

    since = month_start(now)
    totals = UsageHourly.objects.filter(tenant=tenant, hour__gte=since).aggregate(
        calls=Sum("calls"), errors=Sum("errors"), tokens_in=Sum("tokens_in"), tokens_out=Sum("tokens_out"),
        cost=Sum("cost"))
    spent = Decimal(totals["cost"] or 0).quantize(MONEY)
    budget = tenant.monthly_budget
    return {
        "since": since, "calls": totals["calls"] or 0, "errors": totals["errors"] or 0,
        "tokens_in": totals["tokens_in"] or 0, "tokens_out": totals["tokens_out"] or 0, "spent": spent,
        "budget": budget, "remaining": None if budget is None else max(budget - spent, Decimal(0)),
        "percent": None if not budget else round(float(spent / budget * 100), 1),
    }
