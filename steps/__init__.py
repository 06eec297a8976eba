"""The reconcile steps, one module each; every module owns one slice of AWS."""
from __future__ import annotations

import importlib

#: In graph order of dependency (the graph itself comes from each step's `depends_on`).
STEP_MODULES = ("vpc", "ecr", "storage", "secrets", "iam", "efs", "ecs", "alb", "services", "dashboards")


def all_steps() -> list:
    """One instance of each step (each module exposes its step class as `STEP`)."""
    return [importlib.import_module(f"steps.{name}").STEP() for name in STEP_MODULES]
