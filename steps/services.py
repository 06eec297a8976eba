"""Step services: per service of the manifest, its config bundle in S3, its task definition,
its Cloud Map service, its ECS service and its autoscaling.

Reads stay few however many services there are: services are described ten at a time, Cloud
Map services and scaling targets and policies with one listing each, and a task definition is
described only where the last-applied record does not prove what is in service (the record
keeps the revision registered and the hash of its normal form: `steps.taskdefs`). Bundles are
compared by their content hash, recorded at upload.

A change that starts a deployment is settled by its rollout, awaited to its end
(`steps.rollouts`: a circuit-breaker rollback or a timeout fails the step with ECS's reasons);
`status --live` shows the services as ECS says they run now (`rollouts.live_services`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator import tags as tagging
from orchestrator import waiters
from orchestrator.aws import SEVERAL_SERVICES, error_code, unless_code
from orchestrator.errors import OrchestratorError
from orchestrator.model import Accepted, Change, FieldDiff, Step, Unknown, Wait, is_unknown
from orchestrator.permissions import allow
from orchestrator.retry import eventually
from steps import bundles, rollouts, taskdefs

SCALABLE_DIMENSION = "ecs:service:DesiredCount"
CPU_METRIC = "ECSServiceAverageCPUUtilization"
REQUESTS_METRIC = "ALBRequestCountPerTarget"
#: Fields ECS accepts but an emulator may not read back: compared with the last-applied record.
RECORDED_FIELDS = ("deployment", "grace_period", "capacity_provider", "managed_tags")
#: A service change's field for a secret whose new version its tasks must read (`secret:NAME`),
#: and for `--redeploy`: both force a new deployment of the revision in service.
SECRET_FIELD = "secret:"
REDEPLOY = "redeploy"


# --- desired ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """The app's image: a tag of a repository, deployed by the digest it resolves to (step ecr's
    output `images`, in the definition's container `container`)."""

    container: str
    repository: str
    tag: str
    uri: str  # the repository's URI (step ecr): not known until the repository exists
    problem: str = ""  # why step ecr found no image of the tag (not pushed): a pre-flight problem


@dataclass(frozen=True)
class Scaling:
    resource_id: str
    min: int
    max: int
    policies: dict[str, dict]  # policy name → TargetTrackingScalingPolicyConfiguration


@dataclass(frozen=True)
class DesiredService:
    name: str
    bundle: bundles.Bundle | None
    bundle_key: str  # S3 prefix of the bundle's files
    definition: dict  # RegisterTaskDefinition request
    image: ImageRef | None
    desired_count: int
    network: dict  # awsvpcConfiguration
    load_balancers: tuple[dict, ...]
    deployment: dict  # deploymentConfiguration
    grace_period: int | None
    capacity_provider: str
    scaling: Scaling | None
    #: The AWSCURRENT version id of each secret its containers read (secret key → id): the tasks
    #: read a secret's value only when they start, so a new version needs a new deployment.
    secret_versions: dict[str, str] = field(default_factory=dict)
    #: `apply --redeploy NAME`: a new deployment with nothing else changed.
    redeploy: bool = False


@dataclass(frozen=True)
class ServicesDesired:
    cluster: str
    namespace_id: str
    namespace_name: str
    config_bucket: str
    keep_revisions: int
    rollout_timeout: int
    services: tuple[DesiredService, ...]
    tags: dict[str, str]


# --- observed --------------------------------------------------------------------------------


@dataclass
class ServicesFacts:
    services: dict[str, dict] = field(default_factory=dict)  # name → describe_services entry (not INACTIVE)
    definitions: dict[str, dict] = field(default_factory=dict)  # service → in-service definition, described
    discovery: dict[str, dict] = field(default_factory=dict)  # Cloud Map service name → {Id, Arn}
    targets: dict[str, dict] = field(default_factory=dict)  # resource id → scalable target
    policies: dict[str, dict[str, dict]] = field(default_factory=dict)  # resource id → name → policy
    revisions: dict[str, list[str]] = field(default_factory=dict)  # family → ACTIVE ARNs (destroy only)
    registered: dict[str, str] = field(default_factory=dict)  # service → ARN registered by this run
    bundle_versions: dict[str, list[dict]] = field(default_factory=dict)  # service → its objects (destroy only)
    owned: set[str] = field(default_factory=set)  # services carrying our ownership tags
    cluster: str = ""
    namespace_id: str = ""
    config_bucket: str = ""
    keep_revisions: int = 5
    rollout_timeout: int = 900
    poller: rollouts.RolloutPoller | None = None


@dataclass(frozen=True)
class ServicesOutputs:
    cluster_name: str
    services: dict[str, str]  # ECS service ARN by name
    task_definitions: dict[str, str]  # task definition ARN in service, by service
    discovery_names: dict[str, str]  # DNS name each service is found by


def _role_not_visible_yet(error: Exception) -> bool:
    """ECS's answers while a role it needs is not visible to it yet (created or changed seconds
    ago; IAM is eventually consistent): a task definition naming it, "Role is not valid"; a
    service with a load balancer, "Unable to assume role" (its service-linked role)."""
    return (error_code(error) == "ClientException" and "Role is not valid" in str(error)) or \
        (error_code(error) == "InvalidParameterException" and "Unable to assume role" in str(error))


class ServicesStep(Step):
    name = "services"
    depends_on = ("vpc", "ecr", "storage", "secrets", "iam", "efs", "ecs", "alb")
    Outputs = ServicesOutputs
    description = "Config bundles, task definitions, ECS services with Cloud Map names, autoscaling"

    def permissions(self, manifest, scope) -> list[dict]:
        """The deploy role's statements for this step: the environment's ECS services, task
        families, config bundles, Cloud Map services and scaling targets."""
        prefix = manifest.prefix
        config = f"arn:{scope.partition}:s3:::{prefix}-config-{scope.account_id}"
        scaling = [f"application-autoscaling:{action}" for action in (
            "RegisterScalableTarget", "DeregisterScalableTarget", "PutScalingPolicy", "DeleteScalingPolicy",
            "TagResource")]
        return [
            # TagResource: also the tag-on-create of services and task definitions.
            allow("EcsServices", ["ecs:CreateService", "ecs:UpdateService", "ecs:DeleteService", "ecs:DescribeServices",
                                  "ecs:DescribeTasks", "ecs:TagResource", "ecs:RegisterTaskDefinition",
                                  "ecs:DeleteTaskDefinitions"],
                  [scope.arn("ecs", f"cluster/{prefix}"), scope.arn("ecs", f"service/{prefix}/*"),
                   scope.arn("ecs", f"task/{prefix}/*"), scope.arn("ecs", f"task-definition/{prefix}-*:*")]),
            # ListServices and ListTasks are authorised on "*" only, held to the cluster by ecs:cluster.
            allow("EcsListInCluster", ["ecs:ListServices", "ecs:ListTasks"], "*",
                  {"ArnEquals": {"ecs:cluster": scope.arn("ecs", f"cluster/{prefix}")}}),
            # These task-definition actions support no resource-level permissions.
            allow("EcsTaskDefinitions", ["ecs:DeregisterTaskDefinition", "ecs:DescribeTaskDefinition",
                                         "ecs:ListTaskDefinitions"], "*"),
            allow("PassTaskRoles", ["iam:PassRole"], scope.arn("iam", f"role/{prefix}-*", regional=False),
                  {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}),
            allow("ConfigBundles", ["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion",
                                    "s3:ListBucketVersions"], [config, f"{config}/*"]),
            # (Cloud Map's TagResource, authorised on "*" only, is the ecs step's.)
            allow("CloudMapServices", ["servicediscovery:CreateService", "servicediscovery:DeleteService"],
                  [scope.arn("servicediscovery", "namespace/*"), scope.arn("servicediscovery", "service/*")]),
            # Scalable targets have generated ids; the describes and Cloud Map's ListServices support
            # no resource-level permissions, nor does DescribeTargetHealth.
            allow("Autoscaling", scaling, scope.arn("application-autoscaling", "scalable-target/*")),
            allow("ServicesDescribe", ["application-autoscaling:DescribeScalableTargets",
                                       "application-autoscaling:DescribeScalingPolicies",
                                       "servicediscovery:ListServices",
                                       "elasticloadbalancing:DescribeTargetHealth"], "*"),
            # Target tracking makes and removes its alarms in the caller's name.
            allow("TargetTrackingAlarms", ["cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms",
                                           "cloudwatch:DeleteAlarms"],
                  scope.arn("cloudwatch", f"alarm:TargetTracking-service/{prefix}/*")),
            # Application Auto Scaling's role for ECS, made on the first scalable target of the account
            # (not `service_linked_role`: its statement id would be the ECS one's).
            allow("ServiceLinkedRoleEcsAutoscaling", ["iam:CreateServiceLinkedRole"],
                  scope.arn("iam", "role/aws-service-role/ecs.application-autoscaling.amazonaws.com/*", regional=False),
                  {"StringEquals": {"iam:AWSServiceName": "ecs.application-autoscaling.amazonaws.com"}})]

    # -- desired ----------------------------------------------------------------------------

    def desired(self, manifest, inputs) -> ServicesDesired:
        spec = manifest.services
        cluster = inputs.output("ecs", "cluster_name")
        namespace = inputs.output("ecs", "namespace_name")
        config_bucket = inputs.entry("storage", "buckets", "config")
        services: tuple[DesiredService, ...] = ()
        if spec is not None:  # a manifest without services runs none (destroy still finds ours)
            # Plain strings: a value not known yet renders as its placeholder (the hash follows once known).
            rendered = bundles.render(manifest, bundles.Facts(
                loki_bucket=f"{inputs.entry('storage', 'buckets', 'loki-chunks')}", namespace=f"{namespace}",
                region=inputs.region, cluster_arn=f"{inputs.output('ecs', 'cluster_arn')}",
                load_balancer_dns=f"{inputs.output('alb', 'dns_name')}"))
            services = tuple(self._service(manifest, inputs, name, task, rendered, cluster, config_bucket)
                             for name, task in spec.tasks.items())
        return ServicesDesired(cluster=cluster, namespace_id=inputs.output("ecs", "namespace_id"),
                               namespace_name=namespace, config_bucket=config_bucket,
                               keep_revisions=spec.keep_revisions if spec else 0,
                               rollout_timeout=spec.rollout_timeout_seconds if spec else 0, services=services,
                               tags=tagging.ownership_tags(manifest.app, manifest.environment, self.name,
                                                           manifest.tags))

    def _service(self, manifest, inputs, name: str, task, rendered: dict, cluster: str,
                 config_bucket: str) -> DesiredService:
        bundle_name = task.bundle or (task.app.sidecar if task.app else None)
        bundle = rendered[bundle_name] if bundle_name else None
        settings = taskdefs.TaskSettings(
            family=f"{manifest.prefix}-{name}", service=name, cpu=task.cpu, memory=task.memory,
            execution_role_arn=inputs.output("iam", "execution_role_arn"),
            task_role_arn=inputs.entry("iam", "task_role_arns", name),
            log_group=inputs.entry("ecs", "log_groups", name),
            region=inputs.region, init_image=manifest.services.init_image, config_bucket=config_bucket,
            stop_timeout=task.stop_timeout_seconds,
            file_system_id=inputs.output("efs", "file_system_id") if task.data_volume else None,
            access_point_id=inputs.entry("efs", "access_points", task.data_volume) if task.data_volume else None)
        image = app = None
        if task.app is not None:
            repository = manifest.images.repositories[task.app.image]
            problems = inputs.output("ecr", "image_problems")
            image = ImageRef(container=name, repository=repository.name or task.app.image, tag=repository.tag,
                             uri=inputs.entry("ecr", "repositories", task.app.image),
                             problem=problems.get(task.app.image, "") if isinstance(problems, dict) else "")
            app = taskdefs.AppContainer(
                name=name, image=inputs.entry("ecr", "images", task.app.image), port=task.app.port,
                health_check=tuple(task.app.health_check) if task.app.health_check else None,
                environment={**bundles.app_environment(manifest), **task.app.environment},
                secrets={variable: inputs.entry("secrets", "arns", secret)
                         for variable, secret in task.app.secrets.items()})
        arns = {secret: inputs.entry("secrets", "arns", secret) for secret in manifest.secrets.values}
        reads = set(task.app.secrets.values()) if task.app else set()
        reads |= set(bundle.container.secrets.values()) if bundle else set()
        definition = taskdefs.render(settings, bundle, app, arns)
        load_balancers: tuple[dict, ...] = ()
        if task.target_group:
            port = manifest.load_balancer.target_groups[task.target_group].port
            load_balancers = ({"targetGroupArn": inputs.entry("alb", "target_groups", task.target_group),
                               "containerName": name if task.app else bundle.service, "containerPort": port},)
        return DesiredService(
            name=name, bundle=bundle, bundle_key=taskdefs.bundle_prefix(name, bundle.hash) if bundle else "",
            definition=definition, image=image,
            desired_count=task.desired_count,
            network={"subnets": sorted(inputs.items("vpc", "private_subnet_ids")),
                     "securityGroups": [inputs.entry("vpc", "security_groups", task.security_group)],
                     "assignPublicIp": "DISABLED"},
            load_balancers=load_balancers,
            deployment={"minimumHealthyPercent": task.min_healthy_percent, "maximumPercent": task.max_percent,
                        "deploymentCircuitBreaker": {"enable": True, "rollback": True}},
            grace_period=task.grace_period_seconds if load_balancers else None,
            capacity_provider=task.capacity_provider,
            scaling=_scaling(task, cluster, name, inputs),
            secret_versions={key: inputs.entry("secrets", "versions", key) for key in sorted(reads)},
            redeploy=name in manifest.redeploy)

    # -- observe ----------------------------------------------------------------------------

    def observe(self, ctx, desired: ServicesDesired) -> ServicesFacts:
        facts = ServicesFacts(cluster=desired.cluster, namespace_id=desired.namespace_id,
                              config_bucket=desired.config_bucket, keep_revisions=desired.keep_revisions,
                              rollout_timeout=desired.rollout_timeout)
        ecs = ctx.client("ecs")
        facts.poller = rollouts.RolloutPoller(ecs, ctx.client("elbv2"), desired.cluster)

        def discovery() -> dict[str, dict] | None:
            if is_unknown(desired.namespace_id):
                return None
            return self._observe_discovery(ctx.client("servicediscovery"), desired.namespace_id)

        # Services (ECS) and Cloud Map services: two services, read at once.
        facts.services, found_discovery = ctx.each(SEVERAL_SERVICES, lambda read: read(), [
            lambda: self._observe_services(ecs, desired), discovery])
        if found_discovery is not None:
            facts.discovery = found_discovery
        facts.owned = {name for name, live in facts.services.items()
                       if ctx.owns(tagging.tag_dict(live.get("tags"), "key", "value"))}
        wanted = {s.name for s in desired.services}
        # What goes: everything when destroying, else our services the manifest no longer lists.
        going = sorted(facts.owned | wanted) if ctx.destroying else sorted(facts.owned - wanted)
        reads = []  # each fills its own facts: scaling targets and policies, task definitions
        if facts.services and (going or any(s.scaling for s in desired.services)):
            reads.append(lambda: self._observe_scaling(ctx.client("application-autoscaling"), facts, desired.cluster))
        if not ctx.destroying:
            reads.append(lambda: self._observe_definitions(ctx, ecs, desired, facts))
        ctx.each(SEVERAL_SERVICES, lambda read: read(), reads)
        if going:
            self._observe_bundles(ctx.client("s3"), desired.config_bucket, going, facts)
            families = {_family(facts.services[name]["taskDefinition"]) for name in going if name in facts.services}
            if ctx.destroying:
                families |= {_family_of(s) for s in desired.services}
            for family in sorted(families):
                facts.revisions[family] = [arn for page in ecs.get_paginator("list_task_definitions").paginate(
                    familyPrefix=family, status="ACTIVE") for arn in page["taskDefinitionArns"]
                    if _family(arn) == family]
        return facts

    def _observe_definitions(self, ctx, ecs, desired: ServicesDesired, facts: ServicesFacts) -> None:
        """The definition in service, described only where the last-applied record does not prove
        it is the one wanted (same revision, same hash): a change is coming, or the service runs
        a revision this tool did not record. The describes go out at once."""
        unproven = []
        for service in desired.services:
            live = facts.services.get(service.name)
            record = ctx.recorded.get(f"task_definition/{service.name}", {})
            wanted = taskdefs.definition_hash(service.definition)
            if live and (record.get("arn"), record.get("hash")) != (live["taskDefinition"], wanted):
                unproven.append((service.name, live["taskDefinition"]))
        described = ctx.each("ecs", lambda item: ecs.describe_task_definition(taskDefinition=item[1])["taskDefinition"],
                             unproven)
        facts.definitions.update((name, definition) for (name, _), definition in zip(unproven, described))

    def _observe_services(self, ecs, desired: ServicesDesired) -> dict[str, dict]:
        """The cluster's services, ten per describe: ours by name, and any other (one the manifest
        no longer lists is ours to delete if it carries our tags)."""
        if is_unknown(desired.cluster):  # the cluster was never made (or is gone): nothing runs in it
            return {}
        names = [s.name for s in desired.services]
        try:
            listed = [arn.rsplit("/", 1)[-1] for page in ecs.get_paginator("list_services").paginate(
                cluster=desired.cluster) for arn in page["serviceArns"]]
        except Exception as error:
            if error_code(error) == "ClusterNotFoundException":
                return {}
            raise
        names += sorted(set(listed) - set(names))
        return rollouts.active_services(ecs, desired.cluster, names, include=["TAGS"])

    def _observe_bundles(self, s3, bucket: str, services: list[str], facts: ServicesFacts) -> None:
        """Every version of the bundle objects of `services` (the bucket is versioned): what goes with them."""
        if is_unknown(bucket):
            return
        for name in services:
            try:
                pages = list(s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=f"{name}/"))
            except Exception as error:
                if error_code(error) == "NoSuchBucket":
                    return
                raise
            versions = [{"Key": item["Key"], "VersionId": item["VersionId"]} for page in pages
                        for item in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            if versions:
                facts.bundle_versions[name] = versions

    def _observe_discovery(self, discovery, namespace_id: str) -> dict[str, dict]:
        """Cloud Map services of our namespace by name (the namespace is this environment's own)."""
        in_namespace = [{"Name": "NAMESPACE_ID", "Values": [namespace_id], "Condition": "EQ"}]
        return {item["Name"]: {"Id": item["Id"], "Arn": item["Arn"]}
                for page in discovery.get_paginator("list_services").paginate(Filters=in_namespace)
                for item in page["Services"]}

    def _observe_scaling(self, scaling, facts: ServicesFacts, cluster: str) -> None:
        resource_ids = [f"service/{cluster}/{name}" for name in sorted(facts.services)]
        for start in range(0, len(resource_ids), 50):
            for page in scaling.get_paginator("describe_scalable_targets").paginate(
                    ServiceNamespace="ecs", ResourceIds=resource_ids[start:start + 50]):
                for target in page["ScalableTargets"]:
                    facts.targets[target["ResourceId"]] = target
        if facts.targets:
            wanted = set(facts.targets)
            for page in scaling.get_paginator("describe_scaling_policies").paginate(ServiceNamespace="ecs"):
                for policy in page["ScalingPolicies"]:
                    if policy["ResourceId"] in wanted:
                        facts.policies.setdefault(policy["ResourceId"], {})[policy["PolicyName"]] = policy

    # -- plan -------------------------------------------------------------------------------

    def plan(self, desired: ServicesDesired, observed: ServicesFacts, recorded: dict[str, dict]) -> list[Change]:
        changes: list[Change] = []
        for service in desired.services:
            changes += self._plan_service(desired, service, observed, recorded)
        wanted = {service.name for service in desired.services}
        unwanted = sorted(observed.owned - wanted)
        discovery = sorted(set(observed.discovery) - wanted)
        # After the steps that depend on this one moved off them (the engine's retire phase).
        return changes + [replace(change, retire=True, note=change.note or "no longer in the manifest")
                          for change in _deletions(unwanted, discovery, observed)]

    def _plan_service(self, desired: ServicesDesired, service: DesiredService, observed: ServicesFacts,
                      recorded: dict[str, dict]) -> list[Change]:
        changes = []
        if service.bundle is not None:
            last = recorded.get(f"bundle/{service.name}", {}).get("hash")
            if last != service.bundle.hash:
                changes.append(Change("create" if last is None else "update", "bundle", service.name,
                                      diffs=(FieldDiff("hash", last, service.bundle.hash),),
                                      calls=("s3:PutObject",), payload=service,
                                      record={"hash": service.bundle.hash},
                                      note="; ".join([f"{len(service.bundle.files)} file(s) under "
                                                      f"s3://{desired.config_bucket}/{service.bundle_key}",
                                                      *service.bundle.notes])))
        definition = service.definition
        digest = taskdefs.definition_hash(definition)
        live = observed.services.get(service.name)
        in_service = _in_service_hash(service.name, live, observed, recorded)
        arn = live["taskDefinition"] if live else None
        if in_service != digest:
            diffs = _definition_diffs(service.name, definition, live, observed.definitions.get(service.name))
            changes.append(Change("create" if live is None else "update", "task_definition", service.name,
                                  diffs=_with_image_tags(diffs, service, _tag_in_service(service, live, recorded)),
                                  calls=("ecs:RegisterTaskDefinition", "ecs:DeregisterTaskDefinition"),
                                  payload=(service, definition, digest),
                                  note="; ".join(taskdefs.health_check_notes(definition))))
            arn = Unknown(f"services.task_definitions.{service.name}")
        discovery = observed.discovery.get(service.name)
        if discovery is None:
            changes.append(Change("create", "discovery_service", service.name,
                                  diffs=(FieldDiff("dns_name", None, service.name),),
                                  calls=("servicediscovery:CreateService",), payload=service))
        changes += self._plan_ecs_service(desired, service, live, arn, discovery, recorded,
                                          owned=service.name in observed.owned)
        if service.scaling is not None:
            changes += _plan_scaling(service, observed)
        return changes

    def _plan_ecs_service(self, desired: ServicesDesired, service: DesiredService, live: dict | None, arn: str,
                          discovery: dict | None, recorded: dict[str, dict], owned: bool) -> list[Change]:
        wanted = _service_fields(service, arn, discovery)
        record = {**{key: wanted[key] for key in RECORDED_FIELDS}, "secret_versions": service.secret_versions}
        if live is None:
            return [Change("create", "service", service.name,
                           diffs=tuple(FieldDiff(key, None, value) for key, value in wanted.items()),
                           calls=("ecs:CreateService",), payload=service, record=record)]
        if not owned:
            raise tagging.not_ours("ECS service", service.name)
        last = recorded.get(f"service/{service.name}", {})
        current = {**_live_fields(live), **last}
        diffs = [FieldDiff(key, current.get(key), value) for key, value in wanted.items()
                 if key != "desired_count" and current.get(key) != value]
        notes = []
        if service.scaling is None:
            if live["desiredCount"] != service.desired_count:
                diffs.append(FieldDiff("desired_count", live["desiredCount"], service.desired_count))
        else:
            notes.append(f"desired count left to autoscaling ({live['desiredCount']} now, "
                         f"{service.scaling.min}..{service.scaling.max})")
        rolls, why = _forced_deployment(service, last.get("secret_versions"))
        notes += why
        record_only = not rolls and service.secret_versions and "secret_versions" not in last
        retag = tagging.tag_diffs(tagging.tag_dict(live.get("tags"), "key", "value"), desired.tags)
        if not diffs and not rolls and not retag and not record_only:
            return []
        if record_only:  # recorded by an older version of this tool: from now on, as its tasks read them
            notes.append("records the secret versions its tasks read (no new deployment)")
            rolls = (FieldDiff("secret_versions", None, service.secret_versions),)
        calls = (("ecs:UpdateService",) if diffs or (rolls and not record_only) else ()) + \
            (("ecs:TagResource",) if retag else ())
        return [Change("update", "service", service.name, diffs=tuple(diffs) + rolls + retag, calls=calls,
                       payload=service, record=record, note="; ".join(notes))]

    def preflight(self, ctx, desired: ServicesDesired, observed: ServicesFacts) -> list[str]:
        """An image tag to deploy that its repository does not hold (found by step ecr)."""
        return [f"service {service.name}: {service.image.problem}" for service in desired.services
                if service.image is not None and service.image.problem]

    def remarks(self, desired: ServicesDesired, observed: ServicesFacts) -> list[str]:
        """What the rendered configs cannot do, said on every plan (not only when they change):
        critical alerts that no mail server will send."""
        return [remark for service in desired.services if service.bundle for remark in service.bundle.remarks]

    # -- apply ------------------------------------------------------------------------------

    def _create_bundle(self, ctx, change: Change, observed: ServicesFacts) -> None:
        service: DesiredService = change.payload
        s3 = ctx.client("s3")
        bucket = observed.config_bucket
        for path, content in service.bundle.files.items():
            s3.put_object(Bucket=bucket, Key=f"{service.bundle_key}{path}", Body=content)

    def _create_task_definition(self, ctx, change: Change, observed: ServicesFacts) -> Accepted:
        service, definition, digest = change.payload
        _refuse_unknown_image(service, definition)
        ecs = ctx.client("ecs")
        arn = self._registered_already(ctx, ecs, definition["family"], digest) or eventually(
            ecs.register_task_definition, retry_if=_role_not_visible_yet,
            **definition, tags=tagging.tag_list(ctx.tags(), "key", "value"))["taskDefinition"]["taskDefinitionArn"]
        observed.registered[service.name] = arn
        if change.action == "update":  # a first revision has no older ones to deregister
            self._deregister_old(ecs, definition["family"], observed.keep_revisions, arn)
        tag = {"image_tag": service.image.tag} if service.image else {}  # the plan names the image in service by it
        return Accepted(record={"arn": arn, "hash": digest, **tag})


    @staticmethod
    def _registered_already(ctx, ecs, family: str, digest: str) -> str | None:
        """The family's newest ACTIVE revision when it is this very definition (its normal form's
        hash) and ours: registered by a run killed (or whose answer was lost) before it recorded
        it. RegisterTaskDefinition has no idempotency token, so without this every such run
        would leave one more revision."""
        try:
            newest = ecs.describe_task_definition(taskDefinition=family, include=["TAGS"])
        except Exception as error:
            if error_code(error) != "ClientException":  # ECS's answer for a family with no ACTIVE revision
                raise
            return None
        tags = tagging.tag_dict(newest.get("tags"), "key", "value")
        if newest["taskDefinition"].get("status") != "ACTIVE" or not ctx.owns(tags) \
                or taskdefs.definition_hash(newest["taskDefinition"]) != digest:
            return None
        ctx.log.info("adopting task definition registered by an earlier run", revision=newest["taskDefinition"]
                     ["taskDefinitionArn"].rsplit("/", 1)[-1])
        return newest["taskDefinition"]["taskDefinitionArn"]

    def _deregister_old(self, ecs, family: str, keep: int, current: str) -> None:
        """Revisions beyond the newest `keep` (never the one just registered)."""
        arns = [arn for page in ecs.get_paginator("list_task_definitions").paginate(
            familyPrefix=family, status="ACTIVE") for arn in page["taskDefinitionArns"]
            if _family(arn) == family]
        arns.sort(key=_revision, reverse=True)
        for arn in arns[keep:]:
            if arn != current:
                ecs.deregister_task_definition(taskDefinition=arn)

    def _create_discovery_service(self, ctx, change: Change, observed: ServicesFacts) -> None:
        discovery = ctx.client("servicediscovery")
        created = discovery.create_service(
            Name=change.name, NamespaceId=observed.namespace_id,
            CreatorRequestId=ctx.token(f"discovery/{change.name}", salt=observed.namespace_id),
            DnsConfig={"RoutingPolicy": "MULTIVALUE", "DnsRecords": [{"Type": "A", "TTL": 10}]},
            HealthCheckCustomConfig={"FailureThreshold": 1}, Tags=tagging.tag_list(ctx.tags()))["Service"]
        observed.discovery[change.name] = {"Id": created["Id"], "Arn": created["Arn"]}

    def _create_service(self, ctx, change: Change, observed: ServicesFacts) -> Accepted:
        service: DesiredService = change.payload
        arn = self._task_definition(service, observed)
        registries = [{"registryArn": observed.discovery[service.name]["Arn"]}]
        params = dict(cluster=observed.cluster, serviceName=service.name, taskDefinition=arn,
                      desiredCount=service.desired_count,
                      capacityProviderStrategy=[{"capacityProvider": service.capacity_provider, "weight": 1}],
                      networkConfiguration={"awsvpcConfiguration": service.network},
                      loadBalancers=list(service.load_balancers), serviceRegistries=registries,
                      deploymentConfiguration=service.deployment, propagateTags="SERVICE",
                      enableECSManagedTags=True, schedulingStrategy="REPLICA",
                      clientToken=ctx.token(f"service/{service.name}", salt=arn),
                      tags=tagging.tag_list(ctx.tags(), "key", "value"))
        if service.grace_period is not None:
            params["healthCheckGracePeriodSeconds"] = service.grace_period
        created = eventually(ctx.client("ecs").create_service, retry_if=_role_not_visible_yet, **params)["service"]
        observed.services[service.name] = created
        return Accepted(waits=(self._rollout(ctx, service, arn, observed),))

    def _update_service(self, ctx, change: Change, observed: ServicesFacts) -> Accepted:
        service: DesiredService = change.payload
        ecs = ctx.client("ecs")
        live = observed.services[service.name]
        waits = ()
        if change.calls and "ecs:UpdateService" in change.calls:
            arn = self._task_definition(service, observed)
            params: dict[str, Any] = {"cluster": observed.cluster, "service": service.name}
            if change.differs("task_definition"):
                params["taskDefinition"] = arn
            if change.differs("desired_count"):
                params["desiredCount"] = service.desired_count
            if change.differs("network"):
                params["networkConfiguration"] = {"awsvpcConfiguration": service.network}
            if change.differs("load_balancers"):
                params["loadBalancers"] = list(service.load_balancers)
            if change.differs("service_registries"):
                params["serviceRegistries"] = [{"registryArn": observed.discovery[service.name]["Arn"]}]
            if change.differs("propagate_tags"):
                params["propagateTags"] = "SERVICE"
            if change.differs("managed_tags"):
                params["enableECSManagedTags"] = True
            if change.differs("deployment"):
                params["deploymentConfiguration"] = service.deployment
            if change.differs("grace_period") and service.grace_period is not None:
                params["healthCheckGracePeriodSeconds"] = service.grace_period
            if change.differs("capacity_provider"):  # ECS moves tasks to another provider only on a new deployment
                params["capacityProviderStrategy"] = [{"capacityProvider": service.capacity_provider, "weight": 1}]
                params["forceNewDeployment"] = True
            forced = change.differs(REDEPLOY) or any(d.field.startswith(SECRET_FIELD) for d in change.diffs)
            if forced:  # tasks read secrets only as they start: new tasks, the same revision
                params["forceNewDeployment"] = True
            observed.services[service.name] = eventually(ecs.update_service, retry_if=_role_not_visible_yet,
                                                         **params)["service"]
            if forced or change.differs("task_definition", "network", "load_balancers", "capacity_provider",
                                        "desired_count"):
                waits = (self._rollout(ctx, service, arn, observed),)
        if change.differs("tags"):
            to_set = change.tags_to_set()
            ecs.tag_resource(resourceArn=live["serviceArn"], tags=tagging.tag_list(to_set, "key", "value"))
        return Accepted(waits=waits)

    def _task_definition(self, service: DesiredService, observed: ServicesFacts) -> str:
        return observed.registered.get(service.name) or observed.services[service.name]["taskDefinition"]

    def _rollout(self, ctx, service: DesiredService, arn: str, observed: ServicesFacts) -> Wait:
        poller = observed.poller
        poller.expect(service.name, arn, [lb["targetGroupArn"] for lb in service.load_balancers],
                      observed.rollout_timeout)
        # The check itself fails at the deadline, naming ECS's reasons; the wait's own bound is a backstop.
        return Wait(f"rollout of service {service.name}", lambda: poller.check(service.name),
                    timeout=observed.rollout_timeout + 60)

    def _create_scaling(self, ctx, change: Change, observed: ServicesFacts) -> None:
        service: DesiredService = change.payload
        scaling = ctx.client("application-autoscaling")
        target = service.scaling
        if change.differs("min", "max"):
            scaling.register_scalable_target(ServiceNamespace="ecs", ResourceId=target.resource_id,
                                             ScalableDimension=SCALABLE_DIMENSION, MinCapacity=target.min,
                                             MaxCapacity=target.max, Tags=ctx.tags())
        for name, config in target.policies.items():
            if change.differs(f"policy:{name}"):
                scaling.put_scaling_policy(PolicyName=name, ServiceNamespace="ecs", ResourceId=target.resource_id,
                                           ScalableDimension=SCALABLE_DIMENSION, PolicyType="TargetTrackingScaling",
                                           TargetTrackingScalingPolicyConfiguration=config)
        for diff in change.diffs:
            name = diff.field.removeprefix("policy:")
            if diff.field.startswith("policy:") and name not in target.policies:
                scaling.delete_scaling_policy(PolicyName=name, ServiceNamespace="ecs", ResourceId=target.resource_id,
                                              ScalableDimension=SCALABLE_DIMENSION)


    # -- destroy ----------------------------------------------------------------------------

    def gone(self, ctx, arns: list[str]) -> set[str]:
        """ECS services deleted (INACTIVE, or no longer known), which the tagging API lists for a
        while; described per cluster, ten at a time (DescribeServices' limit)."""
        by_cluster: dict[str, list[str]] = {}
        for arn in tagging.arns_of(arns, "ecs", "service"):
            by_cluster.setdefault(arn.split("/")[-2], []).append(arn)
        found: set[str] = set()
        batch = rollouts.DESCRIBE_BATCH
        for cluster, listed in by_cluster.items():
            for start in range(0, len(listed), batch):
                answer = unless_code({"ClusterNotFoundException"}, ctx.client("ecs").describe_services,
                                     cluster=cluster, services=listed[start:start + batch])
                if answer is None:  # the cluster is gone, and its services with it
                    found |= set(listed)
                    break
                found |= {item["serviceArn"] for item in answer["services"] if item["status"] == "INACTIVE"}
                found |= {item["arn"] for item in answer.get("failures", []) if item.get("reason") == "MISSING"}
        return found

    def plan_destroy(self, observed: ServicesFacts) -> list[Change]:
        """Scaling first (it would scale the service back up), then every service scaled to zero
        and deleted, awaited until INACTIVE (their targets leave the target groups and their
        Cloud Map instances go), then the Cloud Map services, then the task definitions."""
        return _deletions(sorted(observed.owned), sorted(observed.discovery), observed)

    def _delete_scaling(self, ctx, change: Change, observed: ServicesFacts) -> None:
        unless_code({"ObjectNotFoundException", "ValidationException"},
                    ctx.client("application-autoscaling").deregister_scalable_target,
                    ServiceNamespace="ecs", ResourceId=change.payload, ScalableDimension=SCALABLE_DIMENSION)

    def _delete_service(self, ctx, change: Change, observed: ServicesFacts) -> Accepted:
        ecs = ctx.client("ecs")
        gone = {"ServiceNotFoundException", "ServiceNotActiveException"}
        unless_code(gone, ecs.update_service, cluster=observed.cluster, service=change.name, desiredCount=0)
        unless_code(gone, ecs.delete_service, cluster=observed.cluster, service=change.name, force=True)
        observed.services.pop(change.name, None)
        check = waiters.botocore_check(ecs, "services_inactive", f"ECS service {change.name}",
                                       cluster=observed.cluster, services=[change.name])
        return Accepted(waits=(Wait(f"deletion of ECS service {change.name}", check),))

    def _delete_discovery_service(self, ctx, change: Change, observed: ServicesFacts) -> None:
        ctx.settle()  # the ECS services gone first: ECS deregisters their instances as their tasks stop
        discovery = ctx.client("servicediscovery")
        # Cloud Map refuses the delete while an instance is still registered (ResourceInUse).
        waiters.retry_while(f"deletion of Cloud Map service {change.name}",
                            lambda: unless_code({"ServiceNotFound"}, discovery.delete_service, Id=change.payload),
                            {"ResourceInUse"}, log=ctx.log, stop=ctx.stop)
        observed.discovery.pop(change.name, None)

    def _delete_bundle(self, ctx, change: Change, observed: ServicesFacts) -> None:
        s3 = ctx.client("s3")
        for start in range(0, len(change.payload), 1000):
            s3.delete_objects(Bucket=observed.config_bucket,
                              Delete={"Objects": change.payload[start:start + 1000], "Quiet": True})
        observed.bundle_versions.pop(change.name, None)

    def _delete_task_definition(self, ctx, change: Change, observed: ServicesFacts) -> None:
        """Deregistered, then deleted: an INACTIVE revision would otherwise stay, with our tags."""
        ecs = ctx.client("ecs")
        arns = list(change.payload)
        for arn in arns:
            unless_code({"ClientException"}, ecs.deregister_task_definition, taskDefinition=arn)
        for start in range(0, len(arns), 10):
            ecs.delete_task_definitions(taskDefinitions=arns[start:start + 10])
        observed.revisions.pop(change.name, None)

    handlers = {
        ("create", "bundle"): _create_bundle,
        ("update", "bundle"): _create_bundle,
        ("create", "task_definition"): _create_task_definition,
        ("update", "task_definition"): _create_task_definition,
        ("create", "discovery_service"): _create_discovery_service,
        ("create", "service"): _create_service,
        ("update", "service"): _update_service,
        ("create", "scaling"): _create_scaling,
        ("update", "scaling"): _create_scaling,
        ("delete", "scaling"): _delete_scaling,
        ("delete", "service"): _delete_service,
        ("delete", "discovery_service"): _delete_discovery_service,
        ("delete", "bundle"): _delete_bundle,
        ("delete", "task_definition"): _delete_task_definition,
    }

    # -- status --live ---------------------------------------------------------------------

    def live(self, ctx, outputs: dict) -> dict:
        """What `status --live` shows of this step: per service of the manifest, its tasks,
        rollout, revision and target health now (`rollouts.live_services`)."""
        if ctx.manifest.services is None:
            return {}
        return rollouts.live_services(ctx.client("ecs"), ctx.client("elbv2"),
                                      outputs.get("cluster_name") or ctx.manifest.prefix,
                                      list(ctx.manifest.services.tasks))

    # -- outputs ----------------------------------------------------------------------------

    def outputs(self, desired: ServicesDesired, observed: ServicesFacts) -> ServicesOutputs:
        names = [s.name for s in desired.services]
        namespace = desired.namespace_name
        return ServicesOutputs(
            cluster_name=desired.cluster,
            services={name: observed.services[name]["serviceArn"] if name in observed.services
                      else Unknown(f"services.services.{name}") for name in names},
            task_definitions={name: observed.registered.get(name) or
                              (observed.services[name]["taskDefinition"] if name in observed.services
                               else Unknown(f"services.task_definitions.{name}")) for name in names},
            discovery_names={name: f"{name}.{namespace}" for name in names})


# --- planning helpers (pure) -------------------------------------------------------------------


def _deletions(services: list[str], discovery: list[str], observed: ServicesFacts) -> list[Change]:
    """Deletes of `services` (ours) and the Cloud Map services named `discovery`, in a safe
    order, with the task definitions and bundles observe found going with them."""
    changes = []
    for name in services:
        resource_id = f"service/{observed.cluster}/{name}"
        if resource_id in observed.targets:
            changes.append(Change("delete", "scaling", name,
                                  calls=("application-autoscaling:DeregisterScalableTarget",), payload=resource_id))
    changes += [Change("delete", "service", name, calls=("ecs:UpdateService", "ecs:DeleteService"))
                for name in services]
    changes += [Change("delete", "discovery_service", name, calls=("servicediscovery:DeleteService",),
                       payload=observed.discovery[name]["Id"]) for name in discovery]
    changes += [Change("delete", "task_definition", family,
                       calls=("ecs:DeregisterTaskDefinition", "ecs:DeleteTaskDefinitions"),
                       payload=tuple(arns)) for family, arns in sorted(observed.revisions.items()) if arns]
    changes += [Change("delete", "bundle", name, calls=("s3:DeleteObjects",), payload=versions,
                       note=f"{len(versions)} object version(s) of its config bundles")
                for name, versions in sorted(observed.bundle_versions.items())]
    return changes


def _in_service_hash(name: str, live: dict | None, observed: ServicesFacts, recorded: dict[str, dict]) -> str | None:
    """The hash of the definition in service: the normal form of what observe described, else
    the record's when it names that revision."""
    if live is None:
        return None
    if name in observed.definitions:
        return taskdefs.definition_hash(observed.definitions[name])
    record = recorded.get(f"task_definition/{name}", {})
    return record.get("hash") if record.get("arn") == live["taskDefinition"] else None


def _definition_diffs(service_name: str, definition: dict, live: dict | None,
                      described: dict | None) -> tuple[FieldDiff, ...]:
    """What changes, field by field (per container: image, environment, …) when the definition in
    service is known; otherwise (a first revision) the images it will run."""
    new = taskdefs.normalise(definition)
    if live is None or described is None:
        return (FieldDiff("revision", live["taskDefinition"] if live else None,
                          Unknown(f"services.task_definitions.{service_name}")),
                *(FieldDiff(f"container:{c['name']}.image", None, c.get("image")) for c in new["containerDefinitions"]))
    old = taskdefs.normalise(described)
    diffs = [FieldDiff(key, old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
             if key != "containerDefinitions" and old.get(key) != new.get(key)]
    old_containers = {c["name"]: c for c in old["containerDefinitions"]}
    new_containers = {c["name"]: c for c in new["containerDefinitions"]}
    for name in sorted(set(old_containers) | set(new_containers)):
        before, after = old_containers.get(name, {}), new_containers.get(name, {})
        diffs += [FieldDiff(f"container:{name}.{key}", before.get(key), after.get(key))
                  for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]
    return tuple(diffs)


def _refuse_unknown_image(service: DesiredService, definition: dict) -> None:
    """A definition whose app image step ecr could not resolve (a repository this run made holds
    no image of the tag yet: the pre-flight saw no repository to look in) is not registered:
    said in the user's words, not as a request refused for an unknown value."""
    if service.image is None:
        return
    image = next(c["image"] for c in definition["containerDefinitions"] if c["name"] == service.image.container)
    if is_unknown(image):
        raise OrchestratorError(f"service {service.name}: " + (
            service.image.problem or f"no image tagged {service.image.tag!r} is known in ECR repository "
                                     f"{service.image.repository!r}; push it, then apply again"))


def _tag_in_service(service: DesiredService, live: dict | None, recorded: dict[str, dict]) -> str | None:
    """The image tag the revision in service was registered with, when the record names it."""
    record = recorded.get(f"task_definition/{service.name}", {})
    return record.get("image_tag") if live and record.get("arn") == live["taskDefinition"] else None


def _with_image_tags(diffs: tuple[FieldDiff, ...], service: DesiredService,
                     old_tag: str | None) -> tuple[FieldDiff, ...]:
    """The app's image as a person reads it: `gamepulse 1.4.2 → gamepulse 1.4.1 (sha256:…)`, the
    repository and tag first, the digest deployed after (the old digest where its tag is not known)."""
    if service.image is None:
        return diffs
    field_name = f"container:{service.image.container}.image"

    def label(image, tag: str | None, digest_shown: bool) -> Any:
        if image is None or is_unknown(image):  # still "(known after apply)": a saved plan matches any digest
            return image if tag is None else f"{service.image.repository} {tag} {image}"
        digest = image.rpartition("@")[2] if "@" in image else ""
        short = f"{digest[:19]}…" if digest else image
        if tag is None:
            return f"{service.image.repository} {short}" if image.startswith(service.image.uri) else image
        return f"{service.image.repository} {tag}" + (f" ({short})" if digest_shown and digest else "")

    return tuple(FieldDiff(d.field, label(d.old, old_tag, False), label(d.new, service.image.tag, True))
                 if d.field == field_name else d for d in diffs)


def _forced_deployment(service: DesiredService, last_versions: dict | None) -> tuple[tuple[FieldDiff, ...], list[str]]:
    """Why the service needs a new deployment with nothing else changed: a secret its tasks read
    has a new version since its last rollout (`last_versions`, recorded then), or `--redeploy`.
    The differences name secrets and version ids, never a value."""
    rotated = sorted(key for key, version in service.secret_versions.items()
                     if last_versions is not None and key in last_versions and last_versions[key] != version)
    diffs = tuple(FieldDiff(f"{SECRET_FIELD}{key}", last_versions[key], service.secret_versions[key])
                  for key in rotated)
    notes = [f"new deployment: secret {', '.join(rotated)} has a new value since the last rollout "
             "(ECS reads secrets only when a task starts)"] if rotated else []
    if bundles.GRAFANA_ADMIN_SECRET in rotated:  # the one secret a new task does not take up
        notes.append(bundles.ADMIN_PASSWORD_NOTE)
    if service.redeploy:
        diffs += (FieldDiff(REDEPLOY, None, "forced (--redeploy)"),)
        if not rotated:
            notes.append("new deployment: --redeploy")
    return diffs, notes


def _service_fields(service: DesiredService, arn: str, discovery: dict | None) -> dict:
    return {"task_definition": arn, "desired_count": service.desired_count, "network": service.network,
            "load_balancers": list(service.load_balancers),
            "service_registries": [discovery["Arn"] if discovery else Unknown(f"services.discovery.{service.name}")],
            "propagate_tags": "SERVICE", "deployment": service.deployment, "grace_period": service.grace_period,
            "capacity_provider": service.capacity_provider, "managed_tags": True}


def _live_fields(live: dict) -> dict:
    network = live.get("networkConfiguration", {}).get("awsvpcConfiguration", {})
    return {"task_definition": live["taskDefinition"], "desired_count": live["desiredCount"],
            "network": {"subnets": sorted(network.get("subnets", [])),
                        "securityGroups": sorted(network.get("securityGroups", [])),
                        "assignPublicIp": network.get("assignPublicIp", "DISABLED")},
            "load_balancers": [{"targetGroupArn": lb.get("targetGroupArn"), "containerName": lb.get("containerName"),
                                "containerPort": lb.get("containerPort")} for lb in live.get("loadBalancers", [])],
            "service_registries": [r["registryArn"] for r in live.get("serviceRegistries", [])],
            "propagate_tags": live.get("propagateTags")}


def _scaling(task, cluster: str, name: str, inputs) -> Scaling | None:
    spec = task.autoscaling
    if spec is None:
        return None
    cooldowns = {"ScaleInCooldown": spec.scale_in_cooldown_seconds, "ScaleOutCooldown": spec.scale_out_cooldown_seconds}
    policies = {f"{name}-cpu": {"TargetValue": float(spec.cpu_target), **cooldowns,
                                "PredefinedMetricSpecification": {"PredefinedMetricType": CPU_METRIC}}}
    if spec.requests_per_target:
        label = (f"{inputs.output('alb', 'arn_suffix')}/"
                 f"{inputs.entry('alb', 'target_group_arn_suffixes', task.target_group)}")
        policies[f"{name}-requests"] = {"TargetValue": float(spec.requests_per_target), **cooldowns,
                                        "PredefinedMetricSpecification": {"PredefinedMetricType": REQUESTS_METRIC,
                                                                          "ResourceLabel": label}}
    return Scaling(resource_id=f"service/{cluster}/{name}", min=spec.min, max=spec.max, policies=policies)


def _plan_scaling(service: DesiredService, observed: ServicesFacts) -> list[Change]:
    scaling = service.scaling
    target = observed.targets.get(scaling.resource_id)
    diffs = []
    if target is None or (target["MinCapacity"], target["MaxCapacity"]) != (scaling.min, scaling.max):
        diffs += [FieldDiff("min", target and target["MinCapacity"], scaling.min),
                  FieldDiff("max", target and target["MaxCapacity"], scaling.max)]
    policies = observed.policies.get(scaling.resource_id, {})
    for name, config in scaling.policies.items():
        current = policies.get(name, {}).get("TargetTrackingScalingPolicyConfiguration")
        if _policy_view(current) != _policy_view(config):
            diffs.append(FieldDiff(f"policy:{name}", _policy_view(current), _policy_view(config)))
    diffs += [FieldDiff(f"policy:{name}", _policy_view(policy.get("TargetTrackingScalingPolicyConfiguration")), None)
              for name, policy in sorted(policies.items()) if name not in scaling.policies]
    if not diffs:
        return []
    calls = (("application-autoscaling:RegisterScalableTarget",) if any(d.field in ("min", "max") for d in diffs)
             else ()) + ("application-autoscaling:PutScalingPolicy", "application-autoscaling:DeleteScalingPolicy")
    return [Change("create" if target is None else "update", "scaling", service.name, diffs=tuple(diffs), calls=calls,
                   payload=service)]


def _policy_view(config: dict | None) -> dict | None:
    if config is None:
        return None
    metric = config.get("PredefinedMetricSpecification", {})
    return {"target": float(config.get("TargetValue", 0)), "metric": metric.get("PredefinedMetricType"),
            "label": metric.get("ResourceLabel"), "scale_in": config.get("ScaleInCooldown"),
            "scale_out": config.get("ScaleOutCooldown")}


def _family(arn: str) -> str:
    return arn.rsplit("/", 1)[-1].rsplit(":", 1)[0]


def _revision(arn: str) -> int:
    return int(arn.rsplit(":", 1)[-1])


def _family_of(service: DesiredService) -> str:
    return service.definition["family"]


STEP = ServicesStep
