"""The reconcile engine: observe, compare, act — for every selected step, in graph order.

It knows steps only through the contract in `orchestrator.model` and AWS only through the
client factory. A step whose upstream outputs are known from the state records observes at
once, together with the others, not after its upstream steps; it observes again only where
an upstream output really changed. A change has two phases: the calls AWS accepts, after
which the state store records it (with what apply learned; the records of changes accepted
one after another with no wait between them in one write, which for the last of a step's
changes is the write of the step's outcome), then its waits, settled together with the waits
of the step's other changes. Deletes a step marks `retire` (what a replacement superseded,
what the manifest no longer wants) run in a final phase, in reverse graph order, after every
step that depends on it has moved to what replaced it.
"""
from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import json
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from orchestrator.aws import Aws, current_step, error_code
from orchestrator.context import StepContext
from orchestrator.errors import Interrupted, LockLost, OrchestratorError
from orchestrator.graph import StepGraph
from orchestrator.log import get_logger, redactor
from orchestrator.model import Accepted, Change, Inputs, Step, as_plain, is_unknown, recordable
from orchestrator.render import refusal
from orchestrator.scheduler import run_concurrently

log = get_logger("orchestrator.engine")

#: How many of a step's changes that name what they need (`Change.after`) are made at once: AWS
#: throttles mutating calls harder than reads (IAM, CloudWatch: a few per second per account).
CHANGES_AT_ONCE = 4


@dataclass
class StepResult:
    step: str
    status: str = "pending"  # ok | failed | skipped | pending
    changes: list[Change] = field(default_factory=list)
    applied: list[Change] = field(default_factory=list)
    refused: list[Change] = field(default_factory=list)
    #: What the step's pre-flight checks found would fail later (read-only; stops an apply).
    problems: list[str] = field(default_factory=list)
    #: What the plan says that is not a change (`Step.remarks`): a kept secret value.
    remarks: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    #: The steps that depend on this one: they move to what a replacement creates.
    dependants: tuple[str, ...] = ()
    #: The failure itself, for callers that want more than `error`'s one line.
    exception: BaseException | None = field(default=None, repr=False)
    #: A digest of what the step was planned to reach (`desired_hash`): a saved plan keeps it, so
    #: that its apply sees when the inputs besides the manifest (config files) changed.
    desired_digest: str = ""

    def summary(self) -> dict:
        return {"status": self.status, "changes": len(self.applied) if self.applied else len(self.changes),
                "refused": [c.key for c in self.refused], "seconds": round(self.seconds, 2),
                **({"error": recordable(self.error)} if self.error else {})}


def output_fields(step: Step) -> tuple[str, ...]:
    """The outputs a step declares: the fields of its `Outputs` dataclass."""
    return tuple(f.name for f in dataclasses.fields(step.Outputs))


def known_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    """The outputs that are known (what the state table keeps): a value not known yet, or holding
    one, is left out, and reads back as not known yet."""
    def holds_unknown(value: Any) -> bool:
        if isinstance(value, dict):
            return any(holds_unknown(item) for item in value.values())
        if isinstance(value, list):
            return any(holds_unknown(item) for item in value)
        return is_unknown(value)

    return {key: value for key, value in outputs.items() if not holds_unknown(value)}


def desired_hash(desired: Any) -> str:
    text = json.dumps(as_plain(desired), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_error(error: Exception) -> str:
    """A one-line, secret-free description of what went wrong, naming the AWS operation."""
    code = error_code(error)
    if not code:
        return redactor.clean(str(error).strip() or type(error).__name__)
    message = error.response.get("Error", {}).get("Message", "").strip()
    if message.startswith("<"):  # a web page, not an AWS answer: say so instead of printing HTML
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", code)
        message = (f"HTTP {status} with a web page instead of an AWS answer (does the endpoint, an emulator or "
                   "proxy, support this operation?)")
    operation = getattr(error, "operation_name", "")
    return redactor.clean(f"{operation + ': ' if operation else ''}{code}: {message}")


class Review(Protocol):
    """Who decides, between planning and changing, that an apply goes on: a person confirming
    on a terminal, or a saved plan that the fresh plan must match. Either raises to stop."""

    def approve(self, planned: dict[str, StepResult], records: dict[str, dict]) -> None:
        """Called once every selected step is planned (and passed pre-flight), before any change,
        with the state records the plan was computed from."""

    def admit(self, step: str, changes: list[Change]) -> None:
        """Called as each step is about to make its changes (re-planned where an upstream step
        changed what it reads): raise to stop the step before any of its calls."""


class Engine:
    """Runs plan, apply and destroy over the selected steps of a graph."""

    def __init__(self, manifest, aws: Aws, graph: StepGraph, *, store=None, lease=None,
                 allow: Iterable[str] = (), parallelism: int | None = None):
        self.manifest = manifest
        self.aws = aws
        self.graph = graph
        self.store = store
        self.lease = lease
        #: Idempotency tokens are this run's (StepContext.token).
        self.run_id = getattr(lease, "run_id", None) or uuid.uuid4().hex
        self.allow = frozenset(allow)
        self.parallelism = parallelism
        self.results: dict[str, StepResult] = {}
        #: Set on Ctrl-C: steps finish the change in progress and start no other.
        self.cancelled = threading.Event()
        self._records: dict[str, dict] = {}
        #: Per step that applied: what its retire phase needs (context, facts, deferred deletes).
        self._retiring: dict[str, tuple[StepContext, Any, list[Change], str]] = {}
        #: Per step planned: the upstream outputs it was planned with, its desired and observed
        #: facts (apply reuses them when the upstream outputs are still the same).
        self._planned: dict[str, tuple[dict, Any, Any, list[Change], str]] = {}
        #: Per step observed early (`_observe_early`): the upstream outputs (from the records) it
        #: was observed with, its desired facts, and what its observe returned or raised.
        self._early: dict[str, tuple[dict, Any, Any, BaseException | None]] = {}
        self._early_seconds: dict[str, float] = {}  # how long each early observation took
        #: Per step pruned: the facts its observe returned.
        self.observed: dict[str, Any] = {}
        #: The review of the apply in progress (see `Review`), if any.
        self._review: Review | None = None

    @property
    def records(self) -> dict[str, dict]:
        """The state records (per step) the last plan or apply was computed from."""
        return self._records

    # -- public commands -------------------------------------------------------------------

    def plan(self, targets: Iterable[str] = ()) -> dict[str, StepResult]:
        """Read-only: what apply would change. Upstream values not yet known show as such."""
        self._load_records()
        selected = self.graph.select(targets)
        self._observe_early(selected)
        return self._run(selected, self._plan_step)

    def apply(self, targets: Iterable[str] = (), review: Review | None = None) -> dict[str, StepResult]:
        """Plan every selected step and run its pre-flight checks, then apply: a problem found
        (or a step that cannot be planned) stops the run before any change, naming them all.
        `review`, when given, approves the plan before any change and admits each step's changes."""
        self._load_records()
        selected = self.graph.select(targets)
        planned = self._preflight(selected)
        if review is not None:
            review.approve(planned, self.records)
        if self.store is not None and self.lease is not None:
            self.store.protect()  # the first change of a run: never before its pre-flight checks
        self._review = review
        results = self._run(selected, self._apply_step)
        for name, result in results.items():  # a step's time is its plan's and its apply's
            result.seconds += planned[name].seconds
        self._retire()
        return results

    def destroy(self, targets: Iterable[str] = (), review: Review | None = None) -> dict[str, StepResult]:
        """Delete what the selected steps own, in reverse order. `review`, when given, approves
        the destroy plan (every step planned first, read-only) before any delete, and admits each
        step's deletes as it starts."""
        if review is not None:
            review.approve(self.plan_destroy(targets), self.records)
        self._review = review
        return self._destroy(targets, self._destroy_step)

    def plan_destroy(self, targets: Iterable[str] = ()) -> dict[str, StepResult]:
        """Read-only: what `destroy` with the same flags would do, refusals included, by the same
        planning path (a step whose kept resources hold what others own keeps those too)."""
        return self._destroy(targets, self._plan_destroy_step)

    def prune(self, *, dry_run: bool) -> dict[str, StepResult]:
        """What this environment owns that the manifest no longer describes, or a crash left
        behind: each step's planned deletes (its observe finds what carries the ownership tags;
        its plan deletes what the manifest does not want). Without `dry_run` they are made, in
        reverse graph order. A step with other changes pending (a manifest change not applied
        yet) is left to `apply`, which retires what those changes supersede once dependants
        moved. `observed` keeps each step's facts: what is described, for the tag sweep."""
        return self._destroy((), lambda name, result: self._prune_step(name, result, dry_run))

    def gone(self, arns: list[str]) -> set[str]:
        """Of `arns` (listed with this environment's tags, described by no step), those every
        step says are of its kinds and already gone or going (`Step.gone`)."""
        found: set[str] = set()
        for name in self.graph.order():
            token = current_step.set(name)
            try:
                found |= self.graph.steps[name].gone(self._context(name), arns)
            finally:
                current_step.reset(token)
        return found

    def _destroy(self, targets: Iterable[str], work) -> dict[str, StepResult]:
        self._load_records()
        selected = self.graph.select_for_destroy(targets)
        # Reverse order: a step goes once everything that depends on it has gone.
        waits_for = {name: {d for d in self.graph.dependents(name) if d in selected} for name in selected}
        return self._schedule(waits_for, work)

    # -- scheduling --------------------------------------------------------------------------

    def _run(self, selected: set[str], work) -> dict[str, StepResult]:
        waits_for = {name: set(self.graph.steps[name].depends_on) & selected for name in selected}
        return self._schedule(waits_for, work)

    def _schedule(self, waits_for: dict[str, set[str]], work) -> dict[str, StepResult]:
        self.results = {name: StepResult(name, dependants=tuple(sorted(self.graph.dependents(name))))
                        for name in self.graph.order(waits_for)}

        def skip(name: str, blockers: list[str]) -> None:
            kept = [b for b in blockers if self.results[b].status == "kept"]
            self.results[name].status = "skipped"
            self.results[name].error = (f"kept: {', '.join(kept)} keeps resources that use it" if kept else
                                        f"not run: {', '.join(blockers)} did not succeed")
            log.warning("skipped", step=name, because=self.results[name].error)

        def interrupted() -> None:
            self.cancelled.set()
            log.warning("interrupted: finishing the changes in progress, starting no new one; "
                        "the lock is released once they end")

        run_concurrently(waits_for, lambda name: self._guarded(name, work), self.parallelism, on_skip=skip,
                         on_interrupt=interrupted)
        if self.store is not None and self.lease is not None and not self.lease.lost:
            for name, result in self.results.items():
                if result.status == "skipped" and name in self._records:
                    self._finish_record(name, result, None)
        return self.results

    def _guarded(self, name: str, work) -> bool:
        current_step.set(name)
        result = self.results[name]
        started = time.monotonic()
        try:
            work(name, result)
            if result.status != "kept":
                result.status = "ok"
        except LockLost as error:
            result.status, result.error, result.exception = "failed", str(error), error
        except Interrupted as error:
            result.status, result.error, result.exception = "failed", str(error), error
            if self.store is not None and self.lease is not None and not self.lease.lost:
                self._finish_record(name, result, None)
        except Exception as error:  # any failure ends this step; the run reports it
            result.status, result.error, result.exception = "failed", describe_error(error), error
            log.error("step failed", step=name, error=result.error)
            if self.store is not None and self.lease is not None and not self.lease.lost:
                self._finish_record(name, result, None)
        finally:
            result.seconds = time.monotonic() - started + self._early_seconds.pop(name, 0.0)
        return result.status == "ok"

    # -- the three kinds of work ----------------------------------------------------------------

    def _context(self, name: str, destroying: bool = False) -> StepContext:
        return StepContext(aws=self.aws, manifest=self.manifest, step=name, allow=self.allow, destroying=destroying,
                           stop=self._stop_if_needed, recorded=self._recorded(name), run_id=self.run_id)

    def _stop_if_needed(self, before: str = "") -> None:
        """Raise unless this run may go on changing AWS: not interrupted, lock still held."""
        if self.cancelled.is_set():
            raise Interrupted(f"interrupted{' before ' + before if before else ''}")
        if self.lease is not None:
            self.lease.check_current()

    def _inputs(self, name: str, *, from_records: bool = False) -> Inputs:
        step = self.graph.steps[name]
        outputs: dict[str, dict] = {}
        for dep in step.depends_on:
            if not from_records and dep in self.results and self.results[dep].status == "ok":
                outputs[dep] = self.results[dep].outputs
            else:
                outputs[dep] = self._records.get(dep, {}).get("outputs", {})
        declared = {dep: output_fields(self.graph.steps[dep]) for dep in step.depends_on}
        return Inputs(account_id=self.aws.account_id(), region=self.manifest.region, outputs=outputs,
                      declared=declared, partition=self.aws.partition(), zones=self.aws.available_zones,
                      zone_ids=self.aws.zone_ids, endpoint_zones=self.aws.endpoint_service_zones)

    def _outputs(self, step: Step, desired, observed) -> dict[str, Any]:
        outputs = step.outputs(desired, observed)
        if not isinstance(outputs, step.Outputs):
            raise TypeError(f"step {step.name}: outputs() returned {type(outputs).__name__}, "
                            f"not its declared {step.Outputs.__name__}")
        return as_plain(outputs)

    def _recorded(self, name: str) -> dict[str, dict]:
        return self._records.get(name, {}).get("applied", {}) or {}

    def _preflight(self, selected: set[str]) -> dict[str, StepResult]:
        self._observe_early(selected)
        planned = self._run(selected, self._plan_step)
        problems = [f"{name}: {problem}" for name, result in planned.items() for problem in result.problems]
        problems += [f"{name}: could not plan: {result.error}" for name, result in planned.items()
                     if result.status == "failed"]
        if problems:
            raise OrchestratorError(f"apply stopped before any change: {len(problems)} problem(s) found first:\n  "
                                    + "\n  ".join(problems))
        return planned

    def _known_upstream(self, name: str) -> bool:
        """Every step this one depends on has a record of a successful run that holds every
        output it declares: what this step will be planned with is known before they are."""
        for dep in self.graph.steps[name].depends_on:
            record = self._records.get(dep, {})
            if record.get("status") != "ok" or set(output_fields(self.graph.steps[dep])) - set(record.get("outputs", {})):
                return False
        return True

    def _observe_early(self, selected: set[str]) -> None:
        """Observe at once, all together, every selected step whose upstream outputs are known
        from the state records, instead of each after its upstream steps were planned. Read-only;
        `_plan_step` uses what was observed only where the upstream outputs it is planned with
        are still the ones recorded, and observes again where one really changed."""
        self._early = {}
        self._early_seconds = {}
        early = sorted(name for name in selected if self._known_upstream(name))

        def observe(name: str) -> None:
            started = time.monotonic()
            try:
                observe_now(name)
            finally:  # counted in the step's time (the summary's column), once
                self._early_seconds[name] = time.monotonic() - started

        def observe_now(name: str) -> None:
            current_step.set(name)
            step = self.graph.steps[name]
            inputs = self._inputs(name, from_records=True)
            try:
                desired = step.desired(self.manifest, inputs)
            except Exception:  # the plan computes it again, and reports it there
                return
            try:
                self._early[name] = (inputs.outputs, desired, step.observe(self._context(name), desired), None)
            except Exception as error:  # reported by the plan, if it is planned with these inputs
                self._early[name] = (inputs.outputs, desired, None, error)

        if not early:
            return
        with ThreadPoolExecutor(max_workers=max(1, min(self.parallelism or len(early), len(early))),
                                thread_name_prefix="observe") as pool:
            for future in [pool.submit(contextvars.copy_context().run, observe, name) for name in early]:
                future.result()

    def _plan_step(self, name: str, result: StepResult) -> None:
        step = self.graph.steps[name]
        ctx = self._context(name)
        inputs = self._inputs(name)
        early = self._early.pop(name, None)
        if early is not None and (early[0] == inputs.outputs or step.observes_by_manifest):
            _, desired, observed, error = early  # observed with what it is planned with, or by names alone
            if error is not None:
                raise error
            if early[0] != inputs.outputs:
                desired = step.desired(self.manifest, inputs)
        else:
            desired = step.desired(self.manifest, inputs)
            observed = step.observe(ctx, desired)
        result.problems = list(step.preflight(ctx, desired, observed))
        result.remarks = list(step.remarks(desired, observed))
        result.changes = step.plan(desired, observed, self._recorded(name))
        result.refused = [change for change in result.changes if self.refuses(change)]
        result.outputs = self._outputs(step, desired, observed)
        result.desired_digest = desired_hash(desired)
        self._planned[name] = (inputs.outputs, desired, observed, result.changes, result.desired_digest)

    def _apply_step(self, name: str, result: StepResult) -> None:
        step = self.graph.steps[name]
        ctx = self._context(name)
        inputs = self._inputs(name)
        planned_with, desired, observed, changes, digest = self._planned.pop(name, (None,) * 5)
        if planned_with != inputs.outputs:  # an upstream step changed what this one was planned with
            desired = step.desired(self.manifest, inputs)
            digest = desired_hash(desired)
            if observed is None or not step.observes_by_manifest:
                observed = step.observe(ctx, desired)
            changes = step.plan(desired, observed, self._recorded(name))
        result.changes = changes
        if self._review is not None:
            self._review.admit(name, result.changes)
        if result.changes:
            log.info("changing", step=name, changes=len(result.changes))
        else:
            log.info("up to date", step=name)
        now = [change for change in result.changes if not change.retire]
        later = [change for change in result.changes if change.retire]
        unwritten = self._execute(step, ctx, result, observed, now, leave_last=True)
        try:
            result.outputs = self._outputs(step, desired, observed)
        except BaseException:
            self._record(name, unwritten)
            raise
        result.status = "ok"
        self._finish_record(name, result, digest, records=unwritten)
        if later:
            self._retiring[name] = (ctx, observed, later, digest)

    def _moved(self, dependant: str) -> bool:
        """The dependant no longer uses what a step retires: it succeeded in this run, or it was
        not run (`--target`) and has never been applied."""
        if dependant in self.results:
            return self.results[dependant].status == "ok"
        return dependant not in self._records

    def _retire(self) -> None:
        """The final phase of an apply: in reverse graph order, each step's `retire` deletes,
        once every step that depends on it succeeded (moved off what is retired). A dependant
        that failed or was not run keeps the old resources for the next apply to retire."""
        for name in reversed(self.graph.order(self._retiring)):
            ctx, observed, changes, digest = self._retiring.pop(name)
            result = self.results[name]
            waiting = [d for d in result.dependants if not self._moved(d)]
            if waiting or self.cancelled.is_set() or (self.lease is not None and self.lease.lost):
                why = (f"{', '.join(waiting)} did not move off them (not run, or failed)" if waiting
                       else "the run stopped")
                log.warning("old resources kept", step=name, kept=[c.key for c in changes], because=why)
                result.error = f"kept {len(changes)} superseded resource(s) for the next apply: {why}"
                continue
            token = current_step.set(name)  # in the caller's thread: reset once this step is done
            step = self.graph.steps[name]
            try:
                self._execute(step, ctx, result, observed, changes)
            except Exception as error:  # the new resources are in place; the old ones stay for next time
                result.status, result.exception = "failed", error
                result.error = f"retiring old resources: {describe_error(error)}"
                log.error("step failed", step=name, error=result.error)
                digest = None
            finally:
                current_step.reset(token)
            if self.store is not None and self.lease is not None and not self.lease.lost:
                self._finish_record(name, result, digest)

    def _prune_step(self, name: str, result: StepResult, dry_run: bool) -> None:
        step = self.graph.steps[name]
        ctx = self._context(name)
        desired = step.desired(self.manifest, self._inputs(name, from_records=True))
        observed = step.observe(ctx, desired)
        self.observed[name] = observed
        planned = step.plan(desired, observed, self._recorded(name))
        result.changes = [change for change in planned if change.action == "delete"]
        result.refused = [change for change in result.changes if self.refuses(change)]
        others = len(planned) - len(result.changes)
        applied = self._records.get(name, {}).get("status") not in (None, "kept")
        if others and not applied and not result.changes:  # destroyed, or never applied: apply creates it
            result.error = "not applied: nothing of it to prune"
            return
        if others:
            result.error = f"{others} other change(s) pending: `apply` makes them and its deletes; pruned nothing"
            return
        if dry_run or not result.changes:
            return
        result.refused = []  # `_execute` lists them again as it meets them
        self._execute(step, ctx, result, observed, result.changes)
        result.status = "ok"
        self._finish_record(name, result, None)

    def _plan_destroy_step(self, name: str, result: StepResult):
        step = self.graph.steps[name]
        ctx = self._context(name, destroying=True)
        desired = step.desired(self.manifest, self._inputs(name, from_records=True))
        observed = step.observe(ctx, desired)
        result.changes = step.plan_destroy(observed)
        result.refused = [change for change in result.changes if self.refuses(change)]
        if any(change.holds_dependencies for change in result.refused):
            result.status = "kept"  # what it depends on must stay as well
        return step, ctx, desired, observed

    def _destroy_step(self, name: str, result: StepResult) -> None:
        step, ctx, desired, observed = self._plan_destroy_step(name, result)
        if self._review is not None:
            self._review.admit(name, result.changes)
        log.info("destroying", step=name, deletes=len(result.changes))
        result.refused = []  # `_execute` lists them again as it meets them
        self._execute(step, ctx, result, observed, result.changes)
        # What is left (kept resources) is what the record shows from now on.
        result.outputs = known_outputs(self._outputs(step, desired, observed))
        if self.store is not None and self.lease is not None:
            if result.refused:
                self.store.finish_step(self.lease, name, status="kept", outputs=result.outputs,
                                       changes=len(result.applied),
                                       desired_hash=self._records.get(name, {}).get("desired_hash", ""))
            else:
                self.store.forget_step(self.lease, name)

    def refuses(self, change: Change) -> bool:
        """A change this run will not make: blocked, and not allowed by a flag passed."""
        return bool(change.blocked) and change.blocked not in self.allow

    def _execute(self, step, ctx: StepContext, result: StepResult, observed, changes: list[Change], *,
                 leave_last: bool = False) -> list[Change]:
        """Each change: its calls, then its record; then all their waits together.

        The records of changes AWS accepted one after another are written together: before any
        wait is settled (a handler settling earlier changes' waits, or about to wait otherwise,
        calls `ctx.settle`, whose `before_settle` writes them; the step's own waits at the end
        likewise) and before any failure or stop ends the step: a wait never stands between AWS
        accepting a change and its record. With `leave_last`, the records of the changes
        accepted after the last wait, when nothing is left to wait for, are returned unwritten:
        the caller writes them at once, with the step's outcome, in one write."""
        unrecorded: dict[int, Change] = {}  # by plan position: each write lists them in plan order
        made: dict[int, Change] = {}
        recording = threading.RLock()  # handlers making changes at once may settle (and so write)

        def take_unrecorded() -> list[Change]:
            with recording:
                taken = [unrecorded[index] for index in sorted(unrecorded)]
                unrecorded.clear()
            return taken

        def write_records() -> None:  # one write at a time: the store keeps the step's record as written
            with recording:
                indices = sorted(unrecorded)
                self._record(step.name, [unrecorded[index] for index in indices])
                for index in indices:  # dropped once written: after a failed write, the next tries them again
                    del unrecorded[index]

        ctx.before_settle = write_records

        def accepted(index: int, change: Change, answer: Accepted) -> None:
            """As AWS accepts each change: its record on the way, its waits pending."""
            with recording:
                made[index] = change
                unrecorded[index] = change if answer.record is None else dataclasses.replace(change, record=answer.record)
            ctx.add_waits(change.key, answer.waits)

        try:
            for change in changes:
                if self.refuses(change):
                    result.refused.append(change)
                    log.warning("refused", step=step.name, kind=change.kind, name=change.name, why=refusal(change))
            wanted = [change for change in changes if not self.refuses(change)]
            if any(change.after is not None for change in wanted):
                self._make_together(step, ctx, observed, wanted, accepted)
            else:
                for index, change in enumerate(wanted):
                    accepted(index, change, self._make(step, ctx, observed, change))
            if ctx.pending:
                ctx.settle()
        except BaseException:
            write_records()
            raise
        finally:
            result.applied.extend(made[index] for index in sorted(made))
        if leave_last:
            return take_unrecorded()
        write_records()
        return []

    def _make(self, step, ctx: StepContext, observed, change: Change) -> Accepted:
        """One change's calls, if this run may still change AWS."""
        self._stop_if_needed(before=f"{change.action} {change.kind} {change.name}")
        log.info(_verb(change), step=step.name, kind=change.kind, name=change.name)
        with ctx.making(change):
            return step.apply(ctx, change, observed) or Accepted()

    def _make_together(self, step, ctx: StepContext, observed, changes: list[Change], accepted) -> None:
        """The changes, each started as soon as it may: one that names what it needs
        (`Change.after`) once the earlier changes with those keys and with its own (a replace's
        delete) were made (their waits pending), beside others, up to CHANGES_AT_ONCE (its
        handler may settle the waits of those changes, and only those); one that does not once
        every earlier change was made, alone, on this thread (its handler may settle every
        pending wait), and none later before it was made. `accepted(index, change, answer)` gets
        each change as AWS accepts it; while a handler settles, the records of the changes
        accepted meanwhile are written at once, so that its wait never delays one. After a
        failure (or a stop) no change starts; those running end and are passed on (AWS accepted
        them: they are recorded); then the first failure in plan order is raised."""
        answers: dict[int, Accepted | BaseException] = {}
        waiting = list(range(len(changes)))  # not started, in plan order
        running: dict[Future, int] = {}
        failed_write: list[BaseException] = []  # a record write that failed while a handler settled

        def end(index: int, answer) -> None:
            answers[index] = answer
            if not isinstance(answer, BaseException):  # before any change that needs it starts
                accepted(index, changes[index], answer)

        def made_before(index: int, keys: frozenset[str]) -> bool:
            return all(earlier in answers for earlier in range(index) if changes[earlier].key in keys)

        def startable() -> list[int]:
            ready = []
            for index in waiting:
                change = changes[index]
                if change.after is None:  # alone: once all before it ended; nothing past it
                    return [index] if index == waiting[0] and not running and not ready else ready
                if len(running) + len(ready) < CHANGES_AT_ONCE and made_before(index, change.needs):
                    ready.append(index)
            return ready

        with ThreadPoolExecutor(max_workers=CHANGES_AT_ONCE, thread_name_prefix=f"change-{step.name}") as pool:
            while waiting or running:
                stopped = failed_write or any(isinstance(a, BaseException) for a in answers.values())
                ready = [] if stopped else startable()
                for index in ready:
                    waiting.remove(index)
                    change = changes[index]
                    if change.after is None:
                        try:
                            end(index, self._make(step, ctx, observed, change))
                        except BaseException as error:  # raised below, in plan order
                            end(index, error)
                    else:
                        running[pool.submit(contextvars.copy_context().run, self._make, step, ctx, observed,
                                            change)] = index
                if ready:
                    continue
                if not running:  # a failure or stop: nothing more starts
                    break
                if ctx.settling and not failed_write:  # a wait must not stand between a change and its record
                    try:
                        ctx.before_settle()
                    except BaseException as error:  # like a failed change: nothing more starts, those running end
                        failed_write.append(error)
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in sorted(done, key=running.get):
                    index = running.pop(future)
                    try:
                        end(index, future.result())
                    except BaseException as error:  # raised below, in plan order
                        end(index, error)
        for index in sorted(answers):
            if isinstance(answers[index], BaseException):
                raise answers[index]
        if failed_write:
            raise failed_write[0]

    def _record(self, step: str, unrecorded: list[Change]) -> None:
        """Write the records of the changes accepted since the last write, together."""
        if unrecorded and self.store is not None and self.lease is not None:
            self.store.record_changes(self.lease, step, list(unrecorded))

    def _finish_record(self, name: str, result: StepResult, digest: str | None, records: list[Change] = ()) -> None:
        """Write the step's outcome, with `records` (changes accepted and not recorded yet)."""
        if self.store is None or self.lease is None:
            return
        previous = self._records.get(name, {})
        self.store.finish_step(self.lease, name, status=result.status,
                               desired_hash=digest or previous.get("desired_hash", ""),
                               outputs=known_outputs(result.outputs) or previous.get("outputs", {}),
                               changes=len(result.applied),
                               error=recordable(result.error) if result.error else result.error, records=records)

    def _load_records(self) -> None:
        if self.store is not None:
            self._records = self.store.steps()


def undescribed(arns: Iterable[str], observed: dict[str, Any]) -> list[str]:
    """The ARNs no step's observed facts mention (by ARN, or by the id or name it ends with, or —
    for a numbered revision such as a task definition's — by another revision of the same name):
    resources carrying the environment's tags that no step knows how to classify."""
    text = json.dumps(as_plain(observed), default=str)

    def mentioned(arn: str) -> bool:
        tail = arn.rsplit("/", 1)[-1] if "/" in arn else arn.rsplit(":", 1)[-1]
        name, colon, revision = tail.rpartition(":")
        return arn in text or f'"{tail}"' in text or bool(colon and revision.isdigit() and f"/{name}:" in text)

    return sorted(arn for arn in arns if not mentioned(arn))


def _verb(change: Change) -> str:
    return {"create": "+ create", "update": "~ update", "replace": "-/+ replace", "delete": "- delete"}[change.action]
