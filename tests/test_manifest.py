"""Manifest loading: the shipped environments merge as documented, and every kind of mistake is
reported the way a user sees it (`FILE:LINE: FIELD.PATH: message`, all problems at once)."""
from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from orchestrator.errors import ManifestError
from orchestrator.manifest import json_schema, list_environments, load_manifest, manifest_hash

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
# The bad-manifest corpus: a shared base (gamepulse.yaml), one overlay per case (<case>.yaml) and
# the exact error lines it must produce (<case>.expected), paths relative to the project root.
BAD = Path("tests/bad_manifests")
BAD_CASES = list_environments(ROOT / BAD)


def problems(directory: Path | str, env: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(directory, env)
    return caught.value.problems


# --- the shipped manifests -----------------------------------------------------------------


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_shipped_environment_loads_with_its_name_and_merged_tags(env):
    manifest = load_manifest(MANIFESTS, env)
    assert manifest.environment == env
    assert manifest.prefix == f"gamepulse-{env}"
    assert manifest.tags == {"project": "gamepulse", "owner": "platform-team", "cost-center": "games",
                             "environment": env}


def test_list_environments_leaves_out_the_base():
    assert list_environments(MANIFESTS) == ["dev", "prod", "staging"]


def test_prod_overrides_network_and_retention_and_keeps_the_base_elsewhere():
    prod = load_manifest(MANIFESTS, "prod")
    assert (prod.network.zones, prod.network.nat_gateways, prod.network.cidr) == (3, "per_zone", "10.40.0.0/16")
    assert prod.logging.retention_days == 90
    assert prod.protection.refuse_destroy is True
    assert prod.cluster.default_strategy[0].base == 1
    assert prod.network.private_subnet_prefix == 20  # from the base
    assert sorted(prod.network.security_groups) == ["alb", "app", "efs", "endpoints", "monitoring"]


def test_dev_keeps_the_base_network_and_has_no_certificate():
    dev = load_manifest(MANIFESTS, "dev")
    assert dev.network.cidr == "10.20.0.0/16"
    assert (dev.network.zones, dev.network.nat_gateways) == (2, "single")
    assert dev.load_balancer.certificate_arn is None and dev.load_balancer.certificate is None
    assert dev.state.deletion_protection is False


def test_staging_names_its_certificate_by_domain_and_every_shipped_manifest_pins_the_sandbox_account():
    staging = load_manifest(MANIFESTS, "staging")
    assert staging.load_balancer.certificate.domain == "staging.gamepulse.example.com"
    assert staging.load_balancer.certificate_arn is None
    assert {load_manifest(MANIFESTS, env).account_id for env in ("dev", "staging", "prod")} == {"123456789012"}
    assert staging.network.cidr == "10.30.0.0/16"
    assert staging.efs.backups is True


def test_dev_subnets_are_carved_deterministically_inside_the_vpc():
    public, private = load_manifest(MANIFESTS, "dev").network.subnet_cidrs()
    assert private == ["10.20.0.0/20", "10.20.16.0/20"]
    assert public == ["10.20.32.0/24", "10.20.33.0/24"]
    nets = [ipaddress.ip_network(cidr) for cidr in public + private]
    assert all(net.subnet_of(ipaddress.ip_network("10.20.0.0/16")) for net in nets)
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])


def test_manifest_hash_is_stable_and_tells_environments_apart():
    dev_hash = manifest_hash(load_manifest(MANIFESTS, "dev"))
    assert dev_hash == manifest_hash(load_manifest(MANIFESTS, "dev"))
    assert len(dev_hash) == 64 and int(dev_hash, 16) >= 0
    assert dev_hash != manifest_hash(load_manifest(MANIFESTS, "staging"))


def test_json_schema_describes_the_manifest():
    schema = json_schema()
    assert schema["title"] == "Manifest"
    assert {"network", "load_balancer", "state"} <= set(schema["required"])


def test_an_empty_overlay_is_the_base_as_is(tmp_path):
    shutil.copy(MANIFESTS / "gamepulse.yaml", tmp_path)
    (tmp_path / "qa.yaml").write_text("# nothing to change\n")
    qa = load_manifest(tmp_path, "qa")
    assert qa.environment == "qa"
    assert qa.tags == {"project": "gamepulse", "owner": "platform-team", "cost-center": "games"}


# --- what a user sees when something is wrong ----------------------------------------------


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_manifest_reports_exactly_the_expected_lines(case, monkeypatch):
    monkeypatch.chdir(ROOT)
    expected = (BAD / f"{case}.expected").read_text().splitlines()
    assert problems(BAD, case) == expected


def test_missing_environment_lists_the_ones_that_exist(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert problems("manifests", "qa") == [
        "manifests/qa.yaml: no such environment file; the environments in manifests are: dev, prod, staging"]


def test_the_base_is_not_an_environment(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert problems("manifests", "gamepulse") == [
        "manifests/gamepulse.yaml: no such environment file; the environments in manifests are: dev, prod, staging"]


def test_missing_manifests_directory_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    assert problems(missing, "dev") == [f"{missing}: manifests directory not found"]


def test_missing_default_base_is_named(tmp_path):
    (tmp_path / "dev.yaml").write_text("network: {zones: 2}\n")
    assert problems(tmp_path, "dev") == [
        f"{tmp_path / 'gamepulse.yaml'}: base manifest not found (an overlay may name another with 'base:')"]


def test_an_unknown_key_suggests_the_field_meant(tmp_path):
    shutil.copy(MANIFESTS / "gamepulse.yaml", tmp_path)
    (tmp_path / "dev.yaml").write_text(
        "secrets:\n  values:\n    x:\n      source: file\n      file: /run/x\n"
        "storage:\n  buckets:\n    config:\n      versionning: true\n      colour: blue\n")
    assert problems(tmp_path, "dev") == [
        f"{tmp_path / 'dev.yaml'}:5: secrets.values.x.file: unknown field; did you mean `path`?",
        f"{tmp_path / 'dev.yaml'}:9: storage.buckets.config.versionning: unknown field; did you mean `versioning`?",
        f"{tmp_path / 'dev.yaml'}:10: storage.buckets.config.colour: unknown field",
    ]


def test_an_empty_base_manifest_is_named_instead_of_every_field_reported_missing(tmp_path):
    (tmp_path / "gamepulse.yaml").write_text("# nothing yet\n")
    (tmp_path / "dev.yaml").write_text("# dev\ntags:\n  environment: dev\n")
    assert problems(tmp_path, "dev") == [
        f"{tmp_path / 'gamepulse.yaml'}:1: the base manifest is empty; it holds the settings every environment "
        "shares (app, region, state, network, ...)"]


def test_merge_keys_and_keys_that_are_not_names_are_invalid_yaml_at_their_line(tmp_path):
    shutil.copy(MANIFESTS / "gamepulse.yaml", tmp_path)
    (tmp_path / "dev.yaml").write_text("tags:\n  team: games\nlogging: &shared {retention_days: 7}\n"
                                       "protection:\n  <<: *shared\n")
    (tmp_path / "qa.yaml").write_text("tags:\n  team: games\n  [a, b]: c\n")
    assert problems(tmp_path, "dev") == [
        f"{tmp_path / 'dev.yaml'}:5:3: invalid YAML: merge keys (<<) are not supported; write the fields out"]
    assert problems(tmp_path, "qa") == [
        f"{tmp_path / 'qa.yaml'}:3:3: invalid YAML: a key must be a plain name, not a list or a mapping"]


# --- secret sources per environment ------------------------------------------------------------


def with_secret_env(tmp_path: Path, env_value: str, shared: bool | None = None) -> Path:
    shutil.copytree(MANIFESTS, tmp_path, dirs_exist_ok=True)
    base = (tmp_path / "gamepulse.yaml").read_text()
    base = base.replace("env: GAMEPULSE_{ENV}_DB_CONNECTION", f"env: {env_value}"
                        + (f"\n      shared: {str(shared).lower()}" if shared is not None else ""))
    (tmp_path / "gamepulse.yaml").write_text(base)
    return tmp_path


def test_each_environment_reads_its_own_variable():
    assert [load_manifest(MANIFESTS, env).secrets.values["db-connection"].variable(env)
            for env in ("dev", "staging", "prod")] == \
        ["GAMEPULSE_DEV_DB_CONNECTION", "GAMEPULSE_STAGING_DB_CONNECTION", "GAMEPULSE_PROD_DB_CONNECTION"]


def test_one_variable_for_every_environment_is_an_error_unless_declared_shared(tmp_path):
    manifests = with_secret_env(tmp_path, "GAMEPULSE_DB_CONNECTION")
    [problem] = problems(manifests, "prod")
    line = next(n for n, text in enumerate((manifests / "gamepulse.yaml").read_text().splitlines(), 1)
                if "env: GAMEPULSE_DB_CONNECTION" in text)
    assert problem == (f"{manifests}/gamepulse.yaml:{line}: secrets.values.db-connection.env: GAMEPULSE_DB_CONNECTION "
                       "would feed this secret in every environment that reads it; name the environment in it "
                       "(GAMEPULSE_{ENV}_DB_CONNECTION: GAMEPULSE_PROD_DB_CONNECTION in prod) or declare "
                       "`shared: true`")
    shared = with_secret_env(tmp_path, "GAMEPULSE_DB_CONNECTION", shared=True)
    assert load_manifest(shared, "prod").secrets.values["db-connection"].variable("prod") == "GAMEPULSE_DB_CONNECTION"
