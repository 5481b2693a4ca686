"""The service's own identities (kms:scheduler, kms:reconciler, kms:integrity) pass the door
without grants, so no certificate, principal or bootstrap admin may ever spell one."""

from __future__ import annotations

import pytest

from kms.config import Settings
from kms.domain.policy import RESERVED_SCHEMES, validate_identity, validate_principal
from kms.errors import InvalidArgument, KmsError
from kms.service.calls import SYSTEM_PREFIX, internal


def test_the_system_prefix_is_a_reserved_scheme():
    assert SYSTEM_PREFIX.endswith(":") and SYSTEM_PREFIX[:-1] in RESERVED_SCHEMES


@pytest.mark.parametrize("task", ["scheduler", "reconciler", "integrity"])
def test_no_grant_or_identity_can_name_an_internal_principal(task):
    identity = internal(task).identity
    assert identity.startswith(SYSTEM_PREFIX)
    with pytest.raises(InvalidArgument):
        validate_principal(identity)
    with pytest.raises(KmsError):
        validate_identity(identity)
    with pytest.raises(KmsError):
        validate_identity(identity.upper())


def test_the_bootstrap_admin_must_be_an_identity_a_certificate_can_have(tmp_path):
    for bad in ("kms:scheduler", "group:admins", "admin", "cn:"):
        with pytest.raises(ValueError, match="KMS_BOOTSTRAP_ADMIN"):
            Settings(data_dir=tmp_path, bootstrap_admin=bad)
    assert Settings(data_dir=tmp_path, bootstrap_admin="spiffe://kms.dev/admin").bootstrap_admin
