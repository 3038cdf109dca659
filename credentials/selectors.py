from __future__ import annotations

from tenants.models import Tenant

from .models import TenantCredential


def credential_list(*, tenant: Tenant):
    return TenantCredential.objects.filter(tenant=tenant).order_by("provider_type")


def credential_settings(cred: TenantCredential) -> dict:
    """The credential's stored settings, decrypted (for its admin form and the non-secret view); {} if unreadable."""
    from . import crypto

    try:
        value = cred.extra.reveal() if cred.extra is not None else {}
    except crypto.DecryptionError:
        return {}
    return value if isinstance(value, dict) else {}


def credential_public_settings(cred: TenantCredential) -> tuple[dict, list[str]]:
    """(non-secret settings with their values, names of the secret settings that are set)."""
    from .provider_rules import setting_fields

    known = setting_fields(cred.provider_type)
    shown, hidden = {}, []
    for name, value in credential_settings(cred).items():
        spec = known.get(name)
        if spec is None or value in (None, ""):
            continue
        if spec.secret:
            hidden.append(name)
        else:
            shown[name] = value
    return shown, sorted(hidden)
