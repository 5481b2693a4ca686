"""CRC32C as the API's *_crc32c fields carry it: the Castagnoli polynomial, with the check value
of the CRC catalogue and the test vectors of RFC 3720 (iSCSI), appendix B.4."""

from __future__ import annotations

import pytest

from kms.crypto.checksums import crc32c, matches
from kms_client._checksums import crc32c as sdk_crc32c


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"123456789", 0xE3069283),
        (bytes(32), 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
        (b"", 0),
    ],
)
def test_service_and_sdk_compute_the_rfc_3720_values(data, expected):
    assert crc32c(data) == expected == sdk_crc32c(data)
    assert matches(data, expected)
    assert not matches(data, expected ^ 1)
