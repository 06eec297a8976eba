"""The state store: one DynamoDB table holding, per environment, the lock, the step records and
one record per run (DESIGN.md, "State in DynamoDB").

Items share the partition key `app/env`; the sort key says what they are:

- `lock`: the holder (run id, user, host, pid, command, `acquired_at`, `lease_until`), the
  fencing counter `fence`, and `table_checked_at` (see "Reads" below). It never carries the
  table's TTL attribute: TTL would delete a stale lock item, and its fence with it.
- `step#<name>`: the step's status, desired hash, outputs, last run, last error.
- `step#<name>#rec#<kind/name>`: the last-applied configuration of one resource of the step.
  One item per resource, so no step nears DynamoDB's 400 KB item limit however many or large
  its resources; a single record too large for an item fails with a clear message before
  DynamoDB refuses it.
- `run#<iso start time>#<run id>`: one run, deleted by TTL (`expires_at`) after the retention.

**Time is AWS's.** Every time the store writes is the time DynamoDB states in the `Date` header
of its answers, carried forward between answers by this machine's monotonic clock (`AwsTime`);
no machine's wall clock is ever read. The holder writes `lease_until` = AWS's time + the lease
when it takes the lock and at each heartbeat; a taker's conditional write succeeds only if
`lease_until` is before the taker's lower bound of AWS's time now. Both sides read the one
clock, so a runner whose own clock is hours ahead never takes a live lock, and a lock whose
holder died more than a lease ago is taken on the first try. (The other clock-free design, the
record-version wait of Amazon's DynamoDB lock client, must watch a lock unchanged for a full
lease before taking it, even one whose holder died an hour ago.) `Date` has whole seconds and
is stamped while a request is in flight, so the bounds are a second plus one round trip apart:
a taker uses the lower one, and the holder stops changing AWS a margin before its lease ends
by the upper one.

**Fencing.** Every write a run makes under the lock goes in one transaction with a check that
the lock item still names this run and its fence number. The fence only grows: taking the lock
adds one, releasing and `unlock --force` remove the holder but keep the item. A run whose lease
expired and was taken over can never overwrite what the newer run wrote.

**Reads.** An unchanged apply reads the state table twice and writes four times (take the
lock, start and finish the run record, release), plus a heartbeat per third of a lease.
DescribeTable is read every run: it says whether the table exists and is active, whether
deletion protection is on, and its answer gives AWS's time before the lock is written. The
step records are read every run, consistently. Point-in-time recovery and TTL, which
DescribeTable does not show, are set when the table is created and read again only when the
lock item's `table_checked_at` says no run of this environment verified them in the last day
(or ever: a run interrupted while creating the table); the run that verified them stamps that
time when it releases the lock. A setting turned off by hand is thus restored within a day.

**Retries.** Throttling and transient errors are retried by botocore's standard mode alone;
a fenced write cancelled by a concurrent transaction on the lock item (steps run at once) is
retried with `orchestrator.retry.eventually`, a lost lock never.

The table is shared by all environments of an app, so it carries the ownership tag
`orchestrator:env = shared`: an orphan sweep of one environment never matches it.
"""
from __future__ import annotations

import copy
import getpass
import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

import structlog
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from orchestrator import tags as tagging
from orchestrator import waiters
from orchestrator.aws import STATE, Aws, error_code
from orchestrator.errors import LockHeld, LockLost, OrchestratorError
from orchestrator.log import redactor
from orchestrator.model import Change
from orchestrator.retry import eventually

#: This machine's monotonic clock: it only measures time since DynamoDB's last answer.
ticks = time.monotonic

log = structlog.get_logger("orchestrator.state")

LOCK = "lock"
STEP_PREFIX = "step#"
RECORD_INFIX = "#rec#"
#: In a step record as read: what an earlier release stored differently, moved on the next write
#: (old record key, or INLINE + key for a record kept inside the step item → current key).
MIGRATE = "_migrate"
INLINE = "inline:"
RUN_PREFIX = "run#"
TTL_ATTRIBUTE = "expires_at"  # run records only
SHARED_ENV = "shared"
#: How often a run waiting for the lock (`wait_seconds`) looks again.
POLL_SECONDS = 2.0
#: While it waits, a run says so once, then again this often (the polls between are silent).
WAIT_REPORT_SECONDS = 30.0
#: Table settings verified by a run of the environment are trusted this long (AWS seconds).
SETTINGS_CHECK_SECONDS = 86400
#: DynamoDB's item size limit (bytes).
MAX_ITEM_BYTES = 400 * 1024
#: TransactWriteItems takes at most 100 actions; one is the lock check.
MAX_TRANSACTION_WRITES = 99
HOLDER_FIELDS = ("run_id", "user", "host", "pid", "command", "acquired_at", "lease_until")

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
_SENT = "orchestrator_sent_at"


class AwsTime:
    """AWS's time as DynamoDB states it in the `Date` header of each answer, carried forward by
    this machine's monotonic clock (never its wall clock, which may be off by hours).

    `Date` has whole seconds and was stamped between the request's sending and its answer's
    arrival, so AWS's time now lies between `earliest()` and `latest()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: tuple[float, float, float] | None = None  # (AWS date, sent, received) in ticks

    def register(self, client) -> None:
        client.meta.events.register("before-call.dynamodb", self._sending)
        client.meta.events.register("after-call.dynamodb", self._answered)

    def _sending(self, context: dict, **kwargs) -> None:
        context[_SENT] = ticks()

    def _answered(self, http_response, context: dict, **kwargs) -> None:
        date = _http_date(http_response.headers.get("Date")) if http_response is not None else None
        if date is None or _SENT not in context:
            return
        seen = (date, context[_SENT], ticks())
        with self._lock:
            if self._seen is None or seen[2] >= self._seen[2]:
                self._seen = seen

    @property
    def known(self) -> bool:
        return self._seen is not None

    def earliest(self) -> float:
        """AWS's time now is at least this."""
        date, _, received = self._last()
        return date + (ticks() - received)

    def latest(self) -> float:
        """AWS's time now is at most this."""
        date, sent, _ = self._last()
        return date + 1 + (ticks() - sent)

    def _last(self) -> tuple[float, float, float]:
        with self._lock:
            if self._seen is None:
                raise RuntimeError("AWS's time is not known before DynamoDB's first answer")
            return self._seen


def _http_date(value: str | None) -> float | None:
    """Seconds since the epoch of an HTTP `Date` header (always GMT), or None."""
    try:
        moment = parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None
    return moment.replace(tzinfo=timezone.utc).timestamp() if moment else None


class StateStore:
    """The lock, step records and run records of one environment."""

    def __init__(self, aws: Aws, manifest):
        self.aws = aws
        self.manifest = manifest
        self.table = manifest.state.table
        self.pk = f"{manifest.app}/{manifest.environment}"
        self._lock_seconds = manifest.state.lock_lease_seconds
        self.time = AwsTime()
        self.time.register(self.client)
        # Step records as last read or written. The lock makes this run the only writer, so the
        # cache is authoritative: record_change/finish_step write without reading.
        self._steps: dict[str, dict] = {}
        self._steps_loaded = False
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

    def ensure_table(self) -> None:
        """Create the table on first use (the lock lives in it); afterwards one read.
        Point-in-time recovery and TTL are verified once the lock says when they last were
        (`_verify_settings`); deletion protection waits for the pre-flight checks (`protect`)."""
        table = self._describe()
        if table is None:
            self._create()
            waiters.wait_until(f"state table {self.table}", self._is_active, log=log)
            self._created = True
        self._protected = bool(table and table.get("DeletionProtectionEnabled"))
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

    def _create(self) -> None:
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
        except ClientError as error:
            if error_code(error) != "ResourceInUseException":  # another run is creating it right now
                raise

    def _is_active(self) -> tuple[bool, str]:
        table = self._describe()
        status = table["TableStatus"] if table else "CREATING"
        return status == "ACTIVE", status

    def _settings_due(self, checked_at: float | None, now: float) -> bool:
        return self._created or checked_at is None or now - checked_at > SETTINGS_CHECK_SECONDS

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

    # -- the lock ---------------------------------------------------------------------------------

    def acquire(self, run_id: str, command: str, wait_seconds: float = 0) -> "Lease":
        """Take the environment's lock, polling up to `wait_seconds` while another run holds it."""
        waited, report_at = 0.0, 0.0
        while True:
            lease, holder = self._try_acquire(run_id, command)
            if lease is not None:
                return lease
            if waited >= wait_seconds:
                raise LockHeld(self._held_message(holder))
            if waited >= report_at:  # once at first, then every WAIT_REPORT_SECONDS: not every poll
                who = f"run {holder.get('run_id')} ({holder.get('user')}@{holder.get('host')}, {holder.get('command')})"
                log.info("waiting for the lock" if waited == 0 else "still waiting for the lock", held_by=who,
                         waited_s=round(waited), gives_up_in_s=round(wait_seconds - waited))
                report_at += WAIT_REPORT_SECONDS
            delay = min(POLL_SECONDS, wait_seconds - waited)
            waiters.sleep(delay)
            waited += delay

    def _try_acquire(self, run_id: str, command: str) -> tuple["Lease | None", dict]:
        """One conditional write: the lock is ours if free, or if its lease ended before AWS's
        time now (the lower bound: a lease is never cut short). Returns (lease, {}) on success,
        (None, holder) when another run holds it."""
        if not self.time.known:
            self.lock_holder()  # the lease is written in AWS's time: learn it first
        now = round(self.time.earliest(), 3)
        holder = {"run_id": run_id, "user": _user(), "host": socket.gethostname(), "pid": os.getpid(),
                  "command": command, "acquired_at": now, "lease_until": now + self._lock_seconds}
        names = {f"#{name}": name for name in [*holder, "fence"]} | {"#ttl": TTL_ATTRIBUTE}
        values = {f":{name}": value for name, value in holder.items()} | {":zero": 0, ":one": 1, ":now": now}
        update = ", ".join(f"#{name} = :{name}" for name in holder)
        try:
            response = self.client.update_item(
                TableName=self.table, Key=self._key(LOCK),
                # REMOVE: a lock item written by an earlier version carried the TTL attribute.
                UpdateExpression=f"SET {update}, #fence = if_not_exists(#fence, :zero) + :one REMOVE #ttl",
                ConditionExpression="attribute_not_exists(#lease_until) OR #lease_until < :now",
                ExpressionAttributeNames=names, ExpressionAttributeValues=_serialize(values),
                ReturnValues="ALL_OLD", ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except ClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise
            return None, _record(error.response.get("Item")) or {}
        previous = _record(response.get("Attributes"))
        fence = previous.get("fence", 0) + 1  # the update added one, atomically
        if previous.get("run_id"):
            log.warning("lock expired, taking over", from_run=previous["run_id"],
                        holder=f"{previous.get('user')}@{previous.get('host')}", fence=fence)
            self._close_abandoned_run(previous["run_id"])
        log.info("lock acquired", env=self.manifest.environment, run_id=run_id, fence=fence)
        lease = Lease(self, run_id, fence, holder["lease_until"])
        if self._settings_due(previous.get("table_checked_at"), now):
            try:
                self._verify_settings()
            except BaseException:
                lease.release()
                raise
            lease.table_checked_at = now
        return lease, {}

    def _held_message(self, holder: dict) -> str:
        now = self.time.earliest()
        env = self.manifest.environment
        acquired, until = holder.get("acquired_at", now), holder.get("lease_until", now)
        return (f"{env} is locked by run {holder.get('run_id')} ({holder.get('user')}@{holder.get('host')}, "
                f"pid {holder.get('pid')}, command {holder.get('command')!r}), acquired {_ago(now - acquired)} ago; "
                f"the lease expires in {_ago(until - now)} ({_iso(until)}, AWS's clock) unless that run renews it.\n"
                f"If that run is dead (a stale lock), wait for the lease to expire or run "
                f"`orchestrator unlock {env} --force`.")

    def lock_holder(self) -> dict | None:
        item = self.client.get_item(TableName=self.table, Key=self._key(LOCK), ConsistentRead=True).get("Item")
        holder = _record(item)
        return holder if holder.get("run_id") else None

    def break_lock(self) -> dict | None:
        """Free the lock whoever holds it (`unlock --force`); returns the holder removed. The
        item and its fence stay."""
        response = self.client.update_item(TableName=self.table, Key=self._key(LOCK), **_free_lock(),
                                           ReturnValues="ALL_OLD")
        holder = _record(response.get("Attributes"))
        holder = holder if holder.get("run_id") else None
        if holder:
            log.warning("lock broken", env=self.manifest.environment, run_id=holder.get("run_id"),
                        holder=f"{holder.get('user')}@{holder.get('host')}")
            self._close_abandoned_run(holder["run_id"])
        return holder

    def _close_abandoned_run(self, run_id: str) -> None:
        """A run whose lock was taken over or broken will never finish its record: say so, so
        that `status` does not show it running for ever. Only a record still "running" changes."""
        for run in self.runs(limit=20):
            if run.get("run_id") != run_id:
                continue
            try:
                self.client.update_item(
                    TableName=self.table, Key=self._key(f"{RUN_PREFIX}{run['started_at']}#{run_id}"),
                    UpdateExpression="SET #result = :abandoned, finished_at = :now",
                    ConditionExpression="#result = :running", ExpressionAttributeNames={"#result": "result"},
                    ExpressionAttributeValues=_serialize({":abandoned": "abandoned", ":running": "running",
                                                          ":now": _iso(self.time.earliest())}))
            except ClientError as error:
                if error_code(error) != "ConditionalCheckFailedException":
                    raise
            return

    def _lock_condition(self, lease: "Lease") -> dict:
        """Condition parameters that hold only while the lock item is still this lease's."""
        return {"ConditionExpression": "#fence = :fence AND #run_id = :run_id",
                "ExpressionAttributeNames": {"#fence": "fence", "#run_id": "run_id"},
                "ExpressionAttributeValues": _serialize({":fence": lease.fence, ":run_id": lease.run_id})}

    # -- reading records --------------------------------------------------------------------------

    def steps(self) -> dict[str, dict]:
        """Every step record of the environment, by step name, each with its resources'
        last-applied records under "applied"; none while the table does not exist (a plan
        before the first apply: one read either way)."""
        try:
            records = self._query_steps(STEP_PREFIX)
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":
                raise
            records = {}
        with self._cache_lock:
            self._steps, self._steps_loaded = records, True
        return copy.deepcopy(records)

    def runs(self, limit: int = 10) -> list[dict]:
        """The latest run records, newest first (sort keys begin with the start time)."""
        response = self.client.query(
            TableName=self.table, KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues=_serialize({":pk": self.pk, ":prefix": RUN_PREFIX}),
            ScanIndexForward=False, Limit=limit)
        return [_record(item) for item in response["Items"]]

    def _query_steps(self, prefix: str) -> dict[str, dict]:
        records: dict[str, dict] = {}
        for page in self.client.get_paginator("query").paginate(
                TableName=self.table, ConsistentRead=True,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
                ExpressionAttributeValues=_serialize({":pk": self.pk, ":prefix": prefix})):
            for item in page["Items"]:
                step, _, key = item["sk"]["S"][len(STEP_PREFIX):].partition(RECORD_INFIX)
                record = records.setdefault(step, {"step": step, "applied": {}})
                if key:
                    record["applied"][_current_key(key)] = _record(item)["record"]
                    if _current_key(key) != key:  # an earlier release's kind name: moved on the next write
                        record.setdefault(MIGRATE, {})[key] = _current_key(key)
                    continue
                fields = _record(item)
                inline = fields.pop("applied", None) or {}  # an earlier release kept records in the step item
                record.update(fields)
                for old_key, value in inline.items():
                    record["applied"].setdefault(_current_key(old_key), value)
                    record.setdefault(MIGRATE, {})[f"{INLINE}{old_key}"] = _current_key(old_key)
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

    def record_change(self, lease: "Lease", step: str, change: Change, record: dict | None = None) -> None:
        """Called as soon as AWS accepted one change, so a crash later still leaves its record.
        `record`, when given, is the last-applied configuration to keep instead of
        `change.record` (apply may learn values the plan did not know).

        Writes only what is new, in one transaction: the step's first change in this run marks
        it "applying" (so `status` never shows a half-changed step as ok), and the resource's
        record is written or deleted if it changed."""
        current = self._current(step)
        applied = current["applied"]
        kept = record if record is not None else change.record
        writes = []
        if change.action == "delete":
            if change.key in applied:
                del applied[change.key]
                writes.append({"Delete": {"TableName": self.table, "Key": self._key(_record_sk(step, change.key))}})
        elif kept is not None:
            value = _plain(_storable(kept))
            if applied.get(change.key) != value:
                applied[change.key] = value
                writes.append(self._put_op({"sk": _record_sk(step, change.key), "step": step, "key": change.key,
                                            "record": value}, f"the record of {step} {change.key}"))
        if current.get("status") != "applying" or current.get("last_run") != lease.run_id:
            current.update(status="applying", last_run=lease.run_id, updated_at=_iso(self.time.earliest()))
            writes += self._step_put(current)
        if writes:
            self._fenced(lease, *writes)
            self._cache(current)

    def finish_step(self, lease: "Lease", step: str, *, status: str, desired_hash: str, outputs: dict,
                    changes: int, error: str | None = None) -> None:
        """Write the step's outcome, unless it is exactly what is stored already: an unchanged
        apply writes nothing."""
        current = self._current(step)
        outputs = _plain(_storable(outputs))
        unchanged = (status == "ok" and changes == 0 and error is None and current.get("status") == "ok"
                     and current.get("desired_hash") == desired_hash and current.get("outputs") == outputs)
        if unchanged:
            return
        current.update(status=status, desired_hash=desired_hash, outputs=outputs, changes=changes,
                       last_run=lease.run_id, updated_at=_iso(self.time.earliest()))
        current.pop("error", None)
        if error is not None:
            current["error"] = error
        self._fenced(lease, *self._step_put(current))
        self._cache(current)

    def forget_step(self, lease: "Lease", step: str) -> None:
        """Remove the step's record and its resources' records once destroy has removed what it
        owned; the step's own item goes last, so an interrupted forget leaves a step record."""
        current = self._current(step)
        old = [key for key in current.get(MIGRATE, {}) if not key.startswith(INLINE)]
        keys = [_record_sk(step, key) for key in [*current["applied"], *old]] + [STEP_PREFIX + step]
        for start in range(0, len(keys), MAX_TRANSACTION_WRITES):
            self._fenced(lease, *({"Delete": {"TableName": self.table, "Key": self._key(sk)}}
                                  for sk in keys[start:start + MAX_TRANSACTION_WRITES]))
        with self._cache_lock:
            self._steps.pop(step, None)

    def start_run(self, lease: "Lease", command: str, manifest_hash: str) -> None:
        self._run_started = ticks()
        started = _iso(self.time.earliest())
        self._run = {"sk": f"{RUN_PREFIX}{started}#{lease.run_id}", "run_id": lease.run_id, "command": command,
                     "manifest_hash": manifest_hash, "user": _user(), "host": socket.gethostname(),
                     "started_at": started, "result": "running", "expires_at": self._run_expiry()}
        self._fenced(lease, self._put_op(self._run, "the run record"))

    def finish_run(self, lease: "Lease", result: str, summary: dict) -> None:
        if self._run is None:
            raise RuntimeError("finish_run called before start_run")
        self._run.update(result=result, summary=summary, finished_at=_iso(self.time.earliest()),
                         seconds=round(ticks() - self._run_started, 2), expires_at=self._run_expiry())
        self._fenced(lease, self._put_op(self._run, "the run record"))

    def _run_expiry(self) -> int:
        return int(self.time.earliest()) + self.manifest.state.run_retention_days * 86400

    def _step_put(self, record: dict) -> list[dict]:
        """The write of a step's own item, and of what an earlier release left to migrate: records
        kept inside the step item, or under an old kind name, become record items of their own."""
        step = record["step"]
        item = {key: value for key, value in record.items() if key not in ("applied", MIGRATE)}
        writes = [self._put_op({**item, "sk": STEP_PREFIX + step}, f"the record of step {step}")]
        for old, key in (record.pop(MIGRATE, None) or {}).items():
            if key in record["applied"]:
                writes.append(self._put_op({"sk": _record_sk(step, key), "step": step, "key": key,
                                            "record": record["applied"][key]}, f"the record of {step} {key}"))
            if not old.startswith(INLINE):
                writes.append({"Delete": {"TableName": self.table, "Key": self._key(_record_sk(step, old))}})
        return writes

    def _cache(self, record: dict) -> None:
        with self._cache_lock:
            self._steps[record["step"]] = record

    def _put_op(self, record: dict, what: str) -> dict:
        """A Put of one record (which carries its `sk`), refused here if DynamoDB would refuse it
        for its size."""
        item = _serialize(_storable({**record, "pk": self.pk}))
        size = _item_size(item)
        if size > MAX_ITEM_BYTES:
            raise OrchestratorError(
                f"{what} is about {size // 1024} KB, over DynamoDB's {MAX_ITEM_BYTES // 1024} KB item limit, "
                f"so the state table cannot keep it; nothing was written to the state table for it")
        return {"Put": {"TableName": self.table, "Item": item}}

    def _fenced(self, lease: "Lease", *writes: dict) -> None:
        """Write `writes` in one transaction with a check that the lock is still this lease's.
        Concurrent steps each check the lock item, and DynamoDB cancels one of two overlapping
        transactions (TransactionConflict): that one is retried with the one retry policy."""
        lease.check()
        check = {"ConditionCheck": {"TableName": self.table, "Key": self._key(LOCK),
                                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD", **self._lock_condition(lease)}}
        try:
            eventually(self.client.transact_write_items, TransactItems=[check, *writes], retry_if=_conflicted)
        except ClientError as error:
            reasons = error.response.get("CancellationReasons", [])
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                lease.lose(_record(reasons[0].get("Item")))
                lease.check()
            raise

    def _key(self, sk: str) -> dict:
        return {"pk": {"S": self.pk}, "sk": {"S": sk}}


class Lease:
    """This run's hold on the lock: renewed by a heartbeat, checked before every write."""

    def __init__(self, store: StateStore, run_id: str, fence: int, lease_until: float):
        self.store = store
        self.run_id = run_id
        self.fence = fence
        self.lease_until = lease_until  # AWS's time
        self.table_checked_at: float | None = None  # set when this run verified the table's settings
        self.lost = False
        self.taken_by: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start_heartbeat(self) -> None:
        interval = self.store.manifest.state.lock_lease_seconds / 3
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True,
                                        name=f"lock-heartbeat-{self.run_id}")
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval) and self.renew():
            pass

    def renew(self) -> bool:
        """Push the lease's end one lease past AWS's time now if the lock is still ours. A failed
        call (network, throttling) is retried at the next beat, well before the lease runs out;
        a lock that is no longer ours marks the lease lost and returns False."""
        until = round(self.store.time.earliest(), 3) + self.store.manifest.state.lock_lease_seconds
        condition = self.store._lock_condition(self)
        condition["ExpressionAttributeNames"]["#lease_until"] = "lease_until"
        condition["ExpressionAttributeValues"][":lease_until"] = _serializer.serialize(_storable(until))
        try:
            eventually(self.store.client.update_item, TableName=self.store.table, Key=self.store._key(LOCK),
                       UpdateExpression="SET #lease_until = :lease_until",
                       ReturnValuesOnConditionCheckFailure="ALL_OLD", retry_on=("TransactionConflictException",),
                       **condition)
        except (ClientError, BotoCoreError) as error:
            if error_code(error) != "ConditionalCheckFailedException":
                log.warning("lock renewal failed; retrying at the next beat", error=str(error))
                return True
            self.lose(_record(error.response.get("Item")))
            return False
        self.lease_until = until
        return True

    def lose(self, holder: dict) -> None:
        """The lock item no longer names this lease: `holder` is whoever it names now (or {})."""
        self.lost = True
        self.taken_by = holder if holder and holder.get("run_id") else None  # a freed lock keeps its fence
        log.error("lock lost", run_id=self.run_id, taken_by=holder.get("run_id") if holder else None)

    def check_current(self) -> None:
        """Before changing AWS: raise LockLost unless the lock is ours and its lease is not
        about to end unrenewed (the heartbeat could not reach DynamoDB), by the latest AWS's
        time can be now."""
        self.check()
        margin = min(10, self.store.manifest.state.lock_lease_seconds / 4)
        if self.store.time.latest() >= self.lease_until - margin:
            raise LockLost(f"could not renew this run's lock before its lease ends at {_iso(self.lease_until)}; "
                           "stopping before another run may take it over")

    def check(self) -> None:
        """Raise LockLost if the lock was taken over or broken (state writes are fenced anyway)."""
        if not self.lost:
            return
        if self.taken_by:
            raise LockLost(f"this run's lock was taken over by run {self.taken_by.get('run_id')}; "
                           f"stopping without writing")
        raise LockLost("this run's lock was broken (`orchestrator unlock --force`); stopping without writing")

    def release(self) -> None:
        """Free the lock if it is still ours, stamping when this run verified the table's
        settings. Never raises: a lock already gone or taken over is left as is, and one that
        cannot be freed now expires with its lease."""
        self.stop_heartbeat()
        condition = self.store._lock_condition(self)
        free = _free_lock(self.table_checked_at)
        try:
            self.store.client.update_item(
                TableName=self.store.table, Key=self.store._key(LOCK), UpdateExpression=free["UpdateExpression"],
                ConditionExpression=condition["ConditionExpression"],
                ExpressionAttributeNames={**condition["ExpressionAttributeNames"], **free["ExpressionAttributeNames"]},
                ExpressionAttributeValues={**condition["ExpressionAttributeValues"],
                                           **free.get("ExpressionAttributeValues", {})})
            log.info("lock released", run_id=self.run_id)
        except (ClientError, BotoCoreError) as error:
            if error_code(error) == "ConditionalCheckFailedException":
                log.info("lock no longer ours; left as is", run_id=self.run_id)
            else:
                log.warning("lock not released; it expires with its lease", run_id=self.run_id,
                            lease_until=_iso(self.lease_until), error=str(error))


def _free_lock(table_checked_at: float | None = None) -> dict:
    """Update parameters that remove the holder but keep the item: its fencing counter must only
    ever grow, so that a run that lost its lock can never match a later holder's fence."""
    update = {"UpdateExpression": "REMOVE " + ", ".join(f"#h_{name}" for name in HOLDER_FIELDS),
              "ExpressionAttributeNames": {f"#h_{name}": name for name in HOLDER_FIELDS}}
    if table_checked_at is not None:
        update["UpdateExpression"] = f"SET #checked = :checked {update['UpdateExpression']}"
        update["ExpressionAttributeNames"]["#checked"] = "table_checked_at"
        update["ExpressionAttributeValues"] = _serialize({":checked": table_checked_at})
    return update


def _conflicted(error: Exception) -> bool:
    """A transaction cancelled only because a concurrent one touched the same item."""
    if error_code(error) != "TransactionCanceledException":
        return False
    reasons = getattr(error, "response", {}).get("CancellationReasons", [])
    codes = {reason.get("Code") for reason in reasons}
    return "TransactionConflict" in codes and "ConditionalCheckFailed" not in codes


def _record_sk(step: str, key: str) -> str:
    return f"{STEP_PREFIX}{step}{RECORD_INFIX}{key}"


def _item_size(item: dict) -> int:
    """An upper bound of the item's size as DynamoDB counts it: its JSON wire form is larger
    (type tags, quotes) than names and values in UTF-8."""
    return len(json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode())


# -- values -------------------------------------------------------------------------------------


def _current_key(key: str) -> str:
    """A record key (`kind/name`) with today's kind name: earlier releases wrote some kinds with
    hyphens (`mount-target`), all are written with underscores now (`mount_target`)."""
    kind, _, name = key.partition("/")
    return f"{kind.replace('-', '_')}/{name}"


def _storable(value: Any) -> Any:
    """What DynamoDB accepts: floats as Decimal, tuples as lists, and every string passed through
    the redactor — a defensive pass, since records and outputs are secret-free by contract."""
    if isinstance(value, str):
        return redactor.clean(value)
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {str(key): _storable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storable(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    """Decimals back to int or float, recursively."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _serialize(values: dict) -> dict:
    return {key: _serializer.serialize(_storable(value)) for key, value in values.items()}


def _record(item: dict | None) -> dict:
    """A DynamoDB item as a plain dict, without its keys."""
    return {key: _plain(_deserializer.deserialize(value)) for key, value in (item or {}).items()
            if key not in ("pk", "sk")}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def _ago(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown"


def permissions(table: str, scope) -> list[dict]:
    """The deploy role's statements for the state store: this one table (`Scope` of
    orchestrator.permissions). TransactWriteItems is authorised by the item actions it holds."""
    from orchestrator.permissions import allow
    return [allow("StateTable", [f"dynamodb:{action}" for action in (
        "CreateTable", "DescribeTable", "UpdateTable", "TagResource", "DescribeContinuousBackups",
        "UpdateContinuousBackups", "DescribeTimeToLive", "UpdateTimeToLive", "GetItem", "Query", "PutItem",
        "UpdateItem", "DeleteItem", "ConditionCheckItem")], scope.arn("dynamodb", f"table/{table}"))]
