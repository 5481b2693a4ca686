"""Byte-level recipes: the only modules that know a wire format's layout.

The AES-GCM that wraps data keys runs inside the HSM; these modules define exactly which bytes
go in (the associated data) and how the result is laid out.
"""
