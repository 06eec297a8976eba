"""The step contract and the plan's data types.

A step turns (desired, observed) into a list of `Change`s — plain data that `plan` renders and
tests assert on — and `apply` carries out one change at a time. The engine knows steps only
through this contract; it names no AWS service.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Mapping

Action = Literal["create", "update", "replace", "delete"]
ACTIONS: tuple[str, ...] = ("create", "update", "replace", "delete")

#: How a value that exists only once an upstream change has been applied shows in plans.
KNOWN_AFTER_APPLY = "(known after apply)"


class Unknown(str):
    """A value that exists only once an upstream change has been applied: the output `source`
    (`vpc.vpc_id`) it waits for.

    It is a string so that a plan can carry it wherever the real value will stand (a sorted
    tuple of subnet ids, a field difference) and renders as "(known after apply)". It can never
    reach AWS: the client factory refuses any request that still holds one (or a string built
    from one), naming the step, the field and the output (`orchestrator.aws`).
    """

    source: str

    def __new__(cls, source: str = "") -> "Unknown":
        value = super().__new__(cls, KNOWN_AFTER_APPLY)
        value.source = source
        return value

    def __reduce__(self):
        return Unknown, (self.source,)


def recordable(text: str) -> str:
    """A message fit for the state table: one that quotes a plan's "(known after apply)" (a saved
    plan's refusal does) says it in other words, since the client factory rightly refuses to send
    any string holding the marker."""
    return text.replace(KNOWN_AFTER_APPLY, "(not known when planned)")


def is_unknown(value: Any) -> bool:
    """True for a value not known before apply, or a string built from one."""
    return isinstance(value, str) and KNOWN_AFTER_APPLY in value


class ContractError(Exception):
    """A step broke the step contract (it reads an output it did not declare a dependency on,
    or one that does not exist): a bug in the step, reported at once."""

#: The flags that let a run delete what holds data. A change `blocked` by one of them keeps its
#: data on purpose until the flag is passed; one blocked by anything else (a load balancer's
#: deletion protection) cannot be allowed from the command line: its `note` says what to change.
DELETE_DATA = "delete-data"
DELETE_SECRETS = "delete-secrets"
ALLOW_FLAGS = (DELETE_DATA, DELETE_SECRETS)

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
    `blocked` names why the change is refused: one of `ALLOW_FLAGS` (data-holding resources,
    allowed by that flag), or a condition no flag lifts (`note` says what to change first).
    `holds_dependencies`: while this resource stays (its delete refused), it still uses what
    the steps it depends on own — destroy then keeps those too (a protected load balancer
    keeps its subnets).
    `retire`: a delete of a resource that a replacement superseded (or that the manifest no
    longer wants) while later steps may still use it; the engine runs it in a final phase, in
    reverse graph order, once every step that depends on this one has moved off it.
    `outage`: for a replacement that must delete before it creates (a resource whose name
    cannot exist twice), what is unavailable in between; the plan shows it.
    `after`: the keys of the earlier changes of the same step this one needs made first (`()`:
    none besides the earlier changes of its own key, such as a replace's delete); the engine
    starts it beside other such changes as soon as those are made (IAM's roles together, each
    role's policies once it exists, mount targets once their file system is). Its handler's
    `ctx.settle()` settles the waits of those changes only, and it updates only its own
    resource in `observed`. None (the default): after every earlier change, alone; its
    handler's `ctx.settle()` settles every pending wait.
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
    retire: bool = False
    outage: str = ""
    after: tuple[str, ...] | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def needs(self) -> frozenset[str] | None:
        """The keys of the earlier changes this one waits for (`after`, and the earlier changes
        of its own key); None: every earlier change."""
        return None if self.after is None else frozenset((*self.after, self.key))

    @property
    def keeps_data(self) -> bool:
        """Refused for the data it holds: kept on purpose until its flag allows the delete."""
        return self.blocked in ALLOW_FLAGS

    def differs(self, *fields: str) -> bool:
        """The change closes a difference in one of these fields (what an update handler acts on)."""
        return any(diff.field in fields for diff in self.diffs)

    def tags_to_set(self) -> dict[str, str]:
        """The tags the change's `tags` difference puts (only our keys: see `tags.tag_diffs`)."""
        return next((diff.new for diff in self.diffs if diff.field == "tags"), {})

    def to_dict(self) -> dict:
        data = {"action": self.action, "kind": self.kind, "name": self.name,
                "diffs": [diff.to_dict() for diff in self.diffs], "calls": list(self.calls)}
        if self.blocked:
            data["blocked"] = self.blocked
        if self.note:
            data["note"] = self.note
        if self.retire:
            data["retire"] = True
        if self.outage:
            data["outage"] = self.outage
        return data


@dataclass(frozen=True)
class Wait:
    """A condition to await after AWS accepted a change: `check()` → (done, status), raising
    `waiters.WaitFailed` for a terminal failure. Waits are settled together after a step's
    changes were made and recorded (or earlier, where a later change needs one: `ctx.settle()`)."""

    what: str
    check: Callable[[], tuple[bool, str]] = field(compare=False, repr=False)
    timeout: float = 900.0
    #: For a wait that is a span of time (no AWS state to poll): the waiters' clock when it is
    #: over, so the poll sleeps to it instead of past it.
    due: float | None = None


@dataclass(frozen=True)
class Accepted:
    """What `apply` returns once AWS accepted a change: the last-applied configuration to keep
    (None: the change's own `record`), which may hold what only AWS's answer told (a new ARN, a
    revision, a hash), and the waits that settle the change."""

    record: dict | None = None
    waits: tuple[Wait, ...] = ()


@dataclass(frozen=True)
class Inputs:
    """What `desired` may read besides the manifest: facts gathered once per run, and the
    outputs of the steps this one depends on.

    `declared` names, per dependency, the outputs that step declares (its `Outputs` fields):
    reading any other step or key is a `ContractError` at once. A declared output with no value
    yet (a plan before the upstream step ran) is an `Unknown` naming it.
    """

    account_id: str
    region: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    declared: dict[str, tuple[str, ...]] | None = None
    partition: str = "aws"
    zones: Callable[[], list[str]] = field(default=lambda: [], compare=False, repr=False)
    #: Zone name → zone id; None where not known (a plan's unit test).
    zone_ids: Callable[[], dict[str, str]] | None = field(default=None, compare=False, repr=False)
    #: Endpoint service names → the zones each is offered in; None where not known.
    endpoint_zones: Callable[[tuple[str, ...]], dict[str, list[str]]] | None = field(
        default=None, compare=False, repr=False)

    def output(self, step: str, key: str) -> Any:
        if self.declared is not None:
            if step not in self.declared:
                raise ContractError(f"reads output {step}.{key} but does not depend on step {step} "
                                    f"(its dependencies: {', '.join(sorted(self.declared)) or 'none'})")
            if key not in self.declared[step]:
                near = difflib.get_close_matches(key, self.declared[step], n=1)
                raise ContractError(f"reads output {step}.{key}, which step {step} does not declare"
                                    + (f" (did you mean {near[0]}?)" if near else ""))
        value = self.outputs.get(step, {}).get(key, _MISSING)
        if value is _MISSING or value == KNOWN_AFTER_APPLY:
            return Unknown(f"{step}.{key}")
        return _mark_unknowns(value, f"{step}.{key}")

    def items(self, step: str, key: str, count: int = 1) -> list:
        """The list output `step.key` (subnet ids), or while it is not known `count` `Unknown`s
        naming it: as many as the manifest says there will be (one stands for any number)."""
        values = self.output(step, key)
        return [values] * count if is_unknown(values) else list(values)

    def entry(self, step: str, key: str, item: str) -> Any:
        """`item` of the output map `step.key` (a role ARN by task name), or an `Unknown` naming
        it while the map or the item is not known yet."""
        values = self.output(step, key)
        if isinstance(values, dict) and item in values:
            return values[item]
        return Unknown(f"{step}.{key}.{item}")


_MISSING = object()


def _mark_unknowns(value: Any, source: str) -> Any:
    """Placeholders inside a value read back from a record become `Unknown`s naming the output."""
    if isinstance(value, str) and not isinstance(value, Unknown) and value == KNOWN_AFTER_APPLY:
        return Unknown(source)
    if isinstance(value, dict):
        return {key: _mark_unknowns(item, f"{source}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_mark_unknowns(item, source) for item in value]
    return value


#: What every handler takes: the step, the run context, the change (its `payload` is the
#: step's typed record for it), and the step's facts, which the handler updates in place.
HANDLER_PARAMETERS = ("self", "ctx", "change", "observed")
Handler = Callable[[Any, Any, "Change", Any], "Accepted | None"]


class Step:
    """Base of every reconcile step. Subclasses set `name` and `depends_on` and implement:

    - ``desired(manifest, inputs)`` — pure: the resources this step owns, fully resolved.
    - ``observe(ctx, desired)`` — read-only calls; returns the step's own facts object, found by
      deterministic name and ownership tags. It is also `apply`'s working memory (see below).
      Facts only a delete needs are read when `ctx.destroying` or for resources the manifest
      no longer wants.
    - ``plan(desired, observed, recorded)`` — pure: the changes that close the gap. `recorded`
      maps `Change.key` to the `record` kept at the last apply.
    - ``handlers`` — the table `apply` dispatches by: (action, kind) → the method that carries
      out such a change, each with the one signature ``(self, ctx, change, observed)`` and
      reading its own typed `change.payload`. A table of the functions themselves (not names)
      so that static analysis sees every handler used; a handler with another signature is an
      error when the class is made, a change with no handler one at the change, naming both.
      Each handler is what ``apply(ctx, change, observed)`` runs: the calls AWS accepts for
      one change; it returns an `Accepted` (or None) with the record to keep and the waits that settle the change. The
      engine records the change at once, then settles the waits of all the step's changes
      together. A handler that needs an earlier change settled first calls `ctx.settle()`, before
      any call of its own (it settles what the change depends on: see `Change.after`): no
      handler waits between two calls. A replacement that must delete
      first (`Change.outage`) is planned as the old resource's delete, then the `replace` that
      creates the new one once the delete settled; a run killed between them finds the old one
      gone and plans a create.
      **A handler updates `observed` in place** to what AWS holds once it accepted the change:
      what it created is added with what AWS answered (ids, ARNs), what it changed is updated,
      what it deleted is removed. The engine never observes again after a change (AWS's reads
      may lag its writes, and a second read costs calls): the step's later handlers, `outputs`
      after apply and destroy (and so the step record and the inputs of dependants in the same
      run), the retire phase and prune's sweep for undescribed resources all read these facts.
    - ``outputs(desired, observed)`` — an instance of the step's `Outputs` dataclass: the ids
      and names downstream steps read (`Unknown` where not created yet).
    - ``plan_destroy(observed)`` — pure: the deletes, in a safe order, for what this step owns.
    - ``preflight(ctx, desired, observed)`` — read-only: what would make an apply fail later (a
      certificate that does not exist, a secret source that cannot be read, an image tag not
      pushed), one message each. The engine runs it for every selected step before any step
      applies; a problem stops the run before any change. Default: none.
    - ``remarks(desired, observed)`` — pure: what the plan should say that is not a change (a
      secret whose source is not set keeps its current value), one line each. Default: none.
    - ``permissions(manifest, scope)`` — the IAM statements the deploy role needs for this step's
      observe, apply and destroy, scoped to the environment's resource names
      (`orchestrator.permissions`; `orchestrator policy ENV` prints them all).
    - ``live(ctx, outputs)`` — read-only: what `status --live` shows of the step now (alarm
      states, URLs). Default: nothing.
    """

    name: ClassVar[str]
    depends_on: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    #: The dataclass `outputs` returns; its fields are what dependants may read.
    Outputs: ClassVar[type]
    #: (action, kind) → the handler `apply` runs for such a change (see the class docstring).
    handlers: ClassVar[Mapping[tuple[str, str], Handler]] = {}
    #: True when `observe` finds everything by what the manifest and the run's facts name (names,
    #: prefixes, the account), never by an upstream step's output: where an upstream output
    #: changed after this step was observed (its first apply creates it), the engine plans again
    #: from the same observation instead of reading AWS again.
    observes_by_manifest: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for (action, kind), handler in cls.handlers.items():
            if action not in ACTIONS:
                raise ContractError(f"step {cls.__name__}: handler {handler.__name__} is registered for "
                                    f"action {action!r}, which is none of {', '.join(ACTIONS)}")
            params = list(inspect.signature(handler).parameters)
            if params != list(HANDLER_PARAMETERS):
                raise ContractError(f"step {cls.__name__}: handler {handler.__name__} for {action} {kind} takes "
                                    f"({', '.join(params)}), not ({', '.join(HANDLER_PARAMETERS)})")

    def desired(self, manifest, inputs: Inputs) -> Any:
        raise NotImplementedError

    def observe(self, ctx, desired) -> Any:
        raise NotImplementedError

    def plan(self, desired, observed, recorded: dict[str, dict]) -> list[Change]:
        raise NotImplementedError

    def apply(self, ctx, change: Change, observed) -> Accepted | None:
        """Carry out one change by the handler registered for its action and kind."""
        handler = self.handlers.get((change.action, change.kind))
        if handler is None:
            raise ContractError(f"step {self.name} has no handler for {change.action} {change.kind} "
                                f"(change {change.key})")
        return handler(self, ctx, change, observed)

    def outputs(self, desired, observed) -> Any:
        raise NotImplementedError

    def plan_destroy(self, observed) -> list[Change]:
        raise NotImplementedError

    def preflight(self, ctx, desired, observed) -> list[str]:
        return []

    def remarks(self, desired, observed) -> list[str]:
        return []

    def permissions(self, manifest, scope) -> list[dict]:
        raise NotImplementedError

    def live(self, ctx, outputs: dict) -> dict:
        return {}

    def gone(self, ctx, arns: list[str]) -> set[str]:
        """Of the ARNs the tagging API lists with this environment's tags and no step describes,
        those of this step's kinds whose resource is already gone or going: the API keeps listing
        some (a deleted NAT gateway, an INACTIVE ECS service or cluster, a KMS key until its
        deletion date) for a while. Read-only."""
        return set()


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
