"""End to end: the installed `orchestrator` console script against a moto server subprocess,
used as a platform engineer would use it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml

from tests.conftest import FAKE_ENV, MANIFESTS

CLI = str(Path(sys.executable).parent / "orchestrator")


@pytest.fixture(scope="module")
def server():
    """One moto server for the module, with the settings the sandbox uses; reset per test."""
    from orchestrator import sandbox
    port = sandbox.free_port()
    env = {**os.environ, **FAKE_ENV, **sandbox.EMULATOR_SETTINGS}
    process = subprocess.Popen([sys.executable, "-m", "orchestrator.emulator", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not sandbox.is_alive({"url": url}):
        assert time.monotonic() < deadline, "moto server did not start"
        time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def wire(server):
    """Every request the command line sends passes this counting proxy on its way to moto."""
    from tests.wire import CountingProxy
    proxy = CountingProxy(server)
    yield proxy
    proxy.close()


@pytest.fixture
def endpoint(server, wire):
    urllib.request.urlopen(urllib.request.Request(f"{server}/moto-api/reset", method="POST")).read()
    wire.reset()
    return wire.url


def run(endpoint, *args, manifests=MANIFESTS, extra_env=None, timeout=180):
    env = {**os.environ, **FAKE_ENV, "AWS_ENDPOINT_URL": endpoint, "ORCHESTRATOR_MANIFESTS": str(manifests),
           **(extra_env or {})}
    env.pop("CI", None)
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=timeout)


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
    first = run(endpoint, "apply", "dev")
    assert first.returncode == 0, first.stderr[-3000:]
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

    # No secret value anywhere the user or the state table can see.
    secrets = client(endpoint, "secretsmanager")
    values = [secrets.get_secret_value(SecretId=f"gamepulse/dev/{name}")["SecretString"]
              for name in ("db-connection", "grafana-admin", "slack-webhook")]
    assert values[0] == FAKE_ENV["GAMEPULSE_DB_CONNECTION"] and len(values[1]) == 32
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


def test_two_applies_at_once_one_runs_the_other_exits_3(endpoint, server):
    from tests.wire import CountingProxy
    slow = CountingProxy(server, delay=0.03)  # the first run takes seconds, long enough to race against
    env = {**os.environ, **FAKE_ENV, "AWS_ENDPOINT_URL": slow.url, "ORCHESTRATOR_MANIFESTS": str(MANIFESTS)}
    env.pop("CI", None)
    # Create the state table first so both runs race for the lock, not for the table.
    assert run(endpoint, "apply", "dev", "--target", "ecr").returncode == 0
    first = subprocess.Popen([CLI, "apply", "dev"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # The second starts once the first holds the lock (seen in the state table), while it works.
    table = client(endpoint, "dynamodb")
    lock_key = {"pk": {"S": "gamepulse/dev"}, "sk": {"S": "lock"}}
    while "run_id" not in table.get_item(TableName="gamepulse-orchestrator-state", Key=lock_key).get("Item", {}):
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.02)
    second = run(endpoint, "apply", "dev")
    assert first.wait(180) == 0, first.stderr.read()[-3000:]
    slow.close()
    assert second.returncode == 3, second.stderr
    assert "dev is locked by run" in second.stderr and "command 'apply'" in second.stderr


def test_killed_apply_then_new_apply_converges_without_duplicates(endpoint, tmp_path):
    shutil.copy(MANIFESTS / "gamepulse.yaml", tmp_path)
    overlay = yaml.safe_load((MANIFESTS / "dev.yaml").read_text())
    overlay.setdefault("state", {})["lock_lease_seconds"] = 10
    (tmp_path / "dev.yaml").write_text(yaml.safe_dump(overlay))
    env = {**os.environ, **FAKE_ENV, "AWS_ENDPOINT_URL": endpoint, "ORCHESTRATOR_MANIFESTS": str(tmp_path)}
    env.pop("CI", None)
    proc = subprocess.Popen([CLI, "apply", "dev"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
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


def test_destroy_leaves_nothing_tagged_but_what_holds_data(endpoint):
    assert run(endpoint, "apply", "dev").returncode == 0
    result = run(endpoint, "destroy", "dev", "--yes")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kept file-system" in result.stdout and "--delete-data" in result.stdout
    tagging = client(endpoint, "resourcegroupstaggingapi")
    left = [item["ResourceARN"] for page in tagging.get_paginator("get_resources").paginate(
        TagFilters=[{"Key": "orchestrator:env", "Values": ["dev"]}]) for item in page["ResourceTagMappingList"]]
    ec2, ecs = client(endpoint, "ec2"), client(endpoint, "ecs")
    # Both AWS and moto keep listing a deleted NAT gateway and INACTIVE clusters and services for a while.
    gone_nat = {n["NatGatewayId"] for n in ec2.describe_nat_gateways()["NatGateways"] if n["State"] == "deleted"}
    inactive = {c["clusterArn"] for c in ecs.describe_clusters(clusters=["gamepulse-dev"])["clusters"]
                if c["status"] == "INACTIVE"}
    services = [arn for arn in left if ":service/" in arn]
    inactive |= {s["serviceArn"] for s in ecs.describe_services(cluster="gamepulse-dev", services=services)["services"]
                 if s["status"] == "INACTIVE"} if services else set()
    live = [arn for arn in left if arn.rsplit("/", 1)[-1] not in gone_nat and arn not in inactive]
    kinds = sorted({arn.split(":")[2] for arn in live})
    # Kept on purpose without --delete-data / --delete-secrets: secrets, the file system, log groups.
    assert kinds == ["elasticfilesystem", "logs", "secretsmanager"], live
    assert ec2.describe_vpcs(Filters=[{"Name": "tag:orchestrator:env", "Values": ["dev"]}])["Vpcs"] == []
    (fs,) = client(endpoint, "efs").describe_file_systems()["FileSystems"]
    assert client(endpoint, "efs").describe_mount_targets(FileSystemId=fs["FileSystemId"])["MountTargets"] == []

    everything = run(endpoint, "destroy", "dev", "--yes", "--delete-data", "--delete-secrets")
    assert everything.returncode == 0, everything.stderr[-3000:]
    assert client(endpoint, "efs").describe_file_systems()["FileSystems"] == []
    assert client(endpoint, "logs").describe_log_groups(logGroupNamePrefix="/ecs/gamepulse-dev/")["logGroups"] == []


def test_prod_refuses_destroy_before_any_aws_call():
    result = run("http://127.0.0.1:9", "destroy", "prod", "--yes")
    assert result.returncode == 1
    assert "refuses destroy" in result.stderr


def test_status_outputs_graph_unlock_and_schema(endpoint):
    assert run(endpoint, "apply", "dev", "--target", "vpc").returncode == 0
    status = run(endpoint, "status", "dev")
    assert status.returncode == 0 and "vpc" in status.stdout and "not locked" in status.stdout
    outputs = json.loads(run(endpoint, "outputs", "dev", "--json").stdout)
    assert outputs["vpc"]["vpc_id"].startswith("vpc-")
    client(endpoint, "ec2").modify_vpc_attribute(VpcId=outputs["vpc"]["vpc_id"], EnableDnsHostnames={"Value": False})
    live = run(endpoint, "status", "dev", "--live")
    assert "live: 1 change(s) pending: see `orchestrator plan dev`" in live.stdout, live.stdout + live.stderr
    graph = run(endpoint, "graph", "dev", "--format", "dot").stdout
    assert '"vpc" -> "alb";' in graph
    assert run(endpoint, "unlock", "dev", "--force").stdout.strip() == "dev was not locked"
    schema = json.loads(run(endpoint, "schema").stdout)
    assert "network" in schema["properties"]


def test_unknown_target_is_a_clear_error(endpoint):
    result = run(endpoint, "apply", "dev", "--target", "nope")
    assert result.returncode == 2
    assert "unknown step(s) in --target: nope" in result.stderr


def test_a_pipeline_deploys_another_image_tag_without_editing_files(endpoint):
    assert run(endpoint, "apply", "dev").returncode == 0
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
    assert document["services"]["gamepulse"]["revision"] == "gamepulse-dev-gamepulse:2"
    live = run(endpoint, "status", "dev", "--live").stdout
    assert "service gamepulse: 2/2 running, 0 pending, rollout COMPLETED, revision gamepulse-dev-gamepulse:2" in live

    missing = run(endpoint, "apply", "dev", "--image-tag", "gamepulse=9.9.9")
    assert missing.returncode == 1
    assert "image tag '9.9.9' does not exist in ECR repository 'gamepulse' (its tags: 1.4.2, 1.4.1)" in missing.stderr
    assert run(endpoint, "apply", "dev", "--image-tag", "nope=1.0.0").returncode == 1
