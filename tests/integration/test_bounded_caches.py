"""The per-process caches that keep many keys fast stay bounded and correct when more keys are
in use than they hold, under many threads, against a real SoftHSM2 token and SQLite:

- the handle cache (kms.hsm.handles), for the key hierarchy: version keys unwrapped into HSM
  session objects, shared by every session; an evicted handle that another thread is still using
  lives until it lets go, and no more session objects live than the cache plus the calls running;
- the same cache for token objects (HSM_OBJECT storage): an evicted handle is only forgotten,
  never destroyed, and is found again;
- the key metadata cache (kms.service.key_cache): entries only move forward, however reads,
  rotations and evictions interleave;
- the data subjects' key cache (kms.service.subjects): a subject keeps one key through evictions
  and concurrent first uses, and the cache holds no more than its capacity.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict

import pkcs11
from pkcs11 import Attribute, ObjectClass

from kms.domain.keys import Storage
from kms.hsm.handles import HandleCache
from kms.hsm.hierarchy import Material
from kms.hsm.master_keys import Pkcs11MasterKeyStore
from kms.service.calls import Call
from kms.service.key_cache import KeyCache
from kms.service.subjects import SubjectDigests, SubjectKeys

AAD = b"bounded-caches"


def _session_secret_keys(services) -> int:
    """Secret key session objects this process holds in the token (every session sees them)."""

    def count(pooled) -> int:
        return len(list(pooled.session.get_objects({Attribute.TOKEN: False, Attribute.CLASS: ObjectClass.SECRET_KEY})))

    with services.pool.objects.shared():
        return services.pool.run(count)


def _unwrapper(services, version):
    material = Material(version.wrapped_material, version.root_key_id)
    return lambda: services.master_keys.hierarchy.unwrap(
        version.key_id, version.version, material, version.material_mac
    )


def _seal(services, handle: int, plaintext: bytes) -> tuple[bytes, bytes]:
    iv = bytes(12)
    return iv, services.pool.run(lambda pooled: pooled.raw.gcm_encrypt(pooled.handle, handle, iv, plaintext, AAD))


def _open(services, handle: int, iv: bytes, sealed: bytes) -> bytes | None:
    """The plaintext, or None when the handle names no key any more."""

    def open_(pooled) -> bytes | None:
        try:
            return pooled.raw.gcm_decrypt(pooled.handle, handle, iv, sealed, AAD)
        except (pkcs11.exceptions.KeyHandleInvalid, pkcs11.exceptions.ObjectHandleInvalid):
            return None

    return services.pool.run(open_)


def test_a_handle_evicted_while_in_use_keeps_working_and_is_destroyed_when_its_user_lets_go(sqlite_services):
    services = sqlite_services
    versions = [services.keys.create_key(Call(), f"k{n}").version(1) for n in range(6)]
    cache = HandleCache(capacity=2)
    generation = services.pool.holder_generation
    baseline = _session_secret_keys(services)
    first = versions[0]
    with cache.use(first.master_key_id, generation, _unwrapper(services, first)) as held:
        iv, sealed = _seal(services, held, b"k" * 32)

        def churn(version) -> None:
            with cache.use(version.master_key_id, generation, _unwrapper(services, version)) as handle:
                _seal(services, handle, b"x" * 32)

        threads = [threading.Thread(target=churn, args=(version,)) for version in versions[1:]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(cache) == 2  # the held key was evicted long ago...
        assert _open(services, held, iv, sealed) == b"k" * 32  # ...and still works for the thread holding it
        assert _session_secret_keys(services) == baseline + 3  # the two cached, and the held one
    assert _session_secret_keys(services) == baseline + 2  # destroyed once let go
    assert _open(services, held, iv, sealed) is None
    cache.clear()
    assert _session_secret_keys(services) == baseline


def test_many_threads_over_more_keys_than_the_handle_cache_holds_all_succeed_with_bounded_session_objects(
    sqlite_services,
):
    services = sqlite_services
    capacity, threads_count = 6, 12
    store = Pkcs11MasterKeyStore(
        services.pool,
        services.clock,
        services.settings.pkcs11_label_prefix,
        hierarchy=services.master_keys.hierarchy,
        handle_capacity=capacity,
    )
    versions = [services.keys.create_key(Call(), f"many-{n}").version(1) for n in range(40)]
    baseline = _session_secret_keys(services)
    failures: list[str] = []
    counts: list[int] = []
    done = threading.Event()

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(80):
                version = rng.choice(versions)
                aad = version.key_id.encode()
                iv, sealed = store.encrypt(version, b"d" * 32, aad)
                assert store.decrypt(version, iv, sealed, aad) == b"d" * 32
        except Exception as error:  # noqa: BLE001 - every failure is reported below
            failures.append(repr(error))

    def watch() -> None:
        while not done.is_set():
            counts.append(_session_secret_keys(services))
            done.wait(0.01)

    watcher = threading.Thread(target=watch)
    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(threads_count)]
    watcher.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    watcher.join()
    assert failures == []
    assert store.cached_handles <= capacity
    # Beyond the cache, only keys evicted while a call still used them, one per call at most.
    assert max(counts) - baseline <= capacity + threads_count
    assert _session_secret_keys(services) - baseline <= capacity


def test_the_key_cache_stays_bounded_and_never_goes_backwards_under_concurrent_reads_and_rotations(sqlite_services):
    services = sqlite_services
    key_ids = [f"meta-{n}" for n in range(30)]
    for key_id in key_ids:
        services.keys.create_key(Call(), key_id)
    cache = KeyCache(services.repository, services.integrity, max_entries=8)
    services.integrity.on_keys_changed(cache.invalidate)
    failures: list[str] = []
    stop = threading.Event()

    def read(seed: int) -> None:
        rng = random.Random(seed)
        seen: dict[str, int] = defaultdict(int)
        try:
            while not stop.is_set():
                key_id = rng.choice(key_ids)
                key = cache.get(key_id)
                assert key.key_id == key_id
                assert key.revision >= seen[key_id], f"{key_id} went back from {seen[key_id]} to {key.revision}"
                assert key.primary_version == key.revision  # one revision per version made here
                seen[key_id] = key.revision
        except Exception as error:  # noqa: BLE001 - every failure is reported below
            failures.append(repr(error))

    def rotate(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(40):
                services.keys.rotate_key(Call(), rng.choice(key_ids))
        except Exception as error:  # noqa: BLE001 - every failure is reported below
            failures.append(repr(error))

    readers = [threading.Thread(target=read, args=(seed,)) for seed in range(10)]
    rotators = [threading.Thread(target=rotate, args=(100 + seed,)) for seed in range(3)]
    for thread in [*readers, *rotators]:
        thread.start()
    for thread in rotators:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert failures == []
    assert len(cache) <= 8
    for key_id in key_ids:  # what the cache serves now is what the database holds
        assert cache.get(key_id).revision == services.repository.get(key_id).revision


def test_token_object_handles_evicted_under_many_threads_are_found_again_and_never_destroyed(sqlite_services):
    services = sqlite_services
    capacity = 4
    store = Pkcs11MasterKeyStore(
        services.pool,
        services.clock,
        services.settings.pkcs11_label_prefix,
        hierarchy=services.master_keys.hierarchy,
        handle_capacity=capacity,
    )
    versions = [
        services.keys.create_key(Call(), f"object-{n}", storage=Storage.HSM_OBJECT).version(1) for n in range(16)
    ]
    objects = len(services.master_keys.list_objects())
    sessions = _session_secret_keys(services)
    sealed = {version.key_id: store.encrypt(version, b"o" * 32, version.key_id.encode()) for version in versions}
    failures: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                version = rng.choice(versions)
                iv, ciphertext = sealed[version.key_id]
                assert store.decrypt(version, iv, ciphertext, version.key_id.encode()) == b"o" * 32
        except Exception as error:  # noqa: BLE001 - every failure is reported below
            failures.append(repr(error))

    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []
    assert store.cached_handles <= capacity
    assert len(services.master_keys.list_objects()) == objects  # evicting a handle destroys no object
    assert _session_secret_keys(services) == sessions  # and found objects are never copied into sessions


def test_subject_keys_stay_one_per_subject_through_evictions_and_concurrent_first_uses(sqlite_services):
    services = sqlite_services
    capacity = 8
    key = services.keys.create_key(Call(), "people", subject_field="user_id")
    subjects = SubjectKeys(
        services.subject_repository,
        services.master_keys,
        SubjectDigests(services.sealer),
        services.integrity,
        services.clock,
        services.usage,
        capacity=capacity,
    )
    digests = [subjects.digest(key.key_id, f"user-{n}") for n in range(40)]
    seen: dict[str, set[bytes]] = defaultdict(set)
    lock = threading.Lock()
    failures: list[str] = []
    start = threading.Barrier(10)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            # Every thread starts on the same subjects, none of which has a key yet: first uses race.
            for digest in [*digests[:5], *(rng.choice(digests) for _ in range(80))]:
                use = subjects.for_encrypt(key, digest)
                again = subjects.for_decrypt(key, digest)
                assert use.secret == again.secret
                with lock:
                    seen[digest].add(use.secret)
        except Exception as error:  # noqa: BLE001 - every failure is reported below
            failures.append(repr(error))

    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(10)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []
    assert len(subjects) <= capacity
    assert {digest: len(secrets) for digest, secrets in seen.items()} == dict.fromkeys(seen, 1)
    subjects.clear()
    assert len(subjects) == 0
    for digest, secrets in seen.items():  # loaded again from the database after the cache let go
        assert {subjects.for_decrypt(key, digest).secret} == secrets
