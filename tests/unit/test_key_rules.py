from datetime import UTC, datetime, timedelta

import pytest

from kms.domain.keys import Key, KeyVersion, VersionState, new_key, validate_key_id
from kms.errors import (
    InvalidKeyId,
    KeyVersionBelowMinimum,
    KeyVersionDestroyed,
    KeyVersionDisabled,
    KeyVersionNotFound,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def version(number: int, state: VersionState = VersionState.ENABLED) -> KeyVersion:
    return KeyVersion("k", number, state, f"{number:032x}", f"kms:k:v{number}", NOW)


@pytest.mark.parametrize("key_id", ["a", "A-z_0", "x" * 64])
def test_valid_key_ids(key_id):
    assert validate_key_id(key_id) == key_id


@pytest.mark.parametrize("key_id", ["", "x" * 65, "has space", "slash/", "ünï", "dot.", "new\nline"])
def test_invalid_key_ids(key_id):
    with pytest.raises(InvalidKeyId):
        validate_key_id(key_id)


def test_rotation_appends_a_primary_and_reschedules():
    key = new_key("k", "", version(1), NOW, rotation_period=timedelta(days=30))
    assert key.next_rotation_time == NOW + timedelta(days=30)
    later = NOW + timedelta(days=31)
    rotated = key.with_new_primary(version(2), later)
    assert rotated.primary_version == 2
    assert [v.version for v in rotated.versions] == [1, 2]
    assert rotated.next_rotation_time == later + timedelta(days=30)
    assert rotated.version_for_decrypt(1).version == 1


def test_versions_must_be_consecutive():
    key = new_key("k", "", version(1), NOW)
    with pytest.raises(ValueError):
        key.with_new_primary(version(3), NOW)


def test_disabled_and_destroyed_versions_do_not_decrypt_and_say_why():
    key = Key("k", "", 3, (version(1, VersionState.DESTROYED), version(2, VersionState.DISABLED), version(3)), NOW, NOW)
    with pytest.raises(KeyVersionDestroyed, match="version 1 is DESTROYED"):
        key.version_for_decrypt(1)
    with pytest.raises(KeyVersionDisabled, match="version 2 is DISABLED"):
        key.version_for_decrypt(2)
    with pytest.raises(KeyVersionNotFound):
        key.version_for_decrypt(4)


def test_min_decryption_version_quotes_both_numbers():
    key = Key("k", "", 3, (version(1), version(2), version(3)), NOW, NOW, min_decryption_version=3)
    with pytest.raises(KeyVersionBelowMinimum, match="version 2 is below min_decryption_version 3"):
        key.version_for_decrypt(2)
    assert key.version_for_decrypt(3).version == 3
