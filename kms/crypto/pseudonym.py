"""The pseudonym (token) format, v1: what the HSM's HMAC covers and how a token is written.

A token is HMAC-SHA256, under one version of a PSEUDONYMIZE key, of a message that binds every
input by length (docs/pseudonymization.md, with test vectors in docs/vectors/pseudonym-v1.json):

    message = text("kms-pseudonym-v1") || text(key id) || uint32 version
              || bytes(encoded context) || bytes(value)

where ``text`` and ``bytes`` are a uint32 big-endian length followed by the bytes (UTF-8 for
text), and the encoded context is the canonical encoding of kms.crypto.context. The token is

    "kps1." || decimal version || "." || base64url(MAC) without padding    (43 characters)

so it names the version that made it: a join that must survive a rotation pins that version.

Everything but the value is the same for every value of a call, so ``message_prefix`` is built
once per call and ``message`` adds one length and the value; likewise ``tokens`` writes the
"kps1.<version>." part once for a whole batch.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Sequence

LABEL = b"kms-pseudonym-v1"
TOKEN_PREFIX = "kps1"
MAC_BYTES = 32
MAX_VALUE_BYTES = 4096

_U32 = struct.Struct(">I")
_TOKEN = re.compile(r"kps1\.([1-9][0-9]{0,9})\.([A-Za-z0-9_-]{43})")
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_UNPADDED = 43  # base64 characters of 32 bytes, without the one "=" of padding


def _field(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def message_prefix(key_id: str, version: int, encoded_context: bytes) -> bytes:
    """The part of the message shared by every value of one call."""
    return _field(LABEL) + _field(key_id.encode("utf-8")) + _U32.pack(version) + _field(encoded_context)


def message(prefix: bytes, value: bytes) -> bytes:
    """The HMAC input for ``value``; ``prefix`` from ``message_prefix``."""
    return prefix + _U32.pack(len(value)) + value


def token(version: int, mac: bytes) -> str:
    """The token text of a 32-byte MAC made by ``version``."""
    return tokens(version, (mac,))[0]


def tokens(version: int, macs: Sequence[bytes]) -> list[str]:
    """The token text of each 32-byte MAC made by ``version``, in order."""
    # binascii and a translation table, rather than base64.urlsafe_b64encode and rstrip: the
    # same text at half the cost, which counts at 1000 tokens a call (bench_pseudonymize.py).
    head = f"{TOKEN_PREFIX}.{version}."
    texts = []
    for mac in macs:
        if len(mac) != MAC_BYTES:
            raise ValueError("an HMAC-SHA256 is 32 bytes")
        texts.append(head + binascii.b2a_base64(mac, newline=False)[:_UNPADDED].translate(_URLSAFE).decode("ascii"))
    return texts


def parse_token(text: str) -> tuple[int, bytes]:
    """(version, MAC) of a token; raises ValueError for text that is not a v1 token."""
    found = _TOKEN.fullmatch(text)
    if found is None or int(found.group(1)) > 0xFFFFFFFF:
        raise ValueError("not a kps1 token")
    mac = base64.urlsafe_b64decode(found.group(2) + "=")
    if base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii") != found.group(2):
        raise ValueError("not a kps1 token")  # non-canonical trailing bits
    return int(found.group(1)), mac
