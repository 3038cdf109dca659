"""Encrypted model fields.

A loaded row holds a `Sealed` value: the stored ciphertext, opened only when `.reveal()` is called.
So listing, deleting or rotating rows never needs the plaintext, a row whose value no key opens can still
be shown ("cannot be decrypted") and deleted, and plaintext is never kept on a model instance.

Assign a plain `str` (or, for the JSON field, any JSON value) to store a new secret: it is encrypted
on save. Fernet output differs on every encryption, so these columns cannot be filtered, indexed,
sorted or made unique: keep a separate plain column (last4, fingerprint) for that.
"""
from __future__ import annotations

import json

from django.db import models

from . import crypto


class Sealed:
    """A stored encrypted value. Its repr and str never show the plaintext."""

    __slots__ = ("stored", "is_json")

    def __init__(self, stored: str, *, is_json: bool = False):
        self.stored = stored
        self.is_json = is_json

    def reveal(self):
        text = crypto.decrypt(self.stored)
        return json.loads(text) if self.is_json else text

    @property
    def is_encrypted(self) -> bool:
        return crypto.is_encrypted(self.stored)

    def can_decrypt(self) -> bool:
        try:
            crypto.decrypt(self.stored)
            return True
        except crypto.DecryptionError:
            return False

    def __eq__(self, other):
        return isinstance(other, Sealed) and other.stored == self.stored

    def __hash__(self):
        return hash(self.stored)

    def __repr__(self):
        return "<Sealed secret>"

    __str__ = __repr__


class EncryptedTextField(models.TextField):
    description = "Text encrypted with Fernet (stored as enc:fernet:v1:<token>)"
    is_json = False

    def from_db_value(self, value, expression, connection):
        if value is None:
            return None
        return Sealed(value, is_json=self.is_json)

    def to_python(self, value):
        if value is None or isinstance(value, Sealed):
            return value
        if self.is_json:
            return value
        return str(value)

    def _serialise(self, value) -> str:
        return value if not self.is_json else json.dumps(value, separators=(",", ":"), sort_keys=True)

    def get_prep_value(self, value):
        if value is None:
            return None
        if isinstance(value, Sealed):
            return value.stored
        return crypto.encrypt(self._serialise(value))

    def value_to_string(self, obj):
        # dumpdata/serialisers: ciphertext only, never plaintext.
        value = self.value_from_object(obj)
        if value is None:
            return None
        return value.stored if isinstance(value, Sealed) else self.get_prep_value(value)

    def formfield(self, **kwargs):
        # Never render a stored secret into a form: admin forms declare their own write-only fields.
        return None


class EncryptedJSONField(EncryptedTextField):
    description = "JSON encrypted with Fernet (stored as enc:fernet:v1:<token>)"
    is_json = True


def encrypted_fields(model) -> list[EncryptedTextField]:
    return [f for f in model._meta.concrete_fields if isinstance(f, EncryptedTextField)]
