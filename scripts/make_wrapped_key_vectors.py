#!/usr/bin/env python3
"""Writes docs/vectors/wrapped-key-v1.json (and, with --format 2, wrapped-key-v2.json): golden
vectors of the wrapped key formats.

Run once when the format version was introduced; the file is frozen afterwards (a new format
gets a new file). Inputs are fixed, AES-256-GCM is pyca/cryptography's, so the outputs can be
reproduced by anyone from the specification in docs/wrapped-key-format.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto import subject_key as subject_format
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
        "notes": (
            "master_key is the raw AES-256 key a master key version holds inside the HSM; it never leaves a real HSM"
        ),
        "vectors": vectors,
    }


# Format 2 (a data subject's data key, docs/wrapped-key-format.md "Format 2"): the data key under
# the subject's key, the subject's key under a master key version, and the subject's digest.
CASES_V2 = [
    ("people", 1, {"user_id": "alice"}),
    ("people", 7, {"user_id": "bob", "table": "orders", "tenant": "acme"}),
    ("B" * 64, 4294967295, {"user_id": "Zoë ✓", "région": "Île-de-France"}),
]


def build_v2() -> dict:
    vectors = []
    for number, (key_id, version, context) in enumerate(CASES_V2, start=1):
        master_key = bytes((number * 19 + i) % 256 for i in range(32))
        digest_key = bytes((number * 23 + 5 * i) % 256 for i in range(32))
        subject_key = bytes((number * 29 + 7 * i) % 256 for i in range(32))
        data_key = bytes((number * 37 + 3 * i) % 256 for i in range(32))
        subject_key_iv = bytes((number * 41 + i) % 256 for i in range(12))
        data_key_iv = bytes((number * 43 + i) % 256 for i in range(12))
        digest = subject_format.subject_digest(digest_key, key_id, context["user_id"])
        subject_key_ad = subject_format.subject_key_associated_data(key_id, digest, version)
        header = subject_format.header(key_id)
        encoded_context = encode_context(context)
        vectors.append(
            {
                "id": number,
                "key_id": key_id,
                "subject_field": "user_id",
                "encryption_context": context,
                "digest_key": digest_key.hex(),
                "subject_digest": digest,
                "master_key": master_key.hex(),
                "master_key_version": version,
                "subject_key": subject_key.hex(),
                "subject_key_iv": subject_key_iv.hex(),
                "subject_key_associated_data": subject_key_ad.hex(),
                "wrapped_subject_key": AESGCM(master_key).encrypt(subject_key_iv, subject_key, subject_key_ad).hex(),
                "data_key": data_key.hex(),
                "iv": data_key_iv.hex(),
                "header": header.hex(),
                "encoded_context": encoded_context.hex(),
                "associated_data": (header + encoded_context).hex(),
                "wrapped_key": subject_format.wrap_data_key(
                    subject_key, key_id, data_key, encoded_context, iv=data_key_iv
                ).hex(),
            }
        )
    return {
        "format": "kms wrapped key",
        "format_version": 2,
        "specification": "docs/wrapped-key-format.md",
        "notes": (
            "digest_key is derived inside the HSM and master_key never leaves it; both are given here so that "
            "the bytes can be checked. wrapped_subject_key is what the subject_keys table stores after its IV: "
            "ciphertext then tag."
        ),
        "vectors": vectors,
    }


if __name__ == "__main__":
    version = sys.argv[sys.argv.index("--format") + 1] if "--format" in sys.argv else "1"
    target = Path(__file__).resolve().parent.parent / "docs" / "vectors" / f"wrapped-key-v{version}.json"
    if target.exists() and "--force" not in sys.argv:
        raise SystemExit(f"{target} exists and is frozen; a format change needs a new version")
    built = build() if version == "1" else build_v2()
    target.write_text(json.dumps(built, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {target}")
