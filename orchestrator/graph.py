"""The step graph: dependencies, selection by `--target`, orders, and drawings."""
from __future__ import annotations

from graphlib import CycleError, TopologicalSorter
from typing import Iterable

from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.model import Step


class StepGraph:
    def __init__(self, steps: Iterable[Step]):
        self.steps: dict[str, Step] = {}
        for step in steps:
            if step.name in self.steps:
                raise OrchestratorError(f"two steps are named {step.name!r}")
            self.steps[step.name] = step
        for step in self.steps.values():
            unknown = [dep for dep in step.depends_on if dep not in self.steps]
            if unknown:
                raise OrchestratorError(f"step {step.name!r} depends on unknown step(s): {', '.join(unknown)}")
        try:
            self._order = list(TopologicalSorter(self.deps()).static_order())
        except CycleError as err:
            raise OrchestratorError(f"the step graph has a cycle: {' -> '.join(err.args[1])}") from None

    def deps(self) -> dict[str, tuple[str, ...]]:
        return {name: step.depends_on for name, step in self.steps.items()}

    def order(self, names: Iterable[str] | None = None) -> list[str]:
        """Dependencies first; `names` restricts the result to those steps."""
        wanted = set(self.steps if names is None else names)
        return [name for name in self._order if name in wanted]

    def select(self, targets: Iterable[str] = ()) -> set[str]:
        """The targets and everything they depend on; all steps when no target is given."""
        targets = list(targets)
        if not targets:
            return set(self.steps)
        unknown = [t for t in targets if t not in self.steps]
        if unknown:
            raise UsageError(f"unknown step(s) in --target: {', '.join(unknown)} (steps: {', '.join(self.order())})")
        selected: set[str] = set()
        pending = list(targets)
        while pending:
            name = pending.pop()
            if name not in selected:
                selected.add(name)
                pending.extend(self.steps[name].depends_on)
        return selected

    def select_for_destroy(self, targets: Iterable[str] = ()) -> set[str]:
        """The targets and everything that depends on them (those must go first)."""
        targets = list(targets)
        if not targets:
            return set(self.steps)
        self.select(targets)  # validates the names
        selected = set(targets)
        changed = True
        while changed:
            changed = False
            for name, step in self.steps.items():
                if name not in selected and selected.intersection(step.depends_on):
                    selected.add(name)
                    changed = True
        return selected

    def dependents(self, name: str) -> set[str]:
        return {other for other, step in self.steps.items() if name in step.depends_on}

    def render(self, fmt: str = "text") -> str:
        edges = [(dep, name) for name in self.order() for dep in self.steps[name].depends_on]
        if fmt == "dot":
            lines = ["digraph steps {", "  rankdir=LR;"]
            lines += [f'  "{name}";' for name in self.order()]
            lines += [f'  "{a}" -> "{b}";' for a, b in edges]
            return "\n".join(lines + ["}"])
        if fmt == "mermaid":
            lines = ["graph LR"] + [f"  {name}" for name in self.order() if not self.steps[name].depends_on
                                    and not self.dependents(name)]
            return "\n".join(lines + [f"  {a} --> {b}" for a, b in edges])
        width = max(len(name) for name in self.steps)
        lines = []
        for name in self.order():
            step = self.steps[name]
            after = ", ".join(step.depends_on) if step.depends_on else "-"
            lines.append(f"{name:<{width}}  after: {after:<24}  {step.description}".rstrip())
        return "\n".join(lines)
