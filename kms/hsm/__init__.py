"""The only package that talks PKCS#11: module loading, the session pool, master key objects."""
