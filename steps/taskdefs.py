"""Task definitions, pure: render the RegisterTaskDefinition request of a service, and bring
what DescribeTaskDefinition answers into the same shape, so the two compare equal exactly
when ECS runs what the manifest asks for.

ECS fills in what a request leaves out (`cpu: 0` and `essential: true` per container, empty
`mountPoints`/`volumesFrom`/`systemControls`, the health check's interval, timeout and
retries, a port mapping's protocol and host port) and adds what only it knows (`revision`,
`status`, `requiresAttributes`, `compatibilities`, `registeredAt`, `registeredBy` …). The
normaliser drops both, sorts what ECS does not keep in order (environment, secrets), and is
applied to the rendered request as well: what counts is the normal form of each side.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from steps.bundles import Bundle

#: Where the init container puts the bundle, and the task volume that carries it to the main container.
CONFIG_VOLUME = "config"
CONFIG_STAGING = "/bundle"
DATA_VOLUME = "data"
INIT_CONTAINER = "config-init"

#: Task-level fields of a DescribeTaskDefinition answer that a register request never sets.
_ECS_ONLY = ("taskDefinitionArn", "revision", "status", "requiresAttributes", "compatibilities", "registeredAt",
             "registeredBy", "deregisteredAt", "deleteRequestedAt")
#: Container fields ECS sets when the request leaves them out, with the value it sets.
_CONTAINER_DEFAULTS = {"cpu": 0, "essential": True}
_HEALTH_CHECK_DEFAULTS = {"interval": 30, "timeout": 5, "retries": 3, "startPeriod": 0}


@dataclass(frozen=True)
class TaskSettings:
    """What a task definition needs besides the containers' own records."""

    family: str
    service: str  # the bundle is read from the service's own prefix: its task role may read nothing else
    cpu: int
    memory: int
    execution_role_arn: str
    task_role_arn: str
    log_group: str
    region: str
    init_image: str
    config_bucket: str
    stop_timeout: int | None = None
    file_system_id: str | None = None
    access_point_id: str | None = None


@dataclass(frozen=True)
class AppContainer:
    name: str
    image: str  # repository URI@digest
    port: int
    health_check: tuple[str, ...] | None  # None: the load balancer's health check is the app's only one
    environment: dict[str, str]
    secrets: dict[str, str]  # variable → secret ARN


def bundle_prefix(service: str, digest: str) -> str:
    """The key prefix of a service's bundle: the iam step lets its task read `<service>/*` only."""
    return f"{service}/{digest}/"


def render(settings: TaskSettings, bundle: Bundle | None, app: AppContainer | None,
           secret_arns: dict[str, str]) -> dict:
    """The RegisterTaskDefinition request (without tags) of one service.

    A service runs its bundle's container, or the app with the bundle's container as a sidecar
    (the app starts once the sidecar is HEALTHY). Whatever runs a bundle starts once the init
    container has copied the bundle (`dependsOn` SUCCESS) into a task volume."""
    containers = []
    volumes: list[dict] = []
    if bundle is not None:
        volumes.append({"name": CONFIG_VOLUME})
        containers.append(_init_container(settings, bundle))
        containers.append(_bundle_container(settings, bundle, secret_arns, sidecar=app is not None))
    if app is not None:
        containers.append(_app_container(settings, app, sidecar=bundle.service if bundle else None))
    if settings.access_point_id:
        volumes.append({"name": DATA_VOLUME, "efsVolumeConfiguration": {
            "fileSystemId": settings.file_system_id, "transitEncryption": "ENABLED",
            "authorizationConfig": {"accessPointId": settings.access_point_id, "iam": "ENABLED"}}})
    return {"family": settings.family, "taskRoleArn": settings.task_role_arn,
            "executionRoleArn": settings.execution_role_arn, "networkMode": "awsvpc",
            "requiresCompatibilities": ["FARGATE"], "cpu": str(settings.cpu), "memory": str(settings.memory),
            "runtimePlatform": {"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"},
            "containerDefinitions": containers, "volumes": volumes}


def _logs(settings: TaskSettings, container: str) -> dict:
    return {"logDriver": "awslogs", "options": {"awslogs-group": settings.log_group,
                                                "awslogs-region": settings.region,
                                                "awslogs-stream-prefix": container}}


def _init_container(settings: TaskSettings, bundle: Bundle) -> dict:
    source = f"s3://{settings.config_bucket}/{bundle_prefix(settings.service, bundle.hash)}"
    return {"name": INIT_CONTAINER, "image": settings.init_image, "essential": False,
            "command": ["s3", "cp", "--recursive", "--only-show-errors", source, CONFIG_STAGING],
            "mountPoints": [{"sourceVolume": CONFIG_VOLUME, "containerPath": CONFIG_STAGING}],
            "logConfiguration": _logs(settings, INIT_CONTAINER)}


def _bundle_container(settings: TaskSettings, bundle: Bundle, secret_arns: dict[str, str], sidecar: bool) -> dict:
    spec = bundle.container
    mounts = [{"sourceVolume": CONFIG_VOLUME, "containerPath": spec.config_dir, "readOnly": True}]
    if settings.access_point_id and spec.data_dir:
        mounts.append({"sourceVolume": DATA_VOLUME, "containerPath": spec.data_dir})
    container = {
        "name": bundle.service, "image": spec.image, "essential": True,
        "portMappings": [{"containerPort": port, "protocol": "tcp"} for port in spec.ports],
        "environment": _pairs(spec.environment),
        "secrets": [{"name": name, "valueFrom": secret_arns[secret]} for name, secret in sorted(spec.secrets.items())],
        "mountPoints": mounts,
        "dependsOn": [{"containerName": INIT_CONTAINER, "condition": "SUCCESS"}],
        "logConfiguration": _logs(settings, bundle.service)}
    if spec.command:
        container["command"] = list(spec.command)
    if spec.memory:
        container["memory"] = spec.memory
    if spec.health_check:
        container["healthCheck"] = {"command": list(spec.health_check), "interval": 15, "timeout": 5, "retries": 3,
                                    "startPeriod": 10}
    if settings.stop_timeout and not sidecar:
        container["stopTimeout"] = settings.stop_timeout
    return container


def _app_container(settings: TaskSettings, app: AppContainer, sidecar: str | None) -> dict:
    container = {
        "name": app.name, "image": app.image, "essential": True,
        "portMappings": [{"containerPort": app.port, "protocol": "tcp"}],
        "environment": _pairs(app.environment),
        "secrets": [{"name": name, "valueFrom": arn} for name, arn in sorted(app.secrets.items())],
        "logConfiguration": _logs(settings, app.name)}
    if app.health_check:
        container["healthCheck"] = {"command": list(app.health_check), "interval": 15, "timeout": 5, "retries": 3,
                                    "startPeriod": 30}
    if sidecar:
        container["dependsOn"] = [{"containerName": sidecar, "condition": "HEALTHY"}]
    if settings.stop_timeout:
        container["stopTimeout"] = settings.stop_timeout
    return container


def health_check_notes(definition: dict) -> list[str]:
    """A CMD-SHELL health check runs a program that must be in the image; nothing before a
    rollout can tell (ECS then marks every task unhealthy and the circuit breaker rolls back)."""
    notes = []
    for container in definition["containerDefinitions"]:
        command = container.get("healthCheck", {}).get("command", [])
        if len(command) > 1 and command[0] == "CMD-SHELL":
            program = command[1].split()[0] if command[1].split() else ""
            if program and program not in _SHELL_BUILTINS:
                notes.append(f"container {container['name']}'s health check runs {program!r}: its image must have "
                             f"it (the stock ASP.NET runtime image has neither curl nor wget), or every rollout "
                             "rolls back")
    return notes


#: Words of a shell command line that name no program of the image.
_SHELL_BUILTINS = {"exit", "test", "[", "true", "false", "echo", "cd", "exec"}


def _pairs(values: dict[str, str]) -> list[dict]:
    return [{"name": name, "value": value} for name, value in sorted(values.items())]


# -- comparing ------------------------------------------------------------------------------


def normalise(definition: dict) -> dict:
    """A register request or a DescribeTaskDefinition `taskDefinition`, in one comparable shape."""
    task = {key: value for key, value in definition.items() if key not in _ECS_ONLY and key != "tags"}
    task["containerDefinitions"] = sorted((_container(c) for c in task.get("containerDefinitions", [])),
                                          key=lambda c: c["name"])
    task["volumes"] = sorted((_volume(v) for v in task.get("volumes", [])), key=lambda v: v["name"])
    for key in ("cpu", "memory"):  # ECS answers strings; a request may hold numbers
        if key in task:
            task[key] = str(task[key])
    return _prune(task)


def _container(container: dict) -> dict:
    result = {key: value for key, value in container.items() if _CONTAINER_DEFAULTS.get(key, object()) != value}
    result["environment"] = sorted(container.get("environment", []), key=lambda e: e["name"])
    result["secrets"] = sorted(container.get("secrets", []), key=lambda e: e["name"])
    result["portMappings"] = [_port(mapping) for mapping in container.get("portMappings", [])]
    if "healthCheck" in container:
        result["healthCheck"] = {key: value for key, value in container["healthCheck"].items()
                                 if _HEALTH_CHECK_DEFAULTS.get(key, object()) != value}
    result["mountPoints"] = [{**mount, "readOnly": bool(mount.get("readOnly", False))}
                             for mount in container.get("mountPoints", [])]
    return result


def _port(mapping: dict) -> dict:
    """awsvpc: the host port is the container port; tcp is the default protocol."""
    result = {key: value for key, value in mapping.items() if not (key == "protocol" and value == "tcp")}
    if result.get("hostPort") == result.get("containerPort"):
        result.pop("hostPort")
    return result


def _volume(volume: dict) -> dict:
    result = dict(volume)
    efs = volume.get("efsVolumeConfiguration")
    if efs is not None:
        result["efsVolumeConfiguration"] = {key: value for key, value in efs.items()
                                            if not (key == "rootDirectory" and value == "/")}
    return result


def _prune(value: Any) -> Any:
    """Without the empty lists, maps and nulls: ECS answers `[]` and `{}` for what a request left out."""
    if isinstance(value, dict):
        pruned = {key: _prune(item) for key, item in value.items()}
        return {key: item for key, item in pruned.items() if item not in (None, [], {})}
    if isinstance(value, list):
        return [_prune(item) for item in value]
    return value


def definition_hash(definition: dict) -> str:
    """sha256 of the normal form: equal hashes, equal definitions."""
    text = json.dumps(normalise(definition), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
