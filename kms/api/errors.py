"""From service exceptions to gRPC statuses, in one place.

Every KmsError becomes its own status code, its message, and the trailing metadata entry
``kms-error-reason`` naming the condition, from which clients rebuild a precise exception.
"""

from __future__ import annotations

import grpc

from kms.api.proto import pb
from kms.errors import KmsError

REASON_KEY = "kms-error-reason"


def status_code(error: KmsError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL)


def item_error(error: KmsError) -> pb.ItemError:
    return pb.ItemError(code=status_code(error).value[0], message=error.message, reason=error.reason)
