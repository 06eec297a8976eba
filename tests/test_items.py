"""The state table's items: written as DynamoDB's AttributeValue maps exactly as boto3's
TypeSerializer writes them (which the project no longer imports for this), and read back."""
from __future__ import annotations

from decimal import Decimal

import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from orchestrator.items import fields, plain, serialize, storable

RECORD = {"name": "gamepulse-dev-api", "count": 3, "ratio": 0.25, "tiny": -2.5e-7, "big": 10 ** 30,
          "ok": True, "off": False, "none": None, "tags": ["a", 1, {"deep": [None, 2.5]}], "empty": {}, "list": []}


def test_items_are_written_as_boto3_writes_them_and_read_back():
    written = serialize(RECORD)
    assert written == {key: TypeSerializer().serialize(storable(value)) for key, value in RECORD.items()}
    assert fields(written) == RECORD
    assert fields(written) == {key: plain(TypeDeserializer().deserialize(value)) for key, value in written.items()}


def test_values_dynamodb_cannot_hold_are_refused_before_any_call():
    for value, message in ((float("nan"), "NaN"), (Decimal("Infinity"), "Infinity"), ({"a", "b"}, "set")):
        with pytest.raises(TypeError, match=message):
            serialize({"value": value})


def test_set_and_binary_attributes_added_by_hand_are_read_as_boto3_reads_them():
    item = {"tags": {"SS": ["a", "b"]}, "sizes": {"NS": ["1", "2.5"]}, "blob": {"B": b"\x00"}}
    assert fields(item) == {key: TypeDeserializer().deserialize(value) for key, value in item.items()}
