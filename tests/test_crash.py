"""A whole `apply dev` killed after one of its mutating calls, then run again by a new process,
ends with exactly one of everything and nothing left over. (Each step's own tests kill it after
every single call; here the kill points are spread over the whole run, state table included.)"""
from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from orchestrator.aws import Aws
from orchestrator.state import StateStore
from tests import harness

#: Kill points: spread over the ~168 mutating calls of a cold apply (state table included).
KILL_AFTER = [1, 2, 9, 23, 41, 60, 77, 95, 110, 120, 140, 150, 158, 164]

MINE = [{"Name": "tag:orchestrator:env", "Values": ["dev"]}]


def inventory() -> dict[str, int]:
    """How many of each resource kind exist, counted with plain clients."""
    kw = {"region_name": "us-east-1"}
    ec2, elb, efs = boto3.client("ec2", **kw), boto3.client("elbv2", **kw), boto3.client("efs", **kw)
    file_systems = efs.describe_file_systems()["FileSystems"]
    balancers = elb.describe_load_balancers()["LoadBalancers"]
    return {
        "vpcs": len(ec2.describe_vpcs(Filters=MINE)["Vpcs"]),
        "subnets": len(ec2.describe_subnets(Filters=MINE)["Subnets"]),
        "nat gateways": len([n for n in ec2.describe_nat_gateways()["NatGateways"] if n["State"] != "deleted"]),
        "elastic ips": len(ec2.describe_addresses()["Addresses"]),
        "security groups": len(ec2.describe_security_groups(Filters=MINE)["SecurityGroups"]),
        "endpoints": len(ec2.describe_vpc_endpoints(Filters=MINE)["VpcEndpoints"]),
        "route tables": len(ec2.describe_route_tables(Filters=MINE)["RouteTables"]),
        "buckets": len(boto3.client("s3", **kw).list_buckets()["Buckets"]),
        "secrets": len(boto3.client("secretsmanager", **kw).list_secrets()["SecretList"]),
        "roles": len([r for r in boto3.client("iam", **kw).list_roles()["Roles"]
                      if r["RoleName"].startswith("gamepulse-dev-")]),
        "repositories": len(boto3.client("ecr", **kw).describe_repositories()["repositories"]),
        "file systems": len(file_systems),
        "mount targets": sum(len(efs.describe_mount_targets(FileSystemId=f["FileSystemId"])["MountTargets"])
                             for f in file_systems),
        "access points": len(efs.describe_access_points()["AccessPoints"]),
        "load balancers": len(balancers),
        "target groups": len(elb.describe_target_groups()["TargetGroups"]),
        "listeners": sum(len(elb.describe_listeners(LoadBalancerArn=b["LoadBalancerArn"])["Listeners"])
                         for b in balancers),
        "log groups": len(boto3.client("logs", **kw).describe_log_groups(logGroupNamePrefix="/ecs/")["logGroups"]),
        "namespaces": len(boto3.client("servicediscovery", **kw).list_namespaces()["Namespaces"]),
        "clusters": len([c for c in boto3.client("ecs", **kw).describe_clusters(clusters=["gamepulse-dev"])
                         ["clusters"] if c["status"] == "ACTIVE"]),
        "services": len(boto3.client("ecs", **kw).list_services(cluster="gamepulse-dev")["serviceArns"]),
        "cloud map services": len(boto3.client("servicediscovery", **kw).list_services()["Services"]),
        "scalable targets": len(boto3.client("application-autoscaling", **kw).describe_scalable_targets(
            ServiceNamespace="ecs")["ScalableTargets"]),
        "scaling policies": len(boto3.client("application-autoscaling", **kw).describe_scaling_policies(
            ServiceNamespace="ecs")["ScalingPolicies"]),
        "alert keys": len([key for key in (boto3.client("kms", **kw).describe_key(KeyId=k["KeyId"])["KeyMetadata"]
                                           for k in boto3.client("kms", **kw).list_keys()["Keys"])
                           if key["KeyState"] == "Enabled" and key["Description"].startswith("gamepulse-dev:")]),
        "topics": len(boto3.client("sns", **kw).list_topics()["Topics"]),
        "subscriptions": len(boto3.client("sns", **kw).list_subscriptions()["Subscriptions"]),
        "alarms": len(boto3.client("cloudwatch", **kw).describe_alarms(AlarmNamePrefix="gamepulse-dev-")
                      ["MetricAlarms"]),
        "dashboards": len(boto3.client("cloudwatch", **kw).list_dashboards()["DashboardEntries"]),
        "task definitions": len([arn for arn in boto3.client("ecs", **kw).list_task_definitions(
            status="ACTIVE")["taskDefinitionArns"] if ":task-definition/gamepulse-dev-" in arn]),
    }


EXPECTED = {"vpcs": 1, "subnets": 4, "nat gateways": 1, "elastic ips": 1, "security groups": 5, "endpoints": 5,
            "route tables": 2, "buckets": 2, "secrets": 3, "roles": 7, "repositories": 1, "file systems": 1,
            "mount targets": 2, "access points": 2, "load balancers": 1, "target groups": 2, "listeners": 1,
            "log groups": 6, "namespaces": 1, "clusters": 1, "services": 5, "cloud map services": 5,
            "scalable targets": 1, "scaling policies": 1, "alert keys": 1, "topics": 1, "subscriptions": 1,
            "alarms": 15, "dashboards": 1, "task definitions": 5}

#: Each create (or create-like put) of a cold apply, by botocore service name and operation.
CREATES = [("ec2", op) for op in ("CreateVpc", "CreateSubnet", "AllocateAddress", "CreateInternetGateway",
                                  "CreateNatGateway", "CreateRouteTable", "CreateSecurityGroup", "CreateVpcEndpoint")] + [
    ("s3", "CreateBucket"), ("secretsmanager", "CreateSecret"), ("iam", "CreateRole"),
    ("ecr", "CreateRepository"), ("efs", "CreateFileSystem"), ("efs", "CreateMountTarget"),
    ("efs", "CreateAccessPoint"), ("ecs", "CreateCluster"), ("logs", "CreateLogGroup"),
    ("servicediscovery", "CreatePrivateDnsNamespace"), ("elbv2", "CreateLoadBalancer"),
    ("elbv2", "CreateTargetGroup"), ("elbv2", "CreateListener"), ("ecs", "RegisterTaskDefinition"),
    ("servicediscovery", "CreateService"), ("ecs", "CreateService"),
    ("application-autoscaling", "RegisterScalableTarget"), ("application-autoscaling", "PutScalingPolicy"),
    ("kms", "CreateKey"), ("kms", "CreateAlias"), ("sns", "CreateTopic"), ("sns", "Subscribe"),
    ("cloudwatch", "PutMetricAlarm"), ("cloudwatch", "PutDashboard")]


def applied_again_converges(manifest) -> None:
    """What a killed run left is in moto: a new process's apply ends with every step ok and
    exactly the clean inventory."""
    # The next process: the killed run's lock is still held until its lease ends.
    rerun = Aws("us-east-1")
    StateStore(rerun, manifest).break_lock()
    results = harness.engine(manifest, rerun).apply()
    assert {r.status for r in results.values()} == {"ok"}, {n: r.error for n, r in results.items()}
    assert inventory() == EXPECTED


@pytest.fixture
def as_in_the_sandbox(monkeypatch):
    """The app's image is in its repository, and tasks start."""
    monkeypatch.setenv("ORCHESTRATOR_SANDBOX_IMAGE_TAGS", "1.4.1")
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "1")


#: moto with AWS-managed policies (the execution role attaches one).
AWS = {"iam": {"load_aws_managed_policies": True}}

_killed_runs: list = []  # made once per worker, by the first test that needs it


@pytest.fixture
def killed_runs(manifest, fake_aws_env, as_in_the_sandbox):
    """The states a cold `apply dev` leaves when killed right after each kill point (KILL_AFTER,
    state table included, and each create in CREATES), saved from one cold apply: a run killed
    there would have made exactly the calls this one had made by then."""
    if not _killed_runs:
        def cold_apply():
            results = harness.engine(manifest, Aws("us-east-1")).apply()
            assert {r.status for r in results.values()} == {"ok"}, {n: r.error for n, r in results.items()}

        with mock_aws(config=AWS):
            _killed_runs.append(harness.killed_states(cold_apply, operations=CREATES, counts=KILL_AFTER,
                                                      state_table=True))
    return _killed_runs[0]


@pytest.mark.parametrize("kill_after", KILL_AFTER)
def test_apply_killed_after_a_mutating_call_converges_on_the_next_run(manifest, killed_runs, kill_after):
    with mock_aws(config=AWS):
        killed_runs.restore(str(kill_after))
        applied_again_converges(manifest)
        again = Aws("us-east-1")
        StateStore(again, manifest).break_lock()
        results = harness.engine(manifest, again).apply()
        assert [c.key for r in results.values() for c in r.changes] == []
        assert harness.mutations(again) == []


@pytest.mark.parametrize("service, operation", CREATES, ids=[f"{s}.{o}" for s, o in CREATES])
def test_apply_killed_right_after_each_create_leaves_no_extra_resource(manifest, killed_runs, service, operation):
    """What AWS made before the kill carries our tags (or, for a task definition, is the same
    definition): the next run finds and uses it instead of making a second one."""
    with mock_aws(config=AWS):
        killed_runs.restore(f"{service}.{operation}")
        applied_again_converges(manifest)
