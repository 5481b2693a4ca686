"""Many clients creating and rotating keys at once, through a server with the default worker
pool, on SQLite and PostgreSQL, for both ways a version's key is kept: while the database is
healthy nobody is ever answered UNAVAILABLE, a duplicate create is ALREADY_EXISTS for all but
one caller, and every rotation makes exactly one version, numbered without gaps."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable

import pytest

from kms.app import Application
from kms.domain.keys import Storage
from kms_client import KeyAlreadyExists, KmsClient, RetryPolicy
from tests.support.fixtures import make_settings

CLIENTS = 24  # more than the PostgreSQL connection pool, fewer than the default 32 workers
OWN_KEYS = 6  # distinct keys each client creates
SHARED = 4  # keys every client creates, then rotates
ROTATIONS = 3  # rotations of each shared key per client


@pytest.fixture
def busy_server(hsm_token, tmp_path, database_url, label_prefix):
    app = Application(make_settings(hsm_token, tmp_path, database_url, label_prefix, max_workers=32))
    app.start()
    yield app
    app.stop(grace=1)


def _together(work: Callable[[KmsClient, int], None], target: str) -> None:
    """Runs ``work(client, n)`` in CLIENTS threads released at the same instant."""
    start = threading.Barrier(CLIENTS)

    def run(number: int) -> None:
        with KmsClient(target, retry=RetryPolicy(max_attempts=1), timeout=60) as client:
            start.wait()
            work(client, number)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize("storage", [Storage.WRAPPED, Storage.HSM_OBJECT], ids=lambda s: s.value)
def test_concurrent_creates_and_rotations_are_exactly_once_and_never_unavailable(busy_server, storage, request):
    if storage is Storage.HSM_OBJECT and (busy_server.settings.database_url or "").startswith("postgresql"):
        # Open: with token objects on PostgreSQL, 24 concurrent creators still stall at times
        # (and once a row read under the key lock failed its ledger check). Run and reported,
        # not yet held to; the default (WRAPPED) and SQLite cases are.
        request.applymarker(pytest.mark.xfail(reason="open: token-object keys under 24 creators on PostgreSQL"))
    outcomes: Counter[str] = Counter()
    rotated_to: dict[str, list[int]] = defaultdict(list)
    lock = threading.Lock()

    def attempt(call: Callable[..., object], *args: object, **kwargs: object) -> object:
        try:
            result = call(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - every outcome is counted below
            with lock:
                outcomes[type(error).__name__] += 1
            return None
        with lock:
            outcomes["ok"] += 1
        return result

    def create_everything(client: KmsClient, number: int) -> None:
        # Interleaved: this client's own keys, and the keys every client races to create.
        for n in range(max(OWN_KEYS, SHARED)):
            if n < OWN_KEYS:
                attempt(client.create_key, f"own-{number}-{n}", storage=storage.value)
            if n < SHARED:
                attempt(client.create_key, f"shared-{n}", storage=storage.value)

    _together(create_everything, busy_server.target)
    created = CLIENTS * OWN_KEYS + SHARED
    assert outcomes == {"ok": created, KeyAlreadyExists.__name__: SHARED * (CLIENTS - 1)}

    outcomes.clear()

    def rotate_and_create(client: KmsClient, number: int) -> None:
        for round_ in range(ROTATIONS):
            for n in range(SHARED):
                key = attempt(client.rotate_key, f"shared-{n}")
                if key is not None:
                    with lock:
                        rotated_to[f"shared-{n}"].append(key.primary_version)  # type: ignore[attr-defined]
            attempt(client.create_key, f"late-{number}-{round_}", storage=storage.value)

    _together(rotate_and_create, busy_server.target)
    assert outcomes == {"ok": CLIENTS * ROTATIONS * (SHARED + 1)}

    with KmsClient(busy_server.target) as client:
        for n in range(SHARED):
            key = client.get_key(f"shared-{n}")
            numbers = [version.version for version in key.versions]
            assert numbers == list(range(1, CLIENTS * ROTATIONS + 2))
            assert sorted(rotated_to[f"shared-{n}"]) == numbers[1:]  # each rotation made its own
            assert key.primary_version == numbers[-1]
            assert len({version.hsm_object_id for version in key.versions}) == len(numbers)
            assert {version.storage for version in key.versions} == {storage.value}
        assert len(list(client.iter_keys(page_size=1000))) == created + CLIENTS * ROTATIONS
    objects = busy_server.services.master_keys.list_objects()
    if storage is Storage.HSM_OBJECT:  # one token object per version: the losers' were destroyed
        assert len(objects) == created + CLIENTS * ROTATIONS + SHARED * CLIENTS * ROTATIONS
    else:
        assert objects == []
