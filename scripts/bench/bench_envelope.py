#!/usr/bin/env python3
"""Envelope encryption throughput, side by side. A measurement, not a test: it prints a table.

    .venv/bin/python scripts/bench/bench_envelope.py [--size-mib 256] [--repeat 5] [--target HOST:PORT]

Large streams (the same in-memory input for everyone, output into a sink that only counts):
- raw pyca AESGCM over 64 KiB chunks of the buffer, no I/O at all: the ceiling;
- the same with encrypt_into/decrypt_into into one reused buffer (the primitive alone);
- the same loop reading its chunks from an io.BytesIO, for reference;
- kms_client encrypt_stream / decrypt_stream (64 KiB frames; includes the one service call);
- the AWS Encryption SDK for Python with a raw AES keyring (MPL), 64 KiB frames and the
  committing suite without signatures (its fastest comparable settings);
- Tink's streaming AEAD, AES256_GCM_HKDF_1MB, fed and drained 64 KiB at a time.
Small records: encrypt and decrypt per second, data key caching on and off.

Without --target a throwaway server (``kms serve`` with a SoftHSM token in a temporary
directory) runs for the duration. Peers that are not installed are skipped: install them with
``.venv/bin/pip install -c scripts/constraints.txt aws-encryption-sdk aws-cryptographic-material-providers tink``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata

import grpc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms_client import DataKeyCaching, KeyAlreadyExists, KmsClient

MiB = 1024 * 1024
CHUNK = 64 * 1024
KEY_ID = "bench-envelope"
CONTEXT = {"purpose": "benchmark"}


class Sink(io.RawIOBase):
    """Counts what it is given and keeps nothing; survives close() (Tink closes its sink)."""

    def __init__(self) -> None:
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.count += len(data)
        return len(data)

    def close(self) -> None:
        pass


class Keep(io.BytesIO):
    """A BytesIO whose content survives close()."""

    def close(self) -> None:
        self.kept = self.getvalue()
        super().close()


Runs = tuple[Callable[[], None], Callable[[], None]]  # encrypt everything once, decrypt everything once


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


# -- the server -------------------------------------------------------------------------------


@contextlib.contextmanager
def throwaway_server() -> Iterator[str]:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with tempfile.TemporaryDirectory(prefix="kms-bench-") as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}
        log = open(os.path.join(data_dir, "server.log"), "wb")  # noqa: SIM115
        port_file = os.path.join(data_dir, "server.port")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kms",
                "serve",
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                port_file,
                "--data-dir",
                data_dir,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def exited() -> None:
            if server.poll() is not None:
                log.flush()
                with open(log.name, encoding="utf-8", errors="replace") as written:
                    raise SystemExit("the server exited:\n" + written.read()[-3000:])

        try:
            for _ in range(600):  # the port the system gave it, once it serves
                exited()
                if os.path.exists(port_file):
                    break
                time.sleep(0.1)
            with open(port_file, encoding="ascii") as written:
                target = f"127.0.0.1:{int(written.read())}"
            with grpc.insecure_channel(target) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                for _ in range(600):
                    exited()
                    with contextlib.suppress(grpc.RpcError):
                        if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                            break
                    time.sleep(0.1)
            yield target
        finally:
            server.terminate()
            server.wait(timeout=60)
            log.close()


# -- large streams ----------------------------------------------------------------------------


def raw_aesgcm(data: bytes) -> Runs:
    aead = AESGCM(AESGCM.generate_key(256))
    view = memoryview(data)
    nonces = [struct.pack(">4xQ", i) for i in range(len(data) // CHUNK + 1)]
    sealed = [aead.encrypt(nonces[n], view[i : i + CHUNK], None) for n, i in enumerate(range(0, len(data), CHUNK))]

    def encrypt() -> None:
        sink = Sink()
        for n, i in enumerate(range(0, len(data), CHUNK)):
            sink.write(aead.encrypt(nonces[n], view[i : i + CHUNK], None))

    def decrypt() -> None:
        sink = Sink()
        for n, chunk in enumerate(sealed):
            sink.write(aead.decrypt(nonces[n], chunk, None))

    return encrypt, decrypt


def raw_aesgcm_into(data: bytes) -> Runs:
    """The primitive alone: encrypt_into/decrypt_into one reused buffer, nothing allocated."""
    aead = AESGCM(AESGCM.generate_key(256))
    view = memoryview(data)
    nonce = bytes(12)
    sealed = [aead.encrypt(nonce, view[i : i + CHUNK], None) for i in range(0, len(data), CHUNK)]
    out = memoryview(bytearray(CHUNK + 16))

    def encrypt() -> None:
        sink = Sink()
        for i in range(0, len(data), CHUNK):
            chunk = view[i : i + CHUNK]
            target = out[: len(chunk) + 16]
            aead.encrypt_into(nonce, chunk, None, target)
            sink.write(target)

    def decrypt() -> None:
        sink = Sink()
        for chunk in sealed:
            target = out[: len(chunk) - 16]
            aead.decrypt_into(nonce, chunk, None, target)
            sink.write(target)

    return encrypt, decrypt


def raw_aesgcm_with_reads(data: bytes) -> Runs:
    aead = AESGCM(AESGCM.generate_key(256))
    nonce = bytes(12)
    sealed = b"".join(aead.encrypt(nonce, data[i : i + CHUNK], None) for i in range(0, len(data), CHUNK))

    def encrypt() -> None:
        source, sink = io.BytesIO(data), Sink()
        while chunk := source.read(CHUNK):
            sink.write(aead.encrypt(nonce, chunk, None))

    def decrypt() -> None:
        source, sink = io.BytesIO(sealed), Sink()
        while chunk := source.read(CHUNK + 16):
            sink.write(aead.decrypt(nonce, chunk, None))

    return encrypt, decrypt


def kms_client_streams(client: KmsClient, data: bytes) -> Runs:
    sealed = io.BytesIO()
    client.encrypt_stream(io.BytesIO(data), sealed, key_id=KEY_ID, context=CONTEXT)
    ciphertext = sealed.getvalue()
    check = io.BytesIO()
    client.decrypt_stream(io.BytesIO(ciphertext), check, context=CONTEXT)
    assert check.getvalue() == data
    del check
    return (
        lambda: client.encrypt_stream(io.BytesIO(data), Sink(), key_id=KEY_ID, context=CONTEXT),
        lambda: client.decrypt_stream(io.BytesIO(ciphertext), Sink(), context=CONTEXT),
    )


def aws_encryption_sdk_streams(data: bytes) -> Runs:
    import aws_encryption_sdk
    from aws_cryptographic_material_providers.mpl import AwsCryptographicMaterialProviders
    from aws_cryptographic_material_providers.mpl.config import MaterialProvidersConfig
    from aws_cryptographic_material_providers.mpl.models import AesWrappingAlg, CreateRawAesKeyringInput
    from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy

    providers = AwsCryptographicMaterialProviders(config=MaterialProvidersConfig())
    keyring = providers.create_raw_aes_keyring(
        input=CreateRawAesKeyringInput(
            key_namespace="bench",
            key_name="raw-aes",
            wrapping_key=os.urandom(32),
            wrapping_alg=AesWrappingAlg.ALG_AES256_GCM_IV12_TAG16,
        )
    )
    esdk = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    suite = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY

    def encrypt(sink: io.RawIOBase) -> None:
        with esdk.stream(
            mode="e",
            source=io.BytesIO(data),
            keyring=keyring,
            frame_length=CHUNK,
            algorithm=suite,
            encryption_context=CONTEXT,
        ) as stream:
            for chunk in stream:
                sink.write(chunk)

    sealed = Keep()
    encrypt(sealed)
    ciphertext = sealed.getvalue()

    def decrypt() -> None:
        sink = Sink()
        with esdk.stream(mode="d", source=io.BytesIO(ciphertext), keyring=keyring) as stream:
            for chunk in stream:
                sink.write(chunk)
        assert sink.count == len(data)

    return lambda: encrypt(Sink()), decrypt


def tink_streams(data: bytes) -> Runs:
    import tink
    from tink import streaming_aead

    streaming_aead.register()
    handle = tink.new_keyset_handle(streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB)
    primitive = handle.primitive(streaming_aead.StreamingAead)
    view = memoryview(data)

    def encrypt(sink: io.RawIOBase) -> None:
        with primitive.new_encrypting_stream(sink, b"benchmark") as stream:
            for i in range(0, len(data), CHUNK):
                stream.write(view[i : i + CHUNK])

    sealed = Keep()
    encrypt(sealed)
    ciphertext = sealed.kept

    def decrypt() -> None:
        sink = Sink()
        with primitive.new_decrypting_stream(io.BytesIO(ciphertext), b"benchmark") as stream:
            while chunk := stream.read(CHUNK):
                sink.write(chunk)
        assert sink.count == len(data)

    return lambda: encrypt(Sink()), decrypt


# -- small records ----------------------------------------------------------------------------


def small_records(target: str, caching: bool, count: int) -> tuple[float, float]:
    policy = DataKeyCaching() if caching else None
    with KmsClient(target, data_key_caching=policy) as client:
        records = [os.urandom(100) for _ in range(count)]
        start = time.perf_counter()
        sealed = [client.encrypt(r, key_id=KEY_ID, context=CONTEXT) for r in records]
        encrypt_rate = count / (time.perf_counter() - start)
        start = time.perf_counter()
        opened = [client.decrypt(c, context=CONTEXT) for c in sealed]
        decrypt_rate = count / (time.perf_counter() - start)
    assert opened == records
    return encrypt_rate, decrypt_rate


# -- the run ----------------------------------------------------------------------------------


def version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5, help="rounds over all contenders; the best is kept")
    parser.add_argument("--records", type=int, default=20_000, help="small records with caching on")
    parser.add_argument("--records-uncached", type=int, default=2_000, help="small records with caching off")
    parser.add_argument("--target", help="an existing server (default: start a throwaway one)")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        target = args.target or stack.enter_context(throwaway_server())
        client = stack.enter_context(KmsClient(target))
        with contextlib.suppress(KeyAlreadyExists):
            client.create_key(KEY_ID)
        data = os.urandom(args.size_mib * MiB)
        rows: list[tuple[str, float, float] | tuple[str, None, str]] = []
        contenders: list[tuple[str, Callable[[], Runs]]] = [
            ("raw AESGCM, 64 KiB chunks (ceiling)", lambda: raw_aesgcm(data)),
            ("raw AESGCM encrypt_into, one reused buffer", lambda: raw_aesgcm_into(data)),
            ("raw AESGCM + BytesIO reads", lambda: raw_aesgcm_with_reads(data)),
            (f"kms_client {version('kms-client')} streams", lambda: kms_client_streams(client, data)),
            (
                f"AWS Encryption SDK {version('aws-encryption-sdk')}, raw AES keyring",
                lambda: aws_encryption_sdk_streams(data),
            ),
            (f"Tink {version('tink')} AES256_GCM_HKDF_1MB", lambda: tink_streams(data)),
        ]
        prepared: list[tuple[str, Runs | None, str]] = []
        for name, prepare in contenders:
            print(f"preparing {name} ...", file=sys.stderr, flush=True)
            try:
                prepared.append((name, prepare(), ""))
            except ImportError as missing:
                prepared.append((name, None, f"skipped: {missing.name} is not installed"))
        # Rounds over all contenders rather than all runs of one then the next, so that a burst
        # of load from other processes on this shared machine does not land on one contender.
        times: dict[str, list[float]] = {name: [float("inf"), float("inf")] for name, _, _ in prepared}
        for round_number in range(args.repeat):
            print(f"round {round_number + 1} of {args.repeat} ...", file=sys.stderr, flush=True)
            for name, runs, _ in prepared:
                if runs is not None:
                    times[name] = [min(times[name][0], timed(runs[0])), min(times[name][1], timed(runs[1]))]
        size = len(data) / MiB
        for name, runs, note in prepared:
            rows.append((name, None, note) if runs is None else (name, size / times[name][0], size / times[name][1]))
        sample = client.generate_data_key(KEY_ID, CONTEXT)
        call_ms = (
            min(timed(lambda: client.generate_data_key(KEY_ID, CONTEXT)) for _ in range(5)) * 1000,
            min(timed(lambda: client.decrypt_data_key(sample.wrapped_key, CONTEXT)) for _ in range(5)) * 1000,
        )
        print("measuring small records ...", file=sys.stderr, flush=True)
        cached = small_records(target, True, args.records)
        uncached = small_records(target, False, args.records_uncached)

    ceiling = rows[0]
    print(f"\nLarge streams: {args.size_mib} MiB in memory, best of {args.repeat}, {os.cpu_count()} cores")
    print(f"{'':48s} {'encrypt MiB/s':>14s} {'of raw':>7s} {'decrypt MiB/s':>14s} {'of raw':>7s}")
    for name, encrypt_rate, decrypt_rate in rows:
        if encrypt_rate is None:
            print(f"{name:48s} {decrypt_rate}")
            continue
        print(
            f"{name:48s} {encrypt_rate:14,.0f} {encrypt_rate / ceiling[1]:7.0%} "
            f"{decrypt_rate:14,.0f} {decrypt_rate / ceiling[2]:7.0%}"
        )
    print(
        f"(kms_client's figures include its one service call per stream: GenerateDataKey {call_ms[0]:.1f} ms, "
        f"Decrypt {call_ms[1]:.1f} ms at best)"
    )
    print("\nSmall records (100 bytes), per second")
    print(f"{'':48s} {'encrypt/s':>14s} {'':7s} {'decrypt/s':>14s}")
    print(f"{'kms_client, data key caching on':48s} {cached[0]:14,.0f} {'':7s} {cached[1]:14,.0f}")
    print(f"{'kms_client, data key caching off':48s} {uncached[0]:14,.0f} {'':7s} {uncached[1]:14,.0f}")

    ours = rows[3]
    peers = [r for r in rows[4:] if r[1] is not None]
    if ours[1] is not None:
        verdicts = [
            f"encrypt {ours[1] / ceiling[1]:.0%} and decrypt {ours[2] / ceiling[2]:.0%} of raw AESGCM (target 80%)",
            f"encrypt {ours[1] / rows[1][1]:.0%} and decrypt {ours[2] / rows[1][2]:.0%}"
            " of raw AESGCM with encrypt_into",
            *(f"vs {name}: encrypt x{ours[1] / e:.1f}, decrypt x{ours[2] / d:.1f}" for name, e, d in peers),
        ]
        print("\n" + "\n".join(verdicts))


if __name__ == "__main__":
    main()
