"""The frozen blind index vectors (docs/vectors/blind-index-v1.json): a reader written from
docs/searchable-columns.md alone (the standard library's HMAC) gets every byte, and so does the
SDK (kms_client.blind_index, which uses pyca/cryptography's)."""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from pathlib import Path

import pytest

from kms_client.blind_index import blind_index, index_message

VECTORS = json.loads((Path(__file__).parents[3] / "docs" / "vectors" / "blind-index-v1.json").read_text())["vectors"]


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"vector{v['id']}")
def test_bytes_follow_from_the_specification(vector):
    value = bytes.fromhex(vector["value"])
    message = (
        _field(b"kms-blind-index-v1")
        + _field(vector["table"].encode())
        + _field(vector["column"].encode())
        + _field(value)
    )
    assert message.hex() == vector["message"]
    mac = hmac.new(bytes.fromhex(vector["index_key"]), message, hashlib.sha256).digest()
    assert mac.hex() == vector["mac"]
    assert vector["index"] == (bytes([vector["index_key_version"]]) + mac[: vector["size"]]).hex()


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"vector{v['id']}")
def test_the_sdk_makes_every_index(vector):
    value = bytes.fromhex(vector["value"])
    assert index_message(vector["table"], vector["column"], value).hex() == vector["message"]
    made = blind_index(
        bytes.fromhex(vector["index_key"]),
        vector["index_key_version"],
        vector["table"],
        vector["column"],
        value,
        vector["size"],
    )
    assert made.hex() == vector["index"]


def test_the_vectors_show_table_column_and_key_separation():
    indexes = [v["index"] for v in VECTORS[:4]]
    assert len({i[2:] for i in indexes}) == 4
    assert VECTORS[4]["index"] == VECTORS[0]["index"][: 2 + 2 * 2]
