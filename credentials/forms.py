"""Form fields for secrets, shared by every admin that edits encrypted columns (STYLE.md 8.8)."""
import json

from django import forms
from django.core.exceptions import ValidationError


class SecretJSONField(forms.CharField):
    """A JSON object typed into a password input: never rendered back; blank = keep the stored value."""

    widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"})

    def __init__(self, **kwargs):
        super().__init__(required=False, strip=True, **kwargs)

    def to_python(self, value):
        value = super().to_python(value)
        if not value:
            return None
        try:
            parsed = json.loads(value)
        except ValueError:
            raise ValidationError("Not valid JSON.") from None
        if not isinstance(parsed, dict):
            raise ValidationError('Must be a JSON object, e.g. {"organization": "org-1"}.')
        return parsed


# --- A provider type's settings (credentials.provider_rules) as form fields --------------------------------------

SETTING_PREFIX = "setting__"


def settings_form_fields(provider_type: str, *, stored: dict | None = None) -> dict[str, forms.Field]:
    """One form field per setting of the type (AWS region and keys, Vertex project, ...), named setting__<name>.
    Secret ones are write-only (blank keeps what is stored); the others show their stored value."""
    from .provider_rules import type_fields

    stored = stored or {}
    out = {}
    for spec in type_fields(provider_type):
        if not spec.is_setting:
            continue
        kept = " Stored: leave blank to keep it." if spec.secret and stored.get(spec.name) else ""
        help_text = " ".join(filter(None, [spec.help or f"LiteLLM's {spec.name} setting, sent with every call.",
                                           "Write-only; stored encrypted." if spec.secret else "",
                                           "Sysadmins only, on instance-level providers." if spec.operator_only
                                           else ""])) + kept
        common = {"label": spec.label, "required": False, "help_text": help_text}
        if spec.kind == "select":
            field = forms.ChoiceField(choices=[("", "---------")] + [(o, o) for o in spec.options], **common)
        elif spec.kind in ("json", "file"):
            field = forms.CharField(widget=forms.Textarea(attrs={"rows": 4, "cols": 60, "autocomplete": "off"}),
                                    strip=True, **common)
        elif spec.secret:
            field = forms.CharField(widget=forms.PasswordInput(render_value=False,
                                                               attrs={"autocomplete": "new-password"}),
                                    strip=True, **common)
        else:
            field = forms.CharField(max_length=500, strip=True, **common)
        if not spec.secret:
            field.initial = stored.get(spec.name, spec.default or "")
        if spec.placeholder:
            field.widget.attrs["placeholder"] = spec.placeholder
        out[SETTING_PREFIX + spec.name] = field
    return out


def settings_form_value(cleaned_data: dict, provider_type: str, stored: dict | None = None) -> dict:
    """The settings a form holds: a blank secret keeps the stored one, a blank other setting removes it."""
    from .provider_rules import setting_fields

    stored = stored or {}
    values = {}
    for name, spec in setting_fields(provider_type).items():
        entered = cleaned_data.get(SETTING_PREFIX + name)
        if entered not in (None, ""):
            values[name] = entered
        elif spec.secret and stored.get(name) not in (None, ""):
            values[name] = stored[name]
    return values


def add_settings_errors(form, errors: dict) -> None:
    """Put the errors of check_settings ({"config.<name>": message}) on their form fields."""
    for path, message in errors.items():
        name = SETTING_PREFIX + path.split(".", 1)[-1]
        form.add_error(name if name in form.fields else None, message)


def settings_form_class(base, provider_type: str, stored: dict, *, readonly=()):
    """`base` with the type's settings as declared fields (an admin's get_form passes it as `form`; the declared
    fields it shows read-only are removed, as ModelAdmin.get_form does for its own form)."""
    attrs = {**settings_form_fields(provider_type, stored=stored), "settings_stored": stored}
    attrs.update(dict.fromkeys(f for f in readonly if f in base.declared_fields))
    return type(base.__name__, (base,), attrs)
