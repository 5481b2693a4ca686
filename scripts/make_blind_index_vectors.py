#!/usr/bin/env python3
"""Writes docs/vectors/blind-index-v1.json: golden vectors of the blind index format, v1
(kms_client.blind_index, docs/searchable-columns.md).

Run once when the format version was introduced; the file is frozen afterwards (a new format
gets a new file). Inputs are fixed and HMAC-SHA256 is the standard library's, so the outputs can
be reproduced by anyone from the specification.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from pathlib import Path

from kms_client.blind_index import index_message

# (index key number, index key version, table, column, value, size)
CASES = [
    (1, 1, "customers", "email", b"ada@example.com", 8),
    (1, 1, "customers", "backup_email", b"ada@example.com", 8),
    (1, 1, "shop.customers", "email", b"ada@example.com", 8),
    (2, 2, "customers", "email", b"ada@example.com", 8),
    (1, 1, "customers", "email", b"ada@example.com", 2),
    (1, 1, "customers", "email", b"", 32),
    (3, 255, "t\u00e9", "\U0001f511", b'{"tier":"gold"}', 16),
]


def build() -> dict:
    vectors = []
    for number, (key_number, version, table, column, value, size) in enumerate(CASES, start=1):
        index_key = bytes((key_number * 37 + 11 * i) % 256 for i in range(32))
        message = index_message(table, column, value)
        mac = hmac.new(index_key, message, hashlib.sha256).digest()
        vectors.append(
            {
                "id": number,
                "index_key": index_key.hex(),
                "index_key_version": version,
                "table": table,
                "column": column,
                "value": value.hex(),
                "size": size,
                "message": message.hex(),
                "mac": mac.hex(),
                "index": (bytes([version]) + mac[:size]).hex(),
            }
        )
    return {
        "format": "kms blind index",
        "format_version": 1,
        "specification": "docs/searchable-columns.md",
        "notes": "index_key is the 32-byte data key the KMS unwraps for the application; cases 1-4 differ only in "
        "column, table and key; case 5 is case 1 truncated to 2 bytes",
        "vectors": vectors,
    }


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "vectors" / "blind-index-v1.json"
    if target.exists() and "--force" not in sys.argv:
        raise SystemExit(f"{target} exists and is frozen; a format change needs a new version")
    target.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {target}")
