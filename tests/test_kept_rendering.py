"""The rendered config files are kept between runs (steps.bundles `kept_or_rendered`, in the
user's cache folder): a render of the same inputs gives the same bundles without rendering, and
a plan of an applied environment never imports grafana-foundation-sdk; any changed input (a
manifest value, a fact, a template's bytes, our code, the SDK) renders again; a damaged,
planted or shared kept file is never used, and a cache that cannot be written fails nothing."""
from __future__ import annotations

import os
import pickle
import shutil
import sys
import time

import pytest

from orchestrator import kept as kept_data
from orchestrator.manifest import load_manifest
from steps import bundles, grafana_content
from steps.bundles import Facts, render
from tests.conftest import FAKE_ENV, MANIFESTS
from tests.test_cli import run
from tests.test_log import PROBE

FACTS = Facts(loki_bucket="gamepulse-dev-loki-chunks-123456789012", namespace="gamepulse-dev.local",
              region="us-east-1", cluster_arn="arn:aws:ecs:us-east-1:123456789012:cluster/gamepulse-dev",
              load_balancer_dns="gamepulse-dev-1234567890.us-east-1.elb.amazonaws.com")
#: The real folder (conftest turns the kept files off for in-process tests; these turn them on).
KEPT_FOLDER = bundles.kept_folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The kept rendered files' folder, in a cache folder of this test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(bundles, "kept_folder", KEPT_FOLDER)
    return KEPT_FOLDER()


@pytest.fixture
def renders(monkeypatch):
    """The services whose templates were rendered, in order (none when the files were kept)."""
    calls = []
    original = bundles._render_folder
    monkeypatch.setattr(bundles, "_render_folder",
                        lambda service, *rest: calls.append(service) or original(service, *rest))
    return calls


@pytest.fixture
def manifest():
    return load_manifest(MANIFESTS, "dev")


def rendered_afresh(manifest, facts, monkeypatch) -> dict:
    """What rendering gives without any kept file."""
    with monkeypatch.context() as patch:
        patch.setattr(bundles, "kept_folder", lambda: None)
        return render(manifest, facts)


def never(*args, **kwargs):
    pytest.fail("rendered again")


def test_a_second_render_of_the_same_inputs_is_the_kept_files_and_renders_nothing(cache, manifest, monkeypatch):
    first = render(manifest, FACTS)
    [kept] = cache.iterdir()
    assert kept.suffix == ".pickle"
    secrets = {FAKE_ENV["GAMEPULSE_DEV_DB_CONNECTION"], FAKE_ENV["GAMEPULSE_DEV_SLACK_WEBHOOK"]}
    assert not any(secret.encode() in kept.read_bytes() for secret in secrets)  # variables are named, never read
    monkeypatch.setattr(bundles, "_render_folder", never)
    monkeypatch.setattr(grafana_content, "files", never)
    again = render(load_manifest(MANIFESTS, "dev"), FACTS)
    assert again == first  # files, hashes, containers, notes and remarks
    assert again["grafana"].remarks and "alerting/rules.yaml" in again["grafana"].files


@pytest.mark.dev_applied
def test_a_plan_of_unchanged_inputs_never_imports_the_grafana_sdk_and_a_changed_threshold_renders(endpoint, tmp_path):
    probe = {**PROBE, "IMPORT_PROBE": "grafana_foundation_sdk"}
    assert run(endpoint, "plan", "dev").returncode == 0  # keeps the files, if the apply of dev did not
    unchanged = run(endpoint, "plan", "dev", extra_env=probe)
    assert unchanged.returncode == 0, unchanged.stderr
    assert "No changes" in unchanged.stdout
    assert unchanged.stdout.splitlines()[-1] == "grafana_foundation_sdk loaded: False"

    manifests = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, manifests)
    overlay = manifests / "dev.yaml"
    overlay.write_text(overlay.read_text().replace("cpu_percent: {warning: 85,", "cpu_percent: {warning: 80,", 1))
    changed = run(endpoint, "plan", "dev", manifests=manifests, extra_env=probe)
    assert changed.returncode == 0, changed.stderr
    assert [line.strip() for line in changed.stdout.splitlines() if "update bundle" in line] == \
        ["~ update bundle grafana"]
    assert changed.stdout.splitlines()[-1] == "grafana_foundation_sdk loaded: True"


def with_cpu_warning(manifest, percent: float):
    thresholds = manifest.alerting.thresholds
    cpu = thresholds.cpu_percent.model_copy(update={"warning": percent})
    changed = thresholds.model_copy(update={"cpu_percent": cpu})
    return manifest.model_copy(update={"alerting": manifest.alerting.model_copy(update={"thresholds": changed})})


@pytest.fixture
def code_copy(tmp_path, monkeypatch):
    """Our packages' code, read from a copy the test may edit."""
    copies = tuple(tmp_path / "code" / package.name for package in bundles.CODE)
    for package, copy in zip(bundles.CODE, copies):
        shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(bundles, "CODE", copies)
    return tmp_path / "code"


@pytest.fixture
def configs_copy(tmp_path, monkeypatch):
    copy = tmp_path / "configs"
    shutil.copytree(bundles.CONFIGS, copy)
    monkeypatch.setattr(bundles, "CONFIGS", copy)
    return copy


def append_comment(path):
    path.write_bytes(path.read_bytes() + b"# edited\n")


def before_this_run(path):
    """As if `path` was written before this process loaded our code, as the files a run reads are
    (one changed during a run is never kept: `test_a_code_file_changed_during_the_run_...`)."""
    then = bundles.LOADED_AT_NS - 10**9
    os.utime(path, ns=(then, then))


@pytest.mark.parametrize("change", ["a manifest value", "a fact", "a template's bytes", "a code file's bytes"])
def test_each_changed_input_renders_again(change, cache, manifest, renders, code_copy, configs_copy, monkeypatch):
    first = render(manifest, FACTS)
    assert render(manifest, FACTS) == first and len(renders) == len(first)  # the second: kept

    facts = FACTS
    if change == "a manifest value":
        manifest = with_cpu_warning(manifest, 70.0)
    elif change == "a fact":
        facts = Facts(**{**vars(FACTS), "loki_bucket": "gamepulse-dev-loki-chunks-210987654321"})
    elif change == "a template's bytes":
        template = configs_copy / "prometheus" / "prometheus.yml"
        template.write_text(template.read_text().replace("port: 8888", "port: 8899", 1))
        before_this_run(template)
    else:
        append_comment(code_copy / "steps" / "grafana_content.py")
        before_this_run(code_copy / "steps" / "grafana_content.py")
    del renders[:]
    changed = render(manifest, facts)
    assert renders == list(first)  # every service rendered again
    assert changed == rendered_afresh(manifest, facts, monkeypatch)
    if change != "a code file's bytes":  # a comment renders the same files
        assert changed != first
    del renders[:]
    assert render(manifest, facts) == changed and renders == []  # kept, in place of the first
    assert len(list(cache.glob("*.pickle"))) == 1


def test_a_new_image_tag_replaces_the_environments_kept_file(cache, manifest, renders):
    from orchestrator.manifest import with_image_tags
    for tag in ("1.4.1", "1.4.2", "1.4.3"):
        render(with_image_tags(manifest, {"gamepulse": tag}), FACTS)
    assert len(renders) == 3 * len(bundles._SOURCES)  # each tag is another manifest
    assert len(list(cache.glob("*.pickle"))) == 1  # one file per environment, however many deploys


def test_a_code_file_changed_during_the_run_is_never_kept_nor_its_kept_file_used(cache, manifest, renders,
                                                                               code_copy, monkeypatch):
    first = render(manifest, FACTS)
    [kept] = cache.glob("*.pickle")
    written = kept.read_bytes()
    append_comment(code_copy / "steps" / "grafana_content.py")  # a `git pull` during a long apply
    assert render(manifest, FACTS) == first == rendered_afresh(manifest, FACTS, monkeypatch)
    assert len(renders) == 3 * len(first)  # the kept file of the same inputs was not used either
    assert list(cache.glob("*.pickle")) == [kept] and kept.read_bytes() == written  # nor what it rendered kept


@pytest.fixture
def installed_sdk(tmp_path, monkeypatch):
    """A grafana-foundation-sdk installed in a folder first on sys.path: its package and the
    RECORD of its distribution."""
    site = tmp_path / "site"
    (site / bundles.SDK).mkdir(parents=True)
    (site / bundles.SDK / "__init__.py").write_text("")
    record = site / f"{bundles.SDK}-1.0.dist-info" / "RECORD"
    record.parent.mkdir()
    record.write_text(f"{bundles.SDK}/__init__.py,sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU,0\n")
    before_this_run(record)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, bundles.SDK, raising=False)  # else its spec is the imported one's
    return site


def test_another_sdk_installed_renders_again_and_one_that_cannot_be_told_is_never_kept(
        cache, manifest, renders, installed_sdk):
    render(manifest, FACTS)
    render(manifest, FACTS)
    assert len(renders) == len(bundles._SOURCES)  # the second: kept

    record = installed_sdk / f"{bundles.SDK}-1.0.dist-info" / "RECORD"
    upgraded = record.parent.with_name(f"{bundles.SDK}-2.0.dist-info")
    record.parent.rename(upgraded)
    (upgraded / "RECORD").write_text((upgraded / "RECORD").read_text().replace("47DEQ", "48DEQ"))
    before_this_run(upgraded / "RECORD")
    render(manifest, FACTS)
    assert len(renders) == 2 * len(bundles._SOURCES)

    shutil.rmtree(upgraded)  # an install without a RECORD beside it (editable, say)
    render(manifest, FACTS)
    render(manifest, FACTS)
    assert len(renders) == 4 * len(bundles._SOURCES)
    assert len(list(cache.glob("*.pickle"))) == 1  # the 2.0 install's


class Runs:
    """What a planted pickle could do: call a function (here, create a file) when loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def damaged(kept):
    kept.write_bytes(kept.read_bytes()[:100])  # a write cut short (by a full disk, say)


def planted(kept):
    kept.write_bytes(pickle.dumps(Runs(str(kept.parent.parent / "ran"))))


def one_byte_changed(kept):
    data = pickle.loads(kept.read_bytes())
    files = data["services"]["prometheus"]["files"]
    content = files["prometheus.yml"]
    files["prometheus.yml"] = content[:-1] + bytes([content[-1] ^ 1])
    kept.write_bytes(pickle.dumps(data))


def other_services(kept):
    data = pickle.loads(kept.read_bytes())
    del data["services"]["jaeger"]
    kept.write_bytes(pickle.dumps(data))


@pytest.mark.parametrize("spoil", [damaged, planted, one_byte_changed, other_services])
def test_a_damaged_or_planted_kept_file_is_rendered_again_and_kept_again(spoil, cache, manifest, renders):
    first = render(manifest, FACTS)
    [kept] = cache.glob("*.pickle")
    spoil(kept)
    assert render(manifest, FACTS) == first
    assert len(renders) == 2 * len(first)
    assert not (cache.parent / "ran").exists()
    assert render(manifest, FACTS) == first
    assert len(renders) == 2 * len(first)  # kept again


def test_a_cache_folder_that_cannot_be_written_fails_nothing(tmp_path, monkeypatch, manifest, renders):
    blocked = tmp_path / "a file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked / "cache"))
    monkeypatch.setattr(bundles, "kept_folder", KEPT_FOLDER)
    first = render(manifest, FACTS)
    assert render(manifest, FACTS) == first
    assert len(renders) == 2 * len(first)
    assert first == rendered_afresh(manifest, FACTS, monkeypatch)
    assert [path.name for path in tmp_path.iterdir()] == ["a file"]


def test_a_code_file_that_cannot_be_read_renders_every_time_and_keeps_nothing(cache, manifest, renders, code_copy,
                                                                              monkeypatch):
    (code_copy / "steps" / "gone.py").symlink_to(code_copy / "steps" / "no-such-file.py")  # say, mid-save
    first = render(manifest, FACTS)
    assert render(manifest, FACTS) == first == rendered_afresh(manifest, FACTS, monkeypatch)
    assert len(renders) == 3 * len(first)
    assert not cache.exists() or not list(cache.iterdir())


def test_a_kept_file_in_a_folder_others_may_write_in_is_never_used(cache, manifest, renders, monkeypatch):
    first = render(manifest, FACTS)
    [kept] = cache.glob("*.pickle")
    data = pickle.loads(kept.read_bytes())
    files = data["services"]["loki"]["files"]
    files["loki.yaml"] += b"# planted\n"
    data["services"]["loki"]["sha256"] = bundles.files_digest(files)  # a consistent file, from another user
    kept.write_bytes(pickle.dumps(data))
    cache.chmod(0o777)
    monkeypatch.setattr(kept_data, "_PRIVATE", {})  # a later run
    assert render(manifest, FACTS) == first
    assert len(renders) == 2 * len(first)
    assert pickle.loads(kept.read_bytes()) == data  # nor written


def test_kept_files_no_run_wrote_for_a_month_are_removed_and_temporary_ones_left_behind_after_a_day(
        cache, manifest, monkeypatch):
    old_form = cache.parent / "rendered-0"
    old_form.mkdir(parents=True)
    (old_form / "old.pickle").write_bytes(b"")
    month_ago = time.time() - kept_data.KEPT_FOR_SECONDS - 60
    os.utime(old_form / "old.pickle", (month_ago, month_ago))
    cache.mkdir(parents=True, mode=0o700)
    left, writing = cache / ".killed.tmp", cache / ".writing.tmp"  # a run killed mid-write; one writing now
    left.write_bytes(b""), writing.write_bytes(b"")
    day_ago = time.time() - kept_data.LEFT_FOR_SECONDS - 60
    os.utime(left, (day_ago, day_ago))
    monkeypatch.setattr(kept_data, "_FORGOTTEN", set())
    render(manifest, FACTS)
    assert not old_form.exists() and len(list(cache.glob("*.pickle"))) == 1
    assert not left.exists() and writing.exists()
