"""Step `iam`: the ECS task execution role and one task role per service.

- `APP-ENV-execution`: trusted by ECS tasks; the managed AmazonECSTaskExecutionRolePolicy
  (pull images, write logs) and an inline policy `read-secrets` that reads exactly the
  platform's secrets, by ARN.
- `APP-ENV-task-NAME`: trusted by ECS tasks; an inline policy `grants` built from the task's
  grants in the manifest, each naming its actions and resources.

Every policy on our roles is managed: an inline policy or a managed policy that is not ours is
removed, a statement added by hand is taken out again. Policy documents are compared by
meaning (see `normalise_policy`). Of the tags, only our keys are managed: tags others added
(cost allocation, compliance) stay.

A new role takes a few seconds to become usable by other services in real AWS. Nothing here
waits for that (a role is readable at once, so there is nothing to poll): the services step,
the first to hand these roles to ECS, must wrap its register/create/update calls in
`orchestrator.retry.eventually`, retrying on the error ECS gives for a role it cannot assume yet.
"""
from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field, replace

from orchestrator import tags as tagging
from orchestrator.aws import error_code, unless_code
from orchestrator.errors import OrchestratorError
from orchestrator import waiters
from orchestrator.model import Accepted, Change, FieldDiff, Step, Unknown, Wait, is_unknown
from orchestrator.permissions import allow

EXECUTION = "execution"
#: What IAM answers for a role or policy that is gone already: a delete counts as done.
GONE = frozenset({"NoSuchEntity"})

#: How long a role or policy created or changed in this run is given to reach ECS before the
#: services step uses it. IAM is eventually consistent (IAM user guide, "Changes that I make are
#: not always immediately visible") and says no more; ECS refuses a role it cannot see yet
#: ("Role is not valid") or tasks fail to assume it, and the circuit breaker rolls back. Only a
#: run that changed IAM waits; the services step also retries ECS's role errors.
IAM_PROPAGATION_SECONDS = 10.0


#: What every IAM change of a run waits for: one thing, said once in the progress lines however
#: many roles changed (the changes themselves are listed as they are made).
PROPAGATION = "IAM changes of this run to reach ECS"


def _propagation() -> Wait:
    """Until IAM_PROPAGATION_SECONDS after this change."""
    since = waiters.clock()

    def check() -> tuple[bool, str]:
        left = IAM_PROPAGATION_SECONDS - (waiters.clock() - since)
        return (True, "given time to reach ECS") if left <= 0 else (False, f"{left:.0f}s of IAM propagation left")

    return Wait(PROPAGATION, check, timeout=IAM_PROPAGATION_SECONDS + 60,
                due=since + IAM_PROPAGATION_SECONDS)


def _propagated() -> Accepted:
    """An IAM change AWS accepted, settled once IAM has had time to show it to ECS."""
    return Accepted(waits=(_propagation(),))


def ensure_service_linked_role(ctx, service: str) -> None:
    """The account's service-linked role for `service` (ecs.amazonaws.com, …), made now where a
    step's first call would otherwise fail while AWS makes it (ECS: "Unable to assume the
    service linked role"). IAM answers InvalidInput "…has been taken in this account" when the
    role exists: nothing to do."""
    try:
        ctx.client("iam").create_service_linked_role(AWSServiceName=service)
    except Exception as error:
        if not (error_code(error) == "InvalidInput" and "has been taken" in str(error)):
            raise
        return
    ctx.log.info("created the account's service-linked role", service=service)
SECRETS_POLICY = "read-secrets"
GRANTS_POLICY = "grants"


@dataclass(frozen=True)
class DesiredRole:
    key: str  # "execution" or the task role's manifest name
    name: str  # gamepulse-dev-execution, gamepulse-dev-task-loki
    description: str
    trust_policy: dict
    inline_policies: dict[str, dict]  # policy name → document
    managed_policies: tuple[str, ...]  # ARNs
    tags: dict[str, str]


@dataclass(frozen=True)
class IamDesired:
    app: str
    env: str
    prefix: str
    execution_role: str  # the execution role's name
    roles: dict[str, DesiredRole]  # role name → role


@dataclass
class ObservedRole:
    name: str
    arn: str
    trust_policy: dict  # normalised
    inline_policies: dict[str, dict]  # policy name → normalised document
    managed_policies: set[str]  # ARNs
    tags: dict[str, str]


@dataclass
class IamFacts:
    owned: dict[str, ObservedRole] = field(default_factory=dict)  # role name → ours
    foreign: set[str] = field(default_factory=set)  # desired role names that exist without our tags


@dataclass(frozen=True)
class RoleWork:
    role: DesiredRole
    trust_policy: bool = False
    description: bool = False


@dataclass(frozen=True)
class PolicyWork:
    role: str  # role name
    policy: str  # inline policy name, or managed policy ARN
    document: dict | None = None  # inline policy to put


# -- policy documents (pure) ----------------------------------------------------------------

_LIST_FIELDS = ("Action", "NotAction", "Resource", "NotResource")


def normalise_policy(document: dict | str) -> dict:
    """A policy document in a form two documents of the same meaning share.

    IAM returns documents URL-encoded (boto3 decodes most, not all), and writes a one-item list
    or a scalar, statements, actions and resources in any order: all the same to IAM.
    """
    if isinstance(document, str):
        text = document if document.lstrip().startswith("{") else urllib.parse.unquote(document)
        document = json.loads(text)
    statements = document.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    normal = [_normalise_statement(statement) for statement in statements]
    return {"Version": document.get("Version"),
            "Statement": sorted(normal, key=lambda statement: json.dumps(statement, sort_keys=True))}


def _normalise_statement(statement: dict) -> dict:
    normal = {}
    for key, value in statement.items():
        if key in _LIST_FIELDS:
            normal[key] = _sorted_list(value)
        elif key in ("Principal", "NotPrincipal") and isinstance(value, dict):
            normal[key] = {kind: _sorted_list(ids) for kind, ids in value.items()}
        elif key == "Condition":
            normal[key] = {operator: {name: _sorted_list(values) for name, values in block.items()}
                           for operator, block in value.items()}
        else:
            normal[key] = value
    return normal


def _sorted_list(value) -> list:
    return sorted(set(value if isinstance(value, list) else [value]), key=str)


def policy(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def ecs_tasks_trust(account_id: str) -> dict:
    """Only ECS tasks of this account may assume the role (guards against a confused deputy)."""
    return policy({"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole",
                   "Condition": {"StringEquals": {"aws:SourceAccount": account_id}}})


@dataclass(frozen=True)
class GrantContext:
    """What grant statements refer to: the task's service, bucket names, the cluster, region and account."""

    service: str
    buckets: dict[str, str]
    cluster: str
    region: str
    account_id: str
    partition: str

    def bucket(self, purpose: str) -> str:
        return self.buckets.get(purpose, Unknown(f"storage.buckets.{purpose}"))

    @property
    def cluster_arn(self) -> str:
        return f"arn:{self.partition}:ecs:{self.region}:{self.account_id}:cluster/{self.cluster}"


def _config_read(where: GrantContext) -> list[dict]:
    """A task reads its own service's configuration bundles (`<service>/<content hash>/…` in
    the config bucket) and nothing else there."""
    config = where.bucket("config")
    return [allow("ConfigBundleRead", ["s3:GetObject"], f"arn:{where.partition}:s3:::{config}/{where.service}/*"),
            allow("ConfigBundleList", ["s3:ListBucket"], f"arn:{where.partition}:s3:::{config}",
                  {"StringLike": {"s3:prefix": [f"{where.service}/*"]}})]


def _loki_bucket(where: GrantContext) -> list[dict]:
    loki = where.bucket("loki-chunks")
    bucket = f"arn:{where.partition}:s3:::{loki}"
    return [allow("LokiChunksReadWrite", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], f"{bucket}/*"),
            allow("LokiChunksList", ["s3:ListBucket"], bucket)]


def _cloudwatch_read(where: GrantContext) -> list[dict]:
    log_groups = f"arn:{where.partition}:logs:{where.region}:{where.account_id}:log-group:*"
    # Resource "*" is required: these metric, alarm and log-query APIs support no resource-level
    # permissions. The log reads that do are held to this account's log groups in this region.
    return [allow("CloudWatchRead", ["cloudwatch:DescribeAlarms", "cloudwatch:GetMetricData",
                                     "cloudwatch:GetMetricStatistics", "cloudwatch:ListMetrics",
                                     "logs:DescribeLogGroups", "logs:GetQueryResults"], "*"),
            allow("LogEventsRead", ["logs:FilterLogEvents", "logs:GetLogEvents", "logs:GetLogGroupFields",
                                    "logs:StartQuery"], log_groups)]


def _ecs_describe(where: GrantContext) -> list[dict]:
    scope = f"arn:{where.partition}:ecs:{where.region}:{where.account_id}"
    # List* accept no resource, but the ecs:cluster condition holds them to our cluster.
    return [allow("EcsDescribeCluster", ["ecs:DescribeClusters"], where.cluster_arn),
            allow("EcsDescribeServicesAndTasks", ["ecs:DescribeServices", "ecs:DescribeTasks"],
                  [f"{scope}:service/{where.cluster}/*", f"{scope}:task/{where.cluster}/*"]),
            allow("EcsListInCluster", ["ecs:ListServices", "ecs:ListTasks"], "*",
                  {"ArnEquals": {"ecs:cluster": where.cluster_arn}})]


def _ecs_discovery(where: GrantContext) -> list[dict]:
    """What Prometheus's ECS service discovery (aws_sd_configs, role ecs: prometheus/prometheus
    v3.14.0 discovery/aws/ecs.go) calls for this cluster's tasks: ecs-describe, plus the calls it
    makes beyond our cluster's ARNs. It checks its credentials with a DescribeClusters naming no
    cluster, which ECS answers for the cluster `default` (a cluster of that name need not exist),
    and reads each awsvpc task's network interface (DescribeNetworkInterfaces supports no
    resource-level permissions)."""
    default = f"arn:{where.partition}:ecs:{where.region}:{where.account_id}:cluster/default"
    return [*_ecs_describe(where),
            allow("EcsCredentialCheck", ["ecs:DescribeClusters"], default),
            allow("TaskNetworkInterfaces", ["ec2:DescribeNetworkInterfaces"], "*")]


#: The statements each manifest grant (schema.Grant) stands for.
GRANTS = {"config-read": _config_read, "loki-bucket": _loki_bucket, "cloudwatch-read": _cloudwatch_read,
          "ecs-describe": _ecs_describe, "ecs-discovery": _ecs_discovery}


def _known(values) -> list[str]:
    """ARNs from an upstream output that may not be known yet (a plan from nothing)."""
    if not isinstance(values, dict):
        return [values]  # the Unknown naming the output
    return sorted(set(values.values()))


@dataclass(frozen=True)
class IamOutputs:
    execution_role_arn: str
    task_role_arns: dict[str, str]  # by task family
    role_names: list[str]


class IamStep(Step):
    name = "iam"
    depends_on = ("secrets", "storage")
    observes_by_manifest = True  # roles by the names the manifest gives them
    Outputs = IamOutputs
    description = "IAM: the ECS task execution role and one least-privilege task role per service"

    def permissions(self, manifest, scope) -> list[dict]:
        """The deploy role's statements for this step: the environment's roles only."""
        roles = scope.arn("iam", f"role/{manifest.prefix}-*", regional=False)
        statements = [
            allow("IamRoles", ["iam:GetRole", "iam:ListRolePolicies", "iam:GetRolePolicy",
                               "iam:ListAttachedRolePolicies", "iam:CreateRole", "iam:DeleteRole", "iam:TagRole",
                               "iam:UpdateRole", "iam:UpdateAssumeRolePolicy", "iam:PutRolePolicy",
                               "iam:DeleteRolePolicy", "iam:DetachRolePolicy"], roles),
            # ListRoles supports no resource-level permissions. It answers role names, paths and
            # trust policies, none of the roles' permissions policies.
            allow("IamListRoleNames", ["iam:ListRoles"], "*")]
        managed = sorted(manifest.iam.execution_policies(scope.partition))
        if managed:  # only the managed policies the manifest names can be attached
            statements.append(allow("IamAttachManifestPolicies", ["iam:AttachRolePolicy"], roles,
                                    {"ArnEquals": {"iam:PolicyARN": managed}}))
        return statements

    # -- desired ---------------------------------------------------------------------------

    def desired(self, manifest, inputs) -> IamDesired:
        prefix = manifest.prefix
        tags = tagging.ownership_tags(manifest.app, manifest.environment, self.name, manifest.tags)
        trust = ecs_tasks_trust(inputs.account_id)
        buckets = inputs.output("storage", "buckets")
        buckets = buckets if isinstance(buckets, dict) else {}
        secret_arns = _known(inputs.output("secrets", "arns"))
        execution = DesiredRole(
            key=EXECUTION, name=f"{prefix}-execution", description=f"{prefix}: ECS task execution role",
            trust_policy=trust,
            inline_policies={SECRETS_POLICY: policy(allow("ReadPlatformSecrets", ["secretsmanager:GetSecretValue"],
                                                          secret_arns))} if secret_arns else {},
            managed_policies=tuple(sorted(manifest.iam.execution_policies(inputs.partition))), tags=tags)
        roles = {execution.name: execution}
        for key, spec in sorted(manifest.iam.task_roles.items()):
            where = GrantContext(service=key, buckets=buckets, cluster=prefix, region=inputs.region,
                                 account_id=inputs.account_id, partition=inputs.partition)
            statements = [s for grant in dict.fromkeys(spec.grants) for s in GRANTS[grant](where)]
            role = DesiredRole(key=key, name=f"{prefix}-task-{key}", description=f"{prefix}: task role of {key}",
                               trust_policy=trust,
                               inline_policies={GRANTS_POLICY: policy(*statements)} if statements else {},
                               managed_policies=(), tags=tags)
            roles[role.name] = role
        return IamDesired(app=manifest.app, env=manifest.environment, prefix=prefix, execution_role=execution.name,
                          roles=roles)

    # -- observe ---------------------------------------------------------------------------

    def observe(self, ctx, desired: IamDesired) -> IamFacts:
        """Our roles, each read by name: IAM has no batched read but GetAccountAuthorizationDetails,
        which returns every role's policies and needs a permission no least-privilege deploy role
        has. A role costs four reads (GetRole; ListRolePolicies, GetRolePolicy per inline policy,
        ListAttachedRolePolicies for ours); a role the manifest no longer names is found by its
        name in ListRoles (names only, 1,000 a page).

        The reads go out at once (`ctx.each`), and not role by role: a role of the manifest that
        ListRoles shows has its policy lists and its desired inline policies (names the manifest
        gives) read beside its GetRole, so a role costs one round trip instead of four in a row.
        What those reads find counts only once GetRole showed the role is ours. Whatever they could
        not foresee is read next: an inline policy the manifest does not name (to be deleted), the
        policies of a role ListRoles did not show yet (IAM's list is eventually consistent) or
        does not name in the manifest. So an unchanged apply reads exactly what it read before."""
        client = ctx.client("iam")
        listed = self._listed_under_prefix(client, desired.prefix)
        names = sorted(set(desired.roles) | listed)
        found: dict[RoleRead, object] = {}
        reads = [read for name in names for read in _first_reads(name, desired.roles.get(name), name in listed)]
        while reads:  # each round: what the answers so far show is still to read
            found.update(zip(reads, ctx.each("iam", lambda read: read.run(client), reads)))
            reads = [read for name in names if _is_ours(ctx, found[RoleRead("role", name)])
                     for read in _reads_of(name, found) if read not in found]
        facts = IamFacts()
        for name in names:
            role = found[RoleRead("role", name)]
            if _is_ours(ctx, role):
                facts.owned[name] = _observed_role(name, role["Role"], found)
            elif role is not None and name in desired.roles:
                facts.foreign.add(name)
        return facts

    @staticmethod
    def _listed_under_prefix(client, prefix: str) -> set[str]:
        """Names of the roles named `PREFIX-…`, from the (unfiltered) list of role names."""
        pages = client.get_paginator("list_roles").paginate(PaginationConfig={"PageSize": 1000})
        return {role["RoleName"] for page in pages for role in page["Roles"]
                if role["RoleName"].startswith(f"{prefix}-")}

    # -- plan ------------------------------------------------------------------------------

    def plan(self, desired: IamDesired, observed: IamFacts, recorded: dict[str, dict]) -> list[Change]:
        changes: list[Change] = []
        for name, role in desired.roles.items():
            if name in observed.foreign:
                raise tagging.not_ours("IAM role", name)
            current = observed.owned.get(name)
            if current is None:
                changes += _create_role(role)
            else:
                changes += _update_role(role, current, recorded.get(f"role/{name}"))
        for name, current in sorted(observed.owned.items()):
            if name not in desired.roles:
                changes += _delete_role(current, "no longer in the manifest")
        return changes

    # -- apply -----------------------------------------------------------------------------

    # Every change but a delete is settled once IAM has had time to show it to ECS (`_propagated`).

    def _create_role(self, ctx, change: Change, observed: IamFacts) -> Accepted:
        work: RoleWork = change.payload
        self._create_or_adopt_role(ctx, ctx.client("iam"), work.role, observed)
        return _propagated()

    def _update_role(self, ctx, change: Change, observed: IamFacts) -> Accepted:
        self._update_role_settings(ctx.client("iam"), change, observed)
        return _propagated()

    def _delete_role(self, ctx, change: Change, observed: IamFacts) -> None:
        unless_code(GONE, ctx.client("iam").delete_role, RoleName=change.name)
        del observed.owned[change.name]

    def _put_inline_policy(self, ctx, change: Change, observed: IamFacts) -> Accepted:
        work: PolicyWork = change.payload
        text = json.dumps(work.document)
        if is_unknown(text):
            raise OrchestratorError(f"inline policy {work.policy} of IAM role {work.role} refers to values not "
                                    "known yet; apply the secrets and storage steps first")
        ctx.client("iam").put_role_policy(RoleName=work.role, PolicyName=work.policy, PolicyDocument=text)
        observed.owned[work.role].inline_policies[work.policy] = normalise_policy(work.document)
        return _propagated()

    def _delete_inline_policy(self, ctx, change: Change, observed: IamFacts) -> None:
        work: PolicyWork = change.payload
        unless_code(GONE, ctx.client("iam").delete_role_policy, RoleName=work.role, PolicyName=work.policy)
        del observed.owned[work.role].inline_policies[work.policy]

    def _attach_managed_policy(self, ctx, change: Change, observed: IamFacts) -> Accepted:
        work: PolicyWork = change.payload
        ctx.client("iam").attach_role_policy(RoleName=work.role, PolicyArn=work.policy)
        observed.owned[work.role].managed_policies.add(work.policy)
        return _propagated()

    def _detach_managed_policy(self, ctx, change: Change, observed: IamFacts) -> None:
        work: PolicyWork = change.payload
        unless_code(GONE, ctx.client("iam").detach_role_policy, RoleName=work.role, PolicyArn=work.policy)
        observed.owned[work.role].managed_policies.discard(work.policy)

    handlers = {
        ("create", "role"): _create_role,
        ("update", "role"): _update_role,
        ("delete", "role"): _delete_role,
        ("create", "inline_policy"): _put_inline_policy,
        ("update", "inline_policy"): _put_inline_policy,
        ("delete", "inline_policy"): _delete_inline_policy,
        ("create", "managed_policy"): _attach_managed_policy,
        ("delete", "managed_policy"): _detach_managed_policy,
    }

    def _create_or_adopt_role(self, ctx, client, role: DesiredRole, observed: IamFacts) -> None:
        try:
            arn = client.create_role(RoleName=role.name, AssumeRolePolicyDocument=json.dumps(role.trust_policy),
                                     Description=role.description, Tags=tagging.tag_list(role.tags))["Role"]["Arn"]
        except Exception as error:
            if error_code(error) != "EntityAlreadyExists":
                raise
            # IAM's reads are eventually consistent: a quick re-apply may plan a create for a role
            # the last run made. If it is ours, carry on as with an existing role.
            self._adopt_role(ctx, client, role, observed)
            return
        observed.owned[role.name] = ObservedRole(name=role.name, arn=arn,
                                                 trust_policy=normalise_policy(role.trust_policy),
                                                 inline_policies={}, managed_policies=set(), tags=dict(role.tags))

    def _adopt_role(self, ctx, client, role: DesiredRole, observed: IamFacts) -> None:
        """Bring the role's own settings to the manifest, as an update would. Its policies are
        the changes planned after this one: putting an inline policy and attaching a managed
        one work the same on an existing role."""
        found = client.get_role(RoleName=role.name)["Role"]
        tags = tagging.tag_dict(found.get("Tags"))  # GetRole returns every tag (the key is absent: none)
        if not ctx.owns(tags):
            raise tagging.not_ours("IAM role", role.name)
        current = ObservedRole(name=role.name, arn=found["Arn"],
                               trust_policy=normalise_policy(found["AssumeRolePolicyDocument"]),
                               inline_policies={}, managed_policies=set(), tags=tags)
        observed.owned[role.name] = current
        settings = _role_settings(role, current, {"description": found.get("Description", "")})
        if settings is not None:
            self._update_role_settings(client, settings, observed)

    @staticmethod
    def _update_role_settings(client, change: Change, observed: IamFacts) -> None:
        work: RoleWork = change.payload
        role, tags_to_set = work.role, change.tags_to_set()
        if work.trust_policy:
            client.update_assume_role_policy(RoleName=role.name, PolicyDocument=json.dumps(role.trust_policy))
        if work.description:
            client.update_role(RoleName=role.name, Description=role.description)
        if tags_to_set:
            client.tag_role(RoleName=role.name, Tags=tagging.tag_list(tags_to_set))
        current = observed.owned[role.name]
        current.trust_policy, current.tags = normalise_policy(role.trust_policy), {**current.tags, **role.tags}

    # -- outputs and destroy ---------------------------------------------------------------

    def outputs(self, desired: IamDesired, observed: IamFacts) -> IamOutputs:
        def arn(name: str, output: str) -> str:
            return observed.owned[name].arn if name in observed.owned else Unknown(f"{self.name}.{output}")

        return IamOutputs(execution_role_arn=arn(desired.execution_role, "execution_role_arn"),
                          task_role_arns={role.key: arn(name, f"task_role_arns.{role.key}")
                                          for name, role in desired.roles.items() if name != desired.execution_role},
                          role_names=sorted(desired.roles))

    def plan_destroy(self, observed: IamFacts) -> list[Change]:
        changes: list[Change] = []
        for _, current in sorted(observed.owned.items()):
            changes += _delete_role(current, "destroy")
        return changes


# -- reading a role (each call names the role) ----------------------------------------------


@dataclass(frozen=True)
class RoleRead:
    """One read of a role: `kind` is "role" (GetRole), "inline" (ListRolePolicies), "policy"
    (GetRolePolicy of `policy`) or "attached" (ListAttachedRolePolicies)."""
    kind: str
    role: str
    policy: str = ""

    def run(self, client):
        """What the read answers; None where the role or policy is not there (NoSuchEntity)."""
        if self.kind == "role":
            return unless_code(GONE, client.get_role, RoleName=self.role)
        if self.kind == "policy":
            found = unless_code(GONE, client.get_role_policy, RoleName=self.role, PolicyName=self.policy)
            return None if found is None else normalise_policy(found["PolicyDocument"])
        listing, key = (("list_role_policies", "PolicyNames") if self.kind == "inline" else
                        ("list_attached_role_policies", "AttachedPolicies"))
        return unless_code(GONE, lambda: [entry for page in client.get_paginator(listing).paginate(RoleName=self.role)
                                          for entry in page[key]])


def _first_reads(name: str, role: DesiredRole | None, listed: bool) -> list[RoleRead]:
    """GetRole; for a role of the manifest that ListRoles showed, its policy reads beside it."""
    if role is None or not listed:
        return [RoleRead("role", name)]
    return [RoleRead("role", name), RoleRead("inline", name),
            *(RoleRead("policy", name, policy) for policy in sorted(role.inline_policies)), RoleRead("attached", name)]


def _reads_of(name: str, found: dict) -> list[RoleRead]:
    """Every read of one of our roles, as far as the answers in `found` show them: its policy
    lists, and each inline policy ListRolePolicies named."""
    inline = found.get(RoleRead("inline", name))
    return [RoleRead("inline", name), RoleRead("attached", name),
            *(RoleRead("policy", name, policy) for policy in inline or ())]


def _is_ours(ctx, found: dict | None) -> bool:
    """GetRole found the role and it carries our tags (GetRole returns every tag; the key is
    absent when there is none)."""
    return found is not None and ctx.owns(tagging.tag_dict(found["Role"].get("Tags")))


def _observed_role(name: str, role: dict, found: dict) -> ObservedRole:
    """One of our roles from its reads. An inline policy ListRolePolicies named but gone by the
    time it was read was deleted meanwhile: absent."""
    documents = {policy: found[RoleRead("policy", name, policy)] for policy in found[RoleRead("inline", name)] or ()}
    return ObservedRole(name=name, arn=role["Arn"], trust_policy=normalise_policy(role["AssumeRolePolicyDocument"]),
                        inline_policies={policy: doc for policy, doc in documents.items() if doc is not None},
                        managed_policies={p["PolicyArn"] for p in found[RoleRead("attached", name)] or ()},
                        tags=tagging.tag_dict(role.get("Tags")))


# -- planning helpers (pure) ---------------------------------------------------------------


def _create_role(role: DesiredRole) -> list[Change]:
    """The role, then its inline policies, then its managed policies. New roles are made
    together, and each one's policies as soon as it exists (`Change.after`)."""
    changes = [Change("create", "role", role.name,
                      diffs=(FieldDiff("trust_policy", None, role.trust_policy),),
                      calls=("iam:CreateRole",), payload=RoleWork(role=role), record={"description": role.description},
                      after=())]
    changes += [replace(_put_inline("create", role.name, name, document, None), after=(changes[0].key,))
                for name, document in sorted(role.inline_policies.items())]
    changes += [replace(_attach(role.name, arn), after=(changes[0].key,)) for arn in role.managed_policies]
    return changes


def _update_role(role: DesiredRole, current: ObservedRole, recorded: dict | None) -> list[Change]:
    changes: list[Change] = []
    role_change = _role_settings(role, current, recorded)
    if role_change is not None:
        changes.append(role_change)
    for name, document in sorted(role.inline_policies.items()):
        have = current.inline_policies.get(name)
        if have is None:
            changes.append(_put_inline("create", role.name, name, document, None))
        elif have != normalise_policy(document):
            changes.append(_put_inline("update", role.name, name, document, have))
    for name in sorted(set(current.inline_policies) - set(role.inline_policies)):
        changes.append(_delete_inline(role.name, name, "not in the manifest (added by hand?)"))
    changes += [_attach(role.name, arn) for arn in role.managed_policies if arn not in current.managed_policies]
    changes += [_detach(role.name, arn, "not in the manifest (attached by hand?)")
                for arn in sorted(current.managed_policies - set(role.managed_policies))]
    return changes


def _role_settings(role: DesiredRole, current: ObservedRole, recorded: dict | None) -> Change | None:
    """Trust policy and tags compare with what AWS says; the description (which the batched
    read does not return) with what the last apply recorded. Tags others added stay."""
    work = RoleWork(
        role=role, trust_policy=current.trust_policy != normalise_policy(role.trust_policy),
        description=recorded is not None and recorded.get("description") != role.description)
    retag = tagging.tag_diffs(current.tags, role.tags)
    diffs = []
    if work.trust_policy:
        diffs.append(FieldDiff("trust_policy", current.trust_policy, normalise_policy(role.trust_policy)))
    if work.description:
        diffs.append(FieldDiff("description", recorded.get("description"), role.description))
    diffs += retag
    if not diffs:
        return None
    calls = [call for needed, call in ((work.trust_policy, "iam:UpdateAssumeRolePolicy"),
                                       (work.description, "iam:UpdateRole"),
                                       (bool(retag), "iam:TagRole")) if needed]
    return Change("update", "role", role.name, diffs=tuple(diffs), calls=tuple(calls), payload=work,
                  record={"description": role.description})


def _put_inline(action: str, role: str, name: str, document: dict, current: dict | None) -> Change:
    return Change(action, "inline_policy", f"{role}/{name}",
                  diffs=(FieldDiff("document", current, normalise_policy(document)),),
                  calls=("iam:PutRolePolicy",), payload=PolicyWork(role=role, policy=name, document=document))


def _delete_inline(role: str, name: str, why: str) -> Change:
    return Change("delete", "inline_policy", f"{role}/{name}", calls=("iam:DeleteRolePolicy",),
                  payload=PolicyWork(role=role, policy=name), note=why)


def _attach(role: str, arn: str) -> Change:
    return Change("create", "managed_policy", f"{role}/{arn.rsplit('/', 1)[-1]}",
                  diffs=(FieldDiff("policy_arn", None, arn),), calls=("iam:AttachRolePolicy",),
                  payload=PolicyWork(role=role, policy=arn))


def _detach(role: str, arn: str, why: str) -> Change:
    return Change("delete", "managed_policy", f"{role}/{arn.rsplit('/', 1)[-1]}",
                  diffs=(FieldDiff("policy_arn", arn, None),), calls=("iam:DetachRolePolicy",),
                  payload=PolicyWork(role=role, policy=arn), note=why)


def _delete_role(current: ObservedRole, why: str) -> list[Change]:
    """Detach and delete its policies first: IAM refuses to delete a role that has any."""
    changes = [_detach(current.name, arn, why) for arn in sorted(current.managed_policies)]
    changes += [_delete_inline(current.name, name, why) for name in sorted(current.inline_policies)]
    changes.append(Change("delete", "role", current.name, calls=("iam:DeleteRole",), note=why))
    return changes


STEP = IamStep
