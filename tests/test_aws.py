"""The client factory: one client per service for a whole run, made when a step first calls the
service and never for one no step calls (each client costs milliseconds of CPU, its service's
model tens for the first one), with every call still filed under the step that made it."""
from __future__ import annotations

from collections import Counter

from orchestrator.aws import FACTS, STATE, current_step
from orchestrator.engine import Engine
from orchestrator.graph import StepGraph
from orchestrator.manifest import load_manifest
from orchestrator.state import StateStore
from steps import all_steps
from tests.conftest import MANIFESTS


def count_clients(aws) -> Counter:
    """Counts each client the factory makes, by service (its name in the ledger's calls)."""
    made: Counter = Counter()
    make = aws._session.create_client

    def counting(service, **kwargs):
        client = make(service, **kwargs)
        made[client.meta.service_model.service_id.hyphenize()] += 1
        return client

    aws._session.create_client = counting
    return made


def test_run_facts_share_the_step_clients_and_stay_filed_under_facts(aws):
    made = count_clients(aws)
    token = current_step.set("vpc")  # the step that asks
    try:
        zones = aws.available_zones()
        offered = aws.endpoint_service_zones(("com.amazonaws.us-east-1.s3",))
        aws.client("ec2").describe_vpcs()
    finally:
        current_step.reset(token)
    assert zones and offered["com.amazonaws.us-east-1.s3"]
    assert made == {"ec2": 1}
    assert [(call.step, call.operation) for call in aws.ledger.calls] == [
        (FACTS, "DescribeAvailabilityZones"), (FACTS, "DescribeVpcEndpointServices"), ("vpc", "DescribeVpcs")]


def test_a_plan_makes_one_client_per_service_it_calls_and_none_for_another(aws):
    manifest = load_manifest(MANIFESTS, "dev")
    made = count_clients(aws)
    results = Engine(manifest, aws, StepGraph(all_steps()), store=StateStore(aws, manifest)).plan()
    assert all(result.status == "ok" for result in results.values()), \
        {name: result.error for name, result in results.items() if result.error}
    called = {call.service for call in aws.ledger.calls}
    assert set(made) == called  # no client for a service no step called
    assert all(count == 1 for count in made.values()), made  # the state store's own included
    assert {call.service for call in aws.ledger.calls if call.step == STATE} == {"dynamodb"}
    assert {"ec2", "iam", "s3", "ecs"} <= called
