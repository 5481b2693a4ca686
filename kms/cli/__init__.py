"""The ``kms`` command."""
