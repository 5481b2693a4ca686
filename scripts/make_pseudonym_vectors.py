#!/usr/bin/env python3
"""Writes docs/vectors/pseudonym-v1.json: golden vectors of the pseudonym (token) format, v1.

Run once when the format version was introduced; the file is frozen afterwards (a new format
gets a new file). Inputs are fixed and HMAC-SHA256 is the standard library's, so the outputs can
be reproduced by anyone from the specification in docs/pseudonymization.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from pathlib import Path

from kms.crypto import pseudonym
from kms.crypto.context import encode_context

# (HMAC key number, key id, version, context, value): the key number picks the version's key, so
# two cases with the same number are the same version of the same key.
CASES = [
    (1, "emails", 1, {}, b""),
    (1, "emails", 1, {"purpose": "analytics"}, b"ada@example.com"),
    (1, "emails", 1, {"purpose": "support"}, b"ada@example.com"),
    (2, "emails", 2, {"purpose": "analytics"}, b"ada@example.com"),
    (1, "emails", 1, {"purpose": "analytics"}, "zoë@exämple.com".encode()),
    (3, "A" * 64, 4294967295, {"région": "Île-de-France", "empty": "", "🔑": "✓"}, bytes(range(256)) * 16),
]


def build() -> dict:
    vectors = []
    for number, (key_number, key_id, version, context, value) in enumerate(CASES, start=1):
        hmac_key = bytes((key_number * 29 + 7 * i) % 256 for i in range(32))
        encoded_context = encode_context(context)
        message = pseudonym.message(pseudonym.message_prefix(key_id, version, encoded_context), value)
        mac = hmac.new(hmac_key, message, hashlib.sha256).digest()
        vectors.append(
            {
                "id": number,
                "hmac_key": hmac_key.hex(),
                "key_id": key_id,
                "key_version": version,
                "context": context,
                "value": value.hex(),
                "encoded_context": encoded_context.hex(),
                "message": message.hex(),
                "mac": mac.hex(),
                "token": pseudonym.token(version, mac),
            }
        )
    return {
        "format": "kms pseudonym",
        "format_version": 1,
        "specification": "docs/pseudonymization.md",
        "notes": "hmac_key is the raw 32-byte HMAC-SHA256 key a PSEUDONYMIZE key version holds inside the HSM; "
        "it never leaves a real HSM. Cases 2 and 3 differ only in context, 2 and 4 only in version.",
        "vectors": vectors,
    }


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "vectors" / "pseudonym-v1.json"
    if target.exists() and "--force" not in sys.argv:
        raise SystemExit(f"{target} exists and is frozen; a format change needs a new version")
    target.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {target}")
