"""Hypothesis strategies that damage valid inputs: fuzzing from a real sample gets past a parser's
first byte, where random bytes almost never do."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hypothesis import strategies as st


@st.composite
def mutations(
    draw: st.DrawFn,
    sample: bytes | st.SearchStrategy[bytes],
    fields: Callable[[bytes], Sequence[int]] = lambda blob: (),
    max_edits: int = 4,
) -> bytes:
    """``sample`` (or a draw from it) after 1 to ``max_edits`` edits: a byte flipped in some bits,
    bytes inserted, deleted, or overwritten with zeros or ones. Edits start anywhere, and often
    where ``fields(sample)`` says a field of the format starts, so that whole fields (a length,
    a counter) take their boundary values. The result may equal the sample (an insertion undone
    by a deletion); callers that need a change compare."""
    original = draw(sample) if isinstance(sample, st.SearchStrategy) else sample
    starts = [at for at in fields(original) if 0 <= at < len(original)]
    blob = bytearray(original)
    for _ in range(draw(st.integers(1, max_edits))):
        edit = draw(st.sampled_from(["flip", "insert", "delete", "zeros", "ones"]))
        anywhere = st.integers(0, max(len(blob) - 1, 0))
        at = draw(st.one_of(anywhere, st.sampled_from(starts)) if starts else anywhere)
        if edit == "insert":
            blob[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif not blob:
            continue
        elif edit == "flip":
            blob[min(at, len(blob) - 1)] ^= draw(st.integers(1, 255))
        elif edit == "delete":
            del blob[at : at + draw(st.integers(1, 4))]
        else:
            size = min(draw(st.sampled_from([1, 2, 4, 8])), len(blob) - at)
            blob[at : at + size] = (b"\x00" if edit == "zeros" else b"\xff") * size
    return bytes(blob)


def wrapped_key_fields(blob: bytes) -> list[int]:
    """Where each field of a wrapped key starts (docs/wrapped-key-format.md): format version,
    key id length, key id, key version, IV, sealed data key."""
    key_id_length = blob[1] if len(blob) > 1 else 0
    return [0, 1, 2, 2 + key_id_length, 6 + key_id_length, 18 + key_id_length]
