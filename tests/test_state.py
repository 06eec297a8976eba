"""The state table: how it is created, and how step and run records round-trip (moto in-process)."""
from __future__ import annotations

import threading
from collections import Counter
from decimal import Decimal
from email.utils import formatdate
from types import SimpleNamespace

import pytest

from orchestrator import lock, state
from orchestrator.aws import Aws
from orchestrator.errors import OrchestratorError
from orchestrator.log import redactor
from orchestrator.model import Change
from orchestrator.schema import StateSpec
from orchestrator.state import StateStore

TABLE = "gp-test-state"
T0 = 1_700_000_000.0


def make_manifest(env: str = "dev", deletion_protection: bool = False):
    """The few manifest fields the store reads."""
    return SimpleNamespace(app="gamepulse", environment=env, region="us-east-1", tags={"project": "gamepulse"},
                           state=StateSpec(table=TABLE, lock_lease_seconds=60, run_retention_days=90,
                                           deletion_protection=deletion_protection))


@pytest.fixture
def now(aws, monkeypatch):
    """AWS's clock, held still: DynamoDB's answers state `now.t` in their Date header (whole
    seconds, as AWS does) and this machine's monotonic clock reads it too, so time passes alike
    for AWS and every run; tests move it by assigning `now.t`."""
    clock = SimpleNamespace(t=T0)
    monkeypatch.setattr(lock, "ticks", lambda: clock.t)
    monkeypatch.setattr(state, "ticks", lambda: clock.t)
    stating_the_time(aws, clock)
    return clock


def stating_the_time(aws, clock):
    """DynamoDB's answers to `aws` state `clock.t` in their Date header."""
    def date(response_dict, **kwargs):
        response_dict["headers"]["Date"] = formatdate(clock.t, usegmt=True)

    aws.register("before-parse.dynamodb", date)
    return aws


@pytest.fixture
def store(aws, now):
    store = StateStore(aws, make_manifest())
    store.ensure_table()
    return store


@pytest.fixture
def lease(store):
    return store.acquire("run-1", "apply")


def writes(aws) -> int:
    return aws.ledger.count(mutating=True)


def raw_items(aws) -> list[dict]:
    return aws.client("dynamodb").scan(TableName=TABLE)["Items"]


def test_a_check_failing_beside_the_first_read_leaves_the_account_untouched(aws, now):
    """The CLI checks the credentials' account while the lock item is read: when the check
    refuses, the missing table is not created."""
    read = threading.Event()
    aws.register("after-call.dynamodb.GetItem", lambda **kwargs: read.set())

    def wrong_account():
        assert read.wait(timeout=10)  # the lock item's read, beside this check, found no table
        raise OrchestratorError("the credentials are for another account")

    store = StateStore(aws, make_manifest())
    with pytest.raises(OrchestratorError, match="another account"):
        store.ensure_table(meanwhile=wrong_account)
    assert writes(aws) == 0 and store.exists() is False
    checked = []
    store.ensure_table(meanwhile=lambda: checked.append(True))
    assert checked == [True] and store.exists() is True


def test_table_is_created_on_demand_encrypted_with_pitr_ttl_and_tags(aws, now):
    store = StateStore(aws, make_manifest())
    assert store.exists() is False
    assert writes(aws) == 0

    store.ensure_table()
    store.acquire("run-1", "apply")  # the run that created the table completes its settings

    ddb = aws.client("dynamodb")
    table = ddb.describe_table(TableName=TABLE)["Table"]
    assert table["TableStatus"] == "ACTIVE"
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["SSEDescription"]["Status"] == "ENABLED"
    assert table["SSEDescription"]["SSEType"] == "KMS"
    assert table["DeletionProtectionEnabled"] is False
    backups = ddb.describe_continuous_backups(TableName=TABLE)["ContinuousBackupsDescription"]
    assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
    ttl = ddb.describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")
    tags = {t["Key"]: t["Value"] for t in ddb.list_tags_of_resource(ResourceArn=table["TableArn"])["Tags"]}
    assert tags == {"orchestrator:app": "gamepulse", "orchestrator:env": "shared",
                    "orchestrator:step": "state", "project": "gamepulse"}
    assert store.exists() is True


def test_existing_table_is_only_read(store, aws):
    before = writes(aws)
    StateStore(aws, make_manifest("staging")).ensure_table()
    assert writes(aws) == before


def test_existing_table_gets_deletion_protection_when_an_environment_asks_and_keeps_it(store, aws):
    prod = StateStore(aws, make_manifest("prod", deletion_protection=True))
    prod.ensure_table()
    assert aws.client("dynamodb").describe_table(TableName=TABLE)["Table"]["DeletionProtectionEnabled"] is False, \
        "only `protect` (once an apply passed its pre-flight checks) turns it on"
    prod.protect()
    dev = StateStore(aws, make_manifest("dev", deletion_protection=False))
    dev.ensure_table()
    dev.protect()
    assert aws.client("dynamodb").describe_table(TableName=TABLE)["Table"]["DeletionProtectionEnabled"] is True


def test_step_records_round_trip_as_plain_numbers(store, lease, aws):
    store.record_change(lease, "vpc", Change("create", "vpc", "main", record={"cidr": "10.0.0.0/16", "weight": 0.5}))
    store.record_change(lease, "vpc", Change("create", "subnet", "a", record={"az": "us-east-1a", "tags": ("x",)}))
    store.record_change(lease, "vpc", Change("delete", "subnet", "a"))
    assert store.steps()["vpc"]["status"] == "applying"

    store.finish_step(lease, "vpc", status="ok", desired_hash="h1",
                      outputs={"vpc_id": "vpc-1", "ratio": 1.5, "count": 3}, changes=3)

    record = StateStore(aws, make_manifest()).steps()["vpc"]
    assert record["status"] == "ok"
    assert record["desired_hash"] == "h1"
    assert record["outputs"] == {"vpc_id": "vpc-1", "ratio": 1.5, "count": 3}
    assert type(record["outputs"]["count"]) is int and type(record["outputs"]["ratio"]) is float
    assert record["applied"] == {"vpc/main": {"cidr": "10.0.0.0/16", "weight": 0.5}}
    assert (record["changes"], record["last_run"]) == (3, "run-1")
    assert "error" not in record and record["updated_at"].startswith("2023-11-14T22:13:20")
    # Another environment's records are its own.
    assert StateStore(aws, make_manifest("staging")).steps() == {}


def test_record_change_keeps_earlier_records_without_steps_being_read_first(store, lease, aws):
    store.record_change(lease, "ecr", Change("create", "repo", "api", record={"scan": True}))
    fresh = StateStore(aws, make_manifest())
    fresh.record_change(lease, "ecr", Change("create", "repo", "web", record={"scan": False}))
    assert fresh.steps()["ecr"]["applied"] == {"repo/api": {"scan": True}, "repo/web": {"scan": False}}


def test_unchanged_finish_step_writes_nothing(store, lease, aws):
    store.finish_step(lease, "iam", status="ok", desired_hash="h", outputs={"arn": "a", "n": 1.25}, changes=2)
    next_run = StateStore(aws, make_manifest())
    next_run.steps()
    before = writes(aws)
    next_run.finish_step(lease, "iam", status="ok", desired_hash="h", outputs={"arn": "a", "n": 1.25}, changes=0)
    assert writes(aws) == before

    next_run.finish_step(lease, "iam", status="ok", desired_hash="h2", outputs={"arn": "a", "n": 1.25}, changes=0)
    assert writes(aws) == before + 1
    assert next_run.steps()["iam"]["desired_hash"] == "h2"


def test_failed_step_keeps_its_error_until_it_succeeds(store, lease):
    store.finish_step(lease, "alb", status="failed", desired_hash="h", outputs={}, changes=0, error="boom")
    assert store.steps()["alb"]["error"] == "boom"
    store.finish_step(lease, "alb", status="ok", desired_hash="h", outputs={}, changes=0)
    assert "error" not in store.steps()["alb"]


def test_forget_step_removes_its_record(store, lease):
    store.finish_step(lease, "efs", status="ok", desired_hash="h", outputs={}, changes=1)
    store.forget_step(lease, "efs")
    assert store.steps() == {}


def test_runs_are_listed_newest_first_and_expire_after_retention(store, now):
    for minute, command in enumerate(["apply", "plan-not-really", "destroy"]):
        now.t = T0 + 60 * minute
        lease = store.acquire("run-1", command, manifest_hash=f"m{minute}")  # the run record starts with the lock
        now.t += 7.5
        store.finish_run(lease, "ok", {"vpc": {"changes": minute, "seconds": 1.5, "status": "ok"}})

    runs = store.runs()
    assert [run["command"] for run in runs] == ["destroy", "plan-not-really", "apply"]
    newest = runs[0]
    assert newest["result"] == "ok" and newest["seconds"] == 7.5 and newest["run_id"] == "run-1"
    assert newest["summary"] == {"vpc": {"changes": 2, "seconds": 1.5, "status": "ok"}}
    assert newest["expires_at"] == int(T0 + 120 + 7.5) + 90 * 86400
    assert len(store.runs(limit=2)) == 2


def test_a_registered_secret_never_reaches_a_stored_item(store, aws):
    secret = "s3cr3t-Pa55word-for-state-test"
    redactor.register(secret)
    lease = store.acquire("run-1", "apply", manifest_hash="m")
    store.record_change(lease, "secrets", Change("update", "secret", "db", record={"conn": f"Password={secret}"}))
    store.finish_step(lease, "secrets", status="failed", desired_hash="h", outputs={"list": [secret]}, changes=1,
                      error=f"AccessDenied: {secret}")
    store.finish_run(lease, "failed", {"secrets": {"error": secret}})

    stored = repr(raw_items(aws))
    assert secret not in stored
    assert "(sensitive)" in stored


def test_floats_are_stored_as_numbers(store, lease, aws):
    store.finish_step(lease, "ecs", status="ok", desired_hash="h", outputs={"cpu": 0.25}, changes=1)
    item = next(i for i in raw_items(aws) if i["sk"]["S"] == "step#ecs")
    assert item["outputs"]["M"]["cpu"] == {"N": str(Decimal("0.25"))}


def state_calls_of_a_run(aws_factory) -> Counter:
    """The state-table calls of one unchanged apply, made as the command line makes them."""
    aws = aws_factory()
    store = StateStore(aws, make_manifest())
    store.ensure_table()
    lease = store.acquire("run-x", "apply", manifest_hash="m")
    store.steps()
    store.finish_run(lease, "ok", {})  # and frees the lock
    lease.release()  # as the command line does in any case: nothing more
    return Counter(call.operation for call in aws.ledger.calls if call.step == "state")


def test_an_unchanged_run_reads_the_table_twice_and_writes_twice_and_its_settings_once_a_day(aws, now):
    def new_process():
        return stating_the_time(Aws("us-east-1"), now)

    created = state_calls_of_a_run(new_process)
    assert created["CreateTable"] == created["UpdateContinuousBackups"] == created["UpdateTimeToLive"] == 1

    now.t += 3600
    assert state_calls_of_a_run(new_process) == Counter({"GetItem": 1, "Query": 1, "TransactWriteItems": 2})

    # Turned off by hand: the next run after a day notices and turns it on again.
    aws.client("dynamodb").update_continuous_backups(
        TableName=TABLE, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False})
    now.t += 86400
    a_day_later = state_calls_of_a_run(new_process)
    assert a_day_later["DescribeContinuousBackups"] == a_day_later["DescribeTimeToLive"] == 1
    assert a_day_later["UpdateContinuousBackups"] == 1 and a_day_later["UpdateTimeToLive"] == 0
    backups = aws.client("dynamodb").describe_continuous_backups(TableName=TABLE)["ContinuousBackupsDescription"]
    assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"


def test_a_run_interrupted_after_creating_the_table_is_completed_by_the_next(aws, now):
    StateStore(aws, make_manifest()).ensure_table()  # killed before taking the lock

    StateStore(aws, make_manifest()).acquire("run-2", "apply")

    ddb = aws.client("dynamodb")
    backups = ddb.describe_continuous_backups(TableName=TABLE)["ContinuousBackupsDescription"]
    assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
    assert ddb.describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"


def test_each_resource_record_is_an_item_of_its_own_so_no_step_nears_the_item_limit(store, lease, aws):
    body = "x" * 150_000  # three of these would not fit in one 400 KB item
    for name in ("api", "web", "worker"):
        store.record_change(lease, "ecs", Change("create", "task_definition", name, record={"body": body}))
    store.finish_step(lease, "ecs", status="ok", desired_hash="h", outputs={}, changes=3)

    record = StateStore(aws, make_manifest()).steps()["ecs"]
    assert record["applied"] == {f"task_definition/{name}": {"body": body} for name in ("api", "web", "worker")}
    assert record["status"] == "ok"


def test_a_record_too_large_for_an_item_fails_clearly_before_any_write(store, lease, aws):
    before = writes(aws)
    with pytest.raises(OrchestratorError, match=r"the record of dashboards dashboard/main is about 4\d\d KB, "
                                                r"over DynamoDB's 400 KB item limit"):
        store.record_change(lease, "dashboards", Change("create", "dashboard", "main", record={"body": "x" * 420_000}))
    assert writes(aws) == before


def test_record_change_keeps_what_apply_learned_over_the_plans_record(store, lease, aws):
    change = Change("create", "service", "api", record={"image": "api:1", "arn": None})
    store.record_change(lease, "ecs", change, {"image": "api:1", "arn": "arn:aws:ecs:us-east-1:1:service/api"})
    assert StateStore(aws, make_manifest()).steps()["ecs"]["applied"] == {
        "service/api": {"image": "api:1", "arn": "arn:aws:ecs:us-east-1:1:service/api"}}


def test_a_record_already_stored_is_not_written_again(store, lease, aws):
    change = Change("update", "repo", "api", record={"scan": True})
    store.record_change(lease, "ecr", change)
    before = writes(aws)
    store.record_change(lease, "ecr", change)
    assert writes(aws) == before


def test_forget_step_removes_every_resource_record(store, lease, aws):
    for index in range(120):  # more than one transaction can delete
        store.record_change(lease, "vpc", Change("create", "route", str(index), record={"n": index}))
    store.forget_step(lease, "vpc")
    assert [item["sk"]["S"] for item in raw_items(aws) if item["sk"]["S"].startswith("step#")] == []


def test_records_of_changes_accepted_together_are_written_together_in_as_few_transactions_as_allowed(
        store, lease, aws):
    changes = [Change("create", "route", str(index), record={"n": index}) for index in range(150)]
    changes += [Change("update", "route", "0", record={"n": "again"}), Change("delete", "route", "1")]
    before = writes(aws)
    store.record_changes(lease, "vpc", changes)
    # 149 records and the step's "applying" mark: two transactions of at most 99 writes (and the lock check).
    assert writes(aws) - before == 2
    applied = StateStore(aws, make_manifest()).steps()["vpc"]["applied"]
    assert len(applied) == 149 and applied["route/0"] == {"n": "again"} and "route/1" not in applied
    assert StateStore(aws, make_manifest()).steps()["vpc"]["status"] == "applying"


def test_a_settings_check_failing_once_the_lock_is_taken_ends_the_run_failed_frees_the_lock_and_raises_it(
        aws, now):
    from botocore.exceptions import ClientError

    def denied(**kwargs):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}},
                          "UpdateContinuousBackups")

    aws.register("before-call.dynamodb.UpdateContinuousBackups", denied)
    store = StateStore(aws, make_manifest())
    store.ensure_table()  # created by this run: its settings are due at once

    with pytest.raises(ClientError, match="AccessDeniedException"):
        store.acquire("run-1", "apply", manifest_hash="abc")

    (run,) = store.runs()
    assert (run["run_id"], run["result"]) == ("run-1", "failed")
    assert "UpdateContinuousBackups: AccessDeniedException: not allowed" in run["summary"]["_error"]
    assert store.lock_holder() is None, "the lock is freed at once, not when its lease ends"


def test_a_first_run_creates_the_table_with_one_describe_until_it_is_active(aws, now):
    StateStore(aws, make_manifest()).ensure_table()
    calls = Counter(call.operation for call in aws.ledger.calls)
    assert (calls["CreateTable"], calls["DescribeTable"]) == (1, 1)


def test_a_table_another_run_is_creating_is_waited_for_not_created_again(aws, now):
    """GetItem answers ResourceNotFoundException while a table is still being created: this
    run's CreateTable is then refused (ResourceInUseException), and it waits for that table."""
    from botocore.exceptions import ClientError
    StateStore(stating_the_time(Aws("us-east-1"), now), make_manifest()).ensure_table()  # the other run
    creating = {"reads": 1}

    def not_yet(**kwargs):
        if creating["reads"]:
            creating["reads"] -= 1
            raise ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "not found"}}, "GetItem")

    aws.register("before-call.dynamodb.GetItem", not_yet)
    store = StateStore(aws, make_manifest())
    store.ensure_table()
    lease = store.acquire("run-1", "apply")
    assert lease.fence == 1 and store.exists() and creating["reads"] == 0
    assert aws.client("dynamodb").list_tables()["TableNames"] == [TABLE]


def transaction_sizes(aws) -> list[int]:
    """The size in bytes of each TransactWriteItems request sent from now on."""
    sizes = []
    aws.register("before-call.dynamodb.TransactWriteItems", lambda params, **kwargs: sizes.append(len(params["body"])))
    return sizes


@pytest.mark.parametrize("how", ["record_changes", "finish_step"])
def test_large_records_are_written_in_transactions_of_at_most_4_mb(store, lease, aws, how):
    """DynamoDB refuses a transaction whose items add up to more than 4 MB: 30 records of 300 KB
    (each under the 400 KB item limit) are cut by size, not only at 99 writes."""
    body = "x" * 300_000
    changes = [Change("create", "dashboard", f"d{index}", record={"body": body}) for index in range(30)]
    sizes = transaction_sizes(aws)
    if how == "record_changes":
        store.record_changes(lease, "dashboards", changes)
    else:
        store.finish_step(lease, "dashboards", status="ok", desired_hash="h", outputs={}, changes=30, records=changes)

    # 9 MB of records: three transactions; the step's outcome then goes on its own.
    assert max(sizes) <= 4 * 1024 * 1024 and len(sizes) == (3 if how == "record_changes" else 4), sizes
    record = StateStore(aws, make_manifest()).steps()["dashboards"]
    assert record["applied"] == {f"dashboard/d{index}": {"body": body} for index in range(30)}
    assert record["status"] == ("applying" if how == "record_changes" else "ok")
