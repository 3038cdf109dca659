"""Shared pieces of the providers admin: who is asking, object-level checks, secret lookups, service errors.

STYLE.md 8.2/8.3: querysets come from providers.selectors (the one permission filter) and every object is
checked with provider_can/model_can; the model-level Django permission is only the gate into the admin.
"""
from __future__ import annotations

from functools import wraps

from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.timesince import timesince
from django.views.decorators.debug import sensitive_post_parameters

from tenants.actors import Actor
from tenants.admin import NotFoundOutsideScopeMixin

from providers.selectors import Principal
from providers.services import Conflict

# Encrypted columns (and the API-key digest): never filterable, sortable or searchable from the admin.
SECRET_FIELD_NAMES = frozenset({"config", "secret", "model_config", "digest"})

HEALTH_COLOURS = {"healthy": "#2e7d32", "degraded": "#e65100", "down": "#c62828", "unknown": "#757575"}


def principal_for(request) -> Principal:
    principal = getattr(request, "_providers_principal", None)
    if principal is None:
        principal = request._providers_principal = Principal.for_user(request.user)
    return principal


def actor_for(request) -> Actor:
    return Actor.from_request(request, source="admin")


def error_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc)


def add_service_errors(form, exc: ValidationError, field_map: dict | None = None) -> None:
    """Put a service's ValidationError on the form: on the matching field when the form has it."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for field, errors in exc.message_dict.items():
        target = (field_map or {}).get(field, field)
        for message in errors:
            form.add_error(target if target in form.fields else None, message)


def when(moment) -> str:
    if moment is None:
        return ""
    return format_html('<span title="{}">{} ago</span>', date_format(timezone.localtime(moment), "DATETIME_FORMAT"),
                       timesince(moment))


def health_badge(status: str, label: str, latency_ms=None, checked_at=None) -> str:
    parts = [format_html('<strong style="color:{}">&#9679; {}</strong>', HEALTH_COLOURS.get(status, "#757575"), label)]
    if latency_ms is not None:
        parts.append(format_html("{} ms", latency_ms))
    if checked_at is not None:
        parts.append(when(checked_at))
    return format_html(" &middot; ".join(["{}"] * len(parts)), *parts)


def object_post_view(action: str):
    """Decorate a ScopedAdminMixin view that acts on one object by POST: `view(self, request, obj)`.

    The object is looked up first, so one the user may not see is a 404 whatever the method (like an id that never
    existed); then another method is a 405 and a missing object permission a 403.
    """
    def decorate(view):
        @wraps(view)
        def wrapper(model_admin, request, object_id):
            obj = model_admin.get_scoped_object(request, unquote(object_id))
            if request.method != "POST":
                return HttpResponseNotAllowed(["POST"])
            if not model_admin.can(request, obj, action):
                raise PermissionDenied
            return view(model_admin, request, obj)
        return wrapper
    return decorate


class ScopedAdminMixin(NotFoundOutsideScopeMixin):
    """A ModelAdmin whose objects are filtered by the selectors and checked one by one.

    Subclasses implement `object_allowed(principal, obj, action)` (provider_can / model_can). An object outside
    the user's view is a 404, like one that never existed (NotFoundOutsideScopeMixin).
    """

    def object_allowed(self, principal, obj, action: str) -> bool:
        raise NotImplementedError

    def can(self, request, obj, action: str) -> bool:
        """Memoised per request: a change page asks the same question for the form and every inline."""
        cache = request.__dict__.setdefault("_providers_can", {})
        key = (obj._meta.label, obj.pk, action)
        if key not in cache:
            cache[key] = self.object_allowed(principal_for(request), obj, action)
        return cache[key]

    def has_gate(self, request) -> bool:
        """The model-level Django permission (view or change) every non-superuser needs to get in at all."""
        return super().has_view_permission(request)

    def has_view_permission(self, request, obj=None):
        return self.has_gate(request)  # which objects: get_queryset (a hidden one is a 404)

    def has_change_permission(self, request, obj=None):
        return self.has_gate(request) and (obj is None or self.can(request, obj, "change"))

    def has_delete_permission(self, request, obj=None):
        return self.has_gate(request) and (obj is None or self.can(request, obj, "delete"))

    def get_scoped_object(self, request, object_id):
        try:
            return self.get_object(request, object_id)
        except (ValueError, ValidationError):
            raise Http404(f"No {self.opts.verbose_name} with this id.") from None

    def lookup_allowed(self, lookup, value, request=None):
        if any(part in SECRET_FIELD_NAMES for part in lookup.split("__")):
            return False
        return super().lookup_allowed(lookup, value, request)

    @method_decorator(sensitive_post_parameters())
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # Forms validate first; a service error that still happens (e.g. a concurrent duplicate) is shown,
        # never a 500. The admin's transaction has been rolled back by then.
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except (ValidationError, Conflict) as exc:
            self.message_user(request, error_text(exc), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
