"""Fernet encryption of stored secrets.

Stored format: ``enc:fernet:v1:<token>``. New values are encrypted with ENCRYPTION_KEY; ENCRYPTION_KEYS_OLD
still decrypt (MultiFernet) until `manage.py rotate_encryption_key` has re-encrypted every row.
Plaintext is never cached here: each `decrypt` call works from the stored token.
"""
from __future__ import annotations

import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.signals import setting_changed

PREFIX = "enc:fernet:v1:"


class DecryptionError(Exception):
    """A stored value that no configured key opens. The message never contains the value."""

    def __init__(self, message: str = "Failed to decrypt credential. Encryption key may be incorrect or data corrupted."):
        super().__init__(message)


def generate_key() -> str:
    return Fernet.generate_key().decode()


@functools.lru_cache(maxsize=1)
def _keys() -> tuple[Fernet, MultiFernet]:
    primary = Fernet(settings.ENCRYPTION_KEY)
    old = [Fernet(k) for k in settings.ENCRYPTION_KEYS_OLD if k and k != settings.ENCRYPTION_KEY]
    return primary, MultiFernet([primary, *old])


def _reset(**kwargs):
    if kwargs.get("setting") in {"ENCRYPTION_KEY", "ENCRYPTION_KEYS_OLD"}:
        _keys.cache_clear()


setting_changed.connect(_reset)


def is_encrypted(stored: str | None) -> bool:
    return bool(stored) and stored.startswith(PREFIX)


def encrypt(plaintext: str) -> str:
    _, multi = _keys()
    return PREFIX + multi.encrypt(plaintext.encode()).decode()


def decrypt(stored: str) -> str:
    """Return the plaintext of a stored value. Legacy values without the prefix are plaintext."""
    if not is_encrypted(stored):
        return stored
    _, multi = _keys()
    try:
        return multi.decrypt(stored[len(PREFIX):].encode()).decode()
    except (InvalidToken, ValueError, UnicodeDecodeError):
        raise DecryptionError() from None


def is_current(stored: str) -> bool:
    """True when the value is encrypted with the primary key (nothing to rotate)."""
    primary, _ = _keys()
    if not is_encrypted(stored):
        return False
    try:
        primary.decrypt(stored[len(PREFIX):].encode())
        return True
    except (InvalidToken, ValueError):
        return False


def reencrypt(stored: str) -> str:
    """Re-encrypt a stored value under the primary key (plaintext values get encrypted).

    Raises DecryptionError when no key opens it; the caller must then leave the row untouched.
    """
    if not is_encrypted(stored):
        return encrypt(stored)
    _, multi = _keys()
    try:
        return PREFIX + multi.rotate(stored[len(PREFIX):].encode()).decode()
    except (InvalidToken, ValueError):
        raise DecryptionError() from None
