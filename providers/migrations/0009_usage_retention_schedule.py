"""Default schedule for deleting expired raw usage records (django-celery-beat, editable in admin).

Like 0003: created here rather than in CELERY_BEAT_SCHEDULE so that an operator's edits in admin stay; an existing
entry with this name is left as it is.
"""
from django.db import migrations

NAME = "Usage retention (hourly)"


def create(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    if PeriodicTask.objects.filter(name=NAME).exists():
        return
    # Raw usage records older than USAGE_RETENTION_DAYS deleted in small batches, hourly at :17 (server time zone).
    crontab, _ = CrontabSchedule.objects.get_or_create(minute="17", hour="*", day_of_week="*", day_of_month="*",
                                                       month_of_year="*")
    PeriodicTask.objects.create(name=NAME, task="providers.tasks.usage_retention_run", crontab=crontab, enabled=True,
                                description="Created by the providers app; edit or disable it here.")


def remove(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("providers", "0008_usage_hourly"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create, remove)]
