"""The engine, graph and scheduler with in-memory steps: no AWS at all."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest

from orchestrator.aws import CallLedger
from orchestrator.engine import Engine
from orchestrator.errors import OrchestratorError
from orchestrator.graph import StepGraph
from orchestrator.model import KNOWN_AFTER_APPLY, Change, FieldDiff, Step, Unknown
from orchestrator.scheduler import run_concurrently


class FakeAws:
    region = "us-east-1"

    def __init__(self):
        self.ledger = CallLedger()

    def account_id(self):
        return "123456789012"

    def partition(self):
        return "aws"

    def available_zones(self):
        return ["us-east-1a", "us-east-1b"]

    def zone_ids(self):
        return {"us-east-1a": "use1-az1", "us-east-1b": "use1-az2"}

    def endpoint_service_zones(self, service_names):
        return {name: self.available_zones() for name in service_names}


@dataclass
class FakeManifest:
    app: str = "gamepulse"
    environment: str = "dev"
    region: str = "us-east-1"
    tags: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ThingOutputs:
    id: str


class ThingStep(Step):
    """Owns one 'thing' in a dict standing for the cloud; its output is the thing's id."""

    Outputs = ThingOutputs

    def __init__(self, name, depends_on=(), cloud=None, fail=False, barrier=None, blocked=None):
        self.name = name
        self.depends_on = tuple(depends_on)
        self.cloud = cloud if cloud is not None else {}
        self.fail = fail
        self.barrier = barrier
        self.blocked = blocked
        self.seen_inputs = None

    def desired(self, manifest, inputs):
        self.seen_inputs = {dep: inputs.output(dep, "id") for dep in self.depends_on}
        return {"name": self.name, "after": sorted(self.seen_inputs.items())}

    def observe(self, ctx, desired):
        if self.barrier:
            self.barrier.wait()
        return {"thing": self.cloud.get(self.name)}

    def plan(self, desired, observed, recorded):
        if observed["thing"] == desired:
            return []
        action = "create" if observed["thing"] is None else "update"
        return [Change(action, "thing", self.name, diffs=(FieldDiff("after", None, desired["after"]),),
                       payload=desired, record={"after": desired["after"]})]

    def apply(self, ctx, change, observed):
        if self.fail:
            raise RuntimeError(f"{self.name} broke")
        self.cloud[self.name] = change.payload
        observed["thing"] = change.payload

    def outputs(self, desired, observed):
        return ThingOutputs(id=f"id-{self.name}" if observed["thing"] else Unknown(f"{self.name}.id"))

    def plan_destroy(self, observed):
        if observed["thing"] is None:
            return []
        return [Change("delete", "thing", self.name, payload=None, blocked=self.blocked)]


def engine_for(steps, **kwargs):
    return Engine(FakeManifest(), FakeAws(), StepGraph(steps), **kwargs)


def test_plan_from_nothing_shows_creates_and_unknown_upstream_values():
    cloud = {}
    results = engine_for([ThingStep("a", cloud=cloud), ThingStep("b", ["a"], cloud=cloud)]).plan()
    assert [c.action for c in results["a"].changes] == ["create"]
    assert results["b"].changes[0].diffs[0].new == [("a", KNOWN_AFTER_APPLY)]
    assert cloud == {}, "plan must not change anything"


def test_apply_feeds_outputs_downstream_and_second_apply_changes_nothing():
    cloud = {}
    steps = [ThingStep("a", cloud=cloud), ThingStep("b", ["a"], cloud=cloud)]
    engine_for(steps).apply()
    assert cloud["b"]["after"] == [("a", "id-a")]
    again = engine_for(steps).apply()
    assert all(not r.changes for r in again.values())


def test_failed_step_skips_dependants_and_independent_branch_finishes():
    cloud = {}
    steps = [ThingStep("a", cloud=cloud, fail=True), ThingStep("b", ["a"], cloud=cloud),
             ThingStep("c", ["b"], cloud=cloud), ThingStep("x", cloud=cloud)]
    results = engine_for(steps).apply()
    assert results["a"].status == "failed" and "a broke" in results["a"].error
    assert results["b"].status == "skipped" and results["c"].status == "skipped"
    assert results["x"].status == "ok" and "x" in cloud


def test_independent_steps_run_at_the_same_time():
    barrier = threading.Barrier(3, timeout=5)  # each waits until all three are inside observe
    steps = [ThingStep(n, barrier=barrier) for n in ("p", "q", "r")]
    results = engine_for(steps).apply()
    assert {r.status for r in results.values()} == {"ok"}


def test_parallelism_one_runs_steps_one_after_another():
    """Each step, once inside, gives another 0.3 s to join it: with one at a time none can."""
    lock, inside, most = threading.Lock(), [], []
    joined = threading.Event()

    class Counting(ThingStep):
        def observe(self, ctx, desired):
            with lock:
                inside.append(self.name)
                most.append(len(inside))
                if len(inside) > 1:
                    joined.set()
            joined.wait(0.3)
            with lock:
                inside.remove(self.name)
            return super().observe(ctx, desired)

    results = engine_for([Counting(n) for n in ("p", "q")], parallelism=1).apply()
    assert {r.status for r in results.values()} == {"ok"}
    assert max(most) == 1 and not joined.is_set()


def test_target_runs_the_step_and_what_it_depends_on_only():
    cloud = {}
    steps = [ThingStep("a", cloud=cloud), ThingStep("b", ["a"], cloud=cloud), ThingStep("c", cloud=cloud)]
    results = engine_for(steps).apply(["b"])
    assert set(results) == {"a", "b"} and set(cloud) == {"a", "b"}


def test_destroy_goes_in_reverse_order_and_keeps_refused_changes():
    cloud = {}
    order = []

    class Recording(ThingStep):
        def apply(self, ctx, change, observed):
            order.append(self.name)
            if change.action == "delete":
                self.cloud.pop(self.name)
            else:
                super().apply(ctx, change, observed)

    steps = [Recording("a", cloud=cloud), Recording("b", ["a"], cloud=cloud, blocked="delete-data"),
             Recording("c", ["b"], cloud=cloud)]
    engine_for(steps).apply()
    order.clear()
    results = engine_for(steps).destroy()
    assert order == ["c", "a"]
    assert [c.name for c in results["b"].refused] == ["b"] and "b" in cloud
    engine_for(steps, allow={"delete-data"}).destroy()
    assert cloud == {}


def test_graph_rejects_unknown_dependencies_cycles_and_targets():
    with pytest.raises(OrchestratorError, match="unknown step"):
        StepGraph([ThingStep("a", ["nope"])])
    with pytest.raises(OrchestratorError, match="cycle"):
        StepGraph([ThingStep("a", ["b"]), ThingStep("b", ["a"])])
    with pytest.raises(OrchestratorError, match="unknown step.*--target: zzz"):
        StepGraph([ThingStep("a")]).select(["zzz"])


def test_destroy_selection_includes_dependants():
    graph = StepGraph([ThingStep("a"), ThingStep("b", ["a"]), ThingStep("c")])
    assert graph.select_for_destroy(["a"]) == {"a", "b"}


def test_graph_renders_text_dot_and_mermaid():
    graph = StepGraph([ThingStep("a"), ThingStep("b", ["a"])])
    assert '"a" -> "b";' in graph.render("dot")
    assert "a --> b" in graph.render("mermaid")
    assert graph.render("text").splitlines()[1].startswith("b  after: a")


def test_scheduler_reports_each_outcome():
    outcome = run_concurrently({"a": set(), "b": {"a"}, "c": set()}, lambda name: name != "a")
    assert outcome == {"a": "failed", "b": "skipped", "c": "ok"}


def test_a_kept_resource_that_holds_its_dependencies_keeps_them_too():
    cloud = {}

    class Holding(ThingStep):
        def plan_destroy(self, observed):
            return [Change("delete", "thing", self.name, blocked="delete-protected", holds_dependencies=True)]

    class Deleting(ThingStep):
        def apply(self, ctx, change, observed):
            self.cloud.pop(self.name) if change.action == "delete" else super().apply(ctx, change, observed)

    steps = [Deleting("network", cloud=cloud), Holding("balancer", ["network"], cloud=cloud)]
    engine_for(steps).apply()
    results = engine_for(steps).destroy()
    assert results["balancer"].status == "kept"
    assert results["network"].status == "skipped"
    assert results["network"].error == "kept: balancer keeps resources that use it"
    assert set(cloud) == {"network", "balancer"}


def test_cancelled_run_stops_before_the_next_change():
    class Two(ThingStep):
        def plan(self, desired, observed, recorded):
            return [Change("create", "thing", f"{self.name}-{i}") for i in (1, 2)]

        def apply(self, ctx, change, observed):
            self.cloud[change.name] = True
            engine.cancelled.set()  # Ctrl-C arrives during the first change

    cloud = {}
    engine = engine_for([Two("a", cloud=cloud)])
    results = engine.apply()
    assert set(cloud) == {"a-1"}
    assert results["a"].status == "failed" and results["a"].error == "interrupted before create thing a-2"


def test_ctrl_c_lets_running_work_finish_and_starts_nothing_new():
    import os
    import signal
    import time

    started, interrupted = [], []

    def work(name):
        started.append(name)
        if name == "a":
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C while "a" runs
            time.sleep(0.2)
        return True

    with pytest.raises(KeyboardInterrupt):
        run_concurrently({"a": set(), "b": {"a"}}, work, on_interrupt=lambda: interrupted.append(True))
    assert started == ["a"] and interrupted == [True]


def test_refused_changes_are_not_pending():
    from orchestrator.engine import StepResult
    from orchestrator.render import pending
    bucket = Change("delete", "bucket", "logs", blocked="delete-data")
    kept = StepResult("storage", changes=[bucket], refused=[bucket])
    assert pending({"storage": kept}) == 0
    kept.changes.append(Change("update", "bucket", "config"))
    assert pending({"storage": kept}) == 1


def test_errors_name_the_operation_and_never_print_a_web_page():
    from botocore.exceptions import ClientError

    from orchestrator.engine import describe_error
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "not allowed"}}, "CreateVpc")
    assert describe_error(denied) == "CreateVpc: AccessDenied: not allowed"
    page = ClientError({"Error": {"Code": "500", "Message": "<!doctype html><title>500 Internal Server Error"},
                        "ResponseMetadata": {"HTTPStatusCode": 500}}, "PutBackupPolicy")
    assert describe_error(page).startswith("PutBackupPolicy: 500: HTTP 500 with a web page instead of an AWS answer")


def test_ctrl_c_ends_a_long_wait_at_the_next_poll():
    class Waiting(ThingStep):
        def apply(self, ctx, change, observed):
            engine.cancelled.set()  # Ctrl-C while AWS is still provisioning
            from orchestrator.model import Accepted, Wait
            return Accepted(waits=(Wait("load balancer", lambda: (False, "provisioning")),))

    engine = engine_for([Waiting("a")])
    results = engine.apply()
    assert results["a"].status == "failed" and results["a"].error == "interrupted"


# --- the step contract: two phases, typed outputs, retirement --------------------------------


class FakeStore:
    """Keeps what the engine records, in order, as the state store would."""

    def __init__(self):
        self.events = []

    def steps(self):
        return {}

    def protect(self):
        pass

    def record_changes(self, lease, step, changes):
        self.events.append(("written", [change.name for change in changes]))
        self.events.extend(("recorded", change.name, change.record) for change in changes)

    def finish_step(self, lease, step, records=(), **kwargs):
        self.events.append(("finished", step, [change.name for change in records]))

    def forget_step(self, lease, step):
        pass


class FakeLease:
    lost = False

    def check_current(self):
        pass


def test_a_change_is_recorded_as_soon_as_aws_accepts_it_then_all_waits_settle_together():
    from orchestrator.model import Accepted, Wait
    store, polls = FakeStore(), []

    class Slow(ThingStep):
        def plan(self, desired, observed, recorded):
            return [Change("create", "thing", f"t{i}", record={"planned": i}) for i in (1, 2)]

        def apply(self, ctx, change, observed):
            checks = iter([(False, "pending"), (True, "available")])

            def check():
                polls.append((change.name, [e[1] for e in store.events if e[0] == "recorded"]))
                return next(checks)

            return Accepted(record={"arn": f"arn:{change.name}"}, waits=(Wait(f"thing {change.name}", check),))

    engine_for([Slow("a")], store=store, lease=FakeLease()).apply()
    # Both records (with what AWS answered, not only what the plan knew), in one write, before
    # any wait polled; then the two waits polled round by round, together.
    assert store.events[:3] == [("written", ["t1", "t2"]), ("recorded", "t1", {"arn": "arn:t1"}),
                                ("recorded", "t2", {"arn": "arn:t2"})]
    assert polls == [("t1", ["t1", "t2"]), ("t2", ["t1", "t2"])] * 2
    assert store.events[3:] == [("finished", "a", [])]


def test_the_records_of_changes_with_nothing_to_wait_for_go_with_the_steps_outcome():
    store = FakeStore()

    class Quick(ThingStep):
        def plan(self, desired, observed, recorded):
            return [Change("create", "thing", f"t{i}", record={"n": i}) for i in (1, 2)]

    engine_for([Quick("a")], store=store, lease=FakeLease()).apply()
    assert store.events == [("finished", "a", ["t1", "t2"])]


def test_records_of_changes_accepted_one_after_another_are_written_together_never_after_a_wait():
    from orchestrator.model import Accepted, Wait
    store = FakeStore()

    class Mixed(ThingStep):
        """t1, t2 without waits; t3 with one, which t4's handler settles first; t5 fails."""

        def plan(self, desired, observed, recorded):
            return [Change("create", "thing", f"t{i}", record={"n": i}) for i in range(1, 6)]

        def apply(self, ctx, change, observed):
            store.events.append(("called", change.name))
            if change.name == "t3":
                return Accepted(waits=(Wait("t3 ready", lambda: (True, "ready")),))
            if change.name == "t4":
                ctx.settle()
            if change.name == "t5":
                raise RuntimeError("t5 refused")

    results = engine_for([Mixed("a")], store=store, lease=FakeLease()).apply()

    assert results["a"].status == "failed"
    assert [e for e in store.events if e[0] in ("called", "written")] == [
        ("called", "t1"), ("called", "t2"), ("called", "t3"), ("called", "t4"),
        ("written", ["t1", "t2", "t3"]),  # as t4's handler settles t3's wait, before the wait
        ("called", "t5"),
        ("written", ["t4"]),  # t5 failed: what AWS accepted before it is recorded all the same
    ]


def test_a_failed_wait_fails_the_step_and_names_what_it_waited_for():
    from orchestrator.model import Accepted, Wait
    from orchestrator.waiters import WaitFailed

    class Failing(ThingStep):
        def apply(self, ctx, change, observed):
            def check():
                raise WaitFailed(f"NAT gateway {change.name} is failed: Gateway.NotAttached")
            return Accepted(waits=(Wait(f"NAT gateway {change.name}", check),))

    results = engine_for([Failing("nat")]).apply()
    assert results["nat"].status == "failed"
    assert results["nat"].error == "NAT gateway nat is failed: Gateway.NotAttached"


def test_reading_an_undeclared_step_or_output_is_an_error_at_once():
    from orchestrator.model import ContractError, Inputs
    inputs = Inputs("123456789012", "us-east-1", {"vpc": {"vpc_id": "vpc-1"}}, declared={"vpc": ("vpc_id", "zones")})
    assert inputs.output("vpc", "vpc_id") == "vpc-1"
    with pytest.raises(ContractError, match="does not depend on step alb"):
        inputs.output("alb", "dns_name")
    with pytest.raises(ContractError, match=r"vpc\.vpc_ids, which step vpc does not declare \(did you mean vpc_id\?\)"):
        inputs.output("vpc", "vpc_ids")


def test_an_output_not_known_yet_is_its_own_type_and_names_its_source():
    from orchestrator.model import Inputs, Unknown
    inputs = Inputs("123456789012", "us-east-1", {"vpc": {}}, declared={"vpc": ("vpc_id",)})
    value = inputs.output("vpc", "vpc_id")
    assert isinstance(value, Unknown) and value.source == "vpc.vpc_id" and value == KNOWN_AFTER_APPLY


def test_a_request_holding_an_unknown_value_is_never_sent(mock):
    from orchestrator.aws import Aws, UnknownValueSent, current_step
    from orchestrator.model import Unknown
    aws = Aws("us-east-1")
    current_step.set("efs")
    with pytest.raises(UnknownValueSent) as refused:
        aws.client("efs").create_mount_target(FileSystemId="fs-1", SubnetId=Unknown("vpc.private_subnet_ids"))
    assert str(refused.value) == ("step efs: CreateMountTarget would send SubnetId before vpc.private_subnet_ids "
                                  "is known (the step read it before the step that makes it applied)")
    with pytest.raises(UnknownValueSent, match="SecurityGroups\\[0\\]"):  # a string built from one, too
        aws.client("efs").create_mount_target(FileSystemId="fs-1", SubnetId="subnet-1",
                                              SecurityGroups=[f"{Unknown('vpc.security_groups')}"])
    assert aws.ledger.count() == 0, "nothing reached AWS"


def test_an_output_of_the_wrong_type_is_a_contract_error():
    class Untyped(ThingStep):
        def outputs(self, desired, observed):
            return {"id": "x"}

    results = engine_for([Untyped("a")]).plan()
    assert results["a"].status == "failed" and "not its declared ThingOutputs" in results["a"].error


class Replacing(ThingStep):
    """Replaces its thing: a new one now, the old one retired at the end of the run."""

    def __init__(self, *args, log, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = log

    def plan(self, desired, observed, recorded):
        return [Change("replace", "thing", self.name, payload=desired),
                Change("delete", "thing", f"{self.name}-old", retire=True)]

    def apply(self, ctx, change, observed):
        self.log.append(f"{change.action} {change.name}")
        observed["thing"] = desired = change.payload or observed["thing"]
        self.cloud[self.name] = desired


def test_a_replaced_resource_is_retired_after_its_dependants_moved_in_reverse_graph_order():
    log = []
    steps = [Replacing("network", log=log), Replacing("balancer", ["network"], log=log),
             Replacing("service", ["balancer"], log=log)]
    engine_for(steps).apply()
    assert log == ["replace network", "replace balancer", "replace service",
                   "delete service-old", "delete balancer-old", "delete network-old"]


def test_a_dependant_that_failed_keeps_the_old_resource_for_the_next_apply():
    log = []
    steps = [Replacing("network", log=log), ThingStep("service", ["network"], fail=True)]
    results = engine_for(steps).apply()
    assert log == ["replace network"]
    assert results["network"].status == "ok"
    assert results["network"].error == ("kept 1 superseded resource(s) for the next apply: service did not move off "
                                        "them (not run, or failed)")


def test_a_dependant_left_out_by_target_keeps_the_old_resource_unless_it_was_never_applied():
    log = []
    steps = [Replacing("network", log=log), ThingStep("service", ["network"])]
    store = FakeStore()
    store.steps = lambda: {"service": {"status": "ok"}}  # the service runs on the old network
    results = engine_for(steps, store=store, lease=FakeLease()).apply(["network"])
    assert log == ["replace network"] and "service did not move off them" in results["network"].error

    log.clear()
    engine_for(steps).apply(["network"])  # nothing of the service exists yet: nothing to wait for
    assert log == ["replace network", "delete network-old"]


def test_the_plan_names_the_dependants_that_move_and_any_outage():
    from orchestrator.engine import StepResult
    from orchestrator.render import plan_text
    result = StepResult("vpc", dependants=("alb", "efs"), changes=[
        Change("replace", "subnet", "private-a"),
        Change("replace", "namespace", "dev.local", outage="services cannot be found by name meanwhile"),
        Change("delete", "target_group", "old", retire=True)])
    text = plan_text("Plan:", {"vpc": result})
    assert "new one first; alb, efs move to it, then the old one is removed" in text
    assert "OUTAGE: deleted before it is created again: services cannot be found by name meanwhile" in text
    assert "- delete target_group old   [at the end of the run, once dependants moved]" in text


def test_plan_destroy_shows_what_destroy_then_does_refusals_and_kept_dependencies_included():
    cloud = {}

    class Holding(ThingStep):
        def plan_destroy(self, observed):
            return [Change("delete", "thing", self.name, blocked="delete-protected", holds_dependencies=True,
                           note="protection is on: turn it off in the manifest and apply")]

    class Deleting(ThingStep):
        def apply(self, ctx, change, observed):
            self.cloud.pop(self.name) if change.action == "delete" else super().apply(ctx, change, observed)

    steps = [Deleting("network", cloud=cloud), Holding("balancer", ["network"], cloud=cloud),
             Deleting("data", cloud=cloud, blocked="delete-data"), Deleting("app", ["data"], cloud=cloud)]
    engine_for(steps).apply()

    def outcome(results):
        return {name: (r.status, [c.key for c in r.changes], [c.key for c in r.refused]) for name, r in results.items()}

    preview = engine_for(steps).plan_destroy()
    assert set(cloud) == {"network", "balancer", "data", "app"}, "plan --destroy deleted something"
    done = engine_for(steps).destroy()
    assert outcome(preview) == outcome(done)
    assert outcome(done)["balancer"] == ("kept", ["thing/balancer"], ["thing/balancer"])
    assert outcome(done)["network"][0] == "skipped"
    assert set(cloud) == {"network", "balancer", "data"}
    assert outcome(engine_for(steps, allow={"delete-data"}).plan_destroy())["data"] == ("ok", ["thing/data"], [])


def test_a_destroy_plan_names_refusals_and_never_a_flag_that_does_not_exist():
    from orchestrator.engine import StepResult
    from orchestrator.render import destroy_leftovers, plan_text, refusal, run_summary
    protected = Change("delete", "load_balancer", "web", blocked="delete-protected",
                       note="deletion protection is on: set it to false and apply")
    logs = Change("delete", "log_group", "/ecs/web", blocked="delete-data", note="it holds logs")
    results = {"alb": StepResult("alb", status="kept", changes=[protected], refused=[protected]),
               "ecs": StepResult("ecs", status="ok", changes=[logs, Change("delete", "cluster", "c")], refused=[logs]),
               "vpc": StepResult("vpc", status="skipped", error="kept: alb keeps resources that use it")}
    text = plan_text("Destroy plan:", results)
    lines = text.splitlines()
    assert lines[1] == "Plan: 0 to create, 0 to update, 0 to replace, 1 to delete. 2 refused (see below)."
    assert "- delete load_balancer web   [refused: see note]" in text
    assert "- delete log_group /ecs/web   [refused without --delete-data]" in text
    assert "vpc: kept: alb keeps resources that use it" in text
    assert "ecs: 1 to delete, 1 refused" in lines and "alb: 1 refused   [kept: what it depends on stays too]" in lines
    allowed = {"ecs": StepResult("ecs", changes=[logs])}
    assert "- delete log_group /ecs/web   [LOSES DATA: allowed by --delete-data]" in plan_text("Plan:", allowed)
    assert refusal(protected) == "deletion protection is on: set it to false and apply"
    summary = run_summary("destroy dev: ok", results, CallLedger())
    assert "--delete-protected" not in text + summary
    assert "left load_balancer web: deletion protection is on" in summary
    assert "kept (holds data): log_group /ecs/web — to delete it too: pass --delete-data" in summary
    left, kept = destroy_leftovers(results)
    assert left == ["alb: load_balancer web: deletion protection is on: set it to false and apply",
                    "vpc: what it still owns (kept: alb keeps resources that use it)"]
    assert kept == [logs]


def test_a_preflight_problem_stops_apply_before_any_step_changes_anything_naming_every_problem():
    cloud = {}

    class Checked(ThingStep):
        def preflight(self, ctx, desired, observed):
            return [f"{self.name} needs a certificate", f"{self.name} needs a secret source"]

    steps = [ThingStep("a", cloud=cloud), ThingStep("b", ["a"], cloud=cloud), Checked("c", cloud=cloud),
             ThingStep("d", cloud=cloud, fail=True)]
    with pytest.raises(OrchestratorError) as raised:
        engine_for(steps).apply()
    assert cloud == {}, "a step changed something before the pre-flight problems were known"
    assert str(raised.value).splitlines() == [
        "apply stopped before any change: 2 problem(s) found first:",
        "  c: c needs a certificate", "  c: c needs a secret source"]

    plan = engine_for(steps).plan()
    assert plan["c"].problems == ["c needs a certificate", "c needs a secret source"]
    from orchestrator.render import plan_text
    assert "c: PROBLEM: c needs a certificate" in plan_text("Plan:", plan)


def test_apply_observes_and_plans_once_a_step_whose_upstream_outputs_did_not_change():
    cloud = {}
    observed, planned = [], []

    class Counting(ThingStep):
        def observe(self, ctx, desired):
            observed.append(self.name)
            return super().observe(ctx, desired)

        def plan(self, desired, observed, recorded):
            planned.append(self.name)
            return super().plan(desired, observed, recorded)

    steps = [Counting("a", cloud=cloud), Counting("b", ["a"], cloud=cloud)]
    engine_for(steps).apply()
    # First apply: b was planned with a's id not known yet, so it looks and plans again once a exists.
    assert sorted(observed) == ["a", "b", "b"] and sorted(planned) == ["a", "b", "b"]
    observed.clear(), planned.clear()
    engine_for(steps).apply()
    assert sorted(observed) == ["a", "b"] and sorted(planned) == ["a", "b"]


def test_prune_deletes_only_what_the_manifest_no_longer_wants_and_leaves_a_step_with_changes_pending():
    class Leftovers(ThingStep):
        """Owns `thing` plus leftovers (`old-*`) its plan deletes."""

        def plan(self, desired, observed, recorded):
            changes = super().plan(desired, observed, recorded)
            return changes + [Change("delete", "thing", key, payload=key) for key in sorted(self.cloud)
                              if key.startswith(f"old-{self.name}")]

        def apply(self, ctx, change, observed):
            if change.action == "delete":
                self.cloud.pop(change.payload)
            else:
                super().apply(ctx, change, observed)

    cloud = {}
    steps = [Leftovers("a", cloud=cloud), Leftovers("b", ["a"], cloud=cloud)]
    engine_for(steps).apply()
    cloud.update({"old-a-1": {}, "old-b-1": {}})
    dry = engine_for(steps).prune(dry_run=True)
    assert [c.name for c in dry["a"].changes] == ["old-a-1"] and [c.name for c in dry["b"].changes] == ["old-b-1"]
    assert set(cloud) == {"a", "b", "old-a-1", "old-b-1"}

    del cloud["b"]  # b has a create pending: prune leaves its deletes to apply
    cloud["old-a-2"] = {}
    results = engine_for(steps).prune(dry_run=False)
    assert results["b"].error == "1 other change(s) pending: `apply` makes them and its deletes; pruned nothing"
    assert set(cloud) == {"a", "old-b-1"}


def test_prune_of_a_step_not_applied_says_so_instead_of_changes_pending():
    """After a destroy (or before the first apply) a step's plan is all creates: nothing to prune."""
    from orchestrator.render import plan_text
    cloud = {}
    steps = [ThingStep("a", cloud=cloud), ThingStep("b", ["a"], cloud=cloud)]
    engine_for(steps).apply(targets=["a"])
    results = engine_for(steps).prune(dry_run=True)
    assert (results["a"].error, results["b"].error) == (None, "not applied: nothing of it to prune")
    text = plan_text("Prune (dry run):", results, nothing="Nothing to prune")
    assert "Nothing to prune." in text and "pending" not in text


def test_an_older_revision_of_a_described_task_definition_is_not_left_unclassified():
    from orchestrator.engine import undescribed
    observed = {"services": {"gamepulse": {"taskDefinition": "arn:aws:ecs:us-east-1:1:task-definition/gp-dev-app:3"}}}
    arns = ["arn:aws:ecs:us-east-1:1:task-definition/gp-dev-app:2",  # kept revision of the same family
            "arn:aws:ecs:us-east-1:1:task-definition/gp-dev-old:1"]  # a family no step describes
    assert undescribed(arns, observed) == ["arn:aws:ecs:us-east-1:1:task-definition/gp-dev-old:1"]


def test_a_prune_that_leaves_a_step_to_apply_says_so_once():
    from orchestrator.engine import StepResult
    from orchestrator.render import plan_text
    waiting = StepResult("services", error="2 other change(s) pending: `apply` makes them and its deletes; "
                                           "pruned nothing")
    text = plan_text("Prune:", {"services": waiting})
    assert text.count("services:") == 1 and "services: 2 other change(s) pending" in text


def test_status_is_brief_names_what_is_not_ok_and_lines_up_the_last_runs():
    from orchestrator.render import status_text
    records = {"vpc": {"status": "ok", "outputs": {"vpc_id": "vpc-1"}},
               "services": {"status": "failed", "error": "the rollout of service loki failed"}}
    runs = [{"started_at": "2026-12-06T11:27:52.000+00:00", "user": "ana", "host": "laptop", "result": "failed",
             "command": "apply --image-tag gamepulse=1.4.2", "seconds": 41.23, "run_id": "a7d0a9ff6f14"},
            {"started_at": "2026-12-06T10:02:11.000+00:00", "user": "ci", "host": "runner-7", "result": "ok",
             "command": "apply", "seconds": 3, "run_id": "0389db08cbfa"}]
    text = status_text("dev", records, None, runs, 0.0, unapplied=["dashboards"])
    lines = text.splitlines()
    assert lines[:4] == ["Environment dev: not locked", "  steps: 1 ok (vpc)",
                         "    services failed: the rollout of service loki failed", "    not applied: dashboards"]
    assert "vpc-1" not in text, "outputs only with --outputs"
    header, first, second = lines[-3:]
    assert header.split() == ["started", "(UTC)", "by", "command", "result", "took", "run"]
    assert first.split()[:3] == ["2026-12-06", "11:27:52", "ana@laptop"] and "41.2s" in first
    for column in ("by", "command", "result", "took", "run"):
        at = header.index(column)
        assert first[at - 1] == second[at - 1] == " " and first[at] != " " and second[at] != " ", column
    assert "vpc_id: vpc-1" in status_text("dev", records, None, runs, 0.0, full=True)


def test_a_kept_resource_is_said_kept_with_how_to_delete_it_too():
    from orchestrator.render import kept_line
    kept = Change("delete", "repository", "gamepulse", blocked="delete-data", note="it holds images")
    assert kept_line(kept, "orchestrator destroy dev --yes") == \
        "kept (holds data): repository gamepulse — to delete it too: orchestrator destroy dev --yes --delete-data"


# --- handlers keep the observed facts: what outputs and dependants read afterwards ---------------


class LaggingCloud:
    """Things by name, each given an id when made. Reads show this run's writes only later
    (`catch_up`), as AWS's describe and tagging APIs may: a second read after a change would
    not see it."""

    def __init__(self, *names: str):
        self.made = 0
        self.real = {name: self._new_id() for name in names}
        self.visible = dict(self.real)

    def _new_id(self) -> str:
        self.made += 1
        return f"id-{self.made}"

    def create(self, name: str) -> str:
        self.real[name] = self._new_id()
        return self.real[name]

    def delete(self, name: str) -> None:
        del self.real[name]

    def catch_up(self) -> None:
        self.visible = dict(self.real)


@dataclass(frozen=True)
class MadeOutputs:
    ids: dict  # name → the id the cloud gave


class MadeStep(Step):
    """Owns the things of `wanted` in a lagging cloud; its outputs are their ids, read from the
    facts its handlers keep, never from a second read."""

    Outputs = MadeOutputs

    def __init__(self, name, wanted=(), cloud=None, depends_on=(), keep=()):
        self.name, self.wanted, self.cloud, self.depends_on = name, set(wanted), cloud, tuple(depends_on)
        self.keep = set(keep)  # deletes refused for their data
        self.seen_inputs: dict = {}
        self.seen_by_handlers: list[list[str]] = []

    def desired(self, manifest, inputs):
        self.seen_inputs = {dep: inputs.output(dep, "ids") for dep in self.depends_on}
        return sorted(self.wanted)

    def observe(self, ctx, desired):
        return {"ids": dict(self.cloud.visible)}

    def plan(self, desired, observed, recorded):
        return [*(Change("create", "thing", name) for name in desired if name not in observed["ids"]),
                *(Change("delete", "thing", name) for name in sorted(observed["ids"]) if name not in desired)]

    def apply(self, ctx, change, observed):
        self.seen_by_handlers.append(sorted(observed["ids"]))
        if change.action == "create":
            observed["ids"][change.name] = self.cloud.create(change.name)
        else:
            self.cloud.delete(change.name)
            del observed["ids"][change.name]

    def outputs(self, desired, observed):
        return MadeOutputs(ids=dict(observed["ids"]))

    def plan_destroy(self, observed):
        return [Change("delete", "thing", name, blocked="delete-data" if name in self.keep else None)
                for name in sorted(observed["ids"])]


class OutputsStore(FakeStore):
    """Keeps the outputs each step's record was given."""

    def __init__(self):
        super().__init__()
        self.outputs = {}

    def finish_step(self, lease, step, **kwargs):
        self.outputs[step] = kwargs["outputs"]


def test_outputs_after_apply_are_what_the_handlers_did_though_a_second_read_would_not_show_it():
    cloud = LaggingCloud("old")
    made = MadeStep("made", wanted=("a", "b"), cloud=cloud)
    user = MadeStep("user", cloud=LaggingCloud(), depends_on=["made"])
    store = OutputsStore()

    results = engine_for([made, user], store=store, lease=FakeLease()).apply()

    assert cloud.visible == {"old": "id-1"}, "a second read would still show the old thing only"
    assert results["made"].outputs == {"ids": {"a": "id-2", "b": "id-3"}}
    assert store.outputs["made"] == {"ids": {"a": "id-2", "b": "id-3"}}
    assert user.seen_inputs == {"made": {"a": "id-2", "b": "id-3"}}, "dependants read them in the same run"
    assert made.seen_by_handlers == [["old"], ["a", "old"], ["a", "b", "old"]], \
        "each handler reads what the handlers before it did"


def test_outputs_after_destroy_are_what_its_handlers_left():
    cloud = LaggingCloud("a", "kept")
    store = OutputsStore()

    results = engine_for([MadeStep("made", cloud=cloud, keep={"kept"})], store=store, lease=FakeLease()).destroy()

    assert cloud.real == {"kept": "id-2"} and cloud.visible == {"a": "id-1", "kept": "id-2"}
    assert [c.name for c in results["made"].refused] == ["kept"]
    assert results["made"].outputs == store.outputs["made"] == {"ids": {"kept": "id-2"}}


class RecordsStore(FakeStore):
    """A state store whose step records say what a previous apply left."""

    def __init__(self, records):
        super().__init__()
        self.records = records

    def steps(self):
        return {name: {"step": name, "applied": {}, **record} for name, record in self.records.items()}


class Observing(ThingStep):
    """Counts its observes, with the upstream outputs each was made with."""

    def __init__(self, *args, log=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = log if log is not None else []

    def observe(self, ctx, desired):
        self.log.append((self.name, desired["after"]))
        return super().observe(ctx, desired)


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_a_step_whose_upstream_outputs_are_recorded_observes_together_with_them(command):
    # a and b observe through one barrier: b waiting for a to be planned would break it.
    barrier = threading.Barrier(2, timeout=10)
    cloud = {"a": {"name": "a", "after": []}, "b": {"name": "b", "after": [("a", "id-a")]}}
    log = []
    steps = [Observing("a", cloud=cloud, barrier=barrier, log=log),
             Observing("b", ["a"], cloud=cloud, barrier=barrier, log=log)]
    store = RecordsStore({"a": {"status": "ok", "outputs": {"id": "id-a"}}, "b": {"status": "ok", "outputs": {"id": "id-b"}}})

    results = getattr(engine_for(steps, store=store), command)()

    assert {name: r.status for name, r in results.items()} == {"a": "ok", "b": "ok"}
    assert all(not r.changes for r in results.values())
    assert sorted(log) == [("a", []), ("b", [("a", "id-a")])], "each step observed once"


def test_a_step_whose_upstream_output_really_changed_is_observed_again_with_the_new_value():
    cloud = {"a": {"name": "a", "after": []}, "b": {"name": "b", "after": [("a", "id-old")]}}
    log = []
    steps = [Observing("a", cloud=cloud, log=log), Observing("b", ["a"], cloud=cloud, log=log),
             Observing("c", ["b"], cloud=cloud, log=log)]
    # a's record holds an id its plan no longer gives; c was never applied (its upstream b was).
    store = RecordsStore({"a": {"status": "ok", "outputs": {"id": "id-old"}},
                          "b": {"status": "ok", "outputs": {"id": "id-b"}}})

    results = engine_for(steps, store=store).plan()

    assert log.count(("b", [("a", "id-old")])) == 1, "observed early with the recorded value"
    assert log.count(("b", [("a", "id-a")])) == 1, "then again with what a's plan gives"
    assert results["b"].changes[0].diffs[0].new == [("a", "id-a")]
    assert log.count(("c", [("b", "id-b")])) == 1, "b's output did not change: c is observed once"


def test_a_step_whose_upstream_has_no_record_waits_for_it():
    log = []
    steps = [Observing("a", log=log), Observing("b", ["a"], log=log)]
    store = RecordsStore({"a": {"status": "failed", "outputs": {"id": "id-a"}}})

    results = engine_for(steps, store=store).plan()

    assert log == [("a", []), ("b", [("a", KNOWN_AFTER_APPLY)])]
    assert results["b"].changes[0].diffs[0].new == [("a", KNOWN_AFTER_APPLY)]


class SlowToObserve(Observing):
    """Its observe takes `seconds` on the engine's clock."""

    def __init__(self, *args, clock, seconds, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock, self.seconds = clock, seconds

    def observe(self, ctx, desired):
        self.clock[0] += self.seconds
        return super().observe(ctx, desired)


def test_a_step_observed_early_counts_that_time_as_its_own(monkeypatch):
    """The summary's time column: b's reads went out before a was planned, and are still b's."""
    import types

    from orchestrator import engine as engine_module
    clock = [0.0]
    monkeypatch.setattr(engine_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    cloud = {"a": {"name": "a", "after": []}, "b": {"name": "b", "after": [("a", "id-a")]}}
    steps = [SlowToObserve("a", cloud=cloud, clock=clock, seconds=1.0),
             SlowToObserve("b", ["a"], cloud=cloud, clock=clock, seconds=7.0)]
    store = RecordsStore({"a": {"status": "ok", "outputs": {"id": "id-a"}},
                          "b": {"status": "ok", "outputs": {"id": "id-b"}}})

    results = engine_for(steps, store=store, parallelism=1).plan()

    assert (results["a"].seconds, results["b"].seconds) == (1.0, 7.0)


@pytest.mark.parametrize("by_manifest", [False, True])
def test_a_step_observing_by_names_alone_is_not_observed_again_when_an_upstream_output_becomes_known(by_manifest):
    """The first apply: b was planned while a's id was not known yet. b is planned again with
    it; it reads AWS again only if its observation may depend on that output."""
    cloud = {}

    class Counted(ThingStep):
        observes_by_manifest = by_manifest
        observed = 0

        def observe(self, ctx, desired):
            Counted.observed += 1
            return super().observe(ctx, desired)

    results = engine_for([ThingStep("a", cloud=cloud), Counted("b", ["a"], cloud=cloud)]).apply()
    assert results["b"].status == "ok"
    assert cloud["b"]["after"] == [("a", "id-a")], "planned again with the output now known"
    assert Counted.observed == (1 if by_manifest else 2)


def together_step(events, fail=(), after=None, meet=("t1", "t3")):
    """Changes t1..t3 naming what they need (`after`, by change name); the two `meet` meet at a
    barrier, so they must be in flight at once."""
    import threading
    from orchestrator.model import Accepted
    barrier = threading.Barrier(2, timeout=30)

    class Together(ThingStep):
        def plan(self, desired, observed, recorded):
            return [Change("create", "thing", name, record={"n": name},
                           after=None if after[name] is None else tuple(f"thing/{d}" for d in after[name]))
                    for name in ("t1", "t2", "t3")]

        def apply(self, ctx, change, observed):
            events.append(("start", change.name))
            if change.name in meet:
                barrier.wait()
            if change.name in fail:
                raise RuntimeError(f"{change.name} refused")
            events.append(("end", change.name))
            return Accepted(record={"made": change.name})

    return Together("a")


def test_changes_naming_what_they_need_are_made_together_and_recorded_in_plan_order():
    events, store = [], FakeStore()
    step = together_step(events, after={"t1": (), "t2": ("t1",), "t3": ()})
    results = engine_for([step], store=store, lease=FakeLease()).apply()
    assert results["a"].status == "ok"
    assert events.index(("start", "t2")) > events.index(("end", "t1")), "t2 needs t1 made first"
    assert [c.name for c in results["a"].applied] == ["t1", "t2", "t3"]
    assert store.events == [("finished", "a", ["t1", "t2", "t3"])]


def test_a_failure_among_changes_made_together_records_the_others_and_starts_nothing_more():
    events, store = [], FakeStore()
    step = together_step(events, fail=("t1",), after={"t1": (), "t2": (), "t3": None}, meet=("t1", "t2"))
    results = engine_for([step], store=store, lease=FakeLease()).apply()
    assert results["a"].status == "failed" and results["a"].error == "t1 refused"
    assert ("start", "t3") not in events, "t3 waits for every earlier change, and t1 failed"
    assert ("written", ["t2"]) in store.events, "t2 was in flight beside t1: AWS accepted it, it is recorded"


def test_a_change_naming_what_it_needs_settles_only_those_waits_and_those_of_its_own_key():
    """t2 and t3 need t1 only; t3 is also the replace of an earlier t3 (its delete). Neither
    waits for the other's (still pending) waits, nor for t0's, and both go out before any of
    those is polled; what they name is settled (and recorded) before each of their calls."""
    from orchestrator.model import Accepted, Wait
    events, store = [], FakeStore()
    plan = [("create", "t0", ()), ("create", "t1", ()), ("delete", "t3", ()), ("create", "t2", ("t1",)),
            ("replace", "t3", ("t1",))]

    class Needing(ThingStep):
        def plan(self, desired, observed, recorded):
            return [Change(action, "thing", name, record={"n": name}, after=tuple(f"thing/{n}" for n in needs))
                    for action, name, needs in plan]

        def apply(self, ctx, change, observed):
            if change.action in ("create", "replace") and change.name in ("t2", "t3"):
                ctx.settle()
            events.append(("call", change.action, change.name))

            def check():
                events.append(("poll", change.action, change.name))
                return True, "ready"

            return Accepted(waits=(Wait(f"{change.action} {change.name}", check),))

    results = engine_for([Needing("a")], store=store, lease=FakeLease()).apply()

    assert results["a"].status == "ok"
    t2, t3 = events.index(("call", "create", "t2")), events.index(("call", "replace", "t3"))
    assert events.index(("poll", "create", "t1")) < min(t2, t3), "both need t1 settled"
    assert events.index(("poll", "delete", "t3")) < t3, "a replace settles its own delete first"
    assert ("poll", "create", "t0") not in events[:max(t2, t3)], "t0 is needed by neither"
    assert ("poll", "create", "t2") not in events[:t3] and ("poll", "replace", "t3") not in events[:t2]
    assert sorted(e for e in events if e[0] == "poll") == sorted(("poll", a, n) for a, n, _ in plan)
    written = [name for event in store.events if event[0] == "written" for name in event[1]]
    assert sorted(written + store.events[-1][2]) == ["t0", "t1", "t2", "t3", "t3"]


def settling_step(settling: threading.Event, before_the_wait_ends) -> "ThingStep":
    """t1 has a wait; t2 needs t1 and settles that wait; t3, made beside them, is accepted once
    the wait was polled once (while t2 settles it); `before_the_wait_ends()` runs at its second poll."""
    from orchestrator.model import Accepted, Wait
    polls = iter([False, True])

    def t1_ready():
        if next(polls):
            before_the_wait_ends()
            return True, "ready"
        settling.set()
        return False, "pending"

    class Settling(ThingStep):
        def plan(self, desired, observed, recorded):
            return [Change("create", "thing", "t1", record={}, after=()),
                    Change("create", "thing", "t2", record={}, after=("thing/t1",)),
                    Change("create", "thing", "t3", record={}, after=())]

        def apply(self, ctx, change, observed):
            if change.name == "t1":
                return Accepted(waits=(Wait("t1 ready", t1_ready),))
            if change.name == "t2":
                ctx.settle()
            if change.name == "t3":
                assert settling.wait(timeout=30)
            return Accepted()

    return Settling("a")


def test_a_change_made_while_another_settles_is_recorded_without_waiting_for_that_wait():
    """t2 settles t1's wait; t3, made meanwhile (and after t2 in plan order), is recorded while
    that wait still goes on: a wait never stands between AWS accepting a change and its record."""
    settling, t3_written, seen = threading.Event(), threading.Event(), {}

    class Store(FakeStore):
        def record_changes(self, lease, step, changes):
            super().record_changes(lease, step, changes)
            if "t3" in [change.name for change in changes]:
                t3_written.set()

    def before_the_wait_ends():
        seen["t3 written before the wait was over"] = t3_written.wait(timeout=10)

    store = Store()
    results = engine_for([settling_step(settling, before_the_wait_ends)], store=store, lease=FakeLease()).apply()
    assert results["a"].status == "ok"
    assert seen == {"t3 written before the wait was over": True}
    assert [c.name for c in results["a"].applied] == ["t1", "t2", "t3"]


def test_a_record_write_that_fails_while_a_change_settles_loses_no_change_aws_accepted():
    """t3 is accepted while t2 settles t1's wait; writing its record fails once (DynamoDB
    throttled past botocore's retries, say). The step fails on that error, but t2, which ends
    after it, and t3 are both recorded and shown as applied: nothing AWS accepted goes unrecorded."""
    settling, write_failed = threading.Event(), threading.Event()

    class Store(FakeStore):
        def record_changes(self, lease, step, changes):
            if "t3" in [change.name for change in changes] and not write_failed.is_set():
                write_failed.set()
                raise RuntimeError("state table write throttled")
            super().record_changes(lease, step, changes)

    def before_the_wait_ends():  # t1's wait lasts until t3's record was tried
        assert write_failed.wait(timeout=10)

    store = Store()
    results = engine_for([settling_step(settling, before_the_wait_ends)], store=store, lease=FakeLease()).apply()
    assert results["a"].status == "failed" and "throttled" in results["a"].error
    assert [c.name for c in results["a"].applied] == ["t1", "t2", "t3"]
    recorded = {event[1] for event in store.events if event[0] == "recorded"}
    recorded |= {name for event in store.events if event[0] == "finished" for name in event[2]}
    assert recorded == {"t1", "t2", "t3"}


def test_a_wait_that_failed_is_not_waited_out_again_by_each_change_that_needs_it():
    """t2 and t3 both need t1, whose file system never becomes available: the first to settle
    waits it out and fails; the other fails on the same error at once (with five mount targets
    and access points, the step took five times the wait's timeout to fail)."""
    from orchestrator.model import Accepted, Wait
    polls = []

    def t1_ready():
        polls.append("t1")
        raise RuntimeError("file system t1 failed to become available")

    class Needing(ThingStep):
        def plan(self, desired, observed, recorded):
            return [Change("create", "thing", "t1", record={}, after=()),
                    Change("create", "thing", "t2", record={}, after=("thing/t1",)),
                    Change("create", "thing", "t3", record={}, after=("thing/t1",))]

        def apply(self, ctx, change, observed):
            if change.name == "t1":
                return Accepted(waits=(Wait("t1 available", t1_ready),))
            ctx.settle()
            return Accepted()

    results = engine_for([Needing("a")], store=FakeStore(), lease=FakeLease()).apply()
    assert results["a"].status == "failed" and "t1 failed to become available" in results["a"].error
    assert polls == ["t1"]
    assert [c.name for c in results["a"].applied] == ["t1"]
