"""Step `secrets`: pure planning without AWS, then apply / drift / destroy / crash against moto,
and the promise that a secret value shows up nowhere but in Secrets Manager."""
from __future__ import annotations

import dataclasses
import io
import json
from datetime import datetime, timezone

import pytest
import structlog
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from structlog.testing import capture_logs

from orchestrator.errors import OrchestratorError
from orchestrator.log import configure
from orchestrator.model import SENSITIVE
from orchestrator.schema import SecretSpec, SecretsSpec
from steps.secrets import DesiredSecret, ObservedSecret, SecretsFacts, SecretsStep
from tests import harness
from tests.conftest import FAKE_ENV

STEP = SecretsStep()
DB_VALUE = FAKE_ENV["GAMEPULSE_DEV_DB_CONNECTION"]
SLACK_VALUE = FAKE_ENV["GAMEPULSE_DEV_SLACK_WEBHOOK"]
NAMES = ["gamepulse/dev/db-connection", "gamepulse/dev/grafana-admin", "gamepulse/dev/slack-webhook"]


# -- pure planning ------------------------------------------------------------------------------


def desired_for(manifest):
    return STEP.desired(manifest, harness.inputs(STEP))


def as_found(secret: DesiredSecret, **changed) -> ObservedSecret:
    """What observe reports for a secret exactly as desired, with a value equal to its source."""
    arn = f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{secret.name}-AbCdEf"
    found = ObservedSecret(name=secret.name, arn=arn,
                           description=secret.description, tags=dict(secret.tags), deleted=False,
                           value="unknown" if secret.source == "generate" else "same")
    return dataclasses.replace(found, **changed)


def facts_for(desired, *, missing=(), **changed_by_key) -> SecretsFacts:
    owned = {key: as_found(secret, **changed_by_key.get(key.replace("-", "_"), {}))
             for key, secret in desired.secrets.items()}
    return SecretsFacts(recovery_window_days=7, owned=owned, missing_sources=set(missing))


def harness_context(manifest, aws):
    from orchestrator.context import StepContext
    return StepContext(aws=aws, manifest=manifest, step=STEP.name)


def current_version(sm, name: str) -> str:
    versions = sm.list_secret_version_ids(SecretId=name)["Versions"]
    return next(v["VersionId"] for v in versions if "AWSCURRENT" in v["VersionStages"])


def test_desired_names_secrets_under_app_and_env_with_ownership_tags(manifest):
    desired = desired_for(manifest)
    assert [s.name for s in desired.secrets.values()] == NAMES
    db = desired.secrets["db-connection"]
    assert (db.source, db.env) == ("env", "GAMEPULSE_DEV_DB_CONNECTION")
    assert db.tags["orchestrator:step"] == "secrets" and db.tags["orchestrator:env"] == "dev"
    assert db.tags["project"] == "gamepulse"


def test_plan_from_nothing_creates_each_secret_and_says_where_its_value_comes_from(manifest):
    desired = desired_for(manifest)
    changes = STEP.plan(desired, SecretsFacts(recovery_window_days=7), {})
    assert [(c.action, c.kind, c.name) for c in changes] == [
        ("create", "secret", "db-connection"), ("create", "secret", "grafana-admin"),
        ("create", "secret", "slack-webhook")]
    assert all(c.calls == ("secretsmanager:CreateSecret",) and c.blocked is None for c in changes)
    assert "environment variable GAMEPULSE_DEV_DB_CONNECTION" in changes[0].note
    assert "generated once (32 characters), then kept" in changes[1].note
    value_diff = [d for d in changes[0].diffs if d.field == "value"][0]
    assert value_diff.sensitive and value_diff.to_dict()["new"] == SENSITIVE


def test_no_change_when_everything_matches(manifest):
    desired = desired_for(manifest)
    assert STEP.plan(desired, facts_for(desired), {}) == []


def test_a_different_source_value_is_an_update_that_does_not_show_it(manifest):
    desired = desired_for(manifest)
    changes = STEP.plan(desired, facts_for(desired, db_connection={"value": "differs"}), {})
    assert [(c.action, c.name, c.calls) for c in changes] == [
        ("update", "db-connection", ("secretsmanager:PutSecretValue",))]
    assert "value will change" in changes[0].note
    assert changes[0].to_dict()["diffs"] == [{"field": "value", "old": SENSITIVE, "new": SENSITIVE, "sensitive": True}]


def test_description_and_tag_drift_are_updates_that_keep_tags_others_added(manifest):
    desired = desired_for(manifest)
    tags = {**desired.secrets["slack-webhook"].tags, "project": "other", "added-by-hand": "x"}
    changes = STEP.plan(desired, facts_for(desired, slack_webhook={"description": "old", "tags": tags}), {})
    assert len(changes) == 1
    change = changes[0]
    assert change.calls == ("secretsmanager:UpdateSecret", "secretsmanager:TagResource")
    assert {d.field for d in change.diffs} == {"description", "tags"}
    assert change.tags_to_set() == {"project": "gamepulse"}
    assert [(d.old, d.new) for d in change.diffs if d.field == "tags"] == [({"project": "other"}, {"project": "gamepulse"})]


def test_a_tag_someone_else_added_is_no_change(manifest):
    desired = desired_for(manifest)
    tags = {**desired.secrets["db-connection"].tags, "compliance:scope": "pci"}
    assert STEP.plan(desired, facts_for(desired, db_connection={"tags": tags}), {}) == []


def test_a_secret_scheduled_for_deletion_is_restored_not_created(manifest):
    desired = desired_for(manifest)
    facts = facts_for(desired, db_connection={"deleted": True, "value": "unknown"},
                      grafana_admin={"deleted": True})
    changes = {c.name: c for c in STEP.plan(desired, facts, {})}
    assert set(changes) == {"db-connection", "grafana-admin"}
    assert changes["db-connection"].calls == ("secretsmanager:RestoreSecret", "secretsmanager:PutSecretValue")
    assert changes["grafana-admin"].calls == ("secretsmanager:RestoreSecret",)  # a generated value is kept
    assert "kept" in changes["grafana-admin"].note


def test_a_restored_secret_whose_source_is_missing_keeps_its_value(manifest):
    desired = desired_for(manifest)
    facts = facts_for(desired, missing={"db-connection"}, db_connection={"deleted": True, "value": "unknown"})
    [change] = STEP.plan(desired, facts, {})
    assert change.calls == ("secretsmanager:RestoreSecret",) and not change.payload.put_value


def test_a_secret_left_out_of_the_manifest_is_a_guarded_delete(manifest):
    desired = desired_for(manifest)
    facts = facts_for(desired)
    facts.owned["old-api-key"] = as_found(desired.secrets["db-connection"], name="gamepulse/dev/old-api-key")
    [change] = STEP.plan(desired, facts, {})
    assert (change.action, change.name, change.blocked) == ("delete", "old-api-key", "delete-secrets")
    assert "7-day recovery window" in change.note


def test_a_secret_under_our_name_without_our_tags_is_refused(manifest):
    desired = desired_for(manifest)
    facts = facts_for(desired)
    facts.foreign["slack-webhook"] = facts.owned.pop("slack-webhook")
    with pytest.raises(OrchestratorError, match="secret gamepulse/dev/slack-webhook exists but does not carry this environment.s ownership tags"):
        STEP.plan(desired, facts, {})


def test_destroy_schedules_deletion_of_live_owned_secrets_only_with_the_flag(manifest):
    desired = desired_for(manifest)
    facts = facts_for(desired, grafana_admin={"deleted": True})
    changes = STEP.plan_destroy(facts)
    assert [(c.action, c.name, c.blocked) for c in changes] == [
        ("delete", "db-connection", "delete-secrets"), ("delete", "slack-webhook", "delete-secrets")]
    assert changes[0].payload.recovery_window_days == 7


# -- against moto -------------------------------------------------------------------------------


@pytest.fixture
def sm(aws):
    return aws.client("secretsmanager")


def value_of(sm, name: str) -> str:
    return sm.get_secret_value(SecretId=name)["SecretString"]


def listed(sm) -> dict[str, dict]:
    return {s["Name"]: s for s in sm.list_secrets(IncludePlannedDeletion=True)["SecretList"]}


def with_secrets(manifest, **values: SecretSpec):
    return manifest.model_copy(update={"secrets": SecretsSpec(recovery_window_days=7, values=values)})


def test_apply_creates_secrets_with_values_and_tags_then_changes_nothing(manifest, aws, sm):
    applied, outputs, _ = harness.run_step(STEP, manifest, aws)
    assert len(applied) == 3

    secrets = listed(sm)
    assert sorted(secrets) == NAMES
    db = secrets["gamepulse/dev/db-connection"]
    assert db["Description"] == "GamePulse database connection string"
    tags = {t["Key"]: t["Value"] for t in db["Tags"]}
    assert tags["orchestrator:app"] == "gamepulse" and tags["orchestrator:step"] == "secrets"
    assert value_of(sm, "gamepulse/dev/db-connection") == DB_VALUE
    assert value_of(sm, "gamepulse/dev/slack-webhook") == SLACK_VALUE
    generated = value_of(sm, "gamepulse/dev/grafana-admin")
    assert len(generated) == 32
    assert outputs["names"]["db-connection"] == "gamepulse/dev/db-connection"
    assert outputs["arns"] == {key: secrets[f"gamepulse/dev/{key}"]["ARN"] for key in outputs["names"]}
    assert harness.mutations(aws) == ["secrets-manager:CreateSecret"] * 3  # tags went in the create call

    before = len(aws.ledger.calls)
    again, outputs_again, _ = harness.run_step(STEP, manifest, aws)
    assert again == [] and harness.mutations(aws) == ["secrets-manager:CreateSecret"] * 3
    reads = [f"{c.service}:{c.operation}" for c in harness.calls_since(aws, before, STEP.name)]
    # The generated value is not read: its current version comes from DescribeSecret (ListSecrets may lag).
    assert reads == ["secrets-manager:ListSecrets", "secrets-manager:BatchGetSecretValue",
                     "secrets-manager:DescribeSecret"]
    assert value_of(sm, "gamepulse/dev/grafana-admin") == generated  # generated once, then kept
    assert outputs_again == outputs


def test_drift_is_shown_by_plan_then_repaired(manifest, aws, sm):
    harness.run_step(STEP, manifest, aws)
    generated = value_of(sm, "gamepulse/dev/grafana-admin")
    sm.update_secret(SecretId="gamepulse/dev/slack-webhook", Description="edited by hand")
    arn = listed(sm)["gamepulse/dev/slack-webhook"]["ARN"]
    sm.tag_resource(SecretId=arn, Tags=[{"Key": "project", "Value": "hijacked"}])
    sm.put_secret_value(SecretId="gamepulse/dev/db-connection", SecretString="changed-by-hand-value")
    sm.put_secret_value(SecretId="gamepulse/dev/grafana-admin", SecretString="rotated-by-hand-value")
    writes = len(harness.mutations(aws))

    plan = {c.name: c for c in harness.plan_step(STEP, manifest, aws)}
    assert len(harness.mutations(aws)) == writes  # plan is read-only
    assert set(plan) == {"db-connection", "slack-webhook"}  # a generated value is never reverted
    assert [d.field for d in plan["db-connection"].diffs] == ["value"] and plan["db-connection"].diffs[0].sensitive
    assert {d.field for d in plan["slack-webhook"].diffs} == {"description", "tags"}

    harness.run_step(STEP, manifest, aws)
    assert value_of(sm, "gamepulse/dev/db-connection") == DB_VALUE
    assert listed(sm)["gamepulse/dev/slack-webhook"]["Description"] == "Slack webhook for alert notifications"
    assert {t["Key"]: t["Value"] for t in listed(sm)["gamepulse/dev/slack-webhook"]["Tags"]}["project"] == "gamepulse"
    assert value_of(sm, "gamepulse/dev/grafana-admin") == "rotated-by-hand-value"
    assert generated != "rotated-by-hand-value"
    assert harness.plan_step(STEP, manifest, aws) == []


def test_a_tag_added_by_someone_else_survives_an_apply(manifest, aws, sm):
    harness.run_step(STEP, manifest, aws)
    arn = listed(sm)["gamepulse/dev/db-connection"]["ARN"]
    sm.tag_resource(SecretId=arn, Tags=[{"Key": "compliance:scope", "Value": "pci"}])
    assert harness.plan_step(STEP, manifest, aws) == []
    assert harness.run_step(STEP, manifest, aws)[0] == []
    assert {t["Key"]: t["Value"] for t in listed(sm)["gamepulse/dev/db-connection"]["Tags"]}["compliance:scope"] == "pci"


def lagging_list(aws) -> None:
    """The next ListSecrets answers with nothing, as AWS may for minutes after a change."""
    answered = []

    def stale(**kwargs):
        if not answered:
            answered.append(True)
            return AWSResponse("https://secretsmanager.us-east-1.amazonaws.com/", 200, {}, None), {"SecretList": []}
        return None

    aws.register("before-call.secrets-manager.ListSecrets", stale)


def test_versions_are_the_current_ones_when_list_secrets_still_shows_old_ones(manifest, aws, sm):
    """ListSecrets may lag minutes behind a write: the versions services compare come from reads
    that see the write (BatchGetSecretValue for values compared, DescribeSecret for the others)."""
    _, first, _ = harness.run_step(STEP, manifest, aws)
    stale = {item["Name"]: item for item in sm.list_secrets()["SecretList"]}
    sm.put_secret_value(SecretId="gamepulse/dev/grafana-admin", SecretString="rotated-by-hand-0123456789")
    sm.put_secret_value(SecretId="gamepulse/dev/db-connection", SecretString=DB_VALUE)  # same value, new version

    def as_before(**kwargs):
        return AWSResponse("https://secretsmanager.us-east-1.amazonaws.com/", 200, {}, None), {
            "SecretList": list(stale.values())}

    aws.register("before-call.secrets-manager.ListSecrets", as_before)
    _, outputs, _ = harness.run_step(STEP, manifest, aws)
    assert outputs["versions"] == {key: current_version(sm, f"gamepulse/dev/{key}") for key in first["versions"]}
    assert {key for key in first["versions"] if outputs["versions"][key] != first["versions"][key]} == \
        {"grafana-admin", "db-connection"}


def test_a_quick_re_apply_on_a_lagging_list_carries_on_with_our_existing_secrets(manifest, aws, sm, monkeypatch):
    first = harness.run_step(STEP, manifest, aws)[1]
    generated = value_of(sm, "gamepulse/dev/grafana-admin")
    sm.delete_secret(SecretId="gamepulse/dev/grafana-admin", RecoveryWindowInDays=7)
    monkeypatch.setenv("GAMEPULSE_DEV_DB_CONNECTION", "Host=db.test;Password=changed-a-minute-later")
    writes = len(harness.mutations(aws))

    lagging_list(aws)
    applied, outputs, _ = harness.run_step(STEP, manifest, aws, recovering=("PutSecretValue", "RestoreSecret"))
    assert [(c.action, c.name) for c in applied] == [
        ("create", "db-connection"), ("create", "grafana-admin"), ("create", "slack-webhook")]
    assert sorted(harness.mutations(aws)[writes:]) == sorted([  # the secrets are made together
        "secrets-manager:CreateSecret", "secrets-manager:PutSecretValue",  # the source differs: written
        "secrets-manager:CreateSecret", "secrets-manager:RestoreSecret",  # scheduled for deletion: restored
        "secrets-manager:CreateSecret"])  # same token and value: AWS answers the first create again
    assert sorted(listed(sm)) == NAMES and not any("DeletedDate" in s for s in listed(sm).values())
    assert value_of(sm, "gamepulse/dev/db-connection") == "Host=db.test;Password=changed-a-minute-later"
    assert value_of(sm, "gamepulse/dev/grafana-admin") == generated  # a generated value is kept
    assert (outputs["arns"], outputs["names"]) == (first["arns"], first["names"])
    changed = {key for key, version in outputs["versions"].items() if version != first["versions"][key]}
    assert changed == {"db-connection"}, "a new version where a value was written, and only there"
    assert outputs["versions"]["db-connection"] == current_version(sm, "gamepulse/dev/db-connection")
    assert harness.plan_step(STEP, manifest, aws) == []


def test_a_lagging_list_hiding_a_secret_scheduled_for_deletion_restores_it_as_aws_answers(manifest, aws, sm):
    harness.run_step(STEP, manifest, aws)
    sm.delete_secret(SecretId="gamepulse/dev/grafana-admin", RecoveryWindowInDays=7)

    def scheduled_for_deletion(params, **kwargs):
        # AWS (unlike moto) refuses to create a name scheduled for deletion with InvalidRequestException.
        if params["Name"] == "gamepulse/dev/grafana-admin":
            raise ClientError({"Error": {"Code": "InvalidRequestException",
                                         "Message": "a secret with this name is already scheduled for deletion"}},
                              "CreateSecret")

    lagging_list(aws)
    aws.register("before-parameter-build.secrets-manager.CreateSecret", scheduled_for_deletion)
    harness.run_step(STEP, manifest, aws, recovering=("RestoreSecret",))
    assert "DeletedDate" not in sm.describe_secret(SecretId="gamepulse/dev/grafana-admin")


def test_an_invalid_request_for_a_live_secret_is_not_taken_for_a_stale_list(manifest, aws, sm):
    def refused(**kwargs):
        raise ClientError({"Error": {"Code": "InvalidRequestException", "Message": "bad request"}}, "CreateSecret")

    harness.run_step(STEP, manifest, aws)
    lagging_list(aws)
    aws.register("before-call.secrets-manager.CreateSecret", refused)
    with pytest.raises(ClientError, match="bad request"):
        harness.run_step(STEP, manifest, aws)


def test_a_lagging_list_hiding_a_secret_of_someone_else_still_refuses_it(manifest, aws, sm):
    sm.create_secret(Name="gamepulse/dev/db-connection", SecretString="someone-elses-value")
    lagging_list(aws)
    with pytest.raises(OrchestratorError, match="secret gamepulse/dev/db-connection exists but does not carry"):
        harness.run_step(STEP, manifest, aws)
    assert value_of(sm, "gamepulse/dev/db-connection") == "someone-elses-value"
    assert "Tags" not in listed(sm)["gamepulse/dev/db-connection"]


def test_a_changed_environment_value_is_written_as_a_new_version(manifest, aws, sm, monkeypatch):
    harness.run_step(STEP, manifest, aws)
    monkeypatch.setenv("GAMEPULSE_DEV_SLACK_WEBHOOK", "https://hooks.slack.example/services/NEW/rotated-789")
    applied, _, _ = harness.run_step(STEP, manifest, aws)
    assert [(c.name, c.calls) for c in applied] == [("slack-webhook", ("secretsmanager:PutSecretValue",))]
    assert value_of(sm, "gamepulse/dev/slack-webhook") == "https://hooks.slack.example/services/NEW/rotated-789"
    versions = sm.list_secret_version_ids(SecretId="gamepulse/dev/slack-webhook")["Versions"]
    assert sorted(stage for v in versions for stage in v["VersionStages"]) == ["AWSCURRENT", "AWSPREVIOUS"]


def preflight_problems(manifest, aws) -> list[str]:
    """What `plan` reports before any change: the step's pre-flight problems (apply stops on them)."""
    from orchestrator.engine import Engine
    from orchestrator.graph import StepGraph
    (result,) = Engine(manifest, aws, StepGraph([STEP])).plan().values()
    assert result.status == "ok", result.error
    return result.problems


def test_a_missing_source_for_a_new_secret_is_a_pre_flight_problem_naming_secret_and_source(manifest, aws, tmp_path,
                                                                                             monkeypatch):
    monkeypatch.delenv("GAMEPULSE_DEV_SLACK_WEBHOOK")
    assert preflight_problems(manifest, aws) == [
        "secret gamepulse/dev/slack-webhook: environment variable GAMEPULSE_DEV_SLACK_WEBHOOK is not set or empty; "
        "set it to the secret's value (values are never read from the manifest)"]

    from_file = with_secrets(manifest, token=SecretSpec(source="file", path=str(tmp_path / "absent.txt")))
    [problem] = [p for p in preflight_problems(from_file, aws) if "token" in p]
    assert problem.startswith(f"secret gamepulse/dev/token: cannot read file {tmp_path}/absent.txt")
    assert harness.mutations(aws) == []


def test_every_missing_source_is_named_at_once_and_destroy_needs_none(manifest, aws, sm, monkeypatch):
    monkeypatch.delenv("GAMEPULSE_DEV_SLACK_WEBHOOK")
    monkeypatch.delenv("GAMEPULSE_DEV_DB_CONNECTION")
    problems = "\n".join(preflight_problems(manifest, aws))
    assert "GAMEPULSE_DEV_DB_CONNECTION is not set" in problems
    assert "GAMEPULSE_DEV_SLACK_WEBHOOK is not set" in problems

    monkeypatch.setenv("GAMEPULSE_DEV_DB_CONNECTION", "Host=x;Password=only-for-create")
    monkeypatch.setenv("GAMEPULSE_DEV_SLACK_WEBHOOK", "https://hooks.example/only-for-create")
    harness.run_step(STEP, manifest, aws)
    monkeypatch.delenv("GAMEPULSE_DEV_SLACK_WEBHOOK")
    monkeypatch.delenv("GAMEPULSE_DEV_DB_CONNECTION")
    with capture_logs() as logs:
        applied, _, _ = harness.run_step(STEP, manifest, aws, destroy=True, allow=("delete-secrets",))
    assert [c.action for c in applied] == ["delete"] * 3
    assert not [entry for entry in logs if entry["log_level"] == "warning"], "destroy must not read sources"


def test_a_missing_source_for_an_existing_secret_keeps_its_value_with_a_warning(manifest, aws, sm, monkeypatch):
    harness.run_step(STEP, manifest, aws)
    monkeypatch.delenv("GAMEPULSE_DEV_DB_CONNECTION")
    with capture_logs() as logs:
        assert harness.plan_step(STEP, manifest, aws) == []
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["secret"] == "gamepulse/dev/db-connection" and "GAMEPULSE_DEV_DB_CONNECTION" in warning["problem"]
    assert value_of(sm, "gamepulse/dev/db-connection") == DB_VALUE
    desired = STEP.desired(manifest, harness.inputs(STEP))
    assert STEP.remarks(desired, STEP.observe(harness_context(manifest, aws), desired)) == [
        "secret gamepulse/dev/db-connection: environment variable GAMEPULSE_DEV_DB_CONNECTION is not set; its "
        "current value is kept (the tasks keep reading it)"]


def test_a_file_source_is_read_without_its_trailing_newline(manifest, aws, sm, tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text("file-held-api-key-0123456789\n")
    with_file = with_secrets(manifest, **{"api-key": SecretSpec(source="file", path=str(key_file))})
    harness.run_step(STEP, with_file, aws)
    assert value_of(sm, "gamepulse/dev/api-key") == "file-held-api-key-0123456789"
    assert harness.plan_step(STEP, with_file, aws) == []


def test_a_secret_scheduled_for_deletion_is_restored(manifest, aws, sm):
    harness.run_step(STEP, manifest, aws)
    generated = value_of(sm, "gamepulse/dev/grafana-admin")
    for name in ("gamepulse/dev/db-connection", "gamepulse/dev/grafana-admin"):
        sm.delete_secret(SecretId=name, RecoveryWindowInDays=7)

    applied, _, _ = harness.run_step(STEP, manifest, aws)
    assert sorted((c.name, c.calls[0]) for c in applied) == [
        ("db-connection", "secretsmanager:RestoreSecret"), ("grafana-admin", "secretsmanager:RestoreSecret")]
    assert not any("DeletedDate" in s for s in listed(sm).values())
    assert value_of(sm, "gamepulse/dev/db-connection") == DB_VALUE
    assert value_of(sm, "gamepulse/dev/grafana-admin") == generated
    assert harness.plan_step(STEP, manifest, aws) == []


def test_a_secret_under_our_name_created_by_someone_else_is_refused(manifest, aws, sm):
    sm.create_secret(Name="gamepulse/dev/db-connection", SecretString="someone-elses-value")
    writes = len(harness.mutations(aws))
    with pytest.raises(OrchestratorError, match="secret gamepulse/dev/db-connection exists but does not carry this environment.s ownership tags"):
        harness.run_step(STEP, manifest, aws)
    assert value_of(sm, "gamepulse/dev/db-connection") == "someone-elses-value"
    assert len(harness.mutations(aws)) == writes


def test_destroy_schedules_deletion_of_ours_only_and_only_with_the_flag(manifest, aws, sm):
    harness.run_step(STEP, manifest, aws)
    sm.create_secret(Name="gamepulse/dev/hand-made", SecretString="keep-me-please")
    sm.create_secret(Name="gamepulse/dev/other-step", SecretString="keep-me-too",
                     Tags=[{"Key": "orchestrator:app", "Value": "gamepulse"},
                           {"Key": "orchestrator:env", "Value": "dev"},
                           {"Key": "orchestrator:step", "Value": "dashboards"}])

    refused, _, _ = harness.run_step(STEP, manifest, aws, destroy=True)
    assert refused == [] and not any("DeletedDate" in s for s in listed(sm).values())

    deleted, _, _ = harness.run_step(STEP, manifest, aws, destroy=True, allow={"delete-secrets"})
    assert sorted(c.name for c in deleted) == ["db-connection", "grafana-admin", "slack-webhook"]
    secrets = listed(sm)
    now = datetime.now(timezone.utc)
    for name in NAMES:
        assert 6 <= (secrets[name]["DeletedDate"] - now).days <= 7  # the manifest's 7-day recovery window
    assert "DeletedDate" not in secrets["gamepulse/dev/hand-made"]
    assert "DeletedDate" not in secrets["gamepulse/dev/other-step"]
    assert harness.run_step(STEP, manifest, aws, destroy=True, allow={"delete-secrets"})[0] == []


def test_a_secret_removed_from_the_manifest_is_deleted_only_with_the_flag(manifest, aws, sm):
    harness.run_step(STEP, manifest, aws)
    smaller = with_secrets(manifest, **{k: v for k, v in manifest.secrets.values.items() if k != "slack-webhook"})
    assert harness.run_step(STEP, smaller, aws)[0] == []
    assert "DeletedDate" not in listed(sm)["gamepulse/dev/slack-webhook"]
    applied, _, _ = harness.run_step(STEP, smaller, aws, allow={"delete-secrets"})
    assert [(c.action, c.name) for c in applied] == [("delete", "slack-webhook")]
    assert "DeletedDate" in listed(sm)["gamepulse/dev/slack-webhook"]


def test_a_run_killed_after_any_mutating_call_converges_without_duplicates(manifest, aws, monkeypatch):
    crashing, rerun = harness.forget_crash(aws), harness.forget_crash(aws)  # the killed process, the next one
    sm = rerun.client("secretsmanager")
    for n in (1, 2, 3):
        monkeypatch.setenv(f"GAMEPULSE_CRASH{n}_DB_CONNECTION", DB_VALUE)
        monkeypatch.setenv(f"GAMEPULSE_CRASH{n}_SLACK_WEBHOOK", SLACK_VALUE)
        env = manifest.model_copy(update={"environment": f"crash{n}"})  # a clean slate, cheaper than a reset
        names = [name.replace("/dev/", f"/crash{n}/") for name in NAMES]
        accepted = harness.crash_after(crashing, n)  # counts from now on
        with pytest.raises(harness.Crash):
            harness.run_step(STEP, env, crashing)
        created_before = {name: value_of(sm, name) for name in listed(sm) if name in names}
        # The secrets are made together: those in flight beside the n-th were made as well.
        assert accepted() >= n and len(created_before) == accepted()

        writes = len(harness.mutations(rerun))
        harness.run_step(STEP, env, rerun)
        assert sorted(name for name in listed(sm) if f"/crash{n}/" in name) == names  # exactly one of each
        for name, value in created_before.items():  # a generated value made before the crash is kept
            assert value_of(sm, name) == value
        assert harness.run_step(STEP, env, rerun)[0] == []
        assert len(harness.mutations(rerun)) - writes == 3 - accepted()


# -- secret values never leave Secrets Manager --------------------------------------------------


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    configure(fmt="json", stream=stream)
    yield stream
    structlog.reset_defaults()


def assert_nowhere(values, *texts):
    for value in values:
        for text in texts:
            assert value not in text


def test_no_value_in_plans_changes_records_outputs_or_logs(manifest, aws, sm, log_stream, monkeypatch):
    engine = harness.engine(manifest, aws, steps=[STEP], with_state=False)
    first = engine.apply()["secrets"]
    generated = value_of(sm, "gamepulse/dev/grafana-admin")
    monkeypatch.setenv("GAMEPULSE_DEV_DB_CONNECTION", "Host=db.test;Password=brand-new-password-42")
    planned = harness.plan_step(STEP, manifest, aws)
    second = engine.apply()["secrets"]

    assert first.status == second.status == "ok"
    assert [c.name for c in second.applied] == ["db-connection"]
    values = [DB_VALUE, SLACK_VALUE, generated, "Host=db.test;Password=brand-new-password-42"]
    changes = first.applied + second.applied + planned
    assert_nowhere(values, json.dumps([c.to_dict() for c in changes]), repr(changes),
                   json.dumps([c.record for c in changes]), json.dumps([first.outputs, second.outputs]))
    log = log_stream.getvalue()
    assert "create" in log and "update" in log  # the apply was logged …
    assert_nowhere(values, log)  # … without a value


def test_an_aws_error_quoting_the_value_is_redacted(manifest, aws, log_stream, monkeypatch):
    harness.run_step(STEP, manifest, aws)
    new_value = "Host=db.test;Password=leaky-password-77"
    monkeypatch.setenv("GAMEPULSE_DEV_DB_CONNECTION", new_value)

    def refuse(params, **kwargs):
        raise ClientError({"Error": {"Code": "InternalServiceError",
                                     "Message": f"could not store {json.loads(params['body'])['SecretString']}"}},
                          "PutSecretValue")

    aws.client("secretsmanager").meta.events.register("before-call.secrets-manager.PutSecretValue", refuse)
    result = harness.engine(manifest, aws, steps=[STEP], with_state=False).apply()["secrets"]

    assert result.status == "failed"
    assert result.error == f"PutSecretValue: InternalServiceError: could not store {SENSITIVE}"
    assert new_value not in log_stream.getvalue() and SENSITIVE in log_stream.getvalue()
