"""The rendered service configs: for each environment every file parses and says what the
platform needs (ports, endpoints, retention, bucket, sampling); the same input gives the same
bytes and a bundle's hash moves exactly when its files do; images are pinned; the collector's
health check runs a program its image has."""
from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import ManifestError, OrchestratorError
from orchestrator.manifest import load_manifest
from orchestrator.schema import LoggingSpec, ObservabilityImages
from steps import bundles, grafana_content
from steps.bundles import Facts, app_environment, bundle_hash, render
from tests import promtool

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
ACCOUNT = "123456789012"
ENVIRONMENTS = ["dev", "staging", "prod"]
ALB_DNS = {env: f"gamepulse-{env}-1234567890.us-east-1.elb.amazonaws.com" for env in ENVIRONMENTS}

# PLATFORM.md's table: log and Loki retention, trace sampling (ratio, errors always).
LOG_RETENTION_HOURS = {"dev": "720h", "staging": "720h", "prod": "2160h"}
SAMPLING = {"dev": (1.0, False), "staging": (0.5, False), "prod": (0.1, True)}

# What the chosen collector image holds: aws-observability/aws-otel-collector, tag v0.49.0:
# cmd/awscollector/Dockerfile (final stage FROM scratch, so no shell and no curl; it copies in
# /awscollector and /healthcheck) and pkg/defaultcomponents/defaults.go, each component's type
# from its vendored metadata.yaml (contrib v0.156.0: `otlp_grpc` and `otlp_http` are the exporters'
# names now, `otlp`/`otlphttp` deprecated aliases; there is no `loki` and no `jaeger` exporter).
COLLECTOR_IMAGE_REPOSITORY = "public.ecr.aws/aws-observability/aws-otel-collector"
COLLECTOR_EXECUTABLES = {"/awscollector", "/healthcheck"}
COLLECTOR_COMPONENTS = {
    "extensions": {"awsproxy", "ecs_observer", "health_check", "pprof", "sigv4auth", "zpages", "file_storage"},
    "receivers": {"awsecscontainermetrics", "awscontainerinsightreceiver", "awsxray", "statsd", "prometheus",
                  "kafka", "jaeger", "zipkin", "otlp", "file_log"},
    "processors": {"groupbytrace", "tail_sampling", "attributes", "resource", "probabilistic_sampler", "span",
                   "filter", "metrics_transform", "resource_detection", "metricsgeneration", "cumulativetodelta",
                   "deltatorate", "batch", "memory_limiter", "k8s_attributes"},
    "exporters": {"awsemf", "prometheus_remote_write", "prometheus", "file", "kafka", "debug", "otlp_grpc",
                  "otlp_http", "awsxray", "load_balancing", "awscloudwatchlogs"},
}


def facts(env: str) -> Facts:
    return Facts(loki_bucket=f"gamepulse-{env}-loki-chunks-{ACCOUNT}", namespace=f"gamepulse-{env}.local",
                 region="us-east-1", cluster_arn=f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/gamepulse-{env}",
                 load_balancer_dns=ALB_DNS[env])


def rendered(env: str, manifest=None) -> dict[str, bundles.Bundle]:
    return render(manifest or load_manifest(MANIFESTS, env), facts(env))


def parsed(env: str, service: str, path: str) -> dict:
    return yaml.safe_load(rendered(env)[service].files[path])


def port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1].split("/", 1)[0])


# --- every file parses -------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_rendered_file_is_yaml_that_says_where_it_came_from(env):
    generated = set(grafana_content.files(load_manifest(MANIFESTS, env)))  # tests/test_grafana_content.py
    for service, bundle in rendered(env).items():
        assert bundle.files, service
        for path, content in bundle.files.items():
            if path in generated:
                continue
            text = content.decode()
            assert text.startswith("# Rendered from configs/"), (service, path)
            assert f"gamepulse-{env}" in text.splitlines()[0]
            assert isinstance(yaml.safe_load(text), dict), (service, path)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_libyaml_renders_exactly_the_bytes_of_pure_python_yaml(env, monkeypatch):
    """Templates are read and files written with libyaml, for speed; every file (so every bundle's
    hash, which decides whether a service is redeployed) is what PyYAML's pure-Python loader and
    dumper make: a run after the switch redeploys nothing."""
    assert yaml.__with_libyaml__ and bundles._SAFE_DUMPER is yaml.CSafeDumper
    assert issubclass(bundles._TemplateLoader, yaml.CSafeLoader)
    fast = rendered(env)

    class PureTemplateLoader(yaml.SafeLoader):
        pass

    PureTemplateLoader.add_constructor("!param", bundles._TemplateLoader.yaml_constructors["!param"])
    monkeypatch.setattr(bundles, "_TemplateLoader", PureTemplateLoader)
    monkeypatch.setattr(bundles, "_SAFE_DUMPER", yaml.SafeDumper)
    pure = rendered(env)
    assert {service: bundle.files for service, bundle in fast.items()} == \
        {service: bundle.files for service, bundle in pure.items()}
    assert {service: bundle.hash for service, bundle in fast.items()} == \
        {service: bundle.hash for service, bundle in pure.items()}


# --- the collector sidecar ---------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_collector_takes_otlp_from_the_task_and_sends_each_signal_to_its_backend(env):
    config = parsed(env, "otel-collector", "config.yaml")
    namespace = facts(env).namespace
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"  # not localhost, the recent default
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    exporters = config["exporters"]
    assert exporters["otlp_http/loki"]["endpoint"] == f"http://loki.{namespace}:3100/otlp"
    assert exporters["otlp_grpc/jaeger"]["endpoint"] == f"jaeger.{namespace}:4317"
    assert port(exporters["prometheus"]["endpoint"]) == 8889
    pipelines = config["service"]["pipelines"]
    assert pipelines["logs"]["exporters"] == ["otlp_http/loki"]
    assert pipelines["traces"]["exporters"] == ["otlp_grpc/jaeger"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    for name, pipeline in pipelines.items():
        assert pipeline["receivers"] == ["otlp"]
        assert pipeline["processors"][0] == "memory_limiter", name
        assert pipeline["processors"][-1] == "batch", name
        assert "resource" in pipeline["processors"], name
    assert config["processors"]["memory_limiter"]["check_interval"] == "1s"
    resource = {item["key"]: item["value"] for item in config["processors"]["resource"]["attributes"]}
    assert resource["deployment.environment.name"] == env


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_collector_uses_only_components_its_image_is_built_with(env):
    """The `loki` and `jaeger` exporters are gone from current collectors; this image has neither."""
    config = parsed(env, "otel-collector", "config.yaml")
    for kind, available in COLLECTOR_COMPONENTS.items():
        for name in config.get(kind, {}):
            assert name.split("/", 1)[0] in available, f"{kind}: {name}"
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline[kind]) <= set(config[kind]), "a pipeline names an undefined component"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_collector_drops_health_check_spans(env):
    config = parsed(env, "otel-collector", "config.yaml")
    assert "filter/health" in config["service"]["pipelines"]["traces"]["processors"]
    conditions = config["processors"]["filter/health"]["trace_conditions"]
    assert 'span.attributes["url.path"] == "/health"' in conditions


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_collector_health_check_runs_a_program_the_image_has(env):
    bundle = rendered(env)["otel-collector"]
    repository = bundle.container.image.rsplit(":", 1)[0]
    assert repository == COLLECTOR_IMAGE_REPOSITORY, "a new image needs its own list of what it contains"
    command = bundle.container.health_check
    assert command[0] == "CMD"  # CMD-SHELL needs a shell, which the image does not have
    assert command[1] in COLLECTOR_EXECUTABLES
    # /healthcheck probes 127.0.0.1:13133/ and nothing else: the extension must listen there.
    config = yaml.safe_load(bundle.files["config.yaml"])
    assert config["extensions"]["health_check"]["endpoint"] == "127.0.0.1:13133"
    assert "health_check" in config["service"]["extensions"]


# --- sampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_trace_sampling_matches_the_environment(env):
    ratio, errors_always = SAMPLING[env]
    manifest = load_manifest(MANIFESTS, env)
    sdk = app_environment(manifest)
    config = yaml.safe_load(render(manifest, facts(env))["otel-collector"].files["config.yaml"])
    processors = config["service"]["pipelines"]["traces"]["processors"]
    assert sdk["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"
    if errors_always:
        # The SDK records every trace; the collector keeps all with an error and `ratio` of the rest.
        assert sdk["OTEL_TRACES_SAMPLER"] == "parentbased_always_on"
        assert "OTEL_TRACES_SAMPLER_ARG" not in sdk
        assert "tail_sampling" in processors
        policies = {policy["type"]: policy for policy in config["processors"]["tail_sampling"]["policies"]}
        assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
        assert policies["probabilistic"]["probabilistic"]["sampling_percentage"] == pytest.approx(ratio * 100)
    else:
        assert sdk["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert float(sdk["OTEL_TRACES_SAMPLER_ARG"]) == ratio
        assert "tail_sampling" not in processors
        assert "tail_sampling" not in config["processors"]


# --- Prometheus --------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_prometheus_config_is_valid_for_promtool(env, tmp_path):
    """promtool 2.42 (Debian's) checks all but the two v3 fields `for_promtool_2` takes out;
    those are checked below against Prometheus v3.14.0's documentation."""
    config = parsed(env, "prometheus", "prometheus.yml")
    result = promtool.run("check", "config", promtool.for_promtool_2(config, tmp_path).name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # v3.14.0 docs/configuration/configuration.md: <tsdb> retention {time, size, percentage};
    # <aws_sd_config> keys; ecs.go looks clusters up by ARN (a name would find no cluster).
    assert set(config["storage"]["tsdb"]["retention"]) <= {"time", "size", "percentage"}
    documented = {"role", "region", "endpoint", "access_key", "secret_key", "profile", "role_arn", "external_id",
                  "refresh_interval", "port", "filters", "clusters"}
    for job in config["scrape_configs"]:
        for sd in job.get("aws_sd_configs", []):
            assert set(sd) <= documented and sd["role"] == "ecs"
            assert all(re.fullmatch(r"arn:aws:ecs:us-east-1:\d{12}:cluster/gamepulse-" + env, c) for c in sd["clusters"])


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_prometheus_scrapes_every_app_task_at_the_most_autoscaling_allows(env, tmp_path):
    """At the top of autoscaling (10 in dev and staging, 20 in prod) every task's sidecar is a
    target of both jobs, and the cluster's other services are not: what promtool's own
    relabelling makes of the targets ECS discovery finds. A Cloud Map MULTIVALUE answer would
    have named 8."""
    manifest = load_manifest(MANIFESTS, env)
    top = manifest.services.tasks["gamepulse"].autoscaling.max
    assert top == {"dev": 10, "staging": 10, "prod": 20}[env]
    cluster = facts(env).cluster_arn
    tasks = [promtool.ecs_target(f"10.1.{i // 200}.{i % 200 + 10}", "gamepulse", 80, cluster) for i in range(top)]
    others = [promtool.ecs_target(f"10.2.0.{i}", service, 80, cluster)
              for i, service in enumerate(["prometheus", "loki", "jaeger", "grafana"], start=1)]
    starting = [promtool.ecs_target("10.3.0.1", "gamepulse", 80, cluster, status="PROVISIONING")]
    config = parsed(env, "prometheus", "prometheus.yml")
    collector = parsed(env, "otel-collector", "config.yaml")
    app_port = port(collector["exporters"]["prometheus"]["endpoint"])
    self_port = collector["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]["port"]
    ips = {t["labels"]["__meta_ecs_ip_address"] for t in tasks}
    for job, wanted_port in (("gamepulse", app_port), ("otel-collector", self_port)):
        found = promtool.scraped_targets(config, job, {cluster: tasks + others + starting}, tmp_path / job)
        assert sorted(t["__address__"] for t in found) == sorted(f"{ip}:{wanted_port}" for ip in ips), job
    app_job = {job["job_name"]: job for job in config["scrape_configs"]}["gamepulse"]
    assert app_job["honor_labels"] is True  # the exporter's job and instance (service.name, service.instance.id)
    assert "dns_sd_configs" not in app_job


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_prometheus_finds_the_single_task_services_in_cloud_map(env):
    config = parsed(env, "prometheus", "prometheus.yml")
    namespace = facts(env).namespace
    assert config["storage"]["tsdb"]["retention"]["time"] == "15d"
    assert config["global"]["external_labels"]["environment"] == env
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["loki"]["dns_sd_configs"][0]["names"] == [f"loki.{namespace}"]
    assert jobs["loki"]["dns_sd_configs"][0]["port"] == parsed(env, "loki", "loki.yaml")["server"]["http_listen_port"]
    for name, job in jobs.items():
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A"
            assert all(name.endswith(f".{namespace}") for name in sd["names"])
            service = sd["names"][0].split(".")[0]
            task = load_manifest(MANIFESTS, env).services.tasks[service]
            assert task.autoscaling is None and task.desired_count == 1, f"{service}: DNS names at most 8 tasks"


def test_prometheus_keeps_its_data_on_the_efs_volume():
    container = rendered("dev")["prometheus"].container
    assert "--storage.tsdb.path=/prometheus" in container.command
    assert container.data_dir == "/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in container.command
    assert container.config_dir == "/etc/prometheus"


# --- Loki --------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_loki_stores_in_the_environment_bucket_and_expires_at_its_retention(env):
    config = parsed(env, "loki", "loki.yaml")
    s3 = config["common"]["storage"]["s3"]
    assert s3 == {"bucketnames": facts(env).loki_bucket, "region": "us-east-1"}  # no keys: the task role
    (schema,) = config["schema_config"]["configs"]
    assert (schema["store"], schema["schema"], schema["object_store"]) == ("tsdb", "v13", "s3")
    assert schema["index"]["period"] == "24h"  # retention needs a 24h index period
    assert config["limits_config"]["retention_period"] == LOG_RETENTION_HOURS[env]
    assert config["limits_config"]["allow_structured_metadata"] is True
    compactor = config["compactor"]
    assert compactor["retention_enabled"] is True
    assert compactor["delete_request_store"] == schema["object_store"]
    # The image's user can write only under /loki; the WAL there is lost with the task, so flush on stop.
    data_dir = rendered(env)["loki"].container.data_dir
    assert config["common"]["path_prefix"] == data_dir
    for directory in (config["ingester"]["wal"]["dir"], compactor["working_directory"]):
        assert directory.startswith(data_dir + "/")
    assert config["ingester"]["wal"]["flush_on_shutdown"] is True


# --- Jaeger ------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_jaeger_stores_in_badger_with_a_retention_and_takes_the_collectors_otlp(env):
    config = parsed(env, "jaeger", "config.yaml")
    collector = parsed(env, "otel-collector", "config.yaml")
    backends = config["extensions"]["jaeger_storage"]["backends"]
    store = config["exporters"]["jaeger_storage_exporter"]["trace_storage"]
    assert config["extensions"]["jaeger_query"]["storage"]["traces"] == store
    badger = backends[store]["badger"]
    assert badger["ttl"]["spans"] == "168h"
    assert badger["ephemeral"] is False
    assert port(config["extensions"]["jaeger_query"]["http"]["endpoint"]) == 16686
    grpc = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert grpc.startswith("0.0.0.0:")
    assert port(grpc) == port(collector["exporters"]["otlp_grpc/jaeger"]["endpoint"])


# --- Grafana -----------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_grafana_datasources_link_logs_and_traces_both_ways(env):
    namespace = facts(env).namespace
    datasources = {source["uid"]: source for source in parsed(env, "grafana", "datasources/datasources.yaml")["datasources"]}
    assert {uid: source.get("url") for uid, source in datasources.items()} == {
        "prometheus": f"http://prometheus.{namespace}:9090", "loki": f"http://loki.{namespace}:3100",
        "jaeger": f"http://jaeger.{namespace}:16686", "cloudwatch": None}  # CloudWatch: the region's endpoint
    assert datasources["cloudwatch"]["jsonData"] == {"authType": "default", "defaultRegion": "us-east-1"}
    (derived,) = datasources["loki"]["jsonData"]["derivedFields"]
    # OTLP logs keep trace_id as structured metadata, not in the line: match the label.
    assert (derived["matcherType"], derived["matcherRegex"], derived["datasourceUid"]) == ("label", "trace_id", "jaeger")
    assert derived["url"] == "$${__value.raw}"  # `$$`: a literal `$` for Grafana's provisioning
    to_logs = datasources["jaeger"]["jsonData"]["tracesToLogsV2"]
    assert to_logs["datasourceUid"] == "loki"
    assert 'trace_id="$${__span.traceId}"' in to_logs["query"]


def test_grafana_reads_its_dashboards_from_the_bundle_and_its_password_from_secrets_manager():
    bundle = rendered("dev")["grafana"]
    (provider,) = yaml.safe_load(bundle.files["dashboards/providers.yaml"])["providers"]
    assert provider["options"]["path"].startswith(bundle.container.config_dir + "/")
    assert bundle.container.config_dir == "/etc/grafana/provisioning"
    assert bundle.container.secrets == {"GF_SECURITY_ADMIN_PASSWORD": "grafana-admin",
                                        "GAMEPULSE_SLACK_WEBHOOK_URL": "slack-webhook"}
    assert "GF_SECURITY_ADMIN_PASSWORD" not in bundle.container.environment
    assert all(b"password" not in content.lower() for content in bundle.files.values())
    # The load balancer sends /grafana* to Grafana unchanged.
    assert bundle.container.environment["GF_SERVER_ROOT_URL"].endswith("/grafana/")
    assert bundle.container.environment["GF_SERVER_SERVE_FROM_SUB_PATH"] == "true"


# --- determinism and hashes --------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_same_input_renders_the_same_bytes(env):
    first, second = rendered(env), rendered(env)
    assert {name: (b.files, b.hash) for name, b in first.items()} == {name: (b.files, b.hash) for name, b in second.items()}


def test_a_changed_value_changes_only_the_bundles_that_use_it():
    manifest = load_manifest(MANIFESTS, "dev")
    before = rendered("dev", manifest)
    after = rendered("dev", manifest.model_copy(update={"logging": LoggingSpec(retention_days=60)}))
    changed = {name for name in before if before[name].hash != after[name].hash}
    assert changed == {"loki"}
    assert yaml.safe_load(after["loki"].files["loki.yaml"])["limits_config"]["retention_period"] == "1440h"


def test_a_changed_template_changes_its_bundle_hash(tmp_path, monkeypatch):
    copy = tmp_path / "configs"
    shutil.copytree(bundles.CONFIGS, copy)
    monkeypatch.setattr(bundles, "CONFIGS", copy)
    before = rendered("dev")
    template = copy / "prometheus" / "prometheus.yml"
    template.write_text(template.read_text().replace("port: 8888", "port: 8899", 1))
    after = rendered("dev")
    assert before["prometheus"].hash != after["prometheus"].hash
    assert {name: b.hash for name, b in before.items() if name != "prometheus"} == \
           {name: b.hash for name, b in after.items() if name != "prometheus"}


def test_bundle_hash_covers_paths_and_contents_not_their_order():
    files = {"a.yaml": b"x: 1\n", "b/c.yaml": b"y: 2\n"}
    assert bundle_hash(files) == bundle_hash(dict(reversed(files.items())))
    assert bundle_hash(files) != bundle_hash({**files, "a.yaml": b"x: 2\n"})
    assert bundle_hash(files) != bundle_hash({"a.yml": b"x: 1\n", "b/c.yaml": b"y: 2\n"})
    assert bundle_hash({"ab": b"c"}) != bundle_hash({"a": b"bc"})


# --- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_image_is_pinned_to_a_version(env):
    for service, bundle in rendered(env).items():
        image = bundle.container.image
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag != "latest", f"{service}: {image}"
        assert any(char.isdigit() for char in tag), f"{service}: {image}"


@pytest.mark.parametrize("image", ["grafana/grafana:latest", "grafana/grafana", "grafana/grafana:main",
                                   "localhost:5000/grafana", "grafana/grafana@sha256:abc"])
def test_an_unpinned_image_is_refused(image):
    with pytest.raises(ValueError, match="pinned|digest"):
        ObservabilityImages(otel_collector=image, prometheus="p:1.0", loki="l:1.0", jaeger="j:1.0", grafana="g:1.0")


@pytest.mark.parametrize("image", ["prom/prometheus:v3.14.0", "localhost:5000/loki:3.7.6",
                                   "grafana/grafana@sha256:" + "0" * 64])
def test_a_pinned_image_is_accepted(image):
    ObservabilityImages(otel_collector=image, prometheus="p:1.0", loki="l:1.0", jaeger="j:1.0", grafana="g:1.0")


def test_a_bad_observability_value_is_reported_at_its_file_and_line(tmp_path):
    shutil.copy(MANIFESTS / "gamepulse.yaml", tmp_path / "gamepulse.yaml")
    (tmp_path / "dev.yaml").write_text("observability:\n  images:\n    loki: grafana/loki:latest\n"
                                       "  trace_sampling: {ratio: 1.5}\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path, "dev")
    overlay = tmp_path / "dev.yaml"
    assert caught.value.problems == [
        f"{overlay}:3: observability.images.loki: 'grafana/loki:latest' is not pinned to a version; "
        "write name:1.2.3 or name@sha256:<digest>",
        f"{overlay}:4: observability.trace_sampling.ratio: should be less than or equal to 1 (got 1.5)"]


# --- what render refuses -----------------------------------------------------------------------


def test_render_needs_the_observability_section_and_the_grafana_secret():
    manifest = load_manifest(MANIFESTS, "dev")
    with pytest.raises(OrchestratorError, match="no observability section"):
        render(manifest.model_copy(update={"observability": None}), facts("dev"))
    secrets = manifest.secrets.model_copy(
        update={"values": {k: v for k, v in manifest.secrets.values.items() if k != "grafana-admin"}})
    with pytest.raises(OrchestratorError, match="grafana-admin"):
        render(manifest.model_copy(update={"secrets": secrets}), facts("dev"))


# --- the collector sidecar's memory, Grafana's address, the app's health check -----------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_collector_refuses_data_below_its_own_containers_memory(env):
    manifest = load_manifest(MANIFESTS, env)
    task = manifest.services.tasks["gamepulse"]
    container = rendered(env)["otel-collector"].container
    limiter = parsed(env, "otel-collector", "config.yaml")["processors"]["memory_limiter"]
    assert container.memory == task.app.sidecar_memory_mib < task.memory  # its own, within the task's
    assert "limit_percentage" not in limiter  # a percentage reads the whole task's memory
    assert 0 < limiter["spike_limit_mib"] < limiter["limit_mib"] < container.memory
    # The limit bounds the heap; the process takes about 50 MiB more (the memory_limiter README).
    assert limiter["limit_mib"] + 50 < container.memory


def test_a_sidecar_that_takes_the_whole_task_is_refused(tmp_path):
    base = (MANIFESTS / "gamepulse.yaml").read_text().replace("sidecar_memory_mib: 256", "sidecar_memory_mib: 1024")
    (tmp_path / "gamepulse.yaml").write_text(base)
    shutil.copy(MANIFESTS / "dev.yaml", tmp_path / "dev.yaml")
    with pytest.raises(ManifestError, match="sidecar_memory_mib"):
        load_manifest(tmp_path, "dev")


def test_grafanas_links_carry_the_load_balancers_name_or_its_certificates_domain():
    """Alert notifications link to GF_SERVER_ROOT_URL: the load balancer's DNS name where no name is
    given (dev); the certificate's domain over https where the load balancer has one (staging,
    prod), since a browser accepts the certificate for that name only."""
    roots = {env: rendered(env)["grafana"].container.environment["GF_SERVER_ROOT_URL"] for env in ENVIRONMENTS}
    assert roots == {"dev": f"http://{ALB_DNS['dev']}/grafana/",
                     "staging": "https://staging.gamepulse.example.com/grafana/",
                     "prod": "https://play.gamepulse.example.com/grafana/"}
    assert rendered("dev")["grafana"].container.environment["GF_SERVER_SERVE_FROM_SUB_PATH"] == "true"


def test_grafanas_links_use_the_manifests_domain_when_it_names_one():
    manifest = load_manifest(MANIFESTS, "prod")
    named = manifest.model_copy(update={"load_balancer": manifest.load_balancer.model_copy(
        update={"domain": "play.gamepulse.example"})})
    assert render(named, facts("prod"))["grafana"].container.environment["GF_SERVER_ROOT_URL"] == \
        "https://play.gamepulse.example/grafana/"


def test_the_app_has_no_container_health_check_by_default_and_a_shell_check_is_noted():
    from steps import taskdefs

    manifest = load_manifest(MANIFESTS, "dev")
    assert manifest.services.tasks["gamepulse"].app.health_check is None  # the load balancer's check is the app's
    settings = taskdefs.TaskSettings(family="gamepulse-dev-gamepulse", service="gamepulse", cpu=512, memory=1024,
                                     execution_role_arn="arn:x", task_role_arn="arn:y", log_group="g",
                                     region="us-east-1", init_image="i:1", config_bucket="b")
    app = taskdefs.AppContainer(name="gamepulse", image="repo@sha256:0", port=8080, health_check=None,
                                environment={}, secrets={})
    bundle = rendered("dev")["otel-collector"]
    definition = taskdefs.render(settings, bundle, app, {})
    containers = {c["name"]: c for c in definition["containerDefinitions"]}
    assert "healthCheck" not in containers["gamepulse"]
    assert containers["otel-collector"]["healthCheck"]["command"] == ["CMD", "/healthcheck"]  # no shell: no note
    assert containers["otel-collector"]["memory"] == 256
    assert taskdefs.health_check_notes(definition) == []
    curl = dataclasses.replace(app, health_check=("CMD-SHELL", "curl -fsS http://localhost:8080/health || exit 1"))
    [note] = taskdefs.health_check_notes(taskdefs.render(settings, bundle, curl, {}))
    assert "gamepulse" in note and "'curl'" in note and "rolls back" in note


def test_plan_notes_say_what_grafana_cannot_do():
    grafana = rendered("dev")["grafana"]
    remarks = " ".join(grafana.remarks)  # on every plan
    assert "cannot be emailed to platform-oncall@gamepulse.example" in remarks and "alerting.smtp" in remarks
    notes = " ".join(grafana.notes)  # when the bundle changes
    assert "admin password" in notes and "does not change the password" in notes


def test_smtp_settings_reach_grafana_and_the_password_only_from_secrets_manager():
    from orchestrator.schema import SmtpSpec

    manifest = load_manifest(MANIFESTS, "dev")
    secrets = manifest.secrets.model_copy(update={"values": {**manifest.secrets.values, "smtp-password":
                                                            manifest.secrets.values["grafana-admin"]}})
    alerting = manifest.alerting.model_copy(update={"smtp": SmtpSpec(
        host="email-smtp.us-east-1.amazonaws.com:587", from_address="grafana@gamepulse.example", user="AKIAEXAMPLE",
        password_secret="smtp-password")})
    bundle = render(manifest.model_copy(update={"alerting": alerting, "secrets": secrets}), facts("dev"))["grafana"]
    assert bundle.container.environment["GF_SMTP_HOST"] == "email-smtp.us-east-1.amazonaws.com:587"
    assert bundle.container.environment["GF_SMTP_ENABLED"] == "true"
    assert bundle.container.secrets["GF_SMTP_PASSWORD"] == "smtp-password"
    assert "GF_SMTP_PASSWORD" not in bundle.container.environment
    assert bundle.remarks == ()


def test_prometheus_on_task_storage_is_bounded_below_the_tasks_disk(tmp_path):
    """Prometheus does not support EFS (NFS): without `data_volume` the TSDB lives on the task's
    ephemeral storage (20 GiB on Fargate), bounded by size as well as time."""
    manifest = load_manifest(MANIFESTS, "prod")
    on_efs = yaml.safe_load(render(manifest, facts("prod"))["prometheus"].files["prometheus.yml"])
    assert set(on_efs["storage"]["tsdb"]["retention"]) == {"time"}
    tasks = {**manifest.services.tasks,
             "prometheus": manifest.services.tasks["prometheus"].model_copy(update={"data_volume": None})}
    local = manifest.model_copy(update={"services": manifest.services.model_copy(update={"tasks": tasks})})
    retention = yaml.safe_load(render(local, facts("prod"))["prometheus"].files["prometheus.yml"])[
        "storage"]["tsdb"]["retention"]
    assert retention == {"time": "15d", "size": "14GB"}
    assert int(retention["size"].removesuffix("GB")) < 20
    comment = (MANIFESTS / "gamepulse.yaml").read_text()
    assert "Prometheus does not support" in comment and "data_volume" in comment


def test_prometheus_without_the_discovery_grant_is_a_manifest_error(tmp_path):
    base = (MANIFESTS / "gamepulse.yaml").read_text()
    (tmp_path / "gamepulse.yaml").write_text(base.replace("[config-read, cloudwatch-read, ecs-discovery]",
                                                          "[config-read, cloudwatch-read, ecs-describe]"))
    shutil.copy(MANIFESTS / "dev.yaml", tmp_path / "dev.yaml")
    with pytest.raises(ManifestError, match="iam.task_roles.prometheus.grants: Prometheus finds the app's tasks"):
        load_manifest(tmp_path, "dev")
