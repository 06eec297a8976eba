"""Values to and from the state table's DynamoDB items, for the records (orchestrator.state) and
the lock (orchestrator.lock) alike."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from orchestrator.log import redactor

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def storable(value: Any) -> Any:
    """What DynamoDB accepts: floats as Decimal, tuples as lists, and every string passed through
    the redactor — a defensive pass, since records and outputs are secret-free by contract."""
    if isinstance(value, str):
        return redactor.clean(value)
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {str(key): storable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(item) for item in value]
    return value


def plain(value: Any) -> Any:
    """Decimals back to int or float, recursively."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def attribute(value: Any) -> dict:
    """One value as a DynamoDB attribute value (`{"S": ...}`, `{"N": ...}`, ...)."""
    return _serializer.serialize(storable(value))


def serialize(values: dict) -> dict:
    """Each value of `values` as a DynamoDB attribute value."""
    return {key: attribute(value) for key, value in values.items()}


def fields(item: dict | None) -> dict:
    """A DynamoDB item as a plain dict, without its keys."""
    return {key: plain(_deserializer.deserialize(value)) for key, value in (item or {}).items()
            if key not in ("pk", "sk")}


def iso(seconds: float) -> str:
    """A time (seconds since the epoch, AWS's) as items and messages show it."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")
