"""A first deploy into a fresh account: service-linked roles made first, ECS's refusal while one
is being made tried again (the emulator refuses CreateCluster with capacity providers before
ECS's role exists, as ECS does)."""
from __future__ import annotations

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
