import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection

from credentials.services import credential_set
from providers import services
from providers.models import AIModel, Provider, ProviderKey
from providers.provider_types import all_specs, get_spec
from providers.selectors import Principal, list_active_models, model_list, provider_can, provider_get, provider_list
from providers.selectors import NotFound, Forbidden
from tenants.actors import SYSTEM
from tenants.models import AuditEvent

from .factories import make_model, make_provider, make_user


def test_registry_lists_every_litellm_provider():
    import litellm

    keys = {s.key for s in all_specs()}
    expected = {p.value for p in litellm.provider_list} - {"vllm"}
    assert expected <= keys and "berget" in keys
    azure = get_spec("azure")
    assert [f.name for f in azure.fields if f.required] == ["base_url", "api_version"]
    assert azure.models_entered_by_deployment and azure.sensitive_parameters == ("api_key", "azure_ad_token",
                                                                               "client_secret")
    openai_models = {m.model_id: m for m in get_spec("openai").known_models()}
    assert openai_models["gpt-4o-mini"].context_window == 128000
    assert openai_models["gpt-4o-mini"].supports_vision and openai_models["gpt-4o-mini"].supports_tools
    assert openai_models["text-embedding-3-small"].model_type == "embedding"
    assert get_spec("hosted_vllm").lists_models


def test_create_provider_with_key_and_models_in_one_go(tenant):
    p = make_provider(tenant=tenant, api_key="sk-the-first-key-1111",
                      models=[{"model_id": "gpt-4o-mini", "alias": "fast"}, {"model_id": "my-own"}])
    assert p.public_id.startswith("aip_")
    key = p.keys.get()
    assert key.last4 == "1111" and key.secret.reveal() == "sk-the-first-key-1111"
    with connection.cursor() as cur:
        cur.execute("SELECT secret FROM providers_providerkey")
        assert cur.fetchone()[0].startswith("enc:fernet:v1:")
    mini = p.models.get(model_id="gpt-4o-mini")
    assert mini.context_window == 128000 and mini.supports_vision and str(mini.input_cost_per_million) == "0.1500"
    assert mini.alias == "fast"
    assert p.models.get(model_id="my-own").context_window is None
    assert AuditEvent.objects.filter(action__in=["provider.create", "provider_key.add", "model.create"]).count() == 4


def test_create_is_all_or_nothing(tenant):
    with pytest.raises(ValidationError):
        make_provider(tenant=tenant, name="Broken", models=[{"model_id": "ok"}, {"model_id": "x", "model_type": "bogus"}])
    assert not Provider.objects.filter(name="Broken").exists() and not AIModel.objects.exists()


@pytest.mark.parametrize("kwargs,field", [
    ({"provider_type": "nosuch"}, "provider_type"),
    ({"provider_type": "azure", "base_url": ""}, "base_url"),
    ({"provider_type": "azure", "base_url": "https://x.openai.azure.com"}, "api_version"),
    ({"base_url": "https://user:pw@example.org"}, "base_url"),
])
def test_invalid_provider_input(tenant, kwargs, field):
    with pytest.raises(ValidationError) as exc:
        make_provider(tenant=tenant, **kwargs)
    assert field in exc.value.message_dict


def test_duplicate_names_conflict_per_tenant(tenant, other_tenant):
    make_provider(tenant=tenant, name="Main")
    with pytest.raises(services.Conflict):
        make_provider(tenant=tenant, name="Main")
    make_provider(tenant=other_tenant, name="Main")  # another tenant may use the name
    make_provider(tenant=None, name="Main")
    with pytest.raises(services.Conflict):
        make_provider(tenant=None, name="Main")


def test_delete_with_models_is_conflict_unless_forced(tenant):
    p = make_provider(tenant=tenant)
    make_model(p)
    with pytest.raises(services.Conflict, match="1 model"):
        services.provider_delete(actor=SYSTEM, provider=p)
    services.provider_delete(actor=SYSTEM, provider=p, force=True)
    assert not Provider.objects.exists()


def test_key_rotation_add_validate_disable_old(tenant):
    p = make_provider(tenant=tenant, api_key="sk-old-key-0000aaaa")
    old = p.keys.get()
    new = services.provider_key_add(actor=SYSTEM, provider=p, secret="sk-new-key-1111bbbb", label="2026-11")
    assert services.provider_active_key(p) == new  # newest active first
    services.provider_key_set_active(actor=SYSTEM, key=old, is_active=False)
    for _ in range(3):
        cred = services.provider_credential(provider=p, tenant=tenant)
        assert cred.api_key == "sk-new-key-1111bbbb"
    services.provider_key_set_active(actor=SYSTEM, key=new, is_active=False)
    from credentials.resolution import CredentialMissing

    with pytest.raises(CredentialMissing):
        services.provider_credential(provider=p, tenant=tenant)  # the disabled old key is never used again


def test_provider_credential_prefers_tenant_credential(tenant, other_tenant):
    p = make_provider(tenant=None, instance_wide=True, api_key="sk-provider-key-zzzz", base_url="https://gw.example.org/v1")
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-tenant-own-key-1234")
    mine = services.provider_credential(provider=p, tenant=tenant)
    assert (mine.source, mine.api_key, mine.api_base) == ("tenant", "sk-tenant-own-key-1234", "https://gw.example.org/v1")
    theirs = services.provider_credential(provider=p, tenant=other_tenant)
    assert (theirs.source, theirs.api_key) == ("provider_key", "sk-provider-key-zzzz")


def test_instance_wide_only_for_instance_level(tenant):
    with pytest.raises(ValidationError):
        make_provider(tenant=tenant, instance_wide=True)


# --- visibility ----------------------------------------------------------------------------------------

@pytest.fixture
def people(django_user_model, tenant, other_tenant):
    return {
        "owner": make_user(django_user_model, "owner", tenant=tenant),
        "member": make_user(django_user_model, "member", tenant=tenant),
        "admin": make_user(django_user_model, "tadmin", tenant=tenant, role="admin"),
        "grantee": make_user(django_user_model, "grantee", tenant=tenant),
        "outsider": make_user(django_user_model, "outsider", tenant=other_tenant),
    }


def names(qs):
    return sorted(p.name for p in qs)


def test_visibility_rules(tenant, other_tenant, people):
    owned = make_provider(tenant=tenant, owner=people["owner"], name="owned")
    shared = make_provider(tenant=tenant, owner=people["owner"], name="shared")
    wide = make_provider(tenant=None, instance_wide=True, name="wide")
    make_provider(tenant=None, name="hidden-instance")
    make_provider(tenant=other_tenant, name="theirs")
    services.acl_grant(actor=SYSTEM, obj=shared, grantee=people["grantee"], role="viewer")

    P = Principal.for_user
    assert names(provider_list(principal=P(people["owner"]))) == ["owned", "shared", "wide"]
    assert names(provider_list(principal=P(people["member"]))) == ["wide"]
    assert names(provider_list(principal=P(people["grantee"]))) == ["shared", "wide"]
    assert names(provider_list(principal=P(people["admin"]))) == ["owned", "shared", "wide"]
    assert names(provider_list(principal=P(people["outsider"]))) == ["theirs", "wide"] or \
        names(provider_list(principal=P(people["outsider"]))) == ["wide"]
    assert "owned" not in names(provider_list(principal=P(people["outsider"])))
    # reading is "not found", changing what you may only see is "forbidden"
    with pytest.raises(NotFound):
        provider_get(principal=P(people["member"]), public_id=owned.public_id)
    with pytest.raises(Forbidden):
        provider_get(principal=P(people["grantee"]), public_id=shared.public_id, action="change")
    services.acl_grant(actor=SYSTEM, obj=shared, grantee=people["grantee"], role="editor")
    assert provider_get(principal=P(people["grantee"]), public_id=shared.public_id, action="change") == shared
    assert not provider_can(P(people["grantee"]), shared, "delete")
    assert provider_can(P(people["owner"]), owned, "delete")
    assert not provider_can(P(people["admin"]), wide, "change")


def test_group_grant_and_global_perms_do_not_reach_across_tenants(tenant, other_tenant, people, django_user_model):
    from django.contrib.auth.models import Permission

    group = Group.objects.create(name="analysts")
    people["member"].groups.add(group)
    p = make_provider(tenant=tenant, name="grouped")
    services.acl_grant(actor=SYSTEM, obj=p, grantee=group, role="viewer")
    assert names(provider_list(principal=Principal.for_user(people["member"]))) == ["grouped"]
    # A global view permission grants nothing across tenants.
    people["outsider"].user_permissions.add(Permission.objects.get(codename="view_provider"))
    outsider = django_user_model.objects.get(pk=people["outsider"].pk)
    assert names(provider_list(principal=Principal.for_user(outsider))) == []
    # Grants go only to members of the object's tenant.
    with pytest.raises(ValidationError):
        services.acl_grant(actor=SYSTEM, obj=p, grantee=outsider, role="viewer")


def test_only_active_models_of_active_providers_are_offered(tenant, people):
    p = make_provider(tenant=tenant, owner=people["owner"], name="p")
    active = make_model(p, model_id="a")
    make_model(p, model_id="b", status="inactive")
    off = make_provider(tenant=tenant, owner=people["owner"], name="off", status="inactive")
    make_model(off, model_id="c")
    offered = list_active_models(principal=Principal.for_user(people["owner"]))
    assert [m.model_id for m in offered] == ["a"] and offered[0] == active
    assert {m.model_id for m in model_list(principal=Principal.for_user(people["owner"]))} == {"a", "b", "c"}


def test_model_visibility_within_a_visible_provider(tenant, people):
    wide = make_provider(tenant=None, instance_wide=True, name="wide")
    make_model(wide, model_id="public")
    private = make_model(wide, model_id="private", instance_wide=False)
    member = Principal.for_user(people["member"])
    assert [m.model_id for m in list_active_models(principal=member)] == ["public"]
    services.acl_grant(actor=SYSTEM, obj=private, grantee=people["member"], role="viewer")
    assert {m.model_id for m in list_active_models(principal=member)} == {"public", "private"}


def test_tenant_key_principal_and_enablement(tenant, other_tenant):
    own = make_provider(tenant=tenant, name="own")
    make_model(own, model_id="own-model")
    inst = make_provider(tenant=None, name="inst")  # not instance-wide
    enabled = make_model(inst, model_id="enabled-for-acme")
    make_model(inst, model_id="not-enabled")
    make_model(make_provider(tenant=other_tenant, name="theirs"), model_id="their-model")
    services.model_set_tenant_enabled(actor=SYSTEM, model=enabled, tenant=tenant, enabled=True)
    acme = Principal(tenant=tenant)
    assert {m.model_id for m in list_active_models(principal=acme)} == {"own-model", "enabled-for-acme"}
    assert names(provider_list(principal=acme)) == ["inst", "own"]
    assert provider_can(acme, own, "change") and not provider_can(acme, inst, "change")
    assert {m.model_id for m in list_active_models(principal=Principal(tenant=other_tenant))} == {"their-model"}


def test_aliases_span_providers(tenant):
    a = make_provider(tenant=tenant, name="a")
    b = make_provider(tenant=tenant, name="b", provider_type="anthropic")
    make_model(a, model_id="gpt-4o", alias="smart")
    make_model(b, model_id="claude-3-5-sonnet-20240620", alias="smart")
    from providers.selectors import alias_list, models_by_alias

    assert alias_list() == [("smart", 2)]
    assert models_by_alias(principal=Principal(tenant=tenant), alias="smart").count() == 2


def test_bootstrap_is_idempotent(db, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key-for-boot-1234")
    monkeypatch.setenv("OPENAI_MODELS", "gpt-4o-mini,gpt-4o")
    monkeypatch.setenv("VLLM_MODEL_URL", "http://vllm.internal:8000/v1")
    monkeypatch.setenv("VLLM_MODEL_NAME", "meta-llama/Llama-3.1-8B-Instruct")
    call_command("ensure_env_providers")
    assert "OpenAI (environment): created" in capsys.readouterr().out
    call_command("ensure_env_providers")
    out = capsys.readouterr().out
    assert "OpenAI (environment): unchanged" in out and "vLLM (environment): unchanged" in out
    assert Provider.objects.count() == 2 and AIModel.objects.count() == 3
    openai = Provider.objects.get(provider_type="openai")
    assert openai.instance_wide and openai.tenant is None and not ProviderKey.objects.exists()
    monkeypatch.setenv("VLLM_MODEL_URL", "http://vllm2.internal:8000/v1")
    call_command("ensure_env_providers")
    assert "vLLM (environment): updated" in capsys.readouterr().out
    assert Provider.objects.get(provider_type="hosted_vllm").base_url == "http://vllm2.internal:8000/v1"
    assert Provider.objects.count() == 2
