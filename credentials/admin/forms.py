from django import forms

from tenants.actors import SYSTEM
from django.core.exceptions import ValidationError

from ..forms import SETTING_PREFIX, SecretJSONField, settings_form_value
from ..models import TenantCredential
from ..provider_rules import UnknownProviderType, normalise_provider_type, provider_types, requirements_for
from ..services import endpoint_stays_approved, credential_check_input


def requirements_map() -> dict:
    """For the form's script: required/optional credential fields of every provider type."""
    out = {}
    for ptype in provider_types():
        req = requirements_for(ptype)
        out[ptype] = {"required": list(req.required), "optional": list(req.optional), "note": req.note,
                      "one_of": [list(group) for group in req.auth]}
    return out


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

    class Meta:
        model = TenantCredential
        fields = ("tenant", "provider_type", "endpoint", "api_version", "deployment_name")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "provider_type" in self.fields:
            self.fields["provider_type"].choices = [("", "---------")] + [(p, p) for p in provider_types()]

    def clean_provider_type(self):
        try:
            return normalise_provider_type(self.cleaned_data["provider_type"])
        except UnknownProviderType as exc:
            raise ValidationError(str(exc)) from None

    def extra_value(self):
        if self.cleaned_data.get("clear_extra"):
            return None
        if self.instance.pk:  # the type's settings have fields of their own
            return settings_form_value(self.cleaned_data, self.instance.provider_type, self.settings_stored)
        return self.cleaned_data.get("extra_input")

    def clean(self):
        data = super().clean()
        ptype = self.instance.provider_type if self.instance.pk else data.get("provider_type")
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
                    target = SETTING_PREFIX + field[6:] if self.instance.pk else "extra_input"
                if target not in self.fields:
                    target = None
                for message in messages:
                    self.add_error(target, message)
        return data

