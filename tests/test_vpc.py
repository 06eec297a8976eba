"""The vpc step against moto: apply, idempotence, drift, destroy, crashes, per-zone NAT."""
from __future__ import annotations

import copy

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

from orchestrator import tags as tagging
from orchestrator import waiters
from orchestrator.errors import OrchestratorError, StepFailed
from orchestrator.manifest import load_manifest
from orchestrator.waiters import WaitFailed, WaitTimeout
from steps.vpc import VpcStep
from tests.conftest import MANIFESTS
from tests.harness import (Crash, crash_after, forget_crash, held_until_sent_together, mutations, plan_step,
                           run_step)

STEP = VpcStep()
OWNER = tagging.owner_filters("gamepulse", "dev", "vpc")


@pytest.fixture
def ec2(mock):
    """A plain client for looking at (and tampering with) AWS, outside the step's call ledger."""
    return boto3.client("ec2", region_name="us-east-1")


def with_network(manifest, **changes):
    return manifest.model_copy(update={"network": manifest.network.model_copy(update=changes)})


def tags_of(resource: dict) -> dict:
    return tagging.tag_dict(resource.get("Tags"))


def ours(ec2) -> dict[str, list[dict]]:
    """Every live resource carrying the dev environment's vpc ownership tags, by kind."""
    nats = ec2.describe_nat_gateways(Filter=OWNER)["NatGateways"]
    endpoints = ec2.describe_vpc_endpoints(Filters=OWNER)["VpcEndpoints"]
    return {"vpcs": ec2.describe_vpcs(Filters=OWNER)["Vpcs"],
            "subnets": ec2.describe_subnets(Filters=OWNER)["Subnets"],
            "gateways": ec2.describe_internet_gateways(Filters=OWNER)["InternetGateways"],
            "addresses": ec2.describe_addresses(Filters=OWNER)["Addresses"],
            "nats": [n for n in nats if n["State"] not in ("deleting", "deleted")],
            "tables": ec2.describe_route_tables(Filters=OWNER)["RouteTables"],
            "groups": ec2.describe_security_groups(Filters=OWNER)["SecurityGroups"],
            "endpoints": [e for e in endpoints if e["State"].lower() not in ("deleting", "deleted")]}


def counts(ec2) -> dict[str, int]:
    return {kind: len(found) for kind, found in ours(ec2).items()}


DEV_COUNTS = {"vpcs": 1, "subnets": 4, "gateways": 1, "addresses": 1, "nats": 1, "tables": 2, "groups": 5,
              "endpoints": 5}


def everything_in(ec2, vpc_id: str) -> dict[str, list[dict]]:
    """Every resource in the VPC, tagged or not (the main route table and default group aside)."""
    in_vpc = [{"Name": "vpc-id", "Values": [vpc_id]}]
    tables = ec2.describe_route_tables(Filters=in_vpc)["RouteTables"]
    groups = ec2.describe_security_groups(Filters=in_vpc)["SecurityGroups"]
    return {"subnets": ec2.describe_subnets(Filters=in_vpc)["Subnets"],
            "tables": [t for t in tables if not any(a.get("Main") for a in t["Associations"])],
            "groups": [g for g in groups if g["GroupName"] != "default"],
            "endpoints": ec2.describe_vpc_endpoints(Filters=in_vpc)["VpcEndpoints"]}


def default_route(table: dict) -> dict:
    return next(r for r in table["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0")


def ingress(ec2, group_id: str) -> set[tuple]:
    """(port, source) of a group's ingress rules; a source group shows as its id."""
    rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group_id]}])
    return {(r["FromPort"], r.get("CidrIpv4") or r["ReferencedGroupInfo"]["GroupId"])
            for r in rules["SecurityGroupRules"] if not r["IsEgress"]}


def refuse_deleting_referenced_groups(aws) -> None:
    """moto gap: deleting a security group that another group's rule references succeeds; AWS
    answers DependencyViolation. Make the step's EC2 client answer as AWS does."""
    look = boto3.client("ec2", region_name="us-east-1")

    def check(params, **kwargs):
        group_id = params["GroupId"]
        rules = look.describe_security_group_rules()["SecurityGroupRules"]
        if any(r.get("ReferencedGroupInfo", {}).get("GroupId") == group_id and r["GroupId"] != group_id
               for r in rules):
            raise ClientError({"Error": {"Code": "DependencyViolation",
                                         "Message": f"resource {group_id} has a dependent object"}},
                              "DeleteSecurityGroup")

    aws.client("ec2").meta.events.register("before-parameter-build.ec2.DeleteSecurityGroup", check)


class ClientTokens:
    """moto gap: EC2 ignores `ClientToken`. AWS remembers each token with its request: the same
    token with the same parameters answers with what the first call made; with other parameters
    it fails with IdempotentParameterMismatch. One memory for every `Aws` it is installed on."""

    def __init__(self):
        self.seen: dict[str, tuple[dict, dict]] = {}  # token → (request, response)

    def install(self, aws):
        aws.register("before-call.ec2", self._before)
        aws.register("after-call.ec2", self._after)
        return aws

    def _before(self, params, model, context, **kwargs):
        request = params["body"]
        token = request.get("ClientToken")
        if token is None:
            return None
        if token not in self.seen:
            context["client_token"] = (token, copy.deepcopy(request))
            return None
        earlier, response = self.seen[token]
        if earlier != request:
            raise ClientError({"Error": {"Code": "IdempotentParameterMismatch",
                                         "Message": f"token {token} was used with other parameters"}}, model.name)
        return _Ok(), copy.deepcopy(response)

    def _after(self, http_response, parsed, context, **kwargs):
        if "client_token" in context and http_response.status_code < 300:
            token, request = context.pop("client_token")
            self.seen[token] = (request, copy.deepcopy(parsed))


def still_in_use(aws, operation: str, times: int) -> list[str]:
    """On AWS the network interfaces of a load balancer, endpoint or NAT gateway just deleted
    linger for minutes, and deletes that need them gone answer DependencyViolation until then:
    refuse the first `times` calls of `operation`. Returns the attempts, as they happen."""
    attempts: list[str] = []

    def refuse(**kwargs):
        attempts.append(operation)
        if len(attempts) <= times:
            raise ClientError({"Error": {"Code": "DependencyViolation",
                                         "Message": "The resource has a dependent object"}}, operation)

    aws.register(f"before-call.ec2.{operation}", refuse)
    return attempts


@pytest.fixture
def applied(manifest, aws):
    """dev applied from nothing: (outputs, recorded)."""
    recorded: dict = {}
    _, outputs, _ = run_step(STEP, manifest, aws, recorded=recorded)
    return outputs, recorded


# --- apply ----------------------------------------------------------------------------------


def test_apply_builds_the_network_with_tags_in_the_create_calls(manifest, aws, ec2, applied):
    outputs, _ = applied
    made = mutations(aws)
    assert "ec2:CreateTags" not in made  # every tag went on in the create call itself
    assert made.count("ec2:CreateSubnet") == 4 and made.count("ec2:CreateNatGateway") == 1
    assert counts(ec2) == DEV_COUNTS
    found = ours(ec2)
    for kind, resources in found.items():
        for resource in resources:
            assert tags_of(resource)["project"] == "gamepulse", (kind, resource)
            assert tags_of(resource)["Name"].startswith("gamepulse-dev-"), (kind, resource)

    vpc_id = outputs["vpc_id"]
    for attribute, key in (("enableDnsSupport", "EnableDnsSupport"), ("enableDnsHostnames", "EnableDnsHostnames")):
        assert ec2.describe_vpc_attribute(VpcId=vpc_id, Attribute=attribute)[key]["Value"] is True
    subnets = {tags_of(s)["Name"]: s for s in found["subnets"]}
    public_a = subnets["gamepulse-dev-public-us-east-1a"]
    assert (public_a["CidrBlock"], public_a["AvailabilityZone"], public_a["MapPublicIpOnLaunch"]) == \
        ("10.20.32.0/24", "us-east-1a", True)
    assert subnets["gamepulse-dev-private-us-east-1b"]["MapPublicIpOnLaunch"] is False

    gateway = found["gateways"][0]
    assert gateway["Attachments"][0]["VpcId"] == vpc_id
    nat = found["nats"][0]
    assert nat["State"] == "available" and nat["SubnetId"] == outputs["public_subnet_ids"][0]
    assert nat["NatGatewayAddresses"][0]["AllocationId"] == found["addresses"][0]["AllocationId"]

    tables = {tags_of(t)["Name"]: t for t in found["tables"]}
    public, private = tables["gamepulse-dev-public"], tables["gamepulse-dev-private"]
    assert default_route(public)["GatewayId"] == gateway["InternetGatewayId"]
    assert default_route(private)["NatGatewayId"] == nat["NatGatewayId"]
    assert {a["SubnetId"] for a in public["Associations"]} == set(outputs["public_subnet_ids"])
    assert {a["SubnetId"] for a in private["Associations"]} == set(outputs["private_subnet_ids"])

    groups = outputs["security_groups"]
    assert ingress(ec2, groups["alb"]) == {(80, "0.0.0.0/0"), (443, "0.0.0.0/0")}
    assert ingress(ec2, groups["app"]) == {(8080, groups["alb"]), (8888, groups["monitoring"]),
                                           (8889, groups["monitoring"])}
    assert ingress(ec2, groups["efs"]) == {(2049, groups["monitoring"])}  # only the monitoring tasks mount EFS
    assert ingress(ec2, groups["monitoring"]) == {
        (3000, groups["alb"]), (3100, groups["app"]), (4317, groups["app"]),
        *((port, groups["monitoring"]) for port in (9090, 3100, 16686, 8888))}
    assert ingress(ec2, groups["endpoints"]) == {(443, "10.20.0.0/16")}

    endpoints = {e["ServiceName"].removeprefix("com.amazonaws.us-east-1."): e for e in found["endpoints"]}
    assert set(endpoints) == {"s3", "ecr.api", "ecr.dkr", "secretsmanager", "logs"}
    assert endpoints["s3"]["VpcEndpointType"] == "Gateway"
    assert endpoints["s3"]["RouteTableIds"] == [private["RouteTableId"]]
    logs = endpoints["logs"]
    assert (logs["VpcEndpointType"], logs["PrivateDnsEnabled"]) == ("Interface", True)
    assert set(logs["SubnetIds"]) == set(outputs["private_subnet_ids"])
    assert [g["GroupId"] for g in logs["Groups"]] == [groups["endpoints"]]

    assert outputs["zones"] == ["us-east-1a", "us-east-1b"] and outputs["vpc_cidr"] == "10.20.0.0/16"
    assert outputs["public_route_table_id"] == public["RouteTableId"]
    assert outputs["private_route_table_ids"] == [private["RouteTableId"]]
    assert outputs["nat_gateway_ids"] == [nat["NatGatewayId"]]


def test_second_apply_changes_nothing_and_reads_little(manifest, aws, applied):
    outputs, recorded = applied
    again = forget_crash(aws)
    changes, outputs_again, _ = run_step(STEP, manifest, again, recorded=recorded)
    assert changes == [] and mutations(again) == []
    assert outputs_again == outputs
    assert again.ledger.count(step=STEP.name, mutating=False) <= 12  # one describe per kind (+ 2 DNS attributes)


def test_the_vpcs_dns_attributes_are_read_beside_the_describes_of_what_is_in_it(manifest, aws, applied):
    """Both attributes need only the VPC's id, as the subnets' describe does: they go out with
    it, not one after another before it. The reads are those of an unchanged step."""
    outputs, recorded = applied
    again = forget_crash(aws)  # a fresh run: hooks of its own
    count = len(again.ledger.calls)

    def read(model, params) -> str:  # the query protocol's serialised parameters name the attribute
        return f"{model.name} {params['body']['Attribute']}" if model.name == "DescribeVpcAttribute" else model.name

    waited = held_until_sent_together(again, {"DescribeVpcAttribute enableDnsSupport",
                                              "DescribeVpcAttribute enableDnsHostnames", "DescribeSubnets"}, read)
    assert plan_step(STEP, manifest, again, recorded=recorded) == []
    assert waited == [True, True, True]
    assert again.ledger.count(step=STEP.name, mutating=False) == 11


# --- drift ----------------------------------------------------------------------------------


def test_drift_is_shown_by_plan_then_repaired(manifest, aws, ec2, applied):
    outputs, recorded = applied
    vpc_id, groups = outputs["vpc_id"], outputs["security_groups"]
    public_a, private_b = outputs["public_subnet_ids"][0], outputs["private_subnet_ids"][1]
    ec2.delete_route(RouteTableId=outputs["public_route_table_id"], DestinationCidrBlock="0.0.0.0/0")
    ec2.delete_tags(Resources=[public_a], Tags=[{"Key": "Name"}, {"Key": "cost-center"}])
    ec2.delete_tags(Resources=[private_b], Tags=[{"Key": "orchestrator:step"}])
    ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsHostnames={"Value": False})
    ec2.authorize_security_group_ingress(GroupId=groups["app"], IpProtocol="tcp", FromPort=22, ToPort=22,
                                         CidrIp="0.0.0.0/0")
    ec2.revoke_security_group_ingress(GroupId=groups["alb"], IpProtocol="tcp", FromPort=443, ToPort=443,
                                      CidrIp="0.0.0.0/0")

    later = forget_crash(aws)
    planned = plan_step(STEP, manifest, later, recorded=recorded)
    assert mutations(later) == []
    shown = {c.key: [(d.field, d.old, d.new) for d in c.diffs] for c in planned}
    assert shown == {
        "vpc/vpc": [("enable_dns_hostnames", False, True)],
        "subnet/public-us-east-1a": [("tags", {"Name": None, "cost-center": None},
                                      {"Name": "gamepulse-dev-public-us-east-1a", "cost-center": "games"})],
        "subnet/private-us-east-1b": [("tags", {"orchestrator:step": None}, {"orchestrator:step": "vpc"})],
        "route_table/public": [("route 0.0.0.0/0", None, ours(ec2)["gateways"][0]["InternetGatewayId"])],
        "ingress/alb": [("ingress", None, "tcp 443 from 0.0.0.0/0 (HTTP and HTTPS from anywhere)")],
        "ingress/app": [("ingress", "tcp 22 from 0.0.0.0/0", None)]}

    run_step(STEP, manifest, later, recorded=recorded)
    assert sorted(mutations(later)) == sorted([
        "ec2:ModifyVpcAttribute", "ec2:CreateTags", "ec2:CreateTags", "ec2:CreateRoute",
        "ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress"])
    assert ec2.describe_vpc_attribute(VpcId=vpc_id, Attribute="enableDnsHostnames")["EnableDnsHostnames"]["Value"]
    assert ingress(ec2, groups["alb"]) == {(80, "0.0.0.0/0"), (443, "0.0.0.0/0")}
    assert ingress(ec2, groups["app"]) == {(8080, groups["alb"]), (8888, groups["monitoring"]),
                                           (8889, groups["monitoring"])}
    assert counts(ec2) == DEV_COUNTS
    assert plan_step(STEP, manifest, forget_crash(aws), recorded=recorded) == []


def test_a_tag_added_to_the_manifest_reaches_the_security_group_rules(manifest, aws, ec2, applied):
    outputs, recorded = applied
    tagged = manifest.model_copy(update={"tags": {**manifest.tags, "team": "games"}})
    later = forget_crash(aws)
    planned = {c.key: c for c in plan_step(STEP, tagged, later, recorded=recorded)}
    for group in outputs["security_groups"]:
        change = planned[f"ingress/{group}"]
        assert change.calls == ("ec2:CreateTags",)
        assert all((d.old, d.new) == ({"team": None}, {"team": "games"}) for d in change.diffs)

    run_step(STEP, tagged, later, recorded=recorded)
    group_ids = list(outputs["security_groups"].values())
    rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": group_ids}])
    ingress_rules = [rule for rule in rules["SecurityGroupRules"] if not rule["IsEgress"]]
    assert len(ingress_rules) == 14
    assert all(tags_of(rule)["team"] == "games" for rule in ingress_rules)
    assert plan_step(STEP, tagged, forget_crash(aws), recorded=recorded) == []


def test_changed_group_description_replaces_the_group_and_rewires_references(manifest, aws, ec2, applied):
    outputs, recorded = applied
    old_alb = outputs["security_groups"]["alb"]
    groups = dict(manifest.network.security_groups)
    groups["alb"] = groups["alb"].model_copy(update={"description": "Public load balancer"})
    changed = with_network(manifest, security_groups=groups)
    later = forget_crash(aws)
    refuse_deleting_referenced_groups(later)
    _, new_outputs, _ = run_step(STEP, changed, later, recorded=recorded)
    new_alb = new_outputs["security_groups"]["alb"]
    assert new_alb != old_alb
    assert ec2.describe_security_groups(GroupIds=[new_alb])["SecurityGroups"][0]["Description"] == \
        "Public load balancer"
    monitoring = new_outputs["security_groups"]["monitoring"]
    assert ingress(ec2, new_outputs["security_groups"]["app"]) == {(8080, new_alb), (8888, monitoring),
                                                                   (8889, monitoring)}
    assert ingress(ec2, new_alb) == {(80, "0.0.0.0/0"), (443, "0.0.0.0/0")}
    assert plan_step(STEP, changed, forget_crash(aws), recorded=recorded) == []


# --- destroy --------------------------------------------------------------------------------


def test_destroy_removes_what_is_ours_and_only_that(manifest, aws, ec2):
    untagged_vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16", TagSpecifications=[
        {"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": "gamepulse-dev-vpc"}]}])["Vpc"]["VpcId"]
    untagged_subnet = ec2.create_subnet(VpcId=untagged_vpc, CidrBlock="10.20.32.0/24",
                                        AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    untagged_group = ec2.create_security_group(GroupName="gamepulse-dev-alb", Description="look-alike",
                                               VpcId=untagged_vpc)["GroupId"]
    staging = tagging.tag_list(tagging.ownership_tags("gamepulse", "staging", "vpc"))
    staging_address = ec2.allocate_address(Domain="vpc", TagSpecifications=[
        {"ResourceType": "elastic-ip", "Tags": staging}])["AllocationId"]
    untagged_address = ec2.allocate_address(Domain="vpc")["AllocationId"]
    recorded: dict = {}
    run_step(STEP, manifest, aws, recorded=recorded)
    assert counts(ec2) == DEV_COUNTS  # the look-alikes were neither adopted nor touched

    later = forget_crash(aws)
    refuse_deleting_referenced_groups(later)
    with pytest.raises(ClientError, match="DependencyViolation"):  # the injected AWS behaviour bites
        later.client("ec2").delete_security_group(GroupId=_referenced_group(ec2))
    deleted, _, _ = run_step(STEP, manifest, later, recorded=recorded, destroy=True)
    kinds = [c.kind for c in deleted]
    assert kinds.index("ingress") < kinds.index("security_group") < kinds.index("vpc")
    assert all(count == 0 for count in counts(ec2).values()), counts(ec2)
    assert ec2.describe_vpcs(VpcIds=[untagged_vpc])["Vpcs"]
    assert ec2.describe_subnets(SubnetIds=[untagged_subnet])["Subnets"]
    assert ec2.describe_security_groups(GroupIds=[untagged_group])["SecurityGroups"]
    addresses = {a["AllocationId"] for a in ec2.describe_addresses()["Addresses"]}
    assert addresses == {staging_address, untagged_address}

    assert run_step(STEP, manifest, forget_crash(aws), destroy=True)[0] == []


@pytest.mark.parametrize("operation", ["DeleteSubnet", "DetachInternetGateway", "DeleteSecurityGroup",
                                       "DeleteVpc"])
def test_destroy_waits_while_lingering_network_interfaces_hold_the_network(manifest, aws, ec2, operation):
    run_step(STEP, manifest, aws)
    later = forget_crash(aws)
    attempts = still_in_use(later, operation, times=30)  # well past a few retries: minutes on AWS
    run_step(STEP, manifest, later, destroy=True)
    assert len(attempts) > 30
    assert all(count == 0 for count in counts(ec2).values()), counts(ec2)


def test_a_delete_still_refused_after_ten_minutes_fails_naming_the_resource(manifest, aws, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(waiters, "clock", lambda: now[0])
    monkeypatch.setattr(waiters, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    run_step(STEP, manifest, aws)
    later = forget_crash(aws)
    still_in_use(later, "DeleteSubnet", times=10**6)
    with pytest.raises(WaitTimeout, match=r"deletion of subnet private-us-east-1a \(subnet-\w+\) after \d+s "
                                          r"\(last status: DependencyViolation\)"):
        run_step(STEP, manifest, later, destroy=True)
    assert 540 <= now[0] <= 600


def _referenced_group(ec2) -> str:
    """The alb group: the app group's rule references it."""
    return next(g["GroupId"] for g in ours(ec2)["groups"] if g["GroupName"] == "gamepulse-dev-alb")


# --- idempotency tokens ---------------------------------------------------------------------


def test_apply_after_destroy_uses_new_client_tokens(manifest, aws, ec2):
    """The route tables, endpoints and NAT gateway of an apply after a destroy go into a new VPC,
    subnets and address: a token of the first apply would be a mismatch on AWS."""
    tokens = ClientTokens()
    recorded: dict = {}
    run_step(STEP, manifest, tokens.install(aws), recorded=recorded)
    run_step(STEP, manifest, tokens.install(forget_crash(aws)), recorded=recorded, destroy=True)
    run_step(STEP, manifest, tokens.install(forget_crash(aws)), recorded=recorded)
    assert counts(ec2) == DEV_COUNTS
    assert len(tokens.seen) == 2 * (2 + 5 + 1)  # route tables, endpoints, NAT gateway: twice each


def test_nat_gateway_after_failed_ones_expired_is_a_new_one(manifest, aws, ec2):
    """moto gap: NAT gateways never fail, and failed ones never go away. Here the first two fail
    (and let go of their address, as on AWS), then AWS drops the first (about an hour later): the
    next create must not reuse the token of the second, which AWS would answer with that failed
    gateway."""
    tokens = ClientTokens()
    gateways = ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].nat_gateways
    made: list[str] = []

    def fail_the_first_two(parsed, **kwargs):
        nat_id = parsed["NatGateway"]["NatGatewayId"]
        if nat_id not in made:
            made.append(nat_id)
            if len(made) <= 2:
                gateways[nat_id].state = "failed"
                allocation = parsed["NatGateway"]["NatGatewayAddresses"][0]["AllocationId"]
                address = ec2.describe_addresses(AllocationIds=[allocation])["Addresses"][0]
                ec2.disassociate_address(AssociationId=address["AssociationId"])

    def install(aws):
        aws.register("after-call.ec2.CreateNatGateway", fail_the_first_two)
        return tokens.install(aws)

    recorded: dict = {}
    current = install(aws)
    for _ in range(2):
        with pytest.raises(WaitFailed, match="is failed"):
            run_step(STEP, manifest, current, recorded=recorded)
        current = install(forget_crash(current))
    del gateways[made[0]]
    _, outputs, _ = run_step(STEP, manifest, current, recorded=recorded)
    assert len(made) == 3 and outputs["nat_gateway_ids"] == [made[2]]
    assert ec2.describe_nat_gateways(NatGatewayIds=[made[2]])["NatGateways"][0]["State"] == "available"


# --- ownership ------------------------------------------------------------------------------


def test_subnet_not_ours_in_another_zone_is_refused_not_replaced(manifest, aws, ec2, applied):
    """A subnet of our VPC without our tags is matched by its range; one in another zone than
    the manifest's would be replaced, deleting what someone else made."""
    outputs, recorded = applied
    ec2.delete_subnet(SubnetId=outputs["public_subnet_ids"][1])
    theirs = ec2.create_subnet(VpcId=outputs["vpc_id"], CidrBlock="10.20.33.0/24",
                               AvailabilityZone="us-east-1c")["Subnet"]["SubnetId"]
    later = forget_crash(aws)
    with pytest.raises(OrchestratorError, match=f"subnet {theirs} .*does not carry this environment's ownership"):
        run_step(STEP, manifest, later, recorded=recorded)
    assert mutations(later) == []
    assert ec2.describe_subnets(SubnetIds=[theirs])["Subnets"]


# --- crashes --------------------------------------------------------------------------------


def test_a_run_killed_after_any_mutating_call_converges_without_duplicates(manifest, aws, ec2):
    """Each run is killed right after its first mutating call and the next run (a fresh process)
    starts from what that left, so a kill lands after every successive mutating call of a cold
    apply; the chain ends with a run that has nothing left to do."""
    recorded: dict = {}
    kills, current = 0, aws
    for _ in range(60):  # a step that never stops creating must fail, not hang
        crash_after(current, 1)
        try:
            run_step(STEP, manifest, current, recorded=recorded)
            break
        except Crash:
            kills += 1
            current = forget_crash(current)
    assert 35 <= kills < 60  # at least every call of an uninterrupted cold apply, and an end
    assert mutations(current) == []
    assert counts(ec2) == DEV_COUNTS
    assert len(ec2.describe_nat_gateways()["NatGateways"]) == 1  # tagged or not
    vpc_id = ours(ec2)["vpcs"][0]["VpcId"]
    everything = everything_in(ec2, vpc_id)
    assert {kind: len(found) for kind, found in everything.items()} == \
        {"subnets": 4, "tables": 2, "groups": 5, "endpoints": 5}
    for kind, resources in everything.items():
        assert all(tagging.is_owned(tags_of(r), "gamepulse", "dev") for r in resources), kind
    assert all(tagging.is_owned(tags_of(a), "gamepulse", "dev") for a in ec2.describe_addresses()["Addresses"])


# --- NAT gateways ---------------------------------------------------------------------------


def test_per_zone_nat_gives_three_gateways_then_single_removes_two(aws, ec2):
    prod = load_manifest(MANIFESTS, "prod")
    owner = tagging.owner_filters("gamepulse", "prod", "vpc")
    recorded: dict = {}
    _, outputs, _ = run_step(STEP, prod, aws, recorded=recorded)
    nats = ec2.describe_nat_gateways(Filter=owner)["NatGateways"]
    assert len(nats) == 3 and len(ec2.describe_addresses(Filters=owner)["Addresses"]) == 3
    assert len(outputs["private_route_table_ids"]) == 3 and len(outputs["nat_gateway_ids"]) == 3
    zone_of_subnet = {s["SubnetId"]: s["AvailabilityZone"] for s in ec2.describe_subnets(Filters=owner)["Subnets"]}
    zone_of_nat = {n["NatGatewayId"]: zone_of_subnet[n["SubnetId"]] for n in nats}
    for table in ec2.describe_route_tables(RouteTableIds=outputs["private_route_table_ids"])["RouteTables"]:
        nat = default_route(table)["NatGatewayId"]
        assert {zone_of_subnet[a["SubnetId"]] for a in table["Associations"]} == {zone_of_nat[nat]}

    single = with_network(prod, nat_gateways="single")
    later = forget_crash(aws)
    _, outputs, _ = run_step(STEP, single, later, recorded=recorded)
    live = [n for n in ec2.describe_nat_gateways(Filter=owner)["NatGateways"] if n["State"] != "deleted"]
    assert len(live) == 1 and len(ec2.describe_addresses(Filters=owner)["Addresses"]) == 1
    private = ec2.describe_route_tables(RouteTableIds=outputs["private_route_table_ids"])["RouteTables"]
    assert len(private) == 1 and len(private[0]["Associations"]) == 3
    assert len(ec2.describe_route_tables(Filters=owner)["RouteTables"]) == 2
    assert plan_step(STEP, single, forget_crash(aws), recorded=recorded) == []


def test_failed_nat_gateway_stops_the_apply_with_aws_reason(manifest, aws):
    """moto gap: NAT gateways are `available` at once; the describe the wait makes says `failed`."""
    def failed(params, **kwargs):
        return _Ok(), {"NatGateways": [{"NatGatewayId": "nat-x", "State": "failed",
                                        "FailureCode": "InsufficientFreeAddressesInSubnet",
                                        "FailureMessage": "Subnet has insufficient free addresses"}]}

    aws.client("ec2").meta.events.register("before-call.ec2.DescribeNatGateways", failed)
    with pytest.raises(WaitFailed, match="gamepulse-dev-nat-us-east-1a .*failed.*insufficient free addresses"):
        run_step(STEP, manifest, aws)


class _Ok:
    status_code = 200


def test_an_aws_error_names_the_resource(manifest, aws):
    def refuse(params, **kwargs):
        if params.get("CidrBlock") == "10.20.16.0/20":
            raise ClientError({"Error": {"Code": "InvalidParameterValue", "Message": "no room"}}, "CreateSubnet")

    aws.client("ec2").meta.events.register("before-parameter-build.ec2.CreateSubnet", refuse)
    with pytest.raises(StepFailed, match="create subnet private-us-east-1b: InvalidParameterValue: no room"):
        run_step(STEP, manifest, aws)


def test_a_replacement_refused_as_in_use_while_applying_gives_up_in_seconds(manifest, aws, monkeypatch):
    """While applying, what holds the old group belongs to later steps and will not let go."""
    now = [0.0]
    monkeypatch.setattr(waiters, "clock", lambda: now[0])
    monkeypatch.setattr(waiters, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    run_step(STEP, manifest, aws)
    groups = dict(manifest.network.security_groups)
    groups["monitoring"] = groups["monitoring"].model_copy(update={"description": "renamed by hand"})
    changed = manifest.model_copy(update={"network": manifest.network.model_copy(update={"security_groups": groups})})
    later = forget_crash(aws)
    still_in_use(later, "DeleteSecurityGroup", times=10**6)
    with pytest.raises(WaitTimeout, match="last status: DependencyViolation"):
        run_step(STEP, changed, later)
    assert now[0] <= 30


def test_quotas_that_a_create_would_hit_stop_the_apply_before_any_change(manifest, aws, ec2):
    for n in range(4):  # with the default VPC, the region's quota of 5
        ec2.create_vpc(CidrBlock=f"10.{100 + n}.0.0/16")
    with pytest.raises(OrchestratorError, match=r"the region has 5 VPCs, its quota \(VPCs per Region, L-F678F1CE\) "
                                                r"is 5"):
        run_step(STEP, manifest, aws)
    assert mutations(aws) == []

    for vpc in ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["false"]}])["Vpcs"]:
        ec2.delete_vpc(VpcId=vpc["VpcId"])
    run_step(STEP, manifest, aws)
    limit = 5  # Service Quotas: "EC2-VPC Elastic IPs" (L-0263D0A3), AWS's default
    for _ in range(limit - len(ec2.describe_addresses()["Addresses"])):
        ec2.allocate_address(Domain="vpc")
    before = len(mutations(aws))
    with pytest.raises(OrchestratorError, match=r"the NAT gateways need 1 new Elastic IP\(s\); the account holds "
                                                rf"{limit} of at most {limit}"):
        run_step(STEP, with_network(manifest, nat_gateways="per_zone"), aws)
    assert len(mutations(aws)) == before


def test_quotas_service_quotas_does_not_allow_are_skipped_and_said_so(manifest, aws):
    """An organisation may deny Service Quotas to the deploy role: the apply goes on, naming the
    quota it could not check."""
    class Http:
        status_code = 400
        headers: dict = {}

    denied = {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}
    aws.register("before-call.service-quotas.GetServiceQuota", lambda **kwargs: (Http(), denied))
    from structlog.testing import capture_logs
    with capture_logs() as logs:
        run_step(STEP, manifest, aws)
    said = [log for log in logs if log["event"] == "quota not checked"]
    assert [log["quota"] for log in said if "VPCs" in log["quota"]] == ["VPCs per Region (L-F678F1CE)"], said
    assert all("AccessDeniedException" in log["reason"] for log in said), said
