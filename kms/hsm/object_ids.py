"""CKA_IDs of the objects this service creates: 16 bytes, the creation time in Unix
milliseconds (6 bytes, big-endian), then 10 random bytes. Unique per object, and they sort by
age, which is how the newest root key is told from older ones."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def new_object_id(now: datetime) -> bytes:
    milliseconds = int(now.timestamp() * 1000)
    return milliseconds.to_bytes(6, "big") + secrets.token_bytes(10)


def object_id_time(object_id: bytes) -> datetime:
    return datetime.fromtimestamp(int.from_bytes(object_id[:6], "big") / 1000, UTC)
