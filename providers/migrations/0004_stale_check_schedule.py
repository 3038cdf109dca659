"""Default schedule for expiring checks whose worker stopped (django-celery-beat, editable in admin).

Like 0003: created here rather than in CELERY_BEAT_SCHEDULE so that an operator's edits in admin stay; an existing
entry with this name is left as it is.
"""
from django.db import migrations

NAME = "Expire stale checks (every minute)"


def create(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    if PeriodicTask.objects.filter(name=NAME).exists():
        return
    # Checks still queued or running after CHECK_STALE_SECONDS are marked failed, every minute.
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=1, period="minutes")
    PeriodicTask.objects.create(name=NAME, task="providers.tasks.check_expire_stale", interval=every_minute,
                                enabled=True, description="Created by the providers app; edit or disable it here.")


def remove(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("providers", "0003_default_schedules"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create, remove)]
