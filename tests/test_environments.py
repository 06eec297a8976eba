"""The shipped staging and prod manifests validate and plan against an empty account."""
from __future__ import annotations

import pytest

from orchestrator.engine import Engine
from orchestrator.graph import StepGraph
from orchestrator.manifest import load_manifest
from steps import all_steps
from tests.conftest import MANIFESTS


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_environment_plans_from_nothing(env, aws):
    manifest = load_manifest(MANIFESTS, env)
    results = Engine(manifest, aws, StepGraph(all_steps())).plan()
    assert {name: r.status for name, r in results.items()} == {name: "ok" for name in results}, \
        {name: r.error for name, r in results.items() if r.error}
    creates = [(c.kind, c.name) for r in results.values() for c in r.changes if c.action == "create"]
    assert ("vpc", "vpc") in creates
    nat_gateways = [name for kind, name in creates if kind == "nat_gateway"]
    assert len(nat_gateways) == (3 if env == "prod" else 1)
    listeners = sorted(name for kind, name in creates if kind == "listener")
    assert listeners == (["http"] if env == "dev" else ["http", "https"])
    assert aws.ledger.count(mutating=True) == 0, [c.operation for c in aws.ledger.calls if c.mutating]
