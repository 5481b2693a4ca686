"""kms encrypt / kms decrypt against a running server, as a user runs them."""

from __future__ import annotations

import json
import os
import pty
import subprocess

from kms_client import parse_header_bytes
from tests.support.process import clean_env, kms_command


def kms(*args: str, target: str, stdin: bytes | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        kms_command(*args, "--target", target), input=stdin, env=clean_env(), capture_output=True, timeout=120, **kwargs
    )


def test_files_round_trip_with_a_context(server, orders, tmp_path):
    plain = tmp_path / "report.csv"
    plain.write_bytes(os.urandom(300_000))
    sealed, opened = tmp_path / "report.csv.kmse", tmp_path / "report.out.csv"
    done = kms(
        "encrypt",
        "--key-id",
        orders,
        "-c",
        "tenant=acme",
        "-c",
        "kind=report",
        "-i",
        str(plain),
        "-o",
        str(sealed),
        "--json",
        target=server.target,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["plaintext_bytes"] == 300_000
    header = parse_header_bytes(sealed.read_bytes())
    assert (header.key_id, dict(header.context)) == (orders, {"tenant": "acme", "kind": "report"})
    done = kms(
        "decrypt", "-c", "kind=report", "-c", "tenant=acme", "-i", str(sealed), "-o", str(opened), target=server.target
    )
    assert done.returncode == 0, done.stderr
    assert opened.read_bytes() == plain.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".kms-")]


def test_stdin_to_stdout(server, orders):
    sealed = kms("encrypt", "--key-id", orders, stdin=b"piped secret", target=server.target)
    assert sealed.returncode == 0, sealed.stderr
    opened = kms("decrypt", stdin=sealed.stdout, target=server.target)
    assert (opened.returncode, opened.stdout) == (0, b"piped secret")


def test_a_failed_decryption_leaves_no_output_file(server, orders, tmp_path):
    sealed = kms(
        "encrypt",
        "--key-id",
        orders,
        "-c",
        "tenant=acme",
        "--frame-size",
        "1024",
        stdin=os.urandom(10_000),
        target=server.target,
    ).stdout
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "plain.bin"
    wrong = kms("decrypt", "-c", "tenant=umbrella", "-o", str(target), stdin=sealed, target=server.target)
    assert wrong.returncode == 1 and b"error: INVALID_ARGUMENT" in wrong.stderr
    cut = kms(
        "decrypt", "-c", "tenant=acme", "-o", str(target), stdin=sealed[: -(1024 + 16) * 2 - 200], target=server.target
    )
    assert cut.returncode == 1 and b"error: INVALID_ARGUMENT" in cut.stderr
    assert list((tmp_path / "out").iterdir()) == []
    bad = kms("decrypt", "-c", "tenant", stdin=sealed, target=server.target)
    assert bad.returncode == 2 and b"KEY=VALUE" in bad.stderr


def test_a_progress_bar_on_a_terminal_for_a_large_input(server, orders, tmp_path):
    plain = tmp_path / "big.bin"
    plain.write_bytes(os.urandom(20 * 1024 * 1024))
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            kms_command(
                "encrypt",
                "--key-id",
                orders,
                "-i",
                str(plain),
                "-o",
                str(tmp_path / "big.kmse"),
                "--target",
                server.target,
            ),
            env={**clean_env(), "COLUMNS": "100", "TERM": "xterm"},
            stdout=subprocess.PIPE,
            stderr=terminal,
            timeout=120,
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0
    assert b"encrypting" in shown
