"""Gateway catalog reload times (providers/gateway/catalog.py) with many tenants.

    .venv/bin/python bench/catalog_bench.py [--tenants 4000] [--credentials-per-tenant 5] [--repeat 7]
    .venv/bin/python bench/catalog_bench.py --postgres postgres://postgres@127.0.0.1:5432/eneo_catalog_bench

Seeds (bulk_create) a throw-away database: SQLite in a temporary directory by default, or the PostgreSQL database
named by --postgres, which is created and dropped again (it must not exist). Per tenant: one API key, N credentials
(encrypted), an enablement; every tenth tenant owns a provider with a key and two models; eight instance-level
providers with keys and five models each. Then it times, median of --repeat runs:

- before: the full reload every catalog version change caused until issue 10 (every audited write or read),
  on the request path;
- after: what a change costs now, in the catalog's background thread: one tenant (its model list not in use, and
  in use), the instance level, a provider health change, a version check, the full load (start-up, safety net).
"""
import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROVIDER_TYPES = ("openai", "anthropic", "azure", "mistral", "groq", "cohere", "gemini", "deepseek")


def timed(fn, repeat: int) -> float:
    """Median wall time of `fn()` in ms."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def legacy_full_reload():
    """The reload before issue 10 (providers/gateway/catalog.py `_load`): everything, on every version change."""
    from credentials.models import TenantCredential
    from providers.gateway.catalog import model_names
    from providers.models import AIModel, ProviderKey
    from tenants.models import Tenant, TenantApiKey

    keys = {k.prefix: k for k in TenantApiKey.objects.select_related("tenant").filter(is_active=True,
                                                                                      tenant__is_active=True)}
    tenants = {t.pk: t for t in Tenant.objects.filter(is_active=True)}
    credentials = {(c.tenant_id, c.provider_type): c for c in TenantCredential.objects.all()}
    provider_keys = {}
    for key in ProviderKey.objects.filter(is_active=True).order_by("provider_id", "-created_at", "-id"):
        provider_keys.setdefault(key.provider_id, key)
    known: dict[str, set] = {}
    for m in AIModel.objects.select_related("provider").only("model_id", "alias", "provider__provider_type",
                                                             "provider__tenant_id"):
        for name in model_names(m):
            known.setdefault(name, set()).add(m.provider.tenant_id)
    return keys, tenants, credentials, provider_keys, known


def seed(n_tenants: int, creds_per_tenant: int):
    from django.utils import timezone

    from credentials import crypto
    from credentials.fields import Sealed
    from credentials.models import TenantCredential
    from providers.models import AIModel, Provider, ProviderKey, TenantModelEnablement
    from tenants.models import Tenant, TenantApiKey

    started = time.perf_counter()
    now = timezone.now()
    sealed = Sealed(crypto.encrypt("sk-bench-tenant-key-0001"))  # ciphertext is opaque to the catalog: one suffices
    tenants = Tenant.objects.bulk_create([Tenant(name=f"Tenant {i}", slug=f"tenant-{i}") for i in range(n_tenants)],
                                         batch_size=2000)
    TenantApiKey.objects.bulk_create([TenantApiKey(tenant=t, name="bot", prefix=secrets.token_hex(6),
                                                   digest="0" * 64, scopes=["gateway:Use"]) for t in tenants],
                                     batch_size=2000)
    TenantCredential.objects.bulk_create(
        [TenantCredential(tenant=t, provider_type=PROVIDER_TYPES[j], api_key=sealed, api_key_last4="0001",
                          configured_at=now) for t in tenants for j in range(creds_per_tenant)], batch_size=2000)
    instance = Provider.objects.bulk_create([Provider(name=f"Shared {i}", provider_type="openai", instance_wide=True,
                                                      base_url="https://api.example.org/v1") for i in range(8)])
    own = Provider.objects.bulk_create([Provider(tenant=t, name="Own", provider_type="openai",
                                                 base_url="https://llm.example.org/v1") for t in tenants[::10]],
                                       batch_size=2000)
    ProviderKey.objects.bulk_create([ProviderKey(provider=p, secret=sealed, last4="0001") for p in instance + own],
                                    batch_size=2000)
    models = AIModel.objects.bulk_create(
        [AIModel(provider=p, model_id=f"model-{p.pk}-{j}", alias=f"alias-{j}") for p in instance for j in range(5)]
        + [AIModel(provider=p, model_id=f"own-{p.pk}-{j}") for p in own for j in range(2)], batch_size=2000)
    first_instance_model = models[0]
    TenantModelEnablement.objects.bulk_create([TenantModelEnablement(tenant=t, model=first_instance_model)
                                               for t in tenants], batch_size=2000)
    print(f"seeded {n_tenants} tenants, {n_tenants * creds_per_tenant} credentials, {len(instance) + len(own)} "
          f"providers, {len(models)} models in {time.perf_counter() - started:.1f} s")
    return tenants, own


def run(args):
    from providers.gateway.catalog import (full_snapshot, load_tenant_models, read_version, replace_owners,
                                           with_health)
    from providers.models import Provider

    tenants, own = seed(args.tenants, args.credentials_per_tenant)
    version, epoch = read_version()
    snap = full_snapshot(version, epoch)
    plain = tenants[1]  # no provider of its own, model list not in use
    owner = own[0].tenant  # owns a provider; its model list in use
    snap.per_tenant[owner.pk] = load_tenant_models(owner, snap.health)
    results = {}
    results["before: full reload (every change, audited reads included)"] = timed(legacy_full_reload, args.repeat)
    results["after: one tenant"] = timed(lambda: replace_owners(snap, {plain.pk}, version), args.repeat)
    results["after: one tenant, model list in use"] = timed(lambda: replace_owners(snap, {owner.pk}, version),
                                                            args.repeat)
    results["after: instance level (model lists emptied)"] = timed(lambda: replace_owners(snap, {None}, version),
                                                                   args.repeat)
    results["  + one tenant's model list, rebuilt (warming)"] = timed(
        lambda: load_tenant_models(owner, snap.health), args.repeat)
    results["after: provider health change"] = timed(lambda: with_health(snap, version), args.repeat)
    results["version check (every CATALOG_REFRESH_SECONDS / 2)"] = timed(read_version, args.repeat * 5)
    results["full load (start, CATALOG_MAX_AGE_SECONDS, lost history)"] = timed(
        lambda: full_snapshot(version, epoch), args.repeat)
    new, _ = replace_owners(snap, {plain.pk}, version)
    shared = sum(new.tenants[t] is snap.tenants[t] for t in snap.tenants if t != plain.pk)
    assert shared == len(snap.tenants) - 1 and Provider.objects.count() == len(own) + 8
    width = max(map(len, results))
    print(f"\n{args.tenants} tenants, {args.tenants * args.credentials_per_tenant} credentials, "
          f"{connection_vendor()}; median of {args.repeat} runs:")
    for name, ms in results.items():
        print(f"  {name:<{width}}  {ms:9.2f} ms")
    return results


def connection_vendor() -> str:
    from django.db import connection

    return {"postgresql": "PostgreSQL", "sqlite": "SQLite"}.get(connection.vendor, connection.vendor)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=4000)
    parser.add_argument("--credentials-per-tenant", type=int, default=5, choices=range(1, len(PROVIDER_TYPES) + 1))
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--postgres", help="a PostgreSQL URL whose database this creates, uses and drops")
    args = parser.parse_args()

    from cryptography.fernet import Fernet

    tmp = Path(tempfile.mkdtemp())
    os.environ.update({
        "DATABASE_URL": args.postgres or f"sqlite:///{tmp / 'catalog.sqlite3'}", "DB_POOL": "false",
        "SECRET_KEY": secrets.token_urlsafe(50), "ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "ENV_FILE": "/nonexistent", "LOG_LEVEL": "ERROR", "CELERY_BROKER_URL": "memory://",
        "DJANGO_SETTINGS_MODULE": "eneo_site.settings",
    })
    if args.postgres:
        admin_database("CREATE", args.postgres)
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        run(args)
    finally:
        if args.postgres:
            from django.db import connections

            connections.close_all()
            admin_database("DROP", args.postgres)


def admin_database(verb: str, url: str):
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(f'{verb} DATABASE "{name}"')


if __name__ == "__main__":
    main()
