"""The step contract and the plan's data types.

A step turns (desired, observed) into a list of `Change`s — plain data that `plan` renders and
tests assert on — and `apply` carries out one change at a time. The engine knows steps only
through this contract; it names no AWS service.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Action = Literal["create", "update", "replace", "delete"]

#: Placeholder for a value that exists only once an upstream change has been applied.
KNOWN_AFTER_APPLY = "(known after apply)"

#: How a sensitive value shows in plans, logs and state.
SENSITIVE = "(sensitive)"


@dataclass(frozen=True)
class FieldDiff:
    """One field that differs: `old` is what AWS (or the last apply) has, `new` what the manifest wants."""

    field: str
    old: Any
    new: Any
    sensitive: bool = False

    def to_dict(self) -> dict:
        if self.sensitive:
            return {"field": self.field, "old": SENSITIVE, "new": SENSITIVE, "sensitive": True}
        return {"field": self.field, "old": self.old, "new": self.new}


@dataclass(frozen=True)
class Change:
    """One create / update / replace / delete on one resource.

    `kind` and `name` identify the resource inside its step (`subnet`, `private-a`). `calls`
    lists the API operations the change implies (`ec2:CreateSubnet`), for the plan and for
    tests. `payload` is the step's own data for `apply` (a desired resource, an observed id); it
    is never rendered. `record` is the last-applied configuration to keep in the state table
    for three-way comparison of fields AWS does not read back (None: nothing to keep).
    `blocked` names the flag without which the change is refused (data-holding resources).
    `holds_dependencies`: while this resource stays (its delete refused), it still uses what
    the steps it depends on own — destroy then keeps those too (a protected load balancer
    keeps its subnets).
    """

    action: Action
    kind: str
    name: str
    diffs: tuple[FieldDiff, ...] = ()
    calls: tuple[str, ...] = ()
    payload: Any = field(default=None, compare=False, repr=False)
    record: dict | None = field(default=None, compare=False, repr=False)
    blocked: str | None = None
    note: str = ""
    holds_dependencies: bool = False

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    def to_dict(self) -> dict:
        data = {"action": self.action, "kind": self.kind, "name": self.name,
                "diffs": [diff.to_dict() for diff in self.diffs], "calls": list(self.calls)}
        if self.blocked:
            data["blocked"] = self.blocked
        if self.note:
            data["note"] = self.note
        return data


@dataclass(frozen=True)
class Inputs:
    """What `desired` may read besides the manifest: facts gathered once per run, and the
    outputs of the steps this one depends on (values may be `KNOWN_AFTER_APPLY` in a plan)."""

    account_id: str
    region: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def output(self, step: str, key: str) -> Any:
        return self.outputs.get(step, {}).get(key, KNOWN_AFTER_APPLY)


class Step:
    """Base of every reconcile step. Subclasses set `name` and `depends_on` and implement:

    - ``desired(manifest, inputs)`` — pure: the resources this step owns, fully resolved.
    - ``observe(ctx, desired)`` — read-only calls; returns the step's own facts object, found by
      deterministic name and ownership tags. It must be usable by `apply` as working memory:
      `apply` updates it (new ids) so that `outputs` needs no second read. Facts only a delete
      needs are read when `ctx.destroying` or for resources the manifest no longer wants.
    - ``plan(desired, observed, recorded)`` — pure: the changes that close the gap. `recorded`
      maps `Change.key` to the `record` kept at the last apply.
    - ``apply(ctx, change, observed)`` — the calls for one change, then the wait.
    - ``outputs(desired, observed)`` — ids and names downstream steps read.
    - ``plan_destroy(observed)`` — pure: the deletes, in a safe order, for what this step owns.
    """

    name: ClassVar[str]
    depends_on: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def desired(self, manifest, inputs: Inputs) -> Any:
        raise NotImplementedError

    def observe(self, ctx, desired) -> Any:
        raise NotImplementedError

    def plan(self, desired, observed, recorded: dict[str, dict]) -> list[Change]:
        raise NotImplementedError

    def apply(self, ctx, change: Change, observed) -> None:
        raise NotImplementedError

    def outputs(self, desired, observed) -> dict[str, Any]:
        raise NotImplementedError

    def plan_destroy(self, observed) -> list[Change]:
        raise NotImplementedError


def diff_fields(desired: Any, actual: Any, fields: list[str] | tuple[str, ...]) -> tuple[FieldDiff, ...]:
    """Field-level differences between two objects (dataclasses or dicts) on the named fields."""

    def get(obj, name):
        if obj is None:
            return None
        if isinstance(obj, dict):
            return obj.get(name)
        return getattr(obj, name, None)

    return tuple(FieldDiff(name, get(actual, name), get(desired, name))
                 for name in fields if get(actual, name) != get(desired, name))


def as_plain(value: Any) -> Any:
    """A dataclass (or nested structure of them) as JSON-friendly plain data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [as_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    return value
