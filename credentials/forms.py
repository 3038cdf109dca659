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
