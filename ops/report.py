"""One report shape for verify and the drills: a list of checks, each with its result, the
evidence behind it and what to do when it failed; rendered as a table or as JSON."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

PASS, FAIL, EMPTY, INFO = "pass", "FAIL", "empty", "info"


@dataclass
class Check:
    name: str
    result: str  # PASS, FAIL, EMPTY (a panel without data) or INFO (a measurement, never a failure)
    evidence: str
    action: str = ""  # what to do about a failure

    @property
    def failed(self) -> bool:
        return self.result in (FAIL, EMPTY)


@dataclass
class Report:
    title: str
    checks: list[Check] = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # measurements (a drill's timings)

    def add(self, name: str, ok: bool, evidence: str, action: str = "") -> Check:
        check = Check(name, PASS if ok else FAIL, evidence, "" if ok else action)
        self.checks.append(check)
        return check

    def note(self, name: str, evidence: str) -> None:
        self.checks.append(Check(name, INFO, evidence))

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.failed]

    def as_json(self) -> str:
        return json.dumps({"title": self.title, "ok": not self.failures, "facts": self.facts,
                           "checks": [asdict(check) for check in self.checks]}, indent=2, default=str)

    def as_table(self) -> str:
        """Check, result, evidence, then what to do under each failure; a closing count."""
        width = max((len(check.name) for check in self.checks), default=10)
        lines = [self.title, "", f"{'CHECK':<{width}}  {'RESULT':<6}  EVIDENCE"]
        for check in self.checks:
            lines.append(f"{check.name:<{width}}  {check.result:<6}  {check.evidence}")
            if check.action:
                lines.append(f"{'':<{width}}  {'':<6}  -> {check.action}")
        failed, counted = self.failures, [check for check in self.checks if check.result != INFO]
        lines += ["", f"{len(counted) - len(failed)} of {len(counted)} checks passed" +
                  (f"; failed: {', '.join(check.name for check in failed)}" if failed else "")]
        return "\n".join(lines)
