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
    """Why a change was refused, always naming the flag that would allow it."""
    flag = f"--{change.blocked}"
    if not change.note:
        return f"needs {flag}"
    return change.note if flag in change.note else f"{change.note} (needs {flag})"


def change_lines(change: Change, dependants: tuple[str, ...] = ()) -> list[str]:
    head = f"  {SYMBOL[change.action]:>3} {change.action} {change.kind} {change.name}"
    if change.blocked:
        head += f"   [refused without --{change.blocked}]"
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


def plan_text(title: str, results: dict) -> str:
    lines = [title, ""]
    totals: Counter = Counter()
    refused = 0
    for name, result in results.items():
        if result.status == "failed":
            lines.append(f"{name}: could not plan: {result.error}")
            continue
        if result.status == "skipped":
            lines.append(f"{name}: not planned ({result.error})")
            continue
        if not result.changes:
            lines.append(f"{name}: up to date")
            continue
        lines.append(f"{name}:")
        for change in result.changes:
            lines.extend(change_lines(change, result.dependants))
            if change.blocked:
                refused += 1
            else:
                totals[change.action] += 1
    lines.append("")
    unplanned = [name for name, r in results.items() if r.status in ("failed", "skipped")]
    if unplanned:
        lines.append(f"Not planned: {', '.join(unplanned)} (see above); the counts below leave them out.")
    if not totals and not refused:
        lines.append("No changes. AWS matches the manifest" + (" for the steps planned." if unplanned else "."))
    else:
        summary = ", ".join(f"{totals[a]} to {a}" for a in ("create", "update", "replace", "delete"))
        lines.append(f"Plan: {summary}." + (f" {refused} refused (needs a flag; see above)." if refused else ""))
    return "\n".join(lines)


def pending(results: dict) -> int:
    """Changes an apply would make; refused ones (kept data) never happen without a flag."""
    return sum(1 for r in results.values() for c in r.changes if not c.blocked)


def plan_json(env: str, results: dict) -> str:
    return json.dumps({
        "environment": env,
        "steps": {name: {"status": r.status, "error": r.error, "changes": [c.to_dict() for c in r.changes]}
                  for name, r in results.items()},
        "pending": pending(results),
    }, indent=2, default=str)


def run_summary(title: str, results: dict, ledger) -> str:
    width = max([len(name) for name in results] + [4])
    lines = ["", title, f"  {'step':<{width}}  {'result':<8} {'changes':>7} {'calls':>6} {'time':>7}"]
    for name, result in results.items():
        calls = ledger.count(step=name)
        lines.append(f"  {name:<{width}}  {result.status:<8} {len(result.applied):>7} {calls:>6} "
                     f"{result.seconds:>6.1f}s")
        for change in result.refused:
            lines.append(f"  {'':<{width}}  kept {change.kind} {change.name}: {refusal(change)}")
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
                drift: dict[str, dict] | None = None) -> str:
    lines = [f"Environment {env}"]
    if holder:
        age = now - float(holder.get("acquired_at", now))
        left = float(holder.get("lease_until", now)) - now
        lease = f"lease ends in {left:.0f}s unless renewed" if left > 0 else "lease expired: the next run takes over"
        lines.append(f"  locked by {holder.get('user')}@{holder.get('host')} (pid {holder.get('pid')}, "
                     f"{holder.get('command')}, run {holder.get('run_id')}) for {age:.0f}s; {lease}")
    else:
        lines.append("  not locked")
    if not records:
        lines.append("  nothing applied yet")
    for name, record in records.items():
        lines.append(f"  {name:<10} {record.get('status', '?'):<9} last run {record.get('last_run', '-')} "
                     f"at {record.get('updated_at', '-')}")
        if record.get("error"):
            lines.append(f"  {'':<10} error: {record['error']}")
        if drift is not None and name in drift:
            lines.append(f"  {'':<10} live: {_drift_line(drift[name], env)}")
        for key, value in sorted((record.get("outputs") or {}).items()):
            lines.append(f"  {'':<10} {key}: {show_value(value, limit=10_000)}")
    if runs:
        lines.append("  last runs:")
        for run in runs:
            lines.append(f"    {run.get('started_at', '?')}  {run.get('command', '?'):<8} "
                         f"{run.get('result', 'running'):<8} run {run.get('run_id')}")
    return "\n".join(lines)


def live_text(views: dict[str, dict]) -> str:
    """`status --live`: the URLs and the state of every alarm, by what it watches (the
    dashboards step's live view); empty when no step offers one."""
    view = views.get("dashboards")
    if not view:
        return ""
    lines = ["", "  alerting (live):", f"    load balancer  {view.get('alb_url') or '(not known)'}",
             f"    Grafana        {view.get('grafana_url') or '(not known)'}"]
    for subject, checks in sorted(view.get("alarms", {}).items()):
        states = ", ".join(f"{check} {state}" for check, state in sorted(checks.items()))
        lines.append(f"    {subject:<28} {states}")
    return "\n".join(lines)
