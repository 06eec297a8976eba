"""Step ecs: the ECS cluster, one CloudWatch log group per task family, and the Cloud Map
private DNS namespace in which the services find each other by name."""
from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator import tags as tagging
from orchestrator.aws import SEVERAL_SERVICES, error_code, unless_code
from orchestrator.errors import OrchestratorError
from orchestrator.model import DELETE_DATA, Accepted, Change, FieldDiff, Step, Unknown, Wait, diff_fields
from orchestrator.permissions import FIND_BY_TAG, allow, service_linked_role
from orchestrator.retry import eventually
from orchestrator.waiters import WaitFailed
from steps.iam import ensure_service_linked_role

#: ECS's service-linked role's service (AWSServiceRoleForECS).
ECS_SERVICE = "ecs.amazonaws.com"


def _adopt_log_group(ctx, logs, name: str) -> None:
    """A log group CreateLogGroup says exists: ours (our tags) to carry on with, or an error."""
    found = [g for g in logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"] if g["logGroupName"] == name]
    arn = found[0]["arn"].removesuffix(":*") if found else None
    tags = logs.list_tags_for_resource(resourceArn=arn)["tags"] if arn else {}
    if not ctx.owns(tags):
        raise tagging.not_ours("log group", name, ctx.tags())


def _linked_role_not_ready(error: Exception) -> bool:
    """ECS's answer while its service-linked role is being made (a fresh account)."""
    return error_code(error) == "InvalidParameterException" and "Unable to assume the service linked role" in str(error)

CONTAINER_INSIGHTS = "containerInsights"


# --- desired ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Strategy:
    provider: str
    weight: int
    base: int

    def __str__(self) -> str:  # as plans show it
        return f"{self.provider} weight {self.weight} base {self.base}"


@dataclass(frozen=True)
class Cluster:
    name: str
    container_insights: str  # "enhanced" | "enabled" | "disabled", as ECS spells the setting
    capacity_providers: tuple[str, ...]  # sorted: the order means nothing to ECS
    default_strategy: tuple[Strategy, ...]  # sorted by provider


@dataclass(frozen=True)
class LogGroup:
    family: str
    name: str
    retention_days: int


@dataclass(frozen=True)
class Namespace:
    name: str
    vpc_id: str


@dataclass(frozen=True)
class EcsDesired:
    cluster: Cluster
    log_group_prefix: str
    log_groups: tuple[LogGroup, ...]
    namespace: Namespace
    tags: dict[str, str]  # every resource of the step carries them: ownership plus the manifest's


# --- observed --------------------------------------------------------------------------------


@dataclass
class ObservedCluster:
    name: str
    arn: str
    owned: bool
    container_insights: str | None = None
    capacity_providers: tuple[str, ...] = ()
    default_strategy: tuple[Strategy, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class ObservedLogGroup:
    name: str
    owned: bool
    retention_days: int | None = None
    arn: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    #: Read only where a delete needs it (destroy, a group the manifest no longer wants).
    holds_logs: bool = True


@dataclass
class ObservedNamespace:
    """Only ever ours: one of our name that is not ours belongs to another VPC or is refused
    by AWS when we create ours."""

    id: str
    arn: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class EcsFacts:
    cluster: ObservedCluster | None = None
    log_groups: dict[str, ObservedLogGroup] = field(default_factory=dict)  # by log group name
    namespace: ObservedNamespace | None = None


CLUSTER_FIELDS = ("container_insights", "capacity_providers", "default_strategy")


@dataclass(frozen=True)
class EcsOutputs:
    cluster_name: str
    cluster_arn: str
    log_groups: dict[str, str]  # task family → log group name
    namespace_id: str
    namespace_name: str
    namespace_arn: str


class EcsStep(Step):
    name = "ecs"
    depends_on = ("vpc",)
    Outputs = EcsOutputs
    description = "ECS cluster, log groups per task family, Cloud Map namespace"

    def permissions(self, manifest, scope) -> list[dict]:
        """The deploy role's statements for this step: the environment's cluster and log groups;
        namespaces have generated ids, so those of this account and region."""
        return [
            # TagResource: also the tag-on-create of CreateCluster (condition ecs:CreateAction).
            allow("EcsCluster", ["ecs:CreateCluster", "ecs:DescribeClusters", "ecs:DeleteCluster",
                                 "ecs:PutClusterCapacityProviders", "ecs:UpdateClusterSettings", "ecs:TagResource",
                                 "ecs:ListTagsForResource"],
                  scope.arn("ecs", f"cluster/{manifest.prefix}")),
            # DescribeLogStreams: does a group about to be deleted hold logs?
            allow("LogGroups", ["logs:CreateLogGroup", "logs:DeleteLogGroup", "logs:PutRetentionPolicy",
                                "logs:TagResource", "logs:ListTagsForResource", "logs:DescribeLogStreams"],
                  scope.arn("logs", f"log-group:/ecs/{manifest.prefix}/*")),
            # DescribeLogGroups is asked with our name prefix, but is authorised on "*" only.
            allow("LogGroupsDescribe", ["logs:DescribeLogGroups"], "*"),
            allow("CloudMapNamespace", ["servicediscovery:GetNamespace", "servicediscovery:DeleteNamespace"],
                  scope.arn("servicediscovery", "namespace/*")),
            # Cloud Map's tagging actions are authorised on "*" only (also the tag-on-create of
            # its namespaces and services).
            allow("CloudMapTags", ["servicediscovery:TagResource", "servicediscovery:ListTagsForResource"], "*"),
            # These Cloud Map calls support no resource-level permissions; a private namespace is
            # a Route 53 hosted zone Cloud Map makes and deletes in the caller's name (zone ids
            # are generated), in the VPC it reads.
            allow("CloudMapCreate", ["servicediscovery:CreatePrivateDnsNamespace", "servicediscovery:ListNamespaces",
                                     "servicediscovery:GetOperation", "route53:CreateHostedZone",
                                     "route53:GetHostedZone", "route53:ListHostedZonesByName",
                                     "route53:ChangeResourceRecordSets", "route53:DeleteHostedZone",
                                     "ec2:DescribeVpcs"], "*"),
            service_linked_role(scope, ECS_SERVICE),
            FIND_BY_TAG]

    # -- desired ----------------------------------------------------------------------------

    def desired(self, manifest, inputs) -> EcsDesired:
        spec = manifest.cluster
        prefix = manifest.prefix
        log_prefix = f"/ecs/{prefix}/"
        return EcsDesired(
            cluster=Cluster(
                name=prefix,
                container_insights=spec.container_insights,
                capacity_providers=tuple(sorted(spec.capacity_providers)),
                default_strategy=_sorted_strategy(Strategy(s.provider, s.weight, s.base)
                                                  for s in spec.default_strategy)),
            log_group_prefix=log_prefix,
            log_groups=tuple(LogGroup(family, f"{log_prefix}{family}", manifest.logging.retention_days)
                             for family in spec.log_groups),
            namespace=Namespace(name=spec.namespace or f"{prefix}.local",
                                vpc_id=inputs.output("vpc", "vpc_id")),
            tags=tagging.ownership_tags(manifest.app, manifest.environment, self.name, manifest.tags))

    # -- observe ----------------------------------------------------------------------------

    def observe(self, ctx, desired: EcsDesired) -> EcsFacts:
        """Cluster (ECS), log groups (CloudWatch Logs) and namespace (Cloud Map), read at once."""
        cluster, log_groups, namespace = ctx.each(SEVERAL_SERVICES, lambda read: read(), [
            lambda: self._observe_cluster(ctx, desired.cluster.name),
            lambda: self._observe_log_groups(ctx, desired),
            lambda: self._observe_namespace(ctx, desired.namespace.name)])
        return EcsFacts(cluster=cluster, log_groups=log_groups, namespace=namespace)

    def _observe_cluster(self, ctx, name: str) -> ObservedCluster | None:
        response = ctx.client("ecs").describe_clusters(clusters=[name], include=["SETTINGS", "TAGS"])
        # A deleted cluster stays visible as INACTIVE for a while; for us it is gone.
        found = [c for c in response["clusters"] if c["status"] != "INACTIVE"]
        if not found:
            return None
        cluster = found[0]
        settings = {s["name"]: s["value"] for s in cluster.get("settings", [])}
        tags = tagging.tag_dict(cluster.get("tags"), "key", "value")
        return ObservedCluster(
            name=cluster["clusterName"], arn=cluster["clusterArn"], owned=ctx.owns(tags), tags=tags,
            container_insights=settings.get(CONTAINER_INSIGHTS),
            capacity_providers=tuple(sorted(cluster.get("capacityProviders", []))),
            default_strategy=_sorted_strategy(
                Strategy(s["capacityProvider"], s.get("weight", 0), s.get("base", 0))
                for s in cluster.get("defaultCapacityProviderStrategy", [])))

    def _observe_log_groups(self, ctx, desired: EcsDesired) -> dict[str, ObservedLogGroup]:
        """Every log group under the environment's prefix, ours or not. The logs API returns
        no tags with the groups; one tagging-API read finds which of them are ours, with their
        tags. That API shows new tags only after a while, so a group it leaves out is asked
        about by itself (normally none is: only a group made moments ago, or one that is not
        ours)."""
        logs = ctx.client("logs")
        owned = self._owned_log_group_tags(ctx)
        wanted = {group.name for group in desired.log_groups}
        groups: dict[str, ObservedLogGroup] = {}
        for page in logs.get_paginator("describe_log_groups").paginate(logGroupNamePrefix=desired.log_group_prefix):
            for group in page["logGroups"]:
                name = group["logGroupName"]
                arn = group.get("logGroupArn") or group["arn"].removesuffix(":*")
                tags = owned[arn] if arn in owned else logs.list_tags_for_resource(resourceArn=arn).get("tags", {})
                deleting = ctx.destroying or name not in wanted
                groups[name] = ObservedLogGroup(
                    name=name, owned=ctx.owns(tags), retention_days=group.get("retentionInDays"), arn=arn, tags=tags,
                    holds_logs=_holds_logs(logs, group) if deleting and ctx.owns(tags) else True)
        return groups

    def _owned_log_group_tags(self, ctx) -> dict[str, dict[str, str]]:
        """The tags of the log groups carrying this step's ownership tags, by ARN. The filter
        names the service ("logs"), which AWS accepts for all its resource types."""
        filters = [{"Key": key, "Values": [value]} for key, value in
                   ((tagging.APP, ctx.app), (tagging.ENV, ctx.env), (tagging.STEP, self.name))]
        pages = ctx.client("resourcegroupstaggingapi").get_paginator("get_resources").paginate(
            TagFilters=filters, ResourceTypeFilters=["logs"])
        return {item["ResourceARN"]: tagging.tag_dict(item.get("Tags"))
                for page in pages for item in page["ResourceTagMappingList"]}

    def _observe_namespace(self, ctx, name: str) -> ObservedNamespace | None:
        """The one of that name that is ours, if any. Private namespaces of other VPCs may
        share the name, so one that is not ours is no reason to refuse: AWS itself rejects the
        create if one of that name is in the same VPC, and says so."""
        discovery = ctx.client("servicediscovery")
        ours = [{"Name": "TYPE", "Values": ["DNS_PRIVATE"], "Condition": "EQ"},
                {"Name": "NAME", "Values": [name], "Condition": "EQ"}]
        for page in discovery.get_paginator("list_namespaces").paginate(Filters=ours):
            for namespace in page["Namespaces"]:
                if namespace["Name"] == name:
                    tags = tagging.tag_dict(
                        discovery.list_tags_for_resource(ResourceARN=namespace["Arn"]).get("Tags"))
                    if ctx.owns(tags):
                        return ObservedNamespace(id=namespace["Id"], arn=namespace["Arn"], name=name, tags=tags)
        return None

    # -- plan -------------------------------------------------------------------------------

    def plan(self, desired: EcsDesired, observed: EcsFacts, recorded: dict[str, dict]) -> list[Change]:
        return [*self._plan_cluster(desired.cluster, observed.cluster, desired.tags),
                *self._plan_log_groups(desired.log_groups, observed.log_groups, desired.tags),
                *self._plan_namespace(desired.namespace, observed.namespace, recorded, desired.tags)]

    def _plan_cluster(self, cluster: Cluster, seen: ObservedCluster | None, tags: dict[str, str]) -> list[Change]:
        if seen is None:
            return [Change("create", "cluster", cluster.name, diffs=diff_fields(cluster, None, CLUSTER_FIELDS),
                           calls=("iam:CreateServiceLinkedRole", "ecs:CreateCluster"), payload=cluster)]
        if not seen.owned:
            raise tagging.not_ours("ECS cluster", cluster.name)
        diffs = diff_fields(cluster, seen, CLUSTER_FIELDS) + tagging.tag_diffs(seen.tags, tags)
        if not diffs:
            return []
        calls = []
        if any(d.field == "container_insights" for d in diffs):
            calls.append("ecs:UpdateClusterSettings")
        if any(d.field in ("capacity_providers", "default_strategy") for d in diffs):
            calls.append("ecs:PutClusterCapacityProviders")
        if any(d.field == "tags" for d in diffs):
            calls.append("ecs:TagResource")
        return [Change("update", "cluster", cluster.name, diffs=diffs, calls=tuple(calls), payload=cluster)]

    def _plan_log_groups(self, groups: tuple[LogGroup, ...], seen: dict[str, ObservedLogGroup],
                         tags: dict[str, str]) -> list[Change]:
        changes = []
        for group in groups:
            found = seen.get(group.name)
            if found is None:
                changes.append(Change("create", "log_group", group.name,
                                      diffs=(FieldDiff("retention_days", None, group.retention_days),),
                                      calls=("logs:CreateLogGroup", "logs:PutRetentionPolicy"), payload=group,
                                      after=()))  # the new log groups are made together
                continue
            if not found.owned:
                raise tagging.not_ours("log group", group.name)
            retention = diff_fields(group, found, ("retention_days",))
            retag = tagging.tag_diffs(found.tags, tags)
            if retention or retag:
                calls = (("logs:PutRetentionPolicy",) if retention else ()) + (("logs:TagResource",) if retag else ())
                changes.append(Change("update", "log_group", group.name, diffs=retention + retag, calls=calls,
                                      payload=group))
        wanted = {group.name for group in groups}
        changes += [_log_group_deletion(found, "no longer in the manifest")
                    for name, found in sorted(seen.items()) if found.owned and name not in wanted]
        return changes

    def _plan_namespace(self, namespace: Namespace, seen: ObservedNamespace | None,
                        recorded: dict[str, dict], tags: dict[str, str]) -> list[Change]:
        key = f"namespace/{namespace.name}"
        record = {"vpc_id": namespace.vpc_id}
        if seen is None:
            return [Change("create", "namespace", namespace.name,
                           diffs=(FieldDiff("vpc_id", None, namespace.vpc_id),),
                           calls=("servicediscovery:CreatePrivateDnsNamespace",),
                           payload=namespace, record=record)]
        # Cloud Map does not report a namespace's VPC: compare with the VPC of the last apply.
        last_vpc = recorded.get(key, {}).get("vpc_id")
        if last_vpc is None or last_vpc == namespace.vpc_id:
            retag = tagging.tag_diffs(seen.tags, tags)
            return [Change("update", "namespace", namespace.name, diffs=retag,
                           calls=("servicediscovery:TagResource",), payload=namespace)] if retag else []
        # Delete first, a change of its own whose wait the replace settles before it creates.
        return [Change("delete", "namespace", namespace.name, calls=("servicediscovery:DeleteNamespace",),
                       note=f"in {last_vpc}: replaced by one in {namespace.vpc_id}"),
                Change("replace", "namespace", namespace.name,
                       diffs=(FieldDiff("vpc_id", last_vpc, namespace.vpc_id),),
                       calls=("servicediscovery:CreatePrivateDnsNamespace",),
                       payload=namespace, record=record,
                       outage="a namespace cannot move to another VPC and its name cannot exist twice: it is "
                              "deleted first, and services registered in it cannot be found by name until "
                              "they register in the new one")]

    # -- apply ------------------------------------------------------------------------------

    def _create_cluster(self, ctx, change: Change, observed: EcsFacts) -> None:
        cluster: Cluster = change.payload
        # In a fresh account ECS makes its service-linked role on the first cluster with capacity
        # providers, and refuses that create until the role is usable: make the role first, and
        # retry that refusal for a bounded time (the role may have been made just now).
        ensure_service_linked_role(ctx, ECS_SERVICE)
        response = eventually(
            ctx.client("ecs").create_cluster, retry_if=_linked_role_not_ready,
            clusterName=cluster.name,
            settings=_settings_param(cluster),
            capacityProviders=list(cluster.capacity_providers),
            defaultCapacityProviderStrategy=_strategy_param(cluster.default_strategy),
            tags=tagging.tag_list(ctx.tags(), "key", "value"))
        observed.cluster = ObservedCluster(cluster.name, response["cluster"]["clusterArn"], owned=True,
                                           container_insights=cluster.container_insights,
                                           capacity_providers=cluster.capacity_providers,
                                           default_strategy=cluster.default_strategy, tags=ctx.tags())

    def _update_cluster(self, ctx, change: Change, observed: EcsFacts) -> None:
        """Never `create_cluster` again on an existing cluster: that would reset its settings."""
        cluster: Cluster = change.payload
        ecs = ctx.client("ecs")
        if change.differs("container_insights"):
            ecs.update_cluster_settings(cluster=cluster.name, settings=_settings_param(cluster))
        if change.differs("capacity_providers", "default_strategy"):
            ecs.put_cluster_capacity_providers(
                cluster=cluster.name, capacityProviders=list(cluster.capacity_providers),
                defaultCapacityProviderStrategy=_strategy_param(cluster.default_strategy))
        seen = observed.cluster
        if change.differs("tags"):
            to_set = change.tags_to_set()
            ecs.tag_resource(resourceArn=seen.arn, tags=tagging.tag_list(to_set, "key", "value"))
            seen.tags = {**seen.tags, **to_set}
        seen.container_insights = cluster.container_insights
        seen.capacity_providers = cluster.capacity_providers
        seen.default_strategy = cluster.default_strategy

    def _delete_cluster(self, ctx, change: Change, observed: EcsFacts) -> None:
        try:
            unless_code({"ClusterNotFoundException"}, ctx.client("ecs").delete_cluster, cluster=change.name)
        except Exception as error:
            if error_code(error) in ("ClusterContainsServicesException", "ClusterContainsTasksException"):
                raise OrchestratorError(f"ECS cluster {change.name} still runs services or tasks; "
                                        "destroy the services step first") from None
            raise
        observed.cluster = None

    def _create_log_group(self, ctx, change: Change, observed: EcsFacts) -> None:
        group: LogGroup = change.payload
        logs = ctx.client("logs")
        try:
            logs.create_log_group(logGroupName=group.name, tags=ctx.tags())
        except Exception as error:
            if error_code(error) != "ResourceAlreadyExistsException":
                raise
            # Made already (a lost answer retried, or observe's list lagged): carry on only with ours.
            _adopt_log_group(ctx, logs, group.name)
        logs.put_retention_policy(logGroupName=group.name, retentionInDays=group.retention_days)
        observed.log_groups[group.name] = ObservedLogGroup(group.name, owned=True,
                                                           retention_days=group.retention_days, tags=ctx.tags())

    def _update_log_group(self, ctx, change: Change, observed: EcsFacts) -> None:
        group: LogGroup = change.payload
        logs = ctx.client("logs")
        seen = observed.log_groups[group.name]
        if change.differs("retention_days"):
            logs.put_retention_policy(logGroupName=group.name, retentionInDays=group.retention_days)
            seen.retention_days = group.retention_days
        if change.differs("tags"):
            to_set = change.tags_to_set()
            logs.tag_resource(resourceArn=seen.arn, tags=to_set)
            seen.tags = {**seen.tags, **to_set}

    def _delete_log_group(self, ctx, change: Change, observed: EcsFacts) -> None:
        unless_code({"ResourceNotFoundException"}, ctx.client("logs").delete_log_group, logGroupName=change.name)
        observed.log_groups.pop(change.name, None)

    def _create_namespace(self, ctx, change: Change, observed: EcsFacts) -> Accepted:
        namespace: Namespace = change.payload
        discovery = ctx.client("servicediscovery")
        # The token follows the VPC, so a retry repeats the same request and a move is a new one.
        try:
            operation = discovery.create_private_dns_namespace(
                Name=namespace.name, Vpc=namespace.vpc_id,
                CreatorRequestId=ctx.token(f"namespace/{namespace.name}", salt=namespace.vpc_id),
                Tags=tagging.tag_list(ctx.tags()))["OperationId"]
        except Exception as error:
            if error_code(error) != "DuplicateRequest":
                raise
            # A run killed while the namespace was being created: follow the first request.
            operation = error.response["DuplicateOperationId"]

        def created(namespace_id: str) -> None:
            found = discovery.get_namespace(Id=namespace_id)["Namespace"]
            observed.namespace = ObservedNamespace(id=found["Id"], arn=found["Arn"], name=found["Name"],
                                                   tags=ctx.tags())

        return Accepted(waits=(_operation(discovery, operation, f"Cloud Map namespace {namespace.name}", created),))

    def _update_namespace(self, ctx, change: Change, observed: EcsFacts) -> None:
        seen = observed.namespace
        to_set = change.tags_to_set()
        ctx.client("servicediscovery").tag_resource(ResourceARN=seen.arn, Tags=tagging.tag_list(to_set))
        seen.tags = {**seen.tags, **to_set}

    def _delete_namespace(self, ctx, change: Change, observed: EcsFacts) -> Accepted:
        discovery = ctx.client("servicediscovery")
        try:
            deleted = unless_code({"NamespaceNotFound"}, discovery.delete_namespace, Id=observed.namespace.id)
        except Exception as error:
            if error_code(error) == "ResourceInUse":
                raise OrchestratorError(f"Cloud Map namespace {change.name} still holds services; "
                                        "destroy the services step first") from None
            raise
        observed.namespace = None
        if deleted is None:
            return Accepted()
        return Accepted(waits=(_operation(discovery, deleted["OperationId"],
                                          f"deletion of Cloud Map namespace {change.name}"),))

    def _replace_namespace(self, ctx, change: Change, observed: EcsFacts) -> Accepted:
        """The new one, once the old one is gone (the delete change before this one, see the
        plan's outage): the name cannot exist twice."""
        ctx.settle()
        return self._create_namespace(ctx, change, observed)

    handlers = {
        ("create", "cluster"): _create_cluster,
        ("update", "cluster"): _update_cluster,
        ("delete", "cluster"): _delete_cluster,
        ("create", "log_group"): _create_log_group,
        ("update", "log_group"): _update_log_group,
        ("delete", "log_group"): _delete_log_group,
        ("create", "namespace"): _create_namespace,
        ("update", "namespace"): _update_namespace,
        ("delete", "namespace"): _delete_namespace,
        ("replace", "namespace"): _replace_namespace,
    }

    # -- outputs and destroy ----------------------------------------------------------------

    def outputs(self, desired: EcsDesired, observed: EcsFacts) -> EcsOutputs:
        cluster, namespace = observed.cluster, observed.namespace
        return EcsOutputs(
            cluster_name=desired.cluster.name,
            cluster_arn=cluster.arn if cluster else Unknown(f"{self.name}.cluster_arn"),
            log_groups={group.family: group.name for group in desired.log_groups},
            namespace_id=namespace.id if namespace else Unknown(f"{self.name}.namespace_id"),
            namespace_name=desired.namespace.name,
            namespace_arn=namespace.arn if namespace else Unknown(f"{self.name}.namespace_arn"))

    def gone(self, ctx, arns: list[str]) -> set[str]:
        """Clusters deleted (INACTIVE), which the tagging API lists for a while."""
        clusters = tagging.arns_of(arns, "ecs", "cluster")
        if not clusters:
            return set()
        answer = ctx.client("ecs").describe_clusters(clusters=clusters)
        return ({item["clusterArn"] for item in answer["clusters"] if item["status"] == "INACTIVE"}
                | {item["arn"] for item in answer.get("failures", []) if item.get("reason") == "MISSING"})

    def plan_destroy(self, observed: EcsFacts) -> list[Change]:
        """Namespace, then log groups (one holding logs is refused without delete-data), then the
        cluster, which the services step must have emptied. Only what carries our tags."""
        changes = []
        if observed.namespace:
            changes.append(Change("delete", "namespace", observed.namespace.name,
                                  calls=("servicediscovery:DeleteNamespace",)))
        changes += [_log_group_deletion(group, "the environment is destroyed")
                    for _, group in sorted(observed.log_groups.items()) if group.owned]
        if observed.cluster and observed.cluster.owned:
            changes.append(Change("delete", "cluster", observed.cluster.name, calls=("ecs:DeleteCluster",)))
        return changes


def _holds_logs(logs, group: dict) -> bool:
    """Whether a log group may hold log events: stored bytes, or any log stream (AWS updates
    `storedBytes` only now and then, so a group written to just now can still show 0)."""
    if group.get("storedBytes"):
        return True
    return bool(logs.describe_log_streams(logGroupName=group["logGroupName"], limit=1).get("logStreams"))


def _log_group_deletion(group: ObservedLogGroup, why: str) -> Change:
    diffs = (FieldDiff("retention_days", group.retention_days, None),)
    if not group.holds_logs:
        return Change("delete", "log_group", group.name, diffs=diffs, calls=("logs:DeleteLogGroup",),
                      note=f"{why}: log group {group.name} holds no logs")
    return Change("delete", "log_group", group.name, diffs=diffs, calls=("logs:DeleteLogGroup",), blocked=DELETE_DATA,
                  note=f"{why}: deleting log group {group.name} loses the logs it holds")


def _sorted_strategy(items) -> tuple[Strategy, ...]:
    return tuple(sorted(items, key=lambda s: s.provider))


def _settings_param(cluster: Cluster) -> list[dict]:
    return [{"name": CONTAINER_INSIGHTS, "value": cluster.container_insights}]


def _strategy_param(strategy: tuple[Strategy, ...]) -> list[dict]:
    return [{"capacityProvider": s.provider, "weight": s.weight, "base": s.base} for s in strategy]


def _operation(discovery, operation_id: str, what: str, done=None) -> Wait:
    """Await a Cloud Map operation (Cloud Map has no botocore waiter); `done(namespace_id)` runs
    once it succeeded."""
    def check() -> tuple[bool, str]:
        operation = discovery.get_operation(OperationId=operation_id)["Operation"]
        status = operation["Status"]
        if status == "FAIL":
            raise WaitFailed(f"{what} failed: {operation.get('ErrorCode', '')} {operation.get('ErrorMessage', '')}")
        if status == "SUCCESS" and done is not None:
            done(operation.get("Targets", {}).get("NAMESPACE", ""))
        return status == "SUCCESS", status

    return Wait(what, check)


STEP = EcsStep
