"""The deploy role's policy (`orchestrator policy ENV`) allows every call the tool sends.

How the calls are checked. moto can enforce IAM policies (INITIAL_NO_AUTH_ACTION_COUNT), but
not far enough to keep this policy true: it evaluates requests against Resource "*" except for
S3 buckets and existing IAM roles (moto/core/responses.py `call_action`; only IAM, STS and SQS
compute a resource), so a statement held to our ARNs denies in moto what AWS allows (tried: a
user holding the policy's IAM statements is refused GetRole on a role not created yet); it
evaluates no condition outside trust policies; and it names actions by the signing name
(`tagging:GetResources`, where IAM says `tag:GetResources`).

So this test checks the calls itself: every request the command line's work sends (a cold
apply, an unchanged re-apply, a destroy) is recorded with its parameters through the client
factory's `before-parameter-build` hook, turned into the IAM action(s) it needs and, where the
parameters name it, the resource's ARN, and looked up in the printed policy:
- action: for every call, against the Action lists (wildcards as IAM matches them);
- resource: for the calls whose parameters name the resource (IAM roles, ECR repositories, S3
  buckets, the state table, log groups, secrets, ECS cluster, EFS file systems, ELB resources, SNS
  topics, CloudWatch alarms and dashboards),
  the allowing statement must also cover that ARN; other calls (EC2, Cloud Map, describes by
  filter) are checked by action only;
- conditions (the managed-policy and service-linked-role conditions) are not evaluated.
"""
from __future__ import annotations

import fnmatch
import json

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from tests import harness

ACCOUNT = "123456789012"
REGION = "us-east-1"

#: IAM's service prefix where it is not botocore's signing name.
IAM_PREFIX = {"tagging": "tag", "monitoring": "cloudwatch"}

#: S3 operations whose IAM action has another name.
S3_ACTIONS = {
    "ListBuckets": ["ListAllMyBuckets"], "HeadBucket": ["ListBucket"], "ListObjectVersions": ["ListBucketVersions"],
    "GetBucketEncryption": ["GetEncryptionConfiguration"], "PutBucketEncryption": ["PutEncryptionConfiguration"],
    "GetBucketLifecycleConfiguration": ["GetLifecycleConfiguration"],
    "PutBucketLifecycleConfiguration": ["PutLifecycleConfiguration"],
    "GetPublicAccessBlock": ["GetBucketPublicAccessBlock"], "PutPublicAccessBlock": ["PutBucketPublicAccessBlock"],
    "DeleteObjects": ["DeleteObject", "DeleteObjectVersion"],
}

#: DynamoDB's transactions are authorised by the item actions they hold.
TRANSACT_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                    "ConditionCheck": "ConditionCheckItem"}

#: Actions that support no resource-level permissions (AWS's service authorization reference)
#: or that the policy deliberately grants on "*" with the reason beside it in the step.
STAR_ALLOWED = {
    "ec2:DescribeVpcs", "ec2:DescribeVpcAttribute", "ec2:DescribeSubnets", "ec2:DescribeAddresses",
    "ec2:DescribeInternetGateways", "ec2:DescribeNatGateways", "ec2:DescribeRouteTables",
    "ec2:DescribeSecurityGroups", "ec2:DescribeSecurityGroupRules", "ec2:DescribeVpcEndpoints",
    "ec2:DescribeNetworkInterfaces", "ec2:DescribeAvailabilityZones",
    "ec2:DescribeNetworkInterfaceAttribute", "ec2:DescribeAccountAttributes",
    "route53:AssociateVPCWithHostedZone", "route53:CreateHostedZone",
    "route53:GetHostedZone", "route53:ListHostedZonesByName", "route53:ChangeResourceRecordSets",
    "route53:DeleteHostedZone", "s3:ListAllMyBuckets", "secretsmanager:ListSecrets",
    "secretsmanager:BatchGetSecretValue", "iam:ListRoles", "ecs:CreateCluster", "kms:CreateKey",
    "servicediscovery:CreatePrivateDnsNamespace", "servicediscovery:ListNamespaces", "servicediscovery:GetOperation",
    "tag:GetResources", "elasticloadbalancing:DescribeLoadBalancers",
    "elasticloadbalancing:DescribeLoadBalancerAttributes", "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetGroupAttributes", "elasticloadbalancing:DescribeListeners",
    "elasticloadbalancing:DescribeRules", "elasticloadbalancing:DescribeTags",
    "ecs:RegisterTaskDefinition", "ecs:DeregisterTaskDefinition", "ecs:DescribeTaskDefinition",
    "ecs:ListTaskDefinitions", "ecs:DeleteTaskDefinitions", "application-autoscaling:DescribeScalableTargets",
    "application-autoscaling:DescribeScalingPolicies", "servicediscovery:ListServices",
    "elasticloadbalancing:DescribeTargetHealth",
}


def printed_policies(env: str = "dev") -> dict[str, dict]:
    result = CliRunner().invoke(cli, ["--manifests", "manifests", "policy", env, "--account-id", ACCOUNT])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def printed_policy(env: str = "dev") -> dict:
    """Every statement of the printed policies, as one document (what the role is allowed)."""
    return {"Version": "2012-10-17",
            "Statement": [s for document in printed_policies(env).values() for s in document["Statement"]]}


# -- what a call needs -------------------------------------------------------------------------


def needed_actions(prefix: str, operation: str, params: dict) -> list[str]:
    if prefix == "s3":
        return [f"s3:{action}" for action in S3_ACTIONS.get(operation, [operation])]
    if (prefix, operation) == ("dynamodb", "TransactWriteItems"):
        return sorted({f"dynamodb:{TRANSACT_ACTIONS[kind]}" for item in params["TransactItems"] for kind in item})
    return [f"{prefix}:{operation}"]


def named_resources(prefix: str, operation: str, params: dict) -> list[str]:
    """The ARNs the call's parameters name; [] when they name none (checked by action only)."""
    region_account = f"{REGION}:{ACCOUNT}"
    if prefix == "iam" and "RoleName" in params:
        return [f"arn:aws:iam::{ACCOUNT}:role/{params['RoleName']}"]
    if prefix == "ecr":
        names = params.get("repositoryNames") or ([params["repositoryName"]] if "repositoryName" in params else [])
        return [f"arn:aws:ecr:{region_account}:repository/{name}" for name in names] + (
            [params["resourceArn"]] if "resourceArn" in params else [])
    if prefix == "s3" and "Bucket" in params:
        return [f"arn:aws:s3:::{params['Bucket']}" + ("/an-object" if operation == "DeleteObjects" else "")]
    if prefix == "dynamodb":
        tables = [params["TableName"]] if "TableName" in params else [
            part["TableName"] for item in params.get("TransactItems", []) for part in item.values()]
        return [f"arn:aws:dynamodb:{region_account}:table/{table}" for table in tables]
    if prefix == "logs":
        if "logGroupName" in params:
            return [f"arn:aws:logs:{region_account}:log-group:{params['logGroupName']}"]
        return [params["resourceArn"]] if "resourceArn" in params else []
    if prefix == "secretsmanager":
        secret = params.get("SecretId") or params.get("Name")
        if not secret:
            return []
        # AWS adds six random characters to a secret's name in its ARN.
        arn = secret if secret.startswith("arn:") else f"arn:aws:secretsmanager:{region_account}:secret:{secret}-AbCdEf"
        return [arn]
    if prefix == "ecs":
        clusters = params.get("clusters") or ([params["clusterName"]] if operation != "CreateCluster" and
                                              "clusterName" in params else []) + (
            [params["cluster"]] if "cluster" in params else [])
        return [c if c.startswith("arn:") else f"arn:aws:ecs:{region_account}:cluster/{c}" for c in clusters]
    if prefix == "sns":
        arn = params.get("TopicArn") or params.get("ResourceArn") or params.get("SubscriptionArn")
        return [arn] if arn else [f"arn:aws:sns:{region_account}:{params['Name']}"] if "Name" in params else []
    if prefix == "cloudwatch":
        alarms = params.get("AlarmNames") or ([params["AlarmName"]] if "AlarmName" in params else [])
        dashboards = params.get("DashboardNames") or ([params["DashboardName"]] if "DashboardName" in params else [])
        return [f"arn:aws:cloudwatch:{region_account}:alarm:{name}" for name in alarms] + \
            [f"arn:aws:cloudwatch::{ACCOUNT}:dashboard/{name}" for name in dashboards] + \
            ([params["ResourceARN"]] if "ResourceARN" in params else [])
    if prefix == "elasticfilesystem" and "FileSystemId" in params:
        return [f"arn:aws:elasticfilesystem:{region_account}:file-system/{params['FileSystemId']}"]
    if prefix == "elasticloadbalancing" and operation in ("CreateLoadBalancer", "CreateTargetGroup"):
        kind = "loadbalancer/app" if operation == "CreateLoadBalancer" else "targetgroup"
        return [f"arn:aws:elasticloadbalancing:{region_account}:{kind}/{params['Name']}/0123456789abcdef"]
    if prefix == "elasticloadbalancing" and not operation.startswith("Describe"):
        keys = ("LoadBalancerArn", "TargetGroupArn", "ListenerArn", "RuleArn")
        return [params[key] for key in keys if key in params] + list(params.get("ResourceArns", []))
    return []


def refusals(policy: dict, calls: list[tuple[str, str, dict]]) -> list[str]:
    """Each (action, resource) a recorded call needs that no Allow statement of `policy` covers."""
    statements = policy["Statement"]

    def allowed(action: str, resource: str | None) -> bool:
        for statement in statements:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            if statement["Effect"] == "Allow" and any(fnmatch.fnmatch(action.lower(), a.lower()) for a in actions) \
                    and (resource is None or any(fnmatch.fnmatchcase(resource, r) for r in resources)):
                return True
        return False

    missing = []
    for prefix, operation, params in calls:
        if (prefix, operation) == ("sts", "GetCallerIdentity"):
            continue  # needs no permission
        resources = named_resources(prefix, operation, params) or [None]
        missing += [f"{action} on {resource or '(any)'}" for action in needed_actions(prefix, operation, params)
                    for resource in resources if not allowed(action, resource)]
    return sorted(set(missing))


def record_calls(aws) -> list[tuple[str, str, dict]]:
    calls: list[tuple[str, str, dict]] = []

    def seen(model, params, **kwargs):
        signing = model.service_model.signing_name
        calls.append((IAM_PREFIX.get(signing, signing), model.name, params))

    aws.register("before-parameter-build", seen)
    return calls


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.managed_policies
def test_every_call_of_an_apply_a_re_apply_and_a_destroy_is_allowed_by_the_printed_policy(manifest, aws,
                                                                                          monkeypatch):
    # As in the sandbox: the app's image is in its repository, and tasks start.
    monkeypatch.setenv("ORCHESTRATOR_SANDBOX_IMAGE_TAGS", "1.4.1")
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "1")
    calls = record_calls(aws)
    run = harness.engine(manifest, aws)
    assert all(result.status == "ok" for result in run.apply().values())
    assert all(result.status == "ok" for result in run.apply().values())
    run.lease.release()
    destroyed = harness.engine(manifest, aws, allow={"delete-data", "delete-secrets"})
    assert all(result.status == "ok" for result in destroyed.destroy().values())

    operations = {(prefix, operation) for prefix, operation, _ in calls}
    assert len(operations) > 100  # the whole platform was built and torn down
    assert refusals(printed_policy(), calls) == []


def test_the_check_names_a_call_the_policy_does_not_allow():
    policy = printed_policy()
    calls = [("iam", "GetRole", {"RoleName": "gamepulse-dev-execution"}),
             ("iam", "GetRole", {"RoleName": "gamepulse-prod-execution"}),  # another environment's
             ("iam", "GetAccountAuthorizationDetails", {}),
             ("s3", "GetBucketEncryption", {"Bucket": f"gamepulse-dev-config-{ACCOUNT}"}),
             ("s3", "GetBucketEncryption", {"Bucket": f"gamepulse-staging-config-{ACCOUNT}"})]
    assert refusals(policy, calls) == [
        "iam:GetAccountAuthorizationDetails on (any)",
        f"iam:GetRole on arn:aws:iam::{ACCOUNT}:role/gamepulse-prod-execution",
        f"s3:GetEncryptionConfiguration on arn:aws:s3:::gamepulse-staging-config-{ACCOUNT}"]


def test_resource_star_only_for_actions_without_resource_level_permissions():
    for statement in printed_policy()["Statement"]:
        if statement["Resource"] == "*":
            assert set(statement["Action"]) <= STAR_ALLOWED, statement["Sid"]


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
