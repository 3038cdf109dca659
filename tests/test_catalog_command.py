"""manage.py catalog export / apply: the declarative catalog an operator keeps in Git."""
from io import StringIO

import pytest
import yaml
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command

from providers import services
from providers.models import AIModel, Provider, ProviderKey
from tenants.actors import SYSTEM
from tenants.models import AuditEvent
from tests.conftest import CANARY
from tests.factories import make_provider, make_user

OTHER_KEY = "sk-catalog-second-key-9f8e7d6c5b4a"

CATALOG = """
version: 1
providers:
  - name: openai-prod
    type: openai
    base_url: https://api.openai.com/v1
    api_key: os.environ/CATALOG_OPENAI_KEY
    instance_wide: false
    rpm: 600
    grants:
      - {user: alice, role: editor}
      - {group: analysts, role: viewer}
    models:
      - model_id: gpt-4o
        alias: gpt-4o
        display_label: GPT-4o
        input_cost_per_million: 2.5
        output_cost_per_million: 10
        capabilities: {vision: true, tools: true}
        model_config: {temperature: 0.2}
        enabled_for: [acme]
      - model_id: text-embedding-3-small
        model_type: embedding
        alias: embed-small
        status: inactive
  - name: vllm
    tenant: acme
    type: hosted_vllm
    base_url: http://127.0.0.1:8000/v1
    models:
      - model_id: meta-llama/Llama-3.1-8B-Instruct
        alias: llama-8b
        context_window: 131072
        input_cost_per_million: null
        grants:
          - {user: alice, role: viewer}
"""


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("catalog", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def write(tmp_path, text, name="catalog.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def changes(output: str) -> list[str]:
    return [line for line in output.splitlines() if line[:2] in ("+ ", "~ ", "- ")]


@pytest.fixture
def people(tenant, django_user_model):
    alice = make_user(django_user_model, "alice", tenant=tenant)
    Group.objects.create(name="analysts")
    return alice


@pytest.fixture
def catalog_env(monkeypatch):
    monkeypatch.setenv("CATALOG_OPENAI_KEY", CANARY)


def test_apply_twice_changes_nothing_and_export_round_trips(tmp_path, people, catalog_env, tenant):
    out, _ = run("apply", write(tmp_path, CATALOG))
    assert "+ provider openai-prod (openai)" in out
    assert "+ provider acme:vllm (hosted_vllm)" in out
    assert "+ model openai-prod/gpt-4o" in out
    assert "+ enable openai-prod/gpt-4o for acme" in out
    assert "+ grant provider openai-prod: user alice editor" in out
    assert out.rstrip().splitlines()[-1].startswith("Applied: ")
    assert CANARY not in out
    key = ProviderKey.objects.get(provider__name="openai-prod")
    assert key.secret.reveal() == CANARY and key.label == "os.environ/CATALOG_OPENAI_KEY"
    model = AIModel.objects.get(model_id="gpt-4o")
    assert (model.alias, str(model.input_cost_per_million), model.supports_vision) == ("gpt-4o", "2.5000", True)
    assert services.model_settings(model) == {"temperature": 0.2}

    audit_rows = AuditEvent.objects.count()
    again, _ = run("apply", write(tmp_path, CATALOG))
    assert changes(again) == [] and again.strip() == "No changes."
    assert AuditEvent.objects.count() == audit_rows

    exported, _ = run("export")
    assert "api_key: os.environ/CATALOG_OPENAI_KEY" in exported and CANARY not in exported
    # Into an empty catalog (tenants and users stay): the export reproduces it, and applying it again is a no-op.
    for provider in Provider.objects.all():
        services.provider_delete(actor=SYSTEM, provider=provider, force=True)
    path = write(tmp_path, exported, "exported.yaml")
    out, _ = run("apply", path)
    assert "+ provider openai-prod (openai)" in out and "+ grant model acme:vllm/meta-llama/Llama-3.1-8B-Instruct: " \
                                                         "user alice viewer" in out
    assert run("export")[0] == exported
    assert ProviderKey.objects.get(provider__name="openai-prod").secret.reveal() == CANARY
    audit_rows = AuditEvent.objects.count()
    assert run("apply", path)[0].strip() == "No changes."
    assert AuditEvent.objects.count() == audit_rows


def test_changes_are_listed_and_dry_run_writes_nothing(tmp_path, people, catalog_env, monkeypatch):
    path = write(tmp_path, CATALOG)
    audit_rows = AuditEvent.objects.count()
    out, _ = run("apply", path, "--dry-run")
    assert "+ provider openai-prod (openai)" in out
    assert out.rstrip().splitlines()[-1].startswith("Dry run, nothing written: ")
    assert (Provider.objects.count(), AuditEvent.objects.count()) == (0, audit_rows)

    run("apply", path)
    monkeypatch.setenv("CATALOG_OPENAI_KEY", OTHER_KEY)
    edited = CATALOG.replace("alias: gpt-4o", "alias: gpt-4o-prod").replace("role: editor", "role: manager")
    out, _ = run("apply", write(tmp_path, edited))
    assert changes(out) == [
        "+ key openai-prod: os.environ/CATALOG_OPENAI_KEY (...5b4a), replaces ...zz91 (disabled)",
        "~ model openai-prod/gpt-4o: alias 'gpt-4o' -> 'gpt-4o-prod'",
        "~ grant provider openai-prod: user alice editor -> manager",
    ]
    assert OTHER_KEY not in out
    provider = Provider.objects.get(name="openai-prod")
    assert services.provider_active_key(provider).secret.reveal() == OTHER_KEY
    assert provider.keys.filter(is_active=True).count() == 1

    # Not in the file: left alone, unless --prune.
    without_vllm = edited.split("  - name: vllm")[0]
    assert changes(run("apply", write(tmp_path, without_vllm))[0]) == []
    out, _ = run("apply", write(tmp_path, without_vllm), "--prune")
    assert changes(out) == ["- provider acme:vllm (with 1 model(s))"]
    assert not Provider.objects.filter(name="vllm").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("os.environ/CATALOG_OPENAI_KEY", "os.environ/CATALOG_MISSING_KEY"),
     "providers[0].api_key: environment variable CATALOG_MISSING_KEY is not set (provider 'openai-prod')"),
    (lambda t: t.replace("os.environ/CATALOG_OPENAI_KEY", CANARY),
     "providers[0].api_key: a key must be an environment reference (os.environ/NAME), never the key itself"),
    (lambda t: t.replace("model_type: embedding", "model_type: chat"),
     "providers[0].models[1].model_type: must be one of inference, embedding, rerank"),
    # Refused by the service after the first provider was written: the transaction takes it back.
    (lambda t: t.replace("alias: llama-8b", "alias: llama 8b!"), "providers[1].models[0].alias: "),
])
def test_bad_catalog_names_the_entry_and_writes_nothing(tmp_path, people, catalog_env, edit, message):
    audit_rows = AuditEvent.objects.count()
    with pytest.raises(CommandError) as error:
        run("apply", write(tmp_path, edit(CATALOG)))
    assert message in str(error.value) and "nothing was written" in str(error.value)
    assert CANARY not in str(error.value)
    assert (Provider.objects.count(), AuditEvent.objects.count()) == (0, audit_rows)


LITELLM_CONFIG = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt4o-prod
      api_base: https://example-resource.openai.azure.com/
      api_version: "2024-06-01"
      api_key: os.environ/CATALOG_AZURE_KEY
      timeout: 30
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/CATALOG_OPENAI_KEY
      rpm: 500
  - model_name: text-embedding-3-small
    litellm_params:
      model: azure/embed-small
      api_base: https://example-resource.openai.azure.com/
      api_version: "2024-06-01"
      api_key: os.environ/CATALOG_AZURE_KEY
    model_info:
      mode: embedding
  - model_name: meta-llama/Llama-3.1-8B-Instruct
    litellm_params:
      model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct
      api_base: http://127.0.0.1:8000/v1
      temperature: 0.1
litellm_settings:
  drop_params: true
"""


def test_litellm_proxy_config_imports(db, tmp_path, catalog_env, monkeypatch):
    monkeypatch.setenv("CATALOG_AZURE_KEY", CANARY.replace("CANARY", "AZURECANARY"))
    path = write(tmp_path, LITELLM_CONFIG, "config.yaml")
    out, err = run("apply", path)
    assert CANARY not in out + err and "AZURECANARY" not in out + err
    assert "ignored (not part of a catalog): litellm_settings" in err
    azure = Provider.objects.get(name="azure")
    assert (azure.base_url, azure.api_version) == ("https://example-resource.openai.azure.com", "2024-06-01")
    assert services.provider_active_key(azure).secret.reveal() == CANARY.replace("CANARY", "AZURECANARY")
    assert sorted(azure.models.values_list("model_id", "alias", "model_type")) == [
        ("embed-small", "text-embedding-3-small", "embedding"), ("gpt4o-prod", "gpt-4o", "inference")]
    openai = Provider.objects.get(name="openai")
    assert openai.rpm == 500 and services.provider_active_key(openai).secret.reveal() == CANARY
    vllm = Provider.objects.get(name="hosted_vllm")
    llama = vllm.models.get()
    assert (llama.model_id, llama.alias, services.model_settings(llama)) == (
        "meta-llama/Llama-3.1-8B-Instruct", "meta-llama-Llama-3-1-8B-Instruct", {"temperature": 0.1})
    assert not vllm.keys.exists()
    assert run("apply", path)[0].strip() == "No changes."

    refused = LITELLM_CONFIG.replace("      rpm: 500", "      extra_headers: {X-Tenant: other}")
    with pytest.raises(CommandError, match=r"model_list\[1\]\.litellm_params: not allowed: extra_headers"):
        run("apply", write(tmp_path, refused, "refused.yaml"))


def test_export_never_contains_a_key(tmp_path, tenant):
    make_provider(name="hand-made", api_key=CANARY, config={"organization": "org-1"})
    out, err = run("export")
    assert CANARY not in out + err
    entry = yaml.safe_load(out)["providers"][0]
    assert entry["name"] == "hand-made" and "api_key" not in entry and entry["config"] == {"organization": "org-1"}
    assert "provider hand-made: its key was not set from an environment variable" in err
    assert "# WARNING: provider hand-made" in out
    assert yaml.safe_load(run("export", "--tenant", "acme")[0]) == {"version": 1, "tenant": "acme", "providers": []}
