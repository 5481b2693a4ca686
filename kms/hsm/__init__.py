"""The only package that talks PKCS#11: module loading, the session pool, master key objects,
the audit seal key, and the vetting that decides whether an object found may be used (trust)."""
