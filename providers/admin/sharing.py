"""Sharing providers and models with users or groups: an intermediate page like the delete confirmation,
then services.acl_grant / acl_revoke per object the user may share (guardian object permissions)."""
from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from providers import services
from providers.selectors import acl_list, grantee_choices
from providers.admin.base import actor_for, error_text, principal_for
from providers.admin.forms import GranteeForm, GrantForm


def acl_response(model_admin, request, objects, *, revoke: bool, action_name: str | None = None):
    """The confirmation page (GET, or POST without 'apply'), or None once applied (the caller redirects)."""
    users, groups = grantee_choices(principal=principal_for(request))
    form_class = GranteeForm if revoke else GrantForm
    objects = list(objects)
    allowed = [obj for obj in objects if model_admin.can(request, obj, "share")]
    denied = [obj for obj in objects if obj not in allowed]
    if request.POST.get("apply"):
        form = form_class(request.POST, users=users, groups=groups)
        if form.is_valid():
            _apply(model_admin, request, allowed, denied, form, revoke)
            return None
    else:
        form = form_class(users=users, groups=groups)
    return intermediate_page(
        model_admin, request, form=form, allowed=allowed, denied=denied, action_name=action_name,
        title="Revoke access" if revoke else "Share with a user or group",
        intro=("Remove every permission the chosen user or group was granted on:" if revoke else
               "Give the chosen user or group a role on:"),
        submit_label="Revoke" if revoke else "Share",
    )


def intermediate_page(model_admin, request, *, form, allowed, denied, title, intro, submit_label, action_name=None):
    """The confirmation page between an action (or a button) and applying it, like delete_selected's."""
    return TemplateResponse(request, "admin/providers/intermediate_form.html", {
        **model_admin.admin_site.each_context(request),
        "title": title, "subtitle": None, "opts": model_admin.opts, "form": form, "intro": intro,
        "submit_label": submit_label, "allowed": allowed, "denied": denied, "action_name": action_name,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    })


def _apply(model_admin, request, allowed, denied, form, revoke: bool) -> None:
    actor, grantee = actor_for(request), form.grantee
    done, failed = [], []
    for obj in allowed:
        try:
            if revoke:
                services.acl_revoke(actor=actor, obj=obj, grantee=grantee)
            else:
                services.acl_grant(actor=actor, obj=obj, grantee=grantee, role=form.cleaned_data["role"])
            done.append(str(obj))
        except ValidationError as exc:
            failed.append(f"{obj}: {error_text(exc)}")
    if done:
        what = f"Revoked the access of {grantee} to" if revoke else \
            f"Gave {grantee} the role {form.cleaned_data['role']} on"
        model_admin.message_user(request, f"{what}: {', '.join(done)}.", messages.SUCCESS)
    for message in failed:
        model_admin.message_user(request, message, messages.ERROR)
    if denied:
        model_admin.message_user(request, f"You may not share: {', '.join(map(str, denied))}.", messages.WARNING)


class SharingAdminMixin:
    """Share/revoke actions on the list, and the same pages for one object from its change page."""

    def has_share_permission(self, request):
        return self.has_gate(request)  # each object is checked with provider_can/model_can(..., "share")

    def sharing_urls(self):
        wrap, info = self.admin_site.admin_view, (self.opts.app_label, self.opts.model_name)
        return [
            path("<path:object_id>/share/", wrap(self.share_view), name="%s_%s_share" % info),
            path("<path:object_id>/revoke/", wrap(self.revoke_view), name="%s_%s_revoke" % info),
        ]

    def sharing_context(self, request, obj) -> dict:
        """For the change page: current grants, and whether the user may change and share the object."""
        return {"grants": acl_list(obj=obj), "can_change": self.can(request, obj, "change"),
                "can_share": self.can(request, obj, "share")}

    def change_redirect(self, obj) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
                                            args=[obj.pk]))

    @admin.action(description="Share with a user or group…", permissions=("share",))
    def share_selected(self, request, queryset):
        return acl_response(self, request, queryset, revoke=False, action_name="share_selected")

    @admin.action(description="Revoke a user's or group's access…", permissions=("share",))
    def revoke_selected(self, request, queryset):
        return acl_response(self, request, queryset, revoke=True, action_name="revoke_selected")

    def share_view(self, request, object_id):
        obj = self.get_scoped_object(request, unquote(object_id))
        return acl_response(self, request, [obj], revoke=False) or self.change_redirect(obj)

    def revoke_view(self, request, object_id):
        obj = self.get_scoped_object(request, unquote(object_id))
        return acl_response(self, request, [obj], revoke=True) or self.change_redirect(obj)
