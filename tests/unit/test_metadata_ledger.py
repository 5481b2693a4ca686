"""kms.domain.ledger: following and applying the hash chain, every way an entry can fail to follow
(BrokenChain), and canonical digests that change with every field of the rows they vouch for."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from kms.domain import ledger
from kms.domain.keys import Key, KeyVersion, Purpose, Storage, VersionState, VersionUsage
from kms.domain.ledger import GENESIS, BrokenChain, Change, LedgerState, entry_hash, extend
from kms.domain.policy import Grant, Permission

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def changes(count: int, kind: str = ledger.GRANT) -> list[Change]:
    return [Change(kind, f"g{n}", 1, f"{n:064x}") for n in range(1, count + 1)]


# -- the chain ------------------------------------------------------------------------------


def test_follow_reports_where_the_entries_lead_and_changes_nothing():
    entries = extend(0, GENESIS, changes(3))
    state = LedgerState()
    assert state.follow(entries) == (3, entries[-1].hash)
    assert (state.seq, state.hash, state.expected(ledger.GRANT, "g1")) == (0, GENESIS, None)


def test_apply_advances_the_head_and_remembers_each_rows_latest_digest():
    state = LedgerState()
    first = extend(0, GENESIS, [Change(ledger.GRANT, "g1", 1, "aa" * 32), Change(ledger.KEY, "orders", 1, "bb" * 32)])
    assert state.apply(first) == [entry.change for entry in first]
    later = extend(2, state.hash, [Change(ledger.GRANT, "g1", 2, "cc" * 32), Change(ledger.KEY, "orders", 2, "")])
    state.apply(later)
    assert (state.seq, state.hash) == (4, later[-1].hash)
    assert state.expected(ledger.GRANT, "g1") == (2, "cc" * 32)
    assert state.expected(ledger.KEY, "orders") == (2, "")  # removed
    assert state.live(ledger.KEY) == {} and state.live(ledger.GRANT) == {"g1": (2, "cc" * 32)}
    assert state.expected(ledger.MEMBER, "payments\nspiffe://x") is None


def test_entries_are_applied_in_pieces_as_they_are_read():
    entries = extend(0, GENESIS, changes(5))
    whole, pieces = LedgerState(), LedgerState()
    whole.apply(entries)
    for start in range(0, 5, 2):
        pieces.apply(entries[start : start + 2])
    assert (pieces.seq, pieces.hash, pieces.rows) == (whole.seq, whole.hash, whole.rows)


def test_no_entries_follow_trivially():
    state = LedgerState()
    assert state.follow([]) == (0, GENESIS) and state.apply([]) == []


def _broken(state: LedgerState, entries) -> str:
    before = (state.seq, state.hash, {kind: dict(rows) for kind, rows in state.rows.items()})
    with pytest.raises(BrokenChain) as raised:
        state.apply(entries)
    assert (state.seq, state.hash, state.rows) == before  # nothing applied, not even the good entries
    return str(raised.value)


def test_a_missing_entry_breaks_the_chain():
    entries = extend(0, GENESIS, changes(4))
    assert _broken(LedgerState(), entries[:1] + entries[2:]) == "ledger entry 2 is missing (found 3)"


def test_entries_that_do_not_start_at_the_head_break_the_chain():
    state = LedgerState()
    entries = extend(0, GENESIS, changes(4))
    state.apply(entries[:2])
    assert _broken(state, entries[3:]) == "ledger entry 3 is missing (found 4)"
    assert _broken(state, entries[1:]) == "ledger entry 3 is missing (found 2)"  # read again


def test_an_entry_that_names_another_predecessor_breaks_the_chain():
    entries = extend(0, GENESIS, changes(3))
    other = extend(1, "ee" * 32, changes(1))[0]  # a well-formed entry 2 of another chain
    assert _broken(LedgerState(), [entries[0], other, entries[2]]) == "ledger entry 2 does not follow entry 1"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: replace(c, digest="ff" * 32),
        lambda c: replace(c, revision=c.revision + 1),
        lambda c: replace(c, name="g-other"),
        lambda c: replace(c, kind=ledger.MEMBER),
        lambda c: replace(c, digest=""),
    ],
    ids=["digest", "revision", "name", "kind", "digest-removed"],
)
def test_an_altered_change_breaks_the_chain(tamper):
    entries = extend(0, GENESIS, changes(3))
    entries[1] = replace(entries[1], change=tamper(entries[1].change))
    assert _broken(LedgerState(), entries) == "ledger entry 2 does not follow entry 1"


def test_reordered_entries_break_the_chain():
    entries = extend(0, GENESIS, changes(3))
    swapped = [entries[0], replace(entries[2], seq=2), replace(entries[1], seq=3)]
    assert _broken(LedgerState(), swapped) == "ledger entry 2 does not follow entry 1"


def test_an_entry_of_an_unknown_kind_breaks_the_chain_even_when_it_is_linked():
    entries = extend(0, GENESIS, [Change("budget", "b1", 1, "aa" * 32)])
    assert _broken(LedgerState(), entries) == "ledger entry 1 names an unknown kind"


def test_the_entry_hash_covers_every_part_of_the_entry():
    change = Change(ledger.KEY, "orders", 3, "ab" * 32)
    digest = entry_hash(5, change, "cd" * 32)
    variants = [
        entry_hash(6, change, "cd" * 32),
        entry_hash(5, change, "ce" * 32),
        entry_hash(5, replace(change, kind=ledger.GRANT), "cd" * 32),
        entry_hash(5, replace(change, name="orderz"), "cd" * 32),
        entry_hash(5, replace(change, revision=4), "cd" * 32),
        entry_hash(5, replace(change, digest="ac" * 32), "cd" * 32),
        entry_hash(5, replace(change, digest=""), "cd" * 32),
    ]
    assert len({digest, *variants}) == 1 + len(variants)


def test_kind_and_name_cannot_run_into_each_other():
    assert entry_hash(1, Change("key", "xy", 1, ""), GENESIS) != entry_hash(1, Change("keyx", "y", 1, ""), GENESIS)


def test_the_head_seal_message_names_seq_and_hash():
    expected = b"kms-ledger-head-v1" + (7).to_bytes(8, "big") + bytes.fromhex("ab" * 32)
    assert ledger.head_message(7, "ab" * 32) == expected


# -- canonical digests ----------------------------------------------------------------------


def version(number: int = 1, **changes) -> KeyVersion:
    base = KeyVersion("orders", number, VersionState.ENABLED, f"{number:032x}", f"kms:orders:v{number}", T0)
    return replace(base, **changes)


def key(**changes) -> Key:
    base = Key(
        "orders",
        "rows",
        2,
        (version(1), version(2)),
        T0,
        T0 + timedelta(hours=1),
        rotation_period=timedelta(days=30),
        next_rotation_time=T0 + timedelta(days=30),
        min_decryption_version=1,
        revision=4,
    )
    return replace(base, **changes)


# Another value for each field. A field added to Key, KeyVersion or Grant must be added here;
# the only ones left out are named below, with why.
KEY_CHANGES = {
    "key_id": "orders2",
    "description": "rows!",
    "primary_version": 1,
    "versions": (version(1),),
    "create_time": T0 + timedelta(microseconds=1),
    "update_time": T0,
    "rotation_period": None,
    "next_rotation_time": None,
    "min_decryption_version": 2,
    "revision": 5,
    "storage": Storage.WRAPPED,
    "purpose": Purpose.PSEUDONYMIZE,
    "subject_field": "user_id",
    "retention_period": timedelta(days=90),
    "erasure_finality": timedelta(days=30),
}
VERSION_CHANGES = {
    "key_id": None,  # a version's key is its key's: key_id is covered there
    "version": 3,
    "state": VersionState.DISABLED,
    "master_key_id": "f" * 32,
    "master_key_label": "kms:orders:v9",
    "create_time": T0 - timedelta(days=1),
    "destroy_time": T0 + timedelta(days=2),
    "storage": Storage.WRAPPED,
    "root_key_id": "r" * 32,
    "wrapped_material": b"blob",
    "material_mac": "m" * 64,
    "usage": None,  # counts change on every call and are not protected: they grant nothing
}
GRANT_CHANGES = {
    "principal": "spiffe://kms.dev/other",
    "resource": "orders-*",
    "permissions": frozenset({Permission.DECRYPT}),
    "context": {"tenant": "acme"},
    "grant_id": "g2",
    "created_by": "spiffe://kms.dev/admin2",
}


def test_every_field_is_accounted_for():
    assert {f.name for f in dataclasses.fields(Key)} == KEY_CHANGES.keys()
    assert {f.name for f in dataclasses.fields(KeyVersion)} == VERSION_CHANGES.keys()
    assert {f.name for f in dataclasses.fields(Grant)} == GRANT_CHANGES.keys()


@pytest.mark.parametrize("name", sorted(KEY_CHANGES))
def test_a_keys_digest_changes_with_each_of_its_fields(name):
    assert ledger.key_digest(key(**{name: KEY_CHANGES[name]})) != ledger.key_digest(key())


@pytest.mark.parametrize("name", sorted(n for n, v in VERSION_CHANGES.items() if v is not None))
def test_a_keys_digest_changes_with_each_field_of_each_version(name):
    # The stored material is recorded only where there is some: a WRAPPED version.
    wrapped = {} if name == "storage" else {"storage": Storage.WRAPPED}
    for index in (0, 1):
        before = [replace(v, **wrapped) for v in key().versions]
        after = list(before)
        after[index] = replace(after[index], **{name: VERSION_CHANGES[name]})
        digests = (ledger.key_digest(key(versions=tuple(after))), ledger.key_digest(key(versions=tuple(before))))
        assert digests[0] != digests[1], (name, index)


def test_usage_counts_do_not_change_a_keys_digest():
    used = key(versions=(version(1, usage=VersionUsage(5, 7, T0)), version(2)))
    assert ledger.key_digest(used) == ledger.key_digest(key())


def test_a_rotation_period_of_zero_is_not_no_rotation_period():
    assert ledger.key_digest(key(rotation_period=timedelta(0))) != ledger.key_digest(key(rotation_period=None))


def grant(**changes) -> Grant:
    base = Grant(
        "spiffe://kms.dev/app",
        "orders",
        frozenset({Permission.ENCRYPT, Permission.DECRYPT}),
        {},
        "g1",
        "spiffe://kms.dev/admin",
    )
    return replace(base, **changes)


@pytest.mark.parametrize("name", sorted(GRANT_CHANGES))
def test_a_grants_digest_changes_with_each_of_its_fields(name):
    assert ledger.grant_digest(grant(**{name: GRANT_CHANGES[name]})) != ledger.grant_digest(grant())


def test_a_grants_digest_does_not_depend_on_the_order_of_its_permissions_or_context():
    in_order, reversed_ = grant(context={"a": "1", "b": "2"}), grant(context={"b": "2", "a": "1"})
    assert ledger.grant_digest(in_order) == ledger.grant_digest(reversed_)
    reordered = frozenset(sorted(grant().permissions, key=lambda p: p.value, reverse=True))
    assert ledger.grant_digest(grant(permissions=reordered)) == ledger.grant_digest(grant())


def test_a_members_digest_changes_with_group_and_identity_and_they_cannot_run_together():
    digest = ledger.member_digest("payments", "spiffe://kms.dev/app")
    assert ledger.member_digest("payment", "sspiffe://kms.dev/app") != digest
    assert ledger.member_digest("payments", "spiffe://kms.dev/other") != digest
    assert ledger.member_digest("billing", "spiffe://kms.dev/app") != digest


def test_each_kind_of_row_is_tagged():
    assert ledger.key_bytes(key()).startswith(b"kms-key-v1")
    assert ledger.grant_bytes(grant()).startswith(b"kms-grant-v1")
    assert ledger.member_bytes("g", "i").startswith(b"kms-member-v1")
