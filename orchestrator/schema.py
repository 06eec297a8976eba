"""The manifest's shape: one pydantic model per section, every field typed and documented.

Each section is read by the step that owns that slice of the platform. Unknown keys are
errors (``extra="forbid"``) so a typo never passes silently. `orchestrator schema` prints the
JSON Schema of `Manifest` for editors.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from orchestrator.permissions import partition_of

NAME = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"
#: In a secret's `env`, stands for the environment's name (upper case, `-` as `_`).
ENV_PLACEHOLDER = "{ENV}"


def _variable_part(environment: str) -> str:
    """An environment's name as it stands in a variable name: `dev` → `DEV`, `eu-prod` → `EU_PROD`."""
    return environment.upper().replace("-", "_")


class FieldError(ValueError):
    """A problem found by a check over a whole section, located at one field inside it (`at`,
    relative to the section), so the manifest error names that field's file and line."""

    def __init__(self, message: str, *at: str | int):
        super().__init__(message)
        self.at = at


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- state --------------------------------------------------------------------------------


class StateSpec(Section):
    table: str = Field(pattern=r"^[A-Za-z0-9_.-]{3,255}$", description="DynamoDB table for state and lock")
    lock_lease_seconds: int = Field(60, ge=10, le=3600, description="lock expires this long after the last heartbeat")
    run_retention_days: int = Field(90, ge=1, le=3650, description="run records expire (TTL) after this")
    deletion_protection: bool = False


class ProtectionSpec(Section):
    refuse_destroy: bool = Field(False, description="`destroy` refuses to run for this environment")
    require_saved_plan: bool = Field(False, description="`apply ENV` refuses: only a saved plan is applied "
                                                        "(`plan ENV --out FILE`, reviewed, then `apply ENV FILE`)")


class LoggingSpec(Section):
    retention_days: Literal[1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192,
                            2557, 2922, 3288, 3653] = Field(30, description="CloudWatch log and Loki retention")


# --- network (step vpc) --------------------------------------------------------------------


class IngressRule(Section):
    ports: list[int] = Field(min_length=1, description="TCP ports")
    sources: list[str] = Field(
        min_length=1, description="a CIDR, the name of another security group of this manifest, or 'vpc'")
    description: str = ""

    @field_validator("ports")
    @classmethod
    def _ports_in_range(cls, ports: list[int]) -> list[int]:
        for port in ports:
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is not between 1 and 65535")
        return ports


class SecurityGroupSpec(Section):
    description: str
    ingress: list[IngressRule] = []


class EndpointsSpec(Section):
    gateway: list[Literal["s3", "dynamodb"]] = ["s3"]
    interface: list[str] = ["ecr.api", "ecr.dkr", "secretsmanager", "logs"]
    security_group: str = Field("endpoints", description="security group the interface endpoints use")


class NetworkSpec(Section):
    cidr: str = Field(description="VPC IPv4 range, e.g. 10.20.0.0/16")
    zones: int = Field(2, description="number of availability zones (2 or more)")
    availability_zones: list[str] | None = Field(
        None, description="explicit zone names; default: the first `zones` zones the region offers the account")
    nat_gateways: Literal["single", "per_zone", "none"] = "single"
    public_subnet_prefix: int = Field(24, ge=16, le=28)
    private_subnet_prefix: int = Field(20, ge=16, le=28)
    public_cidrs: list[str] | None = Field(None, description="explicit public subnet CIDRs, one per zone")
    private_cidrs: list[str] | None = Field(None, description="explicit private subnet CIDRs, one per zone")
    security_groups: dict[str, SecurityGroupSpec]
    endpoints: EndpointsSpec = EndpointsSpec()

    @field_validator("cidr")
    @classmethod
    def _vpc_cidr(cls, value: str) -> str:
        net = _network(value)
        if not 16 <= net.prefixlen <= 28:
            raise ValueError(f"VPC range {value} must be between /16 and /28")
        return value

    @field_validator("zones")
    @classmethod
    def _enough_zones(cls, zones: int) -> int:
        if zones < 2:
            raise ValueError(f"{zones} zone(s) is too few: an Application Load Balancer needs at least 2")
        if zones > 6:
            raise ValueError(f"{zones} zones is more than any region offers here (at most 6)")
        return zones

    @field_validator("public_cidrs", "private_cidrs")
    @classmethod
    def _valid_cidrs(cls, cidrs: list[str] | None) -> list[str] | None:
        for cidr in cidrs or []:
            _network(cidr)
        return cidrs

    @field_validator("security_groups")
    @classmethod
    def _group_names(cls, groups: dict[str, SecurityGroupSpec]) -> dict[str, SecurityGroupSpec]:
        for name in groups:
            if not re.match(NAME, name):
                raise ValueError(f"security group name {name!r} must be lower-case letters, digits and dashes")
        return groups

    @model_validator(mode="after")
    def _consistent(self) -> "NetworkSpec":
        if self.availability_zones is not None and len(self.availability_zones) != self.zones:
            raise FieldError(f"lists {len(self.availability_zones)} zones but zones is {self.zones}",
                             "availability_zones")
        for kind in ("public_cidrs", "private_cidrs"):
            given = getattr(self, kind)
            if given is not None and len(given) != self.zones:
                raise FieldError(f"lists {len(given)} ranges but zones is {self.zones}", kind)
        self.subnet_cidrs()  # raises when the subnets do not fit or overlap
        for group, spec in self.security_groups.items():
            for rule_index, rule in enumerate(spec.ingress):
                for source_index, source in enumerate(rule.sources):
                    if source == "vpc" or source in self.security_groups:
                        continue
                    try:
                        _network(source)
                    except ValueError:
                        raise FieldError(
                            f"{source!r} is neither a CIDR, 'vpc', nor a security group of this manifest "
                            f"({', '.join(sorted(self.security_groups))})",
                            "security_groups", group, "ingress", rule_index, "sources", source_index) from None
        if self.endpoints.interface and self.endpoints.security_group not in self.security_groups:
            raise FieldError(f"{self.endpoints.security_group!r} is not a security group of this manifest",
                             "endpoints", "security_group")
        return self

    def zone_names(self, available: list[str]) -> list[str]:
        """The zones to use: the manifest's own list, or the first `zones` of those the region
        offers this account (`available`, in name order: letters may be missing)."""
        if self.availability_zones:
            return list(self.availability_zones)
        if len(available) < self.zones:
            raise ValueError(f"network.zones is {self.zones}, but the region offers this account only "
                             f"{len(available)} zone(s): {', '.join(available) or 'none'}")
        return list(available[: self.zones])

    def subnet_cidrs(self) -> tuple[list[str], list[str]]:
        """(public, private) CIDRs, one per zone: given explicitly, or carved from the VPC range.

        Carving takes the largest blocks first, each at the next aligned free address, so the
        result is deterministic and leaves the end of the range free for later growth.
        """
        vpc = _network(self.cidr)
        wanted = [("private", self.private_subnet_prefix), ("public", self.public_subnet_prefix)]
        carved: dict[str, list[str]] = {"public": [], "private": []}
        taken: list[ipaddress.IPv4Network] = []
        for kind, prefix in sorted(wanted, key=lambda item: item[1]):
            explicit = getattr(self, f"{kind}_cidrs")
            for index in range(self.zones):
                at = (f"{kind}_cidrs", index) if explicit is not None else ("cidr",)
                if explicit is not None:
                    net = _network(explicit[index])
                else:
                    net = _next_free(vpc, prefix, taken)
                    if net is None:
                        raise FieldError(f"{self.zones} {kind} subnets of /{prefix} do not fit in {self.cidr} "
                                         "next to the other subnets", *at)
                if not net.subnet_of(vpc):
                    raise FieldError(f"{kind} subnet {net} is outside the VPC range {self.cidr}", *at)
                clash = next((other for other in taken if other.overlaps(net)), None)
                if clash is not None:
                    raise FieldError(f"{kind} subnet {net} overlaps subnet {clash}", *at)
                taken.append(net)
                carved[kind].append(str(net))
        return carved["public"], carved["private"]


def _network(value: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError as err:
        raise ValueError(f"{value!r} is not a valid IPv4 CIDR ({err})") from None


def _next_free(vpc: ipaddress.IPv4Network, prefix: int, taken: list[ipaddress.IPv4Network]):
    if prefix < vpc.prefixlen:
        return None
    for candidate in vpc.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(other) for other in taken):
            return candidate
    return None


# --- identity (step iam) -------------------------------------------------------------------

Grant = Literal["config-read", "loki-bucket", "cloudwatch-read", "ecs-describe", "ecs-discovery"]


class TaskRoleSpec(Section):
    grants: list[Grant] = Field([], description="what the task may do; each grant names its actions and resources")


#: The execution role's managed policy when the manifest names none, an AWS-managed policy whose
#: ARN is in the region's partition (arn:aws:, arn:aws-cn:, arn:aws-us-gov:).
DEFAULT_EXECUTION_POLICY = "iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"


class IamSpec(Section):
    task_roles: dict[str, TaskRoleSpec]
    execution_role_managed_policies: list[str] | None = Field(
        None, description="managed policy ARNs for the execution role; default: AWS's "
                          "AmazonECSTaskExecutionRolePolicy in the region's partition")

    def execution_policies(self, partition: str) -> list[str]:
        """The execution role's managed policy ARNs, the default one in `partition`."""
        if self.execution_role_managed_policies is not None:
            return list(self.execution_role_managed_policies)
        return [f"arn:{partition}:{DEFAULT_EXECUTION_POLICY}"]


# --- images (step ecr) ---------------------------------------------------------------------


class RepositorySpec(Section):
    name: str | None = Field(None, pattern=r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*$",
                             description="repository name; default: the key. Repositories are per account, so "
                                         "environments sharing an account need names of their own")
    scan_on_push: bool = True
    tag_mutability: Literal["IMMUTABLE", "MUTABLE"] = "IMMUTABLE"
    encryption: Literal["AES256", "KMS"] = "AES256"
    expire_untagged_days: int = Field(7, ge=1)
    keep_tagged: int = Field(30, ge=1)
    tag: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
                            description="the image tag to deploy (resolved to its digest at apply); "
                                        "`apply ENV --image-tag KEY=TAG` overrides it")


class ImagesSpec(Section):
    repositories: dict[str, RepositorySpec]


# --- secrets (step secrets) ----------------------------------------------------------------


class SecretSpec(Section):
    description: str = ""
    source: Literal["env", "file", "generate"]
    env: str | None = Field(None, description="environment variable holding the value (source: env); {ENV} "
                                              "stands for the environment: GAMEPULSE_{ENV}_DB reads GAMEPULSE_DEV_DB "
                                              "in dev")
    path: str | None = Field(None, description="file holding the value (source: file)")
    length: int = Field(32, ge=16, le=4096, description="length of a generated value (source: generate)")
    shared: bool = Field(False, description="the same variable deliberately feeds every environment")

    def variable(self, environment: str) -> str | None:
        """The environment variable this environment reads the value from."""
        return self.env.replace(ENV_PLACEHOLDER, _variable_part(environment)) if self.env else None

    @model_validator(mode="after")
    def _source_has_its_field(self) -> "SecretSpec":
        if self.source == "env" and not self.env:
            raise FieldError("source 'env' needs the field 'env' (the variable's name)", "source")
        if self.source == "file" and not self.path:
            raise FieldError("source 'file' needs the field 'path'", "source")
        return self


class SecretsSpec(Section):
    recovery_window_days: int = Field(7, ge=7, le=30)
    values: dict[str, SecretSpec] = Field(description="secret name (under APP/ENV/) → where its value comes from")


# --- storage (steps storage and efs) -------------------------------------------------------


class BucketSpec(Section):
    purpose: str
    versioning: bool = True
    expire_days: int | None = Field(None, ge=1, description="expire objects after this; default: logging retention "
                                                            "for buckets that hold logs, never for others")
    holds_logs: bool = False
    rendered: bool = Field(False, description="holds only files the tool renders and uploads (config bundles): "
                                              "emptied and deleted on destroy without --delete-data")
    noncurrent_expire_days: int = Field(30, ge=1, description="delete noncurrent object versions after this")


class StorageSpec(Section):
    buckets: dict[str, BucketSpec]


class AccessPointSpec(Section):
    path: str = Field(pattern=r"^/[A-Za-z0-9_./-]*$")
    uid: int = Field(ge=0)
    gid: int = Field(ge=0)
    permissions: str = Field("0755", pattern=r"^[0-7]{3,4}$")


class EfsSpec(Section):
    performance_mode: Literal["generalPurpose", "maxIO"] = "generalPurpose"
    throughput_mode: Literal["bursting", "elastic"] = "bursting"
    transition_to_ia: Literal["AFTER_7_DAYS", "AFTER_14_DAYS", "AFTER_30_DAYS", "AFTER_60_DAYS",
                              "AFTER_90_DAYS"] | None = "AFTER_30_DAYS"
    backups: bool = False
    security_group: str = "efs"
    access_points: dict[str, AccessPointSpec]


# --- cluster (step ecs) --------------------------------------------------------------------


class CapacityStrategy(Section):
    provider: Literal["FARGATE", "FARGATE_SPOT"]
    weight: int = Field(1, ge=0, le=1000)
    base: int = Field(0, ge=0, le=100000)


class ClusterSpec(Section):
    container_insights: Literal["enhanced", "enabled", "disabled"] = Field(
        "enhanced", description="CloudWatch Container Insights: `enhanced` adds per-container metrics (what "
                                "`orchestrator loadtest` needs to weigh the collector sidecar against the app), "
                                "`enabled` per task and service only, `disabled` none (docs/cost.md)")
    capacity_providers: list[Literal["FARGATE", "FARGATE_SPOT"]] = ["FARGATE", "FARGATE_SPOT"]
    default_strategy: list[CapacityStrategy] = [CapacityStrategy(provider="FARGATE", weight=1)]
    log_groups: list[str] = Field(description="one per task family")
    namespace: str | None = Field(None, description="Cloud Map private DNS namespace; default APP-ENV.local")

    @model_validator(mode="after")
    def _strategy_uses_listed_providers(self) -> "ClusterSpec":
        for index, item in enumerate(self.default_strategy):
            if item.provider not in self.capacity_providers:
                raise FieldError(f"{item.provider} is not in capacity_providers", "default_strategy", index, "provider")
        return self


# --- load balancer (step alb) --------------------------------------------------------------


class HealthCheckSpec(Section):
    path: str = Field("/", pattern=r"^/")
    matcher: str = "200"
    interval_seconds: int = Field(30, ge=5, le=300)
    timeout_seconds: int = Field(5, ge=2, le=120)
    healthy_threshold: int = Field(3, ge=2, le=10)
    unhealthy_threshold: int = Field(3, ge=2, le=10)


class TargetGroupSpec(Section):
    port: int = Field(ge=1, le=65535)
    protocol: Literal["HTTP", "HTTPS"] = "HTTP"
    deregistration_delay_seconds: int = Field(30, ge=0, le=3600)
    health_check: HealthCheckSpec = HealthCheckSpec()


class PathRuleSpec(Section):
    paths: list[str] = Field(min_length=1)
    target: str
    priority: int = Field(ge=1, le=50000)


class CertificateSpec(Section):
    """The HTTPS certificate by the domain it is for: looked up in ACM in the manifest's region."""

    domain: str = Field(pattern=r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$",
                        description="the certificate's domain name (api.example.com); the ISSUED certificate "
                                    "for it is used")


class LoadBalancerSpec(Section):
    security_group: str = "alb"
    idle_timeout_seconds: int = Field(60, ge=1, le=4000)
    deletion_protection: bool = False
    certificate_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/.+$",
                                        description="the HTTPS certificate by its ACM ARN (or `certificate`)")
    certificate: CertificateSpec | None = Field(None, description="the HTTPS certificate by its domain, looked up "
                                                                  "in ACM (or `certificate_arn`)")
    ssl_policy: str = "ELBSecurityPolicy-TLS13-1-2-2021-06"
    target_groups: dict[str, TargetGroupSpec]
    default_target: str
    rules: list[PathRuleSpec] = []
    domain: str | None = Field(None, pattern=r"^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}$",
                               description="the name users reach the load balancer by (a DNS record you keep); "
                                           "links in alerts use it, else the load balancer's own DNS name")

    @property
    def https(self) -> bool:
        """The load balancer serves HTTPS: a certificate is named, by ARN or by domain."""
        return bool(self.certificate_arn or self.certificate)

    @property
    def public_name(self) -> str | None:
        """The name users reach the load balancer by: `domain`, else the certificate's domain (HTTPS
        validates only for it) unless a wildcard; None means the load balancer's own DNS name."""
        if self.domain:
            return self.domain
        if self.certificate and not self.certificate.domain.startswith("*."):
            return self.certificate.domain
        return None

    @model_validator(mode="after")
    def _targets_exist(self) -> "LoadBalancerSpec":
        if self.certificate_arn and self.certificate:
            raise FieldError("name the certificate once: by `certificate_arn` or by `certificate.domain`",
                             "certificate")
        names = set(self.target_groups)
        if self.default_target not in names:
            raise FieldError(f"{self.default_target!r} is not one of the target groups ({', '.join(sorted(names))})",
                             "default_target")
        for index, rule in enumerate(self.rules):
            if rule.target not in names:
                raise FieldError(f"{rule.target!r} is not a target group ({', '.join(sorted(names))})",
                                 "rules", index, "target")
        seen: dict[int, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.priority in seen:
                raise FieldError(f"priority {rule.priority} is already rule {seen[rule.priority]}'s; each rule needs "
                                 "its own", "rules", index, "priority")
            seen[rule.priority] = index
        return self


# --- observability (configs the services run with; rendered by steps/bundles.py) --------------

# A tag that names a version (`1.2.3`, `v0.49.0`, `3.7.6-alpine`), never `latest` or `main`.
VERSION_TAG = r"^v?\d+(\.\d+){1,3}([.+-][A-Za-z0-9.]+)?$"


def pinned_image(image: str) -> str:
    """`name:<version>` or `name@sha256:<digest>`: a tag such as `latest` moves under a running service."""
    name, _, digest = image.partition("@")
    if digest:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ValueError(f"{image!r}: a digest is sha256: and 64 hex digits")
        return image
    _, colon, tag = name.rpartition(":")
    if not colon or "/" in tag or not re.match(VERSION_TAG, tag):
        raise ValueError(f"{image!r} is not pinned to a version; write name:1.2.3 or name@sha256:<digest>")
    return image


class ObservabilityImages(Section):
    """One pinned image per component: a deploy never changes what runs unless the manifest does."""

    otel_collector: str = Field(description="OpenTelemetry Collector sidecar (AWS Distro: ships /healthcheck)")
    prometheus: str
    loki: str
    jaeger: str
    grafana: str

    @field_validator("*")
    @classmethod
    def _pinned(cls, image: str) -> str:
        return pinned_image(image)


class TraceSamplingSpec(Section):
    ratio: float = Field(1.0, gt=0, le=1, description="share of traces kept (1.0 keeps all)")
    errors_always: bool = Field(False, description="also keep every trace with an error span: the SDK then records "
                                                   "all traces and the collector keeps errors plus `ratio` of the rest")


class ObservabilitySpec(Section):
    images: ObservabilityImages
    trace_sampling: TraceSamplingSpec = TraceSamplingSpec()
    metrics_retention_days: int = Field(15, ge=1, le=3650, description="Prometheus keeps samples this long")
    traces_retention_days: int = Field(7, ge=1, le=365, description="Jaeger (Badger) keeps spans this long")
    scrape_interval_seconds: int = Field(15, ge=5, le=300, description="how often Prometheus scrapes; the app's "
                                         "SDK exports metrics at the same interval and dashboards never ask for less")


# --- services (step services) ---------------------------------------------------------------

#: The CPU units Fargate accepts, each with the memory sizes (MiB) it accepts with them.
FARGATE_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}


#: The configs/ bundles a service can run (steps/bundles.py renders one per name).
Bundle = Literal["otel-collector", "prometheus", "loki", "jaeger", "grafana"]


class AppContainerSpec(Section):
    """The application's own container: its image comes from an ECR repository of this manifest."""

    image: str = Field(description="key of images.repositories; the repository's `tag` is deployed, by digest")
    port: int = Field(ge=1, le=65535)
    health_check: list[str] | None = Field(
        None, min_length=2, description="ECS healthCheck.command, e.g. [CMD-SHELL, 'curl …'] (the program must be in "
                                        "the image); none: the load balancer's health check is the app's")
    environment: dict[str, str] = {}
    secrets: dict[str, str] = Field({}, description="variable → secret name of secrets.values (injected by ARN)")
    sidecar: Bundle | None = Field(None, description="a configs/ bundle run beside the app (the app starts once it is "
                                                  "HEALTHY), e.g. otel-collector")
    sidecar_memory_mib: int = Field(256, ge=128, description="the sidecar's own memory (a hard limit of its container); "
                                                          "its memory_limiter refuses data below it, so it never "
                                                          "takes the app's memory")


class AutoscalingSpec(Section):
    min: int = Field(ge=0)
    max: int = Field(ge=1)
    cpu_target: float = Field(60, gt=0, le=100, description="target average CPU utilisation, percent")
    requests_per_target: int | None = Field(None, ge=1, description="also track ALB requests per target")
    scale_in_cooldown_seconds: int = Field(300, ge=0)
    scale_out_cooldown_seconds: int = Field(60, ge=0)

    @model_validator(mode="after")
    def _range(self) -> "AutoscalingSpec":
        if self.min > self.max:
            raise FieldError(f"min {self.min} is above max {self.max}", "min")
        return self


class ServiceSpec(Section):
    app: AppContainerSpec | None = Field(None, description="the application container (gamepulse)")
    bundle: Bundle | None = Field(None, description="the configs/ bundle this service runs")
    cpu: int = Field(description="task CPU units (Fargate: 256, 512, 1024, 2048, 4096, 8192, 16384)")
    memory: int = Field(description="task memory in MiB, one Fargate accepts with `cpu`")
    desired_count: int = Field(1, ge=0)
    autoscaling: AutoscalingSpec | None = None
    min_healthy_percent: int = Field(100, ge=0, le=100)
    max_percent: int = Field(200, ge=100, le=400)
    grace_period_seconds: int = Field(0, ge=0, le=2147483647,
                                      description="load balancer health checks ignored this long after a task starts")
    capacity_provider: Literal["FARGATE", "FARGATE_SPOT"] = "FARGATE"
    security_group: str = Field(description="security group of network.security_groups")
    target_group: str | None = Field(None, description="target group of load_balancer.target_groups")
    data_volume: str | None = Field(None, description="EFS access point (efs.access_points) mounted at the "
                                                      "bundle's data directory")
    stop_timeout_seconds: int | None = Field(None, ge=2, le=120, description="time to exit after SIGTERM")

    @model_validator(mode="after")
    def _valid(self) -> "ServiceSpec":
        if (self.app is None) == (self.bundle is None):
            raise FieldError("set exactly one of app and bundle", "bundle" if self.bundle else "app")
        if self.cpu not in FARGATE_SIZES:
            raise FieldError(f"{self.cpu} CPU units is not a Fargate size ({', '.join(map(str, FARGATE_SIZES))})",
                             "cpu")
        if self.memory not in FARGATE_SIZES[self.cpu]:
            sizes = FARGATE_SIZES[self.cpu]
            raise FieldError(f"Fargate does not run {self.cpu} CPU units with {self.memory} MiB; with {self.cpu} "
                             f"it accepts {sizes[0]} to {sizes[-1]} MiB in steps of {sizes[1] - sizes[0]}", "memory")
        if self.autoscaling and not self.autoscaling.min <= self.desired_count <= self.autoscaling.max:
            raise FieldError(f"desired_count {self.desired_count} is outside autoscaling "
                             f"{self.autoscaling.min}..{self.autoscaling.max}", "desired_count")
        if self.app and self.app.sidecar and self.app.sidecar_memory_mib >= self.memory:
            raise FieldError(f"{self.app.sidecar_memory_mib} MiB for the sidecar leaves nothing of the task's "
                             f"{self.memory} MiB for the app", "app", "sidecar_memory_mib")
        if self.autoscaling and self.autoscaling.requests_per_target and not self.target_group:
            raise FieldError("tracking requests per target needs a target_group", "autoscaling",
                             "requests_per_target")
        return self


class ServicesSpec(Section):
    init_image: str = Field(description="pinned image of the init container that copies a task's config bundle "
                                        "from S3 (needs the AWS CLI)")
    keep_revisions: int = Field(5, ge=2, le=100, description="task definition revisions kept per family")
    rollout_timeout_seconds: int = Field(900, ge=60, le=7200)
    tasks: dict[str, ServiceSpec] = Field(description="ECS service (and task family) name → its settings")

    @field_validator("init_image")
    @classmethod
    def _pinned(cls, image: str) -> str:
        return pinned_image(image)

    @field_validator("tasks")
    @classmethod
    def _names(cls, tasks: dict[str, ServiceSpec]) -> dict[str, ServiceSpec]:
        for name in tasks:
            if not re.match(NAME, name):
                raise FieldError("must be lower-case letters, digits and dashes", name)
        return tasks


# --- alerting (Grafana content of the grafana bundle) ----------------------------------------


class SeverityThreshold(Section):
    """The value above which a rule fires at each severity: warning goes to Slack, critical to Slack and email."""

    warning: float = Field(gt=0)
    critical: float = Field(gt=0)

    @model_validator(mode="after")
    def _critical_not_below_warning(self) -> "SeverityThreshold":
        if self.critical < self.warning:
            raise FieldError(f"is below warning ({self.warning:g}); every threshold here is 'higher is worse'",
                             "critical")
        return self


class PercentThreshold(SeverityThreshold):
    warning: float = Field(gt=0, le=100)
    critical: float = Field(gt=0, le=100)


class AlertThresholds(Section):
    error_rate_percent: PercentThreshold = Field(description="share of requests answered 5xx, over 5 minutes")
    p95_latency_ms: SeverityThreshold = Field(description="95th percentile of server request duration, over 5 minutes")
    cpu_percent: PercentThreshold = Field(description="a service's CPU used / reserved (Container Insights)")
    memory_percent: PercentThreshold = Field(description="a service's memory used / reserved (Container Insights)")


class CloudWatchThresholds(Section):
    """The AWS-side alarms (step dashboards), each notifying the environment's SNS topic. They
    hold while the monitoring services are down, which the Grafana rules cannot. An alarm fires
    when its minute value is at or above the threshold in 3 of 5 consecutive minutes."""

    alb_5xx_count: int = Field(10, ge=1, description="5XX answers the load balancer itself gives in a minute "
                                                    "(HTTPCode_ELB_5XX_Count: no healthy target, timeouts)")
    response_time_seconds: float = Field(1.0, gt=0, description="average TargetResponseTime per target group")
    unhealthy_hosts: int = Field(1, ge=1, description="UnHealthyHostCount per target group (its maximum in a minute)")
    cpu_percent: float = Field(90, gt=0, le=100, description="a service's average CPUUtilization (AWS/ECS)")
    memory_percent: float = Field(90, gt=0, le=100, description="a service's average MemoryUtilization (AWS/ECS)")


class SmtpSpec(Section):
    """The mail server Grafana sends alert email through (Amazon SES's SMTP interface or any other)."""

    host: str = Field(pattern=r"^[A-Za-z0-9.-]+:\d{1,5}$", description="host:port, e.g. "
                                                                     "email-smtp.us-east-1.amazonaws.com:587")
    from_address: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    user: str | None = Field(None, description="SMTP user name (not secret)")
    password_secret: str | None = Field(None, description="the secret (a key of secrets.values) holding the SMTP "
                                                          "password; it reaches Grafana as an environment variable")


class AlertingSpec(Section):
    thresholds: AlertThresholds
    cloudwatch: CloudWatchThresholds = Field(default_factory=CloudWatchThresholds,
                                             description="thresholds of the CloudWatch alarms (step dashboards)")
    email_addresses: list[str] = Field(min_length=1, description="who gets critical alerts by email")
    slack_webhook_secret: str = Field("slack-webhook", description="the secret (a key of secrets.values) holding "
                                                                   "the Slack webhook; it reaches Grafana as an "
                                                                   "environment variable, never a file")
    smtp: SmtpSpec | None = Field(None, description="where Grafana sends critical alert email; without it the email "
                                                    "contact point cannot deliver (plan says so)")

    @field_validator("email_addresses")
    @classmethod
    def _addresses(cls, addresses: list[str]) -> list[str]:
        for index, address in enumerate(addresses):
            if not re.fullmatch(r"[^@\s;,]+@[^@\s;,]+\.[^@\s;,]+", address):
                raise FieldError(f"{address!r} is not an email address", index)
        return addresses


# --- loadtest (`orchestrator loadtest`: the k6 script is rendered from it) -------------------

DURATION = r"^[1-9]\d*(s|m|h)$"


def duration_seconds(text: str) -> int:
    """`90s`, `5m`, `1h` in seconds."""
    return int(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]]


class LoadtestRoute(Section):
    path: str = Field(pattern=r"^/[^\s]*$", description="request path: the route template as the app names it "
                                                       "(`{id}` is replaced by a number from 1 to 1000 per request)")
    weight: int = Field(1, ge=1, description="share of the requests, relative to the other routes")


class LoadtestStage(Section):
    duration: str = Field(pattern=DURATION, description="how long this stage ramps, e.g. 30s, 2m")
    target: int = Field(ge=0, description="virtual users at the end of the stage")


class LoadtestThresholds(Section):
    p95_ms: float = Field(gt=0, description="k6 fails the run when p95 request duration is at or above this")
    error_rate_percent: float = Field(ge=0, le=100, description="… or when this share of requests fails "
                                                                "(k6's http_req_failed: status 4xx/5xx or no answer)")


class LoadtestSpec(Section):
    """What `orchestrator loadtest` sends: weighted routes, ramping stages of virtual users, and the
    thresholds that decide pass or fail. `--vus` and `--duration` scale the stages, never past the caps."""

    routes: list[LoadtestRoute] = Field(min_length=1)
    stages: list[LoadtestStage] = Field(min_length=1)
    thresholds: LoadtestThresholds
    max_vus: int = Field(100, ge=1, le=5000, description="no run of this environment uses more virtual users")
    max_duration: str = Field("15m", pattern=DURATION, description="no run of this environment lasts longer")
    sample_interval_seconds: int = Field(30, ge=5, le=300, description="how often AWS is sampled during the run")
    drill_route: str | None = Field(None, pattern=r"^/[^\s]*$",
                                    description="a route the app answers with 5xx for drills and no user calls: "
                                                "`orchestrator drill ENV alert` sends its errors there")
    drill_rate: int = Field(10, ge=1, le=200, description="requests per second the alert drill sends")

    @model_validator(mode="after")
    def _within_caps(self) -> "LoadtestSpec":
        for index, stage in enumerate(self.stages):
            if stage.target > self.max_vus:
                raise FieldError(f"{stage.target} virtual users is above max_vus ({self.max_vus})",
                                 "stages", index, "target")
        total = sum(duration_seconds(stage.duration) for stage in self.stages)
        if total > duration_seconds(self.max_duration):
            raise FieldError(f"the stages last {total}s, longer than max_duration ({self.max_duration})", "stages")
        return self


# --- the whole manifest --------------------------------------------------------------------


class Manifest(Section):
    app: str = Field(pattern=NAME)
    environment: str = Field(pattern=NAME, description="set from the overlay's file name")
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    account_id: str | None = Field(None, pattern=r"^\d{12}$",
                                   description="refuse to run against any other account")
    tags: dict[str, str] = {}
    state: StateSpec
    protection: ProtectionSpec = ProtectionSpec()
    logging: LoggingSpec = LoggingSpec()
    network: NetworkSpec
    iam: IamSpec
    images: ImagesSpec
    secrets: SecretsSpec
    storage: StorageSpec
    efs: EfsSpec
    cluster: ClusterSpec
    load_balancer: LoadBalancerSpec
    observability: ObservabilitySpec | None = Field(
        None, description="the observability stack's images, sampling and retention (configs/ is rendered from it)")
    services: ServicesSpec | None = Field(None, description="task definitions, ECS services and autoscaling")
    alerting: AlertingSpec | None = Field(
        None, description="Grafana and CloudWatch alert thresholds per environment and who is notified "
                          "(steps/grafana_content.py, steps/dashboards.py)")
    loadtest: LoadtestSpec | None = Field(None, description="what `orchestrator loadtest` sends and its thresholds")
    #: Services to deploy anew though nothing changed (`apply --redeploy NAME`): a run's request,
    #: never read from a file (`orchestrator.manifest.with_redeploys`).
    _redeploy: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @field_validator("tags")
    @classmethod
    def _no_reserved_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        for key in tags:
            if key.startswith(("orchestrator:", "aws:")):
                raise FieldError("uses a reserved prefix (orchestrator: and aws: are set by the tool)", key)
        return tags

    @model_validator(mode="after")
    def _cross_section_references(self) -> "Manifest":
        groups = self.network.security_groups
        for section, group in (("efs", self.efs.security_group), ("load_balancer", self.load_balancer.security_group)):
            if group not in groups:
                raise FieldError(f"{group!r} is not a security group in network.security_groups",
                                 section, "security_group")
        if self.services is not None:
            self._check_service_references(self.services)
        self._check_secret_variables()
        self._check_partition_of_arns()
        return self

    def _check_partition_of_arns(self) -> None:
        """An ARN of another partition than the region's can never be attached there."""
        partition = partition_of(self.region)
        for index, arn in enumerate(self.iam.execution_role_managed_policies or []):
            if not arn.startswith(f"arn:{partition}:"):
                raise FieldError(f"{arn!r} is not an ARN of partition {partition!r} (region {self.region})",
                                 "iam", "execution_role_managed_policies", index)

    def _check_secret_variables(self) -> None:
        """One variable must not silently feed dev and prod: a secret read from the environment
        names its environment in the variable ({ENV}, or the name itself), or says it is shared."""
        own = _variable_part(self.environment)
        for key, spec in self.secrets.values.items():
            if spec.source != "env" or spec.shared or ENV_PLACEHOLDER in spec.env or own in spec.env.split("_"):
                continue
            qualified = spec.env.replace("_", f"_{ENV_PLACEHOLDER}_", 1) if "_" in spec.env else f"{spec.env}_{ENV_PLACEHOLDER}"
            raise FieldError(f"{spec.env} would feed this secret in every environment that reads it; name the "
                             f"environment in it ({qualified}: {qualified.replace(ENV_PLACEHOLDER, own)} in "
                             f"{self.environment}) or declare `shared: true`", "secrets", "values", key, "env")

    def _check_service_references(self, services: ServicesSpec) -> None:
        for name, spec in services.tasks.items():
            at = ("services", "tasks", name)
            if name not in self.iam.task_roles:
                raise FieldError(f"has no task role: add {name} to iam.task_roles", *at)
            if name not in self.cluster.log_groups:
                raise FieldError(f"has no log group: add {name} to cluster.log_groups", *at)
            if spec.bundle == "prometheus" and "ecs-discovery" not in self.iam.task_roles[name].grants:
                raise FieldError("Prometheus finds the app's tasks through ECS's API: add ecs-discovery to its "
                                 "grants", "iam", "task_roles", name, "grants")
            known = {"security_group": (spec.security_group, self.network.security_groups),
                     "target_group": (spec.target_group, self.load_balancer.target_groups),
                     "data_volume": (spec.data_volume, self.efs.access_points)}
            for field_name, (value, names) in known.items():
                if value is not None and value not in names:
                    raise FieldError(f"{value!r} is not one of {', '.join(sorted(names))}", *at, field_name)
            if spec.app is not None:
                repository = self.images.repositories.get(spec.app.image)
                if repository is None:
                    raise FieldError(f"{spec.app.image!r} is not one of images.repositories", *at, "app", "image")
                if repository.tag is None:
                    raise FieldError("the repository names no tag to deploy (images.repositories."
                                     f"{spec.app.image}.tag, or --image-tag {spec.app.image}=TAG)", *at, "app", "image")
                for variable, secret in spec.app.secrets.items():
                    if secret not in self.secrets.values:
                        raise FieldError(f"{secret!r} is not one of secrets.values", *at, "app", "secrets", variable)

    @property
    def redeploy(self) -> frozenset[str]:
        return self._redeploy

    @property
    def prefix(self) -> str:
        """Every resource name starts with this: `gamepulse-dev`."""
        return f"{self.app}-{self.environment}"
