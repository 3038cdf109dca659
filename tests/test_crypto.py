import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection

from credentials import crypto
from credentials.fields import Sealed
from credentials.masking import SecretMaskingFilter, mask, mask_text, secret_scope
from credentials.models import TenantCredential
from credentials.services import credential_set
from tenants.actors import SYSTEM

from .conftest import CANARY


def test_round_trip_and_format():
    stored = crypto.encrypt("hello")
    assert stored.startswith("enc:fernet:v1:")
    assert "hello" not in stored
    assert crypto.decrypt(stored) == "hello"
    assert crypto.encrypt("hello") != stored  # random IV: equal plaintexts differ


def test_wrong_key_raises_clear_error(settings):
    stored = crypto.encrypt("secret-value")
    settings.ENCRYPTION_KEY = Fernet.generate_key().decode()
    with pytest.raises(crypto.DecryptionError, match="Failed to decrypt credential"):
        crypto.decrypt(stored)


def test_old_keys_still_decrypt(settings):
    old = settings.ENCRYPTION_KEY
    stored = crypto.encrypt("secret-value")
    settings.ENCRYPTION_KEY = Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS_OLD = [old]
    assert crypto.decrypt(stored) == "secret-value"
    assert not crypto.is_current(stored)
    assert crypto.is_current(crypto.reencrypt(stored))


def test_stored_column_is_ciphertext(tenant):
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key=CANARY, extra={"organization": "org-secret-1"})
    with connection.cursor() as cur:
        cur.execute("SELECT api_key, extra FROM credentials_tenantcredential")
        api_key, extra = cur.fetchone()
    assert api_key.startswith("enc:fernet:v1:") and extra.startswith("enc:fernet:v1:")
    assert CANARY not in api_key and "org-secret-1" not in extra
    cred = TenantCredential.objects.get()
    assert isinstance(cred.api_key, Sealed)
    assert CANARY not in repr(cred.api_key) and CANARY not in str(cred.__dict__)
    assert cred.api_key.reveal() == CANARY
    assert cred.extra.reveal() == {"organization": "org-secret-1"}


def test_mask_rules():
    assert mask("sk-abcdefgh1234") == "...1234"
    assert mask("abcd") == "***"
    assert mask("") == ""


def test_logging_filter_masks_known_shapes_and_scoped_secrets():
    import logging

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "calling %s with Authorization: Bearer %s",
                               ("https://host/v1?key=AIzaSyTopSecret123", "tok-abcdef123456"), None)
    SecretMaskingFilter().filter(record)
    text = record.getMessage()
    assert "AIzaSyTopSecret123" not in text and "tok-abcdef123456" not in text
    assert "...3456" in text
    plain = "my-odd-upstream-secret-9876"
    assert plain in mask_text(f"value {plain}")  # unknown free text is not guessed at...
    with secret_scope(plain):
        assert plain not in mask_text(f"value {plain}")  # ...but the call's own key is masked
    assert mask_text(f"sk-ant-{'x' * 20}end1").endswith("end1") and "xxxxxxxx" not in mask_text(f"sk-ant-{'x' * 20}end1")


def _rows_under_primary():
    out = []
    with connection.cursor() as cur:
        cur.execute("SELECT api_key FROM credentials_tenantcredential")
        out = [crypto.is_current(r[0]) for r in cur.fetchall()]
    return out


def _make_credentials(tenant_factory, n):
    from tenants.services import tenant_create

    for i in range(n):
        t = tenant_create(actor=SYSTEM, name=f"T{i}", slug=f"t{i}")
        credential_set(actor=SYSTEM, tenant=t, provider_type="openai", api_key=f"sk-key-number-{i:04d}")


def test_rotation_reencrypts_all_rows_and_survives_interruption(db, settings, capsys):
    _make_credentials(None, 7)
    old = settings.ENCRYPTION_KEY
    settings.ENCRYPTION_KEY = Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS_OLD = [old]
    assert _rows_under_primary() == [False] * 7

    from credentials import rotation

    def die_after_first_batch(model, last_pk, report):
        if model is TenantCredential:
            raise KeyboardInterrupt("killed midway")

    with pytest.raises(KeyboardInterrupt):
        rotation.rotate_all(batch_size=3, on_batch=die_after_first_batch)
    assert sorted(_rows_under_primary()) == [False] * 4 + [True] * 3  # first batch committed, nothing lost

    call_command("rotate_encryption_key", "--batch-size", "3")
    out = capsys.readouterr().out
    assert "4 value(s) re-encrypted, 3 already current, 0 could not be decrypted" in out
    assert _rows_under_primary() == [True] * 7

    settings.ENCRYPTION_KEYS_OLD = []  # the old key can now be dropped
    values = sorted(c.api_key.reveal() for c in TenantCredential.objects.all())
    assert values == [f"sk-key-number-{i:04d}" for i in range(7)]


def test_rotation_leaves_undecryptable_rows_untouched(tenant, settings, capsys):
    credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-lost-key-000111")
    with connection.cursor() as cur:
        cur.execute("SELECT api_key FROM credentials_tenantcredential")
        before = cur.fetchone()[0]
    settings.ENCRYPTION_KEY = Fernet.generate_key().decode()  # the old key is lost
    with pytest.raises(SystemExit):
        call_command("rotate_encryption_key")
    captured = capsys.readouterr()
    assert "1 could not be decrypted" in captured.out
    assert "credentials.TenantCredential#" in captured.err
    with connection.cursor() as cur:
        cur.execute("SELECT api_key FROM credentials_tenantcredential")
        assert cur.fetchone()[0] == before


def test_generate_encryption_key_prints_a_valid_key(capsys):
    call_command("generate_encryption_key")
    Fernet(capsys.readouterr().out.strip())


def test_sealed_value_passes_model_validation(tenant):
    cred = credential_set(actor=SYSTEM, tenant=tenant, provider_type="openai", api_key="sk-validation-1234")
    cred = TenantCredential.objects.get(pk=cred.pk)
    cred.full_clean()
    cred.save()
    assert TenantCredential.objects.get(pk=cred.pk).api_key.reveal() == "sk-validation-1234"
