"""What the user reads: plans as a diff per resource, run summaries, status tables."""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

from orchestrator.aws import STATE
from orchestrator.model import SENSITIVE, Change

SYMBOL = {"create": "+", "update": "~", "replace": "-/+", "delete": "-"}


def show_value(value: Any, limit: int = 120) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def refusal(change: Change) -> str:
    """Why a change was refused: the flag that would allow it, or (no flag lifts it) what to change."""
    if not change.keeps_data:
        return change.note or f"refused: {change.blocked}"
    flag = f"--{change.blocked}"
    if not change.note:
        return f"needs {flag}"
    return change.note if flag in change.note else f"{change.note} (needs {flag})"


def is_refused(change: Change, result) -> bool:
    return any(change is refused for refused in result.refused)


def change_lines(change: Change, dependants: tuple[str, ...] = (), refused: bool = False) -> list[str]:
    head = f"  {SYMBOL[change.action]:>3} {change.action} {change.kind} {change.name}"
    if refused:
        head += f"   [refused without --{change.blocked}]" if change.keeps_data else "   [refused: see note]"
    elif change.keeps_data:
        head += f"   [LOSES DATA: allowed by --{change.blocked}]"
    if change.retire:
        head += "   [at the end of the run, once dependants moved]"
    lines = [head]
    if change.note:
        lines.append(f"        note: {change.note}")
    if change.outage:
        lines.append(f"        OUTAGE: deleted before it is created again: {change.outage}")
    elif change.action == "replace" and dependants:
        lines.append(f"        new one first; {', '.join(dependants)} move to it, then the old one is removed")
    for diff in change.diffs:
        if diff.sensitive:
            lines.append(f"        {diff.field}: {SENSITIVE} (value will change)")
        elif change.action == "create":
            lines.append(f"        {diff.field}: {show_value(diff.new)}")
        else:
            lines.append(f"        {diff.field}: {show_value(diff.old)} → {show_value(diff.new)}")
    return lines


def plan_text(title: str, results: dict, nothing: str = "No changes. AWS matches the manifest") -> str:
    """Counts first, then each step's changes; refusals and what is not planned are named.
    `nothing` is the headline when there is no change (prune: "Nothing to prune")."""
    lines = []
    totals: Counter = Counter()
    refused = 0
    for name, result in results.items():
        if result.status == "failed":
            lines.append(f"{name}: could not plan: {result.error}")
            continue
        if result.status == "skipped":
            kept = result.error.startswith("kept:")  # by a dependant's kept resources: nothing to plan
            lines.append(f"{name}: {result.error}" if kept else f"{name}: not planned ({result.error})")
            continue
        lines.extend(f"{name}: PROBLEM: {problem}" for problem in result.problems)
        lines.extend(f"{name}: note: {remark}" for remark in result.remarks)
        if result.error:  # a step planned, with a remark (prune: other changes pending)
            lines.append(f"{name}: {result.error}")
        if not result.changes:
            if not result.error:
                lines.append(f"{name}: up to date")
            continue
        lines.append(f"{name}: {step_counts(result)}"
                     + ("   [kept: what it depends on stays too]" if result.status == "kept" else ""))
        for change in result.changes:
            blocked = is_refused(change, result)
            lines.extend(change_lines(change, result.dependants, blocked))
            if blocked:
                refused += 1
            else:
                totals[change.action] += 1
    unplanned = [name for name, r in results.items()
                 if r.status == "failed" or (r.status == "skipped" and not r.error.startswith("kept:"))]
    if not totals and not refused:
        counts = nothing + (" for the steps planned." if unplanned else ".")
    else:
        summary = ", ".join(f"{totals[a]} to {a}" for a in ("create", "update", "replace", "delete"))
        counts = f"Plan: {summary}." + (f" {refused} refused (see below)." if refused else "")
    problems = sum(len(r.problems) for r in results.values())
    if problems:
        counts += f"\n{problems} problem(s) found before any change (see below): apply would stop at once."
    if unplanned:
        counts += f"\nNot planned: {', '.join(unplanned)} (see below); the counts leave them out."
    return "\n".join([title, counts, "", *lines])


def step_counts(result) -> str:
    """`2 to create, 1 to replace, 1 refused`: a step's changes at a glance."""
    counts = Counter("refused" if is_refused(change, result) else f"to {change.action}" for change in result.changes)
    order = ("to create", "to update", "to replace", "to delete", "refused")
    return ", ".join(f"{counts[what]} {what}" for what in order if counts[what])


def pending(results: dict) -> int:
    """Changes the run would make; refused ones (kept data, protection) never happen."""
    return sum(1 for r in results.values() for c in r.changes if not is_refused(c, r))


def plan_json(env: str, results: dict) -> str:
    def change(c: Change, result) -> dict:
        return {**c.to_dict(), **({"refused": refusal(c)} if is_refused(c, result) else {})}

    return json.dumps({
        "environment": env,
        "steps": {name: {"status": r.status, "error": r.error, "problems": r.problems, "remarks": r.remarks,
                         "changes": [change(c, r) for c in r.changes]}
                  for name, r in results.items()},
        "pending": pending(results),
    }, indent=2, default=str)


def kept_line(change: Change, command: str = "") -> str:
    """A resource a run kept because it holds data: said as kept, never as if deleted, with how
    to delete it too (the command, given one, else the flag)."""
    how = f"{command} --{change.blocked}" if command else f"pass --{change.blocked}"
    return f"kept (holds data): {change.kind} {change.name} — to delete it too: {how}"


def destroy_leftovers(results: dict) -> tuple[list[str], list[Change]]:
    """What a destroy left that it was asked to remove (a line each), and the data it kept on
    purpose (refused for want of --delete-data / --delete-secrets: not a failure)."""
    left, kept = [], []
    for name, result in results.items():
        if result.status in ("failed", "skipped"):
            left.append(f"{name}: what it still owns ({result.error})")
            continue
        why: dict[str, list[str]] = {}  # the changes refused for the same reason, together
        for change in result.refused:
            if change.keeps_data:
                kept.append(change)
            else:
                why.setdefault(refusal(change), []).append(f"{change.kind} {change.name}")
        left += [f"{name}: {', '.join(what)}: {reason}" for reason, what in why.items()]
    return left, kept


def run_summary(title: str, results: dict, ledger) -> str:
    width = max([len(name) for name in results] + [4])
    lines = ["", title, f"  {'step':<{width}}  {'result':<8} {'changes':>7} {'calls':>6} {'time':>7}"]
    for name, result in results.items():
        calls = ledger.count(step=name)
        lines.append(f"  {name:<{width}}  {result.status:<8} {len(result.applied):>7} {calls:>6} "
                     f"{result.seconds:>6.1f}s")
        for change in result.refused:
            lines.append(f"  {'':<{width}}  " + (kept_line(change) if change.keeps_data else
                                                  f"left {change.kind} {change.name}: {refusal(change)}"))
        if result.error:
            lines.append(f"  {'':<{width}}  {result.error}")
    total = ledger.count()
    mutating = ledger.count(mutating=True)
    state = ledger.count(step=STATE, mutating=True)
    lines.append(f"  API calls: {total}, {mutating} mutating: {mutating - state} to the platform, "
                 f"{state} to the state table and lock")
    return "\n".join(lines)


def _drift_line(drift: dict, env: str) -> str:
    if drift.get("error"):
        return f"could not compare: {drift['error']}"
    if drift["pending"]:
        return f"{drift['pending']} change(s) pending: see `orchestrator plan {env}`"
    return "matches the manifest"


def drift_of(results: dict) -> dict[str, dict]:
    """Per step: how many changes an apply would make now, or why that could not be read."""
    return {name: {"pending": pending({name: r}), **({"error": r.error} if r.error else {})}
            for name, r in results.items()}


def status_text(env: str, records: dict, holder: dict | None, runs: list[dict], now: float,
                drift: dict[str, dict] | None = None, full: bool = False, views: dict[str, dict] | None = None,
                unapplied: list[str] | tuple[str, ...] = ()) -> str:
    """`status`: the lock, the steps (one line when all is well; with `full`, each step with its
    outputs), with `drift` what an apply would change now, the steps' live `views` (what runs,
    its health, the alarms), and the last runs (who, when, what)."""
    lines = [f"Environment {env}: {_lock_line(holder, now)}"]
    if not records:
        lines.append("  nothing applied yet")
    elif full:
        lines += _steps_in_full(env, records, drift)
    else:
        lines += _steps_in_brief(env, records, drift, unapplied)
    if views:
        lines.append(live_text(views))
    if runs:
        lines += ["", "  last runs:", *_runs_table(runs)]
    return "\n".join(lines)


def _lock_line(holder: dict | None, now: float) -> str:
    if not holder:
        return "not locked"
    age = now - float(holder.get("acquired_at", now))
    left = float(holder.get("lease_until", now)) - now
    lease = f"lease ends in {left:.0f}s unless renewed" if left > 0 else "lease expired: the next run takes over"
    return (f"locked by {holder.get('user')}@{holder.get('host')} (pid {holder.get('pid')}, {holder.get('command')}, "
            f"run {holder.get('run_id')}) for {age:.0f}s; {lease}")


def _steps_in_brief(env: str, records: dict, drift: dict[str, dict] | None, unapplied) -> list[str]:
    """One line for the steps whose last run succeeded, one for each other (with its error), one
    for the steps never applied, and with `drift` one line saying which steps an apply would change."""
    fine = [name for name, record in records.items() if record.get("status") == "ok" and not record.get("error")]
    if len(fine) == len(records) and not unapplied:
        lines = [f"  steps: all {len(fine)} ok"]
    else:
        lines = [f"  steps: {len(fine)} ok" + (f" ({', '.join(fine)})" if fine else "")]
    for name, record in records.items():
        if name not in fine:
            error = f": {record['error']}" if record.get("error") else ""
            lines.append(f"    {name} {record.get('status', '?')}{error}")
    if unapplied:
        lines.append(f"    not applied: {', '.join(unapplied)}")
    if drift is not None:
        differing = {name: _drift_line(found, env) for name, found in drift.items()
                     if name in records and (found.get("error") or found["pending"])}
        lines.append("  live: AWS matches the manifest" if not differing else
                     "  live: " + "; ".join(f"{name} {line}" for name, line in differing.items()))
    return lines


def _steps_in_full(env: str, records: dict, drift: dict[str, dict] | None) -> list[str]:
    lines = []
    for name, record in records.items():
        lines.append(f"  {name:<10} {record.get('status', '?'):<9} last run {record.get('last_run', '-')} "
                     f"at {record.get('updated_at', '-')}")
        if record.get("error"):
            lines.append(f"  {'':<10} error: {record['error']}")
        if drift is not None and name in drift:
            lines.append(f"  {'':<10} live: {_drift_line(drift[name], env)}")
        for key, value in sorted((record.get("outputs") or {}).items()):
            lines.append(f"  {'':<10} {key}: {show_value(value, limit=10_000)}")
    return lines


def _runs_table(runs: list[dict]) -> list[str]:
    """The last runs, newest first, in aligned columns: when, who, what, how it ended, how long."""
    rows = [("started (UTC)", "by", "command", "result", "took", "run")]
    for run in runs:
        started = str(run.get("started_at", "?")).replace("T", " ")[:19]
        who = f"{run.get('user', '?')}@{run.get('host', '?')}"
        took = f"{float(run['seconds']):.1f}s" if run.get("seconds") is not None else "-"
        rows.append((started, who, str(run.get("command", "?")), str(run.get("result", "running")), took,
                     str(run.get("run_id", "?"))))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["    " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def live_text(views: dict[str, dict]) -> str:
    """`status --live`: each step's live view (`Step.live`: its title and lines), in graph order;
    empty when no step offers one."""
    lines: list[str] = []
    for name, view in views.items():
        if view.get("lines"):
            lines += ["", f"  {view.get('title', name)} (live):", *(f"    {line}" for line in view["lines"])]
    return "\n".join(lines)

