"""The add-provider wizard, replacing the admin's add view (STYLE.md 3, like UserAdmin's password view).

1. type (favourites first, searchable) and the owning tenant, or instance level and the tenants it is shared
with; 2. name and the type's fields from the registry (the key);
3. models: the server's own list (GET {base_url}/models) or LiteLLM's registry, plus ids typed in.
The final submit calls services.provider_create once: provider, key, models and the chosen tenants' enablement of
those models in one transaction.

The session holds the wizard's state but never a plaintext key: only its ciphertext (credentials.crypto),
handed to provider_create as a Sealed value. The state is cleared once the provider is saved.
"""
from __future__ import annotations

import json

from dataclasses import dataclass
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from credentials import crypto
from credentials.fields import Sealed
from credentials.masking import mask

from providers import services
from providers.models import Provider
from providers.provider_types import KnownModel, ProviderTypeSpec, all_specs, get_spec
from providers.selectors import favourite_provider_types, provider_tenant_choices
from providers.admin.base import actor_for, error_text, principal_for
from providers.admin.checks import run_provider_test
from providers.checks.discovery import discover_model_ids
from providers.admin.forms import WizardCredentialsForm, WizardModelsForm, WizardTypeForm

SESSION_KEY = "providers_add_wizard"
PAGE_SIZE = 50
STEPS = ("Type and tenant", "Connection", "Models")


@dataclass(frozen=True)
class TypeRow:
    spec: ProviderTypeSpec
    favourite: bool


@dataclass(frozen=True)
class ModelOption:
    model_id: str
    known: KnownModel | None


@dataclass(frozen=True)
class ModelSource:
    options: list[ModelOption]
    description: str
    error: str = ""


class ProviderWizard:
    def __init__(self, model_admin):
        self.model_admin = model_admin

    def get_urls(self):
        wrap = self.model_admin.admin_site.admin_view
        return [
            path("add/", wrap(self.type_view), name="providers_provider_add"),
            path("add/favourite/", wrap(self.favourite_view), name="providers_provider_wizard_favourite"),
            path("add/connection/", wrap(self.credentials_view), name="providers_provider_wizard_credentials"),
            path("add/models/", wrap(self.models_view), name="providers_provider_wizard_models"),
        ]

    # --- state -------------------------------------------------------------------------------------------

    @staticmethod
    def _state(request) -> dict:
        return dict(request.session.get(SESSION_KEY) or {})

    @staticmethod
    def _save(request, state: dict) -> None:
        request.session[SESSION_KEY] = state

    @staticmethod
    def _clear(request) -> None:
        request.session.pop(SESSION_KEY, None)

    def _check_permission(self, request) -> None:
        if not self.model_admin.has_add_permission(request):
            raise PermissionDenied

    def _resume(self, request, *, need_connection: bool = False):
        """(state, spec, tenant, shared_with) of a wizard in progress, or a redirect to the step to do first."""
        state = self._state(request)
        try:
            spec = get_spec(state.get("provider_type") or "")
        except KeyError:
            return self._redirect_to(request, "add", "Pick a provider type first.")
        tenant, principal = None, principal_for(request)
        if state.get("tenant"):
            tenant = provider_tenant_choices(principal=principal).filter(pk=state["tenant"]).first()
            if tenant is None:
                return self._redirect_to(request, "add", "Pick the tenant again.")
        elif not principal.is_sysadmin:
            return self._redirect_to(request, "add", "Pick a tenant first.")
        if need_connection and not state.get("name"):
            return self._redirect_to(request, "wizard_credentials", "Enter the connection details first.")
        shared_with = []
        if state.get("shared_with") and tenant is None:
            shared_with = list(provider_tenant_choices(principal=principal).filter(pk__in=state["shared_with"]))
            if len(shared_with) != len(state["shared_with"]):
                return self._redirect_to(request, "add", "Pick the tenants to share with again.")
        return state, spec, tenant, shared_with

    @staticmethod
    def _url(name: str, **query) -> str:
        url = reverse(f"admin:providers_provider_{name}")
        query = {k: v for k, v in query.items() if v}
        return f"{url}?{urlencode(query)}" if query else url

    def _redirect_to(self, request, name: str, message: str = "", **query) -> HttpResponseRedirect:
        if message:
            messages.warning(request, message)
        return HttpResponseRedirect(self._url(name, **query))

    def _render(self, request, template: str, step: int, context: dict) -> TemplateResponse:
        context = {
            **self.model_admin.admin_site.each_context(request),
            "opts": Provider._meta,
            "title": f"Add provider, step {step} of {len(STEPS)}: {STEPS[step - 1]}",
            "subtitle": None,
            "steps": [(number, label, number == step) for number, label in enumerate(STEPS, 1)],
            "has_view_permission": self.model_admin.has_view_permission(request),
            **context,
        }
        return TemplateResponse(request, f"admin/providers/provider/wizard/{template}", context)

    # --- step 1: type and tenant ---------------------------------------------------------------------------

    def type_view(self, request):
        self._check_permission(request)
        principal = principal_for(request)
        state = self._state(request)
        form_kwargs = {"tenants": provider_tenant_choices(principal=principal),
                       "allow_instance_level": principal.is_sysadmin}
        if request.method == "POST":
            form = WizardTypeForm(request.POST, **form_kwargs)
            if form.is_valid():
                tenant = form.cleaned_data["tenant"]
                chosen = {"provider_type": form.cleaned_data["provider_type"],
                          "tenant": str(tenant.pk) if tenant else None}
                if any(state.get(key) != value for key, value in chosen.items()):
                    state = chosen  # another type or tenant: start over (an entered key is dropped)
                state["shared_with"] = sorted(str(t.pk) for t in form.cleaned_data.get("shared_with") or ())
                self._save(request, state)
                return HttpResponseRedirect(self._url("wizard_credentials"))
        else:
            form = WizardTypeForm(initial={"provider_type": state.get("provider_type"), "tenant": state.get("tenant"),
                                           "shared_with": state.get("shared_with") or []}, **form_kwargs)
        q = (request.GET.get("q") or "").strip()[:100]
        return self._render(request, "type.html", 1, {
            "form": form,
            "q": q,
            "rows": self._type_rows(request, q),
            "type_count": len(all_specs()),
            "selected_type": form["provider_type"].value(),
            "no_tenant": not principal.is_sysadmin and not form_kwargs["tenants"].exists(),
        })

    @staticmethod
    def _type_rows(request, q: str) -> list[TypeRow]:
        favourites = favourite_provider_types(user=request.user)
        needle = q.lower()
        rows = [TypeRow(spec, spec.key in favourites) for spec in all_specs()
                if not needle or needle in spec.key.lower() or needle in spec.label.lower()]
        return sorted(rows, key=lambda row: (not row.favourite, row.spec.label.lower()))

    def favourite_view(self, request):
        self._check_permission(request)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        provider_type = (request.POST.get("star") or "").strip()[:64]
        try:
            on = services.favourite_toggle(user=request.user, provider_type=provider_type)
        except ValidationError:
            messages.error(request, "Unknown provider type.")
        else:
            messages.success(request, f"“{provider_type}” is {'now' if on else 'no longer'} a favourite.")
        return self._redirect_to(request, "add", q=(request.POST.get("q") or "").strip()[:100])

    # --- step 2: name and connection (the key) ------------------------------------------------------------

    @method_decorator(sensitive_post_parameters())
    def credentials_view(self, request):
        self._check_permission(request)
        resumed = self._resume(request)
        if isinstance(resumed, HttpResponse):
            return resumed
        state, spec, tenant, shared_with = resumed
        form_kwargs = {"spec": spec, "tenant": tenant, "key_stored": bool(state.get("sealed_key")),
                       "actor": actor_for(request), "settings_stored": self._settings(state)}
        if request.method == "POST":
            if "_back" in request.POST:
                return HttpResponseRedirect(self._url("add"))
            form = WizardCredentialsForm(request.POST, **form_kwargs)
            valid = form.is_valid()
            if form.cleaned_data.get("api_key"):  # kept (encrypted) even when another field needs fixing
                state["sealed_key"] = crypto.encrypt(form.cleaned_data["api_key"])
                state["key_masked"] = mask(form.cleaned_data["api_key"])
            if valid:
                data = form.cleaned_data
                if data.get("base_url", "") != state.get("base_url", ""):
                    state.pop("discovered", None)
                self._keep_settings(state, spec, data["settings"])
                state.update({
                    "name": data["name"], "base_url": data.get("base_url", ""),
                    "api_version": data.get("api_version", ""), "key_label": data.get("key_label", ""),
                    "instance_wide": bool(data.get("instance_wide")),
                })
                self._save(request, state)
                return HttpResponseRedirect(self._url("wizard_models"))
            self._save(request, state)
        else:
            form = WizardCredentialsForm(initial={k: state[k] for k in ("name", "base_url", "api_version",
                                                                          "key_label", "instance_wide")
                                                  if k in state}, **form_kwargs)
        return self._render(request, "connection.html", 2, {
            "form": form, "spec": spec, "tenant": tenant, "key_masked": state.get("key_masked", ""),
            "shared_with": shared_with,
        })

    # --- step 3: models, then create ---------------------------------------------------------------------

    def models_view(self, request):
        self._check_permission(request)
        resumed = self._resume(request, need_connection=True)
        if isinstance(resumed, HttpResponse):
            return resumed
        state, spec, tenant, shared_with = resumed
        source = self._model_source(request, state, spec)
        q = (request.GET.get("q") or "").strip()[:100]
        matching = [o for o in source.options if q.lower() in o.model_id.lower()] if q else source.options
        page = Paginator(matching, PAGE_SIZE).get_page(request.GET.get("page"))
        selected = list(state.get("selected") or [])
        option_ids = {o.model_id for o in source.options}
        form_kwargs = {"choices": [o.model_id for o in source.options] + [s for s in selected if s not in option_ids],
                       "deployments": spec.models_entered_by_deployment}
        if request.method == "POST":
            # The ticks of this page replace those it showed; the rest of the selection is kept.
            shown = set(request.POST.getlist("shown"))
            kept = [s for s in selected if s not in shown]
            allowed = set(form_kwargs["choices"])
            ticked = [t for t in request.POST.getlist("models") if t in allowed]
            selected = kept + [t for t in ticked if t not in kept]
            state.update(selected=selected, extra=request.POST.get("extra_models", "")[:20000],
                         test_after=bool(request.POST.get("test_after")))
            self._save(request, state)
            navigation = self._navigation(request, q)
            if navigation is not None:
                return navigation
            form = WizardModelsForm(request.POST, **form_kwargs)
            if form.is_valid():
                response = self._create(request, state, spec, tenant, form, shared_with)
                if response is not None:
                    return response
        else:
            form = WizardModelsForm(initial={"extra_models": state.get("extra", ""),
                                             "test_after": state.get("test_after", True)}, **form_kwargs)
        return self._render(request, "models.html", 3, {
            "form": form, "spec": spec, "tenant": tenant, "state": state, "source": source, "q": q, "page": page,
            "shared_with": shared_with,
            "selected": selected, "checked": set(selected),
            "selected_elsewhere": [s for s in selected if s not in {o.model_id for o in page}],
        })

    def _navigation(self, request, q: str):
        """Back, search, another page or a fresh model list: a redirect once the selection is saved."""
        post = request.POST
        if "_back" in post:
            return HttpResponseRedirect(self._url("wizard_credentials"))
        if "_search" in post:
            return HttpResponseRedirect(self._url("wizard_models", q=(post.get("q") or "").strip()[:100]))
        if "_page" in post:
            return HttpResponseRedirect(self._url("wizard_models", q=q, page=post["_page"][:6]))
        if "_refresh" in post:
            state = self._state(request)
            state.pop("discovered", None)
            self._save(request, state)
            return HttpResponseRedirect(self._url("wizard_models", q=q))
        return None

    def _model_source(self, request, state: dict, spec: ProviderTypeSpec) -> ModelSource:
        """The server's own model list when the type offers one and a base URL is known, else the registry."""
        if spec.models_entered_by_deployment:
            return ModelSource([], "Enter the deployment names below.")
        known = {m.model_id: m for m in spec.known_models()}
        registry = ModelSource([ModelOption(m.model_id, m) for m in known.values()],
                               f"Models LiteLLM's registry knows for {spec.label}.")
        base_url = state.get("base_url") or spec.default_base_url
        if not (spec.lists_models and base_url):
            return registry
        found = state.get("discovered")
        if not found or found.get("url") != base_url:
            found = {"url": base_url, **self._discover(state, spec, base_url)}
            state["discovered"] = found
            self._save(request, state)
        if found["ids"]:
            return ModelSource([ModelOption(i, known.get(i)) for i in found["ids"]],
                               f"Models listed by the server at {base_url}.")
        return ModelSource(registry.options, registry.description, found["error"])

    @staticmethod
    def _keep_settings(state: dict, spec: ProviderTypeSpec, values: dict) -> None:
        """The type's settings between steps: the non-secret ones as they are, the secret ones only encrypted."""
        secret = {f.name for f in spec.fields if f.secret}
        state["settings"] = {k: v for k, v in values.items() if k not in secret}
        hidden = {k: v for k, v in values.items() if k in secret}
        state["sealed_settings"] = crypto.encrypt(json.dumps(hidden)) if hidden else ""

    @staticmethod
    def _settings(state: dict) -> dict:
        try:
            hidden = json.loads(crypto.decrypt(state["sealed_settings"])) if state.get("sealed_settings") else {}
        except crypto.DecryptionError:
            hidden = {}  # entered again on step 2
        return {**(state.get("settings") or {}), **hidden}

    @staticmethod
    def _discover(state: dict, spec: ProviderTypeSpec, base_url: str) -> dict:
        try:
            api_key = crypto.decrypt(state["sealed_key"]) if state.get("sealed_key") else ""
        except crypto.DecryptionError:
            return {"ids": [], "error": "The entered key cannot be read any more: go back and enter it again."}
        result = discover_model_ids(provider_type=spec.key, base_url=base_url, api_key=api_key,
                                    tenant_controlled=bool(state.get("tenant")))
        return {"ids": list(result.ids), "error": result.error}

    def _create(self, request, state: dict, spec: ProviderTypeSpec, tenant, form, shared_with):
        model_ids = list(dict.fromkeys(state.get("selected", []) + form.cleaned_data["extra_models"]))
        try:
            provider = services.provider_create(
                actor=actor_for(request), tenant=tenant, owner=request.user, name=state["name"],
                provider_type=spec.key, base_url=state.get("base_url", ""), api_version=state.get("api_version", ""),
                instance_wide=bool(state.get("instance_wide")) and tenant is None,
                sealed_api_key=Sealed(state["sealed_key"]) if state.get("sealed_key") else None,
                config=self._settings(state),
                key_label=state.get("key_label", ""), models=[{"model_id": m} for m in model_ids],
                enable_for_tenants=shared_with,
            )
        except (ValidationError, services.Conflict) as exc:
            form.add_error(None, f"{error_text(exc)} Nothing was saved; go back to change the connection if needed.")
            return None
        self._clear(request)
        self.model_admin.log_addition(request, provider, [{"added": {}}])
        shared = f", enabled for {', '.join(t.name for t in shared_with)}" if shared_with and model_ids else ""
        messages.success(request, f"The provider “{provider}” was added with {len(model_ids)} model(s){shared}.")
        if form.cleaned_data["test_after"]:
            outcome = run_provider_test(provider, request)
            messages.add_message(request, outcome.level,
                                 f"Connection test: {outcome.message}")
        return HttpResponseRedirect(reverse("admin:providers_provider_change", args=[provider.pk]))
