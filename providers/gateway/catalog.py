"""The gateway's in-process catalog: API keys, tenants, routable models, provider keys and tenant credentials.

Rows are cached, never plaintext: secrets stay Fernet ciphertext (`Sealed`) until the call that needs them
decrypts them (about 12 µs). A request costs no database query once the catalog is warm.

Freshness (README "How the gateway catalog stays fresh"):

- Every write that changes routing or authentication calls `tenants.services.catalog_bump` from its service: on
  commit, the catalog version (tenants.models.CatalogVersion) goes up and a CatalogChange row says what changed:
  one tenant's data, the instance level (tenant empty) or only a provider's health. Reads never bump.
- Each Catalog runs two background threads. The *poller* reads the version (a one-row primary-key read) every
  CATALOG_REFRESH_SECONDS / 2 while the process serves, and on demand. The *loader* reloads only what the new
  changes name (one tenant: its rows; the instance level: instance providers' keys and names and every tenant's
  model list; unknown or missing history: everything), builds a new Snapshot by copy-on-write (the entries of
  untouched tenants are the very same objects) and swaps it in with one assignment. Requests never load
  anything and never see a half-built snapshot.
- The guarantee: a request that arrives CATALOG_REFRESH_SECONDS or more after a change was committed is served
  with it (a revoked key, a deleted tenant or a disabled provider is refused). A request checks, without a query,
  that its tenant's entries were confirmed current at most CATALOG_REFRESH_SECONDS before it arrived; a tenant
  whose reload is running is confirmed as of the version check before the change. Only then, or on a first
  request, does the request wait for the threads; requests of other tenants go on meanwhile.
- A well-formed key the snapshot does not know waits for a version check that started after the request arrived
  (at most one such check every MISS_CHECK_GAP seconds) before it is refused: a key works as soon as its
  creation is committed, in every worker.
- Every CATALOG_MAX_AGE_SECONDS (while serving) the loader reloads everything, as a safety net for a write that
  bypassed the services or a bump lost with its process.

Which models a tenant may use is decided by providers.selectors.list_active_models (the one permission
filter); the catalog only memoises its answer per tenant (on first use, or warmed by the loader).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection
from django.db.models import Q

from credentials.models import TenantCredential
from credentials.provider_rules import ALIASES, provider_types
from tenants.api_keys import KEY_PREFIX, api_key_match
from tenants.models import CatalogChange, CatalogVersion, Tenant, TenantApiKey

from providers.choices import HealthStatus
from providers.models import AIModel, Provider, ProviderKey
from providers.provider_types import litellm_model_name
from providers.selectors import Principal, list_active_models

log = logging.getLogger("eneo.catalog")

HEALTH_RANK = {HealthStatus.HEALTHY: 0, HealthStatus.UNKNOWN: 1, HealthStatus.DEGRADED: 2, HealthStatus.DOWN: 3}
ALL = "*"  # a pending full reload (in `_State.pending`, next to tenant ids and None = the instance level)
MISS_CHECK_GAP = 0.05  # seconds between two version checks caused by unknown keys
IDLE_SECONDS = 60.0  # no request for this long: no background checks, connections closed
MAX_CHANGES_READ = 10_000  # further behind than this: reload everything instead of reading the change log
WARM_BUDGET = 0.02  # seconds of model-list warming between two looks at more urgent work


@dataclass
class TenantModels:
    models: list[AIModel]
    by_name: dict[str, list[AIModel]]


def qualified_name(model: AIModel) -> str:
    """The LiteLLM-style name of a model: <prefix>/<model_id>, e.g. azure/gpt4o-prod."""
    return litellm_model_name(model.provider.provider_type, model.model_id)


def model_names(model: AIModel) -> set[str]:
    names = {model.model_id, qualified_name(model), f"{model.provider.provider_type}/{model.model_id}"}
    if model.alias:
        names.add(model.alias)
    return names


def split_prefix(name: str) -> tuple[str | None, str]:
    """('azure', 'gpt4o') for 'azure/gpt4o'; (None, name) when the first segment is not a provider type."""
    if "/" in name:
        head, rest = name.split("/", 1)
        head_l = ALIASES.get(head.lower(), head.lower())
        if head_l in provider_types():
            return head_l, rest
    return None, name


def _rank(model: AIModel, health: dict[int, str]) -> int:
    return HEALTH_RANK.get(health.get(model.provider_id, model.provider.health_status), 1)


def build_tenant_models(models: list[AIModel], health: dict[int, str]) -> TenantModels:
    """Candidates per requested name, healthy providers first."""
    by_name: dict[str, list[AIModel]] = {}
    for m in models:
        for name in model_names(m):
            by_name.setdefault(name, []).append(m)
    for candidates in by_name.values():
        candidates.sort(key=lambda m: (_rank(m, health), m.provider_id, m.pk))
    return TenantModels(models=models, by_name=by_name)


def load_tenant_models(tenant: Tenant, health: dict[int, str]) -> TenantModels:
    models = list(list_active_models(principal=Principal(tenant=tenant)).select_related("provider"))
    return build_tenant_models(models, health)


@dataclass
class Snapshot:
    """One consistent view. Never changed once published, except `per_tenant`, which the loader fills."""

    version: int
    epoch: object
    loaded_at: float  # monotonic time of the last full load
    keys: dict[str, TenantApiKey]  # prefix -> active key of an active tenant
    tenants: dict[object, Tenant]  # active tenants
    credentials: dict[tuple, TenantCredential]  # (tenant id, provider type) -> credential
    provider_keys: dict[int, ProviderKey]  # provider id -> its newest active key
    known_names: dict[str, frozenset]  # every model name -> owning tenant ids (None = instance level)
    health: dict[int, str]  # provider id -> health status
    # indexes for replacing one owner's entries (owner = tenant id, None = instance level)
    key_prefixes: dict[object, tuple] = field(default_factory=dict)
    credential_types: dict[object, tuple] = field(default_factory=dict)
    providers_of: dict[object, tuple] = field(default_factory=dict)
    names_of: dict[object, frozenset] = field(default_factory=dict)
    per_tenant: dict[object, TenantModels] = field(default_factory=dict)

    def authenticate(self, token: str | None) -> TenantApiKey | None:
        return api_key_match(token, self.keys.get)

    def tenant_models(self, tenant: Tenant) -> TenantModels:
        return self.per_tenant[tenant.pk]

    def has_tenant(self, tenant: Tenant) -> bool:
        return tenant.pk in self.per_tenant


# --- reading rows ------------------------------------------------------------------------------------------

@dataclass
class _Rows:
    tenants: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)
    credentials: dict = field(default_factory=dict)
    provider_keys: dict = field(default_factory=dict)
    health: dict = field(default_factory=dict)
    providers_of: dict = field(default_factory=dict)
    names_of: dict = field(default_factory=dict)


def _owner_q(owners: set | None, path: str = "") -> Q:
    if owners is None:
        return Q()
    tenant_ids = [o for o in owners if o is not None]
    q = Q(**{f"{path}tenant_id__in": tenant_ids}) if tenant_ids else Q(pk__in=[])
    if None in owners:
        q |= Q(**{f"{path}tenant__isnull": True})
    return q


def read_rows(owners: set | None) -> _Rows:
    """The catalog rows of these owners (tenant ids; None in the set = the instance level); None = everything."""
    rows = _Rows()
    tenant_ids = None if owners is None else [o for o in owners if o is not None]
    if tenant_ids is None or tenant_ids:
        by_tenant = {} if tenant_ids is None else {"tenant_id__in": tenant_ids}
        tenants = Tenant.objects.filter(is_active=True)
        rows.tenants = {t.pk: t for t in (tenants if tenant_ids is None else tenants.filter(pk__in=tenant_ids))}
        rows.keys = {k.prefix: k for k in TenantApiKey.objects.select_related("tenant").filter(
            is_active=True, tenant__is_active=True, **by_tenant)}
        rows.credentials = {(c.tenant_id, c.provider_type): c
                            for c in TenantCredential.objects.filter(**by_tenant)}
    providers_of: dict[object, list] = {}
    for pid, owner, health in Provider.objects.filter(_owner_q(owners)).values_list("id", "tenant_id",
                                                                                   "health_status"):
        providers_of.setdefault(owner, []).append(pid)
        rows.health[pid] = health
    rows.providers_of = {owner: tuple(pids) for owner, pids in providers_of.items()}
    for key in (ProviderKey.objects.filter(_owner_q(owners, "provider__"), is_active=True)
                .order_by("provider_id", "-created_at", "-id")):
        rows.provider_keys.setdefault(key.provider_id, key)  # the newest active key of each provider
    names_of: dict[object, set] = {}
    for m in AIModel.objects.filter(_owner_q(owners, "provider__")).select_related("provider").only(
            "model_id", "alias", "provider__provider_type", "provider__tenant_id"):
        names_of.setdefault(m.provider.tenant_id, set()).update(model_names(m))
    rows.names_of = {owner: frozenset(names) for owner, names in names_of.items()}
    return rows


def _group(items, owner_of) -> dict[object, tuple]:
    grouped: dict[object, list] = {}
    for item in items:
        owner, value = owner_of(item)
        grouped.setdefault(owner, []).append(value)
    return {owner: tuple(values) for owner, values in grouped.items()}


def full_snapshot(version: int, epoch) -> Snapshot:
    rows = read_rows(None)
    known: dict[str, set] = {}
    for owner, names in rows.names_of.items():
        for name in names:
            known.setdefault(name, set()).add(owner)
    return Snapshot(
        version=version, epoch=epoch, loaded_at=time.monotonic(), keys=rows.keys, tenants=rows.tenants,
        credentials=rows.credentials, provider_keys=rows.provider_keys,
        known_names={name: frozenset(owners) for name, owners in known.items()}, health=rows.health,
        key_prefixes=_group(rows.keys.values(), lambda k: (k.tenant_id, k.prefix)),
        credential_types=_group(rows.credentials, lambda tk: tk),
        providers_of=rows.providers_of, names_of=rows.names_of,
    )


def replace_owners(old: Snapshot, owners: set, version: int) -> tuple[Snapshot, list]:
    """A new snapshot with these owners' entries read again and everything else shared with `old`.

    Returns it with the tenants whose model lists must be built again (warmed) by the caller: the changed tenants'
    are rebuilt here when they were in use; an instance-level change (None in `owners`) empties them all."""
    rows = read_rows(owners)
    keys, tenants, credentials = dict(old.keys), dict(old.tenants), dict(old.credentials)
    provider_keys, health, known = dict(old.provider_keys), dict(old.health), dict(old.known_names)
    key_prefixes, credential_types = dict(old.key_prefixes), dict(old.credential_types)
    providers_of, names_of = dict(old.providers_of), dict(old.names_of)
    for tid in owners - {None}:  # out with the old entries ...
        tenants.pop(tid, None)
        for prefix in key_prefixes.pop(tid, ()):
            keys.pop(prefix, None)
        for provider_type in credential_types.pop(tid, ()):
            credentials.pop((tid, provider_type), None)
    for owner in owners:
        for pid in providers_of.pop(owner, ()):
            provider_keys.pop(pid, None)
            health.pop(pid, None)
        for name in names_of.pop(owner, ()):
            rest = known.get(name, frozenset()) - {owner}
            if rest:
                known[name] = rest
            else:
                del known[name]
    tenants.update(rows.tenants)  # ... in with the new
    keys.update(rows.keys)
    key_prefixes.update(_group(rows.keys.values(), lambda k: (k.tenant_id, k.prefix)))
    credentials.update(rows.credentials)
    credential_types.update(_group(rows.credentials, lambda tk: tk))
    provider_keys.update(rows.provider_keys)
    health.update(rows.health)
    providers_of.update(rows.providers_of)
    names_of.update(rows.names_of)
    for owner, names in rows.names_of.items():
        for name in names:
            known[name] = known.get(name, frozenset()) | {owner}
    if None in owners:
        per_tenant, warm = {}, [tid for tid in old.per_tenant if tid in tenants]
    else:
        per_tenant, warm = dict(old.per_tenant), []
        for tid in owners:
            if per_tenant.pop(tid, None) is not None and tid in tenants:
                per_tenant[tid] = load_tenant_models(tenants[tid], health)  # in use: ready before the swap
    snap = Snapshot(version=version, epoch=old.epoch, loaded_at=old.loaded_at, keys=keys, tenants=tenants,
                    credentials=credentials, provider_keys=provider_keys, known_names=known, health=health,
                    key_prefixes=key_prefixes, credential_types=credential_types, providers_of=providers_of,
                    names_of=names_of, per_tenant=per_tenant)
    return snap, warm


def with_health(old: Snapshot, version: int) -> Snapshot:
    """A new snapshot with providers' health read again and the model lists it reorders rebuilt (same models)."""
    health = dict(Provider.objects.values_list("id", "health_status"))
    changed = {pid for pid, status in health.items() if old.health.get(pid) != status}
    per_tenant = {}
    for tid, tm in old.per_tenant.items():
        if any(m.provider_id in changed for m in tm.models):
            tm = build_tenant_models(tm.models, health)
        per_tenant[tid] = tm
    return Snapshot(version=version, epoch=old.epoch, loaded_at=old.loaded_at, keys=old.keys, tenants=old.tenants,
                    credentials=old.credentials, provider_keys=old.provider_keys, known_names=old.known_names,
                    health=health, key_prefixes=old.key_prefixes, credential_types=old.credential_types,
                    providers_of=old.providers_of, names_of=old.names_of, per_tenant=per_tenant)


def read_version() -> tuple[int, object]:
    row = CatalogVersion.objects.filter(pk=1).values_list("version", "epoch").first()
    return row if row is not None else (0, None)


# --- the catalog: state, background threads, what requests call -------------------------------------------

@dataclass(frozen=True)
class _State:
    snapshot: Snapshot
    verified_at: float  # start of the last version check (monotonic); what it found is pending until loaded
    pending: dict = field(default_factory=dict)  # owner (tenant id, None, ALL) -> (confirmed as of, sequence)

    def verified_for(self, tenant_id) -> float:
        """Until when this tenant's entries are known to be current (tenant_id ALL: every tenant's)."""
        if not self.pending:
            return self.verified_at
        if tenant_id is ALL:
            return min(self.verified_at, *(since for since, _ in self.pending.values()))
        confirmed = self.verified_at
        for owner in (tenant_id, None, ALL):
            entry = self.pending.get(owner)
            if entry is not None and entry[0] < confirmed:
                confirmed = entry[0]
        return confirmed


@dataclass
class _Waiter:
    tenant_id: object  # a tenant id, or ALL
    since: float
    miss: bool
    future: concurrent.futures.Future


def _settle(future: concurrent.futures.Future, exc: BaseException | None = None):
    try:
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass  # the request went away (cancelled)


class Catalog:
    def __init__(self):
        self._state: _State | None = None
        self._lock = threading.Lock()
        self._poll_cv = threading.Condition(self._lock)
        self._load_cv = threading.Condition(self._lock)
        self._threads: dict[str, threading.Thread] = {}
        self._closed = False
        self._generation = 0
        self._waiters: list[_Waiter] = []
        self._model_requests: dict[object, tuple[Tenant, concurrent.futures.Future]] = {}
        self._warm: list = []
        self._seq = 0  # numbers pending entries, so the loader clears only what it has read
        self._seen: tuple[int, object] | None = None  # (version, epoch) the poller has seen
        self._health_due = False
        self._last_poll = float("-inf")
        self._touched = time.monotonic()
        self.stats = {"polls": 0, "full": 0, "tenants": 0, "instance": 0, "health": 0, "models": 0, "warmed": 0}

    # --- what requests call (no query unless they must wait) --------------------------------------------

    async def authenticate(self, token: str | None) -> tuple[Snapshot, TenantApiKey | None]:
        """The key `token` names (None: unknown, revoked, expired...) and the snapshot it was found in, fresh
        enough for its tenant (see the module's doc)."""
        arrival = self._touched = time.monotonic()
        horizon = arrival - settings.CATALOG_REFRESH_SECONDS
        missed = False
        while True:
            state = self._state
            if state is None:
                await self._wait(ALL, horizon)
                continue
            key = state.snapshot.authenticate(token)
            if key is not None:
                if state.verified_for(key.tenant_id) >= horizon:
                    return state.snapshot, key
                await self._wait(key.tenant_id, horizon)
            elif not missed and _unknown_prefix(token, state.snapshot):
                missed = True  # perhaps a key created after the last check: look once more, then refuse
                await self._wait(ALL, arrival, miss=True)
            else:
                return state.snapshot, None

    def current(self) -> Snapshot | None:
        """The latest published snapshot as it is, without waiting (None before the first load)."""
        state = self._state
        return state.snapshot if state is not None else None

    async def get(self) -> Snapshot:
        """A snapshot fresh enough for every tenant."""
        arrival = self._touched = time.monotonic()
        horizon = arrival - settings.CATALOG_REFRESH_SECONDS
        while True:
            state = self._state
            if state is not None and state.verified_for(ALL) >= horizon:
                return state.snapshot
            await self._wait(ALL, horizon)

    async def tenant_models(self, snap: Snapshot, tenant: Tenant) -> TenantModels:
        models = snap.per_tenant.get(tenant.pk)
        if models is not None:
            return models
        with self._lock:
            self._start()
            request = self._model_requests.get(tenant.pk)
            if request is None:
                request = self._model_requests[tenant.pk] = (tenant, concurrent.futures.Future())
                self._load_cv.notify()
        # shielded: the load is shared by the tenant's concurrent requests; one going away must not cancel it
        return await asyncio.shield(asyncio.wrap_future(request[1]))

    async def _wait(self, tenant_id, since: float, *, miss: bool = False):
        future = concurrent.futures.Future()
        with self._lock:
            self._start()
            state = self._state
            if state is not None and state.verified_for(tenant_id) >= since:
                return
            self._waiters.append(_Waiter(tenant_id, since, miss, future))
            self._poll_cv.notify()
            self._load_cv.notify()
        await asyncio.wrap_future(future)

    # --- lifecycle --------------------------------------------------------------------------------------

    def _start(self):
        """Start the threads that are not running (called with the lock held)."""
        if self._closed:
            raise RuntimeError("The gateway catalog is closed.")
        for name, loop in (("poller", self._poll_loop), ("loader", self._load_loop)):
            thread = self._threads.get(name)
            if thread is None or not thread.is_alive():
                thread = self._threads[name] = threading.Thread(target=self._run, args=(loop,),
                                                                name=f"catalog-{name}", daemon=True)
                thread.start()

    def invalidate(self):
        """Forget everything: the next request waits for a full load."""
        with self._lock:
            self._generation += 1
            self._state, self._seen, self._health_due = None, None, False
            self._warm, self._last_poll = [], float("-inf")
            self._poll_cv.notify_all()
            self._load_cv.notify_all()

    def close(self, timeout: float = 5.0):
        """Stop the threads (they close their database connections)."""
        with self._lock:
            self._closed = True
            self._poll_cv.notify_all()
            self._load_cv.notify_all()
            threads, self._threads = list(self._threads.values()), {}
        for thread in threads:
            thread.join(timeout)

    def _run(self, loop):
        try:
            loop()
        except Exception as exc:  # noqa: BLE001 - a bug: who waits fails; the next request restarts the thread
            log.exception("catalog: %s stopped", threading.current_thread().name)
            with self._lock:
                self._fail_waiters(lambda w: True, exc)
        finally:
            connection.close()

    # --- the poller -------------------------------------------------------------------------------------

    def _poll_wait(self, now: float) -> float | None:
        """Seconds until the next version check is due (0: now), None: not before a request asks."""
        state = self._state
        if state is None or self._seen is None:
            return None  # the loader's first load is the first check
        wait = None
        refresh = settings.CATALOG_REFRESH_SECONDS
        if refresh > 0 and now - self._touched < IDLE_SECONDS:
            wait = self._last_poll + refresh / 2 - now
        for waiter in self._waiters:
            if waiter.since > state.verified_at:
                due = (self._last_poll + MISS_CHECK_GAP - now) if waiter.miss else 0.0
                wait = due if wait is None else min(wait, due)
        return wait

    def _poll_loop(self):
        while True:
            with self._lock:
                while True:
                    if self._closed:
                        return
                    wait = self._poll_wait(time.monotonic())
                    if wait is not None and wait <= 0:
                        break
                    if wait is None or wait > 5:
                        connection.close()  # idle: give the connection back
                    self._poll_cv.wait(wait)
                generation, seen = self._generation, self._seen
            started = time.monotonic()
            try:
                version, epoch = read_version()
                full, owners, health = False, set(), False
                if epoch != seen[1] or version < seen[0] or version - seen[0] > MAX_CHANGES_READ:
                    full = True
                elif version > seen[0]:
                    changes = list(CatalogChange.objects.filter(version__gt=seen[0], version__lte=version)
                                   .values_list("version", "tenant_id", "kind"))
                    if {v for v, _, _ in changes} != set(range(seen[0] + 1, version + 1)):
                        full = True  # the log was pruned past us
                    owners = {t for _, t, kind in changes if kind != CatalogChange.Kind.HEALTH}
                    health = any(kind == CatalogChange.Kind.HEALTH for _, _, kind in changes)
            except Exception as exc:  # noqa: BLE001 - the database is away: who needed this check fails
                log.warning("catalog: version check failed: %s", exc)
                connection.close()
                with self._lock:
                    self._last_poll = started
                    self._fail_waiters(lambda w: w.since <= started and not self._waits_for_load(w), exc)
                    self._poll_cv.wait(min(1.0, max(settings.CATALOG_REFRESH_SECONDS, MISS_CHECK_GAP)))
                continue
            with self._lock:
                self.stats["polls"] += 1
                self._last_poll = started
                if generation != self._generation or self._state is None:
                    continue
                state = self._state
                pending = dict(state.pending)
                for owner in ({ALL} if full else owners):
                    self._seq += 1
                    confirmed = min(state.verified_at, pending.get(owner, (state.verified_at, 0))[0])
                    pending[owner] = (confirmed, self._seq)
                self._seen = (version, epoch)
                self._health_due = self._health_due or health
                self._state = _State(state.snapshot, started, pending)
                if pending or health:
                    self._load_cv.notify()
                self._resolve_waiters()

    # --- the loader -------------------------------------------------------------------------------------

    def _load_job(self, now: float):
        """The most urgent work (kind, argument), taken from the shared state (called with the lock held)."""
        state = self._state
        if self._model_requests:
            requests, self._model_requests = self._model_requests, {}
            return ("models", requests)
        if state is None:
            return ("first", None) if self._waiters else None  # loaded when a request needs it
        serving = now - self._touched < IDLE_SECONDS
        if ALL in state.pending or (serving and now - state.snapshot.loaded_at > settings.CATALOG_MAX_AGE_SECONDS):
            return ("full", self._seq)
        if state.pending:
            return ("owners", (set(state.pending), self._seq))
        if self._health_due:
            self._health_due = False
            return ("health", None)
        if self._warm:
            return ("warm", None)
        return None

    def _load_loop(self):
        while True:
            with self._lock:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    job = self._load_job(now)
                    if job is not None:
                        break
                    wait = None
                    if self._state is not None and now - self._touched < IDLE_SECONDS:
                        wait = max(0.1, self._state.snapshot.loaded_at + settings.CATALOG_MAX_AGE_SECONDS - now)
                    if wait is None or wait > 5:
                        connection.close()  # idle: give the connection back
                    self._load_cv.wait(wait)
                generation, seen, state = self._generation, self._seen, self._state
            kind, arg = job
            try:
                self._do(kind, arg, generation, seen, state)
            except Exception as exc:  # noqa: BLE001 - logged; who waits for this load fails; retried
                log.exception("catalog: %s load failed", kind)
                connection.close()
                with self._lock:
                    if kind == "models":
                        for _tenant, future in arg.values():
                            _settle(future, exc)
                    else:
                        self._fail_waiters(lambda w: kind == "first" or self._waits_for_load(w), exc)
                        if kind == "health":
                            self._health_due = True
                    if kind != "models":
                        self._load_cv.wait(1.0)  # then try again

    def _do(self, kind: str, arg, generation: int, seen, state: _State | None):
        if kind == "first" or kind == "full":
            started = time.monotonic()
            version, epoch = read_version()  # read first: anything changed later is loaded again later
            snap = full_snapshot(version, epoch)
            with self._lock:
                if generation != self._generation:
                    return
                self.stats["full"] += 1
                old = self._state
                if old is None:
                    self._state = _State(snap, started)
                    self._last_poll = started
                else:
                    pending = {o: e for o, e in old.pending.items() if e[1] > arg}
                    self._state = _State(snap, old.verified_at, pending)
                    self._warm = [tid for tid in old.snapshot.per_tenant if tid in snap.tenants]
                if self._seen is None or self._seen[1] != epoch or self._seen[0] < version:
                    self._seen = (version, epoch)  # the changes up to here are in what was just read
                self._health_due = False
                self._resolve_waiters()
                self._poll_cv.notify()
            return
        if kind == "owners":
            owners, taken = arg
            old = state.snapshot
            snap, warm = replace_owners(old, owners, seen[0] if seen else old.version)
            with self._lock:
                if generation != self._generation:
                    return
                self.stats["instance" if None in owners else "tenants"] += 1
                current = self._state
                pending = {o: e for o, e in current.pending.items() if o not in owners or e[1] > taken}
                self._state = _State(snap, current.verified_at, pending)
                if warm:
                    self._warm = list(dict.fromkeys(self._warm + warm))
                self._resolve_waiters()
            return
        if kind == "health":
            snap = with_health(state.snapshot, seen[0] if seen else state.snapshot.version)
            with self._lock:
                if generation == self._generation and self._state is not None:
                    self.stats["health"] += 1
                    current = self._state
                    self._state = _State(snap, current.verified_at, current.pending)
            return
        if kind == "models":
            snap = state.snapshot if state is not None else None
            for tid, (tenant, future) in arg.items():
                try:
                    models = snap.per_tenant.get(tid) if snap is not None else None
                    if models is None:
                        models = load_tenant_models(tenant, snap.health if snap is not None else {})
                        self.stats["models"] += 1
                        if snap is not None and tid in snap.tenants:
                            snap.per_tenant[tid] = models
                except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
                    _settle(future, exc)
                    continue
                try:
                    future.set_result(models)
                except concurrent.futures.InvalidStateError:
                    pass
            return
        if kind == "warm":  # model lists emptied by an instance-level change: rebuild those in use, a few at a time
            deadline = time.monotonic() + WARM_BUDGET
            snap = state.snapshot
            while time.monotonic() < deadline:
                with self._lock:
                    if generation != self._generation or not self._warm or self._state is None \
                            or self._state.snapshot is not snap:
                        return
                    tid = self._warm.pop()
                tenant = snap.tenants.get(tid)
                if tenant is not None and tid not in snap.per_tenant:
                    snap.per_tenant[tid] = load_tenant_models(tenant, snap.health)
                    self.stats["warmed"] += 1

    # --- waiters ----------------------------------------------------------------------------------------

    def _waits_for_load(self, waiter: _Waiter) -> bool:
        """The version check this waiter needs was done: it waits for the loader."""
        state = self._state
        return state is not None and state.verified_at >= waiter.since

    def _resolve_waiters(self):
        """Wake the requests the current state satisfies (called with the lock held)."""
        state = self._state
        if state is None:
            return
        keep = []
        for waiter in self._waiters:
            if waiter.future.done():
                continue
            if state.verified_for(waiter.tenant_id) >= waiter.since:
                _settle(waiter.future)
            else:
                keep.append(waiter)
        self._waiters = keep

    def _fail_waiters(self, which, exc: BaseException):
        keep = []
        for waiter in self._waiters:
            if waiter.future.done():
                continue
            if which(waiter):
                _settle(waiter.future, exc)
            else:
                keep.append(waiter)
        self._waiters = keep


def _unknown_prefix(token: str | None, snap: Snapshot) -> bool:
    """A well-formed key whose prefix this snapshot does not hold."""
    if not token or not token.startswith(KEY_PREFIX):
        return False
    prefix, _, secret = token[len(KEY_PREFIX):].partition("_")
    return bool(prefix and secret) and len(prefix) <= 16 and prefix not in snap.keys
