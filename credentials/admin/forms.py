from django import forms

from tenants.actors import SYSTEM
from django.core.exceptions import ValidationError

from ..forms import SETTING_PREFIX, SecretJSONField, settings_form_value
from ..models import TenantCredential
from ..provider_rules import (UnknownProviderType, normalise_provider_type, provider_types, requirements_for,
                              type_fields)
from ..services import endpoint_stays_approved, credential_check_input


def credential_columns(provider_type: str) -> tuple[str, ...]:
    """The credential's own fields (besides tenant, type and settings) that this provider type uses: the key when
    the type takes one, the endpoint always, API version and deployment only where the type has them."""
    names = {f.name for f in type_fields(provider_type)}
    req = requirements_for(provider_type)
    used = set(req.required) | {n for group in req.auth for n in group}
    columns = ["api_key_input"] if "api_key" in names | used else []
    columns.append("endpoint")
    columns += [c for c in ("api_version", "deployment_name") if c in names or c in used]
    return tuple(columns)


def column_labels(provider_type: str, *, change: bool) -> dict[str, str]:
    """Labels of the credential's fields for this type (the catalog's key label, e.g. "OpenAI API Key")."""
    key = next((f.label for f in type_fields(provider_type) if f.name == "api_key"), "API key")
    return {"api_key_input": f"New {key[:1].lower()}{key[1:]}" if change else key,
            "endpoint": "Endpoint (base URL)", "api_version": "API version", "deployment_name": "Deployment name"}


def make_labels_unique(form) -> None:
    """No two fields of the form share a label: a repeated one names its field."""
    seen = {}
    for name, field in form.fields.items():
        label = str(field.label or name.replace("_", " ").capitalize())
        if label.lower() in seen:
            field.label = f"{label} ({name.removeprefix(SETTING_PREFIX)})"
        seen.setdefault(str(field.label).lower(), name)


class CredentialTypeStepForm(forms.Form):
    """Step 1 of adding a credential (a GET form, so it works without JavaScript): the tenant and the type that
    decides the fields of step 2."""

    tenant = forms.ModelChoiceField(queryset=None, help_text="The tenant whose calls use this credential.")
    provider_type = forms.ChoiceField(choices=(), help_text="Every LiteLLM provider type. The next step shows the "
                                                            "fields this type takes.")

    def __init__(self, *args, tenants, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tenant"].queryset = tenants
        self.fields["provider_type"].choices = [("", "---------")] + [(p, p) for p in provider_types()]

    def clean_provider_type(self):
        try:
            return normalise_provider_type(self.cleaned_data["provider_type"])
        except UnknownProviderType as exc:
            raise ValidationError(str(exc)) from None


class TenantCredentialAdminForm(forms.ModelForm):
    actor = SYSTEM  # set per request by the admin (get_form)
    provider_type = forms.ChoiceField(
        choices=(),
        help_text="Every LiteLLM provider type. The fields below follow the type: azure needs endpoint, API version "
                  "and deployment; hosted_vllm may leave the endpoint empty to use VLLM_MODEL_URL.",
    )
    api_key_input = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Stored encrypted. On an existing credential, leave blank to keep the current key.",
    )
    extra_input = SecretJSONField(
        label="Settings (JSON)",
        help_text="The type's further settings as a JSON object, e.g. {\"aws_region_name\": \"eu-north-1\", "
                  "\"aws_access_key_id\": \"...\", \"aws_secret_access_key\": \"...\"} for bedrock. GET "
                  "/api/v1/provider-types/<type> lists them. Stored encrypted; after saving, each has a field of its "
                  "own on this page.",
    )
    clear_extra = forms.BooleanField(required=False, label="Clear settings",
                                     help_text="Remove all stored settings of this credential.")
    settings_stored: dict = {}  # the credential's settings when the form was built (change form, get_form)
    chosen_type: str = ""  # the type picked in step 1 of adding (get_form): its settings have fields of their own

    class Meta:
        model = TenantCredential
        fields = ("tenant", "provider_type", "endpoint", "api_version", "deployment_name")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        ptype = self.instance.provider_type if self.instance.pk else self.chosen_type
        if "provider_type" in self.fields:
            self.fields["provider_type"].choices = [("", "---------")] + [(p, p) for p in provider_types()]
            if self.chosen_type:  # fixed in step 2; "Change type" goes back to step 1
                self.fields["provider_type"].initial = self.chosen_type
                self.fields["provider_type"].disabled = True
        if ptype:
            for name, label in column_labels(ptype, change=bool(self.instance.pk)).items():
                if name in self.fields:
                    self.fields[name].label = label
        make_labels_unique(self)

    def clean_provider_type(self):
        try:
            return normalise_provider_type(self.cleaned_data["provider_type"])
        except UnknownProviderType as exc:
            raise ValidationError(str(exc)) from None

    def extra_value(self):
        if self.cleaned_data.get("clear_extra"):
            return None
        if self.instance.pk or self.chosen_type:  # the type's settings have fields of their own
            return settings_form_value(self.cleaned_data, self.instance.provider_type or self.chosen_type,
                                       self.settings_stored)
        return self.cleaned_data.get("extra_input")

    def clean(self):
        data = super().clean()
        ptype = self.instance.provider_type if self.instance.pk else (self.chosen_type or data.get("provider_type"))
        if not ptype:
            return data
        try:
            credential_check_input(
                provider_type=ptype,
                api_key=data.get("api_key_input"),
                endpoint=data.get("endpoint") or "",
                api_version=data.get("api_version") or "",
                deployment_name=data.get("deployment_name") or "",
                extra=self.extra_value(),
                key_optional=bool(self.instance.pk),
                tenant_controlled=not (self.actor.is_operator or endpoint_stays_approved(
                    self.instance if self.instance.pk else None, data.get("endpoint") or "")),
            )
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                target = {"api_key": "api_key_input"}.get(field, field)
                if field.startswith("extra."):
                    target = SETTING_PREFIX + field[6:] if self.instance.pk or self.chosen_type else "extra_input"
                if target not in self.fields:
                    target = None
                for message in messages:
                    self.add_error(target, message)
        return data

