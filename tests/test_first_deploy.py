"""A first deploy into a fresh account: service-linked roles made first, ECS's refusal while one
is being made tried again (the emulator refuses CreateCluster with capacity providers before
ECS's role exists, as ECS does)."""
from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from tests import harness
from tests.test_ecs import STEP, _Http, load_dev, make_vpc


def _fresh_account_apply(aws):
    """The step's first apply in an account (in a VPC of its own)."""
    return harness.run_step(STEP, load_dev(), aws, {"vpc": {"vpc_id": make_vpc()}}, {})


def test_a_fresh_account_gets_ecs_service_linked_role_before_its_first_cluster(aws):
    # The emulator answers CreateCluster with capacity providers as ECS does in a fresh account:
    # "Unable to assume the service linked role" until the role exists.
    _fresh_account_apply(aws)
    assert [c.operation for c in aws.ledger.calls if c.mutating and c.step == "ecs"][:2] == \
        ["CreateServiceLinkedRole", "CreateCluster"]
    roles = aws.client("iam").list_roles(PathPrefix="/aws-service-role/ecs.amazonaws.com/")["Roles"]
    assert len(roles) == 1
    assert aws.client("ecs").describe_clusters(clusters=["gamepulse-dev"])["clusters"][0]["status"] == "ACTIVE"


def test_a_service_linked_role_made_already_is_no_error(aws):
    aws.client("iam").create_service_linked_role(AWSServiceName="ecs.amazonaws.com")  # another environment's run
    _fresh_account_apply(aws)
    assert aws.client("ecs").describe_clusters(clusters=["gamepulse-dev"])["clusters"][0]["status"] == "ACTIVE"


def test_create_cluster_refused_while_the_linked_role_is_being_made_is_tried_again(aws):
    """AWS's answer moto cannot give: the role exists (just made) but ECS cannot assume it yet."""
    refusals = []

    def not_yet(**kwargs):
        if not refusals:
            refusals.append(True)
            return _Http(400), {"Error": {"Code": "InvalidParameterException",
                                          "Message": "Unable to assume the service linked role. Please verify "
                                                     "that the ECS service linked role exists."}}
        return None

    aws.register("before-call.ecs.CreateCluster", not_yet)
    changes = _fresh_account_apply(aws)[0]
    assert refusals == [True]
    assert ("create", "cluster") in [(c.action, c.kind) for c in changes]
    assert aws.client("ecs").describe_clusters(clusters=["gamepulse-dev"])["clusters"][0]["status"] == "ACTIVE"


# -- IAM propagation ------------------------------------------------------------------------------


@pytest.mark.managed_policies
def test_a_run_that_changed_iam_waits_for_it_to_reach_ecs_and_says_so(manifest, aws, monkeypatch):
    from orchestrator import waiters
    from steps import iam
    from tests.test_iam import STEP as IAM, UPSTREAM

    now = [0.0]
    monkeypatch.setattr(waiters, "clock", lambda: now[0])
    monkeypatch.setattr(waiters, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    monkeypatch.setattr(iam, "IAM_PROPAGATION_SECONDS", 10.0)
    recorded: dict = {}
    with capture_logs() as logs:
        harness.run_step(IAM, manifest, aws, upstream=UPSTREAM, recorded=recorded)
    progress = [log["what"] for log in logs if log["event"] == "waiting"]
    # The changes to seven roles await one thing: each progress line names it once, and its end is said once.
    assert progress and all(line.count("IAM changes of this run to reach ECS") == 1 for line in progress), progress
    assert [log["what"] for log in logs if log["event"] == "wait over"] == ["IAM changes of this run to reach ECS"]
    assert 10.0 <= now[0] <= 20.0  # bounded: the propagation time, then the next poll
    assert now[0] == 10.0 + waiters.DUE_MARGIN, "a span of time known in advance is slept to its end, not past it"

    before = now[0]
    with capture_logs() as logs:
        assert harness.run_step(IAM, manifest, aws, upstream=UPSTREAM, recorded=recorded)[0] == []
    assert now[0] == before  # nothing changed: no wait
    assert not [log for log in logs if "to reach ECS" in str(log.get("what", ""))]


@pytest.mark.managed_policies
def test_roles_changed_one_after_another_are_waited_for_in_one_round_with_no_zero_seconds_left(
        manifest, aws, monkeypatch):
    """On a real clock each role's wait ends a few milliseconds after the last one's: one sleep
    covers them all, and no progress line says "0s left"."""
    from orchestrator import waiters
    from steps import iam
    from tests.test_iam import STEP as IAM, UPSTREAM

    now = [0.0]
    propagation = iam._propagation

    def a_little_later():  # each change is accepted a few milliseconds after the last
        now[0] += 0.003
        return propagation()

    monkeypatch.setattr(waiters, "clock", lambda: now[0])
    monkeypatch.setattr(waiters, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    monkeypatch.setattr(iam, "IAM_PROPAGATION_SECONDS", 10.0)
    monkeypatch.setattr(iam, "_propagation", a_little_later)
    with capture_logs() as logs:
        harness.run_step(IAM, manifest, aws, upstream=UPSTREAM, recorded={})
    progress = [log["what"] for log in logs if log["event"] == "waiting"]
    assert len(progress) == 4, progress  # after the back-off's 1, 2 and 4 s, the end of every role's span
    assert not [line for line in progress if " 0s of IAM propagation left" in line], progress
    assert [log["what"] for log in logs if log["event"] == "wait over"] == ["IAM changes of this run to reach ECS"]


def test_ecs_refusing_a_just_created_role_for_a_while_is_tried_again(manifest, fake_aws_env, monkeypatch):
    """The emulator's switch: ECS answers "Role is not valid" three times per new role."""
    from moto import mock_aws

    from orchestrator.aws import Aws
    from orchestrator.emulator import NEW_ROLE_REFUSALS
    monkeypatch.setenv(NEW_ROLE_REFUSALS, "3")
    monkeypatch.setenv("ORCHESTRATOR_SANDBOX_IMAGE_TAGS", "1.4.1")
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "1")
    with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        aws = Aws("us-east-1")
        refused = []
        aws.register("after-call.ecs.RegisterTaskDefinition",
                     lambda http_response, **kwargs: refused.append(http_response.status_code >= 400))
        results = harness.engine(manifest, aws).apply()
        assert {r.status for r in results.values()} == {"ok"}, {n: r.error for n, r in results.items()}
        assert sum(refused) >= 3  # ECS did refuse, and the run went on
        import boto3
        assert len(boto3.client("ecs", region_name="us-east-1").list_services(
            cluster="gamepulse-dev")["serviceArns"]) == 5


@pytest.mark.managed_policies
def test_ecs_unable_to_assume_a_role_just_made_is_tried_again_on_create_service(aws, manifest, monkeypatch):
    """AWS's answer moto cannot give: ECS cannot assume the role yet when the service is made."""
    from tests.test_services import STEP as SERVICES

    platform = harness.apply_dependencies(SERVICES, manifest, aws, monkeypatch)
    refusals = []

    def not_yet(**kwargs):
        if len(refusals) < 2:
            refusals.append(True)
            return _Http(400), {"Error": {"Code": "InvalidParameterException",
                                          "Message": "Unable to assume role and validate the specified "
                                                     "targetGroupArn. Please verify that the ECS service role "
                                                     "being passed has the proper permissions."}}
        return None

    aws.register("before-call.ecs.CreateService", not_yet)
    harness.run_step(SERVICES, manifest, aws, upstream=platform, recorded={})
    assert refusals == [True, True]
    assert len(aws.client("ecs").list_services(cluster="gamepulse-dev")["serviceArns"]) == 5
