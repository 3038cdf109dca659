"""The add-provider wizard: each step, its errors, discovery from a real local server, and the key's secrecy."""
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Permission
from django.db import connection

from providers.models import FavouriteProviderType, Provider
from providers.admin.wizard import SESSION_KEY
from tenants.models import AuditEvent

from .conftest import CANARY
from .factories import make_provider, make_user

ADD = "/admin/providers/provider/add/"
CONNECTION = ADD + "connection/"
MODELS = ADD + "models/"
FAVOURITE = ADD + "favourite/"


@pytest.fixture
def models_server():
    """A tiny OpenAI-compatible server on 127.0.0.1 answering GET /v1/models."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            if self.path != "/v1/models":
                self.send_response(404)
                self.end_headers()
                return
            body = json.dumps({"object": "list", "data": [{"id": "m1"}, {"id": "m2"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}/v1", seen=seen)
    server.shutdown()
    server.server_close()


def start(client, provider_type="openai", tenant=None):
    response = client.post(ADD, {"provider_type": provider_type, "tenant": tenant.pk if tenant else ""})
    assert response.status_code == 302 and response["Location"] == CONNECTION, response.content.decode()[:500]


def connect(client, **data):
    response = client.post(CONNECTION, data)
    assert response.status_code == 302 and response["Location"] == MODELS, response.context["form"].errors
    return response


def wizard_state(client) -> dict:
    return client.session.get(SESSION_KEY, {})


# --- step 1 ------------------------------------------------------------------------------------------------

def test_type_step_lists_favourites_first_and_searches(admin_client):
    page = admin_client.get(ADD)
    assert page.status_code == 200 and len(page.context["rows"]) > 100
    assert 'value="azure"' in page.content.decode() and "instance-level provider" in page.content.decode()

    assert admin_client.post(FAVOURITE, {"star": "xai", "q": ""}).status_code == 302
    assert FavouriteProviderType.objects.filter(provider_type="xai").exists()
    rows = admin_client.get(ADD).context["rows"]
    assert rows[0].spec.key == "xai" and rows[0].favourite and not rows[1].favourite
    admin_client.post(FAVOURITE, {"star": "xai"})
    assert not FavouriteProviderType.objects.exists()
    response = admin_client.post(FAVOURITE, {"star": "no-such-type"}, follow=True)
    assert "Unknown provider type" in response.content.decode()
    assert admin_client.get(FAVOURITE).status_code == 405

    rows = admin_client.get(ADD, {"q": "AZU"}).context["rows"]
    keys = {row.spec.key for row in rows}
    assert "azure" in keys and "anthropic" not in keys
    assert "No provider type matches" in admin_client.get(ADD, {"q": "zzzz-nothing"}).content.decode()


def test_type_step_errors(admin_client):
    response = admin_client.post(ADD, {"tenant": ""})
    assert response.status_code == 200 and "This field is required" in response.content.decode()
    response = admin_client.post(ADD, {"provider_type": "no-such-type"})
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert SESSION_KEY not in admin_client.session


def test_later_steps_need_the_earlier_ones(admin_client):
    assert admin_client.get(CONNECTION)["Location"] == ADD
    assert admin_client.get(MODELS)["Location"] == ADD
    start(admin_client)
    assert admin_client.get(MODELS)["Location"] == CONNECTION


def test_tenant_admin_creates_only_in_own_tenant(client, django_user_model, tenant, other_tenant):
    user = make_user(django_user_model, "tadmin", tenant=tenant, role="admin", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["add_provider", "view_provider"]))
    client.force_login(user)
    page = client.get(ADD)
    assert list(page.context["form"].fields["tenant"].queryset) == [tenant]
    assert "This field is required" in client.post(ADD, {"provider_type": "openai", "tenant": ""}).content.decode()
    response = client.post(ADD, {"provider_type": "openai", "tenant": other_tenant.pk})
    assert "Select a valid choice" in response.content.decode()
    start(client, "openai", tenant)
    connect(client, name="Ours", api_key="sk-tenant-admin-key-1")
    assert client.post(MODELS, {"extra_models": "gpt-4o-mini"}).status_code == 302
    provider = Provider.objects.get(name="Ours")
    assert provider.tenant == tenant and provider.owner == user
    assert "Ours" in client.get("/admin/providers/provider/").content.decode()


# --- step 2 ------------------------------------------------------------------------------------------------

def test_connection_step_follows_the_registry_and_reports_errors(admin_client, tenant):
    make_provider(tenant=tenant, name="Taken", provider_type="azure", base_url="https://taken.openai.azure.com",
                  api_version="2024-06-01")
    start(admin_client, "azure", tenant)
    page = admin_client.get(CONNECTION).content.decode()
    assert "API version" in page and "deployment list" in page and 'type="password"' in page
    response = admin_client.post(CONNECTION, {"name": "Azure"})
    assert set(response.context["form"].errors) == {"base_url", "api_version"}  # a key may come later (or an AD
    # token, or tenants' own credentials)
    response = admin_client.post(CONNECTION, {"name": "Azure", "api_key": "azure-key-123456",
                                              "base_url": "not a url", "api_version": "2024-06-01"})
    assert "Enter a valid http(s) URL" in response.content.decode()
    assert "azure-key-123456" not in response.content.decode()
    response = admin_client.post(CONNECTION, {"name": "Taken", "base_url": "https://x.openai.azure.com",
                                              "api_version": "2024-06-01"})
    assert "already exists in this tenant" in response.content.decode()
    assert "A key ending ...3456 is entered" in response.content.decode()  # kept from the previous post


def test_session_holds_only_the_ciphertext_of_the_key(admin_client):
    start(admin_client)
    response = admin_client.post(CONNECTION, {"name": "Secretive", "api_key": CANARY, "base_url": "ftp://bad"})
    assert response.status_code == 200 and CANARY not in response.content.decode()
    state = wizard_state(admin_client)
    assert state["sealed_key"].startswith("enc:fernet:v1:") and CANARY not in json.dumps(dict(admin_client.session))
    connect(admin_client, name="Secretive")  # blank key field: the entered key is kept
    assert CANARY not in json.dumps(dict(admin_client.session))


def test_bedrock_settings_from_the_catalog_and_their_secrets_only_encrypted_in_the_session(admin_client):
    start(admin_client, "bedrock")
    page = admin_client.get(CONNECTION).content.decode()
    assert "AWS Region Name" in page and "id_setting__aws_secret_access_key" in page
    response = admin_client.post(CONNECTION, {"name": "Bedrock", "setting__aws_access_key_id": "AKIAWIZARD01",
                                              "setting__aws_secret_access_key": CANARY})
    assert response.context["form"].errors == {"setting__aws_region_name": [
        "AWS Region Name is required for AWS Bedrock."]} and CANARY not in response.content.decode()
    connect(admin_client, name="Bedrock", setting__aws_region_name="eu-north-1",
            setting__aws_access_key_id="AKIAWIZARD01", setting__aws_secret_access_key=CANARY)
    assert CANARY not in json.dumps(dict(admin_client.session))
    assert wizard_state(admin_client)["settings"] == {"aws_region_name": "eu-north-1"}
    response = admin_client.post(MODELS, {"extra_models": "anthropic.claude-3-haiku-20240307-v1:0"})
    assert response.status_code == 302
    provider = Provider.objects.get(name="Bedrock")
    assert provider.config.reveal() == {"aws_region_name": "eu-north-1", "aws_access_key_id": "AKIAWIZARD01",
                                        "aws_secret_access_key": CANARY}


# --- step 3 and create ---------------------------------------------------------------------------------------

def test_registry_models_search_paging_and_create(admin_client, tenant):
    start(admin_client, "openai", tenant)
    connect(admin_client, name="OpenAI prod", api_key="sk-wizard-key-9876", key_label="prod")
    page = admin_client.get(MODELS)
    assert page.status_code == 200 and len(page.context["page"].object_list) == 50
    assert "registry" in page.context["source"].description
    assert admin_client.post(MODELS, {"q": "gpt-4o-mini", "_search": "1"})["Location"] == MODELS + "?q=gpt-4o-mini"
    page = admin_client.get(MODELS, {"q": "gpt-4o-mini"})
    html = page.content.decode()
    assert "128000" in html and 'value="gpt-4o-mini"' in html and 'value="gpt-3.5-turbo"' not in html

    # Ticks survive a search or a page change (they are kept in the session).
    shown = [o.model_id for o in page.context["page"]]
    response = admin_client.post(MODELS + "?q=gpt-4o-mini", {"models": ["gpt-4o-mini"], "shown": shown,
                                                             "q": "embedding", "_search": "1"})
    assert response["Location"] == MODELS + "?q=embedding"
    assert wizard_state(admin_client)["selected"] == ["gpt-4o-mini"]
    page = admin_client.get(MODELS, {"q": "embedding"})
    assert page.context["selected_elsewhere"] == ["gpt-4o-mini"]

    bad = admin_client.post(MODELS, {"models": ["gpt-4o-mini"], "extra_models": "has a space"})
    assert bad.status_code == 200 and "Line 1 is not a model id" in bad.content.decode()
    response = admin_client.post(MODELS, {"models": ["gpt-4o-mini", "text-embedding-3-small"],
                                          "shown": ["gpt-4o-mini", "text-embedding-3-small"],
                                          "extra_models": "my-finetune\n\nmy-finetune\n"})
    provider = Provider.objects.get(name="OpenAI prod")
    assert response.status_code == 302 and response["Location"] == f"/admin/providers/provider/{provider.pk}/change/"
    assert provider.tenant == tenant and provider.owner.username == "operator"
    assert sorted(provider.models.values_list("model_id", flat=True)) == [
        "gpt-4o-mini", "my-finetune", "text-embedding-3-small"]
    assert provider.models.get(model_id="text-embedding-3-small").model_type == "embedding"
    key = provider.keys.get()
    assert key.label == "prod" and key.secret.reveal() == "sk-wizard-key-9876"
    with connection.cursor() as cur:
        cur.execute("SELECT secret FROM providers_providerkey WHERE id = %s", [key.pk])
        assert cur.fetchone()[0].startswith("enc:fernet:v1:")
    assert SESSION_KEY not in admin_client.session
    assert AuditEvent.objects.filter(action="provider.create", source="admin", actor="operator").exists()
    assert "was added with 3 model(s)" in admin_client.get(response["Location"]).content.decode()


def test_final_step_reports_a_late_conflict(admin_client):
    start(admin_client)
    connect(admin_client, name="Racing", api_key="sk-race-key-0001")
    make_provider(name="Racing")  # created elsewhere meanwhile
    response = admin_client.post(MODELS, {"extra_models": "gpt-4o-mini"})
    assert response.status_code == 200 and "already exists" in response.content.decode()
    assert Provider.objects.filter(name="Racing").count() == 1 and SESSION_KEY in admin_client.session


def test_discovery_lists_the_servers_models(admin_client, models_server):
    start(admin_client, "hosted_vllm")
    connect(admin_client, name="GPU box", api_key="sk-discovery-key-5555", base_url=models_server.url + "/")
    page = admin_client.get(MODELS)
    html = page.content.decode()
    assert 'value="m1"' in html and 'value="m2"' in html and "listed by the server" in html
    assert models_server.seen == [("/v1/models", "Bearer sk-discovery-key-5555")]
    admin_client.get(MODELS)
    assert len(models_server.seen) == 1  # remembered for the rest of the wizard
    response = admin_client.post(MODELS, {"models": ["m1", "m2"], "shown": ["m1", "m2"]})
    assert response.status_code == 302
    assert sorted(Provider.objects.get(name="GPU box").models.values_list("model_id", flat=True)) == ["m1", "m2"]


def test_discovery_failure_is_a_clear_message(admin_client):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start(admin_client, "hosted_vllm")
    connect(admin_client, name="Down box", api_key=CANARY, base_url=f"http://127.0.0.1:{port}/v1")
    page = admin_client.get(MODELS)
    html = page.content.decode()
    assert page.status_code == 200 and CANARY not in html
    assert f"Could not list the models at http://127.0.0.1:{port}/v1/models: could not connect to the API." in html


def test_azure_models_are_entered_by_deployment(admin_client, tenant):
    start(admin_client, "azure", tenant)
    connect(admin_client, name="Azure EU", api_key="azure-key-123456", base_url="https://eu.openai.azure.com",
            api_version="2024-06-01")
    page = admin_client.get(MODELS).content.decode()
    assert "Deployment names" in page and 'name="models"' not in page
    assert admin_client.post(MODELS, {"extra_models": "prod-gpt4o\nprod-embed"}).status_code == 302
    provider = Provider.objects.get(name="Azure EU")
    assert provider.api_version == "2024-06-01"
    assert sorted(provider.models.values_list("model_id", flat=True)) == ["prod-embed", "prod-gpt4o"]


def test_canary_key_never_appears_on_a_page_or_in_the_session(admin_client, tenant):
    pages = [admin_client.get(ADD)]
    start(admin_client, "anthropic", tenant)
    pages.append(admin_client.post(CONNECTION, {"name": "", "api_key": CANARY}))
    pages.append(admin_client.get(CONNECTION))
    connect(admin_client, name="Canary provider")
    pages.append(admin_client.get(MODELS))
    pages.append(admin_client.post(MODELS, {"extra_models": "claude-3-5-haiku-20241022"}, follow=True))
    provider = Provider.objects.get(name="Canary provider")
    pages += [admin_client.get(url) for url in ("/admin/providers/provider/",
                                                f"/admin/providers/provider/{provider.pk}/history/",
                                                "/admin/tenants/auditevent/")]
    for page in pages:
        assert page.status_code == 200
        assert CANARY not in page.content.decode() and CANARY[3:-4] not in page.content.decode()
    assert "...zz91" in pages[4].content.decode()
    assert provider.keys.get().secret.reveal() == CANARY
