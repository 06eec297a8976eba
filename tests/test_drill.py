"""`orchestrator drill`: notify against the sandbox (moto) and the local fake of Grafana;
task-failure with ECS's answers given by a fixture (moto runs no tasks: MOTO-NOTES, ECS
run_task / describe_tasks); every drill refuses prod unless asked."""
from __future__ import annotations

import json
import re

import pytest

from ops.drill import drill
from ops.platform import Deployed
from orchestrator.manifest import load_manifest
from tests.conftest import MANIFESTS
from tests.fake_observability import FakePlatform
from tests.test_cli import run


@pytest.fixture
def manifest():
    return load_manifest(MANIFESTS, "dev")


def test_notify_tests_every_contact_point_and_the_sns_topic(applied, manifest):
    platform = FakePlatform(manifest)
    try:
        result = run(applied, "drill", "dev", "notify", "--url", platform.url, "--json")
    finally:
        platform.close()
    report = json.loads(result.stdout)
    results = {check["name"]: check for check in report["checks"]}
    assert {"contact point gamepulse-slack (slack)", "contact point gamepulse-slack-and-email (slack)",
            "contact point gamepulse-slack-and-email (email)", "SNS topic"} == set(results)
    assert all(results[name]["result"] == "pass" for name in results if name.startswith("contact point"))
    # moto confirms email subscriptions at once; on AWS each address confirms by email first.
    assert results["SNS topic"]["result"] == "pass"
    assert "published; confirmed: platform-oncall@gamepulse.example" in results["SNS topic"]["evidence"]
    assert result.returncode == 0
    # The stored Slack URL is Grafana's to use: the drill never sends the redacted placeholder back.
    assert platform.tested_receivers and all("[REDACTED]" not in json.dumps(c) for c in platform.tested_receivers)


def test_a_contact_point_that_fails_its_test_is_named_with_grafanas_answer(applied, manifest):
    platform = FakePlatform(manifest)
    platform.failing_receiver = "email"
    try:
        result = run(applied, "drill", "dev", "notify", "--url", platform.url)
    finally:
        platform.close()
    assert result.returncode == 1
    line = next(line for line in result.stdout.splitlines() if line.startswith("contact point gamepulse-slack-and-email (email)"))
    assert "FAIL" in line and "the receiver timed out" in line


@pytest.mark.parametrize("scenario", ["notify", "task-failure", "alert"])
def test_drills_refuse_prod_unless_asked_before_any_aws_call(scenario):
    result = run("http://127.0.0.1:9", "drill", "prod", scenario)
    assert result.returncode == 1
    assert f"drill {scenario} refused for prod" in result.stderr and "nothing was done" in result.stderr


# -- task-failure, with ECS's answers from a fixture ------------------------------------------


class FakeEcsService:
    """A service of two tasks, as ECS runs it: a stopped task is replaced after `delay` polls,
    and its target turns healthy `delay` polls after that."""

    def __init__(self, delay: int = 2, replaces: bool = True):
        self.tasks = ["arn:aws:ecs:us-east-1:123456789012:task/gamepulse-dev/aaa",
                      "arn:aws:ecs:us-east-1:123456789012:task/gamepulse-dev/bbb"]
        self.stopped: list[str] = []
        self.delay, self.replaces, self.polls = delay, replaces, 0
        self.healthy_after: int | None = None

    # ecs
    def list_tasks(self, **_):
        self.polls += 1
        if self.stopped and self.replaces and self.polls > self.delay and len(self.tasks) < 2:
            self.tasks.append("arn:aws:ecs:us-east-1:123456789012:task/gamepulse-dev/ccc")
            self.healthy_after = self.polls + self.delay
        return {"taskArns": list(self.tasks)}

    def stop_task(self, cluster, task, reason):
        self.tasks.remove(task)
        self.stopped.append(task)
        return {"task": {"taskArn": task, "desiredStatus": "STOPPED"}}

    def describe_services(self, **_):
        return {"services": [{"serviceName": "gamepulse", "desiredCount": 2, "runningCount": len(self.tasks)}]}

    # elbv2
    def describe_target_health(self, **_):
        healthy = self.healthy_after is not None and self.polls >= self.healthy_after
        states = ["healthy", "healthy" if healthy else "initial"] if len(self.tasks) == 2 else ["healthy"]
        self.polls += 1
        return {"TargetHealthDescriptions": [{"TargetHealth": {"State": state}} for state in states]}

    # secretsmanager (Grafana's admin password)
    def get_secret_value(self, SecretId):
        return {"SecretString": "drill-test-password"}

    # cloudwatch
    def describe_alarm_history(self, **_):
        return {"AlarmHistoryItems": [{"HistorySummary": "Alarm updated from OK to ALARM"},
                                      {"HistorySummary": "Alarm updated from ALARM to OK"}]}


class FakeAws:
    def __init__(self, service):
        self.service = service

    def client(self, name):
        return self.service


def deployed_with(manifest, service, base_url: str | None = None) -> Deployed:
    outputs = {"services": {"cluster_name": "gamepulse-dev"}, "secrets": {"arns": {"grafana-admin": "arn:secret"}},
               "alb": {"target_groups": {"gamepulse": "arn:aws:elasticloadbalancing:us-east-1:123456789012:"
                                                      "targetgroup/gamepulse-dev-gamepulse-1a2b/0123456789abcdef"}},
               "dashboards": {"alarm_names": ["gamepulse-dev-tg-gamepulse-unhealthy-hosts", "gamepulse-dev-alb-5xx"]}}
    return Deployed(manifest, FakeAws(service), outputs, base_url)


def test_task_failure_stops_one_task_and_measures_replacement_and_healthy_targets(manifest):
    service = FakeEcsService()
    platform = FakePlatform(manifest)
    try:
        report = drill(deployed_with(manifest, service, platform.url), "task-failure", timeout=60)
    finally:
        platform.close()
    assert service.stopped == ["arn:aws:ecs:us-east-1:123456789012:task/gamepulse-dev/aaa"]
    assert len(service.tasks) == 2  # restored: ECS's replacement runs
    results = {check.name: check for check in report.checks}
    assert results["replaced"].result == "pass" and results["targets healthy"].result == "pass"
    assert results["unhealthy-host alarm"].evidence == ("gamepulse-dev-tg-gamepulse-unhealthy-hosts: Alarm updated "
                                                        "from OK to ALARM; Alarm updated from ALARM to OK")
    assert {"replaced_seconds", "targets healthy_seconds"} <= set(report.facts)
    # Watched throughout, and never left inactive (when the first look came depends on the machine's load).
    assert re.fullmatch(r"inactive at \+\d+s", results["rule High error rate (warning)"].evidence)
    assert not report.failures


def test_task_failure_fails_when_ecs_does_not_replace_the_task(manifest, monkeypatch):
    from orchestrator import waiters
    clock = iter(range(0, 10_000, 7))
    monkeypatch.setattr(waiters, "clock", lambda: next(clock))
    service = FakeEcsService(replaces=False)
    report = drill(deployed_with(manifest, service), "task-failure", timeout=60)  # Grafana unreachable
    assert any(check.name == "Grafana rules" and check.evidence.startswith("not watched:") for check in report.checks)
    (failure,) = report.failures
    assert failure.name == "replaced" and "gave up waiting for gamepulse: ECS replaced the task" in failure.evidence
    assert "describe-services" in failure.action


# -- alert, with the real k6 against the local fake -------------------------------------------


class SecretOnly:
    """Secrets Manager's answer for Grafana's admin password (the rest of AWS is not used)."""

    def client(self, name):
        assert name == "secretsmanager", name
        return self

    def get_secret_value(self, SecretId):
        return {"SecretString": "drill-test-password"}


def test_alert_drives_the_error_rate_rule_through_pending_firing_routing_and_resolved(manifest, monkeypatch):
    import os
    import sys
    from pathlib import Path
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    loadtest = manifest.loadtest.model_copy(update={"drill_route": "/api/drill/error", "drill_rate": 50})
    manifest = manifest.model_copy(update={"loadtest": loadtest})
    platform = FakePlatform(manifest, error_paths=("/api/drill/error",))
    deployed = Deployed(manifest, SecretOnly(), {"secrets": {"arns": {"grafana-admin": "arn:secret"}}},
                        base_url=platform.url)
    try:
        report = drill(deployed, "alert", timeout=60)
    finally:
        platform.close()
    results = {check.name: check for check in report.checks}
    assert not report.failures, report.as_table()
    assert results["routed warning"].evidence == "severity=warning goes to gamepulse-slack (notification policy)"
    assert "routed critical" not in results  # only the warning rule fired
    assert results["pending before firing"].result == "pass"
    assert results["rule High error rate (warning)"].evidence.startswith("inactive at +")
    assert "pending at +" in results["rule High error rate (warning)"].evidence
    assert "firing at +" in results["rule High error rate (warning)"].evidence
    assert report.facts["resolved_seconds"] >= report.facts["firing_seconds"]
    assert set(platform.hits) == {"/api/drill/error"}  # no user route was touched
    assert time_since_last_error(platform) > 0.5  # restored: the errors stopped


def time_since_last_error(platform) -> float:
    import time
    return time.monotonic() - platform.last_error_at


def test_the_alert_drill_needs_a_drill_route(manifest):
    from orchestrator.errors import OrchestratorError
    with pytest.raises(OrchestratorError, match="needs loadtest.drill_route"):
        drill(Deployed(manifest, SecretOnly(), {}), "alert")
