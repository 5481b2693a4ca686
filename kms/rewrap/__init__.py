"""Re-wrapping a whole corpus of stored wrapped keys or SDK ciphertexts onto primary versions:
the engine behind ``kms rewrap``. A client of the service, like the SDK."""
