"""Celery beat schedules (django-celery-beat) in admin, with every change written to the audit log."""
from django.contrib import admin
from django_celery_beat.admin import PeriodicTaskAdmin as BasePeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from tenants.actors import Actor
from tenants.services import audit_record

AUDITED_FIELDS = ("name", "task", "enabled", "interval_id", "crontab_id", "one_off", "start_time", "expires")


def _view(obj) -> dict:
    return {f: str(getattr(obj, f)) if getattr(obj, f) is not None else None for f in AUDITED_FIELDS}


class PeriodicTaskAdmin(BasePeriodicTaskAdmin):
    def save_model(self, request, obj, form, change):
        before = _view(PeriodicTask.objects.get(pk=obj.pk)) if change else None
        super().save_model(request, obj, form, change)
        after = _view(obj)
        changes = {k: [before[k], v] for k, v in after.items() if before[k] != v} if before else {"after": after}
        audit_record(actor=Actor.from_request(request, source="admin"),
                     action="schedule.update" if change else "schedule.create", target=obj, changes=changes)

    def delete_model(self, request, obj):
        view, pk = _view(obj), obj.pk
        super().delete_model(request, obj)
        obj.pk = pk
        audit_record(actor=Actor.from_request(request, source="admin"), action="schedule.delete", target=obj,
                     changes={"before": view})

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)

    def _audit_enabled(self, request, queryset, action_name):
        before = {t.pk: t.enabled for t in queryset}
        getattr(super(), action_name)(request, queryset)
        actor = Actor.from_request(request, source="admin")
        for task in PeriodicTask.objects.filter(pk__in=before):
            if task.enabled != before[task.pk]:
                audit_record(actor=actor, action="schedule.update", target=task,
                             changes={"enabled": [before[task.pk], task.enabled]})

    @admin.action(description="Enable selected tasks")
    def enable_tasks(self, request, queryset):
        self._audit_enabled(request, queryset, "enable_tasks")

    @admin.action(description="Disable selected tasks")
    def disable_tasks(self, request, queryset):
        self._audit_enabled(request, queryset, "disable_tasks")

    @admin.action(description="Toggle activity of selected tasks")
    def toggle_tasks(self, request, queryset):
        self._audit_enabled(request, queryset, "toggle_tasks")


admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, PeriodicTaskAdmin)
