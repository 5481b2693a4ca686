"""Adapters that plug this service into other cryptographic libraries, each an optional extra.

- ``kms_client.integrations.tink``: a Tink ``KmsClient`` (``pip install 'kms-client[tink]'``);
- ``kms_client.integrations.aws_encryption_sdk``: a master key provider and a keyring for the
  AWS Encryption SDK (``pip install 'kms-client[aws]'``).

Nothing here is imported by ``kms_client`` itself: importing the SDK never imports Tink or the
AWS Encryption SDK. Import the submodule you use.
"""
