"""Where PKCS#11 modules differ from the standard, keyed by the module's manufacturer id.

Adding a vendor means adding an entry here and configuring its module path; nothing else.

Not per vendor, so not in the table: python-pkcs11 0.10.1's ``verify`` answers a wrong MAC with
False (it catches CKR_SIGNATURE_INVALID and CKR_SIGNATURE_LEN_RANGE) rather than raising; the
audit seal's ``check`` relies on that (kms.hsm.audit_seal). And an attribute a token does not
report is left out of ``get_attributes``' answer, which object vetting counts as not shown
(kms.hsm.trust).
"""

from __future__ import annotations

from dataclasses import dataclass

import pkcs11.exceptions as p11


@dataclass(frozen=True)
class Quirks:
    # What C_Decrypt with CKM_AES_GCM raises when the tag does not verify. The standard says
    # CKR_ENCRYPTED_DATA_INVALID; CKR_ENCRYPTED_DATA_LEN_RANGE covers input shorter than a tag.
    gcm_auth_failures: tuple[type[p11.PKCS11Error], ...] = (p11.EncryptedDataInvalid, p11.EncryptedDataLenRange)
    # What C_UnwrapKey with CKM_AES_KEY_WRAP raises when the blob's integrity check fails.
    unwrap_failures: tuple[type[p11.PKCS11Error], ...] = (
        p11.WrappedKeyInvalid,
        p11.WrappedKeyLenRange,
        p11.EncryptedDataInvalid,
    )


STANDARD = Quirks()

_BY_MANUFACTURER = {
    # SoftHSM 2.6 reports a failed GCM tag check as CKR_GENERAL_ERROR (OpenSSL's EVP_DecryptFinal
    # failure is not translated)
    # failure is not translated); a failed RFC 3394 integrity check on unwrap likewise.
    "SoftHSM": Quirks(
        gcm_auth_failures=(*STANDARD.gcm_auth_failures, p11.GeneralError),
        unwrap_failures=(*STANDARD.unwrap_failures, p11.GeneralError),
    ),
}


def quirks_for(manufacturer_id: str) -> Quirks:
    return _BY_MANUFACTURER.get(manufacturer_id.strip(), STANDARD)
