"""The generated messages and service descriptors, from the kms-proto distribution (scripts/gen_proto.py)."""

from kms_proto.kms.v1 import kms_pb2 as pb

SERVICE_NAME = "kms.v1.KeyManagementService"
SERVICE = pb.DESCRIPTOR.services_by_name["KeyManagementService"]
POLICY_SERVICE = pb.DESCRIPTOR.services_by_name["PolicyService"]
AUDIT_SERVICE = pb.DESCRIPTOR.services_by_name["AuditService"]
SERVICES = (SERVICE, POLICY_SERVICE, AUDIT_SERVICE)

__all__ = ["AUDIT_SERVICE", "POLICY_SERVICE", "SERVICE", "SERVICES", "SERVICE_NAME", "pb"]
