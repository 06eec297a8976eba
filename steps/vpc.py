"""Step vpc: the network every other step builds on — VPC, subnets per zone, internet and NAT
gateways, route tables, security groups and VPC endpoints.

Resources are known by a logical name (`public-us-east-1a`, `nat-us-east-1a`, `alb`); their
`Name` tag is the environment prefix plus that name (`gamepulse-dev-public-us-east-1a`), and a
security group's name is the same. Observe maps what it finds back to logical names through
that tag; the plan refers to resources by logical name and resolves ids only when it compares,
so a resource that this plan creates or replaces is "known after apply" for everything that
points at it (a route, an association, an endpoint, a rule).

Every field managed here is read back from EC2 (the DNS attributes through
`describe_vpc_attribute`), so the plan compares with what AWS says. The one exception is an
ingress rule's description where EC2 reports none: that is compared with the last apply's record.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from orchestrator import tags as tagging
from orchestrator import waiters
from orchestrator.aws import error_code, unless_code
from orchestrator.errors import OrchestratorError, StepFailed
from orchestrator.model import Accepted, Change, FieldDiff, Step, Unknown, Wait, diff_fields, is_unknown
from orchestrator.permissions import allow
from orchestrator.retry import eventually
from orchestrator.waiters import WaitFailed, botocore_check

ANYWHERE = "0.0.0.0/0"

#: What EC2 answers for a resource it does not know: one created a moment ago may not be visible
#: to the next call yet (EC2 is eventually consistent), so calls that name one retry on these;
#: a delete of one that is gone already counts as done.
NOT_FOUND = frozenset({
    "InvalidVpcID.NotFound", "InvalidSubnetID.NotFound", "InvalidInternetGatewayID.NotFound",
    "InvalidAllocationID.NotFound", "InvalidRouteTableID.NotFound", "InvalidNatGatewayID.NotFound",
    "NatGatewayNotFound", "InvalidGatewayID.NotFound", "InvalidGroup.NotFound", "InvalidVpcEndpointId.NotFound",
    "InvalidAssociationID.NotFound"})

#: A delete that AWS refuses while a dependant is still going away (the network interfaces of a
#: load balancer, endpoint or NAT gateway just deleted, a NAT gateway's address) succeeds later:
#: those interfaces can linger for minutes, so such deletes are retried for up to IN_USE_TIMEOUT.
STILL_IN_USE = frozenset({"DependencyViolation", "InvalidIPAddress.InUse"})
IN_USE_TIMEOUT = 600.0
#: During an apply (a replacement) what holds the resource belongs to later steps and will not
#: let go: give up soon and say so, rather than wait ten minutes.
IN_USE_TIMEOUT_APPLYING = 30.0

#: Service Quotas' service and quota code of "VPCs per Region" (pre-flight).
VPCS_PER_REGION = ("vpc", "L-F678F1CE")
#: Service Quotas' "EC2-VPC Elastic IPs" (per Region; AWS's default is 5). DescribeAccountAttributes'
#: `vpc-max-elastic-ips` is not among the attribute names the EC2 API reference documents.
ELASTIC_IPS_PER_REGION = ("ec2", "L-0263D0A3")

#: Kinds in the order their deletes are safe: what uses a resource goes before it.
DELETE_ORDER = ("endpoint", "nat_gateway", "eip", "route_table", "internet_gateway", "subnet", "ingress",
                "security_group", "vpc")

DELETE_CALLS = {
    "endpoint": ("ec2:DeleteVpcEndpoints",),
    "nat_gateway": ("ec2:DeleteNatGateway",),
    "eip": ("ec2:ReleaseAddress",),
    "route_table": ("ec2:DisassociateRouteTable", "ec2:DeleteRouteTable"),
    "internet_gateway": ("ec2:DetachInternetGateway", "ec2:DeleteInternetGateway"),
    "subnet": ("ec2:DeleteSubnet",),
    "ingress": ("ec2:RevokeSecurityGroupIngress",),
    "security_group": ("ec2:DeleteSecurityGroup",),
    "vpc": ("ec2:DeleteVpc",),
}


# --- desired ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vpc:
    logical: str
    name: str
    cidr: str
    enable_dns_support: bool = True
    enable_dns_hostnames: bool = True


@dataclass(frozen=True)
class Subnet:
    logical: str
    name: str
    zone: str
    cidr: str
    map_public_ip_on_launch: bool


@dataclass(frozen=True)
class InternetGateway:
    logical: str
    name: str


@dataclass(frozen=True)
class Address:
    """The Elastic IP of one NAT gateway (same logical name as its gateway)."""
    logical: str
    name: str


@dataclass(frozen=True)
class NatGateway:
    logical: str
    name: str
    zone: str
    subnet: str  # logical name of its public subnet
    address: str  # logical name of its Elastic IP


@dataclass(frozen=True)
class Route:
    destination: str
    target_kind: str  # "internet_gateway" | "nat_gateway"
    target: str  # logical name


@dataclass(frozen=True)
class RouteTable:
    logical: str
    name: str
    routes: tuple[Route, ...]
    subnets: tuple[str, ...]  # logical names of the subnets associated with it


@dataclass(frozen=True)
class Rule:
    """One ingress rule: TCP `port` from one source (a CIDR, or a group of this step by logical name)."""
    port: int
    source_kind: str  # "cidr" | "group"
    source: str
    description: str

    @property
    def label(self) -> str:
        return f"tcp {self.port} from {self.source}"


@dataclass(frozen=True)
class SecurityGroup:
    logical: str
    name: str
    description: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Endpoint:
    logical: str
    name: str
    service_name: str
    type: str  # "Gateway" | "Interface"
    route_tables: tuple[str, ...] = ()  # logical names (gateway endpoints)
    subnets: tuple[str, ...] = ()  # logical names (interface endpoints)
    security_groups: tuple[str, ...] = ()  # logical names (interface endpoints)
    private_dns: bool = False


@dataclass(frozen=True)
class Network:
    prefix: str
    tags: tuple[tuple[str, str], ...]  # ownership and manifest tags; each resource adds its Name
    zones: tuple[str, ...]
    vpc: Vpc
    subnets: tuple[Subnet, ...]
    internet_gateway: InternetGateway
    addresses: tuple[Address, ...]
    nat_gateways: tuple[NatGateway, ...]
    route_tables: tuple[RouteTable, ...]
    security_groups: tuple[SecurityGroup, ...]
    endpoints: tuple[Endpoint, ...]

    def tags_for(self, name: str) -> dict[str, str]:
        return {**dict(self.tags), "Name": name}

    def of_kind(self, kind: str) -> tuple:
        """The desired resources of one change kind (the VPC as a one-element tuple)."""
        return {"vpc": (self.vpc,), "subnet": self.subnets, "internet_gateway": (self.internet_gateway,),
                "eip": self.addresses, "nat_gateway": self.nat_gateways, "route_table": self.route_tables,
                "security_group": self.security_groups, "ingress": self.security_groups,
                "endpoint": self.endpoints}[kind]


# --- observed --------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Seen:
    id: str
    tags: dict[str, str]
    owned: bool = True  # carries this step's ownership tags


@dataclass(kw_only=True)
class SeenVpc(Seen):
    cidr: str
    enable_dns_support: bool
    enable_dns_hostnames: bool


@dataclass(kw_only=True)
class SeenSubnet(Seen):
    cidr: str
    zone: str
    map_public_ip_on_launch: bool


@dataclass(kw_only=True)
class SeenGateway(Seen):
    attached_to: tuple[str, ...]  # VPC ids


@dataclass(kw_only=True)
class SeenNat(Seen):
    state: str


@dataclass(kw_only=True)
class SeenTable(Seen):
    routes: dict[str, str]  # destination CIDR → target id, for routes someone created (not `local`)


@dataclass(kw_only=True)
class SeenGroup(Seen):
    description: str


@dataclass(frozen=True)
class SeenRule:
    id: str
    protocol: str
    from_port: int
    to_port: int
    source_kind: str  # "cidr" | "cidr6" | "prefix-list" | "group"
    source: str  # a CIDR, a prefix-list id or a group id
    description: str
    tags: dict[str, str] = field(default_factory=dict)

    def key(self) -> tuple:
        return (self.protocol, self.from_port, self.to_port, self.source_kind, self.source)


@dataclass(kw_only=True)
class SeenEndpoint(Seen):
    service_name: str
    type: str
    route_tables: frozenset[str]
    subnets: frozenset[str]
    security_groups: frozenset[str]
    private_dns: bool


@dataclass(frozen=True)
class Association:
    id: str
    table: str  # route table id


@dataclass
class Facts:
    """What exists, by logical name, and working memory for apply (which adds what it creates).

    A resource of ours whose Name tag names no logical resource (or a second one with a Name
    already taken) is keyed by its id: the plan then sees it as unwanted and deletes it.
    """
    vpc: SeenVpc | None = None
    subnets: dict[str, SeenSubnet] = field(default_factory=dict)
    internet_gateways: dict[str, SeenGateway] = field(default_factory=dict)
    addresses: dict[str, Seen] = field(default_factory=dict)
    nat_gateways: dict[str, SeenNat] = field(default_factory=dict)
    failed_nat_gateways: dict[str, list[str]] = field(default_factory=dict)  # logical → ids of failed ones, sorted
    route_tables: dict[str, SeenTable] = field(default_factory=dict)
    associations: dict[str, Association] = field(default_factory=dict)  # subnet id → its explicit association
    security_groups: dict[str, SeenGroup] = field(default_factory=dict)
    rules: dict[str, list[SeenRule]] = field(default_factory=dict)  # group id → its ingress rules
    endpoints: dict[str, SeenEndpoint] = field(default_factory=dict)

    def of_kind(self, kind: str) -> dict[str, Seen]:
        return {"vpc": {"vpc": self.vpc} if self.vpc else {}, "subnet": self.subnets,
                "internet_gateway": self.internet_gateways, "eip": self.addresses,
                "nat_gateway": self.nat_gateways, "route_table": self.route_tables,
                "security_group": self.security_groups, "endpoint": self.endpoints}[kind]


class Ids:
    """Resolves logical names to ids: observed ids, or an `Unknown` for a resource that is
    missing or that this plan creates or replaces (`fresh` holds those change keys).

    The `Unknown` names the output it stands for (`output`: `vpc.vpc_id`), or else the
    resource it waits for (`vpc.subnet.private-a`)."""

    def __init__(self, observed: Facts, fresh: set[str] | None = None):
        self.observed = observed
        self.fresh = set() if fresh is None else fresh

    def __call__(self, kind: str, logical: str, output: str = "") -> str:
        seen = self.observed.of_kind(kind).get(logical)
        if seen is None or f"{kind}/{logical}" in self.fresh:
            return Unknown(f"vpc.{output or f'{kind}.{logical}'}")
        return seen.id

    def now(self, kind: str, logical: str) -> str:
        """The id at apply time, when everything this change needs has been created."""
        found = self(kind, logical)
        if is_unknown(found):
            raise OrchestratorError(f"{kind.replace('_', ' ')} {logical} does not exist yet; run apply again")
        return found


# --- the step --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VpcOutputs:
    vpc_id: str
    vpc_cidr: str
    zones: list[str]
    public_subnet_ids: list[str]
    private_subnet_ids: list[str]
    security_groups: dict[str, str]  # by the manifest's name: alb, app, monitoring, efs, endpoints
    public_route_table_id: str
    private_route_table_ids: list[str]
    nat_gateway_ids: list[str]


class VpcStep(Step):
    name = "vpc"
    depends_on = ()
    Outputs = VpcOutputs
    description = "VPC, subnets, internet and NAT gateways, route tables, security groups, VPC endpoints"

    def permissions(self, manifest, scope) -> list[dict]:
        """The deploy role's statements for this step. EC2 describes support no resource-level
        permissions; EC2 resources have generated ids, so the changes are held to this account
        and region (what is ours among them is decided by our tags)."""
        return [
            allow("Ec2Describe", ["ec2:DescribeVpcs", "ec2:DescribeSubnets",
                                  "ec2:DescribeAddresses", "ec2:DescribeInternetGateways", "ec2:DescribeNatGateways",
                                  "ec2:DescribeRouteTables", "ec2:DescribeSecurityGroups",
                                  "ec2:DescribeSecurityGroupRules", "ec2:DescribeVpcEndpoints"], "*"),
            allow("Ec2Network", [f"ec2:{action}" for action in (
                "CreateVpc", "DeleteVpc", "ModifyVpcAttribute", "CreateSubnet", "DeleteSubnet", "ModifySubnetAttribute",
                "AllocateAddress", "ReleaseAddress", "CreateInternetGateway", "DeleteInternetGateway",
                "AttachInternetGateway", "DetachInternetGateway", "CreateNatGateway", "DeleteNatGateway",
                "CreateRouteTable", "DeleteRouteTable", "CreateRoute", "ReplaceRoute", "DeleteRoute",
                "AssociateRouteTable", "DisassociateRouteTable", "ReplaceRouteTableAssociation", "CreateSecurityGroup",
                "DeleteSecurityGroup", "AuthorizeSecurityGroupIngress", "RevokeSecurityGroupIngress",
                "ModifySecurityGroupRules", "CreateVpcEndpoint", "DeleteVpcEndpoints", "ModifyVpcEndpoint",
                "CreateTags", "DescribeVpcAttribute")], scope.arn("ec2", "*")),
            # An interface endpoint with private DNS associates AWS's hosted zone with the VPC;
            # Route 53 supports no resource-level permissions for that association.
            allow("VpcEndpointPrivateDns", ["route53:AssociateVPCWithHostedZone"], "*"),
            # Pre-flight quotas: the applied value, else AWS's default.
            allow("Quotas", ["servicequotas:GetServiceQuota"],
                  [scope.arn("servicequotas", "/".join(quota)) for quota in (VPCS_PER_REGION, ELASTIC_IPS_PER_REGION)]),
            # GetAWSDefaultServiceQuota supports no resource-level permissions.
            allow("QuotaDefaults", ["servicequotas:GetAWSDefaultServiceQuota"], "*")]

    # -- desired ----------------------------------------------------------------------------

    def desired(self, manifest, inputs) -> Network:
        spec = manifest.network
        prefix = manifest.prefix
        zones = tuple(usable_zones(manifest, inputs))
        public_cidrs, private_cidrs = spec.subnet_cidrs()
        subnets = tuple(Subnet(f"{kind}-{zone}", f"{prefix}-{kind}-{zone}", zone, cidr, kind == "public")
                        for kind, cidrs in (("public", public_cidrs), ("private", private_cidrs))
                        for zone, cidr in zip(zones, cidrs, strict=True))
        nat_zones = {"single": zones[:1], "per_zone": zones, "none": ()}[spec.nat_gateways]
        nats = tuple(NatGateway(f"nat-{zone}", f"{prefix}-nat-{zone}", zone, f"public-{zone}", f"nat-{zone}")
                     for zone in nat_zones)
        route_tables = _route_tables(prefix, zones, spec.nat_gateways)
        return Network(
            prefix=prefix,
            tags=tuple(sorted(tagging.ownership_tags(manifest.app, manifest.environment, self.name,
                                                     manifest.tags).items())),
            zones=zones,
            vpc=Vpc("vpc", f"{prefix}-vpc", spec.cidr),
            subnets=subnets,
            internet_gateway=InternetGateway("igw", f"{prefix}-igw"),
            addresses=tuple(Address(nat.logical, nat.name) for nat in nats),
            nat_gateways=nats,
            route_tables=route_tables,
            security_groups=tuple(_security_group(prefix, spec, name) for name in sorted(spec.security_groups)),
            endpoints=_endpoints(prefix, _service_prefix(inputs.partition, manifest.region), spec.endpoints,
                                 zones, route_tables))

    # -- observe ----------------------------------------------------------------------------

    def observe(self, ctx, desired: Network) -> Facts:
        """One describe per resource kind, filtered by our tags, or by the VPC where a resource
        must also be found without them (subnets and security groups, whose CIDR and name say
        which they are; route tables, for the associations of our subnets)."""
        ec2 = ctx.client("ec2")
        owner = tagging.owner_filters(ctx.app, ctx.env, self.name)
        owned = ctx.owns
        facts = Facts()
        facts.addresses, vpc = ctx.each("ec2", lambda read: read(), [
            lambda: _by_logical(desired.prefix, [Seen(id=a["AllocationId"], tags=tagging.tag_dict(a.get("Tags")))
                                                 for a in ec2.describe_addresses(Filters=owner)["Addresses"]]),
            lambda: _find_vpc(ec2, owner, desired.vpc)])
        if vpc is None:
            return facts
        in_vpc = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]

        def gateways():
            return _by_logical(desired.prefix, [
                SeenGateway(id=g["InternetGatewayId"], tags=tagging.tag_dict(g.get("Tags")),
                            attached_to=tuple(a["VpcId"] for a in g.get("Attachments", [])))
                for g in _describe(ec2, "describe_internet_gateways", "InternetGateways", Filters=owner)])

        def groups_and_rules():
            groups = _key_groups(_describe(ec2, "describe_security_groups", "SecurityGroups", Filters=in_vpc),
                                 desired, owned)
            group_ids = [group.id for group in groups.values()]
            rules = {group_id: [] for group_id in group_ids}
            if group_ids:
                for rule in _describe(ec2, "describe_security_group_rules", "SecurityGroupRules",
                                      Filters=[{"Name": "group-id", "Values": group_ids}]):
                    if not rule["IsEgress"]:
                        rules[rule["GroupId"]].append(_seen_rule(rule))
            return groups, rules

        # Everything else is found by the VPC alone: its two DNS attributes and one describe per
        # kind, all at once.
        (dns_support, dns_hostnames, facts.subnets, facts.internet_gateways,
         (facts.nat_gateways, facts.failed_nat_gateways), tables, (facts.security_groups, facts.rules),
         facts.endpoints) = ctx.each("ec2", lambda read: read(), [
            lambda: _vpc_attribute(ec2, vpc["VpcId"], "enableDnsSupport"),
            lambda: _vpc_attribute(ec2, vpc["VpcId"], "enableDnsHostnames"),
            lambda: _key_subnets(_describe(ec2, "describe_subnets", "Subnets", Filters=in_vpc), desired, owned),
            gateways,
            lambda: _key_nat_gateways(_describe(ec2, "describe_nat_gateways", "NatGateways", Filter=owner + in_vpc),
                                      desired.prefix),
            lambda: _describe(ec2, "describe_route_tables", "RouteTables", Filters=in_vpc),
            groups_and_rules,
            lambda: _by_logical(desired.prefix, [
                _seen_endpoint(e) for e in _describe(ec2, "describe_vpc_endpoints", "VpcEndpoints",
                                                     Filters=owner + in_vpc)
                if e["State"].lower() not in ("deleting", "deleted")])])
        facts.vpc = SeenVpc(id=vpc["VpcId"], tags=tagging.tag_dict(vpc.get("Tags")), cidr=vpc["CidrBlock"],
                            enable_dns_support=dns_support, enable_dns_hostnames=dns_hostnames)
        facts.route_tables = _by_logical(desired.prefix, [
            SeenTable(id=t["RouteTableId"], tags=tagging.tag_dict(t.get("Tags")), routes=_routes(t))
            for t in tables if owned(tagging.tag_dict(t.get("Tags")))])
        facts.associations = {a["SubnetId"]: Association(a["RouteTableAssociationId"], a["RouteTableId"])
                              for t in tables for a in t.get("Associations", [])
                              if a.get("SubnetId") and a.get("AssociationState", {}).get("State") != "disassociated"}
        return facts

    # -- pre-flight ---------------------------------------------------------------------------

    def preflight(self, ctx, desired: Network, observed: Facts) -> list[str]:
        """The quotas a create would run into half way, read only when something counted is to
        be created: a new VPC (VPCs per Region) and new Elastic IPs for NAT gateways."""
        ec2 = ctx.client("ec2")
        problems = []
        if observed.vpc is None:
            limit = _quota(ctx, VPCS_PER_REGION, "VPCs per Region")
            used = len(_describe(ec2, "describe_vpcs", "Vpcs"))
            if limit is not None and used + 1 > limit:
                problems.append(f"the region has {used} VPCs, its quota (VPCs per Region, {VPCS_PER_REGION[1]}) is "
                                f"{limit}: delete one or ask for a higher quota")
        new_addresses = [address for address in desired.addresses if address.logical not in observed.addresses]
        limit = _quota(ctx, ELASTIC_IPS_PER_REGION, "EC2-VPC Elastic IPs") if new_addresses else None
        if limit is not None:
            used = len(ec2.describe_addresses()["Addresses"])
            if used + len(new_addresses) > limit:
                problems.append(f"the NAT gateways need {len(new_addresses)} new Elastic IP(s); the account holds "
                                f"{used} of at most {limit} in the region: release some or ask for a higher quota")
        return problems

    # -- plan -------------------------------------------------------------------------------

    def plan(self, desired: Network, observed: Facts, recorded: dict[str, dict]) -> list[Change]:
        """Creates and updates in dependency order, then the deletes of what the manifest no
        longer asks for. `recorded` holds the rule descriptions of the last apply (see `_plan_ingress`)."""
        ids = Ids(observed)
        changes = [*_plan_vpc(desired, observed.vpc, ids),
                   *_plan_internet_gateway(desired, observed, ids)]
        for subnet in desired.subnets:
            changes += _plan_subnet(desired, subnet, observed.subnets.get(subnet.logical), ids)
        for address in desired.addresses:
            changes += _plan_address(desired, address, observed.addresses.get(address.logical), ids)
        for nat in desired.nat_gateways:
            changes += _plan_nat_gateway(desired, nat, observed, ids)
        for table in desired.route_tables:
            changes += _plan_route_table(desired, table, observed, ids)
        for group in desired.security_groups:
            changes += _plan_security_group(desired, group, observed.security_groups.get(group.logical), ids)
        for group in desired.security_groups:
            changes += _plan_ingress(group, dict(desired.tags), observed, ids,
                                     recorded.get(f"ingress/{group.logical}", {}))
        for endpoint in desired.endpoints:
            changes += _plan_endpoint(desired, endpoint, observed.endpoints.get(endpoint.logical), ids)
        return changes + _deletes(observed, keep=desired)

    def plan_destroy(self, observed: Facts) -> list[Change]:
        """Everything of ours, in a safe order (see DELETE_ORDER); nothing without our tags."""
        return _deletes(observed, keep=None)

    def gone(self, ctx, arns: list[str]) -> set[str]:
        """NAT gateways deleted or deleting, which the tagging API lists for a while."""
        nat = {arn.rsplit("/", 1)[-1]: arn for arn in tagging.arns_of(arns, "ec2", "natgateway")}
        if not nat:
            return set()
        answer = ctx.client("ec2").describe_nat_gateways(NatGatewayIds=sorted(nat))["NatGateways"]
        return {nat[item["NatGatewayId"]] for item in answer if item["State"] in ("deleting", "deleted")}

    # -- apply ------------------------------------------------------------------------------

    def apply(self, ctx, change: Change, observed: Facts) -> Accepted | None:
        """Carry out one change by its handler (`handlers`), saying which change an error refused."""
        try:
            return super().apply(ctx, change, observed)
        except ClientError as error:
            message = error.response.get("Error", {}).get("Message", "")
            raise StepFailed(f"could not {change.action} {change.kind.replace('_', ' ')} {change.name}: "
                             f"{error_code(error)}: {message}") from error

    def _create_vpc(self, ctx, change: Change, observed: Facts) -> None:
        vpc: Vpc = change.payload
        ec2 = ctx.client("ec2")
        created = ec2.create_vpc(CidrBlock=vpc.cidr, TagSpecifications=_tag_spec(ctx, "vpc", vpc.name))["Vpc"]
        # A new VPC has DNS support on and DNS hostnames off: set only what differs.
        observed.vpc = SeenVpc(id=created["VpcId"], tags=ctx.tags() | {"Name": vpc.name}, cidr=vpc.cidr,
                               enable_dns_support=True, enable_dns_hostnames=False)
        _set_dns_attributes(ec2, vpc, observed.vpc)

    def _update_vpc(self, ctx, change: Change, observed: Facts) -> None:
        _set_dns_attributes(ctx.client("ec2"), change.payload, observed.vpc)
        _retag(ctx, change, observed.vpc)

    def _delete_vpc(self, ctx, change: Change, observed: Facts) -> None:
        _delete(ctx, f"deletion of VPC {observed.vpc.id}", ctx.client("ec2").delete_vpc, VpcId=observed.vpc.id)
        observed.vpc = None

    def _create_internet_gateway(self, ctx, change: Change, observed: Facts) -> None:
        gateway: InternetGateway = change.payload
        ec2 = ctx.client("ec2")
        created = ec2.create_internet_gateway(
            TagSpecifications=_tag_spec(ctx, "internet-gateway", gateway.name))["InternetGateway"]
        seen = SeenGateway(id=created["InternetGatewayId"], tags=ctx.tags() | {"Name": gateway.name}, attached_to=())
        observed.internet_gateways[gateway.logical] = seen
        _attach_gateway(ec2, seen, observed.vpc.id)

    def _update_internet_gateway(self, ctx, change: Change, observed: Facts) -> None:
        seen = observed.internet_gateways[change.name]
        if observed.vpc.id not in seen.attached_to:
            _attach_gateway(ctx.client("ec2"), seen, observed.vpc.id)
        _retag(ctx, change, seen)

    def _delete_internet_gateway(self, ctx, change: Change, observed: Facts) -> None:
        ec2 = ctx.client("ec2")
        seen = observed.internet_gateways[change.name]
        for vpc_id in seen.attached_to:
            _delete(ctx, f"detachment of internet gateway {change.name} ({seen.id}) from {vpc_id}",
                    ec2.detach_internet_gateway, InternetGatewayId=seen.id, VpcId=vpc_id)
        _delete(ctx, f"deletion of internet gateway {change.name} ({seen.id})",
                ec2.delete_internet_gateway, InternetGatewayId=seen.id)
        del observed.internet_gateways[change.name]

    def _create_subnet(self, ctx, change: Change, observed: Facts) -> None:
        subnet: Subnet = change.payload
        ec2 = ctx.client("ec2")
        created = _eventually(ec2.create_subnet, VpcId=observed.vpc.id, CidrBlock=subnet.cidr,
                              AvailabilityZone=subnet.zone,
                              TagSpecifications=_tag_spec(ctx, "subnet", subnet.name))["Subnet"]
        seen = SeenSubnet(id=created["SubnetId"], tags=ctx.tags() | {"Name": subnet.name}, cidr=subnet.cidr,
                          zone=subnet.zone, map_public_ip_on_launch=created.get("MapPublicIpOnLaunch", False))
        observed.subnets[subnet.logical] = seen
        _set_public_ip_on_launch(ec2, subnet, seen)

    def _update_subnet(self, ctx, change: Change, observed: Facts) -> None:
        seen = observed.subnets[change.name]
        _set_public_ip_on_launch(ctx.client("ec2"), change.payload, seen)
        _retag(ctx, change, seen)

    def _replace_subnet(self, ctx, change: Change, observed: Facts) -> None:
        self._delete_subnet(ctx, change, observed)
        self._create_subnet(ctx, change, observed)

    def _delete_subnet(self, ctx, change: Change, observed: Facts) -> None:
        seen = observed.subnets.pop(change.name)
        _delete(ctx, f"deletion of subnet {change.name} ({seen.id})", ctx.client("ec2").delete_subnet,
                SubnetId=seen.id)
        observed.associations.pop(seen.id, None)

    def _create_eip(self, ctx, change: Change, observed: Facts) -> None:
        address: Address = change.payload
        # allocate_address takes no idempotency token: the tag in the call is what a re-run finds.
        created = ctx.client("ec2").allocate_address(Domain="vpc",
                                                     TagSpecifications=_tag_spec(ctx, "elastic-ip", address.name))
        observed.addresses[address.logical] = Seen(id=created["AllocationId"],
                                                   tags=ctx.tags() | {"Name": address.name})

    def _update_eip(self, ctx, change: Change, observed: Facts) -> None:
        _retag(ctx, change, observed.addresses[change.name])

    def _delete_eip(self, ctx, change: Change, observed: Facts) -> None:
        seen = observed.addresses.pop(change.name)
        _delete(ctx, f"release of Elastic IP {change.name} ({seen.id})", ctx.client("ec2").release_address,
                AllocationId=seen.id)

    def _create_nat_gateway(self, ctx, change: Change, observed: Facts) -> Accepted:
        ids = Ids(observed)
        nat: NatGateway = change.payload
        ec2 = ctx.client("ec2")
        # The ids of the gateways that failed salt the token: a retry after one failed must not
        # get that gateway back, and ids (unlike a count) never recur as failed ones expire.
        params = {"SubnetId": ids.now("subnet", nat.subnet), "AllocationId": ids.now("eip", nat.address),
                  "TagSpecifications": _tag_spec(ctx, "natgateway", nat.name)}
        created = _eventually(ec2.create_nat_gateway, **_with_token(
            ctx, change, params, *observed.failed_nat_gateways.get(nat.logical, [])))["NatGateway"]
        seen = SeenNat(id=created["NatGatewayId"], tags=ctx.tags() | {"Name": nat.name}, state=created["State"])
        observed.nat_gateways[nat.logical] = seen
        return Accepted(waits=(_nat_available(ec2, nat.name, seen),))

    def _update_nat_gateway(self, ctx, change: Change, observed: Facts) -> Accepted:
        seen = observed.nat_gateways[change.name]
        _retag(ctx, change, seen)
        return Accepted(waits=(_nat_available(ctx.client("ec2"), change.payload.name, seen),)
                        if seen.state != "available" else ())

    def _delete_nat_gateway(self, ctx, change: Change, observed: Facts) -> Accepted:
        ec2 = ctx.client("ec2")
        seen = observed.nat_gateways.pop(change.name)
        what = f"deletion of NAT gateway {change.name} ({seen.id})"
        _delete(ctx, what, ec2.delete_nat_gateway, settle_first=False, NatGatewayId=seen.id)
        return Accepted(waits=(Wait(what, botocore_check(ec2, "nat_gateway_deleted", what, NatGatewayIds=[seen.id])),))

    def _create_route_table(self, ctx, change: Change, observed: Facts) -> None:
        work: TableWork = change.payload
        table = work.table
        params = {"VpcId": observed.vpc.id, "TagSpecifications": _tag_spec(ctx, "route-table", table.name)}
        created = _eventually(ctx.client("ec2").create_route_table,
                              **_with_token(ctx, change, params))["RouteTable"]
        observed.route_tables[table.logical] = SeenTable(id=created["RouteTableId"],
                                                         tags=ctx.tags() | {"Name": table.name}, routes={})
        self._update_route_table(ctx, change, observed)

    def _update_route_table(self, ctx, change: Change, observed: Facts) -> None:
        ids = Ids(observed)
        work: TableWork = change.payload
        ec2 = ctx.client("ec2")
        if work.set_routes:
            ctx.settle()  # a route to a NAT gateway needs the gateway available
        seen = observed.route_tables[work.table.logical]
        for route in work.set_routes:
            target = {"internet_gateway": "GatewayId", "nat_gateway": "NatGatewayId"}[route.target_kind]
            call = ec2.replace_route if route.destination in seen.routes else ec2.create_route
            target_id = ids.now(route.target_kind, route.target)
            _eventually(call, RouteTableId=seen.id, DestinationCidrBlock=route.destination, **{target: target_id})
            seen.routes[route.destination] = target_id
        for destination in work.delete_routes:
            ec2.delete_route(RouteTableId=seen.id, DestinationCidrBlock=destination)
            del seen.routes[destination]
        for subnet in work.attach:
            _associate(ec2, seen.id, ids.now("subnet", subnet), observed.associations)
        for subnet_id in work.detach:
            ec2.disassociate_route_table(AssociationId=observed.associations.pop(subnet_id).id)
        _retag(ctx, change, seen)

    def _delete_route_table(self, ctx, change: Change, observed: Facts) -> None:
        """Disassociates what is associated at this moment (an earlier change may have moved a
        subnet to a new table), then deletes the table with its routes."""
        ec2 = ctx.client("ec2")
        seen = observed.route_tables.pop(change.name)
        for subnet_id, association in list(observed.associations.items()):
            if association.table == seen.id:
                _delete(ctx, f"disassociation of route table {change.name} ({seen.id}) from {subnet_id}",
                        ec2.disassociate_route_table, AssociationId=association.id)
                del observed.associations[subnet_id]
        _delete(ctx, f"deletion of route table {change.name} ({seen.id})", ec2.delete_route_table,
                RouteTableId=seen.id)

    def _create_security_group(self, ctx, change: Change, observed: Facts) -> None:
        group: SecurityGroup = change.payload
        created = _eventually(ctx.client("ec2").create_security_group, GroupName=group.name,
                              Description=group.description, VpcId=observed.vpc.id,
                              TagSpecifications=_tag_spec(ctx, "security-group", group.name))
        observed.security_groups[group.logical] = SeenGroup(id=created["GroupId"], description=group.description,
                                                            tags=ctx.tags() | {"Name": group.name})
        observed.rules[created["GroupId"]] = []

    def _update_security_group(self, ctx, change: Change, observed: Facts) -> None:
        _retag(ctx, change, observed.security_groups[change.name])

    def _replace_security_group(self, ctx, change: Change, observed: Facts) -> None:
        """A description cannot change: delete and create again. AWS refuses to delete a group
        that another group's rule references, so those rules go first (the ingress changes that
        follow add them back, pointing at the new group)."""
        old = observed.security_groups[change.name]
        ec2 = ctx.client("ec2")
        for group_id, rules in observed.rules.items():
            referencing = [rule.id for rule in rules if rule.source == old.id and group_id != old.id]
            if referencing:
                _revoke(ec2, group_id, referencing, observed)
        self._delete_security_group(ctx, change, observed)
        self._create_security_group(ctx, change, observed)

    def _delete_security_group(self, ctx, change: Change, observed: Facts) -> None:
        seen = observed.security_groups.pop(change.name)
        _delete(ctx, f"deletion of security group {change.name} ({seen.id})",
                ctx.client("ec2").delete_security_group, GroupId=seen.id)
        observed.rules.pop(seen.id, None)

    def _create_ingress(self, ctx, change: Change, observed: Facts) -> None:
        self._update_ingress(ctx, change, observed)

    def _update_ingress(self, ctx, change: Change, observed: Facts) -> None:
        ids = Ids(observed)
        work: IngressWork = change.payload
        ec2 = ctx.client("ec2")
        group_id = ids.now("security_group", change.name)
        # A group replaced earlier in this apply already took rules that pointed at it.
        still_there = {rule.id for rule in observed.rules.get(group_id, [])}
        revoke = [rule_id for rule_id in work.revoke if rule_id in still_there]
        if revoke:
            _revoke(ec2, group_id, revoke, observed)
        if work.add:
            _eventually(ec2.authorize_security_group_ingress, GroupId=group_id,
                        IpPermissions=[_permission(rule, ids) for rule in work.add],
                        TagSpecifications=[{"ResourceType": "security-group-rule",
                                            "Tags": tagging.tag_list(ctx.tags())}])
        if work.redescribe:
            ec2.modify_security_group_rules(GroupId=group_id, SecurityGroupRules=[
                {"SecurityGroupRuleId": rule_id, "SecurityGroupRule": _rule_request(rule, ids)}
                for rule_id, rule in work.redescribe])
        _retag_rules(ec2, work.retag)

    def _delete_ingress(self, ctx, change: Change, observed: Facts) -> None:
        work: IngressWork = change.payload
        group_id = observed.security_groups[change.name].id
        _revoke(ctx.client("ec2"), group_id, list(work.revoke), observed)

    def _create_endpoint(self, ctx, change: Change, observed: Facts) -> Accepted:
        ids = Ids(observed)
        endpoint: Endpoint = change.payload
        ec2 = ctx.client("ec2")
        if endpoint.type == "Gateway":
            where = {"RouteTableIds": [ids.now("route_table", t) for t in endpoint.route_tables]}
        else:
            where = {"SubnetIds": [ids.now("subnet", s) for s in endpoint.subnets],
                     "SecurityGroupIds": [ids.now("security_group", g) for g in endpoint.security_groups],
                     "PrivateDnsEnabled": endpoint.private_dns}
        params = {"VpcId": observed.vpc.id, "ServiceName": endpoint.service_name, "VpcEndpointType": endpoint.type,
                  "TagSpecifications": _tag_spec(ctx, "vpc-endpoint", endpoint.name), **where}
        created = _eventually(ec2.create_vpc_endpoint, **_with_token(ctx, change, params))["VpcEndpoint"]
        observed.endpoints[endpoint.logical] = _seen_endpoint(created)
        return Accepted(waits=(_endpoint_available(ec2, endpoint.name, created["VpcEndpointId"]),))

    def _update_endpoint(self, ctx, change: Change, observed: Facts) -> None:
        ids = Ids(observed)
        endpoint: Endpoint = change.payload
        seen = observed.endpoints[endpoint.logical]
        wanted = {"RouteTable": {ids.now("route_table", t) for t in endpoint.route_tables},
                  "Subnet": {ids.now("subnet", s) for s in endpoint.subnets},
                  "SecurityGroup": {ids.now("security_group", g) for g in endpoint.security_groups}}
        present = {"RouteTable": seen.route_tables, "Subnet": seen.subnets, "SecurityGroup": seen.security_groups}
        params = {}
        for what, want in wanted.items():
            if want - present[what]:
                params[f"Add{what}Ids"] = sorted(want - present[what])
            if present[what] - want:
                params[f"Remove{what}Ids"] = sorted(present[what] - want)
        if endpoint.type == "Interface" and seen.private_dns != endpoint.private_dns:
            params["PrivateDnsEnabled"] = endpoint.private_dns
        if params:
            ctx.client("ec2").modify_vpc_endpoint(VpcEndpointId=seen.id, **params)
            seen.route_tables, seen.subnets = frozenset(wanted["RouteTable"]), frozenset(wanted["Subnet"])
            seen.security_groups, seen.private_dns = frozenset(wanted["SecurityGroup"]), endpoint.private_dns
        _retag(ctx, change, seen)

    def _delete_endpoint(self, ctx, change: Change, observed: Facts) -> Accepted:
        """Awaits the endpoint's end: its network interfaces hold its subnets until then."""
        ec2 = ctx.client("ec2")
        seen = observed.endpoints.pop(change.name)
        failed = ec2.delete_vpc_endpoints(VpcEndpointIds=[seen.id]).get("Unsuccessful", [])
        if failed:
            error = failed[0].get("Error", {})
            raise StepFailed(f"could not delete VPC endpoint {change.name} ({seen.id}): "
                             f"{error.get('Code', '')}: {error.get('Message', '')}")

        def check() -> tuple[bool, str]:
            state = _state_or_deleted(ec2.describe_vpc_endpoints, "VpcEndpoints", VpcEndpointIds=[seen.id])
            return state == "deleted", state

        return Accepted(waits=(Wait(f"deletion of VPC endpoint {change.name} ({seen.id})", check),))

    handlers = {
        ("create", "vpc"): _create_vpc,
        ("update", "vpc"): _update_vpc,
        ("delete", "vpc"): _delete_vpc,
        ("create", "internet_gateway"): _create_internet_gateway,
        ("update", "internet_gateway"): _update_internet_gateway,
        ("delete", "internet_gateway"): _delete_internet_gateway,
        ("create", "subnet"): _create_subnet,
        ("update", "subnet"): _update_subnet,
        ("replace", "subnet"): _replace_subnet,
        ("delete", "subnet"): _delete_subnet,
        ("create", "eip"): _create_eip,
        ("update", "eip"): _update_eip,
        ("delete", "eip"): _delete_eip,
        ("create", "nat_gateway"): _create_nat_gateway,
        ("update", "nat_gateway"): _update_nat_gateway,
        ("delete", "nat_gateway"): _delete_nat_gateway,
        ("create", "route_table"): _create_route_table,
        ("update", "route_table"): _update_route_table,
        ("delete", "route_table"): _delete_route_table,
        ("create", "security_group"): _create_security_group,
        ("update", "security_group"): _update_security_group,
        ("replace", "security_group"): _replace_security_group,
        ("delete", "security_group"): _delete_security_group,
        ("create", "ingress"): _create_ingress,
        ("update", "ingress"): _update_ingress,
        ("delete", "ingress"): _delete_ingress,
        ("create", "endpoint"): _create_endpoint,
        ("update", "endpoint"): _update_endpoint,
        ("delete", "endpoint"): _delete_endpoint,
    }

    # -- outputs ----------------------------------------------------------------------------

    def outputs(self, desired: Network, observed: Facts) -> VpcOutputs:
        """Ids downstream steps read; each one not created yet is an `Unknown` naming its output."""
        ids = Ids(observed)
        public = [s.logical for s in desired.subnets if s.map_public_ip_on_launch]
        private = [s.logical for s in desired.subnets if not s.map_public_ip_on_launch]
        return VpcOutputs(
            vpc_id=ids("vpc", "vpc", "vpc_id"),
            vpc_cidr=desired.vpc.cidr,
            zones=list(desired.zones),
            public_subnet_ids=[ids("subnet", s, "public_subnet_ids") for s in public],
            private_subnet_ids=[ids("subnet", s, "private_subnet_ids") for s in private],
            security_groups={g.logical: ids("security_group", g.logical, f"security_groups.{g.logical}")
                             for g in desired.security_groups},
            public_route_table_id=ids("route_table", "public", "public_route_table_id"),
            private_route_table_ids=[ids("route_table", t.logical, "private_route_table_ids")
                                     for t in desired.route_tables if t.logical != "public"],
            nat_gateway_ids=[ids("nat_gateway", n.logical, "nat_gateway_ids") for n in desired.nat_gateways])



@dataclass(frozen=True)
class TableWork:
    """What an apply does to one route table: `set_routes` are created or repointed, `attach`
    names subnets (logical) to associate, `detach` subnet ids to disassociate."""
    table: RouteTable
    set_routes: tuple[Route, ...] = ()
    delete_routes: tuple[str, ...] = ()
    attach: tuple[str, ...] = ()
    detach: tuple[str, ...] = ()


@dataclass(frozen=True)
class IngressWork:
    """What an apply does to one group's ingress rules (revoke, redescribe and retag by rule id)."""
    add: tuple[Rule, ...] = ()
    revoke: tuple[str, ...] = ()
    redescribe: tuple[tuple[str, Rule], ...] = ()
    retag: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()  # rule id, the tags to set on it


# --- desired, helpers ------------------------------------------------------------------------


def _route_tables(prefix: str, zones: tuple[str, ...], nat_mode: str) -> tuple[RouteTable, ...]:
    """One public table (default route to the internet gateway); private: one per zone, each to
    its zone's NAT gateway (per_zone), or one for all (to the single NAT gateway, or none)."""
    public = RouteTable("public", f"{prefix}-public", (Route(ANYWHERE, "internet_gateway", "igw"),),
                        tuple(f"public-{zone}" for zone in zones))
    if nat_mode == "per_zone":
        private = tuple(RouteTable(f"private-{zone}", f"{prefix}-private-{zone}",
                                   (Route(ANYWHERE, "nat_gateway", f"nat-{zone}"),), (f"private-{zone}",))
                        for zone in zones)
    else:
        routes = (Route(ANYWHERE, "nat_gateway", f"nat-{zones[0]}"),) if nat_mode == "single" else ()
        private = (RouteTable("private", f"{prefix}-private", routes, tuple(f"private-{zone}" for zone in zones)),)
    return (public, *private)


def _security_group(prefix: str, spec, name: str) -> SecurityGroup:
    group = spec.security_groups[name]
    rules = set()
    for rule in group.ingress:
        for source in rule.sources:
            if source in spec.security_groups:
                kind, value = "group", source
            else:
                kind, value = "cidr", spec.cidr if source == "vpc" else source
            rules.update(Rule(port, kind, value, rule.description) for port in rule.ports)
    return SecurityGroup(name, f"{prefix}-{name}", group.description,
                         tuple(sorted(rules, key=lambda r: (r.port, r.source_kind, r.source))))


#: Zones where Fargate runs Linux tasks, by zone id, in the regions where it is not every zone
#: (ECS developer guide, "Supported Regions for Amazon ECS on AWS Fargate", Linux containers).
FARGATE_ZONE_IDS = {"us-west-1": frozenset({"usw1-az1", "usw1-az3"}),
                    "ap-northeast-1": frozenset({"apne1-az1", "apne1-az2", "apne1-az4"})}


def usable_zones(manifest, inputs) -> list[str]:
    """The zones the network spans: the manifest's own, or the first `zones` of those that
    offer Fargate and every interface endpoint service the manifest names (not merely the first
    names: an endpoint or a task in a zone that lacks its service fails half way through).
    A zone that lacks one is named with what it lacks."""
    spec = manifest.network
    services = tuple(sorted(f"{_service_prefix(inputs.partition, manifest.region)}.{service}"
                            for service in spec.endpoints.interface))
    offered = inputs.endpoint_zones(services) if inputs.endpoint_zones is not None else None
    ids = inputs.zone_ids() if inputs.zone_ids is not None else None
    fargate = FARGATE_ZONE_IDS.get(manifest.region)

    def lacks(zone: str) -> list[str]:
        missing = [service for service in services if offered is not None and zone not in offered.get(service, [])]
        if fargate is not None and ids is not None and ids.get(zone) not in fargate:
            missing.append("Fargate")
        return missing

    if spec.availability_zones:
        named = {zone: lacks(zone) for zone in spec.availability_zones}
        short = {zone: missing for zone, missing in named.items() if missing}
        if short:
            raise OrchestratorError("network.availability_zones: " + "; ".join(
                f"{zone} does not offer {', '.join(missing)}" for zone, missing in short.items()))
        return list(spec.availability_zones)
    available = inputs.zones()
    qualifying = [zone for zone in available if not lacks(zone)]
    if len(qualifying) < spec.zones and len(qualifying) < len(available):
        raise OrchestratorError(
            f"network.zones is {spec.zones}, but only {len(qualifying)} zone(s) offer Fargate and every interface "
            f"endpoint the manifest names ({', '.join(qualifying) or 'none'}): " + "; ".join(
                f"{zone} does not offer {', '.join(lacks(zone))}" for zone in available if lacks(zone)))
    try:
        return spec.zone_names(qualifying)
    except ValueError as error:
        raise OrchestratorError(str(error)) from None


def _service_prefix(partition: str, region: str) -> str:
    """What endpoint service names begin with: `com.amazonaws.REGION`, in China `cn.com.amazonaws.REGION`."""
    return f"{'cn.' if partition == 'aws-cn' else ''}com.amazonaws.{region}"


def _endpoints(prefix: str, services: str, spec, zones: tuple[str, ...],
               route_tables: tuple[RouteTable, ...]) -> tuple[Endpoint, ...]:
    private_tables = tuple(t.logical for t in route_tables if t.logical != "public")
    gateways = tuple(Endpoint(service, f"{prefix}-{service}", f"{services}.{service}", "Gateway",
                              route_tables=private_tables) for service in spec.gateway)
    interfaces = tuple(Endpoint(service.replace(".", "-"), f"{prefix}-{service.replace('.', '-')}",
                                f"{services}.{service}", "Interface",
                                subnets=tuple(f"private-{zone}" for zone in zones),
                                security_groups=(spec.security_group,), private_dns=True)
                       for service in spec.interface)
    return gateways + interfaces


# --- observe, helpers ------------------------------------------------------------------------




def _quota(ctx, quota: tuple[str, str], name: str) -> int | None:
    """A quota's applied value, else AWS's default for it; None (the check skipped, and said so)
    where Service Quotas knows neither or the deploy role may not read it (an organisation's
    policy can deny Service Quotas while allowing everything the apply needs)."""
    quotas = ctx.client("service-quotas")
    service, code = quota
    for read in (quotas.get_service_quota, quotas.get_aws_default_service_quota):
        try:
            return int(read(ServiceCode=service, QuotaCode=code)["Quota"]["Value"])
        except Exception as error:
            reason = error_code(error)
            if reason == "AccessDeniedException":
                break
            if reason != "NoSuchResourceException":
                raise
    ctx.log.warning("quota not checked", quota=f"{name} ({code})", reason=reason)
    return None


def _describe(ec2, operation: str, key: str, **params) -> list[dict]:
    pages = ec2.get_paginator(operation).paginate(**params)
    return [item for page in pages for item in page[key]]


def _logical(name: str | None, prefix: str) -> str | None:
    return name[len(prefix) + 1:] if name and name.startswith(f"{prefix}-") else None


def _by_logical(prefix: str, found: list) -> dict:
    keyed = {}
    for seen in found:
        logical = _logical(seen.tags.get("Name"), prefix)
        keyed[seen.id if logical is None or logical in keyed else logical] = seen
    return keyed


def _find_vpc(ec2, owner: list[dict], vpc: Vpc) -> dict | None:
    """Our VPC: the one with our tags (preferring the one whose Name is ours). Two candidates
    is an error a human must settle; the tool will not guess which network is the real one."""
    found = ec2.describe_vpcs(Filters=owner)["Vpcs"]
    named = [v for v in found if tagging.tag_dict(v.get("Tags")).get("Name") == vpc.name]
    candidates = named or found
    if not candidates:
        return None
    if len(candidates) > 1:
        raise OrchestratorError(f"VPC {vpc.name}: {len(candidates)} VPCs carry this environment's tags "
                                f"({', '.join(v['VpcId'] for v in candidates)}); delete or untag all but one")
    return candidates[0]


def _vpc_attribute(ec2, vpc_id: str, attribute: str) -> bool:
    """`enableDnsSupport` or `enableDnsHostnames`: DescribeVpcs does not return them."""
    key = attribute[0].upper() + attribute[1:]
    return ec2.describe_vpc_attribute(VpcId=vpc_id, Attribute=attribute)[key]["Value"]


def _key_subnets(found: list[dict], desired: Network, owned) -> dict[str, SeenSubnet]:
    """Subnets of our VPC by logical name: from the Name tag when the subnet carries our tags,
    otherwise from its CIDR (a subnet of our VPC with a CIDR we ask for is the one we made,
    whatever happened to its tags). Other subnets without our tags are not ours."""
    by_cidr = {subnet.cidr: subnet.logical for subnet in desired.subnets}
    keyed: dict[str, SeenSubnet] = {}
    for subnet in found:
        tags = tagging.tag_dict(subnet.get("Tags"))
        seen = SeenSubnet(id=subnet["SubnetId"], tags=tags, owned=owned(tags), cidr=subnet["CidrBlock"],
                          zone=subnet["AvailabilityZone"], map_public_ip_on_launch=subnet["MapPublicIpOnLaunch"])
        candidates = [_logical(tags.get("Name"), desired.prefix) if seen.owned else None,
                      by_cidr.get(seen.cidr), seen.id if seen.owned else None]
        logical = next((c for c in candidates if c is not None and c not in keyed), None)
        if logical is not None:
            keyed[logical] = seen
    return keyed


def _key_groups(found: list[dict], desired: Network, owned) -> dict[str, SeenGroup]:
    """Security groups of our VPC by logical name, from their name (unique within a VPC): those
    the manifest names, and any other group of ours (which the plan deletes)."""
    wanted = {group.logical for group in desired.security_groups}
    keyed = {}
    for group in found:
        tags = tagging.tag_dict(group.get("Tags"))
        logical = _logical(group["GroupName"], desired.prefix)
        if logical in wanted or (owned(tags) and group["GroupName"] != "default"):
            keyed[logical or group["GroupId"]] = SeenGroup(id=group["GroupId"], tags=tags, owned=owned(tags),
                                                           description=group["Description"])
    return keyed


def _key_nat_gateways(found: list[dict], prefix: str) -> tuple[dict[str, SeenNat], dict[str, list[str]]]:
    """Live gateways by logical name, and the ids of the failed ones per logical name, sorted
    (deleted ones are history; failed ones too, once AWS drops them about an hour later)."""
    live, failed = [], {}
    for nat in found:
        seen = SeenNat(id=nat["NatGatewayId"], tags=tagging.tag_dict(nat.get("Tags")), state=nat["State"])
        if seen.state == "failed":
            logical = _logical(seen.tags.get("Name"), prefix) or seen.id
            failed[logical] = sorted([*failed.get(logical, []), seen.id])
        elif seen.state in ("pending", "available"):
            live.append(seen)
    return _by_logical(prefix, live), failed


def _routes(table: dict) -> dict[str, str]:
    targets = ("GatewayId", "NatGatewayId", "TransitGatewayId", "VpcPeeringConnectionId", "NetworkInterfaceId",
               "InstanceId", "EgressOnlyInternetGatewayId", "LocalGatewayId", "CarrierGatewayId")
    return {route["DestinationCidrBlock"]: next((route[t] for t in targets if route.get(t)), "")
            for route in table.get("Routes", [])
            if route.get("DestinationCidrBlock") and route.get("Origin") == "CreateRoute"}


def _seen_rule(rule: dict) -> SeenRule:
    for kind, key in (("cidr", "CidrIpv4"), ("cidr6", "CidrIpv6"), ("prefix-list", "PrefixListId")):
        if rule.get(key):
            source_kind, source = kind, rule[key]
            break
    else:
        source_kind, source = "group", rule.get("ReferencedGroupInfo", {}).get("GroupId", "")
    return SeenRule(rule["SecurityGroupRuleId"], rule["IpProtocol"], rule.get("FromPort", -1),
                    rule.get("ToPort", -1), source_kind, source, rule.get("Description", ""),
                    tagging.tag_dict(rule.get("Tags")))


def _seen_endpoint(endpoint: dict) -> SeenEndpoint:
    return SeenEndpoint(id=endpoint["VpcEndpointId"], tags=tagging.tag_dict(endpoint.get("Tags")),
                        service_name=endpoint["ServiceName"], type=endpoint["VpcEndpointType"],
                        route_tables=frozenset(endpoint.get("RouteTableIds", [])),
                        subnets=frozenset(endpoint.get("SubnetIds", [])),
                        security_groups=frozenset(g["GroupId"] for g in endpoint.get("Groups", [])),
                        private_dns=endpoint.get("PrivateDnsEnabled", False))


# --- plan, helpers ---------------------------------------------------------------------------



def _calls(diffs: tuple[FieldDiff, ...], by_field: dict[str, str]) -> tuple[str, ...]:
    """The API calls an update implies: one per differing field (CreateTags for tags)."""
    calls = [by_field[d.field] for d in diffs if d.field in by_field]
    if any(d.field == "tags" for d in diffs):
        calls.append("ec2:CreateTags")
    return tuple(dict.fromkeys(calls))


def _update(kind: str, logical: str, diffs: tuple[FieldDiff, ...], by_field: dict[str, str], payload,
            note: str = "") -> list[Change]:
    if not diffs:
        return []
    return [Change("update", kind, logical, diffs=diffs, calls=_calls(diffs, by_field), payload=payload, note=note)]


VPC_FIELDS = ("cidr", "enable_dns_support", "enable_dns_hostnames")
SUBNET_FIELDS = ("zone", "cidr", "map_public_ip_on_launch")


def _plan_vpc(desired: Network, seen: SeenVpc | None, ids: Ids) -> list[Change]:
    vpc = desired.vpc
    if seen is None:
        ids.fresh.add("vpc/vpc")
        return [Change("create", "vpc", vpc.logical, diffs=diff_fields(vpc, None, VPC_FIELDS),
                       calls=("ec2:CreateVpc", "ec2:ModifyVpcAttribute"), payload=vpc)]
    if seen.cidr != vpc.cidr:
        raise OrchestratorError(f"VPC {vpc.name} ({seen.id}) has the range {seen.cidr} but the manifest asks for "
                                f"{vpc.cidr}; AWS cannot change a VPC's range: restore network.cidr, or destroy "
                                "the environment and apply again")
    diffs = diff_fields(vpc, seen, VPC_FIELDS) + tagging.tag_diffs(seen.tags, desired.tags_for(vpc.name))
    return _update("vpc", vpc.logical, diffs, {"enable_dns_support": "ec2:ModifyVpcAttribute",
                                               "enable_dns_hostnames": "ec2:ModifyVpcAttribute"}, vpc)


def _plan_internet_gateway(desired: Network, observed: Facts, ids: Ids) -> list[Change]:
    gateway = desired.internet_gateway
    seen = observed.internet_gateways.get(gateway.logical)
    if seen is None:
        ids.fresh.add(f"internet_gateway/{gateway.logical}")
        return [Change("create", "internet_gateway", gateway.logical,
                       diffs=(FieldDiff("attached_to", None, ids("vpc", "vpc")),),
                       calls=("ec2:CreateInternetGateway", "ec2:AttachInternetGateway"), payload=gateway)]
    vpc_id = ids("vpc", "vpc")
    attach = () if vpc_id in seen.attached_to else (FieldDiff("attached_to", list(seen.attached_to), vpc_id),)
    retag = tagging.tag_diffs(seen.tags, desired.tags_for(gateway.name))
    return _update("internet_gateway", gateway.logical, attach + retag,
                   {"attached_to": "ec2:AttachInternetGateway"}, gateway)


def _plan_subnet(desired: Network, subnet: Subnet, seen: SeenSubnet | None, ids: Ids) -> list[Change]:
    calls = ("ec2:CreateSubnet",) + (("ec2:ModifySubnetAttribute",) if subnet.map_public_ip_on_launch else ())
    if seen is None:
        ids.fresh.add(f"subnet/{subnet.logical}")
        return [Change("create", "subnet", subnet.logical, diffs=diff_fields(subnet, None, SUBNET_FIELDS),
                       calls=calls, payload=subnet)]
    moved = diff_fields(subnet, seen, ("zone", "cidr"))
    if moved and not seen.owned:  # found by its range alone: not ours to delete
        raise tagging.not_ours("subnet", f"{seen.id} ({seen.cidr} in {seen.zone}, where the manifest wants "
                                         f"{subnet.name} in {subnet.zone})")
    if moved:
        ids.fresh.add(f"subnet/{subnet.logical}")
        return [Change("replace", "subnet", subnet.logical, diffs=moved, calls=("ec2:DeleteSubnet", *calls),
                       payload=subnet, note="a subnet cannot change its range or zone",
                       outage=f"{subnet.name} has the same name, and a new range may overlap the old one: "
                              "nothing can run in it until it exists again, and the delete fails while "
                              "anything (tasks, load balancer, mount targets, endpoints) still uses it")]
    diffs = (diff_fields(subnet, seen, ("map_public_ip_on_launch",))
             + tagging.tag_diffs(seen.tags, desired.tags_for(subnet.name)))
    return _update("subnet", subnet.logical, diffs, {"map_public_ip_on_launch": "ec2:ModifySubnetAttribute"},
                   subnet, note="" if seen.owned else "adopted: the subnet lost its ownership tags")


def _plan_address(desired: Network, address: Address, seen: Seen | None, ids: Ids) -> list[Change]:
    if seen is None:
        ids.fresh.add(f"eip/{address.logical}")
        return [Change("create", "eip", address.logical, calls=("ec2:AllocateAddress",), payload=address)]
    return _update("eip", address.logical, tagging.tag_diffs(seen.tags, desired.tags_for(address.name)), {}, address)


def _plan_nat_gateway(desired: Network, nat: NatGateway, observed: Facts, ids: Ids) -> list[Change]:
    seen = observed.nat_gateways.get(nat.logical)
    if seen is None:
        ids.fresh.add(f"nat_gateway/{nat.logical}")
        failed = observed.failed_nat_gateways.get(nat.logical, [])
        return [Change("create", "nat_gateway", nat.logical,
                       diffs=(FieldDiff("subnet", None, ids("subnet", nat.subnet)),
                              FieldDiff("allocation", None, ids("eip", nat.address))),
                       calls=("ec2:CreateNatGateway",), payload=nat,
                       note=f"{len(failed)} earlier attempt(s) failed: {', '.join(failed)}" if failed else "")]
    diffs = (diff_fields({"state": "available"}, seen, ("state",))
             + tagging.tag_diffs(seen.tags, desired.tags_for(nat.name)))
    note = "wait until it is available" if seen.state != "available" else ""
    return _update("nat_gateway", nat.logical, diffs, {}, nat, note=note)


def _plan_route_table(desired: Network, table: RouteTable, observed: Facts, ids: Ids) -> list[Change]:
    seen = observed.route_tables.get(table.logical)
    key = f"route_table/{table.logical}"
    if seen is None:
        ids.fresh.add(key)
    table_id = ids("route_table", table.logical)
    routes = seen.routes if seen else {}
    diffs, set_routes = [], []
    for route in table.routes:
        target = ids(route.target_kind, route.target)
        if routes.get(route.destination) != target:
            diffs.append(FieldDiff(f"route {route.destination}", routes.get(route.destination), target))
            set_routes.append(route)
    wanted_destinations = {route.destination for route in table.routes}
    delete_routes = tuple(sorted(d for d in routes if d not in wanted_destinations))
    diffs += [FieldDiff(f"route {d}", routes[d], None) for d in delete_routes]
    attach, associate, move = [], False, False
    for subnet in table.subnets:
        subnet_id = ids("subnet", subnet)
        association = observed.associations.get(subnet_id)
        if association is None or association.table != table_id:
            diffs.append(FieldDiff(f"association {subnet}", association.table if association else None, table_id))
            attach.append(subnet)
            associate, move = associate or association is None, move or association is not None
    wanted_subnets = {ids("subnet", subnet) for subnet in table.subnets}
    detach = tuple(sorted(subnet_id for subnet_id, association in observed.associations.items()
                          if seen and association.table == seen.id and subnet_id not in wanted_subnets))
    diffs += [FieldDiff(f"association {subnet_id}", table_id, None) for subnet_id in detach]
    work = TableWork(table, tuple(set_routes), delete_routes, tuple(attach), detach)
    calls = [*(("ec2:CreateRoute",) if any(r.destination not in routes for r in set_routes) else ()),
             *(("ec2:ReplaceRoute",) if any(r.destination in routes for r in set_routes) else ()),
             *(("ec2:DeleteRoute",) if delete_routes else ()),
             *(("ec2:AssociateRouteTable",) if associate else ()),
             *(("ec2:ReplaceRouteTableAssociation",) if move else ()),
             *(("ec2:DisassociateRouteTable",) if detach else ())]
    if seen is None:
        return [Change("create", "route_table", table.logical, diffs=tuple(diffs),
                       calls=("ec2:CreateRouteTable", *calls), payload=work)]
    tags = tagging.tag_diffs(seen.tags, desired.tags_for(table.name))
    if not diffs and not tags:
        return []
    return [Change("update", "route_table", table.logical, diffs=(*diffs, *tags),
                   calls=(*calls, *(("ec2:CreateTags",) if tags else ())), payload=work)]


def _plan_security_group(desired: Network, group: SecurityGroup, seen: SeenGroup | None, ids: Ids) -> list[Change]:
    if seen is None:
        ids.fresh.add(f"security_group/{group.logical}")
        return [Change("create", "security_group", group.logical,
                       diffs=(FieldDiff("description", None, group.description),),
                       calls=("ec2:CreateSecurityGroup",), payload=group)]
    if seen.description != group.description and not seen.owned:  # found by its name alone: not ours to delete
        raise tagging.not_ours("security group", f"{group.name} ({seen.id}, described {seen.description!r} "
                                                 f"where the manifest says {group.description!r})")
    if seen.description != group.description:
        ids.fresh.add(f"security_group/{group.logical}")
        return [Change("replace", "security_group", group.logical,
                       diffs=(FieldDiff("description", seen.description, group.description),),
                       calls=("ec2:RevokeSecurityGroupIngress", "ec2:DeleteSecurityGroup", "ec2:CreateSecurityGroup"),
                       payload=group, note="a security group's description cannot change",
                       outage=f"a security group's name is unique in its VPC: {group.name} is deleted first, "
                              "which fails while a network interface (a task, the load balancer) uses it")]
    retag = tagging.tag_diffs(seen.tags, desired.tags_for(group.name))
    return _update("security_group", group.logical, retag, {}, group,
                   note="" if seen.owned else "adopted: the group lost its ownership tags")


def _plan_ingress(group: SecurityGroup, tags: dict[str, str], observed: Facts, ids: Ids,
                  recorded: dict) -> list[Change]:
    """Ingress rules as a set: one rule per (port, source). Missing ones are added, any other
    rule (added by hand, or left over) is revoked, a changed description is rewritten, and a
    kept rule missing one of our `tags` (say the manifest gained a tag) gets it.

    A description is compared with what EC2 reports, or, where it reports none, with the one
    recorded at the last apply (three-way: moto drops the description of a rule that references
    a group)."""
    last_descriptions = recorded.get("descriptions", {})
    group_id = ids("security_group", group.logical)
    present = [] if is_unknown(group_id) else observed.rules.get(group_id, [])
    wanted = {_rule_key(rule, ids): rule for rule in group.rules}
    names = {seen.id: logical for logical, seen in observed.security_groups.items()}
    kept: dict[tuple, SeenRule] = {}
    revoke: list[SeenRule] = []
    for rule in present:
        if rule.key() in wanted and rule.key() not in kept:
            kept[rule.key()] = rule
        else:
            revoke.append(rule)
    add = [rule for key, rule in wanted.items() if key not in kept]
    redescribe = [(kept[key], rule) for key, rule in wanted.items() if key in kept and rule.description
                  != (kept[key].description or last_descriptions.get(rule.label, ""))]
    retag = [(kept[key], rule, to_set) for key, rule in wanted.items()
             if key in kept and (to_set := tagging.reconcile(kept[key].tags, tags))]
    diffs = ([FieldDiff("ingress", None, f"{rule.label} ({rule.description})") for rule in add]
             + [FieldDiff("ingress", _seen_label(rule, names), None) for rule in revoke]
             + [FieldDiff(f"ingress {rule.label} description", seen.description, rule.description)
                for seen, rule in redescribe]
             + [FieldDiff(f"ingress {rule.label} tags", {key: seen.tags.get(key) for key in to_set}, to_set)
                for seen, rule, to_set in retag])
    if not diffs:
        return []
    calls = [*(("ec2:RevokeSecurityGroupIngress",) if revoke else ()),
             *(("ec2:AuthorizeSecurityGroupIngress",) if add else ()),
             *(("ec2:ModifySecurityGroupRules",) if redescribe else ()),
             *(("ec2:CreateTags",) if retag else ())]
    work = IngressWork(tuple(add), tuple(rule.id for rule in revoke),
                       tuple((seen.id, rule) for seen, rule in redescribe),
                       tuple((seen.id, tuple(sorted(to_set.items()))) for seen, _, to_set in retag))
    action = "create" if is_unknown(group_id) else "update"
    record = {"descriptions": {rule.label: rule.description for rule in group.rules}}
    return [Change(action, "ingress", group.logical, diffs=tuple(diffs), calls=tuple(calls), payload=work,
                   record=record)]


def _rule_key(rule: Rule, ids: Ids) -> tuple:
    """Compares with `SeenRule.key()`; a group not created yet is keyed by its logical name, so
    two new sources stay two rules (and match nothing that exists)."""
    source = rule.source
    if rule.source_kind == "group":
        group_id = ids("security_group", rule.source)
        source = ("new group", rule.source) if is_unknown(group_id) else group_id
    return ("tcp", rule.port, rule.port, rule.source_kind, source)


def _seen_label(rule: SeenRule, group_names: dict[str, str]) -> str:
    protocol = "all traffic" if rule.protocol == "-1" else rule.protocol
    ports = "" if rule.protocol == "-1" else (
        f" {rule.from_port}" if rule.from_port == rule.to_port else f" {rule.from_port}-{rule.to_port}")
    return f"{protocol}{ports} from {group_names.get(rule.source, rule.source)}"


def _plan_endpoint(desired: Network, endpoint: Endpoint, seen: SeenEndpoint | None, ids: Ids) -> list[Change]:
    wanted = {"route_tables": sorted(ids("route_table", t) for t in endpoint.route_tables),
              "subnets": sorted(ids("subnet", s) for s in endpoint.subnets),
              "security_groups": sorted(ids("security_group", g) for g in endpoint.security_groups)}
    if endpoint.type == "Interface":
        wanted["private_dns"] = endpoint.private_dns
    if seen is None:
        return [Change("create", "endpoint", endpoint.logical,
                       diffs=(FieldDiff("service_name", None, endpoint.service_name),
                              *(FieldDiff(k, None, v) for k, v in wanted.items() if v)),
                       calls=("ec2:CreateVpcEndpoint",), payload=endpoint)]
    present = {"route_tables": sorted(seen.route_tables), "subnets": sorted(seen.subnets),
               "security_groups": sorted(seen.security_groups), "private_dns": seen.private_dns}
    diffs = diff_fields(wanted, present, tuple(wanted)) + tagging.tag_diffs(seen.tags, desired.tags_for(endpoint.name))
    modify = {k: "ec2:ModifyVpcEndpoint" for k in wanted}
    return _update("endpoint", endpoint.logical, diffs, modify, endpoint)


def _deletes(observed: Facts, keep: Network | None) -> list[Change]:
    """Deletes of what is ours and not kept (everything of ours when `keep` is None), in DELETE_ORDER.

    Before security groups go, rules that reference groups are revoked: AWS refuses to delete a
    group another group's rule still points at."""
    changes = []
    for kind in DELETE_ORDER:
        wanted = {r.logical for r in keep.of_kind(kind)} if keep else set()
        if kind == "ingress":
            changes += _revokes_before_group_deletes(observed, wanted)
            continue
        if kind == "vpc" and keep is not None:
            continue
        for logical, seen in sorted(observed.of_kind(kind).items()):
            if seen.owned and logical not in wanted:
                changes.append(Change("delete", kind, logical, diffs=(FieldDiff("id", seen.id, None),),
                                      calls=DELETE_CALLS[kind], note="" if keep is None else "not in the manifest"))
    return changes


def _revokes_before_group_deletes(observed: Facts, kept_groups: set[str]) -> list[Change]:
    changes = []
    names = {seen.id: logical for logical, seen in observed.security_groups.items()}
    for logical, seen in sorted(observed.security_groups.items()):
        if not seen.owned or logical in kept_groups:
            continue
        referencing = [rule for rule in observed.rules.get(seen.id, []) if rule.source_kind == "group"]
        if referencing:
            changes.append(Change("delete", "ingress", logical,
                                  diffs=tuple(FieldDiff("ingress", _seen_label(r, names), None) for r in referencing),
                                  calls=DELETE_CALLS["ingress"],
                                  payload=IngressWork(revoke=tuple(rule.id for rule in referencing))))
    return changes



# --- apply, helpers --------------------------------------------------------------------------


def _tag_spec(ctx, resource_type: str, name: str) -> list[dict]:
    return tagging.ec2_tag_specifications(resource_type, ctx.tags(), name)


def _with_token(ctx, change: Change, params: dict, *salt: str) -> dict:
    """`params` and an EC2 `ClientToken` derived from them (parent ids, tags …) and `salt`.

    A retry of the same request reuses the token, as it must. EC2 answers a token reused with
    other parameters with IdempotentParameterMismatch (and one reused with the same parameters
    with the resource it made then), so a different request, such as an apply after a destroy
    (a new VPC, subnets, addresses), gets a new token.
    """
    return {**params, "ClientToken": ctx.token(change.key, salt=json.dumps([params, *salt], sort_keys=True))}


def _eventually(call, **params):
    return eventually(call, retry_on=NOT_FOUND, **params)


def _delete(ctx, what: str, call, settle_first: bool = True, **params) -> None:
    """A delete that tolerates the resource being gone already and, while AWS says it is still
    in use, tries again with backoff for up to IN_USE_TIMEOUT, reporting progress. Deletions
    awaited so far (NAT gateways, endpoints: what holds subnets and addresses) settle first,
    unless this is one of them (they are awaited together)."""
    if settle_first:
        ctx.settle()
    timeout = IN_USE_TIMEOUT if ctx.destroying else IN_USE_TIMEOUT_APPLYING
    unless_code(NOT_FOUND, waiters.retry_while, what, lambda: call(**params), STILL_IN_USE,
                timeout=timeout, stop=ctx.stop, log=ctx.log)


def _retag(ctx, change: Change, seen: Seen) -> None:
    to_set = change.tags_to_set()
    if to_set:
        ctx.client("ec2").create_tags(Resources=[seen.id], Tags=tagging.tag_list(to_set))
        seen.tags = {**seen.tags, **to_set}
        seen.owned = True


def _set_dns_attributes(ec2, vpc: Vpc, seen: SeenVpc) -> None:
    """One call per attribute (the API takes one at a time); support before hostnames, which needs it."""
    for attribute, key in (("enable_dns_support", "EnableDnsSupport"), ("enable_dns_hostnames", "EnableDnsHostnames")):
        if getattr(seen, attribute) != getattr(vpc, attribute):
            _eventually(ec2.modify_vpc_attribute, VpcId=seen.id, **{key: {"Value": getattr(vpc, attribute)}})
            setattr(seen, attribute, getattr(vpc, attribute))


def _set_public_ip_on_launch(ec2, subnet: Subnet, seen: SeenSubnet) -> None:
    if seen.map_public_ip_on_launch != subnet.map_public_ip_on_launch:
        _eventually(ec2.modify_subnet_attribute, SubnetId=seen.id,
                    MapPublicIpOnLaunch={"Value": subnet.map_public_ip_on_launch})
        seen.map_public_ip_on_launch = subnet.map_public_ip_on_launch


def _attach_gateway(ec2, seen: SeenGateway, vpc_id: str) -> None:
    _eventually(ec2.attach_internet_gateway, InternetGatewayId=seen.id, VpcId=vpc_id)
    seen.attached_to = (*seen.attached_to, vpc_id)


def _associate(ec2, table_id: str, subnet_id: str, associations: dict[str, Association]) -> None:
    """Associate a subnet, moving it from another table if it has one (a subnet has at most one)."""
    current = associations.get(subnet_id)
    if current is None:
        created = _eventually(ec2.associate_route_table, RouteTableId=table_id, SubnetId=subnet_id)
        associations[subnet_id] = Association(created["AssociationId"], table_id)
    elif current.table != table_id:
        moved = ec2.replace_route_table_association(AssociationId=current.id, RouteTableId=table_id)
        associations[subnet_id] = Association(moved["NewAssociationId"], table_id)


def _revoke(ec2, group_id: str, rule_ids: list[str], observed: Facts) -> None:
    ec2.revoke_security_group_ingress(GroupId=group_id, SecurityGroupRuleIds=rule_ids)
    observed.rules[group_id] = [rule for rule in observed.rules.get(group_id, []) if rule.id not in rule_ids]


def _retag_rules(ec2, retag: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]) -> None:
    """CreateTags once per distinct tag set (a manifest tag change gives every rule the same one)."""
    by_tags: dict[tuple, list[str]] = {}
    for rule_id, tags in retag:
        by_tags.setdefault(tags, []).append(rule_id)
    for tags, rule_ids in by_tags.items():
        ec2.create_tags(Resources=rule_ids, Tags=tagging.tag_list(dict(tags)))


def _permission(rule: Rule, ids: Ids) -> dict:
    """`IpPermissions` entry for one rule; a group source goes in UserIdGroupPairs."""
    described = {"Description": rule.description} if rule.description else {}
    source = ({"UserIdGroupPairs": [{"GroupId": ids.now("security_group", rule.source), **described}]}
              if rule.source_kind == "group" else {"IpRanges": [{"CidrIp": rule.source, **described}]})
    return {"IpProtocol": "tcp", "FromPort": rule.port, "ToPort": rule.port, **source}


def _rule_request(rule: Rule, ids: Ids) -> dict:
    source = ({"ReferencedGroupId": ids.now("security_group", rule.source)} if rule.source_kind == "group"
              else {"CidrIpv4": rule.source})
    return {"IpProtocol": "tcp", "FromPort": rule.port, "ToPort": rule.port, "Description": rule.description,
            **source}


def _state_or_deleted(describe, key: str, **params) -> str:
    """A resource's state (lower case), or "deleted" once EC2 no longer knows it."""
    try:
        found = describe(**params)[key]
    except ClientError as error:
        if error_code(error) in NOT_FOUND:
            return "deleted"
        raise
    return found[0]["State"].lower() if found else "deleted"


def _nat_available(ec2, name: str, seen: SeenNat) -> Wait:
    """botocore's `nat_gateway_available` acceptors (failed, deleting and deleted end it; a
    gateway not visible yet is retried), with AWS's reason on failure."""
    what = f"NAT gateway {name} ({seen.id})"
    check = botocore_check(ec2, "nat_gateway_available", what, NatGatewayIds=[seen.id], explain=lambda r: " ".join(
        filter(None, (r["NatGateways"][0].get("FailureCode"), r["NatGateways"][0].get("FailureMessage")))))

    def check_and_note() -> tuple[bool, str]:
        done, seen.state = check()
        return done, seen.state

    return Wait(what, check_and_note)


def _endpoint_available(ec2, name: str, endpoint_id: str) -> Wait:
    """EC2 has no waiter for VPC endpoints: their states are read here (a new one may not be
    visible yet, so the describe retries NotFound)."""
    def check() -> tuple[bool, str]:
        found = _eventually(ec2.describe_vpc_endpoints, VpcEndpointIds=[endpoint_id])["VpcEndpoints"][0]
        state = found["State"].lower()
        if state in ("failed", "rejected", "expired", "deleting", "deleted"):
            raise WaitFailed(f"VPC endpoint {name} ({endpoint_id}) is {state}: "
                             f"{found.get('LastError', {}).get('Message', '')}".rstrip(": "))
        return state == "available", state

    return Wait(f"VPC endpoint {name} ({endpoint_id})", check)


STEP = VpcStep
