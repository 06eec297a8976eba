"""Saved plans: `plan ENV --out FILE` writes one, `apply FILE` applies exactly it or refuses.

A saved plan holds what was reviewed and everything it was computed from:

- the inputs: environment, account, the manifest (its hash, and its content so that an edit can
  be named field by field), the image tags deployed, `--target` and the `--delete-*` flags;
- the state version: a digest of the state records the plan read (the last-applied records of
  the three-way compare, each step's outputs), per step, and the latest run it saw;
- per step, a digest of what the step asks for (`desired`: also what config files render to)
  and its changes, each with the facts it rests on: its action (the resource is absent, present
  or differs), the value AWS had for every field it changes (`diffs[].old`), and the calls it
  makes.

`apply FILE` takes the lock, then checks all of it again before any change: the manifest as it
is now (before any AWS call), the state records (a run wrote state since?), and a fresh
observation of AWS planned again — every change must be the same, with the same facts, and no
change may appear that the plan does not hold. While the apply runs, each step's changes are
admitted against the saved ones once more (a step re-planned because what it reads from an
upstream step became known): nothing the plan does not list is ever called.

The plan itself is computed without the lock: `plan` is read-only, so a pull request's plan
neither waits for nor blocks a deploy. That is safe because `apply FILE` checks everything
again under the lock, where no other run can write in between.

Secret values are never in the file: changes show them as "(sensitive)", the manifest holds
only where they come from, and the file is refused if a value this process read appears in it.
A secret whose value changed at its source after the plan shows as a new change: refused.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator import __version__
from orchestrator.errors import NotApplied, OrchestratorError
from orchestrator.model import Change, as_plain, is_unknown

FORMAT = "orchestrator-plan"
#: The file format's version: bumped when a field changes meaning; older readers refuse newer files.
VERSION = 1
#: How many differences of each kind a refusal names before it counts the rest.
SHOWN = 12


class PlanFileError(OrchestratorError):
    """The file is not a saved plan this orchestrator can apply (damaged, another format,
    another environment or account). Nothing was changed. Exit code 1."""


@dataclass(frozen=True)
class PlanInputs:
    """The command-line inputs a plan was made with; `apply FILE` uses them, and no others."""

    targets: tuple[str, ...] = ()
    image_tags: tuple[tuple[str, str], ...] = ()
    redeploys: tuple[str, ...] = ()  # `--redeploy SERVICE`: a new deployment with nothing changed
    allow: tuple[str, ...] = ()
    #: A destroy plan (`plan --destroy --out`): applying it runs `destroy`.
    destroy: bool = False

    def flags(self) -> list[str]:
        """The same inputs as command-line flags (to show how to make the plan again)."""
        return [*(["--destroy"] if self.destroy else []), *(f"--target {t}" for t in self.targets),
                *(f"--image-tag {n}={t}" for n, t in self.image_tags), *(f"--redeploy {n}" for n in self.redeploys),
                *(f"--{flag}" for flag in self.allow)]


# -- what a plan is computed from ---------------------------------------------------------------


def digest(value: Any) -> str:
    text = json.dumps(as_plain(value), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def state_version(records: dict[str, dict]) -> dict:
    """The version of the state records a plan read: a digest of them all, and one per step
    (to name the steps a later run wrote). Any write to a step's records changes it; an
    unchanged apply writes none."""
    steps = {name: digest(record)[:16] for name, record in sorted(records.items())}
    return {"version": digest(steps)[:16], "steps": steps}


def comparable(change: Change) -> dict:
    """A change as plain JSON data, as it is saved and compared. Sets come sorted, so two
    processes write the same text for the same change."""
    return json.loads(json.dumps(as_plain(change.to_dict()), sort_keys=True, default=str))


def _facts(change: dict) -> dict:
    """What a change is compared by: all but its note (a remark such as "2 running now")."""
    return {key: value for key, value in change.items() if key not in ("note", "refused")}


# -- writing -------------------------------------------------------------------------------------


def build(*, manifest_from_files, manifest, account_id: str, inputs: PlanInputs, results: dict,
          records: dict[str, dict], last_run: dict | None, refused) -> dict:
    """The saved plan's document. `manifest_from_files` is the manifest as read (its hash is
    what `apply FILE` checks the files against); `manifest` is what was planned (image tags
    applied); `refused(change, result)` says whether the run would refuse a change."""
    from orchestrator.manifest import manifest_hash

    steps = {}
    for name, result in results.items():
        steps[name] = {"desired": result.desired_digest,
                       "changes": [{**comparable(change), **({"refused": True} if refused(change, result) else {})}
                                   for change in result.changes]}
    document = {
        "format": FORMAT,
        "version": VERSION,
        "orchestrator": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "created_by": f"{_user()}@{socket.gethostname()}",
        "environment": manifest.environment,
        "app": manifest.app,
        "region": manifest.region,
        "account_id": account_id,
        "inputs": {"targets": list(inputs.targets), "image_tags": dict(inputs.image_tags),
                   "redeploys": list(inputs.redeploys), "allow": list(inputs.allow), "destroy": inputs.destroy},
        "manifest": {"sha256": manifest_hash(manifest_from_files),
                     "content": manifest_from_files.model_dump(mode="json")},
        "images": {name: repository.tag for name, repository in sorted(manifest.images.repositories.items())},
        "state": {**state_version(records), "last_run": _run_brief(last_run)},
        "steps": steps,
    }
    return {**document, "checksum": digest(document)}


def write(path: Path, document: dict) -> None:
    """Write the plan atomically (a reader never sees half a file); refuse if any secret value
    this process read would be in it."""
    from orchestrator.log import redactor
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if redactor.clean(text) != text:
        raise OrchestratorError(f"{path}: not written: the plan would hold a secret value (a bug: please report "
                                "it); nothing was saved")
    path = Path(path)
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise OrchestratorError(f"{path}: cannot write the plan there: {error.strerror}; nothing was saved") from None
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def pending(document: dict) -> int:
    return sum(1 for step in document["steps"].values() for change in step["changes"] if not change.get("refused"))


# -- reading -------------------------------------------------------------------------------------


REQUIRED = {"environment": str, "app": str, "region": str, "account_id": str, "inputs": dict, "manifest": dict,
            "images": dict, "state": dict, "steps": dict, "created_at": str, "created_by": str}


def read(path: Path) -> "SavedPlan":
    """The saved plan in `path`, or a `PlanFileError` saying what is wrong with the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise PlanFileError(f"{path}: cannot read the plan file: {getattr(error, 'strerror', None) or error}")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise PlanFileError(f"{path}:{error.lineno}: not a saved plan (not JSON: {error.msg}); make one with "
                            "`orchestrator plan ENV --out FILE`") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise PlanFileError(f"{path}: not a saved plan of orchestrator (it has no \"format\": \"{FORMAT}\"); make "
                            "one with `orchestrator plan ENV --out FILE`")
    if document.get("version") != VERSION:
        raise PlanFileError(f"{path}: plan file format version {document.get('version')!r}; this orchestrator "
                            f"({__version__}) reads version {VERSION}: make the plan again with it")
    body = {key: value for key, value in document.items() if key != "checksum"}
    if document.get("checksum") != digest(body):
        raise PlanFileError(f"{path}: the plan file was changed or damaged after it was saved (its checksum does not "
                            "match its content); make the plan again")
    for key, kind in REQUIRED.items():
        if not isinstance(document.get(key), kind):
            raise PlanFileError(f"{path}: damaged plan file: field {key!r} is missing or not a {kind.__name__}")
    if document.get("orchestrator") != __version__:
        raise PlanFileError(f"{path} was made by orchestrator {document.get('orchestrator')}, this is {__version__}: "
                            "another version may plan differently; make the plan again with this one")
    return SavedPlan(path, document)


class SavedPlan:
    """A plan read back from its file: its inputs, and the checks `apply FILE` makes (the
    manifest, the account, and — as the engine's `Review` — the state and every change)."""

    def __init__(self, path: Path, document: dict):
        self.path = path
        self.document = document
        self.environment: str = document["environment"]
        raw = document["inputs"]
        self.inputs = PlanInputs(targets=tuple(raw.get("targets", ())),
                                 image_tags=tuple(sorted(raw.get("image_tags", {}).items())),
                                 redeploys=tuple(raw.get("redeploys", ())),
                                 allow=tuple(raw.get("allow", ())), destroy=bool(raw.get("destroy", False)))
        self.steps: dict[str, dict] = document["steps"]
        #: Called to name the runs that wrote state since the plan (newest first); set by the caller.
        self.runs: Callable[[], list[dict]] = lambda: []
        self._admitted = PlannedChanges({name: step.get("changes", []) for name, step in self.steps.items()},
                                        f"the saved plan {path}")

    @property
    def again(self) -> str:
        """The command that makes this plan again."""
        return " ".join(["orchestrator plan", self.environment, *self.inputs.flags(), "--out", str(self.path)])

    def describe(self) -> str:
        doc = self.document
        return (f"saved {'destroy ' if self.inputs.destroy else ''}plan {self.path} for {doc['environment']} ({doc['app']}-{doc['environment']}, account "
                f"{doc['account_id']}, {doc['region']}), made {doc['created_at']} by {doc['created_by']}: "
                f"{pending(doc)} change(s)")

    # -- before any AWS call --

    def check_environment(self, env: str | None) -> None:
        if env is not None and env != self.environment:
            raise PlanFileError(f"{self.path} is a plan for {self.environment}, not {env}; nothing was changed")

    def check_manifest(self, manifest) -> None:
        """The manifest files read now must be the ones the plan was made from."""
        from orchestrator.manifest import manifest_hash
        saved = self.document["manifest"]
        if manifest_hash(manifest) == saved.get("sha256"):
            return
        edits = _differences(saved.get("content", {}), manifest.model_dump(mode="json"))
        raise NotApplied(self._refusal([f"the {self.environment} manifest was edited since the plan:",
                                        *(f"  {line}" for line in _first(edits, "edit"))]), "refused")

    def check_account(self, account_id: str) -> None:
        if account_id != self.document["account_id"]:
            raise PlanFileError(f"{self.path} was planned in account {self.document['account_id']}, but the "
                                f"credentials are for account {account_id}; nothing was changed")

    # -- the engine's Review: under the lock, before any change, and as each step applies --

    def approve(self, planned: dict, records: dict[str, dict]) -> None:
        moved = self._state_moved(records)
        changed = self._changes_moved(planned)
        if changed:
            moved += ["AWS changed since the plan (observed again now):", *(f"  {line}" for line in changed)]
        if not changed and not moved:
            hidden = [name for name, result in planned.items()
                      if result.desired_digest != self.steps.get(name, {}).get("desired")]
            if hidden:
                moved.append(f"what {', '.join(hidden)} would create or set differs from the plan's although the "
                             "manifest and the changes read the same (the config files under configs/ changed?)")
        if moved:
            raise NotApplied(self._refusal(moved), "refused")

    def admit(self, step: str, changes: list[Change]) -> None:
        self._admitted.admit(step, changes)

    def _state_moved(self, records: dict[str, dict]) -> list[str]:
        saved = self.document["state"]
        now = state_version(records)
        if now["version"] == saved.get("version"):
            return []
        before = saved.get("steps", {})
        written = sorted(name for name in set(before) | set(now["steps"])
                         if before.get(name) != now["steps"].get(name))
        by = sorted({records[name].get("last_run") for name in written if records.get(name, {}).get("last_run")})
        runs = [run for run in self.runs() if run.get("run_id") in by]
        who = "; ".join(_run_line(run) for run in runs) or ", ".join(by) or "a run whose record is gone"
        return [f"the state of {self.environment} was written since the plan (state version "
                f"{saved.get('version')} → {now['version']}): step(s) {', '.join(written)}, by {who}"]

    def _changes_moved(self, planned: dict) -> list[str]:
        lines: list[str] = []
        for name in list(self.steps) + [name for name in planned if name not in self.steps]:
            if name not in planned:
                lines.append(f"{name}: in the saved plan, but not planned now")
                continue
            saved = self.steps.get(name, {}).get("changes", [])
            fresh = [comparable(change) for change in planned[name].changes]
            lines += [f"{name}: {line}" for line in _compare_changes(saved, fresh)]
        return _first(lines, "difference")

    def _refusal(self, moved: list[str]) -> str:
        return (f"the saved plan {self.path} no longer holds; nothing was changed:\n  " + "\n  ".join(moved) +
                f"\nMake a new plan (`{self.again}`), review it, and apply that.")


class PlannedChanges:
    """The changes a run was approved with (a saved plan, or the plan a person confirmed), per
    step. Each change a step is about to make must be one of them, once: the same resource and
    action, no field and no call beyond the approved ones, values the same (a value the plan
    showed as "(known after apply)" may be any)."""

    def __init__(self, steps: dict[str, list[dict]], source: str):
        #: Per step, the approved changes not yet matched by a change the run made.
        self._left = {name: [_facts(change) for change in changes] for name, changes in steps.items()}
        self.source = source

    @classmethod
    def of(cls, planned: dict, source: str) -> "PlannedChanges":
        return cls({name: [comparable(change) for change in result.changes] for name, result in planned.items()},
                   source)

    def admit(self, step: str, changes: list[Change]) -> None:
        left = self._left.get(step, [])
        for change in changes:
            fresh = _facts(comparable(change))
            match = next((index for index, candidate in enumerate(left) if _covers(candidate, fresh)), None)
            if match is None:
                raise OrchestratorError(f"stopped before {_title(fresh)}: {self.source} does not hold that change "
                                        f"({_fields(fresh)}); what earlier steps changed stays")
            left.pop(match)


# -- comparing ------------------------------------------------------------------------------------


def _compare_changes(saved: list[dict], fresh: list[dict]) -> list[str]:
    """What differs between the saved changes and the fresh ones of one step, per resource."""
    def by_resource(changes: list[dict]) -> dict[str, list[dict]]:
        grouped: dict[str, list[dict]] = {}
        for change in changes:
            grouped.setdefault(f"{change['kind']} {change['name']}", []).append(_facts(change))
        return grouped

    before, now = by_resource(saved), by_resource(fresh)
    lines = []
    for resource in list(before) + [r for r in now if r not in before]:
        was, is_ = before.get(resource, []), now.get(resource, [])
        if was == is_:
            continue
        if not is_:
            lines += [f"{_title(c)}: no longer needed (AWS already matches)" for c in was]
        elif not was:
            lines += [f"{_title(c)}: needed now, not in the saved plan ({_fields(c)})" for c in is_]
        elif len(was) == len(is_) == 1 and was[0]["action"] == is_[0]["action"]:
            lines += [f"{_title(is_[0])}: {line}" for line in _diff_changes(was[0], is_[0])]
        else:
            lines.append(f"{resource}: planned {' then '.join(c['action'] for c in was)}, now "
                         f"{' then '.join(c['action'] for c in is_)} (it was created, deleted or replaced in AWS?)")
    return lines


def _diff_changes(was: dict, now: dict) -> list[str]:
    old = {d["field"]: d for d in was.get("diffs", [])}
    new = {d["field"]: d for d in now.get("diffs", [])}
    lines = []
    for name in list(old) + [f for f in new if f not in old]:
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        if b is None:
            lines.append(f"{name} no longer differs (AWS has {_show(a['new'])} now)")
        elif a is None:
            lines.append(f"{name} differs now: AWS has {_show(b['old'])}, the manifest wants {_show(b['new'])}")
        elif a["old"] != b["old"]:
            lines.append(f"{name} was {_show(a['old'])} in AWS when planned, is {_show(b['old'])} now")
        else:
            lines.append(f"{name} would be set to {_show(b['new'])}, the plan said {_show(a['new'])}")
    for key in sorted((set(was) | set(now)) - {"diffs", "action", "kind", "name"}):
        if was.get(key) != now.get(key):
            lines.append(f"{key} was {_show(was.get(key))} when planned, is {_show(now.get(key))} now")
    return lines or ["differs from the plan"]


def _covers(saved: dict, fresh: dict) -> bool:
    """The saved change allows the fresh one (see `SavedPlan.admit`)."""
    same = ("action", "kind", "name", "retire", "blocked", "outage")
    if any(saved.get(key) != fresh.get(key) for key in same):
        return False
    if not set(fresh.get("calls", ())) <= set(saved.get("calls", ())):
        return False
    unused = list(saved.get("diffs", []))  # a field may differ more than once (two ingress rules)
    for diff in fresh.get("diffs", []):
        match = next((i for i, kept in enumerate(unused) if kept["field"] == diff["field"]
                      and _value_covers(kept.get("old"), diff.get("old"))
                      and _value_covers(kept.get("new"), diff.get("new"))), None)
        if match is None:
            return False
        unused.pop(match)
    return True


def _value_covers(saved: Any, fresh: Any) -> bool:
    """Equal, where a value the plan did not know yet ("(known after apply)") stands for any. In
    a list holding one, the known items must all be there; how many the unknown ones are was not
    known either (equal placeholders in a set are one)."""
    if is_unknown(saved):
        return True
    if isinstance(saved, dict) and isinstance(fresh, dict):
        return saved.keys() == fresh.keys() and all(_value_covers(saved[k], fresh[k]) for k in saved)
    if isinstance(saved, list) and isinstance(fresh, list):
        if any(_holds_unknown(item) for item in saved):
            left = list(fresh)
            for item in (item for item in saved if not _holds_unknown(item)):
                found = next((i for i, candidate in enumerate(left) if _value_covers(item, candidate)), None)
                if found is None:
                    return False
                left.pop(found)
            return True
        return len(saved) == len(fresh) and all(_value_covers(a, b) for a, b in zip(saved, fresh))
    return saved == fresh


def _holds_unknown(value: Any) -> bool:
    if isinstance(value, str):
        return is_unknown(value)
    if isinstance(value, dict):
        return any(_holds_unknown(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_unknown(item) for item in value)
    return False


def _differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Dotted paths where two manifests' contents differ, with both values."""
    if isinstance(before, dict) and isinstance(after, dict):
        lines = []
        for key in sorted(set(before) | set(after), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in after:
                lines.append(f"{where}: removed (was {_show(before[key])})")
            elif key not in before:
                lines.append(f"{where}: added ({_show(after[key])})")
            else:
                lines += _differences(before[key], after[key], where)
        return lines
    return [] if before == after else [f"{path}: {_show(before)} → {_show(after)}"]


def _title(change: dict) -> str:
    return f"{change['action']} {change['kind']} {change['name']}"


def _fields(change: dict) -> str:
    diffs = change.get("diffs", [])
    if not diffs:
        return "no field differences"
    return "; ".join(f"{d['field']}: {_show(d.get('old'))} → {_show(d.get('new'))}" for d in diffs)


def _show(value: Any, limit: int = 100) -> str:
    if value is None:
        return "(none)"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _first(lines: list[str], what: str) -> list[str]:
    if len(lines) <= SHOWN:
        return lines
    return lines[:SHOWN] + [f"… and {len(lines) - SHOWN} more {what}(s)"]


def _run_brief(run: dict | None) -> dict | None:
    if not run:
        return None
    return {key: run.get(key) for key in ("run_id", "command", "user", "host", "started_at", "result")}


def _run_line(run: dict) -> str:
    return (f"run {run.get('run_id')} ({run.get('command')}, {run.get('user')}@{run.get('host')}, "
            f"started {run.get('started_at')}, {run.get('result')})")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
