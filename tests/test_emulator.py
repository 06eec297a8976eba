"""The emulator's fixes for moto's gaps (orchestrator/emulator.py), in-process: moto answers as AWS."""
from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError


@pytest.fixture
def efs(mock):
    return boto3.client("efs", region_name="us-east-1")


@pytest.fixture
def fs_id(efs) -> str:
    return efs.create_file_system(CreationToken="emulator-test")["FileSystemId"]


def error(excinfo) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_backup_policy_put_is_stored_and_described(efs, fs_id):
    for status in ("ENABLED", "DISABLED", "ENABLED"):
        put = efs.put_backup_policy(FileSystemId=fs_id, BackupPolicy={"Status": status})
        assert put["BackupPolicy"] == {"Status": status}
        assert efs.describe_backup_policy(FileSystemId=fs_id)["BackupPolicy"] == {"Status": status}
    assert "BackupPolicy" not in efs.describe_file_systems(FileSystemId=fs_id)["FileSystems"][0]


def test_backup_policy_of_one_file_system_leaves_the_others_alone(efs, fs_id):
    other = efs.create_file_system(CreationToken="emulator-other")["FileSystemId"]
    efs.put_backup_policy(FileSystemId=fs_id, BackupPolicy={"Status": "ENABLED"})
    with pytest.raises(ClientError) as raised:
        efs.describe_backup_policy(FileSystemId=other)
    assert error(raised) == ("PolicyNotFound", 404)


def test_a_file_system_that_never_had_a_backup_policy_has_none(efs, fs_id):
    with pytest.raises(ClientError) as raised:
        efs.describe_backup_policy(FileSystemId=fs_id)
    assert error(raised) == ("PolicyNotFound", 404)
    assert isinstance(raised.value, efs.exceptions.PolicyNotFound)


def test_backups_asked_for_at_create_are_described(efs):
    fs = efs.create_file_system(CreationToken="emulator-backup", Backup=True)["FileSystemId"]
    assert efs.describe_backup_policy(FileSystemId=fs)["BackupPolicy"] == {"Status": "ENABLED"}
    efs.put_backup_policy(FileSystemId=fs, BackupPolicy={"Status": "DISABLED"})
    assert efs.describe_backup_policy(FileSystemId=fs)["BackupPolicy"] == {"Status": "DISABLED"}


@pytest.mark.parametrize("call", ["put", "describe"])
def test_backup_policy_of_an_unknown_file_system_is_not_found(efs, call):
    with pytest.raises(ClientError) as raised:
        if call == "put":
            efs.put_backup_policy(FileSystemId="fs-0123456789abcdef0", BackupPolicy={"Status": "ENABLED"})
        else:
            efs.describe_backup_policy(FileSystemId="fs-0123456789abcdef0")
    assert error(raised) == ("FileSystemNotFound", 404)


def test_backup_policy_after_the_file_system_is_deleted_is_not_found(efs, fs_id):
    efs.put_backup_policy(FileSystemId=fs_id, BackupPolicy={"Status": "ENABLED"})
    efs.delete_file_system(FileSystemId=fs_id)
    with pytest.raises(ClientError) as raised:
        efs.describe_backup_policy(FileSystemId=fs_id)
    assert error(raised) == ("FileSystemNotFound", 404)


def test_backup_policy_status_other_than_enabled_or_disabled_is_refused(efs, fs_id):
    with pytest.raises(ClientError) as raised:
        efs.put_backup_policy(FileSystemId=fs_id, BackupPolicy={"Status": "ENABLING"})
    assert error(raised) == ("BadRequest", 400)
    with pytest.raises(ClientError):
        efs.describe_backup_policy(FileSystemId=fs_id)


def test_a_gateway_endpoint_moved_to_other_route_tables_routes_there_and_deletes_cleanly(mock):
    """After a NAT-mode change the S3 endpoint moves to new route tables; moto recorded the move
    without the prefix-list routes, then failed DeleteVpcEndpoints with InvalidRoute.NotFound."""
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    old, new = (ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"] for _ in range(2))
    endpoint = ec2.create_vpc_endpoint(VpcId=vpc, ServiceName="com.amazonaws.us-east-1.s3",
                                       VpcEndpointType="Gateway", RouteTableIds=[old])["VpcEndpoint"]["VpcEndpointId"]

    def endpoint_routes(table):
        routes = ec2.describe_route_tables(RouteTableIds=[table])["RouteTables"][0]["Routes"]
        return [r["GatewayId"] for r in routes if r.get("DestinationPrefixListId")]

    ec2.modify_vpc_endpoint(VpcEndpointId=endpoint, AddRouteTableIds=[new], RemoveRouteTableIds=[old])
    assert endpoint_routes(new) == [endpoint] and endpoint_routes(old) == []
    ec2.delete_route_table(RouteTableId=old)
    assert ec2.delete_vpc_endpoints(VpcEndpointIds=[endpoint])["Unsuccessful"] == []
    assert endpoint_routes(new) == []


def test_a_new_revision_is_a_new_primary_deployment_and_the_old_one_drains(mock, monkeypatch):
    """As ECS: with tasks that start (MOTO_ECS_SERVICE_RUNNING), every deployment runs its
    desired count and completes; the old deployment shows ACTIVE once, then is gone."""
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "1")
    ecs = boto3.client("ecs", region_name="us-east-1")
    ecs.create_cluster(clusterName="c")
    first, second = (ecs.register_task_definition(family="f", containerDefinitions=[
        {"name": "app", "image": f"app:{version}", "memory": 128}])["taskDefinition"]["taskDefinitionArn"]
        for version in (1, 2))
    created = ecs.create_service(cluster="c", serviceName="s", taskDefinition=first, desiredCount=3)["service"]
    [deployment] = created["deployments"]
    assert (deployment["runningCount"], deployment["rolloutState"]) == (3, "COMPLETED")

    ecs.update_service(cluster="c", service="s", taskDefinition=second)

    def deployments():
        [service] = ecs.describe_services(cluster="c", services=["s"])["services"]
        return [(d["status"], d["taskDefinition"], d["runningCount"], d["rolloutState"])
                for d in service["deployments"]]

    assert deployments() == [("PRIMARY", second, 3, "COMPLETED"), ("ACTIVE", first, 3, "COMPLETED")]
    assert deployments() == [("PRIMARY", second, 3, "COMPLETED")]
    ecs.update_service(cluster="c", service="s", desiredCount=5)
    assert deployments() == [("PRIMARY", second, 5, "COMPLETED")]


def test_the_sandbox_repository_holds_the_demo_tags_each_with_its_own_digest(mock, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_SANDBOX_IMAGE_TAGS", "1.4.1 1.4.2")
    ecr = boto3.client("ecr", region_name="us-east-1")
    ecr.create_repository(repositoryName="app")
    images = ecr.describe_images(repositoryName="app")["imageDetails"]
    assert sorted(tag for image in images for tag in image["imageTags"]) == ["1.4.1", "1.4.2"]
    assert len({image["imageDigest"] for image in images}) == 2


def test_a_create_repeated_with_its_token_answers_the_first_resource_as_aws_does(aws):
    """moto makes a second route table, VPC endpoint, access point and Cloud Map service for a
    repeated token; AWS answers with the first (orchestrator/emulator.py honours the tokens)."""
    ec2, efs, sd = aws.client("ec2"), aws.client("efs"), aws.client("servicediscovery")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    tables = {ec2.create_route_table(VpcId=vpc, ClientToken="t-1")["RouteTable"]["RouteTableId"] for _ in range(2)}
    endpoints = {ec2.create_vpc_endpoint(VpcId=vpc, ServiceName="com.amazonaws.us-east-1.s3", ClientToken="t-2")
                 ["VpcEndpoint"]["VpcEndpointId"] for _ in range(2)}
    fs = efs.create_file_system(CreationToken="fs")["FileSystemId"]
    points = {efs.create_access_point(FileSystemId=fs, ClientToken="t-3")["AccessPointId"] for _ in range(2)}
    sd.create_private_dns_namespace(Name="n.local", Vpc=vpc, CreatorRequestId="t-4")
    sd.create_private_dns_namespace(Name="n.local", Vpc=vpc, CreatorRequestId="t-4")  # no ConflictingDomainExists
    namespace = sd.list_namespaces()["Namespaces"][0]["Id"]
    services = {sd.create_service(Name="x", NamespaceId=namespace, CreatorRequestId="t-5")["Service"]["Id"]
                for _ in range(2)}
    assert [len(tables), len(endpoints), len(points), len(services)] == [1, 1, 1, 1]
    # Another request under a token already used is not answered from it.
    assert ec2.create_route_table(VpcId=vpc, ClientToken="t-6")["RouteTable"]["RouteTableId"] not in tables


def test_cloud_map_services_are_listed_per_namespace_as_aws_does(mock):
    """Two environments in one account: each must find only its own namespace's services, or the
    second takes the first one's Cloud Map names for its own (seen: staging after dev)."""
    ec2 = boto3.client("ec2", region_name="us-east-1")
    discovery = boto3.client("servicediscovery", region_name="us-east-1")
    namespaces = {}
    for env, cidr in (("dev", "10.20.0.0/16"), ("staging", "10.30.0.0/16")):
        vpc = ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
        operation = discovery.create_private_dns_namespace(Name=f"gamepulse-{env}.local", Vpc=vpc)["OperationId"]
        namespaces[env] = discovery.get_operation(OperationId=operation)["Operation"]["Targets"]["NAMESPACE"]
        discovery.create_service(Name="gamepulse", NamespaceId=namespaces[env],
                                 DnsConfig={"DnsRecords": [{"Type": "A", "TTL": 10}]})
    for env, namespace in namespaces.items():
        listed = discovery.list_services(Filters=[{"Name": "NAMESPACE_ID", "Values": [namespace],
                                                   "Condition": "EQ"}])["Services"]
        assert [discovery.get_service(Id=s["Id"])["Service"]["NamespaceId"] for s in listed] == [namespace], env
    assert len(discovery.list_services()["Services"]) == 2
