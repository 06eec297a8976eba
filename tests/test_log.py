"""The progress log: structlog is loaded only when an event is shown, and what is shown (console
or JSON lines, `-v`'s AWS calls, secrets masked) is what structlog renders."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from orchestrator.log import get_logger
from orchestrator.model import SENSITIVE
from tests.test_cli import run

#: The command line's environment in which it prints, at exit, whether structlog was loaded.
PROBE = {"PYTHONPATH": str(Path(__file__).parent / "import_probe")}
STEPS = ["vpc", "ecr", "storage", "secrets", "efs", "ecs", "alb", "iam", "services", "dashboards"]


@pytest.mark.dev_applied
def test_a_plan_that_shows_no_event_never_loads_structlog(endpoint):
    result = run(endpoint, "plan", "dev", extra_env=PROBE)
    assert result.returncode == 0, result.stderr
    assert "No changes" in result.stdout
    assert result.stderr == ""  # its only events are the debug "aws call" lines, not shown at the default level
    assert result.stdout.splitlines()[-1] == "structlog loaded: False"


@pytest.mark.dev_applied
def test_an_unchanged_apply_still_says_what_it_did(endpoint):
    result = run(endpoint, "apply", "dev")
    assert result.returncode == 0, result.stderr
    lines = [line.split(maxsplit=1)[1] for line in result.stderr.splitlines()]  # without the time
    assert re.fullmatch(r"lock acquired  env=dev fence=\d+ run_id=\w+", lines[0]), lines
    assert sorted(lines[1:-1]) == sorted(f"{step:<10} up to date" for step in STEPS)
    assert re.fullmatch(r"lock released  run_id=\w+", lines[-1]), lines


@pytest.mark.dev_applied
def test_verbose_shows_every_aws_call_by_step(endpoint):
    result = run(endpoint, "-v", "plan", "dev")
    assert result.returncode == 0, result.stderr
    calls = [line.split(maxsplit=1)[1] for line in result.stderr.splitlines()]
    assert "facts      aws call  operation=GetCallerIdentity service=sts" in calls
    assert "vpc        aws call  operation=DescribeVpcs service=ec2" in calls
    assert all("aws call  operation=" in line for line in calls), calls


@pytest.mark.dev_applied
def test_a_warning_is_shown_with_secret_values_masked_on_the_console_and_as_json(endpoint):
    # The slack webhook's source is not set, so the plan warns that its current value is kept;
    # the warning names the variable, which here is also the value of another secret (as a value
    # leaked into a message would be): shown masked, in either format.
    leaked = "GAMEPULSE_DEV_SLACK_WEBHOOK"
    secrets_env = {"GAMEPULSE_DEV_DB_CONNECTION": leaked, "GAMEPULSE_DEV_SLACK_WEBHOOK": ""}

    console = run(endpoint, "plan", "dev", extra_env=secrets_env)
    assert console.returncode == 0, console.stderr
    [warning] = console.stderr.splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d", warning.split()[0]), warning
    assert warning.split(maxsplit=1)[1] == (
        'secrets    WARN secret source unavailable; keeping the current value  problem="secret '
        f'gamepulse/dev/slack-webhook: environment variable {SENSITIVE} is not set or empty; set it to the '
        'secret\'s value (values are never read from the manifest)" secret=gamepulse/dev/slack-webhook')
    assert leaked not in console.stderr

    as_json = run(endpoint, "--log-format", "json", "plan", "dev", extra_env=secrets_env)
    assert as_json.returncode == 0, as_json.stderr
    [line] = as_json.stderr.splitlines()
    event = json.loads(line)
    assert {key: event[key] for key in ("event", "level", "step", "secret")} == {
        "event": "secret source unavailable; keeping the current value", "level": "warning", "step": "secrets",
        "secret": "gamepulse/dev/slack-webhook"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", event["timestamp"]), event
    assert f"environment variable {SENSITIVE} is not set" in event["problem"]
    assert leaked not in as_json.stderr


@pytest.fixture
def structlog_as_before_configure():
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def test_before_configure_every_event_goes_to_structlog_debug_included(structlog_as_before_configure):
    log = get_logger("orchestrator.test").bind(step="vpc")
    with capture_logs() as logs:
        log.debug("aws call", service="ec2")
        log.bind(what="nat gateway").info("waiting", waited_s=4.0)
        log.warning("quota not checked", step="alb")
        log.error("step failed", error="boom")
        log.exception("lost", error="boom")
    assert logs[4].pop("exc_info") is True  # structlog's own `exception`, reached through ours
    assert logs == [
        {"step": "vpc", "service": "ec2", "event": "aws call", "log_level": "debug"},
        {"step": "vpc", "what": "nat gateway", "waited_s": 4.0, "event": "waiting", "log_level": "info"},
        {"step": "alb", "event": "quota not checked", "log_level": "warning"},
        {"step": "vpc", "error": "boom", "event": "step failed", "log_level": "error"},
        {"step": "vpc", "error": "boom", "event": "lost", "log_level": "error"},
    ]
