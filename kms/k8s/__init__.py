"""The Kubernetes KMS v2 plugin (``kms k8s-plugin``): kube-apiserver's encryption at rest
through this KMS. docs/integrations/kubernetes.md says how to run it."""

from kms.k8s.plugin import (
    API_VERSION,
    CIPHERTEXT_REFUSED,
    MAX_CIPHERTEXT_BYTES,
    KeyManagementServicer,
    KmsPlugin,
    PluginConfig,
    Sealed,
    open_channel,
)
from kms.k8s.server import PluginServer
from kms.k8s.status import HEALTHY, KeyStatus, StatusReport, key_id_for
from kms.k8s.unix_socket import SocketInUse, SocketPathRefused

__all__ = [
    "API_VERSION",
    "CIPHERTEXT_REFUSED",
    "HEALTHY",
    "MAX_CIPHERTEXT_BYTES",
    "KeyManagementServicer",
    "KeyStatus",
    "KmsPlugin",
    "PluginConfig",
    "PluginServer",
    "Sealed",
    "SocketInUse",
    "SocketPathRefused",
    "StatusReport",
    "key_id_for",
    "open_channel",
]
