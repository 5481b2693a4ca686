"""Pseudonymization through the service, on SoftHSM2 with SQLite and PostgreSQL, for keys whose
versions are wrapped under the root key and for keys whose versions are token objects:
determinism, version pinning, unlinkability across contexts, the wrong purpose both ways, items
that fail alone, and the HMAC keys' attributes in the HSM."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from kms.crypto import pseudonym, wrapped_key
from kms.crypto.checksums import crc32c
from kms.crypto.context import encode_context
from kms.crypto.wrapped_key import WrappedKey, WrappedKeyHeader
from kms.domain.keys import Purpose, Storage
from kms.errors import (
    BatchTooLarge,
    ChecksumMismatch,
    InvalidArgument,
    InvalidEncryptionContext,
    KeyVersionBelowMinimum,
    KeyVersionDisabled,
    KeyVersionNotFound,
    MasterKeyUntrusted,
    ValueTooLong,
    WrongKeyPurpose,
)
from kms.service.calls import Call

ANALYTICS = {"purpose": "analytics"}
SUPPORT = {"purpose": "support"}
EMAILS = [b"ada@example.com", b"bob@example.com", b"", "zoë@exämple.com".encode(), b"\x00\xff" * 100]


@pytest.fixture(params=[Storage.WRAPPED, Storage.HSM_OBJECT], ids=["wrapped", "hsm_object"])
def storage(request: pytest.FixtureRequest) -> Storage:
    return request.param


@pytest.fixture
def tokens(services, storage):
    """The services (on the database under test) with a PSEUDONYMIZE key "emails" and an
    ENCRYPT_DECRYPT key "orders"."""
    services.keys.create_key(Call(), "emails", storage=storage, purpose=Purpose.PSEUDONYMIZE)
    services.keys.create_key(Call(), "orders", storage=storage)
    return services


def _tokens(services, values, context=ANALYTICS, key_id="emails", **options) -> list:
    return services.pseudonyms.pseudonymize(Call(), key_id, values, context, **options).results


def test_tokens_are_deterministic_per_value_and_name_their_version(tokens):
    first = _tokens(tokens, EMAILS)
    again = _tokens(tokens, list(reversed(EMAILS)))
    assert first == list(reversed(again))
    assert len(set(first)) == len(EMAILS)
    for token in first:
        version, mac = pseudonym.parse_token(token)
        assert version == 1 and len(mac) == 32 and len(token) == len("kps1.1.") + 43
    # One value alone gives what it gave in a batch: nothing depends on its neighbours.
    assert _tokens(tokens, [EMAILS[0]]) == first[:1]


def test_the_same_value_under_another_context_gives_an_unrelated_token(tokens):
    analytics = _tokens(tokens, EMAILS, ANALYTICS)
    support = _tokens(tokens, EMAILS, SUPPORT)
    assert not set(analytics) & set(support)
    # Only the context's content counts, not the order of its entries.
    two = {"purpose": "analytics", "region": "eu"}
    assert _tokens(tokens, EMAILS, two) == _tokens(tokens, EMAILS, dict(reversed(list(two.items()))))
    assert _tokens(tokens, EMAILS, two) != analytics
    # Unrelated, not merely different: no bit pattern survives between contexts.
    macs = [pseudonym.parse_token(t)[1] for t in analytics], [pseudonym.parse_token(t)[1] for t in support]
    differing_bits = sum(bin(a ^ b).count("1") for x, y in zip(*macs, strict=True) for a, b in zip(x, y, strict=True))
    assert 0.4 < differing_bits / (len(EMAILS) * 256) < 0.6


def test_a_pinned_version_keeps_its_tokens_after_rotation_and_obeys_the_version_rules(tokens):
    before = _tokens(tokens, EMAILS)
    tokens.keys.rotate_key(Call(), "emails")
    after = tokens.pseudonyms.pseudonymize(Call(), "emails", EMAILS, ANALYTICS)
    assert after.key_version == 2
    assert all(pseudonym.parse_token(t)[0] == 2 for t in after.results)
    assert not set(after.results) & set(before)
    pinned = tokens.pseudonyms.pseudonymize(Call(), "emails", EMAILS, ANALYTICS, key_version=1)
    assert (pinned.key_version, pinned.results) == (1, before)

    with pytest.raises(KeyVersionNotFound):
        _tokens(tokens, EMAILS, key_version=3)
    tokens.lifecycle.disable_version(Call(), "emails", 1)
    with pytest.raises(KeyVersionDisabled):
        _tokens(tokens, EMAILS, key_version=1)
    tokens.lifecycle.enable_version(Call(), "emails", 1)
    assert _tokens(tokens, EMAILS, key_version=1) == before
    tokens.lifecycle.update_key(Call(), "emails", min_decryption_version=2)
    with pytest.raises(KeyVersionBelowMinimum):
        _tokens(tokens, EMAILS, key_version=1)


def test_a_key_is_used_only_for_its_purpose_both_ways(tokens):
    with pytest.raises(WrongKeyPurpose):
        _tokens(tokens, EMAILS, key_id="orders")
    with pytest.raises(WrongKeyPurpose):
        tokens.data_keys.generate_data_key(Call(), "emails", {})
    with pytest.raises(WrongKeyPurpose):
        tokens.data_keys.generate_data_key(Call(), "emails", {}, include_plaintext=False)
    # A wrapped key whose header names the pseudonymization key (it cannot have made one).
    issued = tokens.data_keys.generate_data_key(Call(), "orders", {})
    parsed = wrapped_key.parse(issued.wrapped_key)
    forged = WrappedKey(WrappedKeyHeader("emails", 1), parsed.iv, parsed.sealed).encode()
    with pytest.raises(WrongKeyPurpose):
        tokens.data_keys.decrypt(Call(), forged, {})
    with pytest.raises(WrongKeyPurpose):
        tokens.data_keys.rewrap(Call(), forged, {})
    with pytest.raises(WrongKeyPurpose):
        tokens.data_keys.rewrap(Call(), issued.wrapped_key, {}, "emails")
    assert tokens.data_keys.decrypt(Call(), issued.wrapped_key, {}).plaintext == issued.plaintext


def test_each_value_fails_alone_and_the_call_as_a_whole_only_for_what_concerns_it(tokens):
    values = [b"ok", b"x" * 4097, b"also ok", b"x" * 4096]
    results = _tokens(tokens, values)
    assert isinstance(results[1], ValueTooLong)
    assert [r for i, r in enumerate(results) if i != 1] == _tokens(tokens, [b"ok", b"also ok", b"x" * 4096])
    checksums = [crc32c(v) for v in values[:3]]
    checksums[2] ^= 1
    results = _tokens(tokens, values[:3], values_crc32c=checksums)
    assert isinstance(results[1], ValueTooLong) and isinstance(results[2], ChecksumMismatch)
    assert results[0] == _tokens(tokens, [b"ok"])[0]
    assert "also ok" not in results[2].message
    with pytest.raises(InvalidArgument, match="one checksum per value"):
        _tokens(tokens, values, values_crc32c=checksums)
    with pytest.raises(BatchTooLarge):
        _tokens(tokens, [b"v"] * 1001)
    assert len(_tokens(tokens, [str(n).encode() for n in range(1000)])) == 1000
    assert _tokens(tokens, []) == []
    with pytest.raises(InvalidEncryptionContext):
        _tokens(tokens, values, {"k": "v" * 2000})


def test_a_pseudonymize_call_moves_the_versions_last_use(tokens):
    _tokens(tokens, EMAILS)
    tokens.usage.flush()
    version = tokens.repository.get("emails").version(1)
    assert version.usage.last_used_time is not None
    assert (version.usage.data_keys_issued, version.usage.decrypts) == (0, 0)


# -- the keys in the HSM -----------------------------------------------------------------------


def test_an_hsm_object_version_is_a_sign_verify_only_never_extractable_hmac_key(services):
    key = services.keys.create_key(Call(), "emails", storage=Storage.HSM_OBJECT, purpose=Purpose.PSEUDONYMIZE)
    object_id = bytes.fromhex(key.version(1).master_key_id)

    def attributes(pooled):
        found = pooled.session.get_key(object_class=ObjectClass.SECRET_KEY, id=object_id)
        return found.get_attributes(
            [
                Attribute.KEY_TYPE,
                Attribute.VALUE_LEN,
                Attribute.LOCAL,
                Attribute.SENSITIVE,
                Attribute.ALWAYS_SENSITIVE,
                Attribute.EXTRACTABLE,
                Attribute.NEVER_EXTRACTABLE,
                Attribute.SIGN,
                Attribute.VERIFY,
                Attribute.ENCRYPT,
                Attribute.DECRYPT,
                Attribute.WRAP,
                Attribute.UNWRAP,
                Attribute.DERIVE,
            ]
        )

    found = services.pool.run(attributes)
    assert found[Attribute.KEY_TYPE] == KeyType.GENERIC_SECRET and found[Attribute.VALUE_LEN] == 32
    assert found[Attribute.LOCAL] and found[Attribute.SENSITIVE] and found[Attribute.ALWAYS_SENSITIVE]
    assert not found[Attribute.EXTRACTABLE] and found[Attribute.NEVER_EXTRACTABLE]
    assert found[Attribute.SIGN] and found[Attribute.VERIFY]
    assert not any(found[a] for a in (Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.WRAP, Attribute.UNWRAP))
    assert not found[Attribute.DERIVE]
    [listed] = services.master_keys.find("emails", 1)
    assert (listed.kind, listed.sound) == ("hmac", True)


def test_an_hmac_key_of_known_value_planted_under_a_versions_id_is_never_used(services):
    """Someone who once held the PIN replaces the version's object by an HMAC key they imported
    (so they know its value, and could compute every token offline): it is refused."""
    key = services.keys.create_key(Call(), "emails", storage=Storage.HSM_OBJECT, purpose=Purpose.PSEUDONYMIZE)
    version = key.version(1)
    object_id = bytes.fromhex(version.master_key_id)

    def replace(pooled):
        for found in list(pooled.session.get_objects({Attribute.ID: object_id})):
            found.destroy()
        pooled.session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                Attribute.VALUE: bytes(32),
                Attribute.ID: object_id,
                Attribute.LABEL: version.master_key_label,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.VERIFY: True,
            }
        )

    with services.pool.objects.exclusive():
        services.pool.run(replace)
    with pytest.raises(MasterKeyUntrusted):
        _tokens(services, EMAILS)
    [listed] = services.master_keys.find("emails", 1)
    assert not listed.sound


def test_an_aes_object_is_never_used_for_hmac_nor_an_hmac_object_for_aes(services):
    aes = services.keys.create_key(Call(), "orders", storage=Storage.HSM_OBJECT).version(1)
    hmac_version = services.keys.create_key(
        Call(), "emails", storage=Storage.HSM_OBJECT, purpose=Purpose.PSEUDONYMIZE
    ).version(1)
    with pytest.raises(MasterKeyUntrusted):
        services.master_keys.hmac_many(aes, [b"message"])
    with pytest.raises(MasterKeyUntrusted):
        services.master_keys.encrypt(hmac_version, bytes(32), b"")
    # and the right uses still work, whatever was cached by the refusals
    assert len(services.master_keys.hmac_many(hmac_version, [b"message"])[0]) == 32
    assert len(services.master_keys.encrypt(aes, bytes(32), b"")[1]) == 48


def test_a_leftover_is_adopted_only_if_it_is_the_kind_the_keys_purpose_needs(services):
    services.keys.create_key(Call(), "emails", storage=Storage.HSM_OBJECT, purpose=Purpose.PSEUDONYMIZE)
    wrong = services.master_keys.create("emails", 2, "aes")  # a leftover of the wrong kind
    right = services.master_keys.create("emails", 2, "hmac")  # and one of the right kind
    rotated = services.keys.rotate_key(Call(), "emails")
    assert rotated.version(2).master_key_id == right.master_key_id
    assert {found.master_key_id for found in services.master_keys.find("emails", 2)} == {
        wrong.master_key_id,
        right.master_key_id,
    }
    services.master_keys.destroy(wrong)


def test_the_raw_hmac_loop_computes_hmac_sha256_of_each_message_in_order(sqlite_services):
    """Against the standard library's HMAC with a key of known value (a version's own key never
    leaves the HSM; tests/vectors/test_pseudonym_vectors.py runs the whole service on such keys)."""
    services = sqlite_services
    value = bytes(range(32))
    object_id = b"known-hmac-key-1"

    def plant(pooled):
        pooled.session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                Attribute.VALUE: value,
                Attribute.ID: object_id,
                Attribute.TOKEN: False,
                Attribute.SIGN: True,
                Attribute.VERIFY: True,
            }
        )

    with services.pool.objects.exclusive():
        services.pool.run(plant)

    def sign(pooled):
        found = pooled.session.get_key(object_class=ObjectClass.SECRET_KEY, id=object_id)
        return pooled.raw.hmac_sha256_many(pooled.session.handle, found.handle, messages)

    prefix = pseudonym.message_prefix("emails", 1, encode_context(ANALYTICS))
    messages = [pseudonym.message(prefix, v) for v in EMAILS]
    expected = [hmac.new(value, m, hashlib.sha256).digest() for m in messages]
    assert services.pool.run(sign) == expected
    token = pseudonym.token(1, expected[0])
    assert token == "kps1.1." + base64.urlsafe_b64encode(expected[0]).decode().rstrip("=")
