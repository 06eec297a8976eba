"""Step alb: the internet-facing Application Load Balancer, its target groups, listeners and
path rules.

Target groups are named `PREFIX-NAME-HASH`, HASH covering the fields AWS cannot change in
place (protocol, port, VPC). Changing one of them is thus a new target group under a new
name: it is created, the listeners and rules move to it, and the old one is deleted last, so
traffic always has somewhere to go.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace

from botocore.exceptions import ClientError

from orchestrator import tags as tagging
from orchestrator.aws import SEVERAL_SERVICES, error_code, unless_code
from orchestrator.errors import OrchestratorError
from orchestrator.model import Accepted, Change, FieldDiff, Step, Unknown, Wait, diff_fields, is_unknown
from orchestrator.permissions import FIND_BY_TAG, allow, service_linked_role
from orchestrator.retry import eventually
from orchestrator.waiters import WaitFailed, botocore_check

DELETE_PROTECTED = "delete-protected"
HTTP, HTTPS = 80, 443
LISTENER_KEYS = {HTTP: "http", HTTPS: "https"}
NAME_LIMIT = 32  # load balancer and target group names
TAGS_PER_DESCRIBE = 20
TARGET_GROUPS_PER_DESCRIBE = 20  # by name or ARN

LB_FIELDS = ("subnets", "security_groups", "idle_timeout_seconds", "deletion_protection")
LB_FIELD_CALLS = {"subnets": "elbv2:SetSubnets", "security_groups": "elbv2:SetSecurityGroups",
                  "idle_timeout_seconds": "elbv2:ModifyLoadBalancerAttributes",
                  "deletion_protection": "elbv2:ModifyLoadBalancerAttributes", "tags": "elbv2:AddTags"}
HEALTH_FIELDS = ("path", "matcher", "interval_seconds", "timeout_seconds", "healthy_threshold",
                 "unhealthy_threshold")
LISTENER_FIELDS = ("protocol", "default_action", "certificate_arn", "ssl_policy")


# --- desired ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthCheck:
    path: str
    matcher: str
    interval_seconds: int
    timeout_seconds: int
    healthy_threshold: int
    unhealthy_threshold: int


@dataclass(frozen=True)
class TargetGroup:
    key: str  # the manifest's name for it: "gamepulse"
    name: str  # the AWS name: "gamepulse-dev-gamepulse-1a2b"
    protocol: str
    port: int
    vpc_id: str
    deregistration_delay_seconds: int
    health_check: HealthCheck


@dataclass(frozen=True)
class Action:
    """What a listener or rule does: `forward` to a target group (by AWS name), or
    `redirect-https` (301 to HTTPS:443). Anything else AWS reports keeps its own type."""

    type: str
    target: str | None = None

    def __str__(self) -> str:  # as plans show it
        if self == REDIRECT_TO_HTTPS:
            return "redirect to HTTPS:443 (301)"
        return f"{self.type} to {self.target}" if self.target else self.type


REDIRECT_TO_HTTPS = Action("redirect-https")


@dataclass(frozen=True)
class Listener:
    port: int
    protocol: str
    default_action: Action
    certificate_arn: str | None = None
    ssl_policy: str | None = None

    @property
    def key(self) -> str:
        return _listener_key(self.port)


@dataclass(frozen=True)
class Rule:
    port: int  # of the listener the rule belongs to
    priority: int
    paths: tuple[str, ...]
    action: Action


@dataclass(frozen=True)
class LoadBalancer:
    name: str
    subnets: tuple[str, ...]  # sorted
    security_groups: tuple[str, ...]
    idle_timeout_seconds: int
    deletion_protection: bool


@dataclass(frozen=True)
class AlbDesired:
    load_balancer: LoadBalancer
    name_prefix: str  # every target group of this environment is named with it
    target_groups: tuple[TargetGroup, ...]
    listeners: tuple[Listener, ...]
    rules: tuple[Rule, ...]
    tags: dict[str, str]  # every resource of the step carries them: ownership plus the manifest's
    #: `load_balancer.certificate.domain`: the HTTPS listener's certificate is the ISSUED one ACM
    #: holds for it (found by observe; until then the listener's ARN is not known).
    certificate_domain: str | None = None
    #: The name users reach it by (`LoadBalancerSpec.public_name`): the `url` output uses it, since
    #: HTTPS validates for that name only; None: the load balancer's own DNS name.
    public_name: str | None = None

    @property
    def https(self) -> bool:
        return any(listener.port == HTTPS for listener in self.listeners)


# --- observed --------------------------------------------------------------------------------


@dataclass
class ObservedLoadBalancer:
    arn: str
    name: str
    dns_name: str
    zone_id: str
    owned: bool
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    idle_timeout_seconds: int | None = None
    deletion_protection: bool | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class ObservedTargetGroup:
    arn: str
    name: str
    protocol: str
    port: int
    vpc_id: str
    owned: bool
    health_check: HealthCheck | None = None
    deregistration_delay_seconds: int | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class ObservedListener:
    arn: str
    port: int
    protocol: str
    default_action: Action
    owned: bool
    certificate_arn: str | None = None
    ssl_policy: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class ObservedRule:
    arn: str
    port: int
    priority: int
    paths: tuple[str, ...]
    action: Action
    owned: bool
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleWork:
    """Payload of a rule's update: what the manifest wants, and the rule AWS has."""

    rule: Rule
    found: ObservedRule


@dataclass
class AlbFacts:
    load_balancer: ObservedLoadBalancer | None = None
    target_groups: dict[str, ObservedTargetGroup] = field(default_factory=dict)  # by AWS name
    listeners: dict[int, ObservedListener] = field(default_factory=dict)  # by port
    rules: list[ObservedRule] = field(default_factory=list)  # not the listeners' default rules
    #: The ISSUED certificate ACM holds for `certificate_domain` (None: none found).
    certificate_arn: str | None = None


@dataclass(frozen=True)
class AlbOutputs:
    load_balancer_arn: str
    load_balancer_name: str
    dns_name: str
    zone_id: str
    url: str
    arn_suffix: str  # CloudWatch's LoadBalancer dimension
    target_groups: dict[str, str]  # ARN by the manifest's name
    target_group_arn_suffixes: dict[str, str]  # CloudWatch's TargetGroup dimension
    listener_arns: dict[str, str]


class AlbStep(Step):
    name = "alb"
    depends_on = ("vpc",)
    Outputs = AlbOutputs
    description = "Application Load Balancer, target groups, listeners and path rules"

    def permissions(self, manifest, scope) -> list[dict]:
        """The deploy role's statements for this step: the environment's load balancer, its
        listeners and rules, and the target groups named after the environment."""
        name = manifest.prefix
        ours = [scope.arn("elasticloadbalancing", resource) for resource in (
            f"loadbalancer/app/{name}/*", f"listener/app/{name}/*", f"listener-rule/app/{name}/*",
            f"targetgroup/{name}-*/*")]
        return [
            # The ELB describes support no resource-level permissions.
            allow("ElbDescribe", ["elasticloadbalancing:DescribeLoadBalancers",
                                  "elasticloadbalancing:DescribeLoadBalancerAttributes",
                                  "elasticloadbalancing:DescribeTargetGroups",
                                  "elasticloadbalancing:DescribeTargetGroupAttributes",
                                  "elasticloadbalancing:DescribeListeners", "elasticloadbalancing:DescribeRules",
                                  "elasticloadbalancing:DescribeTags"], "*"),
            allow("ElbChange", [f"elasticloadbalancing:{action}" for action in (
                "CreateLoadBalancer", "DeleteLoadBalancer", "ModifyLoadBalancerAttributes", "SetSubnets",
                "SetSecurityGroups", "CreateTargetGroup", "DeleteTargetGroup", "ModifyTargetGroup",
                "ModifyTargetGroupAttributes", "CreateListener", "DeleteListener", "ModifyListener", "CreateRule",
                "DeleteRule", "ModifyRule", "SetRulePriorities", "AddTags")], ours),
            service_linked_role(scope, "elasticloadbalancing.amazonaws.com"),
            FIND_BY_TAG,
            # Pre-flight: the HTTPS listener's certificate exists and is issued.
            *([allow("CertificateCheck", ["acm:DescribeCertificate"], [manifest.load_balancer.certificate_arn])]
              if manifest.load_balancer.certificate_arn else []),
            # By domain: ListCertificates supports no resource-level permissions.
            *([allow("CertificateByDomain", ["acm:ListCertificates"], "*")]
              if manifest.load_balancer.certificate else [])]

    # -- desired ----------------------------------------------------------------------------

    def desired(self, manifest, inputs) -> AlbDesired:
        spec = manifest.load_balancer
        prefix = manifest.prefix
        _check_length("load balancer", prefix)
        vpc_id = inputs.output("vpc", "vpc_id")
        groups = tuple(_target_group(prefix, key, tg, vpc_id) for key, tg in spec.target_groups.items())
        names = {group.key: group.name for group in groups}
        forward_default = Action("forward", names[spec.default_target])
        domain = spec.certificate.domain if spec.certificate else None
        if spec.certificate_arn or domain:
            certificate = spec.certificate_arn or Unknown(f"acm certificate for {domain}")
            listeners = (Listener(HTTP, "HTTP", REDIRECT_TO_HTTPS),
                         Listener(HTTPS, "HTTPS", forward_default, certificate, spec.ssl_policy))
        else:
            listeners = (Listener(HTTP, "HTTP", forward_default),)
        rule_port = listeners[-1].port
        return AlbDesired(
            load_balancer=LoadBalancer(
                name=prefix,
                subnets=tuple(sorted(inputs.items("vpc", "public_subnet_ids"))),
                security_groups=(inputs.entry("vpc", "security_groups", spec.security_group),),
                idle_timeout_seconds=spec.idle_timeout_seconds,
                deletion_protection=spec.deletion_protection),
            name_prefix=f"{prefix}-",
            target_groups=groups,
            listeners=listeners,
            rules=tuple(Rule(rule_port, rule.priority, tuple(rule.paths), Action("forward", names[rule.target]))
                        for rule in sorted(spec.rules, key=lambda r: r.priority)),
            tags=tagging.ownership_tags(manifest.app, manifest.environment, self.name, manifest.tags),
            certificate_domain=domain,
            public_name=spec.public_name)

    # -- observe ----------------------------------------------------------------------------

    def observe(self, ctx, desired: AlbDesired) -> AlbFacts:
        """By name and by our tags, never by listing the account: the load balancer and the
        wanted target groups by name, our other target groups (left over from a replacement) by
        one tagging-API query, and those our listeners and rules point at by ARN.

        Reads that need no answer of another go out together (`ctx.each`): first the load
        balancer, the wanted target groups, the tagging query and the certificate of the named
        domain; then the listeners, each listener's rules, the tags of everything found, and
        last the attributes of the load balancer and of each target group that is ours."""
        elb = ctx.client("elbv2")
        facts = AlbFacts()
        reads = [lambda: self._find_load_balancer(elb, desired.load_balancer.name),
                 # A name not known yet (the VPC it hashes is not created) names nothing that exists.
                 lambda: _target_groups_by(elb, "Names", [group.name for group in desired.target_groups
                                                          if not is_unknown(group.name)]),
                 lambda: self._tagged_target_groups(ctx)]
        if desired.certificate_domain and not ctx.destroying:
            reads.append(lambda: _issued_certificate(ctx.client("acm"), desired.certificate_domain))
        lb, wanted_groups, tagged, *certificate = ctx.each(SEVERAL_SERVICES, lambda read: read(), reads)
        facts.certificate_arn = certificate[0] if certificate else None
        listeners = [listener for page in elb.get_paginator("describe_listeners").paginate(
            LoadBalancerArn=lb["LoadBalancerArn"]) for listener in page["Listeners"]] if lb else []
        rules_of = ctx.each("elbv2", lambda listener: [
            rule for page in elb.get_paginator("describe_rules").paginate(ListenerArn=listener["ListenerArn"])
            for rule in page["Rules"] if not rule["IsDefault"]], listeners)
        rules = [(listener["Port"], rule) for listener, found in zip(listeners, rules_of) for rule in found]
        all_groups = wanted_groups + self._other_target_groups(
            elb, wanted_groups, tagged, [listener["DefaultActions"] for listener in listeners]
            + [rule["Actions"] for _, rule in rules])
        names_by_arn = {group["TargetGroupArn"]: group["TargetGroupName"] for group in all_groups}
        ours = [group for group in all_groups if group["TargetGroupName"].startswith(desired.name_prefix)]
        arns = ([lb["LoadBalancerArn"]] if lb else []) + [g["TargetGroupArn"] for g in ours] + \
            [listener["ListenerArn"] for listener in listeners] + [rule["RuleArn"] for _, rule in rules]
        tags = self._tags(elb, arns)

        def owned(arn: str) -> bool:
            return ctx.owns(tags.get(arn, {}))

        # The load balancer's and each target group's attributes, read at once.
        seen_lb, *seen_groups = ctx.each("elbv2", lambda read: read(), [
            lambda: lb and self._observed_load_balancer(elb, lb, owned(lb["LoadBalancerArn"]))] + [
            lambda group=group: self._observed_target_group(elb, group, owned(group["TargetGroupArn"]))
            for group in ours])
        if lb:
            facts.load_balancer = seen_lb
            facts.load_balancer.tags = tags.get(lb["LoadBalancerArn"], {})
        for group, seen in zip(ours, seen_groups):
            facts.target_groups[group["TargetGroupName"]] = seen
            seen.tags = tags.get(seen.arn, {})
        for listener in listeners:
            certificates = listener.get("Certificates") or [{}]
            https = listener["Protocol"] == "HTTPS"
            facts.listeners[listener["Port"]] = ObservedListener(
                arn=listener["ListenerArn"], port=listener["Port"], protocol=listener["Protocol"],
                default_action=_observed_action(listener["DefaultActions"], names_by_arn),
                owned=owned(listener["ListenerArn"]),
                certificate_arn=certificates[0].get("CertificateArn") if https else None,
                ssl_policy=listener.get("SslPolicy") if https else None,
                tags=tags.get(listener["ListenerArn"], {}))
        facts.rules = [ObservedRule(arn=rule["RuleArn"], port=port, priority=int(rule["Priority"]),
                                    paths=_paths(rule["Conditions"]),
                                    action=_observed_action(rule["Actions"], names_by_arn),
                                    owned=owned(rule["RuleArn"]), tags=tags.get(rule["RuleArn"], {}))
                       for port, rule in rules]
        return facts

    @staticmethod
    def _find_load_balancer(elb, name: str) -> dict | None:
        """By name: `create_load_balancer` is never sent for a name that exists."""
        found = unless_code({"LoadBalancerNotFound"}, elb.describe_load_balancers, Names=[name])
        return found["LoadBalancers"][0] if found else None

    def _tagged_target_groups(self, ctx) -> list[str]:
        """The ARNs of the target groups carrying this step's ownership tags (one left over from a
        replacement cut short has a name the manifest no longer gives)."""
        return [item["ResourceARN"] for page in ctx.client("resourcegroupstaggingapi").get_paginator(
            "get_resources").paginate(TagFilters=tagging.owner_tag_filters(ctx.app, ctx.env, self.name),
                                      ResourceTypeFilters=["elasticloadbalancing:targetgroup"])
            for item in page["ResourceTagMappingList"]]

    @staticmethod
    def _other_target_groups(elb, wanted: list[dict], tagged: list[str], actions: list[list[dict]]) -> list[dict]:
        """Besides the wanted target groups (found by name): those carrying our tags and those the
        given listener and rule actions forward to."""
        pointed_at = [target for action in actions for target in _forward_targets(action)]
        seen = {group["TargetGroupArn"] for group in wanted}
        others = sorted({arn for arn in tagged + pointed_at if arn not in seen})
        return _target_groups_by(elb, "TargetGroupArns", others)

    @staticmethod
    def _tags(elb, arns: list[str]) -> dict[str, dict[str, str]]:
        tags: dict[str, dict[str, str]] = {}
        for start in range(0, len(arns), TAGS_PER_DESCRIBE):
            response = elb.describe_tags(ResourceArns=arns[start:start + TAGS_PER_DESCRIBE])
            tags.update({d["ResourceArn"]: tagging.tag_dict(d.get("Tags")) for d in response["TagDescriptions"]})
        return tags

    @staticmethod
    def _observed_load_balancer(elb, lb: dict, owned: bool) -> ObservedLoadBalancer:
        attributes = {a["Key"]: a["Value"] for a in
                      elb.describe_load_balancer_attributes(LoadBalancerArn=lb["LoadBalancerArn"])["Attributes"]}
        idle = attributes.get("idle_timeout.timeout_seconds")
        protection = attributes.get("deletion_protection.enabled")
        return ObservedLoadBalancer(
            arn=lb["LoadBalancerArn"], name=lb["LoadBalancerName"], dns_name=lb["DNSName"],
            zone_id=lb["CanonicalHostedZoneId"], owned=owned,
            subnets=tuple(sorted(zone["SubnetId"] for zone in lb.get("AvailabilityZones", []))),
            security_groups=tuple(sorted(lb.get("SecurityGroups", []))),
            idle_timeout_seconds=int(idle) if idle is not None else None,
            deletion_protection=protection == "true" if protection is not None else None)

    @staticmethod
    def _observed_target_group(elb, group: dict, owned: bool) -> ObservedTargetGroup:
        seen = ObservedTargetGroup(arn=group["TargetGroupArn"], name=group["TargetGroupName"],
                                   protocol=group["Protocol"], port=group["Port"], vpc_id=group["VpcId"],
                                   owned=owned,
                                   health_check=HealthCheck(
                                       path=group.get("HealthCheckPath"),
                                       matcher=(group.get("Matcher") or {}).get("HttpCode"),
                                       interval_seconds=group.get("HealthCheckIntervalSeconds"),
                                       timeout_seconds=group.get("HealthCheckTimeoutSeconds"),
                                       healthy_threshold=group.get("HealthyThresholdCount"),
                                       unhealthy_threshold=group.get("UnhealthyThresholdCount")))
        if owned:  # attributes only matter for what we may change
            attributes = {a["Key"]: a["Value"] for a in
                          elb.describe_target_group_attributes(TargetGroupArn=seen.arn)["Attributes"]}
            delay = attributes.get("deregistration_delay.timeout_seconds")
            seen.deregistration_delay_seconds = int(delay) if delay is not None else None
        return seen

    # -- plan -------------------------------------------------------------------------------

    def preflight(self, ctx, desired: AlbDesired, observed: AlbFacts) -> list[str]:
        """The HTTPS listener's certificate: it exists in this region and is issued (else the
        listener's create fails after the load balancer and target groups were made)."""
        if desired.certificate_domain:
            return [] if observed.certificate_arn else [
                f"no ISSUED certificate for {desired.certificate_domain} (load_balancer.certificate.domain) in ACM "
                f"in {ctx.region}: request it there with DNS validation and wait until it is issued"]
        arns = sorted({listener.certificate_arn for listener in desired.listeners if listener.certificate_arn})
        return [problem for arn in arns if (problem := _certificate_problem(ctx.client("acm"), arn))]

    def plan(self, desired: AlbDesired, observed: AlbFacts, recorded: dict[str, dict]) -> list[Change]:
        """Dependencies first: what listeners point at exists before they move, and what they
        pointed at goes only after they moved."""
        rule_changes, rule_deletes = self._plan_rules(desired, observed)
        return [*self._plan_load_balancer(desired.load_balancer, observed.load_balancer, desired.tags),
                *self._plan_target_groups(desired, observed),
                *self._plan_listeners(_with_certificate(desired, observed), observed.listeners, desired.tags),
                *rule_changes, *rule_deletes,
                *[_listener_deletion(seen) for port, seen in sorted(observed.listeners.items())
                  if seen.owned and port not in {listener.port for listener in desired.listeners}],
                *[_target_group_deletion(seen, retire=True) for name, seen in sorted(observed.target_groups.items())
                  if seen.owned and name not in {group.name for group in desired.target_groups}]]

    def _plan_load_balancer(self, lb: LoadBalancer, seen: ObservedLoadBalancer | None,
                            tags: dict[str, str]) -> list[Change]:
        if seen is None:
            return [Change("create", "load_balancer", lb.name, diffs=diff_fields(lb, None, LB_FIELDS),
                           calls=("elbv2:CreateLoadBalancer", "elbv2:ModifyLoadBalancerAttributes"), payload=lb)]
        if not seen.owned:
            raise tagging.not_ours("load balancer", lb.name)
        diffs = diff_fields(lb, seen, LB_FIELDS) + tagging.tag_diffs(seen.tags, tags)
        if not diffs:
            return []
        calls = tuple(dict.fromkeys(LB_FIELD_CALLS[d.field] for d in diffs))
        return [Change("update", "load_balancer", lb.name, diffs=diffs, calls=calls, payload=lb)]

    def _plan_target_groups(self, desired: AlbDesired, observed: AlbFacts) -> list[Change]:
        changes = []
        for group in desired.target_groups:
            seen = observed.target_groups.get(group.name)
            if seen is None:
                changes.append(self._create_or_replace_target_group(desired.name_prefix, group, observed))
                continue
            if not seen.owned:
                raise tagging.not_ours("target group", group.name)
            diffs = tuple(FieldDiff(f"health_check.{d.field}", d.old, d.new)
                          for d in diff_fields(group.health_check, seen.health_check, HEALTH_FIELDS))
            calls = ("elbv2:ModifyTargetGroup",) if diffs else ()
            if seen.deregistration_delay_seconds != group.deregistration_delay_seconds:
                diffs += (FieldDiff("deregistration_delay_seconds", seen.deregistration_delay_seconds,
                                    group.deregistration_delay_seconds),)
                calls += ("elbv2:ModifyTargetGroupAttributes",)
            retag = tagging.tag_diffs(seen.tags, desired.tags)
            diffs, calls = diffs + retag, calls + (("elbv2:AddTags",) if retag else ())
            if diffs:
                changes.append(Change("update", "target_group", group.key, diffs=diffs, calls=calls, payload=group))
        return changes

    @staticmethod
    def _create_or_replace_target_group(name_prefix: str, group: TargetGroup, observed: AlbFacts) -> Change:
        calls = ("elbv2:CreateTargetGroup", "elbv2:ModifyTargetGroupAttributes")
        fields = ("name", "protocol", "port", "vpc_id")
        previous = [seen for seen in observed.target_groups.values()
                    if seen.owned and _target_group_key(name_prefix, seen.name) == group.key]
        if not previous:
            return Change("create", "target_group", group.key, diffs=diff_fields(group, None, fields),
                          calls=calls, payload=group)
        old = previous[0]
        return Change("replace", "target_group", group.key, diffs=diff_fields(group, old, fields),
                      calls=calls, payload=group,
                      note=f"protocol, port and VPC cannot change in place: {group.name} is created, listeners "
                           f"and rules move to it, and {old.name} is deleted at the end of the run, once the "
                           f"services registered in it moved")

    def _plan_listeners(self, listeners: tuple[Listener, ...], seen: dict[int, ObservedListener],
                        tags: dict[str, str]) -> list[Change]:
        changes = []
        for listener in listeners:
            found = seen.get(listener.port)
            if found is None:
                changes.append(Change("create", "listener", listener.key,
                                      diffs=diff_fields(listener, None, ("port",) + LISTENER_FIELDS),
                                      calls=("elbv2:CreateListener",), payload=listener))
                continue
            if not found.owned:
                raise tagging.not_ours("listener", f"{listener.key} (port {listener.port})")
            modify = diff_fields(listener, found, LISTENER_FIELDS)
            retag = tagging.tag_diffs(found.tags, tags)
            if modify or retag:
                calls = (("elbv2:ModifyListener",) if modify else ()) + (("elbv2:AddTags",) if retag else ())
                changes.append(Change("update", "listener", listener.key, diffs=modify + retag, calls=calls,
                                      payload=listener))
        return changes

    def _plan_rules(self, desired: AlbDesired, observed: AlbFacts) -> tuple[list[Change], list[Change]]:
        """Rules are known by their slot (listener and priority): a rule found in its slot is
        modified in place; a rule found unchanged in another slot is moved there; the owned
        rules left over are deleted (after the others changed, so traffic keeps a route)."""
        by_slot = {(rule.port, rule.priority): rule for rule in observed.rules}
        changes, unplaced, kept = [], [], set()
        for rule in desired.rules:
            seen = by_slot.get((rule.port, rule.priority))
            if seen is None:
                unplaced.append(rule)
                continue
            if not seen.owned:
                raise tagging.not_ours("listener rule", _rule_name(rule.port, rule.priority))
            kept.add(seen.arn)
            modify = diff_fields(rule, seen, ("paths", "action"))
            retag = tagging.tag_diffs(seen.tags, desired.tags)
            if modify or retag:
                calls = (("elbv2:ModifyRule",) if modify else ()) + (("elbv2:AddTags",) if retag else ())
                changes.append(Change("update", "rule", _rule_name(rule.port, rule.priority), diffs=modify + retag,
                                      calls=calls, payload=RuleWork(rule, seen)))
        leftovers = [seen for seen in observed.rules if seen.owned and seen.arn not in kept]
        for rule in unplaced:
            same = next((seen for seen in leftovers
                         if (seen.port, seen.paths, seen.action) == (rule.port, rule.paths, rule.action)), None)
            name = _rule_name(rule.port, rule.priority)
            if same is None:
                changes.append(Change("create", "rule", name, diffs=diff_fields(rule, None, ("paths", "action")),
                                      calls=("elbv2:CreateRule",), payload=rule))
                continue
            leftovers.remove(same)
            retag = tagging.tag_diffs(same.tags, desired.tags)
            changes.append(Change("update", "rule", name,
                                  diffs=(FieldDiff("priority", same.priority, rule.priority),) + retag,
                                  calls=("elbv2:SetRulePriorities",) + (("elbv2:AddTags",) if retag else ()),
                                  payload=RuleWork(rule, same)))
        return changes, [_rule_deletion(seen) for seen in leftovers]

    # -- apply ------------------------------------------------------------------------------

    def _create_load_balancer(self, ctx, change: Change, observed: AlbFacts) -> Accepted:
        lb: LoadBalancer = change.payload
        elb = ctx.client("elbv2")
        created = elb.create_load_balancer(
            Name=lb.name, Subnets=list(lb.subnets), SecurityGroups=list(lb.security_groups),
            Scheme="internet-facing", Type="application", IpAddressType="ipv4",
            Tags=tagging.tag_list(ctx.tags()))["LoadBalancers"][0]
        self._set_attributes(elb, created["LoadBalancerArn"], lb)
        observed.load_balancer = ObservedLoadBalancer(
            arn=created["LoadBalancerArn"], name=lb.name, dns_name=created["DNSName"],
            zone_id=created["CanonicalHostedZoneId"], owned=True, subnets=lb.subnets,
            security_groups=lb.security_groups, idle_timeout_seconds=lb.idle_timeout_seconds,
            deletion_protection=lb.deletion_protection, tags=ctx.tags())
        return Accepted(waits=(Wait(f"load balancer {lb.name} to be active",
                                    lambda: _load_balancer_state(elb, lb.name)),))

    def _update_load_balancer(self, ctx, change: Change, observed: AlbFacts) -> None:
        lb: LoadBalancer = change.payload
        elb = ctx.client("elbv2")
        seen = observed.load_balancer
        if change.differs("subnets"):
            elb.set_subnets(LoadBalancerArn=seen.arn, Subnets=list(lb.subnets))
        if change.differs("security_groups"):
            elb.set_security_groups(LoadBalancerArn=seen.arn, SecurityGroups=list(lb.security_groups))
        if change.differs("idle_timeout_seconds", "deletion_protection"):
            self._set_attributes(elb, seen.arn, lb)
        _add_tags(elb, seen, change)
        seen.subnets, seen.security_groups = lb.subnets, lb.security_groups
        seen.idle_timeout_seconds, seen.deletion_protection = lb.idle_timeout_seconds, lb.deletion_protection

    @staticmethod
    def _set_attributes(elb, arn: str, lb: LoadBalancer) -> None:
        elb.modify_load_balancer_attributes(LoadBalancerArn=arn, Attributes=[
            {"Key": "idle_timeout.timeout_seconds", "Value": str(lb.idle_timeout_seconds)},
            {"Key": "deletion_protection.enabled", "Value": str(lb.deletion_protection).lower()}])

    def _delete_load_balancer(self, ctx, change: Change, observed: AlbFacts) -> Accepted:
        elb = ctx.client("elbv2")
        unless_code({"LoadBalancerNotFound"}, elb.delete_load_balancer, LoadBalancerArn=observed.load_balancer.arn)
        observed.load_balancer = None
        what = f"deletion of load balancer {change.name}"
        return Accepted(waits=(Wait(what, botocore_check(elb, "load_balancers_deleted", what, Names=[change.name])),))

    def _create_target_group(self, ctx, change: Change, observed: AlbFacts) -> None:
        group: TargetGroup = change.payload
        health = group.health_check
        elb = ctx.client("elbv2")
        created = elb.create_target_group(
            Name=group.name, Protocol=group.protocol, Port=group.port, VpcId=group.vpc_id, TargetType="ip",
            HealthCheckEnabled=True, HealthCheckPath=health.path, HealthCheckIntervalSeconds=health.interval_seconds,
            HealthCheckTimeoutSeconds=health.timeout_seconds, HealthyThresholdCount=health.healthy_threshold,
            UnhealthyThresholdCount=health.unhealthy_threshold, Matcher={"HttpCode": health.matcher},
            Tags=tagging.tag_list(ctx.tags()))["TargetGroups"][0]
        self._set_deregistration_delay(elb, created["TargetGroupArn"], group)
        observed.target_groups[group.name] = ObservedTargetGroup(
            arn=created["TargetGroupArn"], name=group.name, protocol=group.protocol, port=group.port,
            vpc_id=group.vpc_id, owned=True, health_check=health,
            deregistration_delay_seconds=group.deregistration_delay_seconds, tags=ctx.tags())

    #: The new target group comes first; the old one is deleted by its own change, last.

    def _update_target_group(self, ctx, change: Change, observed: AlbFacts) -> None:
        group: TargetGroup = change.payload
        health = group.health_check
        elb = ctx.client("elbv2")
        seen = observed.target_groups[group.name]
        if change.differs(*(f"health_check.{name}" for name in HEALTH_FIELDS)):
            elb.modify_target_group(
                TargetGroupArn=seen.arn, HealthCheckPath=health.path,
                HealthCheckIntervalSeconds=health.interval_seconds, HealthCheckTimeoutSeconds=health.timeout_seconds,
                HealthyThresholdCount=health.healthy_threshold, UnhealthyThresholdCount=health.unhealthy_threshold,
                Matcher={"HttpCode": health.matcher})
            seen.health_check = health
        if change.differs("deregistration_delay_seconds"):
            self._set_deregistration_delay(elb, seen.arn, group)
            seen.deregistration_delay_seconds = group.deregistration_delay_seconds
        _add_tags(elb, seen, change)

    @staticmethod
    def _set_deregistration_delay(elb, arn: str, group: TargetGroup) -> None:
        elb.modify_target_group_attributes(TargetGroupArn=arn, Attributes=[
            {"Key": "deregistration_delay.timeout_seconds", "Value": str(group.deregistration_delay_seconds)}])

    def _delete_target_group(self, ctx, change: Change, observed: AlbFacts) -> None:
        # A listener that just moved away (or a load balancer just deleted) can hold on to the
        # target group for a few seconds: AWS says ResourceInUse until then.
        ctx.settle()  # the load balancer's deletion first
        unless_code({"TargetGroupNotFound"}, eventually, ctx.client("elbv2").delete_target_group,
                    TargetGroupArn=change.payload.arn, retry_on={"ResourceInUse"})
        observed.target_groups.pop(change.payload.name, None)

    def _create_listener(self, ctx, change: Change, observed: AlbFacts) -> None:
        listener: Listener = change.payload
        ctx.settle()  # a new load balancer active first
        created = ctx.client("elbv2").create_listener(
            LoadBalancerArn=observed.load_balancer.arn, Protocol=listener.protocol, Port=listener.port,
            DefaultActions=_action_param(listener.default_action, observed), **_tls_params(listener),
            Tags=tagging.tag_list(ctx.tags()))["Listeners"][0]
        observed.listeners[listener.port] = ObservedListener(
            arn=created["ListenerArn"], port=listener.port, protocol=listener.protocol,
            default_action=listener.default_action, owned=True, certificate_arn=listener.certificate_arn,
            ssl_policy=listener.ssl_policy, tags=ctx.tags())

    def _update_listener(self, ctx, change: Change, observed: AlbFacts) -> None:
        listener: Listener = change.payload
        seen = observed.listeners[listener.port]
        elb = ctx.client("elbv2")
        if change.differs(*LISTENER_FIELDS):
            elb.modify_listener(
                ListenerArn=seen.arn, Protocol=listener.protocol, Port=listener.port,
                DefaultActions=_action_param(listener.default_action, observed), **_tls_params(listener))
            seen.protocol, seen.default_action = listener.protocol, listener.default_action
            seen.certificate_arn, seen.ssl_policy = listener.certificate_arn, listener.ssl_policy
        _add_tags(elb, seen, change)

    def _delete_listener(self, ctx, change: Change, observed: AlbFacts) -> None:
        seen: ObservedListener = change.payload
        unless_code({"ListenerNotFound"}, ctx.client("elbv2").delete_listener, ListenerArn=seen.arn)
        observed.listeners.pop(seen.port, None)

    def _create_rule(self, ctx, change: Change, observed: AlbFacts) -> None:
        rule: Rule = change.payload
        created = ctx.client("elbv2").create_rule(
            ListenerArn=observed.listeners[rule.port].arn, Priority=rule.priority,
            Conditions=_conditions_param(rule), Actions=_action_param(rule.action, observed),
            Tags=tagging.tag_list(ctx.tags()))["Rules"][0]
        observed.rules.append(ObservedRule(created["RuleArn"], rule.port, rule.priority, rule.paths, rule.action, True,
                                           tags=ctx.tags()))

    def _update_rule(self, ctx, change: Change, observed: AlbFacts) -> None:
        work: RuleWork = change.payload
        rule, seen = work.rule, work.found
        elb = ctx.client("elbv2")
        if change.differs("priority"):
            elb.set_rule_priorities(RulePriorities=[{"RuleArn": seen.arn, "Priority": rule.priority}])
        if change.differs("paths", "action"):
            elb.modify_rule(RuleArn=seen.arn, Conditions=_conditions_param(rule),
                            Actions=_action_param(rule.action, observed))
        seen.priority, seen.paths, seen.action = rule.priority, rule.paths, rule.action
        _add_tags(elb, seen, change)

    def _delete_rule(self, ctx, change: Change, observed: AlbFacts) -> None:
        seen: ObservedRule = change.payload
        unless_code({"RuleNotFound"}, ctx.client("elbv2").delete_rule, RuleArn=seen.arn)  # gone with its listener?
        observed.rules.remove(seen)

    handlers = {
        ("create", "load_balancer"): _create_load_balancer,
        ("update", "load_balancer"): _update_load_balancer,
        ("delete", "load_balancer"): _delete_load_balancer,
        ("create", "target_group"): _create_target_group,
        ("replace", "target_group"): _create_target_group,
        ("update", "target_group"): _update_target_group,
        ("delete", "target_group"): _delete_target_group,
        ("create", "listener"): _create_listener,
        ("update", "listener"): _update_listener,
        ("delete", "listener"): _delete_listener,
        ("create", "rule"): _create_rule,
        ("update", "rule"): _update_rule,
        ("delete", "rule"): _delete_rule,
    }

    # -- outputs and destroy ----------------------------------------------------------------

    def outputs(self, desired: AlbDesired, observed: AlbFacts) -> AlbOutputs:
        lb = observed.load_balancer
        groups = {group.key: observed.target_groups.get(group.name) for group in desired.target_groups}
        listeners = {listener.key: observed.listeners.get(listener.port) for listener in desired.listeners}
        scheme = "https" if desired.https else "http"
        def unknown(output: str) -> Unknown:
            return Unknown(f"{self.name}.{output}")

        return AlbOutputs(
            load_balancer_arn=lb.arn if lb else unknown("load_balancer_arn"),
            load_balancer_name=desired.load_balancer.name,
            dns_name=lb.dns_name if lb else unknown("dns_name"),
            zone_id=lb.zone_id if lb else unknown("zone_id"),
            url=f"{scheme}://{desired.public_name or lb.dns_name}" if lb else unknown("url"),
            # CloudWatch's LoadBalancer and TargetGroup dimensions: the ARN after its resource type.
            arn_suffix=lb.arn.split(":loadbalancer/")[-1] if lb else unknown("arn_suffix"),
            target_groups={key: seen.arn if seen else unknown(f"target_groups.{key}") for key, seen in groups.items()},
            target_group_arn_suffixes={key: seen.arn.split(":")[-1] if seen else
                                       unknown(f"target_group_arn_suffixes.{key}") for key, seen in groups.items()},
            listener_arns={key: seen.arn if seen else unknown(f"listener_arns.{key}")
                           for key, seen in listeners.items()})

    def plan_destroy(self, observed: AlbFacts) -> list[Change]:
        """Rules, listeners, the load balancer, then target groups; only what carries our tags.
        With deletion protection on, everything is refused: removing listeners alone would cut
        the traffic of a load balancer that stays."""
        lb = observed.load_balancer
        protected = lb is not None and lb.owned and bool(lb.deletion_protection)
        changes = [*(_rule_deletion(rule) for rule in observed.rules if rule.owned),
                   *(_listener_deletion(seen) for _, seen in sorted(observed.listeners.items()) if seen.owned)]
        if lb is not None and lb.owned:
            changes.append(Change("delete", "load_balancer", lb.name,
                                  calls=("elbv2:DeleteLoadBalancer",), payload=lb))
        changes += [_target_group_deletion(seen) for _, seen in sorted(observed.target_groups.items()) if seen.owned]
        if not protected:
            return changes
        note = (f"load balancer {lb.name} has deletion protection on: set load_balancer.deletion_protection "
                "to false and apply before destroying")
        # The load balancer stays in its subnets and security groups: the network stays too.
        return [replace(change, blocked=DELETE_PROTECTED, note=note, holds_dependencies=True) for change in changes]


# --- helpers -----------------------------------------------------------------------------------


#: The key types ListCertificates returns only when asked (by default: RSA_2048 only).
CERTIFICATE_KEY_TYPES = ["RSA_1024", "RSA_2048", "RSA_3072", "RSA_4096", "EC_prime256v1", "EC_secp384r1",
                         "EC_secp521r1"]


def _issued_certificate(acm, domain: str) -> str | None:
    """The ISSUED certificate for `domain` (its name or one of its other names), the one valid
    longest when there are several (a renewal by hand leaves the old one until it expires)."""
    found = [item for page in acm.get_paginator("list_certificates").paginate(
        CertificateStatuses=["ISSUED"], Includes={"keyTypes": CERTIFICATE_KEY_TYPES})
        for item in page["CertificateSummaryList"]
        if domain == item.get("DomainName") or domain in item.get("SubjectAlternativeNameSummaries", [])]
    found.sort(key=lambda item: str(item.get("NotAfter", "")), reverse=True)
    return found[0]["CertificateArn"] if found else None


def _with_certificate(desired: AlbDesired, observed: AlbFacts) -> tuple[Listener, ...]:
    """The listeners, the HTTPS one with the certificate observe found for the domain (where
    none was found, it stays not known: the pre-flight check stops the apply)."""
    if not desired.certificate_domain or not observed.certificate_arn:
        return desired.listeners
    return tuple(replace(listener, certificate_arn=observed.certificate_arn) if listener.port == HTTPS else listener
                 for listener in desired.listeners)


def _certificate_problem(acm, arn: str) -> str | None:
    try:
        status = acm.describe_certificate(CertificateArn=arn)["Certificate"]["Status"]
    except ClientError as error:
        if error_code(error) not in ("ResourceNotFoundException", "ValidationException"):
            raise
        return (f"certificate {arn} (load_balancer.certificate_arn) does not exist in this account and region: "
                "request or import it in ACM first")
    if status != "ISSUED":
        return f"certificate {arn} (load_balancer.certificate_arn) is {status}, not ISSUED: complete its validation"
    return None


def _check_length(what: str, name: str) -> None:
    if len(name) > NAME_LIMIT:
        raise OrchestratorError(f"{what} name {name!r} is {len(name)} characters; AWS allows {NAME_LIMIT}: "
                                "shorten the app, environment or target group name")


def _target_group(prefix: str, key: str, spec, vpc_id: str) -> TargetGroup:
    """The AWS name carries a hash of protocol, port and VPC (unknown until the VPC exists)."""
    _check_length("target group", f"{prefix}-{key}-0000")
    if is_unknown(vpc_id):
        name = vpc_id
    else:
        name = f"{prefix}-{key}-{hashlib.sha256(f'{spec.protocol}:{spec.port}:{vpc_id}'.encode()).hexdigest()[:4]}"
    health = spec.health_check
    return TargetGroup(key=key, name=name, protocol=spec.protocol, port=spec.port, vpc_id=vpc_id,
                       deregistration_delay_seconds=spec.deregistration_delay_seconds,
                       health_check=HealthCheck(health.path, health.matcher, health.interval_seconds,
                                                health.timeout_seconds, health.healthy_threshold,
                                                health.unhealthy_threshold))


def _target_group_key(name_prefix: str, name: str) -> str | None:
    """`gamepulse-dev-grafana-1a2b` → `grafana`: which manifest entry a target group was for."""
    match = re.fullmatch(re.escape(name_prefix) + r"(.+)-[0-9a-f]{4}", name)
    return match.group(1) if match else None



def _listener_key(port: int) -> str:
    return LISTENER_KEYS.get(port, f"port-{port}")


def _rule_name(port: int, priority: int) -> str:
    return f"{_listener_key(port)}-{priority}"


def _paths(conditions: list[dict]) -> tuple[str, ...]:
    for condition in conditions:
        if condition.get("Field") == "path-pattern":
            return tuple((condition.get("PathPatternConfig") or {}).get("Values") or condition.get("Values") or ())
    return ()


def _target_groups_by(elb, key: str, values: list[str]) -> list[dict]:
    """The target groups of these names or ARNs that exist: one describe for up to 20, or, when
    one of them does not exist (AWS then fails the whole call), one describe each."""
    if not values:
        return []
    if len(values) > TARGET_GROUPS_PER_DESCRIBE:
        return [group for start in range(0, len(values), TARGET_GROUPS_PER_DESCRIBE)
                for group in _target_groups_by(elb, key, values[start:start + TARGET_GROUPS_PER_DESCRIBE])]
    found = unless_code({"TargetGroupNotFound"}, elb.describe_target_groups, **{key: values})
    if found is not None:
        return found["TargetGroups"]
    if len(values) == 1:
        return []
    return [group for value in values for group in _target_groups_by(elb, key, [value])]


def _forward_targets(actions: list[dict]) -> list[str]:
    """The target group ARNs a listener's or rule's actions forward to."""
    targets = []
    for action in actions:
        if action.get("TargetGroupArn"):
            targets.append(action["TargetGroupArn"])
        targets += [t["TargetGroupArn"] for t in (action.get("ForwardConfig") or {}).get("TargetGroups", [])]
    return targets


def _observed_action(actions: list[dict], names_by_arn: dict[str, str]) -> Action:
    """AWS's action list as an `Action`: target groups by name, redirects to HTTPS recognised."""
    if not actions:
        return Action("none")
    first = actions[0]
    if first["Type"] == "forward":
        targets = [t["TargetGroupArn"] for t in (first.get("ForwardConfig") or {}).get("TargetGroups", [])]
        if len(targets) > 1:
            return Action("forward-weighted")
        arn = first.get("TargetGroupArn") or targets[0]
        return Action("forward", names_by_arn.get(arn, arn))
    redirect = first.get("RedirectConfig") or {}
    if first["Type"] == "redirect" and (redirect.get("Protocol"), str(redirect.get("Port")),
                                        redirect.get("StatusCode")) == ("HTTPS", str(HTTPS), "HTTP_301"):
        return REDIRECT_TO_HTTPS
    return Action(first["Type"])


def _action_param(action: Action, observed: AlbFacts) -> list[dict]:
    if action == REDIRECT_TO_HTTPS:
        return [{"Type": "redirect",
                 "RedirectConfig": {"Protocol": "HTTPS", "Port": str(HTTPS), "StatusCode": "HTTP_301"}}]
    return [{"Type": "forward", "TargetGroupArn": observed.target_groups[action.target].arn}]


def _conditions_param(rule: Rule) -> list[dict]:
    return [{"Field": "path-pattern", "PathPatternConfig": {"Values": list(rule.paths)}}]


def _tls_params(listener: Listener) -> dict:
    if listener.protocol != "HTTPS":
        return {}
    return {"SslPolicy": listener.ssl_policy, "Certificates": [{"CertificateArn": listener.certificate_arn}]}


def _rule_deletion(seen: ObservedRule) -> Change:
    return Change("delete", "rule", _rule_name(seen.port, seen.priority),
                  diffs=(FieldDiff("paths", seen.paths, None),), calls=("elbv2:DeleteRule",), payload=seen)


def _listener_deletion(seen: ObservedListener) -> Change:
    return Change("delete", "listener", _listener_key(seen.port), calls=("elbv2:DeleteListener",), payload=seen)


def _target_group_deletion(seen: ObservedTargetGroup, retire: bool = False) -> Change:
    """`retire`: during an apply, the services step (which registers tasks in it) moves first."""
    return Change("delete", "target_group", seen.name, calls=("elbv2:DeleteTargetGroup",), payload=seen,
                  retire=retire)


def _add_tags(elb, seen, change: Change) -> None:
    """Put the tags the change's `tags` difference asks for on the resource `seen`, if any."""
    to_set = change.tags_to_set()
    if not to_set:
        return
    elb.add_tags(ResourceArns=[seen.arn], Tags=tagging.tag_list(to_set))
    seen.tags = {**seen.tags, **to_set}


def _load_balancer_state(elb, name: str) -> tuple[bool, str]:
    """Not botocore's `load_balancer_available`: it has no failure acceptor (a `failed` load
    balancer would be awaited until the timeout) and does not count `active_impaired` as up."""
    lb = elb.describe_load_balancers(Names=[name])["LoadBalancers"][0]
    state = lb["State"]
    if state["Code"] == "failed":
        raise WaitFailed(f"load balancer {name} failed to provision: {state.get('Reason', 'no reason given')}")
    return state["Code"] in ("active", "active_impaired"), state["Code"]


STEP = AlbStep
