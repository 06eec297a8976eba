"""The state store: one DynamoDB table holding, per environment, the lock, one record per step
and one record per run (DESIGN.md, "State in DynamoDB").

Items share the partition key `app/env`; the sort key says what they are: `lock`,
`step#<name>`, `run#<iso start time>#<run id>`.

Every write a run makes under the lock is *fenced*: it goes in one transaction with a check that
the lock item still names this run and its fence number. A run whose lease expired and was taken
over therefore can never overwrite what the newer run wrote.

The table is shared by all environments of an app, so it carries the ownership tag
`orchestrator:env = shared`: an orphan sweep of one environment never matches it.
"""
from __future__ import annotations

import copy
import getpass
import os
import socket
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import structlog
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from orchestrator import tags as tagging
from orchestrator import waiters
from orchestrator.aws import STATE, Aws, error_code
from orchestrator.errors import LockHeld, LockLost
from orchestrator.log import redactor
from orchestrator.model import Change
from orchestrator.retry import eventually

#: Wall-clock seconds; replaced in tests to make a lease expire without waiting.
clock = time.time

log = structlog.get_logger("orchestrator.state")

LOCK = "lock"
STEP_PREFIX = "step#"
RUN_PREFIX = "run#"
TTL_ATTRIBUTE = "expires_at"
SHARED_ENV = "shared"
#: How often a run waiting for the lock (`wait_seconds`) looks again.
POLL_SECONDS = 2.0
#: Concurrent steps each put a ConditionCheck on the lock item in their transactions; DynamoDB
#: cancels one of two overlapping transactions, which is worth a few quick retries.
CONFLICT_ATTEMPTS = 5

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class StateStore:
    """The lock, step records and run records of one environment."""

    def __init__(self, aws: Aws, manifest):
        self.aws = aws
        self.manifest = manifest
        self.table = manifest.state.table
        self.pk = f"{manifest.app}/{manifest.environment}"
        self._lock_seconds = manifest.state.lock_lease_seconds
        # Step records as last read or written. The lock makes this run the only writer, so the
        # cache is authoritative: record_change/finish_step write whole records without reading.
        self._steps: dict[str, dict] = {}
        self._steps_loaded = False
        self._cache_lock = threading.Lock()
        self._run: dict | None = None
        self._run_started = 0.0
        self._exists = False  # once seen, a table does not vanish during a run

    @property
    def client(self):
        return self.aws.client("dynamodb", ledger_name=STATE)

    # -- the table --------------------------------------------------------------------------------

    def ensure_table(self) -> None:
        """Create the table on first use; afterwards only read.

        Each setting is checked on its own, so a run interrupted between creating the table and
        enabling PITR or TTL completes the job next time. Deletion protection is only ever
        turned on here (the table is shared: prod asking for it must not be undone by dev).
        """
        table = self._describe()
        created = table is None
        if created:
            self._create()
            waiters.wait_until(f"state table {self.table}", self._is_active, log=log)
        elif self.manifest.state.deletion_protection and not table.get("DeletionProtectionEnabled"):
            self.client.update_table(TableName=self.table, DeletionProtectionEnabled=True)
            log.info("state table deletion protection enabled", table=self.table)
        if created or not self._pitr_enabled():
            eventually(self.client.update_continuous_backups, TableName=self.table,
                       PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
                       retry_on=("ContinuousBackupsUnavailableException",))
        if created or not self._ttl_enabled():
            self.client.update_time_to_live(
                TableName=self.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE})
        self._exists = True

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
                DeletionProtectionEnabled=self.manifest.state.deletion_protection,
                Tags=tagging.tag_list(self.table_tags()))
            log.info("state table created", table=self.table)
        except ClientError as error:
            if error_code(error) != "ResourceInUseException":  # another run is creating it right now
                raise

    def _is_active(self) -> tuple[bool, str]:
        table = self._describe()
        status = table["TableStatus"] if table else "CREATING"
        return status == "ACTIVE", status

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
        waited = 0.0
        while True:
            lease, holder = self._try_acquire(run_id, command)
            if lease is not None:
                return lease
            if waited >= wait_seconds:
                raise LockHeld(self._held_message(holder))
            delay = min(POLL_SECONDS, wait_seconds - waited)
            log.info("waiting for lock", holder=holder.get("run_id"), waited_s=round(waited, 1))
            waiters.sleep(delay)
            waited += delay

    def _try_acquire(self, run_id: str, command: str) -> tuple["Lease | None", dict]:
        """One conditional write: the lock is ours if absent or expired. Returns (lease, None) on
        success, (None, holder) when another run holds it."""
        now = int(clock())
        holder = {"run_id": run_id, "user": _user(), "host": socket.gethostname(), "pid": os.getpid(),
                  "command": command, "acquired_at": now, "expires_at": now + self._lock_seconds}
        names = {f"#{name}": name for name in [*holder, "fence"]}
        values = {f":{name}": value for name, value in holder.items()} | {":zero": 0, ":one": 1, ":now": now}
        update = ", ".join(f"#{name} = :{name}" for name in holder)
        try:
            response = self.client.update_item(
                TableName=self.table, Key=self._key(LOCK),
                UpdateExpression=f"SET {update}, #fence = if_not_exists(#fence, :zero) + :one",
                ConditionExpression="attribute_not_exists(#run_id) OR #expires_at < :now",
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
        return Lease(self, run_id, fence, holder["expires_at"]), {}

    def _held_message(self, holder: dict) -> str:
        now = clock()
        env = self.manifest.environment
        acquired, expires = holder.get("acquired_at", now), holder.get("expires_at", now)
        return (f"{env} is locked by run {holder.get('run_id')} ({holder.get('user')}@{holder.get('host')}, "
                f"pid {holder.get('pid')}, command {holder.get('command')!r}), acquired {_ago(now - acquired)} ago; "
                f"the lease expires in {_ago(expires - now)} ({_iso(expires)}) unless that run renews it.\n"
                f"If that run is dead (a stale lock), wait for the lease to expire or run "
                f"`orchestrator unlock {env} --force`.")

    def lock_holder(self) -> dict | None:
        item = self.client.get_item(TableName=self.table, Key=self._key(LOCK), ConsistentRead=True).get("Item")
        holder = _record(item)
        return holder if holder.get("run_id") else None

    def break_lock(self) -> dict | None:
        """Free the lock whoever holds it (`unlock --force`); returns the holder removed."""
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
                                                          ":now": _iso(clock())}))
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
        """Every step record of the environment, by step name."""
        items = []
        for page in self.client.get_paginator("query").paginate(
                TableName=self.table, ConsistentRead=True,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
                ExpressionAttributeValues=_serialize({":pk": self.pk, ":prefix": STEP_PREFIX})):
            items.extend(page["Items"])
        records = {record["step"]: record for record in map(_record, items)}
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

    def _current(self, step: str) -> dict:
        """A copy of the step's record as stored (read once if `steps()` was not called)."""
        with self._cache_lock:
            if step not in self._steps and not self._steps_loaded:
                item = self.client.get_item(TableName=self.table, Key=self._key(STEP_PREFIX + step),
                                            ConsistentRead=True).get("Item")
                if item:
                    self._steps[step] = _record(item)
            return copy.deepcopy(self._steps.get(step, {"step": step}))

    # -- fenced writes ----------------------------------------------------------------------------

    def record_change(self, lease: "Lease", step: str, change: Change) -> None:
        """Called as soon as AWS accepted one change, so a crash later still leaves its record.

        Writes only what is new: the first change of the step in this run (status "applying",
        so `status` never shows a half-changed step as ok) and any change to the last-applied
        configuration.
        """
        record = self._current(step)
        applied = dict(record.get("applied") or {})
        if change.action == "delete":
            applied.pop(change.key, None)
        elif change.record is not None:
            applied[change.key] = _plain(_storable(change.record))
        first_of_run = record.get("status") != "applying" or record.get("last_run") != lease.run_id
        if first_of_run or applied != (record.get("applied") or {}):
            record.update(applied=applied, status="applying", last_run=lease.run_id)
            self._put_step(lease, record)

    def finish_step(self, lease: "Lease", step: str, *, status: str, desired_hash: str, outputs: dict,
                    changes: int, error: str | None = None) -> None:
        """Write the step's outcome, unless it is exactly what is stored already: an unchanged
        apply writes nothing."""
        record = self._current(step)
        outputs = _plain(_storable(outputs))
        unchanged = (status == "ok" and changes == 0 and error is None and record.get("status") == "ok"
                     and record.get("desired_hash") == desired_hash and record.get("outputs") == outputs)
        if unchanged:
            return
        record.update(status=status, desired_hash=desired_hash, outputs=outputs, changes=changes,
                      last_run=lease.run_id)
        record.pop("error", None)
        if error is not None:
            record["error"] = error
        self._put_step(lease, record)

    def forget_step(self, lease: "Lease", step: str) -> None:
        """Remove the step's record once destroy has removed what it owned."""
        self._fenced(lease, {"Delete": {"TableName": self.table, "Key": self._key(STEP_PREFIX + step)}})
        with self._cache_lock:
            self._steps.pop(step, None)

    def start_run(self, lease: "Lease", command: str, manifest_hash: str) -> None:
        self._run_started = clock()
        started = _iso(self._run_started)
        self._run = {"sk": f"{RUN_PREFIX}{started}#{lease.run_id}", "run_id": lease.run_id, "command": command,
                     "manifest_hash": manifest_hash, "user": _user(), "host": socket.gethostname(),
                     "started_at": started, "result": "running", "expires_at": self._run_expiry()}
        self._put(lease, self._run)

    def finish_run(self, lease: "Lease", result: str, summary: dict) -> None:
        if self._run is None:
            raise RuntimeError("finish_run called before start_run")
        now = clock()
        self._run.update(result=result, summary=summary, finished_at=_iso(now),
                         seconds=round(now - self._run_started, 2), expires_at=self._run_expiry())
        self._put(lease, self._run)

    def _run_expiry(self) -> int:
        return int(clock()) + self.manifest.state.run_retention_days * 86400

    def _put_step(self, lease: "Lease", record: dict) -> None:
        record["updated_at"] = _iso(clock())
        stored = self._put(lease, {**record, "sk": STEP_PREFIX + record["step"]})
        with self._cache_lock:
            self._steps[record["step"]] = _record(stored)

    def _put(self, lease: "Lease", record: dict) -> dict:
        """Fenced put of one record (which carries its `sk`); returns the item as written."""
        item = _serialize(_storable({**record, "pk": self.pk}))
        self._fenced(lease, {"Put": {"TableName": self.table, "Item": item}})
        return item

    def _fenced(self, lease: "Lease", operation: dict) -> None:
        """Write `operation` in one transaction with a check that the lock is still this lease's."""
        lease.check()
        check = {"ConditionCheck": {"TableName": self.table, "Key": self._key(LOCK),
                                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD", **self._lock_condition(lease)}}
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                self.client.transact_write_items(TransactItems=[check, operation])
                return
            except ClientError as error:
                if error_code(error) != "TransactionCanceledException":
                    raise
                reasons = error.response.get("CancellationReasons", [])
                if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                    lease.lose(_record(reasons[0].get("Item")))
                    lease.check()
                if attempt == CONFLICT_ATTEMPTS or not any(r.get("Code") == "TransactionConflict" for r in reasons):
                    raise
                waiters.sleep(0.05 * 2 ** attempt)

    def _key(self, sk: str) -> dict:
        return {"pk": {"S": self.pk}, "sk": {"S": sk}}


class Lease:
    """This run's hold on the lock: renewed by a heartbeat, checked before every write."""

    def __init__(self, store: StateStore, run_id: str, fence: int, expires_at: int):
        self.store = store
        self.run_id = run_id
        self.fence = fence
        self.expires_at = expires_at
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
        """Push the expiry one lease ahead if the lock is still ours. A failed call (network,
        throttling) is retried at the next beat, well before the lease runs out; a lock that is
        no longer ours marks the lease lost and returns False."""
        expires = int(clock()) + self.store.manifest.state.lock_lease_seconds
        condition = self.store._lock_condition(self)
        condition["ExpressionAttributeNames"]["#expires_at"] = TTL_ATTRIBUTE
        condition["ExpressionAttributeValues"][":expires_at"] = {"N": str(expires)}
        try:
            eventually(self.store.client.update_item, TableName=self.store.table, Key=self.store._key(LOCK),
                       UpdateExpression="SET #expires_at = :expires_at",
                       ReturnValuesOnConditionCheckFailure="ALL_OLD", retry_on=("TransactionConflictException",),
                       **condition)
        except (ClientError, BotoCoreError) as error:
            if error_code(error) != "ConditionalCheckFailedException":
                log.warning("lock renewal failed; retrying at the next beat", error=str(error))
                return True
            self.lose(_record(error.response.get("Item")))
            return False
        self.expires_at = expires
        return True

    def lose(self, holder: dict) -> None:
        """The lock item no longer names this lease: `holder` is whoever it names now (or {})."""
        self.lost = True
        self.taken_by = holder if holder and holder.get("run_id") else None  # a freed lock keeps its fence
        log.error("lock lost", run_id=self.run_id, taken_by=holder.get("run_id") if holder else None)

    def check_current(self) -> None:
        """Before changing AWS: raise LockLost unless the lock is ours and its lease is not
        about to end unrenewed (the heartbeat could not reach DynamoDB)."""
        self.check()
        margin = min(10, self.store.manifest.state.lock_lease_seconds / 4)
        if clock() >= self.expires_at - margin:
            raise LockLost(f"could not renew this run's lock before its lease ends at {_iso(self.expires_at)}; "
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
        """Free the lock if it is still ours. Never raises: a lock already gone or taken over is
        left as is, and one that cannot be freed now expires with its lease."""
        self.stop_heartbeat()
        condition = self.store._lock_condition(self)
        free = _free_lock()
        try:
            self.store.client.update_item(
                TableName=self.store.table, Key=self.store._key(LOCK), UpdateExpression=free["UpdateExpression"],
                ConditionExpression=condition["ConditionExpression"],
                ExpressionAttributeNames={**condition["ExpressionAttributeNames"], **free["ExpressionAttributeNames"]},
                ExpressionAttributeValues=condition["ExpressionAttributeValues"])
            log.info("lock released", run_id=self.run_id)
        except (ClientError, BotoCoreError) as error:
            if error_code(error) == "ConditionalCheckFailedException":
                log.info("lock no longer ours; left as is", run_id=self.run_id)
            else:
                log.warning("lock not released; it expires with its lease", run_id=self.run_id,
                            expires_at=_iso(self.expires_at), error=str(error))


def _free_lock() -> dict:
    """Update parameters that remove the holder but keep the item: its fencing counter must only
    ever grow, so that a run that lost its lock can never match a later holder's fence."""
    fields = ("run_id", "user", "host", "pid", "command", "acquired_at", "expires_at")
    return {"UpdateExpression": "REMOVE " + ", ".join(f"#h_{name}" for name in fields),
            "ExpressionAttributeNames": {f"#h_{name}": name for name in fields}}


# -- values -------------------------------------------------------------------------------------


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
    seconds = max(0, int(seconds))
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
