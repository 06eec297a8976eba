"""Helpers for step tests: run one step alone with given upstream outputs, or the engine over
the real graph with the real state store, and count the calls that changed something."""
from __future__ import annotations

from orchestrator.context import StepContext
from orchestrator.engine import Engine
from orchestrator.graph import StepGraph
from orchestrator.model import Inputs


def run_step(step, manifest, aws, upstream: dict | None = None, recorded: dict | None = None,
             allow=(), destroy: bool = False):
    """desired → observe → plan → apply for one step, outside the engine. Returns
    (changes, outputs, observed) and leaves `recorded` updated as the state store would."""
    recorded = {} if recorded is None else recorded
    ctx = StepContext(aws=aws, manifest=manifest, step=step.name, allow=frozenset(allow), destroying=destroy)
    desired = step.desired(manifest, Inputs(account_id=aws.account_id(), region=manifest.region,
                                            outputs=upstream or {}))
    observed = step.observe(ctx, desired)
    changes = step.plan_destroy(observed) if destroy else step.plan(desired, observed, recorded)
    applied = []
    for change in changes:
        if change.blocked and change.blocked not in allow:
            continue
        step.apply(ctx, change, observed)
        applied.append(change)
        if change.action == "delete":
            recorded.pop(change.key, None)
        elif change.record is not None:
            recorded[change.key] = change.record
    return applied, step.outputs(desired, observed), observed


def plan_step(step, manifest, aws, upstream: dict | None = None, recorded: dict | None = None):
    """The changes `apply` would make, with no mutating call."""
    ctx = StepContext(aws=aws, manifest=manifest, step=step.name)
    desired = step.desired(manifest, Inputs(account_id=aws.account_id(), region=manifest.region,
                                            outputs=upstream or {}))
    return step.plan(desired, step.observe(ctx, desired), recorded or {})


def mutations(aws, step: str | None = None) -> list[str]:
    """`service:Operation` of every mutating request sent so far (optionally for one step)."""
    return [f"{c.service}:{c.operation}" for c in aws.ledger.calls
            if c.mutating and (step is None or c.step == step)]


def engine(manifest, aws, steps=None, *, allow=(), with_state: bool = True):
    """An Engine over the real step graph (or the given steps) holding the environment's lock."""
    from steps import all_steps
    graph = StepGraph(steps if steps is not None else all_steps())
    store = lease = None
    if with_state:
        from orchestrator.state import StateStore
        store = StateStore(aws, manifest)
        store.ensure_table()
        lease = store.acquire("test-run", "test")
    return Engine(manifest, aws, graph, store=store, lease=lease, allow=allow)


class Crash(BaseException):
    """Stands for the process being killed: BaseException, so no `except Exception` catches it."""


def crash_after(aws, n: int) -> None:
    """Kill the run (raise `Crash`) right after the n-th mutating call AWS accepted."""
    from orchestrator.aws import is_mutating
    seen = {"count": 0}

    def after_call(http_response, parsed, model, **kwargs):
        if is_mutating(model.name) and http_response.status_code < 300:
            seen["count"] += 1
            if seen["count"] == n:
                raise Crash(f"killed after mutating call {n}: {model.name}")

    aws.register("after-call", after_call)


def forget_crash(aws) -> None:
    """A fresh process after a crash: new clients, no hooks (the AWS state stays)."""
    from orchestrator.aws import Aws
    return Aws(aws.region, endpoint_url=aws.endpoint_url)
