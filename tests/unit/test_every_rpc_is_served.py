"""Every RPC the proto declares has a behavior on its servicer (none answers UNIMPLEMENTED)."""

from __future__ import annotations

import pytest

from kms.api.audit_servicer import AuditServicer
from kms.api.policy_servicer import PolicyServicer
from kms.api.proto import pb
from kms.api.servicer import KeyManagementServicer

SERVICERS = {
    "KeyManagementService": KeyManagementServicer,
    "PolicyService": PolicyServicer,
    "AuditService": AuditServicer,
}


@pytest.mark.parametrize(
    ("service", "method"),
    [(s.name, m.name) for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods],
)
def test_the_rpc_has_a_behavior(service, method):
    assert callable(getattr(SERVICERS[service], method, None)), f"{service}.{method} is not served"
