"""The reconcile engine: observe, compare, act — for every selected step, in graph order.

It knows steps only through the contract in `orchestrator.model` and AWS only through the
client factory; the state store records each change as soon as AWS accepted it.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import structlog

from orchestrator.aws import Aws, current_step, error_code
from orchestrator.context import StepContext
from orchestrator.errors import Interrupted, LockLost
from orchestrator.graph import StepGraph
from orchestrator.log import redactor
from orchestrator.model import KNOWN_AFTER_APPLY, Change, Inputs, as_plain
from orchestrator.scheduler import run_concurrently

log = structlog.get_logger("orchestrator.engine")


@dataclass
class StepResult:
    step: str
    status: str = "pending"  # ok | failed | skipped | pending
    changes: list[Change] = field(default_factory=list)
    applied: list[Change] = field(default_factory=list)
    refused: list[Change] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def summary(self) -> dict:
        return {"status": self.status, "changes": len(self.applied) if self.applied else len(self.changes),
                "refused": [c.key for c in self.refused], "seconds": round(self.seconds, 2),
                **({"error": self.error} if self.error else {})}


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


class Engine:
    """Runs plan, apply and destroy over the selected steps of a graph."""

    def __init__(self, manifest, aws: Aws, graph: StepGraph, *, store=None, lease=None,
                 allow: Iterable[str] = (), parallelism: int | None = None):
        self.manifest = manifest
        self.aws = aws
        self.graph = graph
        self.store = store
        self.lease = lease
        self.allow = frozenset(allow)
        self.parallelism = parallelism
        self.results: dict[str, StepResult] = {}
        #: Set on Ctrl-C: steps finish the change in progress and start no other.
        self.cancelled = threading.Event()
        self._records: dict[str, dict] = {}

    # -- public commands -------------------------------------------------------------------

    def plan(self, targets: Iterable[str] = ()) -> dict[str, StepResult]:
        """Read-only: what apply would change. Upstream values not yet known show as such."""
        self._load_records()
        return self._run(self.graph.select(targets), self._plan_step)

    def apply(self, targets: Iterable[str] = ()) -> dict[str, StepResult]:
        self._load_records()
        return self._run(self.graph.select(targets), self._apply_step)

    def destroy(self, targets: Iterable[str] = ()) -> dict[str, StepResult]:
        self._load_records()
        selected = self.graph.select_for_destroy(targets)
        # Reverse order: a step goes once everything that depends on it has gone.
        waits_for = {name: {d for d in self.graph.dependents(name) if d in selected} for name in selected}
        return self._schedule(waits_for, self._destroy_step)

    # -- scheduling --------------------------------------------------------------------------

    def _run(self, selected: set[str], work) -> dict[str, StepResult]:
        waits_for = {name: set(self.graph.steps[name].depends_on) & selected for name in selected}
        return self._schedule(waits_for, work)

    def _schedule(self, waits_for: dict[str, set[str]], work) -> dict[str, StepResult]:
        self.results = {name: StepResult(name) for name in self.graph.order(waits_for)}

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
            result.status, result.error = "failed", str(error)
        except Interrupted as error:
            result.status, result.error = "failed", str(error)
            if self.store is not None and self.lease is not None and not self.lease.lost:
                self._finish_record(name, result, None)
        except Exception as error:  # any failure ends this step; the run reports it
            result.status, result.error = "failed", describe_error(error)
            log.error("step failed", step=name, error=result.error)
            if self.store is not None and self.lease is not None and not self.lease.lost:
                self._finish_record(name, result, None)
        finally:
            result.seconds = time.monotonic() - started
        return result.status == "ok"

    # -- the three kinds of work ----------------------------------------------------------------

    def _context(self, name: str, destroying: bool = False) -> StepContext:
        return StepContext(aws=self.aws, manifest=self.manifest, step=name, allow=self.allow, destroying=destroying,
                           stop=self._stop_if_needed)

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
        return Inputs(account_id=self.aws.account_id(), region=self.manifest.region, outputs=outputs)

    def _recorded(self, name: str) -> dict[str, dict]:
        return self._records.get(name, {}).get("applied", {}) or {}

    def _plan_step(self, name: str, result: StepResult) -> None:
        step = self.graph.steps[name]
        ctx = self._context(name)
        desired = step.desired(self.manifest, self._inputs(name))
        observed = step.observe(ctx, desired)
        result.changes = step.plan(desired, observed, self._recorded(name))
        result.outputs = step.outputs(desired, observed)

    def _apply_step(self, name: str, result: StepResult) -> None:
        step = self.graph.steps[name]
        ctx = self._context(name)
        desired = step.desired(self.manifest, self._inputs(name))
        observed = step.observe(ctx, desired)
        result.changes = step.plan(desired, observed, self._recorded(name))
        if result.changes:
            log.info("changing", step=name, changes=len(result.changes))
        else:
            log.info("up to date", step=name)
        self._execute(step, ctx, result, observed)
        result.outputs = step.outputs(desired, observed)
        result.status = "ok"
        self._finish_record(name, result, desired_hash(desired))

    def _destroy_step(self, name: str, result: StepResult) -> None:
        step = self.graph.steps[name]
        ctx = self._context(name, destroying=True)
        desired = step.desired(self.manifest, self._inputs(name, from_records=True))
        observed = step.observe(ctx, desired)
        result.changes = step.plan_destroy(observed)
        log.info("destroying", step=name, deletes=len(result.changes))
        self._execute(step, ctx, result, observed)
        # What is left (kept resources) is what the record shows from now on.
        result.outputs = {key: value for key, value in step.outputs(desired, observed).items()
                          if value != KNOWN_AFTER_APPLY}
        if any(change.holds_dependencies for change in result.refused):
            result.status = "kept"  # what it depends on must stay as well
        if self.store is not None and self.lease is not None:
            if result.refused:
                self.store.finish_step(self.lease, name, status="kept", outputs=result.outputs,
                                       changes=len(result.applied),
                                       desired_hash=self._records.get(name, {}).get("desired_hash", ""))
            else:
                self.store.forget_step(self.lease, name)

    def _execute(self, step, ctx: StepContext, result: StepResult, observed) -> None:
        for change in result.changes:
            if change.blocked and change.blocked not in self.allow:
                result.refused.append(change)
                log.warning("refused", step=step.name, kind=change.kind, name=change.name,
                            why=change.note or f"needs --{change.blocked}")
                continue
            self._stop_if_needed(before=f"{change.action} {change.kind} {change.name}")
            log.info(_verb(change), step=step.name, kind=change.kind, name=change.name)
            step.apply(ctx, change, observed)
            result.applied.append(change)
            if self.store is not None and self.lease is not None:
                self.store.record_change(self.lease, step.name, change)

    def _finish_record(self, name: str, result: StepResult, digest: str | None) -> None:
        if self.store is None or self.lease is None:
            return
        previous = self._records.get(name, {})
        self.store.finish_step(self.lease, name, status=result.status,
                               desired_hash=digest or previous.get("desired_hash", ""),
                               outputs=result.outputs or previous.get("outputs", {}),
                               changes=len(result.applied), error=result.error)

    def _load_records(self) -> None:
        if self.store is not None and self.store.exists():
            self._records = self.store.steps()


def _verb(change: Change) -> str:
    return {"create": "+ create", "update": "~ update", "replace": "-/+ replace", "delete": "- delete"}[change.action]
