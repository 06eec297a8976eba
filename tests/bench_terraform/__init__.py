"""Terraform on the same `dev` workload, for the bench's side by side (`python -m tests.bench latency`).

The *.tf files beside this module describe what the orchestrator deploys for dev (PLATFORM.md),
with the provider pointed at one endpoint (the bench's counting proxy in front of a moto server).
The configuration bundles and the containers that run them are rendered by the orchestrator's
own code (steps/bundles.py), so both tools upload the same files and run the same containers.

Each `Workspace` is a temporary folder holding a copy of the configuration, its variables and
its state: nothing is written into the checkout. `terraform init` takes the AWS provider from
the folder named by ORCHESTRATOR_BENCH_TF_PLUGINS (`-plugin-dir`) when it is set, and from the
registry otherwise.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
#: A folder of provider plugins for `terraform init -plugin-dir` (no registry needed).
PLUGINS = "ORCHESTRATOR_BENCH_TF_PLUGINS"
#: The values the orchestrator's bench gives its own run (tests/bench.py ENV).
DB_CONNECTION, SLACK_WEBHOOK = "Host=bench;Password=bench-only", "https://hooks.example/b"
GRAFANA_ADMIN_PASSWORD = "bench-only-grafana-admin-password"
#: Facts known only once the platform exists: the bundles are rendered with stand-ins (the
#: orchestrator's own plan renders them with placeholders in the same way).
LOAD_BALANCER_DNS = "gamepulse-dev-0000000000.us-east-1.elb.amazonaws.com"


class TerraformError(Exception):
    """A terraform command failed; the message ends with what it printed."""


def missing() -> str | None:
    """Why Terraform cannot run here (None: it can)."""
    if shutil.which("terraform") is None:
        return "terraform is not on PATH"
    return None


def variables(endpoint: str) -> dict:
    """The configuration's variables: the endpoint, the secrets' values, and dev's bundles as the
    orchestrator renders them."""
    from orchestrator.manifest import load_manifest
    from steps import bundles, taskdefs

    manifest = load_manifest(ROOT / "manifests", "dev")
    prefix, account = manifest.prefix, manifest.account_id
    rendered = bundles.render(manifest, bundles.Facts(
        loki_bucket=f"{prefix}-loki-chunks-{account}", namespace=f"{prefix}.local", region=manifest.region,
        cluster_arn=f"arn:aws:ecs:{manifest.region}:{account}:cluster/{prefix}",
        load_balancer_dns=LOAD_BALANCER_DNS))
    files, containers = {}, {}
    for service, bundle in rendered.items():
        key_prefix = taskdefs.bundle_prefix(service, bundle.hash)
        files.update({key_prefix + path: content.decode() for path, content in bundle.files.items()})
        spec = bundle.container
        containers[service] = {
            "prefix": key_prefix, "image": spec.image, "command": list(spec.command), "ports": list(spec.ports),
            "config_dir": spec.config_dir, "data_dir": spec.data_dir or "", "environment": spec.environment,
            "secrets": spec.secrets, "health_check": list(spec.health_check or ()), "memory": spec.memory or 0}
    app = manifest.services.tasks["gamepulse"].app
    return {"endpoint": endpoint, "db_connection": DB_CONNECTION, "slack_webhook": SLACK_WEBHOOK,
            "grafana_admin_password": GRAFANA_ADMIN_PASSWORD, "bundle_files": files, "bundles": containers,
            "app_environment": {**bundles.app_environment(manifest), **app.environment}}


class Workspace:
    """A temporary copy of the configuration, with its variables and its own state (one per
    server: the state describes what that server holds). Use as a context manager."""

    def __init__(self, endpoint: str, env: dict[str, str]):
        self.folder = Path(tempfile.mkdtemp(prefix="bench-terraform-"))
        for source in HERE.glob("*.tf"):
            shutil.copy(source, self.folder / source.name)
        (self.folder / "terraform.tfvars.json").write_text(json.dumps(variables(endpoint)))
        self.env = {**env, "TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"}

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def run(self, *args: str, ok=(0,)) -> subprocess.CompletedProcess:
        """Run `terraform ARGS` here; a return code outside `ok` raises TerraformError."""
        result = subprocess.run(["terraform", *args], cwd=self.folder, env=self.env, capture_output=True,
                                text=True, stdin=subprocess.DEVNULL)
        if result.returncode not in ok:
            raise TerraformError(f"terraform {args[0]} exited {result.returncode}:\n"
                                 f"{(result.stderr or result.stdout)[-4000:]}")
        return result

    def init(self) -> None:
        plugins = os.environ.get(PLUGINS)
        self.run("init", "-input=false", "-no-color", *([f"-plugin-dir={plugins}"] if plugins else []))

    def objects(self) -> int:
        """The resources Terraform manages (data sources left out); none before the first apply."""
        if not (self.folder / "terraform.tfstate").exists():
            return 0
        listed = self.run("state", "list").stdout.split()
        return sum(1 for address in listed if not address.startswith("data.") and ".data." not in address)


#: The commands the bench times, by scenario (as a user runs them in a pipeline).
COMMANDS = {"cold apply": ("apply", "-auto-approve", "-input=false", "-no-color"),
             "unchanged apply": ("apply", "-auto-approve", "-input=false", "-no-color"),
             "plan": ("plan", "-input=false", "-no-color", "-detailed-exitcode")}
