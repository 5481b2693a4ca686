#!/usr/bin/env python3
"""Writes docs/vectors/wrapped-key-v1.json: golden vectors of the wrapped key format, v1.

Run once when the format version was introduced; the file is frozen afterwards (a new format
gets a new file). Inputs are fixed, AES-256-GCM is pyca/cryptography's, so the outputs can be
reproduced by anyone from the specification in docs/wrapped-key-format.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.context import encode_context
from kms.crypto.wrapped_key import WrappedKey, WrappedKeyHeader

CASES = [
    ("orders", 1, {}),
    ("orders", 7, {"tenant": "acme", "table": "orders"}),
    ("A" * 64, 4294967295, {"région": "Île-de-France", "empty": "", "🔑": "✓"}),
]


def build() -> dict:
    vectors = []
    for number, (key_id, version, context) in enumerate(CASES, start=1):
        master_key = bytes((number * 17 + i) % 256 for i in range(32))
        iv = bytes((number * 31 + i) % 256 for i in range(12))
        data_key = bytes((number * 47 + 3 * i) % 256 for i in range(32))
        header = WrappedKeyHeader(key_id, version)
        encoded_context = encode_context(context)
        associated_data = header.associated_data(encoded_context)
        sealed = AESGCM(master_key).encrypt(iv, data_key, associated_data)
        vectors.append(
            {
                "id": number,
                "master_key": master_key.hex(),
                "key_id": key_id,
                "key_version": version,
                "encryption_context": context,
                "data_key": data_key.hex(),
                "iv": iv.hex(),
                "header": header.encode().hex(),
                "encoded_context": encoded_context.hex(),
                "associated_data": associated_data.hex(),
                "wrapped_key": WrappedKey(header, iv, sealed).encode().hex(),
            }
        )
    return {
        "format": "kms wrapped key",
        "format_version": 1,
        "specification": "docs/wrapped-key-format.md",
        "notes": "master_key is the raw AES-256 key a master key version holds inside the HSM; it never leaves a real HSM",
        "vectors": vectors,
    }


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "vectors" / "wrapped-key-v1.json"
    if target.exists() and "--force" not in sys.argv:
        raise SystemExit(f"{target} exists and is frozen; a format change needs a new version")
    target.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {target}")
