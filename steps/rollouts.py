"""How ECS services roll out and run, as ECS and the load balancer say: the services step's
rollout poller (a deployment awaited to its end, failing with ECS's reasons) and the view of the
services `status --live` shows. Plain reads of ECS and Elastic Load Balancing; the step decides
what to await and what to show.

A rollout succeeds when what users mean by it holds: the PRIMARY deployment runs the revision
just registered, its rollout state is COMPLETED with every task running, and the load
balancer's targets are healthy. A circuit-breaker rollback or a timeout fails it, with ECS's own
reasons (service events, stopped tasks' `stoppedReason`, unhealthy targets).
"""
from __future__ import annotations

from orchestrator import waiters
from orchestrator.aws import error_code
from orchestrator.waiters import WaitFailed

#: ECS answers describe_services for at most this many services per call.
DESCRIBE_BATCH = 10


# --- the rollout -----------------------------------------------------------------------------


class RolloutPoller:
    """Awaits the rollouts of the services a run changed, with one describe_services per round
    for up to ten of them: the first check of a round reads every awaited service, the others
    use what it read."""

    def __init__(self, ecs, elb, cluster: str):
        self.ecs, self.elb, self.cluster = ecs, elb, cluster
        self.expected: dict[str, tuple[str, list[str], float]] = {}  # name → (revision, target groups, deadline)
        self.fresh: dict[str, dict] = {}

    def expect(self, name: str, arn: str, target_groups: list[str], timeout: float) -> None:
        self.expected[name] = (arn, target_groups, waiters.clock() + timeout)

    def check(self, name: str) -> tuple[bool, str]:
        service = self._read(name)
        arn, target_groups, deadline = self.expected[name]
        if service is None:
            raise WaitFailed(f"service {name} disappeared during its rollout")
        primary = next((d for d in service.get("deployments", []) if d["status"] == "PRIMARY"), None)
        if primary is None or primary["taskDefinition"] != arn or primary.get("rolloutState") == "FAILED":
            self.expected.pop(name)
            raise WaitFailed(f"the rollout of service {name} failed"
                             + (" and ECS rolled it back" if primary and primary["taskDefinition"] != arn else "")
                             + f": {self._reasons(name, service, target_groups)}")
        state = primary.get("rolloutState", "UNKNOWN")
        status = f"{primary.get('runningCount', 0)}/{primary.get('desiredCount', 0)} running, {state}"
        done = state == "COMPLETED" and primary.get("runningCount") == primary.get("desiredCount")
        if done:
            unhealthy = self._unhealthy_targets(target_groups)
            if not unhealthy:
                self.expected.pop(name)
                return True, status
            status += f", targets not healthy yet: {'; '.join(unhealthy)}"
        if waiters.clock() > deadline:
            self.expected.pop(name)
            raise WaitFailed(f"the rollout of service {name} did not finish in time ({status}): "
                             f"{self._reasons(name, service, target_groups)}")
        return False, status

    def _read(self, name: str) -> dict | None:
        if name not in self.fresh:
            names = sorted(self.expected)
            for start in range(0, len(names), DESCRIBE_BATCH):
                for service in self.ecs.describe_services(cluster=self.cluster,
                                                          services=names[start:start + DESCRIBE_BATCH])["services"]:
                    self.fresh[service["serviceName"]] = service
        return self.fresh.pop(name, None)

    def _unhealthy_targets(self, target_groups: list[str]) -> list[str]:
        found = []
        for arn in target_groups:
            for target in self.elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]:
                health = target["TargetHealth"]
                if health["State"] not in ("healthy", "draining"):
                    found.append(f"{target['Target']['Id']} {health['State']}"
                                 + (f" ({health.get('Reason')}: {health.get('Description', '')})"
                                    if health.get("Reason") else ""))
        return found

    def _reasons(self, name: str, service: dict, target_groups: list[str]) -> str:
        """What ECS says went wrong: its latest events, why tasks stopped, why targets are unhealthy."""
        events = [event["message"] for event in service.get("events", [])[:3]]
        stopped = []
        arns = self.ecs.list_tasks(cluster=self.cluster, serviceName=name, desiredStatus="STOPPED")["taskArns"][:5]
        if arns:
            for task in self.ecs.describe_tasks(cluster=self.cluster, tasks=arns)["tasks"]:
                reason = task.get("stoppedReason", "")
                containers = [f"{c['name']}: {c['reason']}" for c in task.get("containers", []) if c.get("reason")]
                stopped.append("; ".join([reason, *containers]).strip("; "))
        parts = [f"events: {' | '.join(events)}" if events else "",
                 f"stopped tasks: {' | '.join(s for s in stopped if s)}" if any(stopped) else "",
                 f"targets: {' | '.join(self._unhealthy_targets(target_groups))}" if target_groups else ""]
        return "; ".join(part for part in parts if part and not part.endswith(": ")) or "ECS gave no reason"


def active_services(ecs, cluster: str, names: list[str], **params) -> dict[str, dict]:
    """The services `names` of `cluster` that exist (not INACTIVE: deleted), by name, as ECS
    describes them now (with `params`, e.g. include=["TAGS"]), DESCRIBE_BATCH per call; none
    when the cluster is gone."""
    found: dict[str, dict] = {}
    try:
        for start in range(0, len(names), DESCRIBE_BATCH):
            for service in ecs.describe_services(cluster=cluster, services=names[start:start + DESCRIBE_BATCH],
                                                 **params)["services"]:
                if service["status"] != "INACTIVE":
                    found[service["serviceName"]] = service
    except Exception as error:
        if error_code(error) != "ClusterNotFoundException":
            raise
        return {}
    return found


# --- status --live ---------------------------------------------------------------------------


def live_services(ecs, elb, cluster: str, names: list[str]) -> dict:
    """What `status --live` shows of the services `names` of `cluster`, as ECS and the load
    balancer say now: desired, running and pending tasks, the PRIMARY deployment's rollout
    state, the revision in service, target health."""
    found = active_services(ecs, cluster, names)
    services = {name: _live_state(found.get(name), elb) for name in names}
    return {"title": "services", "services": services,
            "lines": [f"{name:<12} {state['line']}" for name, state in services.items()]}


def _live_state(service: dict | None, elb) -> dict:
    if service is None:
        return {"line": "not deployed"}
    primary = next((d for d in service.get("deployments", []) if d["status"] == "PRIMARY"), {})
    health: dict[str, int] = {}
    for balancer in service.get("loadBalancers", []):
        for target in elb.describe_target_health(TargetGroupArn=balancer["targetGroupArn"])["TargetHealthDescriptions"]:
            state = target["TargetHealth"]["State"]
            health[state] = health.get(state, 0) + 1
    state = {"desired": service["desiredCount"], "running": service["runningCount"],
             "pending": service["pendingCount"], "rollout": primary.get("rolloutState", "-"),
             "revision": service["taskDefinition"].rsplit("/", 1)[-1], "targets": health}
    targets = (", targets " + (", ".join(f"{count} {what}" for what, count in sorted(health.items())) or "none")
               if service.get("loadBalancers") else "")
    state["line"] = (f"{state['running']}/{state['desired']} running, {state['pending']} pending, rollout "
                     f"{state['rollout']}, revision {state['revision']}{targets}")
    return state
