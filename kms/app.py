"""The composition root: settings -> adapters -> services -> server."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import start_http_server
from sqlalchemy import Engine

from kms.api.audit_servicer import AuditServicer
from kms.api.handlers import Authenticator, build_handlers
from kms.api.health import HealthMonitor
from kms.api.policy_servicer import PolicyServicer
from kms.api.proto import AUDIT_SERVICE, POLICY_SERVICE, SERVICE
from kms.api.server import build_server, split_listen
from kms.api.servicer import KeyManagementServicer
from kms.api.stream_guard import StreamGuard
from kms.api.streams import StreamLimits
from kms.api.tls import LOCAL, CertificateIdentity, LoopbackIdentity, ReloadingServerCredentials
from kms.audit_writer import WriterConfig, WriterProcess
from kms.clock import SystemClock
from kms.config import Settings
from kms.crypto.random import random_bytes
from kms.domain.keys import Storage
from kms.domain.policy import Permission
from kms.domain.privacy import PrivacyRules
from kms.domain.quota import Limit
from kms.errors import KmsError
from kms.hsm import softhsm
from kms.hsm.anchor import Pkcs11Anchor
from kms.hsm.audit_seal import Pkcs11AuditSealer
from kms.hsm.hierarchy import KeyHierarchy
from kms.hsm.master_keys import Pkcs11MasterKeyStore
from kms.hsm.pool import SessionPool
from kms.ports import Clock
from kms.service.audit import AuditLog, AuditService, ContextDigests
from kms.service.authz import Authorizer, PolicyCache, QuotaBook
from kms.service.cadence import PrivacyCadence
from kms.service.carry import SubjectCarrier
from kms.service.data_keys import DataKeyService
from kms.service.erasure import ErasureService
from kms.service.integrity import MetadataIntegrity
from kms.service.key_cache import KeyCache
from kms.service.keys import KeyService
from kms.service.lifecycle import LifecycleService
from kms.service.policy import PolicyService
from kms.service.pseudonyms import PseudonymService
from kms.service.reconcile import Reconciler
from kms.service.recording import CallRecorder
from kms.service.roots import RootKeys
from kms.service.scheduler import Periodic, Scheduler
from kms.service.subject_data_keys import SubjectDataKeys
from kms.service.subjects import SubjectDigests, SubjectKeys
from kms.service.usage import UsageRecorder
from kms.store.audit import SqlAuditRepository
from kms.store.audit_journal import FileAuditJournal
from kms.store.database import exclusive, make_engine, upgrade
from kms.store.ledger import SqlLedger
from kms.store.policy import SqlPolicyRepository
from kms.store.repository import SqlKeyRepository
from kms.store.subjects import SqlSubjectRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HsmSettings:
    module_path: str
    token_label: str
    pin: str = field(repr=False)


def hsm_settings(settings: Settings) -> HsmSettings:
    """The configured PKCS#11 module, or the embedded SoftHSM token (created if need be)."""
    if settings.pkcs11_module:
        if not settings.pkcs11_token_label:
            raise ValueError("KMS_PKCS11_MODULE is set: also set KMS_PKCS11_TOKEN_LABEL")
        return HsmSettings(settings.pkcs11_module, settings.pkcs11_token_label, settings.read_pin())
    token = softhsm.provision(settings.data_dir)
    return HsmSettings(token.module_path, token.token_label, token.read_pin())


@dataclass
class Services:
    """Everything but the server: what the CLI's local commands and the tests use directly."""

    settings: Settings
    clock: Clock
    engine: Engine
    repository: SqlKeyRepository
    pool: SessionPool
    master_keys: Pkcs11MasterKeyStore
    cache: KeyCache
    keys: KeyService
    data_keys: DataKeyService
    lifecycle: LifecycleService
    usage: UsageRecorder
    scheduler: Scheduler
    reconciler: Reconciler
    sealer: Pkcs11AuditSealer
    ledger: SqlLedger
    anchor: Pkcs11Anchor
    integrity: MetadataIntegrity
    roots: RootKeys
    policy_cache: PolicyCache
    authorizer: Authorizer
    policies: PolicyService
    audit_log: AuditLog
    audit: AuditService
    recorder: CallRecorder
    pseudonyms: PseudonymService
    subject_repository: SqlSubjectRepository
    subjects: SubjectKeys
    erasures: ErasureService

    def close(self) -> None:
        self.integrity.stop()
        try:
            self.recorder.flush_repeats(everything=True)
        except KmsError:
            log.warning("summaries of repeated failures could not be journaled at shutdown")
        self.audit_log.stop()
        try:
            self.usage.flush()
        except KmsError:
            log.warning("usage counts could not be written at shutdown")
        self.subjects.clear()  # zeroes the subjects' keys held in memory
        self.pool.close()
        self.ledger.close()
        self.engine.dispose()


def audit_writer_config(settings: Settings, hsm: HsmSettings, journal: FileAuditJournal) -> WriterConfig:
    """What the audit writer process of ``journal`` needs: the database and the HSM this process uses."""
    return WriterConfig(
        database_url=settings.database_url_or_default(),
        module_path=hsm.module_path,
        token_label=hsm.token_label,
        pin=hsm.pin,
        label_prefix=settings.pkcs11_label_prefix,
        journal_dir=str(journal.directory),
        replay_through=journal.backlog,
        log_level=settings.log_level,
        log_format=settings.log_format,
        hsm_retry_interval=settings.hsm_retry_interval.total_seconds(),
    )


def superusers(settings: Settings) -> set[str]:
    """The bootstrap admin; in development mode every caller is "local", the superuser."""
    if settings.dev_mode:
        return {LOCAL}
    return {settings.bootstrap_admin} if settings.bootstrap_admin else set()


def privacy_rules(settings: Settings) -> PrivacyRules:
    return PrivacyRules(
        settings.min_rotation_period,
        settings.min_destroy_pending_window,
        settings.erasure_finality_default,
        settings.retention_pending_window,
    )


def quota_limits(settings: Settings) -> dict[Permission, Limit]:
    limits = {}
    for permission in Permission:
        configured = settings.quota(permission.value)
        if configured is not None:
            limits[permission] = Limit(*configured)
    return limits


def build_operator_services(settings: Settings) -> Services:
    """The services for an operator's command run beside a server on the same data directory
    (``kms hsm ...``, ``kms db ...``). A journal directory belongs to one process at a time, so
    these commands keep theirs apart from the server's: one such command at a time per data
    directory, and the next one replays what a killed one left."""
    if settings.audit_journal_dir is None:
        settings = settings.model_copy(update={"audit_journal_dir": settings.data_dir / "audit-journal-operator"})
    return build_services(settings)


def build_services(settings: Settings, clock: Clock | None = None) -> Services:
    clock = clock or SystemClock()
    # The data directory holds the embedded database, the audit journal and, by default, the
    # SoftHSM token and its PIN: only the service's own user may look inside.
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    hsm = hsm_settings(settings)
    engine = make_engine(settings.database_url_or_default())
    upgrade(engine)
    pool = SessionPool(
        hsm.module_path,
        hsm.token_label,
        hsm.pin,
        size=settings.max_workers + 4,
        retry_interval=settings.hsm_retry_interval.total_seconds(),
    )
    # Replicas starting together must not each create a seal key: the database serializes them.
    sealer = Pkcs11AuditSealer(
        pool, clock, settings.pkcs11_label_prefix, creation_lock=lambda: exclusive(engine, "hsm-object-creation")
    )
    ledger = SqlLedger(engine, sealer)
    repository = SqlKeyRepository(engine, ledger)
    policy_repository = SqlPolicyRepository(engine, ledger)
    anchor = Pkcs11Anchor(pool, settings.pkcs11_label_prefix)
    integrity = MetadataIntegrity(
        ledger,
        sealer,
        anchor,
        poll_interval=settings.policy_poll_interval.total_seconds(),
        max_stale=settings.metadata_max_stale.total_seconds(),
        adopt=lambda: [*repository.unledgered(), *policy_repository.unledgered()],
    )
    hierarchy = KeyHierarchy(
        pool,
        clock.now,
        settings.pkcs11_label_prefix,
        sealer.seal,
        sealer.check,
        creation_lock=lambda: exclusive(engine, "hsm-object-creation"),
        root_refresh=settings.hsm_root_refresh.total_seconds(),
    )
    master_keys = Pkcs11MasterKeyStore(
        pool,
        clock,
        settings.pkcs11_label_prefix,
        random_bytes,
        hierarchy=hierarchy,
        handle_capacity=settings.hsm_key_cache_size,
    )
    cache = KeyCache(repository, integrity)
    usage = UsageRecorder(repository, clock)
    policy_cache = PolicyCache(policy_repository, integrity)
    integrity.on_keys_changed(cache.invalidate)
    integrity.on_policy_changed(policy_cache.refresh)
    failures = settings.quota("failures")
    quotas = QuotaBook(quota_limits(settings), Limit(*failures) if failures else None)
    authorizer = Authorizer(policy_cache, quotas, superusers(settings))
    keys = KeyService(
        repository,
        master_keys,
        cache,
        clock,
        usage,
        authorizer,
        integrity,
        min_rotation_period=settings.min_rotation_period,
        default_storage=Storage.WRAPPED if settings.key_storage == "wrapped" else Storage.HSM_OBJECT,
        privacy_rules=privacy_rules(settings),
    )
    subject_repository = SqlSubjectRepository(engine, ledger)
    lifecycle = LifecycleService(
        repository,
        master_keys,
        cache,
        clock,
        usage,
        keys,
        authorizer,
        integrity,
        min_destroy_pending_window=settings.min_destroy_pending_window,
        privacy=privacy_rules(settings),
        still_wraps_subjects=subject_repository.wraps_any,
    )
    audit_repository = SqlAuditRepository(engine)
    journal = FileAuditJournal(settings.audit_journal_dir or settings.data_dir / "audit-journal")
    audit_log = AuditLog(
        journal,
        # Not waited for: calls are journaled meanwhile, and the lag bound covers a slow start.
        WriterProcess(audit_writer_config(settings, hsm, journal), ready_timeout=0.0),
        fail_open=settings.audit_fail_open,
        max_lag=settings.audit_max_lag.total_seconds(),
    )
    digests = ContextDigests(sealer)
    recorder = CallRecorder(
        audit_log, digests, authorizer, clock, repeat_window=settings.audit_repeat_window.total_seconds()
    )
    integrity.report_to(recorder)
    subjects = SubjectKeys(
        subject_repository,
        master_keys,
        SubjectDigests(sealer),
        integrity,
        clock,
        usage,
        capacity=settings.subject_key_cache_size,
    )
    integrity.on_erasures(subjects.on_erasures)
    cadence = PrivacyCadence(
        subject_repository,
        cache,
        SubjectCarrier(subject_repository, master_keys, integrity, usage),
        lifecycle,
        recorder,
        privacy_rules(settings),
    )
    try:
        sealer.ensure()
        integrity.catch_up()
    except KmsError as error:  # the health monitor's start-up task tries again until it works
        log.warning("metadata ledger not read yet", extra={"fields": {"error": error.message}})
    return Services(
        settings=settings,
        clock=clock,
        engine=engine,
        repository=repository,
        pool=pool,
        master_keys=master_keys,
        cache=cache,
        keys=keys,
        data_keys=DataKeyService(
            cache,
            master_keys,
            usage,
            authorizer,
            settings.data_key_source,
            hard_max_wraps=settings.hard_max_wraps_per_version,
            subjects=SubjectDataKeys(cache, subjects, authorizer),
        ),
        lifecycle=lifecycle,
        usage=usage,
        scheduler=Scheduler(
            repository,
            keys,
            lifecycle,
            usage,
            clock,
            recorder,
            max_wraps_per_version=settings.max_wraps_per_version,
            cadence=cadence,
        ),
        reconciler=Reconciler(repository, master_keys, cache, clock, recorder),
        sealer=sealer,
        ledger=ledger,
        anchor=anchor,
        integrity=integrity,
        roots=RootKeys(
            repository,
            hierarchy,
            cache,
            recorder,
            settle=settings.hsm_root_refresh.total_seconds(),
            read_ledger=integrity.refresh,
        ),
        policy_cache=policy_cache,
        authorizer=authorizer,
        policies=PolicyService(policy_repository, policy_cache, authorizer, clock, integrity),
        audit_log=audit_log,
        audit=AuditService(
            audit_repository, sealer, audit_log, authorizer, digests, verify_share=settings.audit_verify_share
        ),
        recorder=recorder,
        pseudonyms=PseudonymService(cache, master_keys, usage, authorizer),
        subject_repository=subject_repository,
        subjects=subjects,
        erasures=ErasureService(
            subject_repository,
            subjects,
            cache,
            authorizer,
            clock,
            integrity,
            receipts=subject_repository,
            flush_audit=lambda: audit_log.flush(timeout=5),
        ),
    )


class Application:
    """A running KMS: services, gRPC server, health monitor."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        authenticator: Authenticator | None = None,
        extra_services: tuple[tuple[object, object], ...] = (),
        recorder_factory: Callable[[CallRecorder], CallRecorder] | None = None,
        reuse_port: bool = False,
    ) -> None:
        """``extra_services`` are further (descriptor, servicer) pairs served through the same
        pipeline as every call (the benchmarks' empty RPC). ``recorder_factory`` wraps the end
        of the request path: only the benchmark that measures the audit log's cost uses it.
        ``reuse_port``: a worker of ``kms serve --workers``, sharing the port (kms.workers)."""
        settings.require_transport_security()
        self.settings = settings
        self.services = build_services(settings, clock)
        services = self.services

        def start_up() -> None:
            services.integrity.catch_up()
            services.reconciler.reconcile()

        self.health = HealthMonitor(
            {
                "hsm": services.master_keys.check,
                "database": services.repository.ping,
                "audit": services.audit_log.check_writable,
                "metadata": services.integrity.check_trusted,
                "seal_key": services.sealer.verify_pins,
            },
            settings.health_interval.total_seconds(),
            startup=start_up,
            details={"metadata": services.integrity.health_problem},
        )
        self.tls = (
            ReloadingServerCredentials(settings.tls_cert, settings.tls_key, settings.client_ca)
            if settings.tls_cert and settings.tls_key
            else None
        )
        self.authenticator = authenticator or (
            CertificateIdentity(cn_identities=settings.cn_identities) if self.tls else LoopbackIdentity()
        )
        if settings.dev_mode:
            log.warning(
                "DEVELOPMENT MODE: plaintext gRPC on a loopback address, and every local user is the superuser "
                "'local'; never use this for real keys",
                extra={"fields": {"listen": settings.listen}},
            )
        elif not settings.bootstrap_admin:
            log.warning("TLS is on and KMS_BOOTSTRAP_ADMIN is not set: no identity may manage keys or grants")
        served = [
            (
                SERVICE,
                KeyManagementServicer(
                    services.keys,
                    services.data_keys,
                    services.lifecycle,
                    pseudonyms=services.pseudonyms,
                    erasures=services.erasures,
                ),
            ),
            (POLICY_SERVICE, PolicyServicer(services.policies)),
            (AUDIT_SERVICE, AuditServicer(services.audit)),
            *extra_services,
        ]
        self.streams = StreamLimits(
            max(1, min(settings.max_streams, settings.max_workers // 2)),
            settings.max_streams_per_identity,
            settings.stream_idle_timeout.total_seconds(),
        )
        recorder = recorder_factory(services.recorder) if recorder_factory else services.recorder
        handlers = build_handlers(served, self.authenticator, recorder, self.streams)
        self.server, self.port = build_server(
            settings.listen,
            handlers[0],
            self.health.servicer,
            max_workers=settings.max_workers,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
            max_message_bytes=settings.max_message_bytes,
            credentials=self.tls.credentials() if self.tls else None,
            extra_handlers=handlers[1:],
            reuse_port=reuse_port,
            max_connection_age=settings.max_connection_age.total_seconds() if settings.max_connection_age else None,
            # Reflection and health Watch are grpcio's own services: rationed like ours.
            interceptors=[
                StreamGuard(
                    self.authenticator,
                    lambda call: services.recorder.admit(call, audited=False),
                    self.streams,
                    ours=("/kms.v1.", "/kms.bench."),
                )
            ],
        )
        self.scheduler = Periodic(
            "kms-scheduler", services.scheduler.run_once, settings.scheduler_interval.total_seconds()
        )
        self.repeats = Periodic("kms-audit-repeats", services.recorder.flush_repeats, 1.0)
        self._stopped = threading.Event()

    @property
    def target(self) -> str:
        host, _ = split_listen(self.settings.listen)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def start(self) -> None:
        if self.settings.metrics_listen:
            host, port = split_listen(self.settings.metrics_listen)
            start_http_server(port, addr=host)
        self.server.start()
        self.services.integrity.start()
        self.health.start()
        self.scheduler.start()
        self.repeats.start()
        log.info("kms serving", extra={"fields": {"target": self.target, "serving": self.health.serving}})

    def stop(self, grace: float | None = None) -> None:
        """Stops accepting calls, lets in-flight ones finish for ``grace`` seconds, releases
        the HSM and the database."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.stop()
        grace = self.settings.shutdown_grace.total_seconds() if grace is None else grace
        self.server.stop(grace).wait()
        self.streams.stop()
        self.scheduler.stop()
        self.repeats.stop()
        self.services.close()
        log.info("kms stopped")

    def wait(self) -> None:
        # Bounded waits: a signal delivered to one of gRPC's threads only runs its Python
        # handler once the main thread returns to the interpreter, which an untimed wait never
        # does.
        while not self._stopped.wait(timeout=0.2):
            pass
