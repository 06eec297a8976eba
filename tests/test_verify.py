"""`orchestrator verify` against the sandbox (a moto server, dev applied once) and a local fake of
what sits behind the load balancer (tests/fake_observability.py). moto runs no tasks, so the
fixture registers the targets ECS would (moto gap: no tasks, so no targets), and `--url` points
verify at the fake (moto's load balancer DNS name resolves nowhere)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import FAKE_ENV, MANIFESTS
from tests.fake_observability import FakePlatform
from tests.test_cli import dev_manifests, run


def client(endpoint: str, service: str):
    """A client of the moto server; session fixtures run before the per-test fake credentials."""
    import boto3
    return boto3.client(service, region_name="us-east-1", endpoint_url=endpoint,
                        aws_access_key_id=FAKE_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=FAKE_ENV["AWS_SECRET_ACCESS_KEY"])


def register_targets(endpoint: str) -> None:
    """What ECS does for each running task of a service with a load balancer (moto gap)."""
    elb = client(endpoint, "elbv2")
    for group in elb.describe_target_groups()["TargetGroups"]:
        elb.register_targets(TargetGroupArn=group["TargetGroupArn"], Targets=[{"Id": "10.20.1.10", "Port": group["Port"]}])


@pytest.fixture
def manifest():
    from orchestrator.manifest import load_manifest
    return load_manifest(MANIFESTS, "dev")


def verify(endpoint, platform, *args):
    result = run(endpoint, "verify", "dev", "--url", platform.url, "--wait", "0", *args)
    return result


def failed_checks(result) -> dict[str, dict]:
    report = json.loads(result.stdout)
    return {check["name"]: check for check in report["checks"] if check["result"] in ("FAIL", "empty")}


def test_verify_passes_when_every_signal_arrives(applied, manifest):
    platform = FakePlatform(manifest)
    try:
        result = verify(applied, platform)
    finally:
        platform.close()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("load balancer", "service gamepulse", "trace (Jaeger)", "logs (Loki)", "metrics (Prometheus)",
                 "rule High error rate (warning)", "contact point gamepulse-slack", "CloudWatch alarms"):
        assert any(line.startswith(name) and " pass " in line for line in lines), (name, result.stdout)
    assert "checks passed" in lines[-1] and "failed" not in lines[-1]
    assert platform.hits["/api/games/1"] == 1  # one probe request, nothing else sent to the app


@pytest.mark.parametrize("omit, names, evidence", [
    ("trace", {"trace (Jaeger)"}, "gave up waiting"),
    ("loki_label", {"logs (Loki)"}, "recent gamepulse lines carry: service_name, severity_text, traceid"),
    ("metric", {"metrics (Prometheus)"}, "still 0"),
    ("panel", {"panel gamepulse infrastructure (dev) / GC collections by generation"},
     "no data for sum by (gc_heap_generation) (rate(dotnet_gc_collections_total[$__rate_interval]))"),
    ("rule", {"rule High error rate (warning)"}, "health error: Post"),
])
def test_verify_names_the_one_missing_signal_and_exits_1(applied, manifest, omit, names, evidence):
    platform = FakePlatform(manifest, omit=omit)
    try:
        result = verify(applied, platform, "--json")
    finally:
        platform.close()
    assert result.returncode == 1, result.stdout + result.stderr
    failed = failed_checks(result)
    assert set(failed) == names, failed
    (check,) = failed.values()
    assert evidence in check["evidence"], check
    assert check["action"], "a failure says what to do"


def test_verify_waits_for_a_trace_that_arrives_late(applied, manifest):
    platform = FakePlatform(manifest, trace_delay_polls=2)
    try:
        result = run(applied, "verify", "dev", "--url", platform.url, "--wait", "60")
    finally:
        platform.close()
    assert result.returncode == 0, result.stdout
    assert platform.trace_polls == 3  # asked at once, then after each back-off, until Jaeger had it


def test_an_empty_panel_is_listed_with_its_query_and_allowed_with_allow_empty(applied, manifest):
    platform = FakePlatform(manifest, omit="panel")
    try:
        result = verify(applied, platform, "--allow-empty")
    finally:
        platform.close()
    assert result.returncode == 0, result.stdout
    (line,) = [line for line in result.stdout.splitlines() if "GC collections by generation" in line]
    assert " info " in line and "no data for sum by (gc_heap_generation)" in line, line


def test_a_service_without_healthy_targets_fails_verify(applied, manifest):
    elb = client(applied, "elbv2")
    (group,) = [group for group in elb.describe_target_groups()["TargetGroups"]
                if group["TargetGroupName"].startswith("gamepulse-dev-grafana-")]
    elb.deregister_targets(TargetGroupArn=group["TargetGroupArn"], Targets=[{"Id": "10.20.1.10", "Port": 3000}])
    platform = FakePlatform(manifest)
    try:
        result = verify(applied, platform, "--json")
    finally:
        platform.close()
        register_targets(applied)
    assert result.returncode == 1
    failed = failed_checks(result)
    assert set(failed) == {"service grafana"}
    assert "targets none" in failed["service grafana"]["evidence"]


def test_an_alarm_in_alarm_fails_verify_and_names_it(applied, manifest):
    cloudwatch = client(applied, "cloudwatch")
    name = next(alarm["AlarmName"] for alarm in cloudwatch.describe_alarms(AlarmNamePrefix="gamepulse-dev-")["MetricAlarms"]
                if "unhealthy" in alarm["AlarmName"])
    cloudwatch.set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="test")
    platform = FakePlatform(manifest)
    try:
        result = verify(applied, platform, "--json")
    finally:
        platform.close()
        cloudwatch.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="test")
    failed = failed_checks(result)
    assert result.returncode == 1 and set(failed) == {"CloudWatch alarms"}
    assert f"in ALARM: {name}" in failed["CloudWatch alarms"]["evidence"]


def test_verify_never_shows_the_grafana_password(applied, manifest):
    secrets = client(applied, "secretsmanager")
    password = secrets.get_secret_value(SecretId="gamepulse/dev/grafana-admin")["SecretString"]
    platform = FakePlatform(manifest, omit="trace")
    try:
        result = run(applied, "-v", "verify", "dev", "--url", platform.url, "--wait", "0")
    finally:
        platform.close()
    assert password not in result.stdout + result.stderr


def test_verify_before_any_apply_is_a_clear_error(applied, tmp_path):
    manifests = dev_manifests(tmp_path, state={"table": "gamepulse-never-applied"})
    result = run(applied, "verify", "dev", manifests=manifests)
    assert result.returncode == 1
    assert "dev has no state table yet: run `orchestrator apply dev` first" in result.stderr
