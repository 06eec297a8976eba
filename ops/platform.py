"""What `apply` recorded of an environment, read back for the operator commands: the steps'
outputs in the state table (load balancer URL, target groups, cluster and services, alarm
names), and Grafana's admin credentials from the environment's Secrets Manager secret."""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import OrchestratorError

#: Grafana's admin user (steps/bundles.py sets GF_SECURITY_ADMIN_USER to it).
GRAFANA_USER = "admin"
#: The secret holding its password (steps/bundles.py: GRAFANA_ADMIN_SECRET).
GRAFANA_SECRET = "grafana-admin"


@dataclass
class Deployed:
    manifest: object
    aws: object
    outputs: dict  # step name → its recorded outputs
    #: Another base URL for the load balancer (a domain that matches its certificate, a local server).
    base_url: str | None = None

    def output(self, step: str, key: str):
        value = (self.outputs.get(step) or {}).get(key)
        if value in (None, "", {}, []):
            raise OrchestratorError(f"{self.manifest.environment} has no recorded {step}.{key}: run "
                                    f"`orchestrator apply {self.manifest.environment}` first")
        return value

    @property
    def alb_url(self) -> str:
        return (self.base_url or self.output("alb", "url")).rstrip("/")

    @property
    def grafana_url(self) -> str:
        """Grafana is served under /grafana on the load balancer (steps/dashboards.py)."""
        if self.base_url:
            return f"{self.base_url.rstrip('/')}/grafana"
        return self.output("dashboards", "grafana_url").rstrip("/")

    @property
    def cluster(self) -> str:
        return self.output("services", "cluster_name")

    @property
    def app_service(self) -> str:
        """The service that runs the app (its task has an `app` container): gamepulse."""
        names = [name for name, spec in self.manifest.services.tasks.items() if spec.app is not None]
        if not names:
            raise OrchestratorError("the manifest runs no app service (services.tasks.*.app)")
        return names[0]

    def target_group(self, service: str) -> str:
        spec = self.manifest.services.tasks[service]
        return self.output("alb", "target_groups")[spec.target_group]

    def target_group_suffix(self, service: str) -> str:
        spec = self.manifest.services.tasks[service]
        return self.output("alb", "target_group_arn_suffixes")[spec.target_group]

    def grafana_password(self) -> str:
        """Read once per command, registered with the log redactor so it never shows."""
        from orchestrator.log import redactor
        secret_id = self.output("secrets", "arns").get(GRAFANA_SECRET)
        if not secret_id:
            raise OrchestratorError(f"{self.manifest.environment} has no {GRAFANA_SECRET} secret recorded")
        value = self.aws.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
        redactor.register(value)
        return value

    def grafana(self):
        from ops.http import Grafana
        return Grafana(self.grafana_url, GRAFANA_USER, self.grafana_password())


def deployed(aws, manifest, base_url: str | None = None) -> Deployed:
    """The environment's recorded outputs; an environment never applied is a clear error."""
    from orchestrator.state import StateStore
    store = StateStore(aws, manifest)
    if not store.exists():
        raise OrchestratorError(f"{manifest.environment} has no state table yet: run "
                                f"`orchestrator apply {manifest.environment}` first")
    return Deployed(manifest, aws, {name: record.get("outputs") or {} for name, record in store.steps().items()},
                    base_url)


def refuse_prod(manifest, allowed: bool, what: str) -> None:
    """Load and failure injection stay off an environment that refuses destroy (prod) unless asked."""
    if manifest.protection.refuse_destroy and not allowed:
        raise OrchestratorError(f"{what} refused for {manifest.environment}: it is protected "
                                "(protection.refuse_destroy); pass --allow-prod to run it anyway; nothing was done")
