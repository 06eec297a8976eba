"""Values to and from the state table's DynamoDB items, for the records (orchestrator.state) and
the lock (orchestrator.lock) alike.

Items are written as DynamoDB's AttributeValue maps (`{"S": ...}`, `{"N": ...}`, `{"M": {...}}`)
by the few lines below rather than by boto3's TypeSerializer: the records hold only strings,
numbers, booleans, nulls, maps and lists, and importing boto3 for it cost every command some 11 ms
of CPU (boto3 pulls in s3transfer and multiprocessing), a fiftieth of a plan's."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from orchestrator.log import redactor


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
    return _attribute(storable(value))


def _attribute(value: Any) -> dict:
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):  # before int: a bool is an int to Python
        return {"BOOL": value}
    if isinstance(value, (int, Decimal)):
        if isinstance(value, Decimal) and not value.is_finite():
            raise TypeError(f"the state table stores no {value} (DynamoDB numbers are finite)")
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, dict):
        return {"M": {key: _attribute(item) for key, item in value.items()}}
    if isinstance(value, list):
        return {"L": [_attribute(item) for item in value]}
    raise TypeError(f"the state table stores no {type(value).__name__} values")


def _value(attribute: dict) -> Any:
    """The plain Python value of a DynamoDB attribute value (numbers as int or float)."""
    (kind, value), = attribute.items()
    if kind in ("S", "BOOL"):
        return value
    if kind == "N":
        return plain(Decimal(value))
    if kind == "NULL":
        return None
    if kind == "M":
        return {key: _value(item) for key, item in value.items()}
    if kind == "L":
        return [_value(item) for item in value]
    if kind in ("SS", "BS"):  # never written by the orchestrator; read as boto3 read them (an edit by hand)
        return set(value)
    if kind == "NS":
        return {Decimal(number) for number in value}
    if kind == "B":
        return value
    raise ValueError(f"a DynamoDB attribute of unknown type {kind}")


def serialize(values: dict) -> dict:
    """Each value of `values` as a DynamoDB attribute value."""
    return {key: attribute(value) for key, value in values.items()}


def fields(item: dict | None) -> dict:
    """A DynamoDB item as a plain dict, without its keys."""
    return {key: _value(value) for key, value in (item or {}).items()
            if key not in ("pk", "sk")}


def iso(seconds: float) -> str:
    """A time (seconds since the epoch, AWS's) as items and messages show it."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")
