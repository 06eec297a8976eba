"""Step `efs`: one encrypted EFS file system for Prometheus and Grafana data, a mount target in
each private subnet (the efs security group), and an access point per service.

Finding what is ours. The create call carries the tags and a `CreationToken` derived from app,
env and step. `observe` lists the file systems once: the one with that token is the platform's
(the token is reserved for this environment, so it is ours even if its tags were removed, and
the plan puts them back); any other with our ownership tags is left over and only deleted with
the `delete-data` flag. A create whose answer was lost is retried by the same token, and
`FileSystemAlreadyExists` leads back to the file system. Access points are found by their `Name`
tag, since `ClientToken` is not honoured everywhere (MOTO-NOTES: EFS). Only our tag keys are
managed: tags others added stay.

Interrupted runs. A file system or mount target may still be `creating`: the plan then waits for
it (a change of its `state`, with no call), since nothing goes on such a file system until it is
available, and a mount target's security groups (which AWS reads from its network interface)
can only be read once it is available.

Delete first. A zone holds one mount target of a file system, and a file system's creation
token finds the old one until it is gone: such a replacement is planned as the delete of the
old resource (and, for a file system, of its mount targets), then a `replace` that creates the
new one. Each handler returns its waits in `Accepted`; one that needs an earlier change
settled (the old one gone, a new file system available) settles first (`ctx.settle()`). Mount
targets and access points name the file system's changes as what they need (`Change.after`):
they are created together, each settling only the file system's waits (and a replaced mount
target's delete, a change of its own key), never another's availability. A run
killed in between converges on the next apply: observe sees the old one gone or still
`deleting`, and the plan waits until it is gone (a change with no call) before it creates, or
before it deletes the file system that had it (AWS refuses while a mount target is deleting).

Data. The file system holds the services' data: apply and destroy delete it, with its mount
targets and access points, only with `delete-data`, and so does a change that AWS can only
make by replacing it (performance mode, encryption). Access points are immutable: one whose
settings differ is replaced (the data stays in the file system).

Backups. `put_backup_policy` is called only when the manifest asks for backups, or when the
last apply enabled them and the manifest no longer does (a three-way compare), so an
environment without backups never touches that API.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from orchestrator import tags as tagging
from orchestrator.aws import error_code, unless_code
from orchestrator.errors import OrchestratorError
from orchestrator.model import (DELETE_DATA, Accepted, Change, FieldDiff, Step, Unknown, Wait, diff_fields,
                                is_unknown)
from orchestrator.permissions import FIND_BY_TAG, allow, tagged_as_ours
from orchestrator.waiters import WaitFailed
from steps.vpc import usable_zones

#: Changing these means a new file system, and the data goes with the old one.
REPLACE_FIELDS = ("performance_mode", "encrypted")
ENABLED_STATES = ("ENABLED", "ENABLING")


@dataclass(frozen=True)
class FileSystem:
    name: str  # gamepulse-dev-data
    performance_mode: str
    throughput_mode: str
    encrypted: bool
    tags: dict[str, str]


@dataclass(frozen=True)
class MountTarget:
    zone: str
    subnet_id: str
    security_group_id: str


@dataclass(frozen=True)
class AccessPoint:
    key: str  # the manifest's name: prometheus
    name: str  # gamepulse-dev-prometheus (its Name tag)
    path: str
    uid: int
    gid: int
    permissions: str
    tags: dict[str, str]


@dataclass(frozen=True)
class EfsDesired:
    prefix: str
    file_system: FileSystem
    transition_to_ia: str | None
    backups: bool
    mount_targets: tuple[MountTarget, ...]
    access_points: tuple[AccessPoint, ...]


@dataclass
class ObservedMountTarget:
    id: str
    zone: str
    subnet_id: str
    security_groups: tuple[str, ...] = ()  # read only once it is available
    state: str = "available"


@dataclass
class ObservedAccessPoint:
    id: str
    arn: str
    name: str
    path: str
    uid: int
    gid: int
    permissions: str
    tags: dict[str, str]


@dataclass
class ObservedFileSystem:
    id: str
    arn: str
    name: str
    performance_mode: str
    throughput_mode: str
    encrypted: bool
    tags: dict[str, str]
    state: str = "available"
    mount_targets: dict[str, ObservedMountTarget] = field(default_factory=dict)  # zone → mount target
    #: Zone → a mount target still `deleting` (a run killed after its delete): a zone holds one.
    deleting_mount_targets: dict[str, ObservedMountTarget] = field(default_factory=dict)
    access_points: list[ObservedAccessPoint] = field(default_factory=list)  # ours only
    transition_to_ia: str | None = None
    backups: str | None = None  # read only when the manifest asks for backups


@dataclass
class EfsFacts:
    file_systems: dict[str, ObservedFileSystem] = field(default_factory=dict)  # id → ours
    current: str | None = None  # id of the platform's file system
    #: The platform's file system still `deleting` (a run killed after a replace's delete): its
    #: creation token is the new one's until it is gone.
    deleting: ObservedFileSystem | None = None

    def current_fs(self) -> ObservedFileSystem | None:
        return self.file_systems.get(self.current) if self.current else None


# -- desired ----------------------------------------------------------------------------------


def upstream_network(manifest, inputs) -> tuple[list[str], list[str], str]:
    """(zones, private subnet ids, efs security group id) from the vpc step, each value
    `Unknown` while the network is only planned."""
    zones = inputs.output("vpc", "zones")
    if is_unknown(zones):
        zones = usable_zones(manifest, inputs)
    subnets = inputs.items("vpc", "private_subnet_ids", count=len(zones))
    # The manifest's checks make sure the network has the group; its id may not be known yet.
    return list(zones), subnets, inputs.entry("vpc", "security_groups", manifest.efs.security_group)


# -- reading ----------------------------------------------------------------------------------


def normalized_tags(items) -> dict[str, str]:
    """Tags as a dict without AWS's own `aws:` tags, which nobody can set or remove."""
    return {k: v for k, v in tagging.tag_dict(items).items() if not k.startswith("aws:")}


def read_file_systems(efs, token: str, ids: list[str]) -> list[dict]:
    """The file system created with `token`, and those of these ids (the tagging API may still
    name one deleted since), oldest first."""
    items = {item["FileSystemId"]: item for item in efs.describe_file_systems(CreationToken=token)["FileSystems"]}
    for fs_id in ids:
        if fs_id not in items:
            found = unless_code({"FileSystemNotFound"}, efs.describe_file_systems, FileSystemId=fs_id)
            items.update({item["FileSystemId"]: item for item in (found or {}).get("FileSystems", [])})
    return sorted(items.values(), key=lambda item: item["CreationTime"])


def read_mount_targets(efs, fs_id: str) -> tuple[dict[str, ObservedMountTarget], dict[str, ObservedMountTarget]]:
    """(zone → mount target, zone → one still `deleting`)."""
    found, deleting = {}, {}
    for page in efs.get_paginator("describe_mount_targets").paginate(FileSystemId=fs_id):
        for item in page["MountTargets"]:
            if item["LifeCycleState"] == "deleted":
                continue
            into = deleting if item["LifeCycleState"] == "deleting" else found
            into[item["AvailabilityZoneName"]] = ObservedMountTarget(
                id=item["MountTargetId"], zone=item["AvailabilityZoneName"], subnet_id=item["SubnetId"],
                state=item["LifeCycleState"])
    return found, deleting


def read_mount_target_groups(efs, mt_id: str) -> tuple[str, ...]:
    """Only for an available mount target: AWS reads the groups from its network interface, which
    one still `creating` may not have yet (IncorrectMountTargetState)."""
    return tuple(sorted(efs.describe_mount_target_security_groups(MountTargetId=mt_id)["SecurityGroups"]))


def read_access_points(ctx, efs, fs_id: str) -> list[ObservedAccessPoint]:
    found = []
    for page in efs.get_paginator("describe_access_points").paginate(FileSystemId=fs_id):
        for item in page["AccessPoints"]:
            tags = normalized_tags(item.get("Tags"))
            if not ctx.owns(tags) or item["LifeCycleState"] in ("deleting", "deleted"):
                continue
            root = item.get("RootDirectory", {})
            info = root.get("CreationInfo", {})
            posix = item.get("PosixUser", {})
            found.append(ObservedAccessPoint(
                id=item["AccessPointId"], arn=item["AccessPointArn"], name=tags.get("Name", ""),
                path=root.get("Path", "/"), uid=posix.get("Uid"), gid=posix.get("Gid"),
                permissions=info.get("Permissions"), tags=tags))
    return found


def read_backup_status(efs, fs_id: str) -> str:
    found = unless_code({"PolicyNotFound"}, efs.describe_backup_policy, FileSystemId=fs_id)
    return found["BackupPolicy"]["Status"] if found else "DISABLED"


def observed_file_system(item: dict) -> ObservedFileSystem:
    tags = normalized_tags(item.get("Tags"))
    return ObservedFileSystem(id=item["FileSystemId"], arn=item["FileSystemArn"], name=tags.get("Name", ""),
                              performance_mode=item["PerformanceMode"], throughput_mode=item["ThroughputMode"],
                              encrypted=item["Encrypted"], tags=tags, state=item["LifeCycleState"])


# -- waiting ----------------------------------------------------------------------------------
# EFS has no botocore waiters: its resources' LifeCycleState is read here.


def available(what: str, describe, on_done=None) -> Wait:
    """Until `describe()` (the resource's description) says available; `on_done()` then."""
    def check() -> tuple[bool, str]:
        state = describe()["LifeCycleState"]
        if state == "error":
            raise WaitFailed(f"{what} failed: AWS reports state 'error'")
        if state == "available" and on_done is not None:
            on_done()
        return state == "available", state

    return Wait(what, check)


def gone(what: str, describe, missing: str) -> Wait:
    """Until AWS answers `missing` or reports the resource deleted."""
    def check() -> tuple[bool, str]:
        found = unless_code({missing}, describe)
        state = found["LifeCycleState"] if found else "deleted"
        return state == "deleted", state

    return Wait(what, check)


def fs_available(efs, fs: ObservedFileSystem, name: str) -> Wait:
    def note() -> None:
        fs.state = "available"

    return available(f"file system {name} ({fs.id})",
                     lambda: efs.describe_file_systems(FileSystemId=fs.id)["FileSystems"][0], note)


def mount_target_available(efs, found: ObservedMountTarget, fs_name: str, read_groups: bool = False) -> Wait:
    """Until it is available; then its facts say so. `read_groups`: with the security groups AWS
    reads from its network interface, which one still `creating` may not have had (not after a
    create of ours, which set them)."""
    def note() -> None:
        found.state = "available"
        if read_groups:
            found.security_groups = read_mount_target_groups(efs, found.id)

    return available(f"mount target {found.id} of {fs_name} in {found.zone}",
                     lambda: efs.describe_mount_targets(MountTargetId=found.id)["MountTargets"][0], note)


def mount_target_gone(efs, mt_id: str, fs_name: str) -> Wait:
    return gone(f"deletion of mount target {mt_id} of {fs_name}",
                lambda: efs.describe_mount_targets(MountTargetId=mt_id)["MountTargets"][0], "MountTargetNotFound")


def on_file_system(desired: EfsDesired) -> tuple[str, ...]:
    """`Change.after` of a mount target or access point made on the platform's file system: the
    changes of the file system itself (its create or replace, the wait for one left `creating`),
    and not each other, so that they are created together, none waiting for another to be
    available."""
    return (f"file_system/{desired.file_system.name}",)


def available_fs(ctx, observed: EfsFacts) -> ObservedFileSystem:
    """The platform's file system once it is available: a new one (its create's wait), or one an
    interrupted run left `creating` (the plan's wait for its state), takes no mount target,
    access point or setting until then (IncorrectFileSystemLifeCycleState). The settle takes
    only the waits the change depends on (`on_file_system`, and a replaced mount target's delete)."""
    ctx.settle()
    return observed.current_fs()


# -- changing ---------------------------------------------------------------------------------


def put_tags(efs, resource_id: str, current: dict[str, str], change: Change) -> dict[str, str]:
    """Put the tags of the change's `tags` difference (tags others added stay); returns the tags now on it."""
    to_set = change.tags_to_set()
    if to_set:
        efs.tag_resource(ResourceId=resource_id, Tags=tagging.tag_list(to_set))
    return {**current, **to_set}


def create_file_system(ctx, efs, desired: FileSystem) -> ObservedFileSystem:
    token = ctx.token("file_system", stable=True)
    try:
        item = efs.create_file_system(CreationToken=token, PerformanceMode=desired.performance_mode,
                                      ThroughputMode=desired.throughput_mode, Encrypted=desired.encrypted,
                                      Tags=tagging.tag_list(desired.tags))
    except ClientError as error:
        if error_code(error) != "FileSystemAlreadyExists":
            raise
        # Created already (a retry whose answer was lost, which observe's listing did not show
        # yet): the token finds it. Tags removed from it since show in the next plan.
        item = efs.describe_file_systems(CreationToken=token)["FileSystems"][0]
    return dataclasses.replace(observed_file_system(item), name=desired.name)


def delete_file_system(efs, fs: ObservedFileSystem) -> Wait:
    """Its access points, then the file system (its mount targets are gone already: changes of
    their own, settled before); returns the wait until the file system is gone."""
    for ap in fs.access_points:
        delete_access_point(efs, ap.id)
    unless_code({"FileSystemNotFound"}, efs.delete_file_system, FileSystemId=fs.id)
    return file_system_gone(efs, fs)


def file_system_gone(efs, fs: ObservedFileSystem) -> Wait:
    return gone(f"deletion of file system {fs.name} ({fs.id})",
                lambda: efs.describe_file_systems(FileSystemId=fs.id)["FileSystems"][0], "FileSystemNotFound")


def delete_access_point(efs, ap_id: str) -> None:
    unless_code({"AccessPointNotFound"}, efs.delete_access_point, AccessPointId=ap_id)


def require_known(mount_target: MountTarget) -> None:
    if is_unknown(mount_target.subnet_id) or is_unknown(mount_target.security_group_id):
        raise OrchestratorError(f"efs: mount target in {mount_target.zone} needs the private subnet and the efs "
                                "security group from the vpc step, which are not known yet: apply vpc first")


def create_mount_target(efs, fs: ObservedFileSystem, desired: MountTarget) -> Wait:
    require_known(desired)
    item = efs.create_mount_target(FileSystemId=fs.id, SubnetId=desired.subnet_id,
                                   SecurityGroups=[desired.security_group_id])
    created = ObservedMountTarget(id=item["MountTargetId"], zone=desired.zone, subnet_id=desired.subnet_id,
                                  security_groups=(desired.security_group_id,), state=item["LifeCycleState"])
    fs.mount_targets[desired.zone] = created
    return mount_target_available(efs, created, fs.name)


def create_access_point(ctx, efs, fs: ObservedFileSystem, desired: AccessPoint) -> Wait:
    # The token changes with the settings and the file system: a replacement is a new create.
    token = ctx.token(f"access_point/{desired.key}", salt=f"{fs.id} {settings_text(desired)}")
    item = efs.create_access_point(
        ClientToken=token, Tags=tagging.tag_list(desired.tags), FileSystemId=fs.id,
        PosixUser={"Uid": desired.uid, "Gid": desired.gid},
        RootDirectory={"Path": desired.path, "CreationInfo": {"OwnerUid": desired.uid, "OwnerGid": desired.gid,
                                                              "Permissions": desired.permissions}})
    ap_id = item["AccessPointId"]
    fs.access_points.append(ObservedAccessPoint(
        id=ap_id, arn=item["AccessPointArn"], name=desired.name, path=desired.path, uid=desired.uid,
        gid=desired.gid, permissions=desired.permissions, tags=dict(desired.tags)))
    return available(f"access point {desired.name} ({ap_id})",
                     lambda: efs.describe_access_points(AccessPointId=ap_id)["AccessPoints"][0])


def settings_text(ap: AccessPoint | ObservedAccessPoint) -> str:
    """An access point's immutable settings in one line, for plans and idempotency tokens."""
    return f"{ap.path} uid={ap.uid} gid={ap.gid} mode={ap.permissions}"


def same_settings(desired: AccessPoint, found: ObservedAccessPoint) -> bool:
    return (desired.path, desired.uid, desired.gid, desired.permissions) == \
        (found.path, found.uid, found.gid, found.permissions)


# -- the step ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MountTargetWork:
    """Payload of a mount target's update: what the manifest wants, what AWS has."""

    mt: MountTarget
    found: ObservedMountTarget


@dataclass(frozen=True)
class AccessPointWork:
    """Payload of an access point's replace or tag update: what the manifest wants, what AWS has."""

    ap: AccessPoint
    found: ObservedAccessPoint


@dataclass(frozen=True)
class EfsOutputs:
    file_system_id: str
    file_system_arn: str
    access_points: dict[str, str]  # access point id by the manifest's name
    access_point_arns: dict[str, str]


class EfsStep(Step):
    name = "efs"
    depends_on = ("vpc",)
    Outputs = EfsOutputs
    description = "EFS file system (encrypted), mount targets in the private subnets, access points"

    def permissions(self, manifest, scope) -> list[dict]:
        """The deploy role's statements for this step. File systems and access points have
        generated ids, so the statements name this account's in this region; what is ours
        among them is decided by creation token and tags."""
        return [
            allow("EfsFileSystems", [f"elasticfilesystem:{action}" for action in (
                "DescribeFileSystems", "DescribeMountTargets", "DescribeMountTargetSecurityGroups",
                "DescribeAccessPoints", "DescribeLifecycleConfiguration", "DescribeBackupPolicy", "DeleteFileSystem", "UpdateFileSystem", "PutLifecycleConfiguration", "PutBackupPolicy",
                "CreateMountTarget", "DeleteMountTarget", "ModifyMountTargetSecurityGroups", "CreateAccessPoint",
                "DeleteAccessPoint", "TagResource")],
                  [scope.arn("elasticfilesystem", "file-system/*"), scope.arn("elasticfilesystem", "access-point/*")]),
            # CreateFileSystem is authorised on "*" only (no ARN before the create): held to a
            # file system that carries this environment's ownership tags.
            allow("EfsCreateFileSystem", ["elasticfilesystem:CreateFileSystem"], "*", tagged_as_ours(manifest)),
            # A mount target is a network interface EFS makes in the caller's name. EC2 describes
            # support no resource-level permissions; the interface's own actions are held to
            # this account and region.
            allow("EfsMountTargetNetworkRead", ["ec2:DescribeSubnets", "ec2:DescribeNetworkInterfaces",
                                                "ec2:DescribeNetworkInterfaceAttribute"], "*"),
            allow("EfsMountTargetNetwork", ["ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface",
                                            "ec2:ModifyNetworkInterfaceAttribute"], scope.arn("ec2", "*")),
            FIND_BY_TAG]

    # -- desired ---------------------------------------------------------------------------

    def desired(self, manifest, inputs) -> EfsDesired:
        spec = manifest.efs
        tags = tagging.ownership_tags(manifest.app, manifest.environment, self.name, manifest.tags)
        zones, subnets, group = upstream_network(manifest, inputs)
        fs_name = f"{manifest.prefix}-data"
        return EfsDesired(
            prefix=manifest.prefix,
            file_system=FileSystem(name=fs_name, performance_mode=spec.performance_mode,
                                   throughput_mode=spec.throughput_mode, encrypted=True,
                                   tags={**tags, "Name": fs_name}),
            transition_to_ia=spec.transition_to_ia,
            backups=spec.backups,
            mount_targets=tuple(MountTarget(zone=zone, subnet_id=subnet, security_group_id=group)
                                for zone, subnet in zip(zones, subnets, strict=True)),
            access_points=tuple(
                AccessPoint(key=key, name=f"{manifest.prefix}-{key}", path=ap.path, uid=ap.uid, gid=ap.gid,
                            permissions=ap.permissions, tags={**tags, "Name": f"{manifest.prefix}-{key}"})
                for key, ap in sorted(spec.access_points.items())))

    # -- observe ---------------------------------------------------------------------------

    def observe(self, ctx, desired: EfsDesired) -> EfsFacts:
        """The platform's file system by its creation token, and the others carrying our tags
        (left over) by one tagging-API query: never a listing of the account's file systems."""
        efs = ctx.client("efs")
        token = ctx.token("file_system", stable=True)
        facts = EfsFacts()
        for item in read_file_systems(efs, token, self._tagged_file_system_ids(ctx)):
            fs = observed_file_system(item)
            mine = item["CreationToken"] == token
            if mine and item["LifeCycleState"] == "deleting":
                facts.deleting = fs
            if item["LifeCycleState"] in ("deleting", "deleted") or not (mine or ctx.owns(fs.tags)):
                continue
            (fs.mount_targets, fs.deleting_mount_targets), fs.access_points = ctx.each("efs", lambda read: read(), [
                lambda: read_mount_targets(efs, fs.id), lambda: read_access_points(ctx, efs, fs.id)])
            facts.file_systems[fs.id] = fs
            if mine:
                facts.current = fs.id
        current = facts.current_fs()
        if current is not None:
            self._observe_settings(ctx, efs, current, desired)
        return facts

    def _tagged_file_system_ids(self, ctx) -> list[str]:
        pages = ctx.client("resourcegroupstaggingapi").get_paginator("get_resources").paginate(
            TagFilters=tagging.owner_tag_filters(ctx.app, ctx.env, self.name),
            ResourceTypeFilters=["elasticfilesystem:file-system"])
        return [item["ResourceARN"].rsplit("/", 1)[-1] for page in pages for item in page["ResourceTagMappingList"]]

    @staticmethod
    def _observe_settings(ctx, efs, fs: ObservedFileSystem, desired: EfsDesired) -> None:
        """What only the platform's file system needs: mount-target groups, lifecycle, backups,
        read at once (each read fills its own field)."""
        def groups(mount_target: ObservedMountTarget) -> None:
            mount_target.security_groups = read_mount_target_groups(efs, mount_target.id)

        def lifecycle() -> None:
            policies = efs.describe_lifecycle_configuration(FileSystemId=fs.id)["LifecyclePolicies"]
            fs.transition_to_ia = next((p["TransitionToIA"] for p in policies if "TransitionToIA" in p), None)

        def backups() -> None:
            fs.backups = read_backup_status(efs, fs.id)

        reads = [lambda mount_target=mount_target: groups(mount_target)
                 for mount_target in fs.mount_targets.values() if mount_target.state == "available"]
        ctx.each("efs", lambda read: read(), reads + [lifecycle] + ([backups] if desired.backups else []))

    # -- plan ---------------------------------------------------------------------------------

    def plan(self, desired: EfsDesired, observed: EfsFacts, recorded: dict[str, dict]) -> list[Change]:
        current = observed.current_fs()
        if current is None:
            changes = (self._plan_wait_until_gone(observed.deleting) + [self._plan_create_fs(desired.file_system)]
                       + self._new_fs_children(desired, recorded))
        elif diff_fields(desired.file_system, current, REPLACE_FIELDS):
            changes = self._plan_replace_fs(desired.file_system, current) + [
                dataclasses.replace(change, blocked=DELETE_DATA, note=f"part of replacing file system {current.id}")
                for change in self._new_fs_children(desired, recorded)]
        else:
            changes = (self._plan_wait_for_fs(desired.file_system, current)
                       + self._plan_update_fs(desired.file_system, current)
                       + self._lifecycle(desired, current.transition_to_ia)
                       + self._backups(desired, current.backups, recorded)
                       + self._mount_targets(desired, current)
                       + self._access_points(desired, current))
        leftovers = [fs for fs_id, fs in sorted(observed.file_systems.items()) if fs_id != observed.current]
        return changes + [change for fs in leftovers for change in self._plan_delete_fs_and_mount_targets(
            fs, blocked=DELETE_DATA, why="is not the platform's file system any more")]

    def _new_fs_children(self, desired: EfsDesired, recorded: dict[str, dict]) -> list[Change]:
        """What a new file system needs after its create."""
        return (self._lifecycle(desired, None) + self._backups(desired, None, recorded)
                + [self._plan_create_mount_target(mt, on_file_system(desired)) for mt in desired.mount_targets]
                + [self._plan_create_access_point(ap, on_file_system(desired)) for ap in desired.access_points])

    @staticmethod
    def _plan_wait_until_gone(deleting: ObservedFileSystem | None) -> list[Change]:
        """The platform's file system an interrupted run was deleting: its creation token finds it
        until it is gone, so the create waits for that (a change with no call)."""
        if deleting is None:
            return []
        return [Change("delete", "file_system", deleting.name or deleting.id,
                       diffs=(FieldDiff("state", "deleting", "deleted"),), payload=deleting,
                       note=f"file system {deleting.id}: an interrupted run deleted it; wait until it is gone")]

    @staticmethod
    def _plan_create_fs(fs: FileSystem) -> Change:
        diffs = tuple(FieldDiff(name, None, getattr(fs, name))
                      for name in ("performance_mode", "throughput_mode", "encrypted"))
        return Change("create", "file_system", fs.name, diffs=diffs, calls=("efs:CreateFileSystem",), payload=fs)

    def _plan_replace_fs(self, fs: FileSystem, current: ObservedFileSystem) -> list[Change]:
        """Delete first: the old file system's mount targets, then it (with its access points),
        then the new one, whose creation token would find the old one while it exists."""
        why = f"is replaced by a new {fs.name}"
        return self._plan_delete_fs_and_mount_targets(current, blocked=DELETE_DATA, why=why) + [
            Change("replace", "file_system", fs.name, diffs=diff_fields(fs, current, REPLACE_FIELDS),
                   calls=("efs:CreateFileSystem",), payload=fs, blocked=DELETE_DATA,
                   note=f"file system {current.id}: {', '.join(REPLACE_FIELDS)} cannot change in place; "
                        "replacing it deletes its data (pass --delete-data to allow)",
                   outage=f"its creation token is the new one's, so the old one goes first: tasks cannot mount "
                          f"{fs.name} until the new one and its mount targets are available")]

    @staticmethod
    def _plan_wait_for_fs(fs: FileSystem, current: ObservedFileSystem) -> list[Change]:
        """One an interrupted run left `creating`: wait until it is available (no call), before
        anything goes on it."""
        if current.state == "available":
            return []
        return [Change("update", "file_system", fs.name, diffs=(FieldDiff("state", current.state, "available"),),
                       payload=fs, note=f"file system {current.id}: wait until it is available")]

    @staticmethod
    def _plan_update_fs(fs: FileSystem, current: ObservedFileSystem) -> list[Change]:
        throughput = diff_fields(fs, current, ("throughput_mode",))
        tags = tagging.tag_diffs(current.tags, fs.tags)
        if not throughput + tags:
            return []
        calls = (("efs:UpdateFileSystem",) if throughput else ()) + (("efs:TagResource",) if tags else ())
        return [Change("update", "file_system", fs.name, diffs=throughput + tags, calls=calls, payload=fs,
                       note=f"file system {current.id}")]

    @staticmethod
    def _lifecycle(desired: EfsDesired, current: str | None) -> list[Change]:
        if desired.transition_to_ia == current:
            return []
        return [Change("update", "lifecycle", desired.file_system.name,
                       diffs=(FieldDiff("transition_to_ia", current, desired.transition_to_ia),),
                       calls=("efs:PutLifecycleConfiguration",), payload=desired.transition_to_ia)]

    @staticmethod
    def _backups(desired: EfsDesired, current: str | None, recorded: dict[str, dict]) -> list[Change]:
        """Backups on: compared with what AWS reads back. Off: compared with the last apply, so
        that an environment that never had backups never calls the backup API."""
        name = desired.file_system.name
        if desired.backups:
            if current in ENABLED_STATES:
                return []
            old, status = current or "DISABLED", "ENABLED"
        elif recorded.get(f"backup_policy/{name}", {}).get("enabled"):
            old, status = "ENABLED", "DISABLED"
        else:
            return []
        return [Change("update", "backup_policy", name, diffs=(FieldDiff("backups", old, status),),
                       calls=("efs:PutBackupPolicy",), payload=status, record={"enabled": status == "ENABLED"})]

    @staticmethod
    def _plan_create_mount_target(mt: MountTarget, after: tuple[str, ...]) -> Change:
        return Change("create", "mount_target", mt.zone,
                      diffs=(FieldDiff("subnet_id", None, mt.subnet_id),
                             FieldDiff("security_groups", None, [mt.security_group_id])),
                      calls=("efs:CreateMountTarget",), payload=mt, after=after)

    def _mount_targets(self, desired: EfsDesired, fs: ObservedFileSystem) -> list[Change]:
        wanted = {mt.zone for mt in desired.mount_targets}
        changes = [self._plan_delete_mount_target(found, fs, "its zone is no longer one of the network's")
                   for zone, found in sorted(fs.mount_targets.items()) if zone not in wanted]
        for mt in desired.mount_targets:
            found = fs.mount_targets.get(mt.zone)
            if found is None and mt.zone in fs.deleting_mount_targets:
                # An interrupted run deleted it (a replace's first half): a zone holds one.
                changes.append(self._plan_wait_until_mount_target_gone(fs.deleting_mount_targets[mt.zone]))
            if found is None:
                changes.append(self._plan_create_mount_target(mt, on_file_system(desired)))
            elif found.subnet_id != mt.subnet_id:
                # Delete first: a zone holds one mount target of a file system.
                changes.append(self._plan_delete_mount_target(found, fs, "replaced: the subnet cannot change"))
                changes.append(Change("replace", "mount_target", mt.zone,
                                      diffs=(FieldDiff("subnet_id", found.subnet_id, mt.subnet_id),),
                                      calls=("efs:CreateMountTarget",), payload=mt, after=on_file_system(desired),
                                      note=f"mount target {found.id}: the subnet cannot change",
                                      outage=f"a zone holds one mount target: tasks in {mt.zone} cannot mount the "
                                             "file system until the new one is available"))
            elif found.state != "available":
                # Its security groups cannot be read yet: wait for it (they are read then, and
                # compared by the next plan: its create set them, so they differ only if the
                # manifest changed since).
                changes.append(Change("update", "mount_target", mt.zone,
                                      diffs=(FieldDiff("state", found.state, "available"),), payload=MountTargetWork(mt, found),
                                      note=f"mount target {found.id}: wait until it is available"))
            elif found.security_groups != (mt.security_group_id,):
                changes.append(Change("update", "mount_target", mt.zone,
                                      diffs=(FieldDiff("security_groups", list(found.security_groups),
                                                       [mt.security_group_id]),),
                                      calls=("efs:ModifyMountTargetSecurityGroups",), payload=MountTargetWork(mt, found),
                                      note=f"mount target {found.id}"))
        return changes

    @staticmethod
    def _plan_create_access_point(ap: AccessPoint, after: tuple[str, ...]) -> Change:
        return Change("create", "access_point", ap.key, diffs=(FieldDiff("settings", None, settings_text(ap)),),
                      calls=("efs:CreateAccessPoint",), payload=ap, after=after)

    def _access_points(self, desired: EfsDesired, fs: ObservedFileSystem) -> list[Change]:
        """Match by Name tag; keep one with the right settings, replace otherwise, delete the rest
        (duplicates a lost create answer left behind, and access points the manifest dropped)."""
        by_name: dict[str, list[ObservedAccessPoint]] = {}
        for found in fs.access_points:
            by_name.setdefault(found.name, []).append(found)
        changes = []
        for ap in desired.access_points:
            candidates = by_name.pop(ap.name, [])
            keep = next((found for found in candidates if same_settings(ap, found)), None)
            if keep is None and candidates:
                old = candidates[0]
                changes.append(Change(
                    "replace", "access_point", ap.key,
                    diffs=(FieldDiff("settings", settings_text(old), settings_text(ap)),),
                    calls=("efs:CreateAccessPoint",), payload=AccessPointWork(ap, old), after=on_file_system(desired),
                    note=f"access point {old.id}: access points cannot change, so a new one replaces it"))
                changes.append(self._plan_delete_access_point(old, ap.key, "replaced"))
                keep = old
            elif keep is None:
                changes.append(self._plan_create_access_point(ap, on_file_system(desired)))
            elif tagging.reconcile(keep.tags, ap.tags):
                changes.append(Change("update", "access_point", ap.key, diffs=tagging.tag_diffs(keep.tags, ap.tags),
                                      calls=("efs:TagResource",), payload=AccessPointWork(ap, keep), note=f"access point {keep.id}"))
            changes += [self._plan_delete_access_point(found, ap.key, "a duplicate")
                        for found in candidates if found is not keep]
        for name, leftovers in sorted(by_name.items()):
            key = name.removeprefix(f"{desired.prefix}-")
            changes += [self._plan_delete_access_point(found, key, "no longer in the manifest") for found in leftovers]
        return changes

    @staticmethod
    def _plan_delete_access_point(found: ObservedAccessPoint, key: str, why: str, retire: bool = True) -> Change:
        """`retire`: during an apply, the services step (whose tasks mount it) moves off it first."""
        return Change("delete", "access_point", key, calls=("efs:DeleteAccessPoint",), payload=found, retire=retire,
                      note=f"access point {found.id} is {why}; the files stay in the file system")

    @staticmethod
    def _plan_wait_until_mount_target_gone(old: ObservedMountTarget, blocked: str | None = None) -> Change:
        """One an interrupted run deleted and AWS still shows `deleting`: its zone holds it, and its
        file system cannot be deleted (FileSystemInUse), until it is gone (a change with no call)."""
        return Change("delete", "mount_target", old.zone, diffs=(FieldDiff("state", "deleting", "deleted"),),
                      payload=old, blocked=blocked,
                      note=f"mount target {old.id}: an interrupted run deleted it; wait until it is gone")

    @staticmethod
    def _plan_delete_mount_target(found: ObservedMountTarget, fs: ObservedFileSystem, why: str,
                                  blocked: str | None = None) -> Change:
        return Change("delete", "mount_target", found.zone, calls=("efs:DeleteMountTarget",), payload=found,
                      blocked=blocked, note=f"mount target {found.id} of {fs.id}: {why}")

    def _plan_delete_fs_and_mount_targets(self, fs: ObservedFileSystem, blocked: str | None, why: str) -> list[Change]:
        """Its mount targets (changes of their own, whose waits the file system's delete settles
        first: AWS refuses to delete a file system that has any, even one still `deleting`),
        then it with its access points. `blocked`: the mount targets of a file system that is
        kept stay too."""
        return (self._plan_mount_targets_gone(fs, f"its file system {why}", blocked)
                + [self._plan_delete_fs(fs, why)])

    def _plan_mount_targets_gone(self, fs: ObservedFileSystem, why: str, blocked: str | None = None) -> list[Change]:
        """The deletes of a file system's mount targets, and the waits for those an interrupted
        run left `deleting`."""
        return ([self._plan_wait_until_mount_target_gone(old, blocked) for _, old in sorted(fs.deleting_mount_targets.items())]
                + [self._plan_delete_mount_target(found, fs, why, blocked) for _, found in sorted(fs.mount_targets.items())])

    @staticmethod
    def _plan_delete_fs(fs: ObservedFileSystem, why: str = "") -> Change:
        return Change("delete", "file_system", fs.name or fs.id,
                      calls=("efs:DeleteAccessPoint", "efs:DeleteFileSystem"), payload=fs, blocked=DELETE_DATA,
                      note=f"file system {fs.id} {why + '; ' if why else ''}with {len(fs.access_points)} access "
                           "point(s); deleting it deletes its data (pass --delete-data to allow)")

    # -- apply --------------------------------------------------------------------------------

    def _create_file_system(self, ctx, change: Change, observed: EfsFacts) -> Accepted:
        """A new file system (a create, or a replace's new one), once what the change before it
        removes is gone: one an interrupted run was deleting, or the old one of a replace (the
        new one's creation token would find either)."""
        fs: FileSystem = change.payload
        ctx.settle()
        efs = ctx.client("efs")
        created = create_file_system(ctx, efs, fs)
        observed.file_systems[created.id] = created
        observed.current = created.id
        return Accepted(waits=(fs_available(efs, created, fs.name),))

    def _update_file_system(self, ctx, change: Change, observed: EfsFacts) -> Accepted | None:
        """Wait for one an interrupted run left `creating` (a change of its own, with no call), or
        put its throughput mode and our tags right."""
        fs: FileSystem = change.payload
        efs = ctx.client("efs")
        if change.differs("state"):
            return Accepted(waits=(fs_available(efs, observed.current_fs(), fs.name),))
        current = available_fs(ctx, observed)
        current.tags = put_tags(efs, current.id, current.tags, change)
        if current.throughput_mode == fs.throughput_mode:
            return None
        efs.update_file_system(FileSystemId=current.id, ThroughputMode=fs.throughput_mode)
        current.throughput_mode, current.state = fs.throughput_mode, "updating"
        return Accepted(waits=(fs_available(efs, current, fs.name),))

    def _delete_file_system(self, ctx, change: Change, observed: EfsFacts) -> Accepted:
        """Once its mount targets are gone (their delete changes before this one); for one an
        interrupted run deleted already, only the wait until it is gone."""
        fs: ObservedFileSystem = change.payload
        if change.differs("state"):
            observed.deleting = None
            return Accepted(waits=(file_system_gone(ctx.client("efs"), fs),))
        ctx.settle()
        wait = delete_file_system(ctx.client("efs"), fs)
        observed.file_systems.pop(fs.id, None)
        if observed.current == fs.id:
            observed.current = None
        return Accepted(waits=(wait,))

    def _update_lifecycle(self, ctx, change: Change, observed: EfsFacts) -> None:
        transition: str | None = change.payload
        efs = ctx.client("efs")
        current = available_fs(ctx, observed)
        policies = [{"TransitionToIA": transition}] if transition else []
        efs.put_lifecycle_configuration(FileSystemId=current.id, LifecyclePolicies=policies)
        current.transition_to_ia = transition

    def _update_backup_policy(self, ctx, change: Change, observed: EfsFacts) -> None:
        status: str = change.payload
        efs = ctx.client("efs")
        current = available_fs(ctx, observed)
        efs.put_backup_policy(FileSystemId=current.id, BackupPolicy={"Status": status})
        current.backups = status

    def _create_mount_target(self, ctx, change: Change, observed: EfsFacts) -> Accepted:
        mt: MountTarget = change.payload
        efs = ctx.client("efs")
        return Accepted(waits=(create_mount_target(efs, available_fs(ctx, observed), mt),))

    def _replace_mount_target(self, ctx, change: Change, observed: EfsFacts) -> Accepted:
        """The new one, once the old one is gone (the delete change before this one, see the
        plan's outage): a zone holds one mount target of a file system."""
        mt: MountTarget = change.payload
        require_known(mt)
        return Accepted(waits=(create_mount_target(ctx.client("efs"), available_fs(ctx, observed), mt),))

    def _update_mount_target(self, ctx, change: Change, observed: EfsFacts) -> Accepted | None:
        """Wait for one an interrupted run left `creating` (its groups are read once it is
        available: the next plan compares them), or put its groups right."""
        work: MountTargetWork = change.payload
        mt, found = work.mt, work.found
        efs = ctx.client("efs")
        if change.differs("state"):
            return Accepted(waits=(mount_target_available(efs, found, observed.current_fs().name, read_groups=True),))
        require_known(mt)
        efs.modify_mount_target_security_groups(MountTargetId=found.id, SecurityGroups=[mt.security_group_id])
        found.security_groups = (mt.security_group_id,)
        return None

    def _delete_mount_target(self, ctx, change: Change, observed: EfsFacts) -> Accepted:
        """For one an interrupted run deleted already, only the wait until it is gone."""
        found: ObservedMountTarget = change.payload
        if change.differs("state"):
            fs = next(fs for fs in observed.file_systems.values() if found in fs.deleting_mount_targets.values())
            fs.deleting_mount_targets.pop(found.zone, None)
            return Accepted(waits=(mount_target_gone(ctx.client("efs"), found.id, fs.name),))
        return Accepted(waits=(self._remove_mount_target(ctx.client("efs"), found, observed),))

    @staticmethod
    def _remove_mount_target(efs, found: ObservedMountTarget, observed: EfsFacts) -> Wait:
        fs = next(fs for fs in observed.file_systems.values() if found in fs.mount_targets.values())
        unless_code({"MountTargetNotFound"}, efs.delete_mount_target, MountTargetId=found.id)
        fs.mount_targets.pop(found.zone, None)
        return mount_target_gone(efs, found.id, fs.name)

    def _create_access_point(self, ctx, change: Change, observed: EfsFacts) -> Accepted:
        ap: AccessPoint = change.payload
        efs = ctx.client("efs")
        return Accepted(waits=(create_access_point(ctx, efs, available_fs(ctx, observed), ap),))

    def _replace_access_point(self, ctx, change: Change, observed: EfsFacts) -> Accepted:
        """The new one; the old one is retired by its own change once the services moved to it."""
        work: AccessPointWork = change.payload
        efs = ctx.client("efs")
        return Accepted(waits=(create_access_point(ctx, efs, available_fs(ctx, observed), work.ap),))

    def _update_access_point(self, ctx, change: Change, observed: EfsFacts) -> None:
        """Only its tags: an access point's settings cannot change (a change replaces it)."""
        work: AccessPointWork = change.payload
        work.found.tags = put_tags(ctx.client("efs"), work.found.id, work.found.tags, change)

    def _delete_access_point(self, ctx, change: Change, observed: EfsFacts) -> None:
        found: ObservedAccessPoint = change.payload
        delete_access_point(ctx.client("efs"), found.id)
        fs = observed.current_fs()
        fs.access_points = [ap for ap in fs.access_points if ap.id != found.id]

    handlers = {
        ("create", "file_system"): _create_file_system,
        ("replace", "file_system"): _create_file_system,
        ("update", "file_system"): _update_file_system,
        ("delete", "file_system"): _delete_file_system,
        ("update", "lifecycle"): _update_lifecycle,
        ("update", "backup_policy"): _update_backup_policy,
        ("create", "mount_target"): _create_mount_target,
        ("replace", "mount_target"): _replace_mount_target,
        ("update", "mount_target"): _update_mount_target,
        ("delete", "mount_target"): _delete_mount_target,
        ("create", "access_point"): _create_access_point,
        ("replace", "access_point"): _replace_access_point,
        ("update", "access_point"): _update_access_point,
        ("delete", "access_point"): _delete_access_point,
    }

    # -- outputs and destroy --------------------------------------------------------------------

    def outputs(self, desired: EfsDesired, observed: EfsFacts) -> EfsOutputs:
        fs = observed.current_fs()
        access_points = {}
        for ap in desired.access_points:
            found = next((f for f in fs.access_points if f.name == ap.name and same_settings(ap, f)), None) \
                if fs else None
            access_points[ap.key] = found
        return EfsOutputs(
            file_system_id=fs.id if fs else Unknown(f"{self.name}.file_system_id"),
            file_system_arn=fs.arn if fs else Unknown(f"{self.name}.file_system_arn"),
            access_points={key: f.id if f else Unknown(f"{self.name}.access_points.{key}")
                           for key, f in access_points.items()},
            access_point_arns={key: f.arn if f else Unknown(f"{self.name}.access_point_arns.{key}")
                               for key, f in access_points.items()})

    def plan_destroy(self, observed: EfsFacts) -> list[Change]:
        """Mount targets go in any case: they hold no data, and while they stand the network
        (subnets, security groups, VPC) cannot be deleted. A file system itself, with its access
        points, goes only with `delete-data`."""
        changes = []
        for _, fs in sorted(observed.file_systems.items()):
            changes += self._plan_mount_targets_gone(fs, "the file system's data is not touched")
            changes.append(self._plan_delete_fs(fs))
        return changes


STEP = EfsStep
