"""An apply where AWS's answers to a share of the creates that take an idempotency token are lost
after AWS acted (a read timeout): botocore retries each such request with the same token, and
the run converges with one of everything.

The emulator honours the tokens where AWS does (orchestrator/emulator.py
`honour_idempotency_tokens`). Calls without a token can still duplicate (or fail with "already
exists") on a lost answer; docs/aws-behaviour.md lists them and how the next run finds them;
their case is the crash tests' (a run killed right after each create, before its record)."""
from __future__ import annotations

import threading

import pytest
from botocore.exceptions import ReadTimeoutError
from moto import mock_aws

from orchestrator.aws import Aws, is_mutating
from orchestrator.state import StateStore
from tests import harness
from tests.test_crash import EXPECTED, inventory

def takes_a_token(model) -> bool:
    """botocore's model marks the idempotency token of an operation's input."""
    shape = model.input_shape
    return shape is not None and any(member.metadata.get("idempotencyToken") or name in TOKEN_NAMES
                                     for name, member in shape.members.items())


#: Token parameters botocore's models do not mark `idempotencyToken` (Cloud Map, EFS, ECS).
TOKEN_NAMES = {"CreatorRequestId", "CreationToken", "clientToken", "ClientToken", "ClientRequestToken"}


#: Name-keyed creates without a token: a retry answers "already exists" (or the same resource),
#: which the steps carry on with when the resource found carries our tags.
NAME_KEYED = {"iam.CreateRole", "s3.CreateBucket", "logs.CreateLogGroup", "ecr.CreateRepository",
              "ecs.CreateCluster", "sns.CreateTopic", "elbv2.CreateLoadBalancer", "elbv2.CreateTargetGroup"}


def lose_answers(aws, every: int, lost: list[str], chosen=None) -> None:
    """Every `every`-th create that takes a token (or that `chosen(name)` picks; state table
    aside): AWS acts, then the answer to the first attempt is lost; botocore sees a read timeout
    and sends the same request again."""
    seen = {"count": 0}
    call = threading.local()  # before-call fires once per API call, before-send once per attempt

    def choose(model, **kwargs):
        call.lose = False
        name = f"{model.service_model.service_name}.{model.name}"
        picked = chosen(name) if chosen else takes_a_token(model)
        if model.service_model.service_name != "dynamodb" and is_mutating(model.name) and picked:
            seen["count"] += 1
            call.lose = seen["count"] % every == 0
            call.name = name

    def after_aws_acted(request, **kwargs):
        if getattr(call, "lose", False):
            call.lose = False  # the retry is answered
            lost.append(call.name)
            raise ReadTimeoutError(endpoint_url=request.url)

    aws.register("before-call", choose)
    aws.register("before-send", after_aws_acted)


@pytest.fixture
def no_backoff(monkeypatch):
    from botocore.retries import standard
    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0)


@pytest.mark.parametrize("every", [1, 2])
def test_an_apply_whose_answers_are_lost_after_aws_acted_makes_no_duplicate(manifest, fake_aws_env, every,
                                                                           monkeypatch, no_backoff):
    monkeypatch.setenv("ORCHESTRATOR_SANDBOX_IMAGE_TAGS", "1.4.1")
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "1")
    with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        aws = Aws("us-east-1")
        lost: list[str] = []
        lose_answers(aws, every, lost)
        results = harness.engine(manifest, aws).apply()
        assert {r.status for r in results.values()} == {"ok"}, {n: r.error for n, r in results.items()}
        assert {"ec2.CreateNatGateway", "ec2.CreateVpcEndpoint", "efs.CreateAccessPoint",
                "servicediscovery.CreateService"} & set(lost)
        assert inventory() == EXPECTED

        again = Aws("us-east-1")
        StateStore(again, manifest).break_lock()
        results = harness.engine(manifest, again).apply()
        assert [c.key for r in results.values() for c in r.changes] == []


def test_lost_answers_to_name_keyed_creates_are_carried_on_with_when_the_resource_is_ours(
        manifest, fake_aws_env, monkeypatch, no_backoff):
    monkeypatch.setenv("ORCHESTRATOR_SANDBOX_IMAGE_TAGS", "1.4.1")
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "1")
    with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        aws = Aws("us-east-1")
        lost: list[str] = []
        lose_answers(aws, 1, lost, chosen=NAME_KEYED.__contains__)
        results = harness.engine(manifest, aws).apply()
        assert {r.status for r in results.values()} == {"ok"}, {n: r.error for n, r in results.items()}
        assert set(lost) == NAME_KEYED
        assert inventory() == EXPECTED
