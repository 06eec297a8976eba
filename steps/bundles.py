"""Render the files the observability services run with (`configs/`) for one environment.

Pure: no AWS call. `render(manifest, facts)` gives one `Bundle` per service: its files
(relative path → bytes), the sha256 of those files, and what its container needs to run them
(pinned image, where the init container puts the bundle, command, ports, plain environment,
environment from Secrets Manager, health check, data directory). The services step uploads
each bundle under its hash and registers task definitions from the container part: a changed
file is a new hash and a new revision, an unchanged one is nothing at all.

Templates are YAML with `!param NAME` where a value depends on the environment; the result is
written by YAML's safe dumper (`dump_yaml`, key order as in the template), so the same input always gives the
same bytes. Trace sampling has two halves: the app's SDK samples at the environment's ratio
(`app_environment`), and where errors must always be kept the SDK records everything and the
collector's tail sampling keeps every trace with an error plus the ratio of the rest (a head
sampler alone cannot: it decides before the error happens).

Grafana's dashboards and alerting are generated, not templates: `steps/grafana_content.py` builds
them and they join the grafana bundle's files, so they move its hash like any template does.

The rendered files are a pure function of the manifest, the facts, the templates, our code and the
libraries that render them, so a run keeps them in the user's cache and the next run with the same
inputs loads them (`kept_or_rendered`, keyed by `rendering_key`): a plan of an environment whose
inputs did not change neither renders nor imports grafana-foundation-sdk (together a twentieth of
its CPU). The rest of a bundle (its container, hash and notes) is computed on every run.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from orchestrator import LOADED_AT_NS
from orchestrator.errors import OrchestratorError
from orchestrator.kept import cache_root, keep, read_kept
from orchestrator.manifest import manifest_hash
from orchestrator.model import Unknown, is_unknown
from orchestrator.schema import AppContainerSpec
from steps import grafana_delivery

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# Ports, shared by the rendered files and the container definitions.
OTLP_GRPC, OTLP_HTTP = 4317, 4318
COLLECTOR_METRICS, COLLECTOR_SELF_METRICS = 8889, 8888
PROMETHEUS, LOKI, JAEGER_UI, JAEGER_SELF_METRICS, JAEGER_HEALTH, GRAFANA = 9090, 3100, 16686, 8888, 13133, 3000

GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
#: The Secrets Manager secret (a key of the manifest's `secrets.values`) holding Grafana's admin password.
GRAFANA_ADMIN_SECRET = "grafana-admin"


@dataclass(frozen=True)
class Facts:
    """What other steps decide and the files need: the Loki chunks bucket (step storage), the
    Cloud Map namespace the services register in and the cluster whose tasks Prometheus finds
    (step ecs), the load balancer's DNS name (step alb: Grafana's links, when the manifest names
    no domain), and the region the run works in. Retention and sampling are the manifest's own
    (`logging`, `observability`)."""

    loki_bucket: str
    namespace: str
    region: str
    cluster_arn: str
    load_balancer_dns: str


@dataclass(frozen=True)
class Container:
    image: str
    config_dir: str  # the init container copies the bundle into a task volume mounted here
    command: tuple[str, ...]
    ports: tuple[int, ...]
    environment: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # variable → secret name (under APP/ENV/)
    health_check: tuple[str, ...] | None = None  # ECS healthCheck.command
    data_dir: str | None = None
    memory: int | None = None  # MiB, the container's own hard limit (the sidecar's: never the app's memory)


#: The collector's memory_limiter (collector v0.156.0, processor/memorylimiterprocessor README):
#: `limit_mib` bounds the Go heap, and the whole process uses about 50 MiB more; the soft limit,
#: where it starts refusing data, is `limit_mib - spike_limit_mib`, the spike limit about 20 % of
#: `limit_mib` (its default). The heap gets 80 % of the container less that overhead.
COLLECTOR_HEAP_SHARE, COLLECTOR_PROCESS_OVERHEAD_MIB, COLLECTOR_SPIKE_SHARE = 0.8, 50, 0.2


@dataclass(frozen=True)
class Bundle:
    service: str
    files: dict[str, bytes]  # relative path → content, sorted by path
    hash: str
    container: Container
    notes: tuple[str, ...] = ()  # what a user must know when this service's config changes (on its change)
    remarks: tuple[str, ...] = ()  # what a user must know on every plan, changed or not (`Step.remarks`)


def render(manifest, facts: Facts) -> dict[str, Bundle]:
    """Every service's bundle for this environment, in a fixed order. The files are those an
    earlier run rendered from the same inputs where they were kept (`kept_or_rendered`)."""
    if manifest.observability is None:
        raise OrchestratorError("the manifest has no observability section, so there is no config to render")
    if GRAFANA_ADMIN_SECRET not in manifest.secrets.values:
        raise OrchestratorError(f"Grafana's admin password comes from the secret {GRAFANA_ADMIN_SECRET!r}, "
                                "which the manifest's secrets.values does not list")
    alerting = manifest.alerting
    if alerting is not None:
        for field_name, secret in (("slack_webhook_secret", alerting.slack_webhook_secret),
                                   ("smtp.password_secret", alerting.smtp and alerting.smtp.password_secret)):
            if secret and secret not in manifest.secrets.values:
                raise OrchestratorError(f"alerting.{field_name} names {secret!r}, "
                                        "which the manifest's secrets.values does not list")
    containers = _containers(manifest, facts)
    rendered = kept_or_rendered(manifest, facts, tuple(containers))
    bundles = {}
    for service, container in containers.items():
        files = rendered[service]
        notes: tuple[str, ...] = ()
        remarks: tuple[str, ...] = ()
        if service == "grafana":
            notes, remarks = (ADMIN_PASSWORD_NOTE,), grafana_delivery.delivery_notes(manifest)
        bundles[service] = Bundle(service=service, files=files, hash=bundle_hash(files), container=container,
                                  notes=notes, remarks=remarks)
    return bundles


def _render_files(manifest, facts: Facts, services: tuple[str, ...]) -> dict[str, dict[str, bytes]]:
    """Each service's files, rendered: its templates filled in, and for grafana the generated
    dashboards and alerting (steps/grafana_content.py, which imports grafana-foundation-sdk: a
    twentieth of a plan's CPU, spent only here)."""
    from steps import grafana_content
    values = _values(manifest, facts)
    rendered = {}
    for service in services:
        files = _render_folder(service, values, manifest)
        if service == "grafana":
            files = dict(sorted({**files, **grafana_content.files(manifest)}.items()))
        rendered[service] = files
    return rendered


# -- rendered files kept between runs ------------------------------------------------------------


#: The form of a kept file (the key it was rendered for, and each service's files with their
#: `files_digest`): a new form, a new folder.
FORM = 2
#: Our own code: any byte of it may change what is rendered.
CODE = (Path(__file__).resolve().parent.parent / "orchestrator", Path(__file__).resolve().parent)
#: The library the grafana bundle's dashboards and alerting are built with (its import name).
SDK = "grafana_foundation_sdk"


def kept_folder() -> Path | None:
    """Where rendered files are kept between runs: `rendered-<FORM>/` in the user's cache
    (`orchestrator.kept`), or None where the user has no home."""
    root = cache_root()
    return None if root is None else root / f"rendered-{FORM}"


def kept_or_rendered(manifest, facts: Facts, services: tuple[str, ...]) -> dict[str, dict[str, bytes]]:
    """Each service's files: those the environment's last render kept, when it was rendered from
    the same inputs (`rendering_key`), else rendered now and kept for the next run. One file per
    environment and region, replaced by each render with other inputs (a new image tag, say), so
    the folder holds no more than the environments this user works on."""
    folder = kept_folder()
    key = rendering_key(manifest, facts) if folder is not None else None
    at = folder / f"{_sha256(f'{manifest.prefix}/{facts.region}')}.pickle" if key is not None else None
    files = _trusted(read_kept(at), key, services)
    if files is None:
        files = _render_files(manifest, facts, services)
        keep(at, {"key": key, "services": {service: {"files": each, "sha256": files_digest(each)}
                                           for service, each in files.items()}}, family="rendered-*")
    return files


def _trusted(kept, key: str | None, services: tuple[str, ...]) -> dict[str, dict[str, bytes]] | None:
    """The kept files, when `kept` was rendered for `key` and holds exactly these services, each
    with files whose digest is the one kept beside them: a file damaged in a way that still loads
    would otherwise deploy a config nobody rendered (a damaged service model fails loudly, a
    config file would not); it is rendered again, and kept again. A kept file can run no code
    (`orchestrator.kept`)."""
    if type(kept) is not dict or kept.get("key") != key or type(kept.get("services")) is not dict \
            or list(kept["services"]) != list(services):
        return None
    files = {}
    for service, entry in kept["services"].items():
        if type(entry) is not dict or type(entry.get("files")) is not dict:
            return None
        if not all(type(path) is str and type(content) is bytes for path, content in entry["files"].items()) \
                or entry.get("sha256") != files_digest(entry["files"]):
            return None
        files[service] = entry["files"]
    return files


def rendering_key(manifest, facts: Facts) -> str | None:
    """sha256 of everything the rendered files depend on, so that equal keys mean equal files; None
    where one part cannot be told (then the files are rendered every time, and not kept):

    - the manifest: `manifest_hash`, its canonical JSON, which holds every field of it; what
      rendering reads beyond its fields is computed from them by our code (`prefix`, `https`,
      `public_name`: orchestrator/schema.py), and its one private attribute (`redeploy`, a run's
      request) is not read by rendering;
    - the `Facts`, each value with its type;
    - the bytes of every file under `CONFIGS` (the templates, and anything they are rendered with);
    - the bytes of every module of our packages (`CODE`: orchestrator/, steps/): all the code that
      renders, and any change to it, committed or not (about a millisecond to read and hash);
    - what else runs: Python's version (json, the standard library), PyYAML's version and whether
      its libyaml parser and emitter are used (with libyaml's version), and the installed
      grafana-foundation-sdk (`_sdk_installed`).

    Nothing else is read: rendering makes no AWS call and reads no environment variable, clock or
    file outside `CONFIGS`.

    A file of the key that changed after this process loaded our code (`orchestrator.LOADED_AT_NS`:
    a `git pull` or an upgrade during a long apply) may not be the code that is running, nor the
    template it rendered: then nothing is kept or used (None)."""
    sdk = _sdk_installed()
    if sdk is None:
        return None
    digest = hashlib.sha256()

    def part(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)

    part(manifest_hash(manifest).encode())
    part(json.dumps([[name, type(value).__qualname__, str(value)] for name, value in vars(facts).items()]).encode())
    libyaml = yaml._yaml.get_version_string() if yaml.__with_libyaml__ else ""
    for text in (sys.version, yaml.__version__, libyaml, _SAFE_LOADER.__name__, _SAFE_DUMPER.__name__):
        part(text.encode())
    part(sdk)
    try:
        for folder, suffix in ((CONFIGS, ""), *((package, ".py") for package in CODE)):
            for name, path in _files_under(folder, suffix):
                part(name.encode())
                with open(path, "rb") as file:
                    if os.fstat(file.fileno()).st_mtime_ns >= LOADED_AT_NS:
                        return None
                    part(file.read())
    except OSError:  # a file unreadable, or gone while an editor saves it: rendered, not kept
        return None
    return digest.hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _files_under(folder: Path, suffix: str) -> list[tuple[str, str]]:
    """(name from `folder`'s own, path) of every file in or below `folder` whose name ends with
    `suffix`, by name (os.walk: a third of what pathlib's rglob costs)."""
    found = []
    for where, _, names in os.walk(folder):
        relative = os.path.relpath(where, folder.parent)
        found += [(f"{relative}/{name}", os.path.join(where, name)) for name in names if name.endswith(suffix)]
    return sorted(found)


def _sdk_installed() -> bytes | None:
    """The installed grafana-foundation-sdk, told without importing it: where its package is, and
    the RECORD of the distribution installed beside it, which lists every file the installer
    wrote with its sha256 (PEP 376): an upgrade, a downgrade or another build is another RECORD.
    None where that cannot be told (no such package, an editable or unrecorded install)."""
    spec = importlib.util.find_spec(SDK)
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(list(spec.submodule_search_locations)[0])
    records = list(package.parent.glob(f"{SDK}-*.dist-info/RECORD"))
    if len(records) != 1:
        return None
    try:
        if records[0].stat().st_mtime_ns >= LOADED_AT_NS:  # installed during this run
            return None
        record = records[0].read_bytes()
    except OSError:
        return None
    if f"{SDK}/__init__.py,".encode() not in record:
        return None
    return str(package).encode() + b"\0" + record


#: Grafana reads GF_SECURITY_ADMIN_PASSWORD only when it creates its database (on EFS), so the
#: secret and the password part once either changes; docs/observability.md has the reset.
ADMIN_PASSWORD_NOTE = (f"Grafana takes its admin password from the secret {GRAFANA_ADMIN_SECRET!r} only when it "
                       "first creates its database (kept on EFS): a changed secret does not change the password. "
                       "To bring them back in step: docs/observability.md, section \"Grafana's admin password\"")


def bundle_hash(files: dict[str, bytes]) -> str:
    """sha256 over the sorted paths and contents (`files_digest`). Files rendered with a value not
    known before apply (the cluster's ARN, the load balancer's name) have a hash not known either."""
    if any(is_unknown(content.decode(errors="replace")) for content in files.values()):
        return Unknown("services.bundle_hash")
    return files_digest(files)


def files_digest(files: dict[str, bytes]) -> str:
    """sha256 over the sorted paths and contents, each length-prefixed, so no two sets of files
    collide by moving bytes between a path and its content."""
    digest = hashlib.sha256()
    for path in sorted(files):
        for part in (path.encode(), files[path]):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


def app_environment(manifest) -> dict[str, str]:
    """The OpenTelemetry SDK settings of the app container: send to the sidecar, sample per environment.

    The .NET SDK has no Jaeger remote sampler, so the ratio is set here (OTEL_TRACES_SAMPLER);
    `parentbased_*` keeps a trace whole when a caller already decided. Metrics are exported at
    the scrape interval, so every scrape sees a new value.
    """
    sampling = manifest.observability.trace_sampling
    environment = {
        "OTEL_SERVICE_NAME": manifest.app,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://localhost:{OTLP_GRPC}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        # The SDK pushes metrics every 60 s by default: with a 15 s scrape, a series would change
        # once in four scrapes and rate() over Grafana's window would read 0 one time in four.
        "OTEL_METRIC_EXPORT_INTERVAL": str(manifest.observability.scrape_interval_seconds * 1000),  # ms
    }
    if sampling.errors_always:  # the collector's tail sampling applies the ratio, after it has seen errors
        environment["OTEL_TRACES_SAMPLER"] = "parentbased_always_on"
    else:
        environment["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        environment["OTEL_TRACES_SAMPLER_ARG"] = format(sampling.ratio, "g")
    return environment


# -- what each service runs -------------------------------------------------------------------


def _containers(manifest, facts: Facts) -> dict[str, Container]:
    images = manifest.observability.images
    return {
        "otel-collector": Container(
            image=images.otel_collector, config_dir="/etc/otelcol", command=("--config=/etc/otelcol/config.yaml",),
            ports=(OTLP_GRPC, OTLP_HTTP, COLLECTOR_SELF_METRICS, COLLECTOR_METRICS),
            # The image is FROM scratch (no shell, no curl); it ships /healthcheck, which probes
            # 127.0.0.1:13133/, the health_check extension of config.yaml.
            health_check=("CMD", "/healthcheck"), memory=sidecar_memory(manifest)),
        "prometheus": Container(
            image=images.prometheus, config_dir="/etc/prometheus",
            command=("--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"),
            ports=(PROMETHEUS,), data_dir="/prometheus"),  # the EFS access point /prometheus (uid 65534, the image's user)
        "loki": Container(
            image=images.loki, config_dir="/etc/loki", command=("-config.file=/etc/loki/loki.yaml",),
            ports=(LOKI,), data_dir="/loki"),  # ephemeral: the index and chunks live in S3
        "jaeger": Container(
            image=images.jaeger, config_dir="/etc/jaeger", command=("--config=/etc/jaeger/config.yaml",),
            ports=(OTLP_GRPC, OTLP_HTTP, JAEGER_UI, JAEGER_SELF_METRICS, JAEGER_HEALTH), data_dir="/tmp/jaeger"),
        "grafana": Container(
            image=images.grafana, config_dir=GRAFANA_PROVISIONING, command=(), ports=(GRAFANA,),
            environment=_grafana_environment(manifest, facts),
            secrets={"GF_SECURITY_ADMIN_PASSWORD": GRAFANA_ADMIN_SECRET,
                     **grafana_delivery.container_secrets(manifest)},
            data_dir="/var/lib/grafana"),  # the EFS access point /grafana (uid 472, the image's user)
    }


def _grafana_environment(manifest, facts: Facts) -> dict[str, str]:
    environment = {
        "GF_PATHS_PROVISIONING": GRAFANA_PROVISIONING,
        "GF_SECURITY_ADMIN_USER": "admin",
        "GF_USERS_ALLOW_SIGN_UP": "false",
        "GF_ANALYTICS_REPORTING_ENABLED": "false",
        # The address users reach Grafana at: the links in alert notifications are built on it.
        "GF_SERVER_ROOT_URL": grafana_url(manifest, facts),
        **grafana_delivery.container_environment(manifest),
    }
    if _grafana_sub_path(manifest):  # the load balancer forwards /grafana* unchanged: Grafana serves from that path
        environment["GF_SERVER_SERVE_FROM_SUB_PATH"] = "true"
    return environment


def grafana_url(manifest, facts: Facts) -> str:
    """Grafana's address as users reach it: the manifest's domain (or its certificate's), else the
    load balancer's DNS name; https when the load balancer has a certificate (HTTP then redirects)."""
    scheme = "https" if manifest.load_balancer.https else "http"
    host = manifest.load_balancer.public_name or facts.load_balancer_dns
    return f"{scheme}://{host}{_grafana_sub_path(manifest)}/"


def sidecar_memory(manifest) -> int:
    """The collector sidecar's own memory (MiB): the `sidecar_memory_mib` of the app it runs
    beside (the schema's default where no app runs it: the bundle then serves no task)."""
    for task in (manifest.services.tasks.values() if manifest.services else ()):
        if task.app is not None and task.app.sidecar == "otel-collector":
            return task.app.sidecar_memory_mib
    return AppContainerSpec.model_fields["sidecar_memory_mib"].default


def collector_memory_limits(memory_mib: int) -> dict[str, int]:
    """memory_limiter's limit_mib and spike_limit_mib for a collector container of `memory_mib`:
    it refuses data at limit - spike and forces a GC at limit, and the process stays below the
    container's limit, where ECS would kill the container (and, the sidecar being essential, its task)."""
    limit = int(memory_mib * COLLECTOR_HEAP_SHARE) - COLLECTOR_PROCESS_OVERHEAD_MIB
    return {"limit_mib": limit, "spike_limit_mib": int(limit * COLLECTOR_SPIKE_SHARE)}


def _grafana_sub_path(manifest) -> str:
    """`/grafana` when a load balancer rule sends a path prefix to Grafana's target group; '' otherwise."""
    for rule in manifest.load_balancer.rules:
        if rule.target == "grafana":
            return rule.paths[0].rstrip("*").rstrip("/")
    return ""


# -- the values the templates name ------------------------------------------------------------


def _values(manifest, facts: Facts) -> dict:
    observability = manifest.observability
    sampling = observability.trace_sampling
    namespace = facts.namespace

    def dns(service: str) -> str:  # Cloud Map A records of the service's tasks
        return f"{service}.{namespace}"

    limits = collector_memory_limits(sidecar_memory(manifest))
    return {
        "app": manifest.app,
        "environment": manifest.environment,
        "region": facts.region,
        "cluster_arn": facts.cluster_arn,
        "collector_limit_mib": limits["limit_mib"],
        "collector_spike_limit_mib": limits["spike_limit_mib"],
        "loki_bucket": facts.loki_bucket,
        "log_retention": _hours(manifest.logging.retention_days),
        "metrics_retention": f"{observability.metrics_retention_days}d",
        "traces_retention": _hours(observability.traces_retention_days),
        "scrape_interval": f"{observability.scrape_interval_seconds}s",
        # How soon a new app task is scraped; each refresh is about six ECS and EC2 reads.
        "discovery_refresh": f"{max(30, observability.scrape_interval_seconds)}s",
        "trace_processors": _trace_processors(sampling.errors_always),
        "trace_sampling_percentage": round(sampling.ratio * 100, 6),
        "loki_dns": dns("loki"),
        "jaeger_dns": dns("jaeger"),
        "loki_otlp_endpoint": f"http://{dns('loki')}:{LOKI}/otlp",
        "jaeger_otlp_endpoint": f"{dns('jaeger')}:{OTLP_GRPC}",
        "prometheus_url": f"http://{dns('prometheus')}:{PROMETHEUS}",
        "loki_url": f"http://{dns('loki')}:{LOKI}",
        "jaeger_url": f"http://{dns('jaeger')}:{JAEGER_UI}",
        "dashboards_path": f"{GRAFANA_PROVISIONING}/dashboards/{manifest.app}",
    }


def _trace_processors(errors_always: bool) -> list[str]:
    sampling = ["tail_sampling"] if errors_always else []
    return ["memory_limiter", "filter/health", "resource", *sampling, "batch"]


def _hours(days: int) -> str:
    return f"{days * 24}h"


# -- templates --------------------------------------------------------------------------------


class _Param:
    def __init__(self, name: str):
        self.name = name


#: libyaml's parser and emitter where PyYAML has them (its wheels do), as PyYAML's documentation
#: suggests: the same documents and, for every environment's files, the same bytes as the pure-Python
#: ones (tests/test_configs.py), so no bundle's hash moves; rendering took a twentieth of a plan's CPU.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(data) -> str:
    """`data` as a rendered file's YAML: keys in the template's order, wrapped at 120 columns."""
    return yaml.dump(data, Dumper=_SAFE_DUMPER, sort_keys=False, allow_unicode=True, width=120)


class _TemplateLoader(_SAFE_LOADER):
    """A safe loader that reads `!param NAME` as a placeholder for a value of the environment."""


_TemplateLoader.add_constructor("!param", lambda loader, node: _Param(loader.construct_scalar(node)))


def _render_folder(service: str, values: dict, manifest) -> dict[str, bytes]:
    root = CONFIGS / _SOURCES[service]
    files = {}
    for path in sorted(item for item in root.rglob("*") if item.is_file()):
        relative = path.relative_to(root).as_posix()
        files[relative] = _render_file(path, values, manifest)
    return files


def _render_file(path: Path, values: dict, manifest) -> bytes:
    if path.suffix not in (".yaml", ".yml"):
        return path.read_bytes()  # anything not YAML travels as it is
    source = path.relative_to(CONFIGS).as_posix()
    data = _fill(yaml.load(path.read_text(encoding="utf-8"), Loader=_TemplateLoader), values, source)
    adjust = _ADJUSTMENTS.get(source)
    if adjust is not None:
        data = adjust(data, manifest)
    header = f"# Rendered from configs/{source} for {manifest.prefix}; change the template, not this file.\n"
    return (header + dump_yaml(data)).encode()


def _fill(node, values: dict, source: str):
    if isinstance(node, _Param):
        if node.name not in values:
            raise OrchestratorError(f"configs/{source}: !param {node.name} names no value "
                                    f"(known: {', '.join(sorted(values))})")
        return values[node.name]
    if isinstance(node, dict):
        return {key: _fill(value, values, source) for key, value in node.items()}
    if isinstance(node, list):
        return [_fill(item, values, source) for item in node]
    return node


def _prometheus_storage(config: dict, manifest) -> dict:
    """Without an EFS data volume Prometheus keeps its TSDB on the task's ephemeral storage (20 GiB
    on Fargate by default, lost when the task is replaced): a size bound keeps it from filling it."""
    task = manifest.services.tasks.get("prometheus") if manifest.services else None
    if task is not None and task.data_volume is None:
        config["storage"]["tsdb"]["retention"]["size"] = TASK_STORAGE_RETENTION
    return config


#: Prometheus's size bound on task-local storage: below Fargate's default 20 GiB of ephemeral storage,
#: which the image and the other writes share.
TASK_STORAGE_RETENTION = "14GB"


def _collector_sampling(config: dict, manifest) -> dict:
    """The tail sampling processor is there only where errors are always kept."""
    if not manifest.observability.trace_sampling.errors_always:
        del config["processors"]["tail_sampling"]
    return config


#: Folder under configs/ each service's bundle is rendered from.
_SOURCES = {"otel-collector": "otel-collector", "prometheus": "prometheus", "loki": "loki", "jaeger": "jaeger",
            "grafana": "grafana/provisioning"}
#: Changes to a rendered file that a value alone cannot express.
_ADJUSTMENTS = {"otel-collector/config.yaml": _collector_sampling, "prometheus/prometheus.yml": _prometheus_storage}
