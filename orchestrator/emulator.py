"""Where moto falls short of AWS for this platform, the fix lives here — applied by the sandbox
launcher (`python -m orchestrator.emulator`, which then runs moto's server) and by the test
fixtures; the steps never know. Each fix names the moto gap it covers (see MOTO-NOTES.md)."""
from __future__ import annotations

import json
import sys


def keep_create_bucket_tags() -> None:
    """moto gap: create_bucket ignores `CreateBucketConfiguration.Tags`, which AWS applies in the
    create call itself. Apply them on moto's side, as AWS does."""
    import xmltodict
    from moto.s3.responses import S3Response

    original = S3Response._bucket_response_put

    def put_with_tags(self, request, bucket_name, querystring):
        response = original(self, request, bucket_name, querystring)
        if not querystring and self.body:
            config = xmltodict.parse(self.body).get("CreateBucketConfiguration") or {}
            tags = (config.get("Tags") or {}).get("Tag") or []
            tags = tags if isinstance(tags, list) else [tags]
            if tags:
                self.backend.put_bucket_tagging(bucket_name, {t["Key"]: t.get("Value") or "" for t in tags})
        return response

    S3Response._bucket_response_put = put_with_tags


def understand_secure_transport() -> None:
    """moto gap (MOTO-NOTES S3 (1)): moto treats `aws:SecureTransport` as false whatever the
    transport, so the buckets' "deny unless TLS" statement denies every object call. Evaluate
    bucket policies without that statement, as AWS does for requests over TLS."""
    from moto.iam.access_control import IAMPolicy
    from moto.s3.models import FakeBucket

    original = FakeBucket.get_permission

    def get_permission(self, action, resource):
        if self.policy is None:
            return original(self, action, resource)
        policy = json.loads(self.policy)
        policy["Statement"] = [s for s in policy["Statement"]
                               if s.get("Condition") != {"Bool": {"aws:SecureTransport": "false"}}]
        return IAMPolicy(json.dumps(policy)).is_action_permitted(action, resource)

    FakeBucket.get_permission = get_permission


def serialize_requests() -> None:
    """moto gap: its backends are plain dicts without locks, so requests served at once can
    break each other (a tagging-API read iterating resources while another request adds one
    fails with "dictionary changed size during iteration"). AWS serves concurrent requests;
    the orchestrator sends them (steps run in parallel). Serve moto's one request at a time,
    in-process and in the server.

    The server reads each request's body before taking the lock: werkzeug reads it lazily from
    the socket, so a client killed halfway through sending one would otherwise hold the lock,
    and stall every other client, until its connection timed out."""
    import threading

    from moto.core.botocore_stubber import BotocoreStubber
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    lock = threading.RLock()
    for cls in (BotocoreStubber, DomainDispatcherApplication):
        original = cls.__call__

        def locked(self, *args, _original=original, **kwargs):
            if isinstance(self, DomainDispatcherApplication):
                _read_body_now(args[0])
            with lock:
                return _original(self, *args, **kwargs)

        cls.__call__ = locked


def _read_body_now(environ: dict) -> None:
    """Replace the WSGI request's body stream by the body, read in full (or as far as a client
    that died sent it)."""
    import io

    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):  # chunked: the stream itself ends with the body
        body = stream.read()
    else:
        body = stream.read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))


def emulate_efs_backup_policy() -> None:
    """moto gap (MOTO-NOTES: EFS): `PutBackupPolicy` is not implemented (NotImplementedError
    in-process, HTTP 500 in the server), and `DescribeBackupPolicy` knows only the `Backup` flag
    of the create call and fails on an unknown id (KeyError / HTTP 500). Store the status that
    PutBackupPolicy sets on the file system and answer both as AWS does: the policy, or
    PolicyNotFound (404) for a file system that never had one, or FileSystemNotFound (404)."""
    from moto.efs.exceptions import BadRequest, FileSystemNotFound
    from moto.efs.models import EFSBackend, FileSystem
    from moto.efs.responses import EFSResponse

    def file_system(backend, file_system_id: str):
        if file_system_id not in backend.file_systems_by_id:
            raise FileSystemNotFound(file_system_id)
        return backend.file_systems_by_id[file_system_id]

    created_policy = FileSystem.backup_policy.fget
    # A put policy wins over the create call's `Backup` flag (private: not in DescribeFileSystems).
    FileSystem.backup_policy = property(
        lambda fs: {"Status": fs._put_backup_status} if getattr(fs, "_put_backup_status", None)
        else created_policy(fs))

    original_describe = EFSBackend.describe_backup_policy

    def describe_backup_policy(self, file_system_id: str):
        file_system(self, file_system_id)
        return original_describe(self, file_system_id)

    def put_backup_policy(self, file_system_id: str, status: str | None) -> dict[str, str]:
        fs = file_system(self, file_system_id)
        if status not in ("ENABLED", "DISABLED"):
            raise BadRequest(f"Invalid backup policy status: {status!r}; expected ENABLED or DISABLED.")
        fs._put_backup_status = status
        return fs.backup_policy

    def respond_put_backup_policy(self):
        status = (self._get_param("BackupPolicy") or {}).get("Status")
        policy = self.efs_backend.put_backup_policy(self._get_param("FileSystemId"), status)
        return json.dumps({"BackupPolicy": policy}), {"Content-Type": "application/json"}

    EFSBackend.describe_backup_policy = describe_backup_policy
    EFSBackend.put_backup_policy = put_backup_policy
    EFSResponse.put_backup_policy = respond_put_backup_policy


def emulate_update_cluster_settings() -> None:
    """moto gap (MOTO-NOTES: ECS cluster): `UpdateClusterSettings` is not implemented (HTTP 500),
    so drift of Container Insights could not be repaired. Answer it as AWS does: set the
    cluster's settings and return the cluster."""
    from moto.core.responses import ActionResult
    from moto.ecs.responses import EC2ContainerServiceResponse

    def update_cluster_settings(self):
        cluster = self.ecs_backend.update_cluster(cluster_name=self._get_param("cluster"),
                                                  cluster_settings=self._get_param("settings"),
                                                  configuration=None, service_connect_defaults=None)
        return ActionResult({"cluster": cluster})

    EC2ContainerServiceResponse.update_cluster_settings = update_cluster_settings


def emulate_ecs_deployments() -> None:
    """moto gaps (MOTO-NOTES: ECS services): with `MOTO_ECS_SERVICE_RUNNING` set, a new service
    counts N running tasks whatever its desired count, and `UpdateService` with a new task
    definition leaves the one PRIMARY deployment on the old revision with its old counts, so a
    rollout check that is right for ECS never passes. Model ECS: the variable (any N > 0) means
    "tasks start and stay healthy"; every deployment then runs its desired count and completes.
    A new revision (or `forceNewDeployment`) makes a new PRIMARY deployment; the old one shows
    as ACTIVE in the next DescribeServices answer, then is gone (its tasks drained)."""
    import os

    from moto.ecs.models import EC2ContainerServiceBackend, Service
    from moto.moto_api._internal import mock_random

    def tasks_come_up() -> bool:
        try:
            return int(os.environ.get("MOTO_ECS_SERVICE_RUNNING", "0")) > 0
        except ValueError:
            return False

    def settle(service, deployment: dict) -> None:
        deployment["desiredCount"] = service.desired_count
        if tasks_come_up():
            deployment.update(runningCount=service.desired_count, pendingCount=0, rolloutState="COMPLETED",
                              rolloutStateReason=f"ECS deployment {deployment['id']} completed.")
            service.running_count, service.pending_count = service.desired_count, 0

    original_init = Service.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.shown_active: set[str] = set()
        for deployment in self.deployments:
            settle(self, deployment)

    original_update = EC2ContainerServiceBackend.update_service

    def update_service(self, service_properties):
        name = service_properties["service"].split("/")[-1]
        before = self._get_service(service_properties.get("cluster", "default"), name)
        old_revision = before.task_definition
        force = bool(service_properties.get("force_new_deployment"))
        service = original_update(self, service_properties)
        primary = next((d for d in service.deployments if d["status"] == "PRIMARY"), None)
        if primary is None:
            return service
        if service.task_definition != old_revision or force:
            primary["status"] = "ACTIVE"
            new = {**primary, "id": f"ecs-svc/{mock_random.randint(0, 32**12)}", "status": "PRIMARY",
                   "taskDefinition": service.task_definition, "runningCount": 0, "pendingCount": service.desired_count,
                   "rolloutState": "IN_PROGRESS", "createdAt": primary["updatedAt"]}
            new["rolloutStateReason"] = f"ECS deployment {new['id']} in progress."
            service.deployments.insert(0, new)
            primary = new
        settle(service, primary)
        return service

    original_describe = EC2ContainerServiceBackend.describe_services

    def describe_services(self, cluster_str, service_names_or_arns):
        services, failures = original_describe(self, cluster_str, service_names_or_arns)
        for service in services:
            shown = getattr(service, "shown_active", set())
            service.deployments = [d for d in service.deployments
                                   if d["status"] == "PRIMARY" or d["id"] not in shown]
            service.shown_active = shown | {d["id"] for d in service.deployments if d["status"] == "ACTIVE"}
        return services, failures

    Service.__init__ = init
    EC2ContainerServiceBackend.update_service = update_service
    EC2ContainerServiceBackend.describe_services = describe_services


#: The image tags the sandbox's registry holds in every new repository (space-separated).
SEED_IMAGE_TAGS = "ORCHESTRATOR_SANDBOX_IMAGE_TAGS"


def seed_images() -> None:
    """Not a moto gap: the sandbox has no build pipeline to push the app's images, so a new
    repository holds a tiny image for each tag in `ORCHESTRATOR_SANDBOX_IMAGE_TAGS` (the demo's
    tags), standing in for that pipeline; without the variable, nothing is seeded."""
    import hashlib
    import os

    from moto.ecr.models import ECRBackend

    original = ECRBackend.create_repository

    def create_repository(self, repository_name, *args, **kwargs):
        repository = original(self, repository_name, *args, **kwargs)
        for tag in os.environ.get(SEED_IMAGE_TAGS, "").split():
            # moto derives the digest from the layers: one layer per tag gives each its own digest.
            layer = hashlib.sha256(f"{repository_name}:{tag}".encode()).hexdigest()
            manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2,
                                   "digest": f"sha256:{layer}"},
                        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 2,
                                    "digest": f"sha256:{layer}"}]}
            self.put_image(repository_name, json.dumps(manifest), tag)
        return repository

    ECRBackend.create_repository = create_repository


def tag_api_finds_ecr_repositories() -> None:
    """moto gap (MOTO-NOTES: Resource Groups Tagging API): `GetResources` never returns ECR
    repositories; AWS's returns every resource type but IAM users and roles. Answer for them
    from the ECR backend's own tags."""
    from moto.core.resource_tagging import TaggedResource
    from moto.ecr.models import ecr_backends
    from moto.resourcegroupstaggingapi import models

    class Repositories:
        def __init__(self, backend):
            self.backend = backend

        def owns_arn(self, arn: str) -> bool:
            return any(repository.arn == arn for repository in self.backend.repositories.values())

        def iter_tagged_resources(self):
            for repository in list(self.backend.repositories.values()):
                yield TaggedResource(arn=repository.arn, resource_type="ecr:repository",
                                     tags=self.backend.tagger.get_tag_dict_for_resource(repository.arn))

    original = models.iter_taggable_backends

    def with_repositories(account_id: str, region_name: str):
        yield from original(account_id, region_name)
        if account_id in ecr_backends and region_name in ecr_backends[account_id]:
            yield Repositories(ecr_backends[account_id][region_name])

    models.iter_taggable_backends = with_repositories


def route_gateway_endpoints_as_modified() -> None:
    """moto gap (MOTO-NOTES: ModifyVpcEndpoint): `AddRouteTableIds` records a route table on a
    gateway endpoint without adding its prefix-list route, and `RemoveRouteTableIds` leaves the
    route behind; `DeleteVpcEndpoints` then fails with InvalidRoute.NotFound (seen in the sandbox
    after switching NAT mode, then destroy). Add and remove the routes as AWS does, and let a
    delete pass over route tables that are gone already."""
    from moto.ec2.exceptions import InvalidRouteError, InvalidRouteTableIdError
    from moto.ec2.models.vpcs import VPCBackend

    original_modify = VPCBackend.modify_vpc_endpoint
    original_delete = VPCBackend.delete_vpc_endpoints

    def modify_vpc_endpoint(self, vpc_id, policy_doc, add_subnets, remove_subnets, remove_route_tables,
                            add_route_tables, add_security_groups, remove_security_groups):
        endpoint = self.describe_vpc_endpoints(vpc_end_point_ids=[vpc_id])[0]
        before = set(endpoint.route_table_ids or [])
        original_modify(self, vpc_id, policy_doc, add_subnets, remove_subnets, remove_route_tables,
                        add_route_tables, add_security_groups, remove_security_groups)
        if not endpoint.destination_prefix_list_id:
            return  # an interface endpoint: no routes
        after = set(endpoint.route_table_ids or [])
        for table in sorted(after - before):
            self.create_route(table, None, gateway_id=endpoint.id,
                              destination_prefix_list_id=endpoint.destination_prefix_list_id)
        for table in sorted(before - after):
            _delete_route_if_there(self, table, endpoint.destination_prefix_list_id)

    def delete_vpc_endpoints(self, vpce_ids=None):
        for vpce_id in vpce_ids or []:
            endpoint = self.vpc_end_points.get(vpce_id)
            if endpoint is not None and endpoint.destination_prefix_list_id:
                for table in list(endpoint.route_table_ids or []):
                    _delete_route_if_there(self, table, endpoint.destination_prefix_list_id)
                endpoint.route_table_ids = []
        return original_delete(self, vpce_ids)

    def _delete_route_if_there(backend, table: str, prefix_list_id: str) -> None:
        try:
            backend.delete_route(table, None, destination_prefix_list_id=prefix_list_id)
        except (InvalidRouteError, InvalidRouteTableIdError):
            pass  # the route table, or the route, is gone already

    VPCBackend.modify_vpc_endpoint = modify_vpc_endpoint
    VPCBackend.delete_vpc_endpoints = delete_vpc_endpoints


def require_ecs_service_linked_role() -> None:
    """moto gaps (MOTO-NOTES: "service-linked roles exist from the start"): in a fresh account
    ECS answers the first CreateCluster with capacity providers with InvalidParameterException
    "Unable to assume the service linked role", while it makes AWSServiceRoleForECS (the next
    try succeeds); moto creates the cluster. And IAM answers CreateServiceLinkedRole for a role
    that exists with InvalidInput "… has been taken in this account", where moto says
    EntityAlreadyExists. Answer both as AWS does."""
    from moto.ecs.exceptions import InvalidParameterException
    from moto.ecs.models import EC2ContainerServiceBackend
    from moto.iam.exceptions import InvalidInput
    from moto.iam.models import IAMBackend, iam_backends

    import inspect

    original_create_cluster = EC2ContainerServiceBackend.create_cluster
    signature = inspect.signature(original_create_cluster)

    def create_cluster(self, *args, **kwargs):
        if signature.bind(self, *args, **kwargs).arguments.get("capacity_providers"):
            iam = iam_backends[self.account_id]["global"]
            if not any(getattr(role, "_linked_service", None) == "ecs.amazonaws.com" for role in iam.roles.values()):
                iam.create_service_linked_role("ecs.amazonaws.com", "", "")
                raise InvalidParameterException("Unable to assume the service linked role. "
                                                "Please verify that the ECS service linked role exists.")
        return original_create_cluster(self, *args, **kwargs)

    original_linked_role = IAMBackend.create_service_linked_role

    def create_service_linked_role(self, service_name, description, suffix):
        taken = [role.name for role in self.roles.values()
                 if getattr(role, "_linked_service", None) == service_name and not suffix]
        if taken:
            raise InvalidInput(f"Service role name {taken[0]} has been taken in this account, "
                               "please try a different suffix.")
        return original_linked_role(self, service_name, description, suffix)

    EC2ContainerServiceBackend.create_cluster = create_cluster
    IAMBackend.create_service_linked_role = create_service_linked_role


def answer_elastic_ip_quota() -> None:
    """moto gap: Service Quotas answers GetServiceQuota only for VPC's quotas (NoSuchResource for
    EC2's "EC2-VPC Elastic IPs", L-0263D0A3) and does not implement GetAWSDefaultServiceQuota.
    Answer that quota with AWS's default (5 per Region), as an account that never raised it."""
    from moto.servicequotas.models import ServiceQuotasBackend

    original = ServiceQuotasBackend.get_service_quota

    def get_service_quota(self, service_code: str, quota_code: str) -> dict:
        if (service_code, quota_code) == ("ec2", "L-0263D0A3"):
            return {"ServiceCode": "ec2", "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
                    "QuotaArn": f"arn:aws:servicequotas:{self.region_name}:{self.account_id}:ec2/L-0263D0A3",
                    "QuotaCode": "L-0263D0A3", "QuotaName": "EC2-VPC Elastic IPs", "Value": 5.0, "Unit": "None",
                    "Adjustable": True, "GlobalQuota": False}
        return original(self, service_code, quota_code)

    ServiceQuotasBackend.get_service_quota = get_service_quota


def refuse_unused_transaction_values() -> None:
    """moto gap: TransactWriteItems checks only that each item's expression attribute *names* are
    used; DynamoDB also refuses a value no expression of the item uses ("ValidationException:
    Value provided in ExpressionAttributeValues unused in expressions"), as moto's own
    UpdateItem does. Refuse it in a transaction too, with moto's message."""
    import re

    from moto.dynamodb.responses import DynamoHandler, validate_attributes_used

    original = DynamoHandler.transact_write_items

    def transact_write_items(self):
        for item in self.body["TransactItems"]:
            (request,) = item.values()
            expressions = " ".join(request.get(key, "") for key in ("UpdateExpression", "ConditionExpression"))
            validate_attributes_used(request.get("ExpressionAttributeValues"),
                                     re.findall(r":[A-Za-z0-9_]+", expressions), provided_attr="Values")
        return original(self)

    DynamoHandler.transact_write_items = transact_write_items


def repeat_elb_creates_as_aws_does() -> None:
    """moto gap (MOTO-NOTES advice 7: duplicate-name ALBs): CreateLoadBalancer with a name that
    exists makes a second load balancer, and CreateTargetGroup answers DuplicateTargetGroupName;
    AWS documents both as idempotent ("If you attempt to create multiple load balancers / target
    groups with the same settings, each call succeeds"), answering with the existing one — which
    a retried request whose answer was lost relies on. Answer a repeat with the existing one
    (the settings are not compared: AWS refuses a repeat with other settings)."""
    from moto.elbv2.models import ELBv2Backend

    original_balancer = ELBv2Backend.create_load_balancer
    original_group = ELBv2Backend.create_target_group

    def create_load_balancer(self, name, *args, **kwargs):
        existing = [lb for lb in self.load_balancers.values() if lb.name == name]
        return existing[0] if existing else original_balancer(self, name, *args, **kwargs)

    def create_target_group(self, name, **kwargs):
        existing = [group for group in self.target_groups.values() if group.name == name]
        return existing[0] if existing else original_group(self, name, **kwargs)

    ELBv2Backend.create_load_balancer = create_load_balancer
    ELBv2Backend.create_target_group = create_target_group


#: The switch: how many times ECS refuses a role after IAM created it (0, the default: never).
NEW_ROLE_REFUSALS = "ORCHESTRATOR_EMULATE_NEW_ROLE_REFUSALS"


def refuse_new_roles_for_a_while() -> None:
    """moto gap (MOTO-NOTES: "IAM is consistent at once"): AWS documents that IAM changes take
    time to become visible; ECS answers RegisterTaskDefinition naming a role it cannot see yet
    with ClientException "Role is not valid". With ORCHESTRATOR_EMULATE_NEW_ROLE_REFUSALS=K
    (tests turn it on), ECS refuses each role that way K times after IAM created it, then
    accepts it: "for a while", counted in attempts rather than seconds so that a test needs no
    clock."""
    import inspect
    import os

    from moto.ecs.exceptions import EcsClientException
    from moto.ecs.models import EC2ContainerServiceBackend

    original = EC2ContainerServiceBackend.register_task_definition
    signature = inspect.signature(original)

    def register_task_definition(self, *args, **kwargs):
        refusals = int(os.environ.get(NEW_ROLE_REFUSALS) or 0)
        if refusals:
            arguments = signature.bind(self, *args, **kwargs).arguments
            counts = self.__dict__.setdefault("_orchestrator_role_refusals", {})
            for role in (arguments.get("task_role_arn"), arguments.get("execution_role_arn")):
                if role and counts.get(role, 0) < refusals:
                    counts[role] = counts.get(role, 0) + 1
                    raise EcsClientException("Role is not valid")
        return original(self, *args, **kwargs)

    EC2ContainerServiceBackend.register_task_definition = register_task_definition


#: The creates whose idempotency token AWS honours and moto does not (measured with moto 5.2.5:
#: a second CreateRouteTable, CreateVpcEndpoint, EFS CreateAccessPoint or Cloud Map CreateService
#: with the same token makes a second resource; CreateNatGateway answers Resource.AlreadyAssociated
#: and CreatePrivateDnsNamespace ConflictingDomainExists). Per moto response class: its backend
#: attribute and, per action, the token's parameter. (ECS CreateService, Secrets Manager
#: CreateSecret and EFS CreateFileSystem already answer a repeated token as AWS does.)
TOKENS = {
    "EC2Response": ("ec2_backend", {"CreateNatGateway": "ClientToken", "CreateRouteTable": "ClientToken",
                                    "CreateVpcEndpoint": "ClientToken", "CreateNetworkInterface": "ClientToken"}),
    "EFSResponse": ("efs_backend", {"CreateAccessPoint": "ClientToken"}),
    "ServiceDiscoveryResponse": ("servicediscovery_backend", {"CreatePrivateDnsNamespace": "CreatorRequestId",
                                                              "CreateService": "CreatorRequestId"}),
}


def honour_idempotency_tokens() -> None:
    """moto gap (MOTO-NOTES: "idempotency tokens are mostly ignored"): a create retried with the
    same token — botocore retries a request whose answer was lost after AWS acted — makes a
    second resource in moto (or fails), where AWS answers with the first one. Answer a repeated
    token with the same request body as the first answer was; a token reused with another body
    goes to moto as before (AWS: IdempotentParameterMismatch). Kept on the backend, so a reset
    forgets them, as a new account would."""
    import importlib

    modules = {"EC2Response": "moto.ec2.responses", "EFSResponse": "moto.efs.responses",
               "ServiceDiscoveryResponse": "moto.servicediscovery.responses"}
    for class_name, (backend_attribute, actions) in TOKENS.items():
        cls = getattr(importlib.import_module(modules[class_name]), class_name)
        original = cls.call_action

        def call_action(self, _original=original, _backend=backend_attribute, _actions=actions):
            action = self._get_action()
            token = self._get_param(_actions[action]) if action in _actions else None
            if not token:
                return _original(self)
            backend = getattr(self, _backend)
            answers = backend.__dict__.setdefault("_orchestrator_token_answers", {})
            body = self.body if isinstance(self.body, (str, bytes)) else json.dumps(self.body, sort_keys=True)
            request = json.dumps([sorted((k, v) for k, v in self.querystring.items() if k != "Action"),
                                  body if isinstance(body, str) else body.decode(errors="replace")])
            key = (action, token)
            if key in answers and answers[key][0] == request:
                return answers[key][1]
            answer = _original(self)
            if int(answer[0]) < 300:
                answers[key] = (request, answer)
            return answer

        cls.call_action = call_action


_applied = False


def filter_cloud_map_services_by_namespace() -> None:
    """moto gap: ListServices ignores its Filters (its own docstring says so) and answers the
    services of every namespace. AWS answers those of the NAMESPACE_ID asked for; without it, a
    second environment in the account took the first one's Cloud Map services for its own."""
    from moto.servicediscovery.responses import ServiceDiscoveryResponse

    original = ServiceDiscoveryResponse.list_services

    def list_services(self):
        wanted = {value for condition in self._get_param("Filters") or []
                  if condition.get("Name") == "NAMESPACE_ID" for value in condition.get("Values", [])}
        if not wanted:
            return original(self)
        backend = self.servicediscovery_backend
        every = backend.list_services
        backend.list_services = lambda: [service for service in every() if service.namespace_id in wanted]
        try:  # requests are served one at a time (serialize_requests)
            return original(self)
        finally:
            del backend.list_services

    ServiceDiscoveryResponse.list_services = list_services


def answer_scaling_activities() -> None:
    """moto gap (MOTO-NOTES: Application Auto Scaling): `DescribeScalingActivities` is not
    implemented (HTTP 500) and no scaling is simulated. Answer as AWS does for a target that has
    not scaled: no activities (`orchestrator loadtest` reads them)."""
    from moto.applicationautoscaling.responses import ApplicationAutoScalingResponse

    def describe_scaling_activities(self) -> str:
        return json.dumps({"ScalingActivities": []})

    ApplicationAutoScalingResponse.describe_scaling_activities = describe_scaling_activities


def apply_fixes() -> None:
    """Patch moto once per process."""
    global _applied
    if not _applied:
        keep_create_bucket_tags()
        understand_secure_transport()
        serialize_requests()
        emulate_efs_backup_policy()
        emulate_update_cluster_settings()
        emulate_ecs_deployments()
        seed_images()
        tag_api_finds_ecr_repositories()
        route_gateway_endpoints_as_modified()
        answer_scaling_activities()
        filter_cloud_map_services_by_namespace()
        honour_idempotency_tokens()
        require_ecs_service_linked_role()
        answer_elastic_ip_quota()
        refuse_new_roles_for_a_while()
        repeat_elb_creates_as_aws_does()
        refuse_unused_transaction_values()
        _applied = True


def main() -> None:
    """moto's server with the fixes applied; takes moto_server's arguments."""
    from moto.server import main as moto_server
    apply_fixes()
    moto_server(sys.argv[1:])


if __name__ == "__main__":
    main()
