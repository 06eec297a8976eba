"""Pure planning tests for the vpc step: desired model, plan, destroy plan and outputs, no AWS."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from orchestrator.errors import OrchestratorError
from orchestrator.manifest import load_manifest
from orchestrator.model import KNOWN_AFTER_APPLY, as_plain
from tests import harness
from steps.vpc import (Association, Facts, IngressWork, Seen, SeenEndpoint, SeenGateway, SeenGroup, SeenNat,
                       SeenRule, SeenSubnet, SeenTable, SeenVpc, VpcStep)
from tests.conftest import MANIFESTS

STEP = VpcStep()
INPUTS = harness.inputs(STEP)


@pytest.fixture(scope="module")
def dev():
    return load_manifest(MANIFESTS, "dev")


def with_network(manifest, **changes):
    return manifest.model_copy(update={"network": manifest.network.model_copy(update=changes)})


def applied(desired) -> Facts:
    """What AWS holds right after a clean apply of `desired` (ids made from logical names)."""
    facts = Facts()
    tags = desired.tags_for
    facts.vpc = SeenVpc(id="vpc-1", tags=tags(desired.vpc.name), cidr=desired.vpc.cidr,
                        enable_dns_support=True, enable_dns_hostnames=True)
    for s in desired.subnets:
        facts.subnets[s.logical] = SeenSubnet(id=f"subnet-{s.logical}", tags=tags(s.name), cidr=s.cidr, zone=s.zone,
                                              map_public_ip_on_launch=s.map_public_ip_on_launch)
    gateway = desired.internet_gateway
    facts.internet_gateways["igw"] = SeenGateway(id="igw-1", tags=tags(gateway.name), attached_to=("vpc-1",))
    for a in desired.addresses:
        facts.addresses[a.logical] = Seen(id=f"eipalloc-{a.logical}", tags=tags(a.name))
    for n in desired.nat_gateways:
        facts.nat_gateways[n.logical] = SeenNat(id=f"{n.logical}-id", tags=tags(n.name), state="available")
    target_ids = {"internet_gateway": "igw-1", "nat_gateway": None}
    for t in desired.route_tables:
        routes = {r.destination: target_ids[r.target_kind] or f"{r.target}-id" for r in t.routes}
        facts.route_tables[t.logical] = SeenTable(id=f"rtb-{t.logical}", tags=tags(t.name), routes=routes)
        for subnet in t.subnets:
            facts.associations[f"subnet-{subnet}"] = Association(f"rtbassoc-{subnet}", f"rtb-{t.logical}")
    for g in desired.security_groups:
        facts.security_groups[g.logical] = SeenGroup(id=f"sg-{g.logical}", tags=tags(g.name),
                                                     description=g.description)
        facts.rules[f"sg-{g.logical}"] = [
            SeenRule(f"sgr-{g.logical}-{i}", "tcp", r.port, r.port, r.source_kind,
                     f"sg-{r.source}" if r.source_kind == "group" else r.source, r.description, dict(desired.tags))
            for i, r in enumerate(g.rules)]
    for e in desired.endpoints:
        facts.endpoints[e.logical] = SeenEndpoint(
            id=f"vpce-{e.logical}", tags=tags(e.name), service_name=e.service_name, type=e.type,
            route_tables=frozenset(f"rtb-{t}" for t in e.route_tables),
            subnets=frozenset(f"subnet-{s}" for s in e.subnets),
            security_groups=frozenset(f"sg-{g}" for g in e.security_groups), private_dns=e.private_dns)
    return facts


def keys(changes) -> list[str]:
    return [f"{c.action} {c.key}" for c in changes]


def only(changes):
    assert len(changes) == 1, keys(changes)
    return changes[0]


# --- desired --------------------------------------------------------------------------------


def test_desired_names_everything_from_the_manifest(dev):
    desired = STEP.desired(dev, INPUTS)
    assert desired.vpc.name == "gamepulse-dev-vpc" and desired.vpc.cidr == "10.20.0.0/16"
    assert desired.zones == ("us-east-1a", "us-east-1b")
    assert [(s.name, s.cidr, s.map_public_ip_on_launch) for s in desired.subnets] == [
        ("gamepulse-dev-public-us-east-1a", "10.20.32.0/24", True),
        ("gamepulse-dev-public-us-east-1b", "10.20.33.0/24", True),
        ("gamepulse-dev-private-us-east-1a", "10.20.0.0/20", False),
        ("gamepulse-dev-private-us-east-1b", "10.20.16.0/20", False)]
    assert [n.subnet for n in desired.nat_gateways] == ["public-us-east-1a"]
    assert [t.logical for t in desired.route_tables] == ["public", "private"]
    tags = desired.tags_for("x")
    assert tags["orchestrator:app"] == "gamepulse" and tags["orchestrator:step"] == "vpc"
    assert tags["project"] == "gamepulse" and tags["Name"] == "x"


def test_desired_security_groups_resolve_sources(dev):
    groups = {g.logical: g for g in STEP.desired(dev, INPUTS).security_groups}
    assert groups["alb"].name == "gamepulse-dev-alb"
    assert [(r.port, r.source) for r in groups["alb"].rules] == [(80, "0.0.0.0/0"), (443, "0.0.0.0/0")]
    assert [(r.port, r.source_kind, r.source) for r in groups["endpoints"].rules] == [(443, "cidr", "10.20.0.0/16")]
    # Grafana from the load balancer, the sidecar's 2, and 4 from the monitoring group itself
    assert len(groups["monitoring"].rules) == 7
    assert {r.source for r in groups["efs"].rules} == {"monitoring"}


def platform_hops(manifest) -> set[tuple[str, int, str]]:
    """(security group, TCP port, source) of every connection the platform makes, read from what
    it runs: the load balancer's listeners and target groups, the rendered collector, Prometheus
    and Grafana configs, the tasks' EFS volumes and the VPC endpoints."""
    from urllib.parse import urlsplit

    from steps import bundles

    tasks = manifest.services.tasks
    rendered = bundles.render(manifest, bundles.Facts(loki_bucket="b", namespace="ns.local", region="us-east-1",
                                                      cluster_arn="arn:aws:ecs:us-east-1:1:cluster/c",
                                                      load_balancer_dns="lb.example"))
    group_of = {name: task.security_group for name, task in tasks.items()}
    app_group = group_of["gamepulse"]
    files = {service: {path: yaml.safe_load(content) for path, content in bundle.files.items()
                       if path.endswith((".yaml", ".yml"))} for service, bundle in rendered.items()}

    def port_of(address: str) -> int:
        return urlsplit(address if "://" in address else f"tcp://{address}").port

    def service_of(address: str) -> str:
        return urlsplit(address if "://" in address else f"tcp://{address}").hostname.split(".")[0]

    alb = manifest.load_balancer.security_group
    hops = {(alb, port, "0.0.0.0/0") for port in (80, 443)}  # users, HTTP and HTTPS
    for name, task in tasks.items():  # load balancer -> each service behind a target group
        if task.target_group:
            hops.add((group_of[name], manifest.load_balancer.target_groups[task.target_group].port, alb))
    collector = files["otel-collector"]["config.yaml"]
    for exporter in collector["exporters"].values():  # sidecar -> Loki and Jaeger
        if "endpoint" in exporter and not exporter["endpoint"].startswith("0.0.0.0"):
            hops.add((group_of[service_of(exporter["endpoint"])], port_of(exporter["endpoint"]), app_group))
    prometheus = files["prometheus"]["prometheus.yml"]
    for job in prometheus["scrape_configs"]:  # Prometheus -> the sidecars and the other monitoring services
        for sd in job.get("aws_sd_configs", []):
            replaced = [r["replacement"] for r in job.get("relabel_configs", []) if r.get("target_label") == "__address__"]
            hops.add((app_group, int(replaced[0].rsplit(":", 1)[1]) if replaced else sd["port"], group_of["prometheus"]))
        for sd in job.get("dns_sd_configs", []):
            hops.add((group_of[sd["names"][0].split(".")[0]], sd["port"], group_of["prometheus"]))
    for source in files["grafana"]["datasources/datasources.yaml"]["datasources"]:  # Grafana -> its datasources
        if "url" in source:
            hops.add((group_of[service_of(source["url"])], port_of(source["url"]), group_of["grafana"]))
    for name, task in tasks.items():  # tasks with a data volume -> EFS (NFS)
        if task.data_volume:
            hops.add((manifest.efs.security_group, 2049, group_of[name]))
    hops.add((manifest.network.endpoints.security_group, 443, "vpc"))  # tasks -> the interface endpoints
    return hops


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_every_hop_the_platform_makes_is_open_and_nothing_else_is(env):
    """PLATFORM.md: each port opened only to who uses it."""
    manifest = load_manifest(MANIFESTS, env)
    desired = STEP.desired(manifest, INPUTS)
    opened = {(group.logical, rule.port, "vpc" if rule.source == manifest.network.cidr else rule.source)
              for group in desired.security_groups for rule in group.rules}
    needed = platform_hops(manifest)
    assert needed - opened == set(), "needed but closed"
    assert opened - needed == set(), "open but used by nothing"
    assert ("monitoring", 3000, "alb") in needed and ("app", 8889, "monitoring") in needed
    assert ("monitoring", 3100, "app") in needed and ("monitoring", 4317, "app") in needed
    assert ("monitoring", 9090, "monitoring") in needed and ("efs", 2049, "monitoring") in needed


def test_desired_endpoints(dev):
    endpoints = {e.logical: e for e in STEP.desired(dev, INPUTS).endpoints}
    assert set(endpoints) == {"s3", "ecr-api", "ecr-dkr", "secretsmanager", "logs"}
    assert endpoints["s3"].type == "Gateway" and endpoints["s3"].route_tables == ("private",)
    ecr = endpoints["ecr-api"]
    assert ecr.service_name == "com.amazonaws.us-east-1.ecr.api" and ecr.type == "Interface"
    assert ecr.subnets == ("private-us-east-1a", "private-us-east-1b")
    assert ecr.security_groups == ("endpoints",) and ecr.private_dns


def test_per_zone_nat_gives_each_zone_its_gateway_and_table():
    desired = STEP.desired(load_manifest(MANIFESTS, "prod"), INPUTS)
    assert [n.logical for n in desired.nat_gateways] == ["nat-us-east-1a", "nat-us-east-1b", "nat-us-east-1c"]
    assert len(desired.addresses) == 3
    private = [t for t in desired.route_tables if t.logical != "public"]
    assert [(t.logical, t.routes[0].target, t.subnets) for t in private] == [
        (f"private-{z}", f"nat-{z}", (f"private-{z}",)) for z in ("us-east-1a", "us-east-1b", "us-east-1c")]
    s3 = next(e for e in desired.endpoints if e.logical == "s3")
    assert s3.route_tables == tuple(t.logical for t in private)


def test_no_nat_means_no_gateway_no_address_and_no_default_route(dev):
    desired = STEP.desired(with_network(dev, nat_gateways="none"), INPUTS)
    assert desired.nat_gateways == () and desired.addresses == ()
    private = next(t for t in desired.route_tables if t.logical == "private")
    assert private.routes == () and len(private.subnets) == 2


# --- plan -----------------------------------------------------------------------------------


def test_plan_from_nothing_creates_everything_in_dependency_order(dev):
    changes = STEP.plan(STEP.desired(dev, INPUTS), Facts(), {})
    assert all(c.action == "create" for c in changes)
    kinds = [c.kind for c in changes]
    assert kinds == ["vpc", "internet_gateway"] + ["subnet"] * 4 + ["eip", "nat_gateway"] + ["route_table"] * 2 \
        + ["security_group"] * 5 + ["ingress"] * 5 + ["endpoint"] * 5
    vpc = changes[0]
    assert vpc.calls == ("ec2:CreateVpc", "ec2:ModifyVpcAttribute")
    assert {d.field: d.new for d in vpc.diffs}["enable_dns_hostnames"] is True
    private = next(c for c in changes if c.key == "route_table/private")
    assert {d.field: d.new for d in private.diffs}["route 0.0.0.0/0"] == KNOWN_AFTER_APPLY
    monitoring = next(c for c in changes if c.key == "ingress/monitoring")
    assert len(monitoring.payload.add) == 7  # new source groups stay a rule per port and group


def test_plan_with_everything_in_place_is_empty(dev):
    desired = STEP.desired(dev, INPUTS)
    assert STEP.plan(desired, applied(desired), {}) == []


def test_dns_hostnames_turned_off_is_turned_on(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    facts.vpc.enable_dns_hostnames = False
    change = only(STEP.plan(desired, facts, {}))
    assert (change.action, change.key, change.calls) == ("update", "vpc/vpc", ("ec2:ModifyVpcAttribute",))
    assert [(d.field, d.old, d.new) for d in change.diffs] == [("enable_dns_hostnames", False, True)]


def test_vpc_range_change_is_refused_with_the_vpc_named(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    facts.vpc.cidr = "10.99.0.0/16"
    with pytest.raises(OrchestratorError, match="gamepulse-dev-vpc .*10.99.0.0/16.*10.20.0.0/16"):
        STEP.plan(desired, facts, {})


def test_public_subnet_that_stopped_mapping_public_ips_is_updated(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    facts.subnets["public-us-east-1b"].map_public_ip_on_launch = False
    change = only(STEP.plan(desired, facts, {}))
    assert (change.key, change.calls) == ("subnet/public-us-east-1b", ("ec2:ModifySubnetAttribute",))


def test_missing_subnet_tags_are_put_back(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    subnet = facts.subnets["private-us-east-1a"]
    subnet.tags = {k: v for k, v in subnet.tags.items() if k not in ("Name", "cost-center")}
    change = only(STEP.plan(desired, facts, {}))
    assert (change.action, change.key, change.calls) == ("update", "subnet/private-us-east-1a", ("ec2:CreateTags",))
    assert change.diffs[0].new == {"Name": "gamepulse-dev-private-us-east-1a", "cost-center": "games"}


def test_subnet_range_change_replaces_it_and_reassociates(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    facts.subnets["public-us-east-1a"].cidr = "10.20.200.0/24"
    changes = STEP.plan(desired, facts, {})
    assert keys(changes) == ["replace subnet/public-us-east-1a", "update route_table/public"]
    assert changes[0].calls == ("ec2:DeleteSubnet", "ec2:CreateSubnet", "ec2:ModifySubnetAttribute")
    assert changes[1].payload.attach == ("public-us-east-1a",)
    assert changes[1].diffs[0].field == "association public-us-east-1a"


def test_deleted_default_route_comes_back(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    del facts.route_tables["public"].routes["0.0.0.0/0"]
    change = only(STEP.plan(desired, facts, {}))
    assert (change.key, change.calls) == ("route_table/public", ("ec2:CreateRoute",))
    assert [(d.field, d.old, d.new) for d in change.diffs] == [("route 0.0.0.0/0", None, "igw-1")]


def test_route_to_the_wrong_target_is_replaced_and_a_foreign_route_removed(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    facts.route_tables["private"].routes.update({"0.0.0.0/0": "nat-gone", "192.168.0.0/16": "pcx-1"})
    change = only(STEP.plan(desired, facts, {}))
    assert change.calls == ("ec2:ReplaceRoute", "ec2:DeleteRoute")
    assert change.payload.delete_routes == ("192.168.0.0/16",)


def test_subnet_on_another_table_is_moved_back(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    facts.associations["subnet-private-us-east-1b"] = Association("rtbassoc-x", "rtb-main")
    change = only(STEP.plan(desired, facts, {}))
    assert (change.key, change.calls) == ("route_table/private", ("ec2:ReplaceRouteTableAssociation",))
    assert [(d.old, d.new) for d in change.diffs] == [("rtb-main", "rtb-private")]


def test_ingress_is_managed_as_a_set(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    https = desired.security_groups[0].rules[1]
    assert https.port == 443
    facts.rules["sg-alb"] = [r for r in facts.rules["sg-alb"] if r.from_port != 443]
    facts.rules["sg-alb"].append(SeenRule("sgr-by-hand", "tcp", 22, 22, "cidr", "0.0.0.0/0", "ssh"))
    facts.rules["sg-app"].append(SeenRule("sgr-by-hand-2", "-1", -1, -1, "group", "sg-efs", ""))
    changes = STEP.plan(desired, facts, {})
    assert keys(changes) == ["update ingress/alb", "update ingress/app"]
    alb, app = changes
    assert alb.calls == ("ec2:RevokeSecurityGroupIngress", "ec2:AuthorizeSecurityGroupIngress")
    assert alb.payload == IngressWork(add=(https,), revoke=("sgr-by-hand",))
    assert [(d.old, d.new) for d in alb.diffs] == [
        (None, "tcp 443 from 0.0.0.0/0 (HTTP and HTTPS from anywhere)"), ("tcp 22 from 0.0.0.0/0", None)]
    assert [(d.old, d.new) for d in app.diffs] == [("all traffic from efs", None)]


def test_changed_rule_description_is_rewritten(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    rule = facts.rules["sg-app"][0]
    facts.rules["sg-app"][0] = dataclasses.replace(rule, description="old words")
    change = only(STEP.plan(desired, facts, {}))
    assert change.calls == ("ec2:ModifySecurityGroupRules",)
    assert [(d.field, d.old, d.new) for d in change.diffs] == [
        ("ingress tcp 8080 from alb description", "old words", "API traffic from the load balancer")]


def test_a_tag_added_to_the_manifest_reaches_the_existing_rules(dev):
    before = STEP.desired(dev, INPUTS)
    facts = applied(before)
    desired = STEP.desired(dev.model_copy(update={"tags": {**dev.tags, "team": "games"}}), INPUTS)
    changes = [c for c in STEP.plan(desired, facts, {}) if c.kind == "ingress"]
    assert len(changes) == len(desired.security_groups)
    alb = next(c for c in changes if c.name == "alb")
    assert (alb.action, alb.calls) == ("update", ("ec2:CreateTags",))
    assert [(d.field, d.old, d.new) for d in alb.diffs] == [
        ("ingress tcp 80 from 0.0.0.0/0 tags", {"team": None}, {"team": "games"}),
        ("ingress tcp 443 from 0.0.0.0/0 tags", {"team": None}, {"team": "games"})]
    assert alb.payload == IngressWork(retag=(("sgr-alb-0", (("team", "games"),)), ("sgr-alb-1", (("team", "games"),))))


def test_unreported_rule_description_is_compared_with_the_last_apply(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    facts.rules["sg-app"][0] = dataclasses.replace(facts.rules["sg-app"][0], description="")
    assert keys(STEP.plan(desired, facts, {})) == ["update ingress/app"]  # nothing recorded: rewrite it
    recorded = {"ingress/app": {"descriptions": {"tcp 8080 from alb": "API traffic from the load balancer"}}}
    assert STEP.plan(desired, facts, recorded) == []


def test_ingress_change_records_the_descriptions(dev):
    desired = STEP.desired(dev, INPUTS)
    change = next(c for c in STEP.plan(desired, Facts(), {}) if c.key == "ingress/app")
    assert change.record == {"descriptions": {"tcp 8080 from alb": "API traffic from the load balancer",
                                              "tcp 8888 from monitoring": "Prometheus scrapes the collector sidecar",
                                              "tcp 8889 from monitoring": "Prometheus scrapes the collector sidecar"}}


def test_security_group_description_change_replaces_it_and_rewires_references(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    facts.security_groups["alb"].description = "something else"
    changes = STEP.plan(desired, facts, {})
    assert keys(changes) == ["replace security_group/alb", "create ingress/alb", "update ingress/app",
                             "update ingress/monitoring"]
    app = changes[2].payload
    assert [r.source for r in app.add] == ["alb"] and app.revoke == ("sgr-app-0",)


def test_pending_nat_gateway_is_awaited(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    facts.nat_gateways["nat-us-east-1a"].state = "pending"
    change = only(STEP.plan(desired, facts, {}))
    assert (change.action, change.key, change.calls) == ("update", "nat_gateway/nat-us-east-1a", ())
    assert change.note == "wait until it is available"


def test_failed_nat_gateway_is_created_again(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    del facts.nat_gateways["nat-us-east-1a"]
    facts.failed_nat_gateways["nat-us-east-1a"] = ["nat-failed-1"]
    changes = STEP.plan(desired, facts, {})
    assert keys(changes) == ["create nat_gateway/nat-us-east-1a", "update route_table/private"]
    assert changes[0].note == "1 earlier attempt(s) failed: nat-failed-1"
    assert changes[0].diffs[1].new == "eipalloc-nat-us-east-1a"  # the address is reused


def test_endpoint_drift_is_one_modify(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    logs = facts.endpoints["logs"]
    logs.private_dns, logs.subnets = False, frozenset({"subnet-private-us-east-1a"})
    change = only(STEP.plan(desired, facts, {}))
    assert (change.key, change.calls) == ("endpoint/logs", ("ec2:ModifyVpcEndpoint",))
    assert {d.field for d in change.diffs} == {"subnets", "private_dns"}


def test_going_from_per_zone_to_single_nat_removes_the_extra_gateways_after_rerouting():
    prod = load_manifest(MANIFESTS, "prod")
    facts = applied(STEP.desired(prod, INPUTS))
    single = STEP.desired(with_network(prod, nat_gateways="single"), INPUTS)
    changes = STEP.plan(single, facts, {})
    assert keys(changes) == [
        "create route_table/private", "update endpoint/s3",
        "delete nat_gateway/nat-us-east-1b", "delete nat_gateway/nat-us-east-1c",
        "delete eip/nat-us-east-1b", "delete eip/nat-us-east-1c",
        "delete route_table/private-us-east-1a", "delete route_table/private-us-east-1b",
        "delete route_table/private-us-east-1c"]
    assert changes[0].payload.attach == ("private-us-east-1a", "private-us-east-1b", "private-us-east-1c")


def test_resources_not_ours_are_never_deleted(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    facts.subnets["subnet-foreign"] = SeenSubnet(id="subnet-foreign", tags={}, owned=False, cidr="10.20.99.0/24",
                                                 zone="us-east-1a", map_public_ip_on_launch=False)
    facts.security_groups["sg-foreign"] = SeenGroup(id="sg-foreign", tags={}, owned=False, description="theirs")
    assert STEP.plan(desired, facts, {}) == []
    assert not [c for c in STEP.plan_destroy(facts) if "foreign" in c.name]


def test_subnet_not_ours_in_another_zone_is_refused_not_replaced(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    facts.subnets["public-us-east-1b"] = SeenSubnet(id="subnet-theirs", tags={}, owned=False, cidr="10.20.33.0/24",
                                                    zone="us-east-1c", map_public_ip_on_launch=False)
    with pytest.raises(OrchestratorError, match="subnet subnet-theirs .*does not carry this environment's"):
        STEP.plan(desired, facts, {})


def test_security_group_not_ours_with_another_description_is_refused_not_replaced(dev):
    desired = STEP.desired(dev, INPUTS)
    facts = applied(desired)
    facts.security_groups["alb"] = SeenGroup(id="sg-theirs", tags={}, owned=False, description="look-alike")
    with pytest.raises(OrchestratorError, match=r"security group gamepulse-dev-alb \(sg-theirs.*does not carry"):
        STEP.plan(desired, facts, {})


def test_destroy_goes_in_a_safe_order_and_revokes_group_references_first(dev):
    desired = STEP.desired(dev, INPUTS)
    changes = STEP.plan_destroy(applied(desired))
    assert all(c.action == "delete" for c in changes)
    kinds = list(dict.fromkeys(c.kind for c in changes))
    assert kinds == ["endpoint", "nat_gateway", "eip", "route_table", "internet_gateway", "subnet", "ingress",
                     "security_group", "vpc"]
    revokes = {c.name: c.payload.revoke for c in changes if c.kind == "ingress"}
    assert set(revokes) == {"app", "efs", "monitoring"}  # the groups whose rules name other groups
    assert len(revokes["monitoring"]) == 7


def test_outputs_before_and_after_apply(dev):
    desired = STEP.desired(dev, INPUTS)
    nothing = STEP.outputs(desired, Facts())
    assert nothing.vpc_id == KNOWN_AFTER_APPLY and nothing.vpc_cidr == "10.20.0.0/16"
    assert nothing.public_subnet_ids == [KNOWN_AFTER_APPLY] * 2
    outputs = as_plain(STEP.outputs(desired, applied(desired)))
    assert outputs == {
        "vpc_id": "vpc-1", "vpc_cidr": "10.20.0.0/16", "zones": ["us-east-1a", "us-east-1b"],
        "public_subnet_ids": ["subnet-public-us-east-1a", "subnet-public-us-east-1b"],
        "private_subnet_ids": ["subnet-private-us-east-1a", "subnet-private-us-east-1b"],
        "security_groups": {g: f"sg-{g}" for g in ("alb", "app", "efs", "endpoints", "monitoring")},
        "public_route_table_id": "rtb-public", "private_route_table_ids": ["rtb-private"],
        "nat_gateway_ids": ["nat-us-east-1a-id"]}


# -- zones offering what the platform needs -------------------------------------------------------


def _zone_inputs(offered: dict[str, list[str]]):
    """The run facts: the six zones, each endpoint service (by its short name) offered where
    `offered` says, else in every zone."""
    inputs = harness.inputs(STEP)
    return dataclasses.replace(
        inputs, zone_ids=lambda: {zone: "" for zone in harness.ZONES},
        endpoint_zones=lambda services: {s: offered.get(s.split(".us-east-1.", 1)[1], harness.ZONES)
                                         for s in services})


def test_zones_are_those_offering_every_interface_endpoint_not_the_first_names(manifest):
    # us-east-1a lacks the logs endpoint service: the network skips it.
    network = STEP.desired(manifest, _zone_inputs({"logs": ["us-east-1b", "us-east-1c", "us-east-1d"]}))
    assert sorted({subnet.zone for subnet in network.subnets}) == ["us-east-1b", "us-east-1c"]


def test_too_few_zones_offering_the_services_names_the_zone_and_what_it_lacks(manifest):
    with pytest.raises(OrchestratorError, match=r"only 1 zone\(s\) offer .*us-east-1a does not offer "
                                                r"com.amazonaws.us-east-1.ecr.api, com.amazonaws.us-east-1.logs"):
        STEP.desired(manifest, _zone_inputs({"ecr.api": ["us-east-1b"], "logs": ["us-east-1b"]}))


def test_zones_without_fargate_are_skipped_where_aws_lists_fargate_zones(manifest):
    west = manifest.model_copy(update={"region": "us-west-1"})
    ids = {"us-west-1a": "usw1-az3", "us-west-1b": "usw1-az2", "us-west-1c": "usw1-az1"}
    inputs = dataclasses.replace(harness.inputs(STEP, region="us-west-1", zones=sorted(ids)), zone_ids=lambda: ids,
                                 endpoint_zones=lambda services: {s: sorted(ids) for s in services})
    network = STEP.desired(west, inputs)
    assert sorted({subnet.zone for subnet in network.subnets}) == ["us-west-1a", "us-west-1c"]
