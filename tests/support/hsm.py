"""Looking at the token the way an operator would: with OpenSC's pkcs11-tool."""

from __future__ import annotations

import re
import subprocess


def pkcs11_tool_secret_keys(hsm_token) -> list[dict[str, str]]:
    """The secret key objects pkcs11-tool lists on the token, as dicts of its fields."""
    output = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            hsm_token.module_path,
            "--token-label",
            hsm_token.token_label,
            "--login",
            "--pin",
            hsm_token.read_pin(),
            "--list-objects",
            "--type",
            "secrkey",
        ],
        env={"SOFTHSM2_CONF": str(hsm_token.config_file), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = []
    for block in output.split("Secret Key Object")[1:]:
        fields = {"type": block.splitlines()[0].strip("; ")}
        for name, value in re.findall(r"^\s+(\w+):\s+(.*)$", block, flags=re.M):
            fields[name.lower()] = value.strip()
        objects.append(fields)
    return objects
