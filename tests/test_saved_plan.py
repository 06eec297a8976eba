"""Saved plans and the confirmation, as a platform engineer meets them: `plan ENV --out FILE`,
then `apply FILE` — applied exactly, or refused naming what moved; `apply ENV` on a terminal
asks first. End to end: the installed command line against a moto server."""
from __future__ import annotations

import dataclasses
import json
import os
import pty
import re
import select
import shutil
import subprocess
import time

import pytest
import yaml

from orchestrator.aws import is_mutating
from orchestrator.model import Change, FieldDiff, Unknown
from tests.conftest import FAKE_ENV, MANIFESTS
from tests.test_cli import CLI, IAM_AT_ONCE, client, run

GENERATED_SECRET = "gamepulse/dev/grafana-admin"


def dev_manifests(tmp_path):
    folder = tmp_path / "manifests"
    folder.mkdir()
    for name in ("gamepulse.yaml", "dev.yaml"):
        shutil.copy(MANIFESTS / name, folder)
    return folder


def mutating_calls(stderr: str) -> list[tuple[str, str]]:
    """(step, operation) of every mutating AWS call a `-v --log-format json` run logged, but the
    state table's (lock, records)."""
    calls = []
    for line in stderr.splitlines():
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("event") == "aws call" and is_mutating(event["operation"]) and event["step"] != "state":
            calls.append((event["step"], event["operation"]))
    return calls


def planned_calls(document: dict) -> set[tuple[str, str]]:
    return {(step, call.split(":", 1)[1]) for step, planned in document["steps"].items()
            for change in planned["changes"] for call in change["calls"]}


def running_image(endpoint) -> str:
    ecs = client(endpoint, "ecs")
    [service] = ecs.describe_services(cluster="gamepulse-dev", services=["gamepulse"])["services"]
    return ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"][
        "containerDefinitions"][-1]["image"]


def alb_security_group(endpoint) -> str:
    groups = client(endpoint, "ec2").describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["gamepulse-dev-alb"]}])["SecurityGroups"]
    return groups[0]["GroupId"]


def test_a_saved_plan_applies_exactly_its_calls_once_and_holds_no_secret(endpoint, wire, tmp_path):
    # The first deploy of an environment, as staging and prod make it: from nothing, by a saved plan.
    cold = tmp_path / "cold.plan"
    assert run(endpoint, "plan", "dev", "--out", str(cold)).returncode == 0
    created = run(endpoint, "-v", "--log-format", "json", "apply", str(cold))
    assert created.returncode == 0, created.stderr[-3000:]
    made, listed = set(mutating_calls(created.stderr)), planned_calls(json.loads(cold.read_text()))
    assert ("vpc", "CreateVpc") in made and ("services", "CreateService") in made
    assert made <= listed, made - listed
    assert run(endpoint, "plan", "dev", "--detailed-exitcode").returncode == 0, "the saved plan converged"

    before = running_image(endpoint)
    file = tmp_path / "dev.plan"
    planned = run(endpoint, "plan", "dev", "--image-tag", "gamepulse=1.4.2", "--out", str(file))
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert f"Saved the plan (2 change(s)) to {file}" in planned.stderr
    document = json.loads(file.read_text())
    assert document["inputs"]["image_tags"] == {"gamepulse": "1.4.2"} and document["images"]["gamepulse"] == "1.4.2"
    assert planned_calls(document) == {("services", "RegisterTaskDefinition"), ("services", "DeregisterTaskDefinition"),
                                       ("services", "UpdateService")}
    generated = client(endpoint, "secretsmanager").get_secret_value(SecretId=GENERATED_SECRET)["SecretString"]
    text = file.read_text() + cold.read_text()
    for secret in (FAKE_ENV["GAMEPULSE_DEV_DB_CONNECTION"], FAKE_ENV["GAMEPULSE_DEV_SLACK_WEBHOOK"], generated,
                   "test-db-password-123", "webhook-secret-456"):  # nor the password or token inside them
        assert secret not in text

    # Nothing changed in between: the plan applies, making only the calls it listed.
    assert running_image(endpoint) == before, "plan --out changed AWS"
    applied = run(endpoint, "-v", "--log-format", "json", "apply", str(file))
    assert applied.returncode == 0, applied.stderr[-3000:]
    made = mutating_calls(applied.stderr)
    assert ("services", "RegisterTaskDefinition") in made and ("services", "UpdateService") in made
    assert set(made) <= planned_calls(document), set(made) - planned_calls(document)
    digest = client(endpoint, "ecr").describe_images(repositoryName="gamepulse", imageIds=[{"imageTag": "1.4.2"}])[
        "imageDetails"][0]["imageDigest"]
    assert running_image(endpoint).endswith(f"@{digest}")
    [last, *_] = json.loads(run(endpoint, "status", "dev", "--json").stdout)["runs"]
    assert last["command"] == "apply --image-tag gamepulse=1.4.2 (saved plan dev.plan)" and last["result"] == "ok"

    # Applied once: the state it rests on has been written since, by that very run.
    wire.reset()
    again = run(endpoint, "apply", "dev", str(file))
    assert again.returncode == 1, again.stderr[-3000:]
    assert f"the saved plan {file} no longer holds; nothing was changed" in again.stderr
    assert "the state of dev was written since the plan" in again.stderr
    # ecr: the image it resolves for the tag is its output; services: the revision in service.
    assert f"step(s) ecr, services, by run {last['run_id']} (apply --image-tag gamepulse=1.4.2 (saved plan dev.plan)" \
        in again.stderr
    assert "services: update service gamepulse: no longer needed (AWS already matches)" in again.stderr
    assert f"Make a new plan (`orchestrator plan dev --image-tag gamepulse=1.4.2 --out {file}`)" in again.stderr
    assert wire.count(mutating=True, exclude=("DynamoDB",)) == 0, wire.operations(mutating=True)
    [refused, *_] = json.loads(run(endpoint, "status", "dev", "--json").stdout)["runs"]
    assert refused["result"] == "refused"


@pytest.mark.dev_applied
def test_a_saved_destroy_plan_deletes_exactly_what_it_listed(endpoint, tmp_path):
    file = tmp_path / "dashboards.plan"
    planned = run(endpoint, "plan", "dev", "--destroy", "--target", "dashboards", "--out", str(file))
    assert planned.returncode == 0, planned.stderr[-3000:]
    document = json.loads(file.read_text())
    assert document["inputs"]["destroy"] is True and list(document["steps"]) == ["dashboards"]
    assert {change["action"] for change in document["steps"]["dashboards"]["changes"]} == {"delete"}

    applied = run(endpoint, "-v", "--log-format", "json", "apply", "dev", str(file))
    assert applied.returncode == 0, applied.stderr[-3000:]
    assert "destroy dev --target dashboards (saved plan dashboards.plan): ok" in applied.stdout
    made = mutating_calls(applied.stderr)
    assert ("dashboards", "DeleteDashboards") in made
    assert set(made) <= planned_calls(document), set(made) - planned_calls(document)
    assert client(endpoint, "cloudwatch").describe_alarms(AlarmNamePrefix="gamepulse-dev-")["MetricAlarms"] == []
    assert client(endpoint, "ecs").describe_services(cluster="gamepulse-dev", services=["gamepulse"])[
        "services"][0]["status"] == "ACTIVE", "only the planned step was destroyed"


@pytest.mark.dev_applied
def test_a_saved_plan_is_refused_after_a_hand_change_in_aws_naming_it(endpoint, wire, tmp_path):
    file = tmp_path / "dev.plan"
    assert run(endpoint, "plan", "dev", "--image-tag", "gamepulse=1.4.2", "--out", str(file)).returncode == 0
    ssh = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    ec2 = client(endpoint, "ec2")
    ec2.authorize_security_group_ingress(GroupId=alb_security_group(endpoint), IpPermissions=ssh)

    wire.reset()
    refused = run(endpoint, "apply", str(file))
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "AWS changed since the plan (observed again now):" in refused.stderr
    assert "vpc: update ingress alb: needed now, not in the saved plan (ingress: tcp 22 from 0.0.0.0/0" \
        in refused.stderr
    assert "state of dev was written" not in refused.stderr
    assert wire.count(mutating=True, exclude=("DynamoDB",)) == 0, wire.operations(mutating=True)

    # A secret's value changed at its source since the plan: the plan did not show that change.
    ec2.revoke_security_group_ingress(GroupId=alb_security_group(endpoint), IpPermissions=ssh)
    wire.reset()
    rotated = run(endpoint, "apply", str(file), extra_env={"GAMEPULSE_DEV_DB_CONNECTION": "Host=db;Password=rotated-789"})
    assert rotated.returncode == 1, rotated.stderr[-3000:]
    assert "secrets: update secret db-connection: needed now, not in the saved plan (value: (sensitive)" \
        in rotated.stderr
    assert "rotated-789" not in rotated.stdout + rotated.stderr
    assert wire.count(mutating=True, exclude=("DynamoDB",)) == 0, wire.operations(mutating=True)

    # Put back as it was: the same file applies.
    assert run(endpoint, "apply", str(file)).returncode == 0


def test_a_saved_plan_is_refused_after_the_manifest_was_edited_before_any_aws_call(endpoint, wire, tmp_path):
    manifests = dev_manifests(tmp_path)
    file = tmp_path / "dev.plan"
    assert run(endpoint, "plan", "dev", "--target", "ecs", "--out", str(file), manifests=manifests).returncode == 0
    overlay = yaml.safe_load((manifests / "dev.yaml").read_text())
    overlay["logging"] = {"retention_days": 60}
    (manifests / "dev.yaml").write_text(yaml.safe_dump(overlay))

    wire.reset()
    refused = run(endpoint, "apply", str(file), manifests=manifests)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "the dev manifest was edited since the plan:\n    logging.retention_days: 30 → 60" in refused.stderr
    assert f"Make a new plan (`orchestrator plan dev --target ecs --out {file}`)" in refused.stderr
    assert wire.count() == 0, wire.operations()


def test_a_saved_plan_is_refused_after_another_run_applied_naming_that_run(endpoint, wire, tmp_path):
    file = tmp_path / "dev.plan"
    assert run(endpoint, "plan", "dev", "--target", "ecs", "--out", str(file)).returncode == 0
    other = run(endpoint, "apply", "dev", "--target", "ecs", "--image-tag", "gamepulse=1.4.2")  # a colleague's
    assert other.returncode == 0, other.stderr[-3000:]
    [theirs] = json.loads(run(endpoint, "status", "dev", "--json").stdout)["runs"]

    wire.reset()
    refused = run(endpoint, "apply", str(file))
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert (f"step(s) ecs, vpc, by run {theirs['run_id']} (apply --image-tag gamepulse=1.4.2, {theirs['user']}@"
            f"{theirs['host']}, started {theirs['started_at']}, ok)") in refused.stderr
    assert "ecs: create cluster gamepulse-dev: no longer needed (AWS already matches)" in refused.stderr
    assert wire.count(mutating=True, exclude=("DynamoDB",)) == 0, wire.operations(mutating=True)


def test_damaged_foreign_and_other_environment_files_are_refused_clearly(endpoint, wire, tmp_path):
    from orchestrator.planfile import digest
    file = tmp_path / "dev.plan"
    assert run(endpoint, "plan", "dev", "--target", "ecr", "--out", str(file)).returncode == 0
    document = json.loads(file.read_text())
    wire.reset()

    def refusal(text: str, *args: str) -> str:
        bad = tmp_path / "bad.plan"
        bad.write_text(text)
        result = run(endpoint, "apply", *args, str(bad))
        assert result.returncode == 1, result.stderr
        return result.stderr

    assert "bad.plan:1: not a saved plan (not JSON:" in refusal(file.read_text()[:200].replace("\n", " "))
    assert "bad.plan: not a saved plan of orchestrator" in refusal(json.dumps({"steps": {}}))
    assert "plan file format version 2; this orchestrator" in refusal(json.dumps({**document, "version": 2}))
    tampered = {**document, "inputs": {**document["inputs"], "targets": []}}
    assert "the plan file was changed or damaged after it was saved" in refusal(json.dumps(tampered))
    assert "bad.plan is a plan for dev, not staging; nothing was changed" in refusal(file.read_text(), "staging")

    def resealed(**fields) -> str:  # a well-formed file, as another version or account would write it
        body = {key: value for key, value in {**document, **fields}.items() if key != "checksum"}
        return json.dumps({**body, "checksum": digest(body)})

    assert "bad.plan was made by orchestrator 9.9.9, this is" in refusal(resealed(orchestrator="9.9.9"))
    assert ("bad.plan was planned in account 111111111111, but the credentials are for account 123456789012; "
            "nothing was changed") in refusal(resealed(account_id="111111111111"))
    assert "No such file" in run(endpoint, "apply", "dev", str(tmp_path / "none.plan")).stderr

    fixed = run(endpoint, "apply", str(file), "--image-tag", "gamepulse=1.4.2")
    assert fixed.returncode == 2 and "a saved plan holds its --target, --image-tag" in fixed.stderr
    # Only the account's check asked AWS anything (who the credentials are); nothing was written.
    assert set(wire.operations()) == {"sts:GetCallerIdentity"}, wire.operations()
    assert client(endpoint, "dynamodb").list_tables()["TableNames"] == []


def test_staging_and_prod_apply_only_a_saved_plan():
    for env in ("staging", "prod"):
        result = run("http://127.0.0.1:9", "apply", env, "--yes", "--image-tag", "gamepulse=1.4.2")
        assert result.returncode == 1, result.stderr
        assert (f"{env} applies only a saved plan (protection.require_saved_plan in its manifest); nothing was "
                f"changed. Make one with `orchestrator plan {env} --image-tag gamepulse=1.4.2 --out {env}.plan`, "
                f"review it, then apply exactly it with `orchestrator apply {env} {env}.plan`") in result.stderr
        assert "Could not connect" not in result.stderr


# -- on a terminal -------------------------------------------------------------------------------


class Terminal:
    """The command line run on a pseudo-terminal (stdin, stdout and stderr), as a person runs it."""

    def __init__(self, endpoint, *args):
        self.master, slave = pty.openpty()
        env = {**os.environ, **FAKE_ENV, "AWS_ENDPOINT_URL": endpoint, "ORCHESTRATOR_MANIFESTS": str(MANIFESTS),
               **IAM_AT_ONCE}
        env.pop("CI", None)
        self.process = subprocess.Popen([CLI, *args], stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        self.screen = ""

    def read_until(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            assert time.monotonic() < deadline, f"never saw {text!r}:\n{self.screen[-3000:]}"
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    self.screen += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the command ended and closed the terminal
                    assert text in self.screen, f"ended without {text!r}:\n{self.screen[-3000:]}"
        return self.screen

    def type(self, line: str) -> None:
        os.write(self.master, f"{line}\n".encode())

    def finish(self) -> int:
        try:
            while True:
                ready, _, _ = select.select([self.master], [], [], 0.5)
                if ready:
                    chunk = os.read(self.master, 65536)
                    if not chunk:
                        break
                    self.screen += chunk.decode(errors="replace")
                elif self.process.poll() is not None:
                    break
        except OSError:
            pass
        os.close(self.master)
        return self.process.wait(30)


def test_apply_on_a_terminal_shows_the_plan_and_asks_first(endpoint, wire):
    terminal = Terminal(endpoint, "apply", "dev")
    screen = terminal.read_until("Only 'yes' applies them:")
    assert "Plan for gamepulse-dev (us-east-1):" in screen and "+ create vpc" in screen
    assert re.search(r"Apply these \d+ change\(s\) to dev\? Only 'yes' applies them:", screen)
    terminal.type("no")
    assert terminal.finish() == 1, terminal.screen[-3000:]
    assert "Error: apply dev declined: nothing was changed" in terminal.screen
    assert wire.count(mutating=True, exclude=("DynamoDB",)) == 0, wire.operations(mutating=True)
    status = json.loads(run(endpoint, "status", "dev", "--json").stdout)
    assert not (status["lock"] or {}).get("run_id"), f"the lock was kept: {status['lock']}"
    assert status["runs"][0]["result"] == "declined"

    terminal = Terminal(endpoint, "apply", "dev")
    terminal.read_until("Only 'yes' applies them:")
    terminal.type("yes")
    assert terminal.finish() == 0, terminal.screen[-3000:]
    assert "apply dev: ok" in terminal.screen
    assert client(endpoint, "ec2").describe_vpcs(Filters=[{"Name": "tag:orchestrator:env", "Values": ["dev"]}])["Vpcs"]

    # Nothing to change: nothing to confirm. --yes never asks.
    for args in (("apply", "dev"), ("apply", "dev", "--yes", "--image-tag", "gamepulse=1.4.2")):
        terminal = Terminal(endpoint, *args)
        assert terminal.finish() == 0, terminal.screen[-3000:]
        assert "Only 'yes'" not in terminal.screen and ": ok in" in terminal.screen


# -- checking a plan against a fresh one (pure) ----------------------------------------------------


def saved_plan_with(changes: list[Change], desired: str = "d1"):
    from orchestrator.planfile import SavedPlan, comparable, state_version
    return SavedPlan("dev.plan", {"environment": "dev", "inputs": {}, "state": state_version({}),
                                  "steps": {"services": {"desired": desired,
                                                         "changes": [comparable(c) for c in changes]}}})


def test_a_step_may_make_only_the_changes_the_plan_holds_with_unknowns_resolved():
    from orchestrator.errors import OrchestratorError
    planned = Change("update", "service", "api", diffs=(FieldDiff("task_definition", "td:1", Unknown("x.y")),),
                     calls=("ecs:UpdateService",))
    resolved = Change("update", "service", "api", diffs=(FieldDiff("task_definition", "td:1", "td:2"),),
                      calls=("ecs:UpdateService",))
    saved_plan_with([planned]).admit("services", [resolved])

    other_value = Change("update", "service", "api", diffs=(FieldDiff("task_definition", "td:7", "td:2"),),
                         calls=("ecs:UpdateService",))
    more_calls = Change("update", "service", "api", diffs=resolved.diffs,
                        calls=("ecs:UpdateService", "ecs:DeleteService"))
    another = Change("create", "service", "worker", calls=("ecs:CreateService",))
    for unplanned in (other_value, more_calls, another):
        with pytest.raises(OrchestratorError, match="the saved plan dev.plan does not hold that change"):
            saved_plan_with([planned]).admit("services", [unplanned])
    with pytest.raises(OrchestratorError, match="stopped before update service api"):
        saved_plan_with([planned]).admit("services", [resolved, resolved])  # once only


def test_unknown_items_and_fields_that_differ_twice_are_matched_as_planned():
    from orchestrator.errors import OrchestratorError
    # Placeholders in a set collapse to one: the plan listed one resource it did not know yet.
    planned = Change("create", "inline_policy", "read", calls=("iam:PutRolePolicy",), diffs=(
        FieldDiff("document", None, {"Resource": sorted({Unknown("secrets.a"), Unknown("secrets.b")}) + ["arn:x"]}),
        FieldDiff("ingress", None, "tcp 80"), FieldDiff("ingress", None, "tcp 443")))
    applied = Change("create", "inline_policy", "read", calls=("iam:PutRolePolicy",), diffs=(
        FieldDiff("document", None, {"Resource": ["arn:a", "arn:b", "arn:x"]}),
        FieldDiff("ingress", None, "tcp 80"), FieldDiff("ingress", None, "tcp 443")))
    saved_plan_with([planned]).admit("services", [applied])
    without_known = dataclasses.replace(applied, diffs=(FieldDiff("document", None, {"Resource": ["arn:a"]}),))
    extra_rule = dataclasses.replace(applied, diffs=applied.diffs + (FieldDiff("ingress", None, "tcp 22"),))
    for unplanned in (without_known, extra_rule):
        with pytest.raises(OrchestratorError, match="does not hold that change"):
            saved_plan_with([planned]).admit("services", [unplanned])


def test_what_a_step_would_set_changing_behind_the_same_changes_is_refused():
    """A config file changed since the plan: a create's content differs while its change reads the same."""
    from orchestrator.engine import StepResult
    from orchestrator.errors import NotApplied
    create = Change("create", "bundle", "loki", calls=("s3:PutObject",))
    same = {"services": StepResult("services", changes=[create], desired_digest="d1")}
    saved_plan_with([create]).approve(same, {})
    other = {"services": StepResult("services", changes=[create], desired_digest="d2")}
    with pytest.raises(NotApplied, match=r"what services would create or set differs from the plan's although the "
                                         r"manifest and the changes read the same \(the config files"):
        saved_plan_with([create]).approve(other, {})


def test_a_plan_that_would_hold_a_secret_value_is_not_written(tmp_path):
    from orchestrator.errors import OrchestratorError
    from orchestrator.log import redactor
    from orchestrator.planfile import write
    redactor.register("s3cr3t-value-from-a-source")
    document = {"steps": {"secrets": {"changes": [{"note": "set to s3cr3t-value-from-a-source"}]}}}
    with pytest.raises(OrchestratorError, match="not written: the plan would hold a secret value"):
        write(tmp_path / "dev.plan", document)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OrchestratorError, match="cannot write the plan there"):
        write(tmp_path / "missing" / "dev.plan", {"steps": {}})


def test_a_step_whose_changes_moved_after_the_check_is_stopped_before_its_calls():
    """The engine admits each step's changes as it starts: a step re-planned once its upstream
    step applied (here after a change by hand right after the check) makes no unplanned call."""
    from orchestrator.planfile import SavedPlan, comparable, state_version
    from tests.test_engine import ThingStep, engine_for
    cloud: dict = {}
    steps = [ThingStep("a", cloud=cloud), ThingStep("b", ["a"], cloud=cloud)]
    planned = engine_for(steps).plan()
    saved = SavedPlan("dev.plan", {"environment": "dev", "inputs": {}, "state": state_version({}), "steps": {
        name: {"desired": result.desired_digest, "changes": [comparable(change) for change in result.changes]}
        for name, result in planned.items()}})

    class HandChangeRightAfterTheCheck:
        def approve(self, planned, records):
            saved.approve(planned, records)
            cloud["b"] = {"name": "b", "after": "by hand"}

        def admit(self, step, changes):
            saved.admit(step, changes)

    results = engine_for(steps).apply(review=HandChangeRightAfterTheCheck())
    assert results["a"].status == "ok" and cloud["a"]["after"] == []
    assert results["b"].status == "failed"
    assert "stopped before update thing b: the saved plan dev.plan does not hold that change" in results["b"].error
    assert cloud["b"] == {"name": "b", "after": "by hand"}, "b was changed although the plan did not hold it"
