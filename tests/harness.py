"""Helpers for step tests: run one step through the real engine and the real (moto) state
store, with given upstream outputs; count the calls that changed something."""
from __future__ import annotations

import dataclasses
import importlib
import threading

from orchestrator.engine import Engine
from orchestrator.graph import StepGraph
from orchestrator.model import Change, Inputs, Step, Unknown
from tests.moto_server import Snapshots

RUN_ID = "test-run"


def run_id() -> str:
    """A run's own id, as the command line makes one per run: idempotency tokens are per run
    (StepContext.token), and the emulator remembers them as AWS does."""
    import uuid
    return f"{RUN_ID}-{uuid.uuid4().hex[:8]}"
ACCOUNT = "123456789012"
#: The zones moto's us-east-1 offers (a run fact the engine reads from EC2).
ZONES = [f"us-east-1{letter}" for letter in "abcdef"]


def inputs(step, outputs: dict | None = None, *, region: str = "us-east-1", account_id: str = ACCOUNT,
           zones: list[str] | None = None) -> Inputs:
    """What the engine gives `step.desired`: the upstream `outputs`, declared as the real
    dependencies declare them (so a test reading an undeclared output fails as a run would)."""
    declared = {dep: tuple(f.name for f in dataclasses.fields(importlib.import_module(f"steps.{dep}").STEP.Outputs))
                for dep in step.depends_on}
    available = ZONES if zones is None else zones
    return Inputs(account_id=account_id, region=region, outputs=outputs or {}, declared=declared,
                  zones=lambda: list(available))


def upstream_stub(name: str, values: dict) -> Step:
    """Stands for step `name`: changes nothing, and gives `values` as its outputs (declared as
    the real step declares them; what `values` leaves out is not known yet)."""
    outputs_class = importlib.import_module(f"steps.{name}").STEP.Outputs

    class Upstream(Step):
        Outputs = outputs_class

        def desired(self, manifest, inputs):
            return None

        def observe(self, ctx, desired):
            return None

        def plan(self, desired, observed, recorded):
            return []

        def outputs(self, desired, observed):
            return outputs_class(**{f.name: values.get(f.name, Unknown(f"{self.name}.{f.name}"))
                                    for f in dataclasses.fields(outputs_class)})

        def plan_destroy(self, observed):
            return []

    stub = Upstream()
    stub.name = name
    return stub


class _Observing:
    """The step under test, with the facts its last observe returned kept for the test."""

    def __init__(self, step):
        self.step, self.observed = step, None

    def __getattr__(self, name):
        return getattr(self.step, name)

    def observe(self, ctx, desired):
        self.observed = self.step.observe(ctx, desired)
        return self.observed


def _engine(step, manifest, aws, upstream: dict | None, recorded: dict | None, allow=()):
    from orchestrator.state import StateStore
    observing = _Observing(step)
    graph = StepGraph([observing, *(upstream_stub(dep, (upstream or {}).get(dep, {})) for dep in step.depends_on)])
    store = StateStore(aws, manifest)
    store.ensure_table()
    store.break_lock()  # the lock of a run a test killed (step tests are not about the lock)
    lease = store.acquire(run_id(), "test")
    for key, record in (recorded or {}).items():  # a test's own last-applied records
        kind, _, name = key.partition("/")
        store.record_change(lease, step.name, Change("create", kind, name, record=record))
    return Engine(manifest, aws, graph, store=store, lease=lease, allow=allow), observing, store, lease


def _result(engine: Engine, step, store, lease, recorded: dict | None):
    lease.release()
    result = engine.results[step.name]
    if result.status == "failed":
        raise result.exception
    if recorded is not None:
        recorded.clear()
        recorded.update(store.steps().get(step.name, {}).get("applied") or {})
    return result


def run_step(step, manifest, aws, upstream: dict | None = None, recorded: dict | None = None,
             allow=(), destroy: bool = False, recovering: tuple[str, ...] = ()):
    """`apply` (or `destroy`) of one step through the engine. Returns (applied changes, outputs,
    observed facts) and leaves `recorded` holding the step's last-applied records. Checks that
    every mutating call the step made was named in the changes it applied, except the
    operations in `recovering`: what AWS's answer made necessary where observe could not see
    (a stale list hid a resource that exists)."""
    engine, observing, store, lease = _engine(step, manifest, aws, upstream, recorded, allow)
    before = len(aws.ledger.calls)
    try:
        engine.destroy() if destroy else engine.apply()
    finally:
        result = _result(engine, step, store, lease, recorded)
    unplanned = sorted(set(_unplanned_calls(aws, step.name, before, result.applied)) - set(recovering))
    assert not unplanned, f"{step.name} made mutating calls no applied change named: {unplanned}"
    return result.applied, result.outputs, observing.observed


def plan_step(step, manifest, aws, upstream: dict | None = None, recorded: dict | None = None):
    """The changes `apply` would make, with no mutating call."""
    engine, _, store, lease = _engine(step, manifest, aws, upstream, recorded)
    try:
        engine.plan()
    finally:
        result = _result(engine, step, store, lease, None)
    return result.changes


def _unplanned_calls(aws, step: str, since: int, applied: list[Change]) -> list[str]:
    named = {call.split(":", 1)[1] for change in applied for call in change.calls}
    return sorted({c.operation for c in aws.ledger.calls[since:]
                   if c.step == step and c.mutating and c.operation not in named})


def calls_since(aws, before: int, step: str) -> list:
    """The calls step `step` made after the ledger held `before` calls."""
    return [call for call in aws.ledger.calls[before:] if call.step == step]


def held_until_sent_together(aws, reads: set, key=lambda model, params: model.name) -> list[bool]:
    """Hold each request of `reads` (by `key`: the operation's name unless told) before it is
    sent, until every one of them has been sent. Reads sent one after another never are all sent
    while the first is held: it waits out the timeout. Returns, per request held, whether every
    one of `reads` was sent while it waited (all True: they went out together)."""
    sent: set = set()
    lock, all_sent, waited = threading.Lock(), threading.Event(), []

    def hold(model, params, **kwargs) -> None:
        read = key(model, params)
        if read not in reads:
            return
        with lock:
            sent.add(read)
            if sent == reads:
                all_sent.set()
        waited.append(all_sent.wait(timeout=10))

    aws.register("before-call", hold)
    return waited


def mutations(aws, step: str | None = None) -> list[str]:
    """`service:Operation` of every mutating request sent so far to the platform (not the state
    table and lock), or of one step's (`"state"` for the state table's)."""
    from orchestrator.aws import STATE
    return [f"{c.service}:{c.operation}" for c in aws.ledger.calls
            if c.mutating and (c.step == step if step is not None else c.step != STATE)]


def engine(manifest, aws, steps=None, *, allow=(), with_state: bool = True):
    """An Engine over the real step graph (or the given steps) holding the environment's lock."""
    from steps import all_steps
    graph = StepGraph(steps if steps is not None else all_steps())
    store = lease = None
    if with_state:
        from orchestrator.state import StateStore
        store = StateStore(aws, manifest)
        store.ensure_table()
        lease = store.acquire(run_id(), "test")
    return Engine(manifest, aws, graph, store=store, lease=lease, allow=allow)


def apply_dependencies(step, manifest, aws, monkeypatch) -> dict[str, dict]:
    """Apply every step `step` depends on (the repository holding the demo tags 1.4.1 and 1.4.2,
    services reaching a steady state as in the sandbox); their outputs by step.

    In a fresh account the first such apply per worker (per steps, manifest, moto settings) is
    made for real and moto's state after it saved; later ones restore that state and give the
    same outputs (a real apply of these steps from nothing takes 3-5 s)."""
    import copy
    import os

    from moto.core.base_backend import BackendDict
    from moto.settings import load_iam_aws_managed_policies

    monkeypatch.setenv("ORCHESTRATOR_SANDBOX_IMAGE_TAGS", "1.4.1 1.4.2")
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "1")
    fresh = not BackendDict._instances  # nothing asked of moto yet in this test
    key = repr((sorted(step.depends_on), manifest, load_iam_aws_managed_policies(),
                sorted((k, v) for k, v in os.environ.items() if k.startswith(("ORCHESTRATOR_", "MOTO_", "GAMEPULSE_")))))
    if fresh and key in _APPLIED:
        _APPLIED_STATES.restore(key)
        return copy.deepcopy(_APPLIED[key])
    run = engine(manifest, aws, with_state=True)
    results = run.apply(targets=list(step.depends_on))
    run.lease.release()
    assert {r.status for r in results.values()} == {"ok"}, {n: r.error for n, r in results.items()}
    outputs = {name: result.outputs for name, result in results.items()}
    if fresh:
        _APPLIED_STATES.save(key)
        _APPLIED[key] = copy.deepcopy(outputs)
    return outputs


#: apply_dependencies' applies from nothing: outputs and moto's state, by what they depend on.
_APPLIED: dict[str, dict] = {}
_APPLIED_STATES = Snapshots()


class Crash(BaseException):
    """Stands for the process being killed: BaseException, so no `except Exception` catches it."""


def crash_after(aws, n: int = 0, *, operation: tuple[str, str] | None = None, state_table: bool = False):
    """Kill the run (raise `Crash`) right after the n-th mutating call AWS accepted, or with
    `operation` (botocore's service name and operation, e.g. ("efs", "DeleteFileSystem")) right
    after AWS accepted the first such call; calls to the state table and lock count only with
    `state_table` (a whole run's crash test). A killed process sends nothing more: a call of the
    same kinds sent after the kill raises `Crash` too (calls made at once with the one that killed
    it, already sent, are answered). Returns a function that says how many mutating calls AWS
    accepted in all (the killing one and those in flight beside it)."""
    from orchestrator.aws import is_mutating
    seen = {"count": 0, "killed": False}
    aws.crash = seen  # a later crash_after on the same clients replaces this one's hooks

    def counted(model) -> bool:
        return aws.crash is seen and (state_table or model.service_model.service_name != "dynamodb")

    def before_call(model, **kwargs):
        if seen["killed"] and counted(model):
            raise Crash(f"killed after {seen['killed']}: nothing more is sent")

    def after_call(http_response, parsed, model, **kwargs):
        if not counted(model) or not is_mutating(model.name) or http_response.status_code >= 300:
            return
        seen["count"] += 1
        if seen["killed"]:
            return
        if operation is None and seen["count"] == n:
            seen["killed"] = f"mutating call {n}"
        elif operation == (model.service_model.service_name, model.name):
            seen["killed"] = f"{operation[0]} {operation[1]}"
        if seen["killed"]:
            raise Crash(f"killed after {seen['killed']}: {model.name}")

    aws.register("before-call", before_call)
    aws.register("after-call", after_call)
    return lambda: seen["count"]


def killed_states(run, *, operations=(), counts=(), state_table: bool = False):
    """Run `run()` once (in the caller's mock_aws) and save moto's state as a run killed right
    after each of these calls would leave it: after AWS accepted the first call of each
    (service, operation) in `operations` (botocore's service name, e.g. ("ecs",
    "RegisterTaskDefinition")), saved as "ecs.RegisterTaskDefinition"; after the n-th mutating
    call it accepted, for each n in `counts`, saved as "n" (calls to the state table and lock
    count only with `state_table`). The state is taken while moto serves nothing else, as a
    kill stops the process there. Returns the `Snapshots`; each kill point must be reached."""
    from botocore.session import get_session

    from orchestrator.aws import is_mutating
    from tests.moto_server import WATCHERS, Snapshots

    session = get_session()
    event_of = {f"before-send.{session.get_service_model(service).service_id.hyphenize()}.{operation}":
                f"{service}.{operation}" for service, operation in operations}
    wanted_counts = {int(n) for n in counts}
    snapshots, seen = Snapshots(), {"count": 0}

    def watcher(event_name: str, response) -> None:
        if response.status_code >= 300:
            return
        name = event_of.get(event_name)
        if name is not None and name not in snapshots:
            snapshots.save(name)
        operation, service_id = event_name.rsplit(".", 1)[1], event_name.split(".")[1]
        if is_mutating(operation) and (state_table or service_id != "dynamodb"):
            seen["count"] += 1
            if seen["count"] in wanted_counts:
                snapshots.save(str(seen["count"]))

    WATCHERS.append(watcher)
    try:
        run()
    finally:
        WATCHERS.remove(watcher)
    missing = [name for name in [*event_of.values(), *map(str, sorted(wanted_counts))] if name not in snapshots]
    assert not missing, f"the run never reached these kill points: {missing}"
    return snapshots


def kill_points(crashing, *, reset, run):
    """Each point at which a run can be killed, in turn: `reset()` puts AWS back as it was before
    the run, then `run(crashing)` is killed right after its n-th mutating call AWS accepted, for
    n = 1, 2, ...; yields n after each kill (the caller then runs again with a fresh process and
    checks that it converged). Ends when a run goes through: n is past its last mutating call,
    every point has been tried. The caller checks how many points there were."""
    n = 0
    while True:
        n += 1
        reset()
        crash_after(crashing, n)
        try:
            run(crashing)
        except Crash:
            yield n
        else:
            return


def forget_crash(aws) -> None:
    """A fresh process after a crash: new clients, no hooks (the AWS state stays)."""
    from orchestrator.aws import Aws
    return Aws(aws.region, endpoint_url=aws.endpoint_url)
