"""The kms command against a running server."""

from __future__ import annotations

import json
import subprocess

from tests.support.process import clean_env, kms_command


def kms(*args: str, target: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        kms_command(*args, "--target", target), env=clean_env(), capture_output=True, text=True, timeout=60
    )


def test_keys_create_rotate_get_list_in_json_and_text(server):
    created = kms(
        "keys",
        "create",
        "orders",
        "--description",
        "order rows",
        "--rotation-period",
        "30d",
        "--json",
        target=server.target,
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert (key["key_id"], key["primary_version"], key["rotation_period"]) == ("orders", 1, 30 * 86400)

    rotated = json.loads(kms("keys", "rotate", "orders", "--json", target=server.target).stdout)
    assert [v["version"] for v in rotated["versions"]] == [1, 2]

    text = kms("keys", "get", "orders", target=server.target).stdout
    assert "orders" in text and "ENABLED" in text and "WRAPPED" in text and "root " in text
    as_object = json.loads(
        kms("keys", "create", "objects", "--storage", "hsm-object", "--json", target=server.target).stdout
    )
    assert as_object["versions"][0]["hsm_label"].endswith(":objects:v1")
    listed = json.loads(kms("keys", "list", "--json", target=server.target).stdout)
    assert [k["key_id"] for k in listed] == ["objects", "orders"]
    assert "orders" in kms("keys", "list", target=server.target).stdout


def test_errors_go_to_stderr_with_a_nonzero_status(server):
    missing = kms("keys", "get", "nope", target=server.target)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: NOT_FOUND: key 'nope' not found"
    bad = kms("keys", "create", "bad id", target=server.target)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
