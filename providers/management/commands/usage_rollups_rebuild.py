"""manage.py usage_rollups_rebuild [--since ISO] [--until ISO] [--chunk-hours N]"""
from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime
from django.utils import timezone

from providers.rollups import rollups_rebuild


def _moment(value: str | None, name: str):
    if value is None:
        return None
    moment = parse_datetime(value)
    if moment is None:
        raise CommandError(f"--{name}: not an ISO 8601 date and time: {value[:40]!r}")
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


class Command(BaseCommand):
    help = ("(Re)build the hourly usage roll-ups from the raw usage records of a time range (whole hours; default: "
            "from the oldest record to now), a chunk of hours per transaction. For records written before the "
            "roll-ups existed, or after a manual change to the ledger. Hours retention has reached are left as "
            "they are (their raw records are gone).")

    def add_arguments(self, parser):
        parser.add_argument("--since", help="From this time (ISO 8601, inclusive; naive = the server's time zone).")
        parser.add_argument("--until", help="Up to this time (exclusive).")
        parser.add_argument("--chunk-hours", type=int, default=24, help="Hours per transaction (default 24).")

    def handle(self, *args, since=None, until=None, chunk_hours=24, **options):
        if chunk_hours < 1:
            raise CommandError("--chunk-hours: at least 1.")
        done = rollups_rebuild(since=_moment(since, "since"), until=_moment(until, "until"), chunk_hours=chunk_hours)
        self.stdout.write(f"Rebuilt {done['hours']} hour(s) from {done['since']:%Y-%m-%d %H:00} to "
                          f"{done['until']:%Y-%m-%d %H:00} UTC: {done['rows']} roll-up row(s).")
