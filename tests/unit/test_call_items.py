"""Call.for_item: an item of a batch is the same caller, with a trail of its own."""

from __future__ import annotations

from dataclasses import fields

from kms.service.calls import Call


def test_an_item_keeps_every_field_of_its_call_but_the_trail():
    # A distinct value in every field, so that a field added later and not copied is caught.
    values = {field.name: object() for field in fields(Call) if field.name != "trail"}
    call = Call(**values)  # type: ignore[arg-type]
    call.trail.note(key_id="orders")
    item = call.for_item()
    assert {name: getattr(item, name) for name in values} == values
    assert item.trail is not call.trail and item.trail.key_id == ""
