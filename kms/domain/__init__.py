"""The rules of keys and versions, as plain data and functions (no I/O, no frameworks)."""
