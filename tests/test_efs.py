"""Step `efs`: pure planning without AWS, then apply / drift / destroy / crash against moto."""
from __future__ import annotations

import dataclasses
import json

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from orchestrator.model import KNOWN_AFTER_APPLY, Unknown
from orchestrator.schema import AccessPointSpec
from steps.efs import EfsFacts, EfsStep, ObservedAccessPoint, ObservedFileSystem, ObservedMountTarget
from tests import harness

STEP = EfsStep()
ZONES = ["us-east-1a", "us-east-1b"]
FS_NAME = "gamepulse-dev-data"
UPSTREAM = {"vpc": {"vpc_id": "vpc-1", "zones": ZONES, "private_subnet_ids": ["subnet-a", "subnet-b"],
                    "security_groups": {"efs": "sg-efs", "app": "sg-app"}}}


def with_efs(manifest, **changes):
    return manifest.model_copy(update={"efs": manifest.efs.model_copy(update=changes)})


# -- pure planning ------------------------------------------------------------------------------


def desired_for(manifest, upstream=UPSTREAM):
    return STEP.desired(manifest, harness.inputs(STEP, upstream))


def as_found(desired, **changed) -> EfsFacts:
    """What observe would report for a file system configured exactly as desired."""
    spec = desired.file_system
    fs = ObservedFileSystem(
        id="fs-1", arn="arn:fs-1", name=spec.name, performance_mode=spec.performance_mode,
        throughput_mode=spec.throughput_mode, encrypted=True, tags=dict(spec.tags),
        mount_targets={mt.zone: ObservedMountTarget(id=f"fsmt-{mt.zone}", zone=mt.zone, subnet_id=mt.subnet_id,
                                                    security_groups=(mt.security_group_id,))
                       for mt in desired.mount_targets},
        access_points=[ObservedAccessPoint(id=f"fsap-{ap.key}", arn=f"arn:fsap-{ap.key}", name=ap.name, path=ap.path,
                                           uid=ap.uid, gid=ap.gid, permissions=ap.permissions, tags=dict(ap.tags))
                       for ap in desired.access_points],
        transition_to_ia=desired.transition_to_ia, backups="ENABLED" if desired.backups else None)
    return EfsFacts(file_systems={"fs-1": dataclasses.replace(fs, **changed)}, current="fs-1")


def summary(changes):
    return [(c.action, c.kind, c.name, c.blocked) for c in changes]


def test_desired_resolves_network_access_points_and_tags(manifest):
    desired = desired_for(manifest)
    assert [(mt.zone, mt.subnet_id, mt.security_group_id) for mt in desired.mount_targets] == [
        ("us-east-1a", "subnet-a", "sg-efs"), ("us-east-1b", "subnet-b", "sg-efs")]
    grafana, prometheus = desired.access_points
    assert (prometheus.name, prometheus.path, prometheus.uid, prometheus.gid) == (
        "gamepulse-dev-prometheus", "/prometheus", 65534, 65534)
    assert (grafana.path, grafana.uid) == ("/grafana", 472)
    assert prometheus.tags["Name"] == "gamepulse-dev-prometheus" and prometheus.tags["orchestrator:step"] == "efs"
    assert desired.file_system.tags["Name"] == FS_NAME and desired.file_system.encrypted


def test_desired_before_the_network_exists_names_zones_with_unknown_ids(manifest):
    desired = desired_for(manifest, upstream={})
    assert [(mt.zone, mt.subnet_id, mt.security_group_id) for mt in desired.mount_targets] == [
        ("us-east-1a", KNOWN_AFTER_APPLY, KNOWN_AFTER_APPLY), ("us-east-1b", KNOWN_AFTER_APPLY, KNOWN_AFTER_APPLY)]
    assert STEP.outputs(desired, EfsFacts()).file_system_id == KNOWN_AFTER_APPLY


def test_a_security_group_the_network_has_not_made_yet_is_not_known_yet(manifest):
    """The manifest's checks make sure the network describes the group; the vpc step's outputs
    lack it only until that step applied it."""
    upstream = {"vpc": {**UPSTREAM["vpc"], "security_groups": {"app": "sg-app"}}}
    group = desired_for(manifest, upstream).mount_targets[0].security_group_id
    assert isinstance(group, Unknown) and group.source == "vpc.security_groups.efs"


def test_plan_from_nothing_creates_everything_in_order_without_touching_backups(manifest):
    changes = STEP.plan(desired_for(manifest), EfsFacts(), {})
    assert summary(changes) == [
        ("create", "file_system", FS_NAME, None), ("update", "lifecycle", FS_NAME, None),
        ("create", "mount_target", "us-east-1a", None), ("create", "mount_target", "us-east-1b", None),
        ("create", "access_point", "grafana", None), ("create", "access_point", "prometheus", None)]
    assert not any("efs:PutBackupPolicy" in c.calls for c in changes)


def test_no_change_when_everything_matches(manifest):
    desired = desired_for(manifest)
    assert STEP.plan(desired, as_found(desired), {}) == []


def test_throughput_mode_is_updated_in_place(manifest):
    desired = desired_for(manifest)
    (change,) = STEP.plan(desired, as_found(desired, throughput_mode="elastic"), {})
    assert (change.action, change.kind, change.calls) == ("update", "file_system", ("efs:UpdateFileSystem",))
    assert [(d.field, d.old, d.new) for d in change.diffs] == [("throughput_mode", "elastic", "bursting")]


def test_removed_tags_are_put_back_and_tags_others_added_are_kept(manifest):
    desired = desired_for(manifest)
    tags = {k: v for k, v in desired.file_system.tags.items() if k != "project"} | {"hand-made": "x"}
    (change,) = STEP.plan(desired, as_found(desired, tags=tags), {})
    assert change.calls == ("efs:TagResource",)
    assert [(d.field, d.old, d.new) for d in change.diffs] == [
        ("tags", {"project": None}, {"project": desired.file_system.tags["project"]})]
    assert STEP.plan(desired, as_found(desired, tags=desired.file_system.tags | {"hand-made": "x"}), {}) == []


def test_performance_mode_change_replaces_the_file_system_only_with_the_flag(manifest):
    desired = desired_for(with_efs(manifest, performance_mode="maxIO"))
    changes = STEP.plan(desired, as_found(desired_for(manifest)), {})
    # Delete first, each a change of its own: the old mount targets, the old file system (its
    # creation token is the new one's), then the new one and what goes on it.
    assert [(c.action, c.kind, c.name) for c in changes] == [
        ("delete", "mount_target", "us-east-1a"), ("delete", "mount_target", "us-east-1b"),
        ("delete", "file_system", FS_NAME), ("replace", "file_system", FS_NAME), ("update", "lifecycle", FS_NAME),
        ("create", "mount_target", "us-east-1a"), ("create", "mount_target", "us-east-1b"),
        ("create", "access_point", "grafana"), ("create", "access_point", "prometheus")]
    replace = changes[3]
    assert "deletes its data" in replace.note and "tasks cannot mount" in replace.outage
    assert [(d.field, d.old, d.new) for d in replace.diffs] == [("performance_mode", "generalPurpose", "maxIO")]
    assert {c.blocked for c in changes} == {"delete-data"}


def test_lifecycle_is_compared_with_what_aws_reads_back(manifest):
    desired = desired_for(manifest)
    (change,) = STEP.plan(desired, as_found(desired, transition_to_ia=None), {})
    assert (change.kind, change.calls, change.payload) == ("lifecycle", ("efs:PutLifecycleConfiguration",),
                                                           "AFTER_30_DAYS")


def test_backups_on_are_compared_with_aws_and_recorded(manifest):
    desired = desired_for(with_efs(manifest, backups=True))
    (change,) = STEP.plan(desired, as_found(desired, backups="DISABLED"), {})
    assert (change.kind, change.payload, change.record) == ("backup_policy", "ENABLED", {"enabled": True})
    assert STEP.plan(desired, as_found(desired, backups="ENABLED"), {}) == []


def test_backups_off_are_compared_with_the_last_apply(manifest):
    desired = desired_for(manifest)
    assert STEP.plan(desired, as_found(desired), {f"backup_policy/{FS_NAME}": {"enabled": False}}) == []
    (change,) = STEP.plan(desired, as_found(desired), {f"backup_policy/{FS_NAME}": {"enabled": True}})
    assert (change.payload, change.record) == ("DISABLED", {"enabled": False})


def test_mount_target_drift(manifest):
    desired = desired_for(manifest)
    facts = as_found(desired)
    fs = facts.current_fs()
    fs.mount_targets["us-east-1a"].security_groups = ("sg-app",)
    fs.mount_targets["us-east-1b"].subnet_id = "subnet-old"
    fs.mount_targets["us-east-1c"] = ObservedMountTarget(id="fsmt-c", zone="us-east-1c", subnet_id="subnet-c")
    changes = STEP.plan(desired, facts, {})
    assert [(c.action, c.name, c.calls) for c in changes] == [
        ("delete", "us-east-1c", ("efs:DeleteMountTarget",)),
        ("update", "us-east-1a", ("efs:ModifyMountTargetSecurityGroups",)),
        ("delete", "us-east-1b", ("efs:DeleteMountTarget",)),  # first: a zone holds one mount target
        ("replace", "us-east-1b", ("efs:CreateMountTarget",))]
    assert "a zone holds one mount target" in changes[-1].outage


def test_access_points_are_replaced_deduplicated_and_dropped(manifest):
    desired = desired_for(manifest)
    facts = as_found(desired)
    fs = facts.current_fs()
    grafana, prometheus = fs.access_points
    grafana.uid = 0
    fs.access_points.append(dataclasses.replace(prometheus, id="fsap-duplicate"))
    fs.access_points.append(dataclasses.replace(prometheus, id="fsap-old", name="gamepulse-dev-loki"))
    changes = STEP.plan(desired, facts, {})
    # The old ones go at the end of the run (retire), once the services no longer mount them.
    assert [(c.action, c.name, c.retire) for c in changes] == [
        ("replace", "grafana", False), ("delete", "grafana", True), ("delete", "prometheus", True),
        ("delete", "loki", True)]
    assert changes[0].diffs[0].old == "/grafana uid=0 gid=472 mode=0755"
    assert changes[1].payload is grafana
    assert changes[2].payload.id == "fsap-duplicate" and changes[3].payload.id == "fsap-old"
    assert not any(c.blocked for c in changes)


def test_leftover_file_system_and_destroy_need_the_flag(manifest):
    desired = desired_for(manifest)
    facts = as_found(desired)
    facts.file_systems["fs-0"] = dataclasses.replace(facts.current_fs(), id="fs-0", name="gamepulse-dev-old")
    *its_mount_targets, leftover = STEP.plan(desired, facts, {})
    assert summary([leftover]) == [("delete", "file_system", "gamepulse-dev-old", "delete-data")]
    # Its mount targets go before it, and only with it.
    assert summary(its_mount_targets) == [("delete", "mount_target", "us-east-1a", "delete-data"),
                                          ("delete", "mount_target", "us-east-1b", "delete-data")]
    # Mount targets go in any case (the network cannot be deleted around them); the data needs the flag.
    mount_targets = [("delete", "mount_target", "us-east-1a", None), ("delete", "mount_target", "us-east-1b", None)]
    assert summary(STEP.plan_destroy(facts)) == [
        *mount_targets, ("delete", "file_system", "gamepulse-dev-old", "delete-data"),
        *mount_targets, ("delete", "file_system", FS_NAME, "delete-data")]
    assert "with 2 access point(s); deleting it" in STEP.plan_destroy(facts)[-1].note
    assert "is not the platform's file system any more; with 2 access point(s)" in leftover.note


# -- against moto -------------------------------------------------------------------------------


def build_network() -> dict:
    """The vpc step's outputs, built by hand: VPC, two private subnets, the efs security group."""
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{16 * i}.0/20", AvailabilityZone=zone)
               ["Subnet"]["SubnetId"] for i, zone in enumerate(ZONES)]
    groups = {name: ec2.create_security_group(GroupName=f"gamepulse-dev-{name}", Description=name,
                                              VpcId=vpc)["GroupId"] for name in ("efs", "app")}
    return {"vpc": {"vpc_id": vpc, "zones": ZONES, "private_subnet_ids": subnets, "security_groups": groups}}


@pytest.fixture
def network(mock):
    return build_network()


@pytest.fixture
def efs(mock):
    """A client of our own, so that what the test does is not counted as the step's calls."""
    return boto3.client("efs", region_name="us-east-1")


def our_file_systems(efs) -> list[dict]:
    return [fs for fs in efs.describe_file_systems()["FileSystems"]
            if {"Key": "orchestrator:env", "Value": "dev"} in fs.get("Tags", [])]


def inventory(efs) -> tuple[int, int, int]:
    """(file systems, mount targets, access points) of ours."""
    systems = our_file_systems(efs)
    mount_targets = sum(len(efs.describe_mount_targets(FileSystemId=fs["FileSystemId"])["MountTargets"])
                        for fs in systems)
    access_points = sum(len(efs.describe_access_points(FileSystemId=fs["FileSystemId"])["AccessPoints"])
                        for fs in systems)
    return len(systems), mount_targets, access_points


def test_apply_creates_everything_then_changes_nothing(manifest, aws, efs, network):
    applied, outputs, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    assert len(applied) == 6
    (fs,) = our_file_systems(efs)
    assert fs["Encrypted"] and fs["Name"] == FS_NAME and fs["PerformanceMode"] == "generalPurpose"
    tags = {t["Key"]: t["Value"] for t in fs["Tags"]}
    assert tags["orchestrator:step"] == "efs" and tags["cost-center"] == "games"
    assert efs.describe_lifecycle_configuration(FileSystemId=fs["FileSystemId"])["LifecyclePolicies"] == [
        {"TransitionToIA": "AFTER_30_DAYS"}]
    mount_targets = efs.describe_mount_targets(FileSystemId=fs["FileSystemId"])["MountTargets"]
    assert sorted(mt["SubnetId"] for mt in mount_targets) == sorted(network["vpc"]["private_subnet_ids"])
    for mt in mount_targets:
        assert efs.describe_mount_target_security_groups(MountTargetId=mt["MountTargetId"])["SecurityGroups"] == [
            network["vpc"]["security_groups"]["efs"]]
    points = {ap["Name"]: ap for ap in efs.describe_access_points(FileSystemId=fs["FileSystemId"])["AccessPoints"]}
    prometheus = points["gamepulse-dev-prometheus"]
    assert prometheus["PosixUser"] == {"Uid": 65534, "Gid": 65534}
    assert prometheus["RootDirectory"] == {"Path": "/prometheus", "CreationInfo": {
        "OwnerUid": 65534, "OwnerGid": 65534, "Permissions": "0755"}}
    assert {"Key": "orchestrator:app", "Value": "gamepulse"} in prometheus["Tags"]
    assert outputs == {"file_system_id": fs["FileSystemId"], "file_system_arn": fs["FileSystemArn"],
                       "access_points": {name: points[f"gamepulse-dev-{name}"]["AccessPointId"]
                                         for name in ("grafana", "prometheus")},
                       "access_point_arns": {name: points[f"gamepulse-dev-{name}"]["AccessPointArn"]
                                             for name in ("grafana", "prometheus")}}
    assert len(harness.mutations(aws)) == 6

    before = len(aws.ledger.calls)
    applied, again, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    assert applied == [] and again == outputs
    assert len(harness.mutations(aws)) == 6
    reads = [f"{c.service}:{c.operation}" for c in harness.calls_since(aws, before, STEP.name)]
    assert sorted(reads) == ["efs:DescribeAccessPoints", "efs:DescribeFileSystems",
                             "efs:DescribeLifecycleConfiguration", "efs:DescribeMountTargetSecurityGroups",
                             "efs:DescribeMountTargetSecurityGroups", "efs:DescribeMountTargets",
                             "resource-groups-tagging-api:GetResources"]  # left-over file systems, by tag


def test_drift_is_shown_by_plan_then_repaired(manifest, aws, efs, network):
    _, outputs, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    fs_id = outputs["file_system_id"]
    mt = efs.describe_mount_targets(FileSystemId=fs_id)["MountTargets"][0]
    efs.modify_mount_target_security_groups(MountTargetId=mt["MountTargetId"],
                                            SecurityGroups=[network["vpc"]["security_groups"]["app"]])
    efs.put_lifecycle_configuration(FileSystemId=fs_id, LifecyclePolicies=[])
    efs.delete_access_point(AccessPointId=outputs["access_points"]["grafana"])

    planned = harness.plan_step(STEP, manifest, aws, upstream=network)
    assert [(c.action, c.kind, c.name) for c in planned] == [
        ("update", "lifecycle", FS_NAME), ("update", "mount_target", mt["AvailabilityZoneName"]),
        ("create", "access_point", "grafana")]

    harness.run_step(STEP, manifest, aws, upstream=network)
    assert efs.describe_mount_target_security_groups(MountTargetId=mt["MountTargetId"])["SecurityGroups"] == [
        network["vpc"]["security_groups"]["efs"]]
    assert harness.plan_step(STEP, manifest, aws, upstream=network) == []
    assert inventory(efs) == (1, 2, 2)


def test_changed_access_point_is_replaced(manifest, aws, efs, network):
    _, before, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    points = dict(manifest.efs.access_points)
    points["grafana"] = AccessPointSpec(path="/grafana-data", uid=472, gid=0, permissions="0750")
    changed = with_efs(manifest, access_points=points)
    planned = harness.plan_step(STEP, changed, aws, upstream=network)
    assert [(c.action, c.name, c.retire) for c in planned] == [("replace", "grafana", False),
                                                               ("delete", "grafana", True)]

    _, after, _ = harness.run_step(STEP, changed, aws, upstream=network)
    assert after["access_points"]["grafana"] != before["access_points"]["grafana"]
    assert after["access_points"]["prometheus"] == before["access_points"]["prometheus"]
    grafana = efs.describe_access_points(AccessPointId=after["access_points"]["grafana"])["AccessPoints"][0]
    assert grafana["RootDirectory"]["Path"] == "/grafana-data" and grafana["PosixUser"]["Gid"] == 0
    assert inventory(efs) == (1, 2, 2)


def inject(client, operation: str, answer, calls: list) -> None:
    """moto gap (MOTO-NOTES: EFS): the operation is not implemented; answer it before moto does.
    Returning (response, parsed) from before-call short-circuits the request. `calls` gets
    (operation, URL path, JSON body) of each call; `answer(body)` gives the parsed response."""
    def answer_call(params, **kwargs):
        body = json.loads(params["body"] or b"{}")
        calls.append((operation, params["url_path"], body))
        return AWSResponse("https://efs.test", 200, {}, None), answer(body)

    client.meta.events.register(f"before-call.efs.{operation}", answer_call)


def test_backups_are_enabled_once_when_asked(manifest, aws, efs, network):
    def backup_calls() -> list[str]:
        return [c.operation for c in aws.ledger.calls if "BackupPolicy" in c.operation]

    staging_like = with_efs(manifest, backups=True)
    recorded: dict = {}
    _, outputs, _ = harness.run_step(STEP, staging_like, aws, upstream=network, recorded=recorded)
    fs_id = outputs["file_system_id"]
    assert backup_calls() == ["PutBackupPolicy"]
    assert efs.describe_backup_policy(FileSystemId=fs_id)["BackupPolicy"] == {"Status": "ENABLED"}
    assert recorded[f"backup_policy/{FS_NAME}"] == {"enabled": True}

    assert harness.run_step(STEP, staging_like, aws, upstream=network, recorded=recorded)[0] == []
    assert backup_calls() == ["PutBackupPolicy", "DescribeBackupPolicy"]

    harness.run_step(STEP, manifest, aws, upstream=network, recorded=recorded)  # backups turned off
    assert efs.describe_backup_policy(FileSystemId=fs_id)["BackupPolicy"] == {"Status": "DISABLED"}
    assert recorded[f"backup_policy/{FS_NAME}"] == {"enabled": False}
    before = len(backup_calls())
    assert harness.run_step(STEP, manifest, aws, upstream=network, recorded=recorded)[0] == []
    assert len(backup_calls()) == before  # off, and recorded off: the backup API is not called at all


def test_throughput_mode_change_is_applied_in_place(manifest, aws, efs, network):
    _, outputs, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    calls: list = []
    inject(aws.client("efs"), "UpdateFileSystem", lambda body: {"ThroughputMode": "elastic"}, calls)
    applied, _, _ = harness.run_step(STEP, with_efs(manifest, throughput_mode="elastic"), aws, upstream=network)
    assert [(c.action, c.kind) for c in applied] == [("update", "file_system")]
    assert calls == [("UpdateFileSystem", f"/2015-02-01/file-systems/{outputs['file_system_id']}",
                      {"ThroughputMode": "elastic"})]


def replace_text(changes) -> str:
    from orchestrator.render import change_lines
    return "\n".join(line for change in changes for line in change_lines(change))


def test_a_performance_mode_change_replaces_the_file_system_delete_first_with_the_flag(manifest, aws, efs, network):
    _, before, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    changed = with_efs(manifest, performance_mode="maxIO")
    text = replace_text(harness.plan_step(STEP, changed, aws, upstream=network))
    assert f"- delete file_system {FS_NAME}   [LOSES DATA: allowed by --delete-data]" in text
    assert f"-/+ replace file_system {FS_NAME}   [LOSES DATA: allowed by --delete-data]" in text
    assert "OUTAGE: deleted before it is created again: its creation token is the new one's" in text
    assert "performance_mode: generalPurpose → maxIO" in text

    applied, _, _ = harness.run_step(STEP, changed, aws, upstream=network)  # without the flag: nothing
    assert applied == [] and inventory(efs) == (1, 2, 2)
    assert our_file_systems(efs)[0]["FileSystemId"] == before["file_system_id"]

    _, after, _ = harness.run_step(STEP, changed, aws, upstream=network, allow=("delete-data",))
    (fs,) = our_file_systems(efs)
    assert fs["FileSystemId"] == after["file_system_id"] != before["file_system_id"]
    assert fs["PerformanceMode"] == "maxIO" and inventory(efs) == (1, 2, 2)
    assert harness.plan_step(STEP, changed, aws, upstream=network) == []


def test_a_killed_replace_of_the_file_system_converges_on_the_next_apply(manifest, aws, efs, network):
    harness.run_step(STEP, manifest, aws, upstream=network)
    changed = with_efs(manifest, performance_mode="maxIO")
    harness.crash_after(aws, operation=("efs", "DeleteFileSystem"))  # the old one gone, the new one not made
    with pytest.raises(harness.Crash):
        harness.run_step(STEP, changed, aws, upstream=network, allow=("delete-data",))
    assert inventory(efs) == (0, 0, 0)

    rerun = harness.forget_crash(aws)
    harness.run_step(STEP, changed, rerun, upstream=network, allow=("delete-data",))
    assert [fs["PerformanceMode"] for fs in our_file_systems(efs)] == ["maxIO"] and inventory(efs) == (1, 2, 2)
    assert harness.plan_step(STEP, changed, rerun, upstream=network) == []


def moved_subnet(network: dict) -> dict:
    """The network with the second zone's private subnet replaced by another in the same zone."""
    ec2 = boto3.client("ec2", region_name="us-east-1")
    subnet = ec2.create_subnet(VpcId=network["vpc"]["vpc_id"], CidrBlock="10.20.64.0/20",
                               AvailabilityZone=ZONES[1])["Subnet"]["SubnetId"]
    return {"vpc": {**network["vpc"], "private_subnet_ids": [network["vpc"]["private_subnet_ids"][0], subnet]}}


def test_a_mount_target_whose_subnet_changed_is_replaced_delete_first(manifest, aws, efs, network):
    _, outputs, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    moved = moved_subnet(network)
    text = replace_text(harness.plan_step(STEP, manifest, aws, upstream=moved))
    assert "- delete mount_target us-east-1b" in text and "-/+ replace mount_target us-east-1b" in text
    assert "OUTAGE: deleted before it is created again: a zone holds one mount target" in text

    harness.run_step(STEP, manifest, aws, upstream=moved)
    mount_targets = efs.describe_mount_targets(FileSystemId=outputs["file_system_id"])["MountTargets"]
    assert sorted((mt["AvailabilityZoneName"], mt["SubnetId"]) for mt in mount_targets) == list(
        zip(ZONES, moved["vpc"]["private_subnet_ids"]))
    assert harness.plan_step(STEP, manifest, aws, upstream=moved) == []


def test_a_killed_replace_of_a_mount_target_converges_on_the_next_apply(manifest, aws, efs, network):
    _, outputs, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    moved = moved_subnet(network)
    harness.crash_after(aws, operation=("efs", "DeleteMountTarget"))  # the old one gone, the new one not made
    with pytest.raises(harness.Crash):
        harness.run_step(STEP, manifest, aws, upstream=moved)
    assert inventory(efs) == (1, 1, 2)

    rerun = harness.forget_crash(aws)
    harness.run_step(STEP, manifest, rerun, upstream=moved)
    mount_targets = efs.describe_mount_targets(FileSystemId=outputs["file_system_id"])["MountTargets"]
    assert sorted(mt["SubnetId"] for mt in mount_targets) == sorted(moved["vpc"]["private_subnet_ids"])
    assert harness.plan_step(STEP, manifest, rerun, upstream=moved) == []


def test_destroy_keeps_the_file_system_and_strangers_unless_told(manifest, aws, efs, network):
    harness.run_step(STEP, manifest, aws, upstream=network)
    stranger = efs.create_file_system(CreationToken="hand-made", Tags=[{"Key": "Name", "Value": FS_NAME}])

    applied, _, _ = harness.run_step(STEP, manifest, aws, upstream=network, destroy=True)
    # The mount targets go so the network can be deleted; the file system and its access points stay.
    assert [(c.action, c.kind) for c in applied] == [("delete", "mount_target")] * 2
    assert inventory(efs) == (1, 0, 2)

    applied, _, _ = harness.run_step(STEP, manifest, aws, upstream=network, destroy=True, allow=("delete-data",))
    assert [(c.action, c.kind) for c in applied] == [("delete", "file_system")]
    assert inventory(efs) == (0, 0, 0)
    assert [fs["FileSystemId"] for fs in efs.describe_file_systems()["FileSystems"]] == [stranger["FileSystemId"]]


def test_file_system_stripped_of_its_tags_is_found_by_its_token_and_retagged(manifest, aws, efs, network):
    _, outputs, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    fs_id = outputs["file_system_id"]
    efs.untag_resource(ResourceId=fs_id, TagKeys=["orchestrator:app", "orchestrator:env", "orchestrator:step"])

    (change,) = harness.plan_step(STEP, manifest, aws, upstream=network)
    assert (change.action, change.kind, change.calls) == ("update", "file_system", ("efs:TagResource",))
    _, again, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    assert again["file_system_id"] == fs_id
    assert len(efs.describe_file_systems()["FileSystems"]) == 1
    assert {"Key": "orchestrator:env", "Value": "dev"} in efs.describe_file_systems()["FileSystems"][0]["Tags"]


def test_a_crash_after_any_call_converges_on_rerun(manifest, efs):
    from moto.moto_api._internal.models import moto_api_backend
    from orchestrator.aws import Aws

    # One crashing and one fresh Aws for all rounds (building clients dominates the time): a
    # crash hook fires once, at its own count, and is inert afterwards.
    crashing = Aws("us-east-1")
    rerun = harness.forget_crash(crashing)
    network: dict = {}

    def reset():
        moto_api_backend.reset()
        network.clear()
        network.update(build_network())

    for n in harness.kill_points(crashing, reset=reset,
                                 run=lambda aws: harness.run_step(STEP, manifest, aws, upstream=network)):
        _, outputs, _ = harness.run_step(STEP, manifest, rerun, upstream=network)
        assert inventory(efs) == (1, 2, 2), f"after a crash at call {n}"
        assert KNOWN_AFTER_APPLY not in str(outputs), f"after a crash at call {n}"
        assert harness.plan_step(STEP, manifest, rerun, upstream=network) == [], f"after a crash at call {n}"
    assert n == 6, "6 mutating calls on a cold apply"


def create_as_the_step_would(manifest, aws, efs, network) -> dict:
    """The file system a create that AWS accepted left behind (its answer lost, or the run killed)."""
    from orchestrator.context import StepContext

    token = StepContext(aws=aws, manifest=manifest, step="efs").token("file_system", stable=True)
    return efs.create_file_system(CreationToken=token, Encrypted=True, Tags=[
        {"Key": k, "Value": v} for k, v in STEP.desired(manifest, harness.inputs(STEP, network))
        .file_system.tags.items()])


def test_a_create_whose_answer_was_lost_is_found_by_its_token(manifest, aws, efs, network):
    accepted = create_as_the_step_would(manifest, aws, efs, network)
    hidden = []

    def listing_not_caught_up(params, **kwargs):
        # AWS is eventually consistent: a describe right after a create may not show it yet.
        if not hidden:
            hidden.append(True)
            return AWSResponse("https://efs.test", 200, {}, None), {"FileSystems": []}

    aws.client("efs").meta.events.register("before-call.efs.DescribeFileSystems", listing_not_caught_up)
    _, outputs, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    assert hidden and outputs["file_system_id"] == accepted["FileSystemId"]
    assert inventory(efs) == (1, 2, 2)


def test_tags_others_added_survive_an_apply_and_make_no_plan_change(manifest, aws, efs, network):
    _, outputs, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    fs_id, ap_id = outputs["file_system_id"], outputs["access_points"]["grafana"]
    theirs = {"Key": "cost-allocation", "Value": "team-42"}
    for resource in (fs_id, ap_id):
        efs.tag_resource(ResourceId=resource, Tags=[theirs])
    assert harness.plan_step(STEP, manifest, aws, upstream=network) == []

    efs.untag_resource(ResourceId=fs_id, TagKeys=["project"])  # one of ours: put back, theirs stays
    (change,) = harness.plan_step(STEP, manifest, aws, upstream=network)
    assert (change.kind, change.calls) == ("file_system", ("efs:TagResource",))
    assert [(d.field, d.old, d.new) for d in change.diffs] == [("tags", {"project": None}, {"project": "gamepulse"})]
    harness.run_step(STEP, manifest, aws, upstream=network)
    assert "efs:UntagResource" not in harness.mutations(aws)
    for resource in (fs_id, ap_id):
        assert theirs in efs.list_tags_for_resource(ResourceId=resource)["Tags"]
    assert harness.plan_step(STEP, manifest, aws, upstream=network) == []


def still_creating(aws, operation: str, items: str, describes: int, only: str = "") -> dict:
    """moto gap: everything is `available` at once. The first `describes` answers of `operation`
    show `items` (those with id `only`, or all) as `creating`, as AWS does for a while after a
    create; `left` in the returned dict counts down to 0 when they are available."""
    state = {"left": describes}

    def creating(parsed, **kwargs):
        if state["left"]:
            state["left"] -= 1
            for item in parsed[items]:
                if only in (item.get("MountTargetId"), ""):
                    item["LifeCycleState"] = "creating"

    aws.register(f"after-call.efs.{operation}", creating)
    return state


def refuse_while(aws, state: dict, code: str, *operations: str, only: str = "") -> None:
    """What AWS answers to those operations (on resource `only`, or any) while it is still `creating`."""
    def refuse(model, params, **kwargs):
        if state["left"] and only in params["url_path"]:
            raise ClientError({"Error": {"Code": code, "Message": "still creating"}}, model.name)

    for operation in operations:
        aws.register(f"before-call.efs.{operation}", refuse)


def test_a_mount_target_left_creating_is_waited_for_not_changed(manifest, aws, efs, network):
    _, outputs, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    mt = efs.describe_mount_targets(FileSystemId=outputs["file_system_id"])["MountTargets"][0]
    # Still creating for the observe's listing and the first poll of the wait.
    state = still_creating(aws, "DescribeMountTargets", "MountTargets", 2, only=mt["MountTargetId"])
    refuse_while(aws, state, "IncorrectMountTargetState", "DescribeMountTargetSecurityGroups",
                 only=mt["MountTargetId"])

    mutated = len(harness.mutations(aws))
    applied, _, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    assert [(c.action, c.kind, c.name, c.calls) for c in applied] == [
        ("update", "mount_target", mt["AvailabilityZoneName"], ())]
    assert [(d.field, d.old, d.new) for d in applied[0].diffs] == [("state", "creating", "available")]
    assert state["left"] == 0 and len(harness.mutations(aws)) == mutated
    assert harness.plan_step(STEP, manifest, aws, upstream=network) == []


def test_a_file_system_left_creating_is_waited_for_before_anything_goes_on_it(manifest, aws, efs, network):
    create_as_the_step_would(manifest, aws, efs, network)
    # Still creating for the observe's listing and the first poll of the wait.
    state = still_creating(aws, "DescribeFileSystems", "FileSystems", 2)
    refuse_while(aws, state, "IncorrectFileSystemLifeCycleState",
                 "CreateMountTarget", "CreateAccessPoint", "PutLifecycleConfiguration")

    _, outputs, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    assert state["left"] == 0 and inventory(efs) == (1, 2, 2)
    assert KNOWN_AFTER_APPLY not in str(outputs)
    assert harness.plan_step(STEP, manifest, aws, upstream=network) == []


def still_deleting(aws, operation: str, items: str, old: dict, id_key: str, parent: tuple[str, str],
                   describes: int) -> dict:
    """moto gap: a deleted resource is gone at once; AWS shows it `deleting` for a while. The first
    `describes` answers of `operation` that would show `old` (by its id, or listing its parent
    (query key, value)) show it `deleting`; `left` counts down to 0 when it is gone."""
    state = {"left": describes}
    deleting = {**old, "LifeCycleState": "deleting"}

    def answer(params, **kwargs):
        query = params["query_string"]
        if state["left"] and query.get(id_key) == old[id_key]:
            state["left"] -= 1
            return AWSResponse("https://efs.test", 200, {}, None), {items: [deleting]}
        if state["left"] and query.get(parent[0]) == parent[1]:
            params["context"]["listing"] = True  # moto answers; `add` puts it in the answer

    def add(parsed, context, **kwargs):
        if context.get("listing") and state["left"]:
            state["left"] -= 1
            parsed[items].append(deleting)

    aws.register(f"before-call.efs.{operation}", answer)
    aws.register(f"after-call.efs.{operation}", add)
    return state


def test_a_replace_killed_while_the_old_file_system_is_deleting_waits_until_it_is_gone(manifest, aws, efs, network):
    harness.run_step(STEP, manifest, aws, upstream=network)
    (old,) = our_file_systems(efs)
    changed = with_efs(manifest, performance_mode="maxIO")
    harness.crash_after(aws, operation=("efs", "DeleteFileSystem"))
    with pytest.raises(harness.Crash):
        harness.run_step(STEP, changed, aws, upstream=network, allow=("delete-data",))

    rerun = harness.forget_crash(aws)
    # Deleting for the observe's listing by creation token and the first poll of the wait; its
    # token is the new one's until then.
    state = still_deleting(rerun, "DescribeFileSystems", "FileSystems", old, "FileSystemId",
                           ("CreationToken", old["CreationToken"]), 2)
    refuse_while(rerun, state, "FileSystemAlreadyExists", "CreateFileSystem")
    applied, _, _ = harness.run_step(STEP, changed, rerun, upstream=network, allow=("delete-data",))
    assert [(c.action, c.kind, c.calls) for c in applied[:2]] == [
        ("delete", "file_system", ()), ("create", "file_system", ("efs:CreateFileSystem",))]
    assert [(d.field, d.old, d.new) for d in applied[0].diffs] == [("state", "deleting", "deleted")]
    assert state["left"] == 0 and inventory(efs) == (1, 2, 2)
    assert harness.plan_step(STEP, changed, rerun, upstream=network) == []


def applied_with_second_zone_moved(manifest, aws, efs, network) -> tuple[str, dict, dict]:
    """The step applied; then its file system's id, the mount target of the second zone (to be
    replaced) and the network with that zone's private subnet moved (`moved_subnet`)."""
    _, outputs, _ = harness.run_step(STEP, manifest, aws, upstream=network)
    fs_id = outputs["file_system_id"]
    old = next(mt for mt in efs.describe_mount_targets(FileSystemId=fs_id)["MountTargets"]
               if mt["AvailabilityZoneName"] == ZONES[1])
    return fs_id, old, moved_subnet(network)


def test_a_replace_killed_while_the_old_mount_target_is_deleting_waits_until_it_is_gone(manifest, aws, efs, network):
    fs_id, old, moved = applied_with_second_zone_moved(manifest, aws, efs, network)
    harness.crash_after(aws, operation=("efs", "DeleteMountTarget"))
    with pytest.raises(harness.Crash):
        harness.run_step(STEP, manifest, aws, upstream=moved)

    rerun = harness.forget_crash(aws)
    # Deleting for the observe's listing and the first poll of the wait: a zone holds one.
    state = still_deleting(rerun, "DescribeMountTargets", "MountTargets", old, "MountTargetId", ("FileSystemId", fs_id), 2)
    refuse_while(rerun, state, "MountTargetConflict", "CreateMountTarget")
    applied, _, _ = harness.run_step(STEP, manifest, rerun, upstream=moved)
    assert [(c.action, c.kind, c.name, c.calls) for c in applied] == [
        ("delete", "mount_target", ZONES[1], ()), ("create", "mount_target", ZONES[1], ("efs:CreateMountTarget",))]
    mount_targets = efs.describe_mount_targets(FileSystemId=fs_id)["MountTargets"]
    assert state["left"] == 0 and sorted(mt["SubnetId"] for mt in mount_targets) == sorted(
        moved["vpc"]["private_subnet_ids"])
    assert harness.plan_step(STEP, manifest, rerun, upstream=moved) == []


def test_file_systems_of_others_cost_no_read_and_a_left_over_one_of_ours_is_found_by_its_tags(
        manifest, aws, efs, network):
    harness.run_step(STEP, manifest, aws, upstream=network)
    before = len(aws.ledger.calls)
    harness.run_step(STEP, manifest, aws, upstream=network)
    alone = len(aws.ledger.calls) - before

    def file_system(token: str, env: str) -> str:
        tags = [{"Key": "orchestrator:app", "Value": "gamepulse"}, {"Key": "orchestrator:env", "Value": env},
                {"Key": "orchestrator:step", "Value": "efs"}, {"Key": "Name", "Value": f"gamepulse-{env}-data"}]
        return efs.create_file_system(CreationToken=token, Encrypted=True, Tags=tags)["FileSystemId"]

    for i in range(20):
        file_system(f"other-{i}", ("staging", "prod", "devx")[i % 3])
    before = len(aws.ledger.calls)
    assert harness.run_step(STEP, manifest, aws, upstream=network)[0] == []
    assert len(aws.ledger.calls) - before == alone

    left_over = file_system("an-earlier-token", "dev")
    changes = harness.plan_step(STEP, manifest, aws, upstream=network)
    assert [(c.action, c.kind, c.blocked) for c in changes] == [("delete", "file_system", "delete-data")]
    assert f"file system {left_over} is not the platform's" in changes[0].note


def three_zone_network() -> dict:
    """The vpc step's outputs for three zones (moto's us-east-1 has six)."""
    ec2 = boto3.client("ec2", region_name="us-east-1")
    zones = ["us-east-1a", "us-east-1b", "us-east-1c"]
    vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.30.{16 * i}.0/20", AvailabilityZone=zone)
               ["Subnet"]["SubnetId"] for i, zone in enumerate(zones)]
    group = ec2.create_security_group(GroupName="gamepulse-dev-efs", Description="efs", VpcId=vpc)["GroupId"]
    return {"vpc": {"vpc_id": vpc, "zones": zones, "private_subnet_ids": subnets, "security_groups": {"efs": group}}}


def efs_requests(aws) -> list[str]:
    """The mount target and access point operations the step sends from now on, in order (those
    an injected answer stands in for too: registered before the test's own hooks, which botocore
    calls after this one, the same event being as specific)."""
    sent = []
    for operation in ("CreateMountTarget", "DeleteMountTarget", "DescribeMountTargets", "CreateAccessPoint",
                      "DescribeAccessPoints"):
        aws.register(f"before-call.efs.{operation}", lambda model, **kwargs: sent.append(model.name))
    return sent


def test_mount_targets_and_access_points_are_created_together_not_each_after_the_last_is_available(
        manifest, aws, efs, mock):
    network = three_zone_network()
    sent = efs_requests(aws)
    # As on AWS, each new mount target and access point is `creating` for a while (moto: at once available).
    mount_targets = still_creating(aws, "DescribeMountTargets", "MountTargets", 6)
    access_points = still_creating(aws, "DescribeAccessPoints", "AccessPoints", 4)

    applied, _, _ = harness.run_step(STEP, manifest, aws, upstream=network)

    assert [(c.action, c.kind) for c in applied].count(("create", "mount_target")) == 3
    assert [(c.action, c.kind) for c in applied].count(("create", "access_point")) == 2
    creates = [i for i, op in enumerate(sent) if op in ("CreateMountTarget", "CreateAccessPoint")]
    polls = [i for i, op in enumerate(sent) if op in ("DescribeMountTargets", "DescribeAccessPoints")]
    assert len(creates) == 5 and polls, sent
    assert max(creates) < min(polls), f"a create waited for an earlier one to be available: {sent}"
    assert mount_targets["left"] == access_points["left"] == 0 and inventory(efs) == (1, 3, 2)
    assert harness.plan_step(STEP, manifest, aws, upstream=network) == []


def test_a_replaced_mount_target_is_created_only_once_the_old_one_is_gone(manifest, aws, efs, network):
    fs_id, old, moved = applied_with_second_zone_moved(manifest, aws, efs, network)
    sent = efs_requests(aws)
    # As on AWS, the deleted one is `deleting` for the first two polls, and its zone holds it till then.
    state = still_deleting(aws, "DescribeMountTargets", "MountTargets", old, "MountTargetId", ("FileSystemId", fs_id), 0)
    aws.register("after-call.efs.DeleteMountTarget", lambda **kwargs: state.update(left=2))
    refuse_while(aws, state, "MountTargetConflict", "CreateMountTarget")

    applied, _, _ = harness.run_step(STEP, manifest, aws, upstream=moved)

    assert [(c.action, c.kind, c.name) for c in applied] == [
        ("delete", "mount_target", ZONES[1]), ("replace", "mount_target", ZONES[1])]
    changing = [op for op in sent if op in ("DeleteMountTarget", "DescribeMountTargets", "CreateMountTarget")]
    assert changing[changing.index("DeleteMountTarget"):] == [
        "DeleteMountTarget", "DescribeMountTargets", "DescribeMountTargets", "DescribeMountTargets",
        "CreateMountTarget", "DescribeMountTargets"], "deleted, waited out until gone, then created"
    assert state["left"] == 0
    mount_targets = efs.describe_mount_targets(FileSystemId=fs_id)["MountTargets"]
    assert sorted(mt["SubnetId"] for mt in mount_targets) == sorted(moved["vpc"]["private_subnet_ids"])


def test_a_left_over_file_system_is_deleted_only_once_its_mount_target_left_deleting_is_gone(
        manifest, aws, efs, network):
    harness.run_step(STEP, manifest, aws, upstream=network)
    tags = [{"Key": "orchestrator:app", "Value": "gamepulse"}, {"Key": "orchestrator:env", "Value": "dev"},
            {"Key": "orchestrator:step", "Value": "efs"}]
    left_over = efs.create_file_system(CreationToken="an-earlier-token", Encrypted=True, Tags=tags)["FileSystemId"]
    old = efs.create_mount_target(FileSystemId=left_over, SubnetId=network["vpc"]["private_subnet_ids"][0],
                                  SecurityGroups=[network["vpc"]["security_groups"]["efs"]])
    efs.delete_mount_target(MountTargetId=old["MountTargetId"])  # an interrupted run's last call
    # Deleting for the observe's listing and the first poll of the wait; AWS refuses to delete
    # the file system until it is gone.
    state = still_deleting(aws, "DescribeMountTargets", "MountTargets", old, "MountTargetId",
                           ("FileSystemId", left_over), 2)
    refuse_while(aws, state, "FileSystemInUse", "DeleteFileSystem")

    applied, _, _ = harness.run_step(STEP, manifest, aws, upstream=network, allow=("delete-data",))

    assert [(c.action, c.kind, c.calls) for c in applied] == [
        ("delete", "mount_target", ()), ("delete", "file_system", ("efs:DeleteAccessPoint", "efs:DeleteFileSystem"))]
    assert [(d.field, d.old, d.new) for d in applied[0].diffs] == [("state", "deleting", "deleted")]
    assert state["left"] == 0 and left_over not in [fs["FileSystemId"] for fs in our_file_systems(efs)]
    assert harness.plan_step(STEP, manifest, aws, upstream=network) == []
