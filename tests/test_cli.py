"""End to end: the installed `orchestrator` console script against a moto server subprocess,
used as a platform engineer would use it."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.config import Config

from tests.conftest import FAKE_ENV, MANIFESTS

CLI = str(Path(sys.executable).parent / "orchestrator")


#: The command line's environment in which IAM changes reach ECS at once (tests/iam_at_once).
IAM_AT_ONCE = {"PYTHONPATH": str(Path(__file__).parent / "iam_at_once")}


def run(endpoint, *args, manifests=MANIFESTS, extra_env=None, timeout=180, iam_waits=False):
    """The installed command line, as a user runs it; IAM changes reach ECS at once unless
    `iam_waits` (AWS's propagation time, as the product waits it)."""
    env = {**os.environ, **FAKE_ENV, "AWS_ENDPOINT_URL": endpoint, "ORCHESTRATOR_MANIFESTS": str(manifests),
           **({} if iam_waits else IAM_AT_ONCE), **(extra_env or {})}
    for name in ("CI", "AWS_PROFILE", "ORCHESTRATOR_SANDBOX"):  # the developer's shell: not the tests' account
        env.pop(name, None)
    # No terminal, as in a pipeline: `apply` would otherwise ask first (its stdin is the test's).
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def client(endpoint, service):
    return boto3.client(service, region_name="us-east-1", endpoint_url=endpoint)


def test_validate_names_every_problem_and_calls_no_aws(tmp_path):
    shutil.copy(MANIFESTS / "gamepulse.yaml", tmp_path)
    (tmp_path / "dev.yaml").write_text("network:\n  zones: 1\n  cidr: 10.0.0.0/33\n")
    # A dead endpoint: any AWS call would fail with a connection error instead of the manifest errors.
    for command in (["validate", "dev"], ["apply", "dev"], ["plan", "dev"]):
        result = run("http://127.0.0.1:9", *command, manifests=tmp_path)
        assert result.returncode == 1, result.stderr
        assert "dev.yaml:2: network.zones:" in result.stderr
        assert "dev.yaml:3: network.cidr:" in result.stderr
        assert "Could not connect" not in result.stderr


def test_apply_from_nothing_then_unchanged_apply_makes_no_mutating_call(endpoint, wire):
    first = run(endpoint, "apply", "dev", iam_waits=True)
    assert first.returncode == 0, first.stderr[-3000:]
    # The one run of the command line that sits out IAM's propagation time, as on AWS.
    assert first.stderr.count('wait over  what="IAM changes of this run to reach ECS" status="given time to reach '
                              'ECS"') == 1, first.stderr[-3000:]
    ec2 = client(endpoint, "ec2")
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:orchestrator:env", "Values": ["dev"]}])["Vpcs"]
    assert [v["CidrBlock"] for v in vpcs] == ["10.20.0.0/16"]

    wire.reset()
    second = run(endpoint, "apply", "dev")
    assert second.returncode == 0, second.stderr[-3000:]
    # Counted at the wire: only the lock and the run record are written, nothing of the platform.
    assert wire.count(mutating=True, exclude=("DynamoDB",)) == 0, wire.operations(mutating=True)
    assert wire.count(mutating=True) <= 4, wire.operations(mutating=True)
    assert "API calls:" in second.stdout
    assert " 0 to the platform," in second.stdout, f"an unchanged apply changed infrastructure: {second.stdout}"

    plan = run(endpoint, "plan", "dev", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "No changes" in plan.stdout

    # AWS-side alerting as a user checks it: every alarm notifies the topic; `status --live` shows their states.
    topic = "arn:aws:sns:us-east-1:123456789012:gamepulse-dev-alerts"
    [subscription] = client(endpoint, "sns").list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert subscription["Endpoint"] == "platform-oncall@gamepulse.example"
    cloudwatch = client(endpoint, "cloudwatch")
    alarms = cloudwatch.describe_alarms(AlarmNamePrefix="gamepulse-dev-")["MetricAlarms"]
    assert len(alarms) == 15 and {tuple(a["AlarmActions"]) for a in alarms} == {(topic,)}
    cloudwatch.set_alarm_state(AlarmName="gamepulse-dev-svc-loki-cpu", StateValue="ALARM", StateReason="test")
    live = run(endpoint, "status", "dev", "--live").stdout
    assert [line.split() for line in live.splitlines() if "service loki" in line] == \
        [["service", "loki", "cpu", "ALARM,", "memory", "OK"]], live
    assert "/grafana/" in live

    # No secret value anywhere the user or the state table can see.
    secrets = client(endpoint, "secretsmanager")
    values = [secrets.get_secret_value(SecretId=f"gamepulse/dev/{name}")["SecretString"]
              for name in ("db-connection", "grafana-admin", "slack-webhook")]
    assert values[0] == FAKE_ENV["GAMEPULSE_DEV_DB_CONNECTION"] and len(values[1]) == 32
    status = run(endpoint, "status", "dev", "--json")
    items = client(endpoint, "dynamodb").scan(TableName="gamepulse-orchestrator-state")["Items"]
    seen = "".join([first.stdout, first.stderr, second.stdout, second.stderr, plan.stdout, plan.stderr,
                    status.stdout, run(endpoint, "plan", "dev", "--json").stdout, json.dumps(items)])
    for value in values:
        assert value not in seen


def test_plan_before_apply_lists_creates_and_exits_2_with_detailed_exitcode(endpoint):
    result = run(endpoint, "plan", "dev", "--detailed-exitcode")
    assert result.returncode == 2, result.stderr
    assert "+ create vpc" in result.stdout
    as_json = json.loads(run(endpoint, "plan", "dev", "--json").stdout)
    assert as_json["pending"] > 0
    assert client(endpoint, "ec2").describe_vpcs(
        Filters=[{"Name": "tag:orchestrator:env", "Values": ["dev"]}])["Vpcs"] == [], "plan changed AWS"
    tables = client(endpoint, "dynamodb").list_tables()["TableNames"]
    assert tables == [], "plan must not create the state table"


def start_slow_apply(endpoint, server):
    """`apply dev` through a slow proxy (it takes seconds, long enough to race against), returned
    with the proxy once it holds the lock (seen in the state table), while it works."""
    from tests.wire import CountingProxy
    slow = CountingProxy(server, delay=0.03)
    env = {**os.environ, **FAKE_ENV, "AWS_ENDPOINT_URL": slow.url, "ORCHESTRATOR_MANIFESTS": str(MANIFESTS)}
    env.pop("CI", None)
    # Create the state table first so that runs race for the lock, not for the table.
    assert run(endpoint, "apply", "dev", "--target", "ecr").returncode == 0
    first = subprocess.Popen([CLI, "apply", "dev"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             stdin=subprocess.DEVNULL)
    table = client(endpoint, "dynamodb")
    lock_key = {"pk": {"S": "gamepulse/dev"}, "sk": {"S": "lock"}}
    while "run_id" not in table.get_item(TableName="gamepulse-orchestrator-state", Key=lock_key).get("Item", {}):
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.02)
    return first, slow


def test_two_applies_at_once_one_runs_the_other_exits_3(endpoint, server):
    first, slow = start_slow_apply(endpoint, server)
    second = run(endpoint, "apply", "dev")
    _, first_err = first.communicate(timeout=180)
    assert first.returncode == 0, first_err[-3000:]
    slow.close()
    assert second.returncode == 3, second.stderr
    assert "dev is locked by run" in second.stderr and "command 'apply'" in second.stderr


#: Test-only (a sitecustomize on PYTHONPATH): the process's clocks run five hours fast, as on a
#: machine whose clock is wrong. The product knows nothing of it.
FAST_CLOCK = """
import datetime as _datetime
import time as _time

_SKEW = 5 * 3600
_time_time, _time_time_ns = _time.time, _time.time_ns
_time.time = lambda: _time_time() + _SKEW
_time.time_ns = lambda: _time_time_ns() + _SKEW * 10**9


class _FastDatetime(_datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return super().now(tz) + _datetime.timedelta(seconds=_SKEW)

    @classmethod
    def utcnow(cls):
        return super().utcnow() + _datetime.timedelta(seconds=_SKEW)


_datetime.datetime = _FastDatetime
"""


def test_a_second_apply_whose_clock_is_hours_ahead_exits_3_and_the_first_finishes(endpoint, server, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(FAST_CLOCK)
    fast = {"PYTHONPATH": str(tmp_path)}
    its_time = subprocess.run([sys.executable, "-c", "import time; print(time.time())"], capture_output=True,
                              text=True, env={**os.environ, **fast}, check=True).stdout
    assert float(its_time) > time.time() + 4 * 3600  # the fast clock is in force
    first, slow = start_slow_apply(endpoint, server)

    second = run(endpoint, "apply", "dev", extra_env=fast)

    assert second.returncode == 3, second.stderr[-3000:]
    assert re.search(r"dev is locked by run \w+ .* acquired \d+s ago", second.stderr), second.stderr
    _, first_err = first.communicate(timeout=180)
    assert first.returncode == 0, first_err[-3000:]
    slow.close()
    assert "lock lost" not in first_err


def test_killed_apply_then_new_apply_converges_without_duplicates(endpoint, tmp_path):
    shutil.copy(MANIFESTS / "gamepulse.yaml", tmp_path)
    overlay = yaml.safe_load((MANIFESTS / "dev.yaml").read_text())
    # Long enough that the next run surely starts within the dead run's lease on a busy machine
    # (the lease ends at least two thirds of it after the kill), short enough to wait out.
    overlay.setdefault("state", {})["lock_lease_seconds"] = 20
    (tmp_path / "dev.yaml").write_text(yaml.safe_dump(overlay))
    env = {**os.environ, **FAKE_ENV, "AWS_ENDPOINT_URL": endpoint, "ORCHESTRATOR_MANIFESTS": str(tmp_path)}
    env.pop("CI", None)
    proc = subprocess.Popen([CLI, "apply", "dev"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, stdin=subprocess.DEVNULL)
    # Kill it as soon as it has started creating the network.
    for line in proc.stdout:
        if "+ create" in line and "subnet" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(30)
    locked = run(endpoint, "apply", "dev", manifests=tmp_path)
    assert locked.returncode == 3, "the dead run's lock must hold until its lease ends"
    again = run(endpoint, "apply", "dev", "--lock-timeout", "60", manifests=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    ec2 = client(endpoint, "ec2")
    mine = [{"Name": "tag:orchestrator:env", "Values": ["dev"]}]
    assert len(ec2.describe_vpcs()["Vpcs"]) == 2  # ours and the region's default VPC
    assert len(ec2.describe_vpcs(Filters=mine)["Vpcs"]) == 1
    nats = [n for n in ec2.describe_nat_gateways()["NatGateways"] if n["State"] != "deleted"]
    assert len(nats) == 1
    assert len(ec2.describe_addresses()["Addresses"]) == 1


def test_a_client_killed_while_sending_a_request_holds_up_no_other(server):
    """The emulator serves one request at a time. A request whose body never arrives in full
    (its sender was killed) once held every other client up until its connection timed out,
    and a new apply after a killed one sat out two minutes."""
    host, port = server.rsplit("/", 1)[1].split(":")
    half_sent = socket.create_connection((host, int(port)))
    half_sent.sendall(b"POST / HTTP/1.1\r\nHost: dynamodb.us-east-1.amazonaws.com\r\n"
                      b"X-Amz-Target: DynamoDB_20120810.ListTables\r\nContent-Length: 100\r\n\r\n{")
    time.sleep(0.2)  # a head start for the half-sent request, so that it is served first
    try:
        impatient = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=server,
                                 config=Config(read_timeout=20, retries={"mode": "standard", "max_attempts": 1}))
        assert "TableNames" in impatient.list_tables()
    finally:
        half_sent.close()


@pytest.mark.dev_applied
def test_destroy_leaves_nothing_tagged_but_what_holds_data(endpoint):
    logs = client(endpoint, "logs")
    logs.create_log_stream(logGroupName="/ecs/gamepulse-dev/grafana", logStreamName="grafana/1")
    logs.put_log_events(logGroupName="/ecs/gamepulse-dev/grafana", logStreamName="grafana/1",
                        logEvents=[{"timestamp": int(time.time() * 1000), "message": "started"}])
    result = run(endpoint, "destroy", "dev", "--yes")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "  kept (holds data): repository gamepulse — to delete it too: orchestrator destroy dev --yes " \
           "--delete-data\n" in result.stdout
    assert "  kept (holds data): secret db-connection — to delete it too: orchestrator destroy dev --yes " \
           "--delete-secrets\n" in result.stdout
    assert "kept (holds data): file_system" in result.stdout, "the run summary says kept, never deleted"
    assert "To delete them all: orchestrator destroy dev --yes --delete-data --delete-secrets" in result.stdout
    # Log groups are kept only when they hold logs.
    assert [g["logGroupName"] for g in logs.describe_log_groups(logGroupNamePrefix="/ecs/gamepulse-dev/")[
        "logGroups"]] == ["/ecs/gamepulse-dev/grafana"]
    tagging = client(endpoint, "resourcegroupstaggingapi")
    left = [item["ResourceARN"] for page in tagging.get_paginator("get_resources").paginate(
        TagFilters=[{"Key": "orchestrator:env", "Values": ["dev"]}]) for item in page["ResourceTagMappingList"]]
    ec2, ecs = client(endpoint, "ec2"), client(endpoint, "ecs")
    # Both AWS and moto keep listing a deleted NAT gateway and INACTIVE clusters and services for a while.
    gone_nat = {n["NatGatewayId"] for n in ec2.describe_nat_gateways()["NatGateways"] if n["State"] == "deleted"}
    inactive = {c["clusterArn"] for c in ecs.describe_clusters(clusters=["gamepulse-dev"])["clusters"]
                if c["status"] == "INACTIVE"}
    # A KMS key scheduled for deletion keeps its tags until KMS deletes it, days later.
    kms = client(endpoint, "kms")
    inactive |= {arn for arn in left if ":key/" in arn
                 and kms.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"] == "PendingDeletion"}
    services = [arn for arn in left if ":service/" in arn]
    inactive |= {s["serviceArn"] for s in ecs.describe_services(cluster="gamepulse-dev", services=services)["services"]
                 if s["status"] == "INACTIVE"} if services else set()
    live = [arn for arn in left if arn.rsplit("/", 1)[-1] not in gone_nat and arn not in inactive]
    kinds = sorted({arn.split(":")[2] for arn in live})
    # Kept on purpose without --delete-data / --delete-secrets: secrets, the file system, log groups,
    # and the repository, which holds the images the sandbox seeds.
    assert kinds == ["ecr", "elasticfilesystem", "logs", "secretsmanager"], live
    assert ec2.describe_vpcs(Filters=[{"Name": "tag:orchestrator:env", "Values": ["dev"]}])["Vpcs"] == []
    (fs,) = client(endpoint, "efs").describe_file_systems()["FileSystems"]
    assert client(endpoint, "efs").describe_mount_targets(FileSystemId=fs["FileSystemId"])["MountTargets"] == []

    # What a user sees next: nothing to prune, and nothing already gone listed as left over.
    pruned = run(endpoint, "prune", "dev", "--dry-run")
    assert pruned.returncode == 0, pruned.stderr[-3000:]
    assert "Nothing to prune." in pruned.stdout and "pending" not in pruned.stdout, pruned.stdout
    assert "vpc: not applied: nothing of it to prune" in pruned.stdout
    assert "no step describes" not in pruned.stdout, pruned.stdout

    everything = run(endpoint, "destroy", "dev", "--yes", "--delete-data", "--delete-secrets")
    assert everything.returncode == 0, everything.stderr[-3000:]
    assert client(endpoint, "efs").describe_file_systems()["FileSystems"] == []
    assert client(endpoint, "logs").describe_log_groups(logGroupNamePrefix="/ecs/gamepulse-dev/")["logGroups"] == []


def test_prod_refuses_destroy_before_any_aws_call():
    for command in (["destroy", "prod", "--yes"], ["plan", "prod", "--destroy", "--detailed-exitcode"]):
        result = run("http://127.0.0.1:9", *command)
        assert result.returncode == 1
        assert "prod refuses destroy (protection.refuse_destroy in its manifest)" in result.stderr


def test_status_outputs_graph_unlock_and_schema(endpoint):
    assert run(endpoint, "apply", "dev", "--target", "vpc").returncode == 0
    status = run(endpoint, "status", "dev")
    assert status.returncode == 0 and "vpc" in status.stdout and "not locked" in status.stdout
    outputs = json.loads(run(endpoint, "outputs", "dev", "--json").stdout)
    assert outputs["vpc"]["vpc_id"].startswith("vpc-")
    client(endpoint, "ec2").modify_vpc_attribute(VpcId=outputs["vpc"]["vpc_id"], EnableDnsHostnames={"Value": False})
    live = run(endpoint, "status", "dev", "--live")
    assert "  live: vpc 1 change(s) pending: see `orchestrator plan dev`" in live.stdout, live.stdout + live.stderr
    assert "    not applied: ecr, storage, secrets, efs, ecs, alb, iam, services, dashboards" in live.stdout
    full = run(endpoint, "status", "dev", "--live", "--outputs").stdout
    assert "live: 1 change(s) pending: see `orchestrator plan dev`" in full and "vpc_id: vpc-" in full
    graph = run(endpoint, "graph", "dev", "--format", "dot").stdout
    assert '"vpc" -> "alb";' in graph
    assert run(endpoint, "unlock", "dev", "--force").stdout.strip() == "dev was not locked"
    lock = client(endpoint, "dynamodb").get_item(TableName="gamepulse-orchestrator-state",
                                                 Key={"pk": {"S": "gamepulse/dev"}, "sk": {"S": "lock"}})["Item"]
    # The fence outlives release and unlock, and DynamoDB's TTL (`expires_at`) can never delete it.
    assert lock["fence"] == {"N": "1"} and "expires_at" not in lock and "run_id" not in lock
    schema = json.loads(run(endpoint, "schema").stdout)
    assert "network" in schema["properties"]


def test_unknown_target_is_a_clear_error(endpoint, wire):
    for command in ("apply", "plan"):
        result = run(endpoint, command, "dev", "--target", "nope")
        assert result.returncode == 2
        assert "unknown step(s) in --target: nope" in result.stderr
    assert wire.count() == 0, "targets are checked before any AWS call"


def test_apply_refuses_a_bucket_under_our_name_without_our_tags_and_leaves_it_untouched(endpoint, wire):
    s3 = client(endpoint, "s3")
    name = "gamepulse-dev-config-123456789012"  # made by hand under the name dev wants
    s3.create_bucket(Bucket=name)
    s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": [
        {"ID": "theirs", "Status": "Enabled", "Filter": {"Prefix": "tmp/"}, "Expiration": {"Days": 1}}]})
    wire.reset()

    result = run(endpoint, "apply", "dev")
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert f"bucket {name} exists but does not carry this environment's ownership tags" in output
    assert "to adopt it deliberately, tag it orchestrator:app=gamepulse" in output
    assert not [op for op in wire.operations(mutating=True) if op.startswith("s3:")]
    assert [rule["ID"] for rule in s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]] == ["theirs"]
    with pytest.raises(s3.exceptions.ClientError, match="NoSuchBucketPolicy"):
        s3.get_bucket_policy(Bucket=name)


def dev_manifests(tmp_path, **sections) -> Path:
    """The dev manifests in `tmp_path`, with these sections of dev.yaml merged over (one level)."""
    shutil.copy(MANIFESTS / "gamepulse.yaml", tmp_path)
    overlay = yaml.safe_load((MANIFESTS / "dev.yaml").read_text())
    for section, values in sections.items():
        overlay[section] = {**overlay.get(section, {}), **values}
    (tmp_path / "dev.yaml").write_text(yaml.safe_dump(overlay))
    return tmp_path


def without_saved_plans(tmp_path, env: str) -> Path:
    """The manifests in `tmp_path`, `env` not requiring a saved plan (`apply ENV` runs)."""
    for name in ("gamepulse.yaml", f"{env}.yaml"):
        shutil.copy(MANIFESTS / name, tmp_path)
    overlay = yaml.safe_load((MANIFESTS / f"{env}.yaml").read_text())
    overlay.setdefault("protection", {})["require_saved_plan"] = False
    (tmp_path / f"{env}.yaml").write_text(yaml.safe_dump(overlay))
    return tmp_path


def tagged_dev_arns(endpoint) -> list[str]:
    tagging = client(endpoint, "resourcegroupstaggingapi")
    return [item["ResourceARN"] for item in tagging.get_resources(
        TagFilters=[{"Key": "orchestrator:env", "Values": ["dev"]}])["ResourceTagMappingList"]]


def test_usage_errors_never_exit_2_with_detailed_exitcode():
    # A dead endpoint: the errors come before any AWS call.
    for mistake in (["--detailed-exitcode", "--no-such-flag"], ["--detailed-exitcode", "--target", "nope"]):
        result = run("http://127.0.0.1:9", "plan", "dev", *mistake)
        assert result.returncode == 1, result.stderr
    assert run("http://127.0.0.1:9", "plan", "dev", "--no-such-flag").returncode == 2


def destroy_events(stderr: str) -> set[tuple[str, str, str, bool]]:
    """(step, kind, name, refused) of each delete a `--log-format json` destroy made or refused."""
    seen = set()
    for line in stderr.splitlines():
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("event") in ("- delete", "refused"):
            seen.add((event["step"], event["kind"], event["name"], event["event"] == "refused"))
    return seen


@pytest.mark.dev_applied  # then deletion protection turned on
def test_plan_destroy_shows_what_destroy_does_and_a_protected_load_balancer_fails_destroy(endpoint, tmp_path):
    manifests = dev_manifests(tmp_path, load_balancer={"deletion_protection": True})
    assert run(endpoint, "apply", "dev", manifests=manifests).returncode == 0

    preview = run(endpoint, "plan", "dev", "--destroy", "--json", "--detailed-exitcode", manifests=manifests)
    assert preview.returncode == 2, preview.stderr[-3000:]
    planned = json.loads(preview.stdout)["steps"]
    assert planned["vpc"]["status"] == "skipped", "the network stays while the load balancer does"
    expected = {(step, c["kind"], c["name"], "refused" in c) for step, body in planned.items() for c in body["changes"]}
    text = run(endpoint, "plan", "dev", "--destroy", manifests=manifests).stdout
    assert "- delete load_balancer gamepulse-dev   [refused: see note]" in text

    destroyed = run(endpoint, "--log-format", "json", "destroy", "dev", "--yes", manifests=manifests)
    assert destroyed.returncode == 1, destroyed.stderr[-3000:]
    assert destroy_events(destroyed.stderr) == expected
    assert "--delete-protected" not in destroyed.stdout + destroyed.stderr
    error = json.loads(destroyed.stderr.strip().splitlines()[-1])["error"]
    assert ("alb: rule http-10, listener http, load_balancer gamepulse-dev, target_group gamepulse-dev-gamepulse-"
            in error)
    assert ": load balancer gamepulse-dev has deletion protection on: set load_balancer.deletion_protection to false"\
        in error
    assert "destroy dev: incomplete" in destroyed.stdout
    assert "vpc: what it still owns (kept: alb keeps resources that use it)" in error
    assert error.endswith("run `orchestrator apply dev --target alb`, then run `orchestrator destroy dev --yes`")
    assert "Kept " in destroyed.stdout and "— to delete it too: orchestrator destroy dev --yes --delete-data" \
        in destroyed.stdout

    unprotected = dev_manifests(tmp_path, load_balancer={"deletion_protection": False})
    assert run(endpoint, "apply", "dev", "--target", "alb", manifests=unprotected).returncode == 0
    again = run(endpoint, "destroy", "dev", "--yes", manifests=unprotected)
    assert again.returncode == 0, again.stderr[-3000:]


def test_destroy_works_after_switching_nat_mode(endpoint, tmp_path):
    assert run(endpoint, "apply", "dev", "--target", "vpc").returncode == 0
    per_zone = dev_manifests(tmp_path, network={"nat_gateways": "per_zone"})
    switched = run(endpoint, "apply", "dev", "--target", "vpc", manifests=per_zone)
    assert switched.returncode == 0, switched.stderr[-3000:]
    destroyed = run(endpoint, "destroy", "dev", "--yes", manifests=per_zone)
    assert destroyed.returncode == 0, destroyed.stderr[-3000:]
    ec2 = client(endpoint, "ec2")
    assert ec2.describe_vpcs(Filters=[{"Name": "tag:orchestrator:env", "Values": ["dev"]}])["Vpcs"] == []


@pytest.mark.dev_applied
def test_prune_lists_then_removes_what_the_manifest_no_longer_describes(endpoint):
    ours = {"orchestrator:app": "gamepulse", "orchestrator:env": "dev"}
    # Left behind: a log group of a family dropped from the manifest (a step knows the kind), and
    # a log group no step knows of.
    logs = client(endpoint, "logs")
    logs.create_log_group(logGroupName="/ecs/gamepulse-dev/old-family", tags={**ours, "orchestrator:step": "ecs"})
    logs.create_log_group(logGroupName="/gamepulse/dev/by-a-crashed-tool", tags=ours)

    listed = run(endpoint, "prune", "dev", "--dry-run")
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "- delete log_group /ecs/gamepulse-dev/old-family" in listed.stdout
    assert "Plan: 0 to create, 0 to update, 0 to replace, 1 to delete." in listed.stdout
    assert "1 resource(s) carry dev's ownership tags but no step describes them" in listed.stdout
    assert "log-group:/gamepulse/dev/by-a-crashed-tool" in listed.stdout
    groups = lambda: sorted(g["logGroupName"] for g in logs.describe_log_groups()["logGroups"])  # noqa: E731
    assert "/ecs/gamepulse-dev/old-family" in groups(), "--dry-run removed something"

    pruned = run(endpoint, "prune", "dev")
    assert pruned.returncode == 0, pruned.stderr[-3000:]
    assert "/ecs/gamepulse-dev/old-family" not in groups()
    assert "/gamepulse/dev/by-a-crashed-tool" in groups(), "what no step describes is only listed"
    assert json.loads(run(endpoint, "status", "dev", "--json").stdout)["steps"]["ecs"]["status"] == "ok"
    again = run(endpoint, "prune", "dev", "--dry-run")
    assert "Nothing to prune." in again.stdout


def test_a_missing_certificate_and_secret_source_stop_apply_before_any_change(endpoint, wire, tmp_path):
    # staging names its certificate by a domain this account holds none for; its database source is unset.
    assert run(endpoint, "apply", "dev", "--target", "ecr").returncode == 0  # the shared state table exists
    unset = {"GAMEPULSE_STAGING_DB_CONNECTION": ""}
    planned = run(endpoint, "plan", "staging", "--detailed-exitcode", extra_env=unset)
    assert planned.returncode == 1, planned.stdout + planned.stderr
    assert "alb: PROBLEM: no ISSUED certificate for staging.gamepulse.example.com (load_balancer.certificate.domain) " \
           "in ACM in us-east-1" in planned.stdout
    error = planned.stderr[planned.stderr.index("Error: "):]
    assert error.startswith("Error: 2 problem(s) found (apply would stop before any change):"), error
    assert "alb: no ISSUED certificate for staging.gamepulse.example.com" in error
    assert "secrets: secret gamepulse/staging/db-connection: environment variable GAMEPULSE_STAGING_DB_CONNECTION " \
           "is not set or empty" in error

    wire.reset()
    applied = run(endpoint, "apply", "staging", extra_env=unset, manifests=without_saved_plans(tmp_path, "staging"))
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert "apply stopped before any change: 2 problem(s) found first:" in applied.stderr
    assert "alb: no ISSUED certificate for staging.gamepulse.example.com" in applied.stderr
    assert "secrets: secret gamepulse/staging/db-connection: environment variable " \
           "GAMEPULSE_STAGING_DB_CONNECTION is not set or empty" in applied.stderr
    assert wire.count(mutating=True, exclude=("DynamoDB",)) == 0, wire.operations(mutating=True)
    assert wire.operations(mutating=True)["DynamoDB:UpdateTable"] == 0, "staging asks for deletion protection: not yet"
    table = client(endpoint, "dynamodb").describe_table(TableName="gamepulse-orchestrator-state")["Table"]
    assert table["DeletionProtectionEnabled"] is False
    (last,) = json.loads(run(endpoint, "status", "staging", "--json").stdout)["runs"]
    assert last["result"] == "failed"


def test_a_run_against_another_account_is_refused_before_any_change_naming_both(endpoint, wire, tmp_path):
    manifests = dev_manifests(tmp_path)
    overlay = (tmp_path / "dev.yaml").read_text().replace("account_id: '123456789012'", "account_id: '210987654321'")
    (tmp_path / "dev.yaml").write_text(overlay)
    for command in (["apply", "dev"], ["plan", "dev"], ["destroy", "dev", "--yes"]):
        refused = run(endpoint, *command, manifests=manifests)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "the credentials are for account 123456789012, but the dev manifest is for account 210987654321; " \
               "nothing was changed" in refused.stderr
    assert wire.count(mutating=True) == 0, wire.operations(mutating=True)


def test_image_tag_and_redeploy_usage_errors_exit_2_and_1_under_detailed_exitcode(endpoint, wire):
    for flags in (["--image-tag", "api=1.4.2"], ["--image-tag", "gamepulse:1.4.2"], ["--redeploy", "api"]):
        for command in (["apply", "dev"], ["plan", "dev"]):
            usage = run(endpoint, *command, *flags)
            assert usage.returncode == 2, (flags, command, usage.stderr)
        pipeline = run(endpoint, "plan", "dev", "--detailed-exitcode", *flags)
        assert pipeline.returncode == 1, (flags, pipeline.stderr)
    named = run(endpoint, "plan", "dev", "--image-tag", "api=1.4.2")
    assert "--image-tag api=1.4.2: 'api' is not one of images.repositories (gamepulse)" in named.stderr
    assert "--redeploy api: 'api' is not one of services.tasks" in run(endpoint, "plan", "dev", "--redeploy",
                                                                       "api").stderr
    assert wire.count() == 0, "a usage error is found before any AWS call"


def deployments(endpoint) -> dict[str, list[str]]:
    """Each dev service's deployment ids: a new one is a rollout (tasks started anew)."""
    names = ["gamepulse", "prometheus", "loki", "jaeger", "grafana"]
    return {service["serviceName"]: [d["id"] for d in service["deployments"]] for service in
            client(endpoint, "ecs").describe_services(cluster="gamepulse-dev", services=names)["services"]}


def rolled(before: dict, after: dict) -> set[str]:
    return {name for name in after if after[name] != before[name]}


@pytest.mark.dev_applied
def test_a_secret_with_a_new_value_rolls_exactly_the_services_that_read_it(endpoint):
    secrets = client(endpoint, "secretsmanager")

    # Rotated outside the tool (a rotation, a hand edit): only Grafana reads the admin password.
    secrets.put_secret_value(SecretId="gamepulse/dev/grafana-admin", SecretString="rotated-by-hand-0123456789")
    planned = run(endpoint, "plan", "dev", "--detailed-exitcode")
    assert planned.returncode == 2, planned.stdout + planned.stderr
    assert "Plan: 0 to create, 1 to update, 0 to replace, 0 to delete." in planned.stdout
    assert "~ update service grafana" in planned.stdout and "secret:grafana-admin: " in planned.stdout
    assert "new deployment: secret grafana-admin has a new value since the last rollout (ECS reads secrets only " \
           "when a task starts)" in planned.stdout
    before = deployments(endpoint)
    applied = run(endpoint, "apply", "dev")
    assert applied.returncode == 0, applied.stderr[-3000:]
    assert rolled(before, deployments(endpoint)) == {"grafana"}
    assert run(endpoint, "plan", "dev", "--detailed-exitcode").returncode == 0

    # A new value in its source: written, and the app (its only reader) rolls once it is.
    new_value = "Host=db.dev.local;Database=gamepulse;Username=demo;Password=rotated-9876"
    changed = {"GAMEPULSE_DEV_DB_CONNECTION": new_value}
    planned = run(endpoint, "plan", "dev", extra_env=changed)
    assert "~ update secret db-connection" in planned.stdout and "~ update service gamepulse" in planned.stdout
    assert "secret:db-connection: " in planned.stdout and "→ (known after apply)" in planned.stdout
    before = deployments(endpoint)
    applied = run(endpoint, "apply", "dev", extra_env=changed)
    assert applied.returncode == 0, applied.stderr[-3000:]
    assert rolled(before, deployments(endpoint)) == {"gamepulse"}
    assert run(endpoint, "plan", "dev", "--detailed-exitcode", extra_env=changed).returncode == 0
    for output in (planned.stdout + planned.stderr, applied.stdout + applied.stderr):
        assert new_value not in output and "rotated-by-hand" not in output

    # An image-only pipeline without the secrets' variables: the plan says the values are kept.
    unset = {"GAMEPULSE_DEV_DB_CONNECTION": "", "GAMEPULSE_DEV_SLACK_WEBHOOK": ""}
    planned = run(endpoint, "plan", "dev", "--detailed-exitcode", extra_env=unset)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "secrets: note: secret gamepulse/dev/slack-webhook: environment variable GAMEPULSE_DEV_SLACK_WEBHOOK " \
           "is not set; its current value is kept (the tasks keep reading it)" in planned.stdout
    assert "secrets: note: secret gamepulse/dev/db-connection:" in planned.stdout
    assert run(endpoint, "apply", "dev", extra_env=unset).returncode == 0
    assert secrets.get_secret_value(SecretId="gamepulse/dev/db-connection")["SecretString"] == new_value


@pytest.mark.dev_applied
def test_redeploy_forces_a_new_deployment_shown_in_plan(endpoint):
    planned = run(endpoint, "plan", "dev", "--redeploy", "loki", "--detailed-exitcode")
    assert planned.returncode == 2, planned.stdout + planned.stderr
    assert "~ update service loki" in planned.stdout and "note: new deployment: --redeploy" in planned.stdout
    before = deployments(endpoint)
    applied = run(endpoint, "apply", "dev", "--redeploy", "loki")
    assert applied.returncode == 0, applied.stderr[-3000:]
    assert rolled(before, deployments(endpoint)) == {"loki"}
    status = run(endpoint, "status", "dev")
    lines = status.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("started (UTC)"))
    header, last = lines[at], lines[at + 1]
    assert header.split() == ["started", "(UTC)", "by", "command", "result", "took", "run"]
    assert "apply --redeploy loki" in last and f"@{socket.gethostname()}" in last
    assert header.index("command") == last.index("apply --redeploy loki"), "the columns line up"
    assert run(endpoint, "plan", "dev", "--detailed-exitcode").returncode == 0


@pytest.mark.dev_applied
def test_a_pipeline_deploys_another_image_tag_without_editing_files(endpoint):
    deployed = run(endpoint, "apply", "dev", "--image-tag", "gamepulse=1.4.2")
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    ecs = client(endpoint, "ecs")
    [service] = ecs.describe_services(cluster="gamepulse-dev", services=["gamepulse"])["services"]
    assert service["taskDefinition"].endswith("gamepulse-dev-gamepulse:2")
    image = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"][
        "containerDefinitions"][-1]["image"]
    digest = client(endpoint, "ecr").describe_images(repositoryName="gamepulse", imageIds=[{"imageTag": "1.4.2"}])[
        "imageDetails"][0]["imageDigest"]
    assert image.endswith(f"/gamepulse@{digest}")
    status = run(endpoint, "status", "dev", "--json", "--live")
    document = json.loads(status.stdout)
    assert document["runs"][0]["command"] == "apply --image-tag gamepulse=1.4.2"
    assert document["live"]["services"]["services"]["gamepulse"]["revision"] == "gamepulse-dev-gamepulse:2"
    live = run(endpoint, "status", "dev", "--live").stdout
    assert "gamepulse    2/2 running, 0 pending, rollout COMPLETED, revision gamepulse-dev-gamepulse:2" in live

    missing = run(endpoint, "apply", "dev", "--image-tag", "gamepulse=9.9.9")
    assert missing.returncode == 1
    assert "image tag '9.9.9' does not exist in ECR repository 'gamepulse' (its tags: 1.4.2, 1.4.1)" in missing.stderr
    assert run(endpoint, "apply", "dev", "--image-tag", "nope=1.0.0").returncode == 2  # a usage error
