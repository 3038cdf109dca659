"""Forms of the providers admin. Secrets are write-only: password inputs that never render a value, where a
blank field keeps what is stored (STYLE.md 8.8). Validation runs here, before the services are called (8.1)."""
from __future__ import annotations

import copy

from django import forms
from django.core.exceptions import ValidationError

from credentials.forms import SETTING_PREFIX, SecretJSONField, settings_form_fields, settings_form_value
from tenants.models import Tenant

from providers import services
from providers.choices import AclRole
from providers.models import AIModel, Provider, ProviderKey
from providers.provider_types import ProviderTypeSpec, all_specs
from providers.admin.base import add_service_errors

KEEP = ...  # "leave the stored secret as it is" (what services.provider_update/model_update expect)

CAPABILITY_LABELS = {
    "system_prompt": "System prompt", "json_mode": "JSON mode", "reasoning": "Reasoning",
    "vision": "Vision (images)", "tools": "Tools / function calling", "streaming": "Streaming",
}

# Help for fields whose model field has none, and for read-only display columns.
PROVIDER_HELP = {
    "health": "Result, latency and time of the last connectivity test or health check.",
    "created_at": "When the provider was added.",
    "updated_at": "When the provider was last changed.",
    "model_count": "Number of models of this provider.",
    "active_key": "The key calls use: the newest active one, shown as ...last4.",
}
KEY_HELP = {
    "masked": "The stored key, shown only as ...last4.",
    "created_at": "When the key was added.",
    "last_used_at": "When a call last used this key.",
}
MODEL_HELP = {
    "model_type": "Inference (chat), embedding or rerank; decides how the model is called and validated.",
    "status": "Inactive models are not offered to callers.",
    "max_output_tokens": "Max tokens the model may generate (filled from LiteLLM's registry when known).",
    "supports_vision": "Accepts images.",
    "supports_tools": "Supports tool / function calling.",
    "supports_reasoning": "A reasoning model (health probes allow it more tokens).",
    "supports_json_mode": "Supports structured (JSON schema) output.",
    "supports_system_prompt": "Accepts a system message.",
    "supports_streaming": "Can stream its answer.",
    "drop_unsupported_params": "Off (default): a request with a parameter this model does not support (e.g. n=2 on "
                               "Anthropic, seed, logprobs) is refused with 400 naming it. On: such parameters are "
                               "dropped and the call goes ahead.",
    "created_at": "When the model was added.",
    "updated_at": "When the model was last changed.",
    "validate": "Run a tiny real call with exactly this model and record the result.",
    "enabled_tenants": "Tenants that may use this instance-level model (action 'Enable for a tenant...').",
    "provider_status": "Models of an inactive provider are not offered to callers.",
    "flags": "Capabilities from LiteLLM's registry (editable on the model).",
}


def secret_json_fields(label: str, what: str) -> tuple[SecretJSONField, forms.BooleanField]:
    """The write-only input for an encrypted JSON column, and the box that removes the stored value."""
    return (
        SecretJSONField(label=label, help_text=f"{what} (a JSON object), stored encrypted and never shown again. "
                                               "Leave blank to keep what is stored."),
        forms.BooleanField(required=False, label="Remove the stored value", help_text="Delete what is stored."),
    )


def secret_json_value(form, field: str, clear_field: str):
    """KEEP unless a new object was typed or the clear box ticked (then None)."""
    if form.cleaned_data.get(clear_field):
        return None
    value = form.cleaned_data.get(field)
    return KEEP if value is None else value


def check_name_free(form, candidate: Provider) -> None:
    """Names are unique per tenant and among instance-level providers: say so in words, on the name field."""
    try:
        candidate.validate_constraints()
    except ValidationError:
        where = "in this tenant" if candidate.tenant_id else "at instance level"
        form.add_error("name", f"A provider named '{candidate.name}' already exists {where}.")


# --- Provider change page --------------------------------------------------------------------------------

class ProviderChangeForm(forms.ModelForm):
    capability_flags = forms.MultipleChoiceField(
        label="Capabilities", required=False, widget=forms.CheckboxSelectMultiple,
        choices=[(flag, CAPABILITY_LABELS[flag]) for flag in services.CAPABILITY_FLAGS],
        help_text="What the provider's API supports. Each model has its own flags as well.",
    )
    base_url = forms.CharField(required=False, max_length=500, label="Base URL",  # checked by the service rules
                               help_text=Provider._meta.get_field("base_url").help_text)

    class Meta:
        model = Provider
        fields = ("name", "status", "instance_wide", "base_url", "api_version", "rpm", "tpm", "max_concurrency")
        help_texts = PROVIDER_HELP
        labels = {"api_version": "API version", "rpm": "Requests per minute", "tpm": "Tokens per minute",
                  "instance_wide": "Instance-wide"}

    actor = None  # set per request by the admin (get_form): who sets operator-only settings matters
    settings_stored: dict = {}  # the provider's settings when the form was built (get_form)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        caps = self.instance.capabilities or {}
        self.fields["capability_flags"].initial = [flag for flag, on in caps.items() if on]

    def clean(self):
        data = super().clean()
        candidate = copy.copy(self.instance)
        for name in ("name", "status", "instance_wide", "base_url", "api_version"):
            if name in data:
                setattr(candidate, name, data[name])
        try:
            services.provider_validate(candidate, actor=self.actor, config=self.config_value())
        except ValidationError as exc:
            add_service_errors(self, exc, {f"config.{n}": SETTING_PREFIX + n for n in self.setting_names()})
            return data
        if "base_url" in data:
            data["base_url"] = candidate.base_url
        if "name" in data:
            check_name_free(self, candidate)
        return data

    def capabilities_value(self) -> dict:
        chosen = set(self.cleaned_data.get("capability_flags") or ())
        return {flag: flag in chosen for flag in services.CAPABILITY_FLAGS}

    def setting_names(self):
        return [n[len(SETTING_PREFIX):] for n in self.fields if n.startswith(SETTING_PREFIX)]

    def config_value(self):
        """The type's settings as entered (a blank secret keeps the stored one)."""
        return settings_form_value(self.cleaned_data, self.instance.provider_type, self.settings_stored)


class ProviderKeyInlineForm(forms.ModelForm):
    new_secret = forms.CharField(
        label="Key", required=False, strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password", "size": 24}),
        help_text="Write-only; only on a new row. Stored encrypted, shown as ...last4. Rotation: add the new key, "
                  "test the connection, then untick 'active' on the old one.",
    )

    class Meta:
        model = ProviderKey
        fields = ("label", "new_secret", "is_active")
        help_texts = KEY_HELP
        labels = {"is_active": "Active"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["new_secret"].disabled = True
            self.fields["new_secret"].widget.attrs["placeholder"] = "stored"

    def clean(self):
        data = super().clean()
        if not self.instance.pk and not data.get("DELETE") and not data.get("new_secret"):
            self.add_error("new_secret", "Paste the new key (or leave the whole row empty).")
        return data


class AIModelInlineForm(forms.ModelForm):
    class Meta:
        model = AIModel
        fields = ("model_id", "display_label", "alias", "model_type", "status", "instance_wide", "context_window",
                  "input_cost_per_million", "output_cost_per_million")
        help_texts = MODEL_HELP


# --- AI model admin -----------------------------------------------------------------------------------

class AIModelChangeForm(forms.ModelForm):
    model_config_input, clear_model_config = secret_json_fields("Model config (JSON)",
                                                              "Extra parameters sent with each call")

    class Meta:
        model = AIModel
        fields = services.MODEL_FIELDS
        help_texts = MODEL_HELP

    def config_value(self):
        return secret_json_value(self, "model_config_input", "clear_model_config")


class AIModelAddForm(AIModelChangeForm):
    provider_allowed = None  # set by the admin: callable(provider) -> may the user add models to it

    class Meta(AIModelChangeForm.Meta):
        fields = ("provider", *services.MODEL_FIELDS)
        help_texts = {**MODEL_HELP, "provider": "The provider serving this model (one you may change)."}

    def clean_provider(self):
        provider = self.cleaned_data["provider"]
        if self.provider_allowed is not None and not self.provider_allowed(provider):
            raise ValidationError("You may not add models to this provider.")
        return provider


# --- Sharing and tenant enablement (intermediate pages) ----------------------------------------------

class GranteeForm(forms.Form):
    user = forms.ModelChoiceField(queryset=None, required=False,
                                  help_text="A user. For a tenant's object: a member of that tenant.")
    group = forms.ModelChoiceField(queryset=None, required=False,
                                   help_text="Or a group (for a tenant's object, all its members must belong to it).")

    def __init__(self, *args, users, groups, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["user"].queryset = users
        self.fields["group"].queryset = groups

    def clean(self):
        data = super().clean()
        if bool(data.get("user")) == bool(data.get("group")):
            raise ValidationError("Choose either a user or a group.")
        return data

    @property
    def grantee(self):
        return self.cleaned_data.get("user") or self.cleaned_data.get("group")


class GrantForm(GranteeForm):
    role = forms.ChoiceField(choices=AclRole.choices, initial=AclRole.VIEWER,
                             help_text="Viewer: may see and use. Editor: may also change. Manager: may also share. "
                                       "Owner: may also delete. Replaces any role the grantee had.")


class TenantEnablementForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=None, help_text="The tenant whose users and API keys may use the models.")
    enabled = forms.TypedChoiceField(
        choices=[("1", "Enable"), ("0", "Disable")], coerce=lambda v: v == "1", initial="1",
        widget=forms.RadioSelect, help_text="Enable = the tenant may use the selected instance-level models.")

    def __init__(self, *args, tenants, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tenant"].queryset = tenants


# --- Add-provider wizard ----------------------------------------------------------------------------------

class WizardTypeForm(forms.Form):
    provider_type = forms.ChoiceField(help_text="The LiteLLM provider type: decides the fields and models below.")
    tenant = forms.ModelChoiceField(
        queryset=Tenant.objects.none(), label="Owning tenant",
        help_text="The tenant that owns the provider: its users and API keys may use its models at once; nobody "
                  "outside it ever sees it.",
    )
    shared_with = forms.ModelMultipleChoiceField(
        queryset=Tenant.objects.none(), required=False, label="Shared with tenants",
        widget=forms.CheckboxSelectMultiple,
        help_text="Only for an instance-level provider: the tenants whose users and API keys may use the models you "
                  "pick in step 3 (enabled when the provider is saved; change later with the AI models action "
                  "'Enable for a tenant...'). None ticked: nobody may call them until you enable them.",
    )

    def __init__(self, *args, tenants, allow_instance_level: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["provider_type"].choices = [(s.key, s.label) for s in all_specs()]
        self.fields["tenant"].queryset = tenants
        if allow_instance_level:
            self.fields["tenant"].required = False
            self.fields["tenant"].empty_label = "(none: an instance-level provider)"
            self.fields["tenant"].help_text += (" Leave empty for an instance-level provider managed by sysadmins, "
                                                "and pick below which tenants may use it.")
            self.fields["shared_with"].queryset = tenants
        else:
            del self.fields["shared_with"]  # sharing across tenants is for instance-level providers (sysadmins)

    def clean(self):
        data = super().clean()
        if data.get("tenant") and data.get("shared_with"):
            self.add_error("shared_with", "A tenant's own provider is not shared with other tenants: leave the "
                                          "owning tenant empty (instance level) to share it, or untick these.")
        return data


class WizardCredentialsForm(forms.Form):
    name = forms.CharField(max_length=200, help_text=Provider._meta.get_field("name").help_text)

    def __init__(self, *args, spec: ProviderTypeSpec, tenant, key_stored: bool, actor=None, settings_stored=None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.spec, self.tenant, self.actor, self.settings_stored = spec, tenant, actor, settings_stored or {}
        for field in spec.fields:
            if field.is_setting:
                continue
            if field.secret:
                help_text = field.help + (" A key is already entered: leave blank to keep it." if key_stored else "")
                self.fields[field.name] = forms.CharField(
                    label=field.label, required=field.required and not key_stored, strip=True, help_text=help_text,
                    widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}))
            else:
                self.fields[field.name] = forms.CharField(label=field.label, required=field.required, max_length=500,
                                                          help_text=field.help)
        if "base_url" in self.fields and spec.default_base_url:
            self.fields["base_url"].initial = spec.default_base_url
        if "api_key" in self.fields:
            self.fields["key_label"] = forms.CharField(
                label="Key label", required=False, max_length=100,
                help_text=ProviderKey._meta.get_field("label").help_text)
        self.fields.update(settings_form_fields(spec.key, stored=self.settings_stored))
        if tenant is None:
            self.fields["instance_wide"] = forms.BooleanField(
                required=False, help_text=Provider._meta.get_field("instance_wide").help_text)

    def settings_value(self) -> dict:
        return settings_form_value(self.cleaned_data, self.spec.key, self.settings_stored)

    def clean(self):
        data = super().clean()
        if "name" not in data:
            return data
        candidate = Provider(tenant=self.tenant, name=data["name"].strip(), provider_type=self.spec.key,
                             base_url=data.get("base_url") or "", api_version=data.get("api_version") or "",
                             instance_wide=bool(data.get("instance_wide")))
        try:
            data["settings"] = services.provider_validate(candidate, actor=self.actor, config=self.settings_value())
        except ValidationError as exc:
            add_service_errors(self, exc, {f"config.{f.name}": SETTING_PREFIX + f.name for f in self.spec.fields})
            return data
        data["name"], data["base_url"] = candidate.name, candidate.base_url
        check_name_free(self, candidate)
        return data


class WizardModelsForm(forms.Form):
    models = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple,
        help_text="Models to add now. Context window, flags and prices come from LiteLLM's registry.")
    extra_models = forms.CharField(
        label="More model ids", required=False, widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        help_text="One model id per line, for models not listed above.")
    test_after = forms.BooleanField(
        required=False, label="Test the connection after saving",
        help_text="A 1-token call with the new key; the result is shown on the provider's page.")

    MAX_EXTRA = 500

    def __init__(self, *args, choices, deployments: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["models"].choices = [(c, c) for c in choices]
        if deployments:
            self.fields["extra_models"].label = "Deployment names"
            self.fields["extra_models"].help_text = ("One Azure deployment name per line: each becomes a model "
                                                     "(Azure's model list is not its deployment list).")

    def clean_extra_models(self) -> list[str]:
        ids = []
        for number, line in enumerate((self.cleaned_data.get("extra_models") or "").splitlines(), 1):
            value = line.strip()
            if not value:
                continue
            if len(value) > 200 or any(ch.isspace() for ch in value):
                raise ValidationError(f"Line {number} is not a model id (no spaces, at most 200 characters).")
            if value not in ids:
                ids.append(value)
        if len(ids) > self.MAX_EXTRA:
            raise ValidationError(f"At most {self.MAX_EXTRA} model ids at once.")
        return ids
