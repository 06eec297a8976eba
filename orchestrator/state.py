"""The state store: one DynamoDB table holding, per environment, the lock, the step records and
one record per run (DESIGN.md, "State in DynamoDB"). This module holds the table and the
records; the lock, and AWS's time it is kept in, are orchestrator.lock.

Items share the partition key `app/env`; the sort key says what they are:

- `lock`: the environment's lease lock (orchestrator.lock). Every write below goes in one
  transaction with the check that the lock is still this run's (its "Fencing").
- `step#<name>`: the step's status, desired hash, outputs, last run, last error.
- `step#<name>#rec#<kind/name>`: the last-applied configuration of one resource of the step.
  One item per resource, so no step nears DynamoDB's 400 KB item limit however many or large
  its resources; a single record too large for an item fails with a clear message before
  DynamoDB refuses it. Records written together go in as few transactions as DynamoDB takes
  (at most 99 writes beside the lock check, and 4 MB of items).
- `run#<iso start time>#<run id>`: one run, deleted by TTL (`expires_at`) after the retention.

Every time the store writes is AWS's (`orchestrator.lock.AwsTime`), never this machine's.

**Reads.** An unchanged apply reads the state table twice and writes twice, in three round
trips one after another: it reads the lock item (which says whether the table exists, who
holds the lock, and in its answer AWS's time); then takes the lock and starts the run record
in one transaction while it reads the step records (consistently; why that is safe:
`Lock._try_acquire`); and at the end finishes the run record and frees the lock in one
transaction. A heartbeat renews the lease every third of a lease. DescribeTable is read only
when the table is missing (once it is created, by this run or another, until it is active) and,
beside the lock's read, when the environment asks for deletion protection (`protect`). Point-in-time
recovery and TTL, which DescribeTable does not show, are set when the table is created and
read again only when the lock item's `table_checked_at` says no run of this environment
verified them in the last day (or ever: a run interrupted while creating the table); the run
that verified them stamps that time when it releases the lock. A setting turned off by hand
is thus restored within a day.

**Retries.** Throttling and transient errors are retried by botocore's standard mode alone;
a fenced write cancelled by a concurrent transaction on the lock item (steps run at once) is
retried with `orchestrator.retry.eventually`, a lost lock never.

The table is shared by all environments of an app, so it carries the ownership tag
`orchestrator:env = shared`: an orphan sweep of one environment never matches it.
"""
from __future__ import annotations

import contextvars
import copy
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from botocore.exceptions import ClientError

from orchestrator import tags as tagging
from orchestrator import waiters
from orchestrator.aws import STATE, Aws, error_code
from orchestrator.errors import OrchestratorError
from orchestrator.items import fields, iso, plain, serialize, storable
from orchestrator.lock import AwsTime, Lease, Lock, conflicted, user
from orchestrator.log import get_logger
from orchestrator.model import Change, recordable
from orchestrator.retry import eventually

#: This machine's monotonic clock: it measures how long a run took.
ticks = time.monotonic

log = get_logger("orchestrator.state")

STEP_PREFIX = "step#"
RECORD_INFIX = "#rec#"
RUN_PREFIX = "run#"
TTL_ATTRIBUTE = "expires_at"  # run records only
SHARED_ENV = "shared"
#: Table settings verified by a run of the environment are trusted this long (AWS seconds).
SETTINGS_CHECK_SECONDS = 86400
#: DynamoDB's item size limit (bytes).
MAX_ITEM_BYTES = 400 * 1024
#: TransactWriteItems takes at most 100 actions; one is the lock check.
MAX_TRANSACTION_WRITES = 99
#: ... and items of at most 4 MB in all; this much of it is left for the lock check.
MAX_TRANSACTION_BYTES = 4 * 1024 * 1024
LOCK_CHECK_BYTES = 2 * 1024


class StateStore:
    """The state table, and the step and run records of one environment; the lock through
    `acquire`, `lock_holder` and `break_lock` (orchestrator.lock)."""

    def __init__(self, aws: Aws, manifest):
        self.aws = aws
        self.manifest = manifest
        self.table = manifest.state.table
        self.pk = f"{manifest.app}/{manifest.environment}"
        self.time = AwsTime()
        self.time.register(self.client)
        self._lock = Lock(self)
        # Step records as last read or written. The lock makes this run the only writer, so the
        # cache is authoritative: record_change/finish_step write without reading.
        self._steps: dict[str, dict] = {}
        self._steps_loaded = False
        self._steps_fresh = False  # read while the lock was taken: `steps()` uses them once
        self._cache_lock = threading.Lock()
        self._run: dict | None = None
        self._run_started = 0.0
        self._exists = False  # once seen, a table does not vanish during a run
        self._created = False
        self._protected = False

    @property
    def client(self):
        return self.aws.client("dynamodb", ledger_name=STATE)

    def aws_now(self) -> float:
        """AWS's time now (a lower bound), once DynamoDB has answered."""
        return self.time.earliest()

    # -- the table --------------------------------------------------------------------------------

    def ensure_table(self, meanwhile: Callable[[], None] | None = None) -> None:
        """Create the table on first use (the lock lives in it); afterwards one read, of the
        lock item (kept for taking the lock), and beside it DescribeTable when the environment
        asks for deletion protection. Point-in-time recovery and TTL are verified once the lock
        says when they last were (`check_settings`); deletion protection waits for the pre-flight
        checks (`protect`).

        `meanwhile()` runs while the lock item is read (the caller's check of the credentials'
        account: a read too); what the read found is acted on (the table created) only once it
        returned, and not at all when it raised."""
        table = in_background(self._describe) if self.manifest.state.deletion_protection else None
        looked = None
        if meanwhile is not None:
            looked = in_background(self._lock.look)
            meanwhile()
        try:
            self._lock.look() if looked is None else looked.result()
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":  # missing, or still being created
                raise
            self._created = self._create()  # False: it exists (another run is creating it)
            waiters.wait_until(f"state table {self.table}", self._is_active, log=log)
            if self._created:  # a table this run made holds no lock item: the taking's condition says so
                self._lock.seen_free()
            else:
                self._lock.look()
        described = table.result() if table is not None else None
        self._protected = bool(described and described.get("DeletionProtectionEnabled"))
        self._exists = True

    def protect(self) -> None:
        """Turn deletion protection on when the manifest asks for it and it is off. Only ever on
        (the table is shared: prod asking for it must not be undone by dev), and only once an
        apply passed its pre-flight checks: a run that stops there has changed nothing."""
        if self.manifest.state.deletion_protection and not self._protected:
            self.client.update_table(TableName=self.table, DeletionProtectionEnabled=True)
            self._protected = True
            log.info("state table deletion protection enabled", table=self.table)

    def exists(self) -> bool:
        """Read-only: plan and status must never create the table."""
        if not self._exists:
            self._exists = self._describe() is not None
        return self._exists

    def table_tags(self) -> dict[str, str]:
        return tagging.ownership_tags(self.manifest.app, SHARED_ENV, "state", self.manifest.tags)

    def _describe(self) -> dict | None:
        try:
            return self.client.describe_table(TableName=self.table)["Table"]
        except ClientError as error:
            if error_code(error) == "ResourceNotFoundException":
                return None
            raise

    def _create(self) -> bool:
        """Create the table; False when another run is creating it right now."""
        try:
            self.client.create_table(
                TableName=self.table,
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                      {"AttributeName": "sk", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                BillingMode="PAY_PER_REQUEST",
                SSESpecification={"Enabled": True, "SSEType": "KMS"},  # no key id: the AWS managed key
                DeletionProtectionEnabled=False,  # `protect`, once the pre-flight checks passed
                Tags=tagging.tag_list(self.table_tags()))
            log.info("state table created", table=self.table)
            return True
        except ClientError as error:
            if error_code(error) != "ResourceInUseException":  # another run is creating it right now
                raise
            return False

    def _is_active(self) -> tuple[bool, str]:
        table = self._describe()
        status = table["TableStatus"] if table else "CREATING"
        return status == "ACTIVE", status

    def check_settings(self, checked_at: float | None, now: float) -> bool:
        """Verify the settings DescribeTable does not show when they are due (the lock item says
        when a run last verified them: `checked_at`, AWS's time); True when this call did."""
        due = self._created or checked_at is None or now - checked_at > SETTINGS_CHECK_SECONDS
        if due:
            self._verify_settings()
        return due

    def _verify_settings(self) -> None:
        """Point-in-time recovery on, TTL on `expires_at`: set when the table is created, and
        completed here after a run was interrupted in between (or undone by hand)."""
        if self._created or not self._pitr_enabled():
            eventually(self.client.update_continuous_backups, TableName=self.table,
                       PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
                       retry_on=("ContinuousBackupsUnavailableException",))
        if self._created or not self._ttl_enabled():
            self.client.update_time_to_live(
                TableName=self.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE})

    def _pitr_enabled(self) -> bool:
        backups = self.client.describe_continuous_backups(TableName=self.table)["ContinuousBackupsDescription"]
        status = backups.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus")
        return status == "ENABLED"

    def _ttl_enabled(self) -> bool:
        ttl = self.client.describe_time_to_live(TableName=self.table)["TimeToLiveDescription"]
        return ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING") and ttl.get("AttributeName") == TTL_ATTRIBUTE

    # -- the lock (orchestrator.lock) ------------------------------------------------------------

    def acquire(self, run_id: str, command: str, wait_seconds: float = 0, manifest_hash: str | None = None) -> Lease:
        """Take the environment's lock, polling up to `wait_seconds` while another run holds it;
        with `manifest_hash`, start the run's record in the same transaction. Then verify the
        table's settings when due (`check_settings`): if that fails, the run's record ends
        "failed" and the lock is freed (`abandon`) before the error is raised."""
        def run_record(now: float) -> list[dict]:
            return [] if manifest_hash is None else [self._start_run(run_id, command, manifest_hash, now)]

        lease = self._lock.acquire(run_id, command, wait_seconds, also=run_record)
        try:
            if self.check_settings(lease.table_checked_before, lease.acquired_at):
                lease.table_checked_at = lease.acquired_at
        except BaseException as error:
            self.abandon(lease, error)
            raise
        return lease

    def abandon(self, lease: Lease, error: BaseException) -> None:
        """A run that fails before it could do anything under the lock it just took: its record
        (if it was started) ends "failed" with the error in one line, and the lock is freed, in
        one transaction. Never raises: the caller raises `error` itself, which the user sees."""
        from orchestrator.engine import describe_error
        if self._run is None:
            lease.release()
            return
        try:
            self.finish_run(lease, "failed", {"_error": recordable(describe_error(error))})
        except Exception as failure:  # the lock lost meanwhile: its new holder closes the record
            log.warning("run record not finished", run_id=lease.run_id, error=str(failure))

    def lock_holder(self) -> dict | None:
        return self._lock.holder()

    def break_lock(self) -> dict | None:
        """Free the lock whoever holds it (`unlock --force`); returns the holder removed. The
        item and its fence stay."""
        return self._lock.break_()

    # -- reading records --------------------------------------------------------------------------

    def steps(self) -> dict[str, dict]:
        """Every step record of the environment, by step name, each with its resources'
        last-applied records under "applied"; none while the table does not exist (a plan
        before the first apply: one read either way)."""
        with self._cache_lock:
            if self._steps_fresh:
                self._steps_fresh = False
                return copy.deepcopy(self._steps)
        try:
            records = self._query_steps(STEP_PREFIX)
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":
                raise
            records = {}
        with self._cache_lock:
            self._steps, self._steps_loaded = records, True
        return copy.deepcopy(records)

    def load_steps_meanwhile(self) -> Future:
        """Start reading every step record in the background (while the lock is being taken:
        `Lock._try_acquire` says when that is safe); `adopt_steps` keeps what it read."""
        return in_background(self._query_steps, STEP_PREFIX)

    def adopt_steps(self, records: Future) -> None:
        """Keep the step records read by `load_steps_meanwhile` as this run's, for the next
        `steps()`; a failed read is left for `steps()` to make again."""
        try:
            found = records.result()
        except Exception:  # read again by steps(), which reports it
            return
        with self._cache_lock:
            self._steps, self._steps_loaded, self._steps_fresh = found, True, True

    def runs(self, limit: int = 10) -> list[dict]:
        """The latest run records, newest first (sort keys begin with the start time)."""
        response = self.client.query(
            TableName=self.table, KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues=serialize({":pk": self.pk, ":prefix": RUN_PREFIX}),
            ScanIndexForward=False, Limit=limit)
        return [fields(item) for item in response["Items"]]

    def close_abandoned_run(self, run_id: str, *, taking_over: bool = False) -> None:
        """A run whose lock was taken over or broken will never finish its record: say so, so
        that `status` does not show it running for ever. Only a record still "running" changes;
        `taking_over`: never this run's own (started as the lock was taken; a restarted run may
        reuse its id)."""
        own = (self._run or {}).get("started_at") if taking_over else None
        for run in self.runs(limit=20):
            if run.get("run_id") != run_id or run.get("started_at") == own:
                continue
            try:
                self.client.update_item(
                    TableName=self.table, Key=self.key(f"{RUN_PREFIX}{run['started_at']}#{run_id}"),
                    UpdateExpression="SET #result = :abandoned, finished_at = :now",
                    ConditionExpression="#result = :running", ExpressionAttributeNames={"#result": "result"},
                    ExpressionAttributeValues=serialize({":abandoned": "abandoned", ":running": "running",
                                                         ":now": iso(self.time.earliest())}))
            except ClientError as error:
                if error_code(error) != "ConditionalCheckFailedException":
                    raise
            return

    def _query_steps(self, prefix: str) -> dict[str, dict]:
        records: dict[str, dict] = {}
        for page in self.client.get_paginator("query").paginate(
                TableName=self.table, ConsistentRead=True,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
                ExpressionAttributeValues=serialize({":pk": self.pk, ":prefix": prefix})):
            for item in page["Items"]:
                step, _, key = item["sk"]["S"][len(STEP_PREFIX):].partition(RECORD_INFIX)
                record = records.setdefault(step, {"step": step, "applied": {}})
                if key:
                    record["applied"][key] = fields(item)["record"]
                else:
                    record.update(fields(item))
        return records

    def _current(self, step: str) -> dict:
        """A copy of the step's record as stored (read once if `steps()` was not called)."""
        with self._cache_lock:
            if step not in self._steps and not self._steps_loaded:
                found = self._query_steps(STEP_PREFIX + step).get(step)  # also reads steps named step*: few
                if found:
                    self._steps[step] = found
            return copy.deepcopy(self._steps.get(step, {"step": step, "applied": {}}))

    # -- fenced writes ----------------------------------------------------------------------------

    def record_change(self, lease: Lease, step: str, change: Change, record: dict | None = None) -> None:
        """`record_changes` of one change. `record`, when given, is the last-applied
        configuration to keep instead of `change.record`."""
        self.record_changes(lease, step, [change if record is None else _with_record(change, record)])

    def record_changes(self, lease: Lease, step: str, changes: list[Change]) -> None:
        """Called once AWS accepted the changes (the engine passes those accepted one after
        another with no wait between them), so a crash later still leaves their records.

        Writes only what is new, in as few transactions as DynamoDB allows (`_transactions`: 99
        writes and 4 MB each, with the lock check): the step's first change in this run marks it
        "applying" (so `status` never shows a half-changed step as ok), and each resource's record
        is written or deleted if it changed. The step's own item goes in the first transaction."""
        current = self._current(step)
        ordered = self._record_writes(current, step, changes)
        if current.get("status") != "applying" or current.get("last_run") != lease.run_id:
            current.update(status="applying", last_run=lease.run_id, updated_at=iso(self.time.earliest()))
            ordered.insert(0, self._step_put(current))
        for writes in _transactions(ordered):
            self._fenced(lease, *writes)
        if ordered:
            self._cache(current)

    def _record_writes(self, current: dict, step: str, changes) -> list[dict]:
        """The writes of the records of `changes` that differ from what `current` (the step's
        record as stored) holds, which is updated to them."""
        applied = current["applied"]
        writes: dict[str, dict] = {}  # by sort key: a resource changed twice is written once, as it ends
        for change in changes:
            sk = _record_sk(step, change.key)
            if change.action == "delete":
                if change.key in applied:
                    del applied[change.key]
                    writes[sk] = {"Delete": {"TableName": self.table, "Key": self.key(sk)}}
            elif change.record is not None:
                value = plain(storable(change.record))
                if applied.get(change.key) != value:
                    applied[change.key] = value
                    writes[sk] = self._put_op({"sk": sk, "step": step, "key": change.key, "record": value},
                                              f"the record of {step} {change.key}")
        return list(writes.values())

    def finish_step(self, lease: Lease, step: str, *, status: str, desired_hash: str, outputs: dict,
                    changes: int, error: str | None = None, records=()) -> None:
        """Write the step's outcome, unless it is exactly what is stored already: an unchanged
        apply writes nothing. `records`: changes AWS accepted that are not recorded yet, written
        in the same transaction (before it, with the "applying" mark, when they are too many or
        too large for one)."""
        current = self._current(step)
        writes = self._record_writes(current, step, records)
        outputs = plain(storable(outputs))
        unchanged = (status == "ok" and changes == 0 and error is None and current.get("status") == "ok"
                     and current.get("desired_hash") == desired_hash and current.get("outputs") == outputs
                     and not writes)
        if unchanged:
            return
        current.update(status=status, desired_hash=desired_hash, outputs=outputs, changes=changes,
                       last_run=lease.run_id, updated_at=iso(self.time.earliest()))
        current.pop("error", None)
        if error is not None:
            current["error"] = error
        outcome = self._step_put(current)
        if len(_transactions([*writes, outcome])) > 1:
            self.record_changes(lease, step, list(records))
            writes = []
        self._fenced(lease, *writes, outcome)
        self._cache(current)

    def forget_step(self, lease: Lease, step: str) -> None:
        """Remove the step's record and its resources' records once destroy has removed what it
        owned; the step's own item goes last, so an interrupted forget leaves a step record."""
        current = self._current(step)
        keys = [_record_sk(step, key) for key in current["applied"]] + [STEP_PREFIX + step]
        for deletes in _transactions([{"Delete": {"TableName": self.table, "Key": self.key(sk)}} for sk in keys]):
            self._fenced(lease, *deletes)
        with self._cache_lock:
            self._steps.pop(step, None)

    def _start_run(self, run_id: str, command: str, manifest_hash: str, now: float) -> dict:
        """The write of the run's record, made as the lock is taken (`acquire`)."""
        self._run_started = ticks()
        started = iso(now)
        self._run = {"sk": f"{RUN_PREFIX}{started}#{run_id}", "run_id": run_id, "command": command,
                     "manifest_hash": manifest_hash, "user": user(), "host": socket.gethostname(),
                     "started_at": started, "result": "running", "expires_at": self._run_expiry()}
        return self._put_op(self._run, "the run record")

    def finish_run(self, lease: Lease, result: str, summary: dict) -> None:
        """Finish the run's record and free the lock, in one transaction (`Lease.release`);
        raises LockLost when the lock turned out not to be this run's any more."""
        if self._run is None:
            raise RuntimeError("finish_run called before the run was started (acquire with its manifest hash)")
        self._run.update(result=result, summary=summary, finished_at=iso(self.time.earliest()),
                         seconds=round(ticks() - self._run_started, 2), expires_at=self._run_expiry())
        lease.check()
        lease.release(self._put_op(self._run, "the run record"))
        lease.check()

    def _run_expiry(self) -> int:
        return int(self.time.earliest()) + self.manifest.state.run_retention_days * 86400

    def _step_put(self, record: dict) -> dict:
        """The write of a step's own item (its resources' records are items of their own)."""
        step = record["step"]
        item = {key: value for key, value in record.items() if key != "applied"}
        return self._put_op({**item, "sk": STEP_PREFIX + step}, f"the record of step {step}")

    def _cache(self, record: dict) -> None:
        with self._cache_lock:
            self._steps[record["step"]] = record

    def _put_op(self, record: dict, what: str) -> dict:
        """A Put of one record (which carries its `sk`), refused here if DynamoDB would refuse it
        for its size."""
        item = serialize({**record, "pk": self.pk})
        size = _item_size(item)
        if size > MAX_ITEM_BYTES:
            raise OrchestratorError(
                f"{what} is about {size // 1024} KB, over DynamoDB's {MAX_ITEM_BYTES // 1024} KB item limit, "
                f"so the state table cannot keep it; nothing was written to the state table for it")
        return {"Put": {"TableName": self.table, "Item": item}}

    def _fenced(self, lease: Lease, *writes: dict) -> None:
        """Write `writes` in one transaction with a check that the lock is still this lease's.
        Concurrent steps each check the lock item, and DynamoDB cancels one of two overlapping
        transactions (TransactionConflict): that one is retried with the one retry policy."""
        lease.check()
        try:
            eventually(self.client.transact_write_items, TransactItems=[lease.condition_check(), *writes],
                       retry_if=conflicted)
        except ClientError as error:
            reasons = error.response.get("CancellationReasons", [])
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                lease.lose(fields(reasons[0].get("Item")))
                lease.check()
            raise

    def key(self, sk: str) -> dict:
        """The key of this environment's item with sort key `sk`."""
        return {"pk": {"S": self.pk}, "sk": {"S": sk}}


def in_background(call, *args) -> Future:
    """`call(*args)` on a thread of its own (with this thread's context: the step it is logged
    under); the future holds its result or exception."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state")
    future = pool.submit(contextvars.copy_context().run, call, *args)
    pool.shutdown(wait=False)
    return future


def _with_record(change: Change, record: dict) -> Change:
    return dataclasses.replace(change, record=record)


def _record_sk(step: str, key: str) -> str:
    return f"{STEP_PREFIX}{step}{RECORD_INFIX}{key}"


def _transactions(writes: list[dict]) -> list[list[dict]]:
    """`writes`, in order, cut into as few transactions as DynamoDB takes beside the lock check:
    at most MAX_TRANSACTION_WRITES actions, and items of at most MAX_TRANSACTION_BYTES in all,
    each write measured by its whole action's JSON wire form (more than the item's size as
    DynamoDB counts it). A few writes need no measuring: each item is at most MAX_ITEM_BYTES
    (`_put_op` refuses more), so they fit whatever their size."""
    if len(writes) * (MAX_ITEM_BYTES + 1024) <= MAX_TRANSACTION_BYTES - LOCK_CHECK_BYTES:
        return [writes] if writes else []
    batches: list[list[dict]] = []
    size = 0
    for write in writes:
        weight = _item_size(write)
        if not batches or len(batches[-1]) == MAX_TRANSACTION_WRITES or \
                size + weight > MAX_TRANSACTION_BYTES - LOCK_CHECK_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(write)
        size += weight
    return batches


def _item_size(item: dict) -> int:
    """An upper bound of the item's size as DynamoDB counts it: its JSON wire form is larger
    (type tags, quotes) than names and values in UTF-8."""
    return len(json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode())


def permissions(table: str, scope) -> list[dict]:
    """The deploy role's statements for the state store: this one table (`Scope` of
    orchestrator.permissions). TransactWriteItems is authorised by the item actions it holds."""
    from orchestrator.permissions import allow
    return [allow("StateTable", [f"dynamodb:{action}" for action in (
        "CreateTable", "DescribeTable", "UpdateTable", "TagResource", "DescribeContinuousBackups",
        "UpdateContinuousBackups", "DescribeTimeToLive", "UpdateTimeToLive", "GetItem", "Query", "PutItem",
        "UpdateItem", "DeleteItem", "ConditionCheckItem")], scope.arn("dynamodb", f"table/{table}"))]
