"""The frozen pseudonym vectors (docs/vectors/pseudonym-v1.json): their bytes follow from the
specification in docs/pseudonymization.md by a reader written from it alone (the standard
library's HMAC, no kms.crypto), and the service, HMAC in the HSM included, makes every token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from kms.domain.keys import Key, KeyVersion, Purpose, VersionState
from kms.service.calls import Call

VECTORS = json.loads((Path(__file__).parents[2] / "docs" / "vectors" / "pseudonym-v1.json").read_text())["vectors"]


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _encoded_context(context: dict[str, str]) -> bytes:
    entries = sorted((k.encode(), v.encode()) for k, v in context.items())
    out = struct.pack(">H", len(entries))
    for key, value in entries:
        out += struct.pack(">H", len(key)) + key + struct.pack(">H", len(value)) + value
    return out


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"vector{v['id']}")
def test_bytes_follow_from_the_specification(vector):
    encoded_context = _encoded_context(vector["context"])
    assert encoded_context.hex() == vector["encoded_context"]
    message = (
        _field(b"kms-pseudonym-v1")
        + _field(vector["key_id"].encode())
        + struct.pack(">I", vector["key_version"])
        + _field(encoded_context)
        + _field(bytes.fromhex(vector["value"]))
    )
    assert message.hex() == vector["message"]
    mac = hmac.new(bytes.fromhex(vector["hmac_key"]), message, hashlib.sha256).digest()
    assert mac.hex() == vector["mac"]
    text = base64.urlsafe_b64encode(mac).decode().rstrip("=")
    assert vector["token"] == f"kps1.{vector['key_version']}.{text}"
    assert len(text) == 43


def test_the_vectors_show_context_and_version_separation():
    by_id = {v["id"]: v for v in VECTORS}
    assert by_id[2]["value"] == by_id[3]["value"] and by_id[2]["token"] != by_id[3]["token"]
    assert by_id[2]["context"] == by_id[4]["context"] and by_id[2]["token"] != by_id[4]["token"]


@pytest.fixture
def service_with_vector_keys(sqlite_services):
    """Each vector's HMAC key imported into the HSM and recorded as its key's version
    (HSM_OBJECT storage) of a PSEUDONYMIZE key, used by the service's own Pseudonymize path.
    The service never uses an imported key (kms.hsm.trust): these keys are known by design, so
    the pseudonym service here is built on a master key store that takes them."""
    from kms.hsm.master_keys import Pkcs11MasterKeyStore
    from kms.service.pseudonyms import PseudonymService

    services = sqlite_services
    now = datetime.now(UTC)
    imported: list[KeyVersion] = []
    versions: dict[str, dict[int, KeyVersion]] = {}
    for vector in VECTORS:
        if vector["key_version"] in versions.get(vector["key_id"], {}):
            continue
        object_id = secrets.token_bytes(16)
        services.pool.run(
            lambda pooled, v=vector, oid=object_id: pooled.session.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                    Attribute.VALUE: bytes.fromhex(v["hmac_key"]),
                    Attribute.ID: oid,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SIGN: True,
                    Attribute.VERIFY: True,
                }
            )
        )
        version = KeyVersion(
            vector["key_id"], vector["key_version"], VersionState.ENABLED, object_id.hex(), "vector", now
        )
        versions.setdefault(vector["key_id"], {})[vector["key_version"]] = version
        imported.append(version)
    for key_id, by_number in versions.items():
        numbered = tuple(by_number[n] for n in sorted(by_number))
        with services.repository.transaction(key_id) as transaction:
            transaction.save(Key(key_id, "", max(by_number), numbered, now, now, purpose=Purpose.PSEUDONYMIZE))
    services.integrity.refresh()
    known_keys = Pkcs11MasterKeyStore(
        services.pool,
        services.clock,
        services.settings.pkcs11_label_prefix,
        hierarchy=services.master_keys.hierarchy,
        vet=lambda found: (),
    )
    yield PseudonymService(services.cache, known_keys, services.usage, services.authorizer)
    for version in imported:
        known_keys.destroy(version)


def test_the_service_makes_every_vectors_token_in_the_hsm(service_with_vector_keys):
    for vector in VECTORS:
        made = service_with_vector_keys.pseudonymize(
            Call(),
            vector["key_id"],
            [bytes.fromhex(vector["value"])],
            vector["context"],
            key_version=vector["key_version"],
        )
        assert (made.key_version, made.results) == (vector["key_version"], [vector["token"]])
