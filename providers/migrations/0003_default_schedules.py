"""Default Celery beat schedules (django-celery-beat, editable in admin: Periodic tasks).

Created here rather than in CELERY_BEAT_SCHEDULE: beat re-applies settings entries at every start, which would
undo an operator's edits in admin. Existing entries with these names are left as they are.
"""
from django.db import migrations

SCHEDULES = [
    # Health checks of every active provider, every 5 minutes.
    ("Provider health checks (every 5 minutes)", "providers.tasks.health_checks_run", {"every": 5, "period": "minutes"}, None),
    # Model discovery of providers whose servers list their models, daily at 03:15 (server time zone).
    ("Model discovery (daily)", "providers.tasks.discovery_run_all", None, {"minute": "15", "hour": "3"}),
]


def create(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    for name, task, interval, crontab in SCHEDULES:
        if PeriodicTask.objects.filter(name=name).exists():
            continue
        fields = {"name": name, "task": task, "enabled": True,
                  "description": "Created by the providers app; edit or disable it here."}
        if interval:
            fields["interval"], _ = IntervalSchedule.objects.get_or_create(**interval)
        else:
            fields["crontab"], _ = CrontabSchedule.objects.get_or_create(
                minute=crontab["minute"], hour=crontab["hour"], day_of_week="*", day_of_month="*",
                month_of_year="*")
        PeriodicTask.objects.create(**fields)


def remove(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name__in=[s[0] for s in SCHEDULES]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("providers", "0002_usagerecord"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create, remove)]
