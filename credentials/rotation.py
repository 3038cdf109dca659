"""Re-encrypt every encrypted column under the current ENCRYPTION_KEY, in batches.

Resumable: a value already under the primary key is skipped, each batch commits on its own, and a row is
only updated if its stored value is still the one that was read (a concurrent edit wins). A value that no
configured key opens is counted as failed and left untouched.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from django.apps import apps
from django.db import transaction

from . import crypto
from .fields import Sealed, encrypted_fields


@dataclass
class RotationReport:
    rotated: int = 0
    current: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    def merge_failure(self, label: str):
        self.failed += 1
        if len(self.failures) < 50:
            self.failures.append(label)


def encrypted_models():
    return [(m, encrypted_fields(m)) for m in apps.get_models() if encrypted_fields(m)]


def rotate_all(*, batch_size: int = 500, on_batch=None) -> RotationReport:
    report = RotationReport()
    for model, fields in encrypted_models():
        names = [f.attname for f in fields]
        last_pk = None
        while True:
            qs = model._base_manager.order_by("pk")
            if last_pk is not None:
                qs = qs.filter(pk__gt=last_pk)
            rows = list(qs.values_list("pk", *names)[:batch_size])
            if not rows:
                break
            with transaction.atomic():
                for pk, *values in rows:
                    _rotate_row(model, pk, names, values, report)
            last_pk = rows[-1][0]
            if on_batch is not None:
                on_batch(model, last_pk, report)
    return report


def _rotate_row(model, pk, names, values, report: RotationReport):
    for name, value in zip(names, values):
        if value is None:
            continue
        stored = value.stored if isinstance(value, Sealed) else value
        if crypto.is_current(stored):
            report.current += 1
            continue
        try:
            new = crypto.reencrypt(stored)
        except crypto.DecryptionError:
            report.merge_failure(f"{model._meta.label}#{pk}.{name}")
            continue
        updated = model._base_manager.filter(pk=pk, **{name: Sealed(stored)}).update(**{name: Sealed(new)})
        if updated:
            report.rotated += 1
        else:
            report.current += 1  # changed meanwhile: the new value was written under the current key
