"""botocore's data files, read by orchestrator.service_models: the same models botocore reads
(less the documentation strings botocore uses only for help texts), kept in the user's cache for
the next run, and still read when the cache is damaged, unwritable or out of date. A kept service
model's shapes are decoded only when botocore asks for one."""
from __future__ import annotations

import io
import json
import os
import pickle
import time

import pytest
from botocore.exceptions import ClientError, UnknownServiceError
from botocore.loaders import create_loader

from orchestrator import kept as kept_data
from orchestrator import service_models
from orchestrator.aws import Aws
from orchestrator.service_models import LazyShapes, without_documentation

#: A new loader on each call, as each run makes (conftest shares one across the suite's runs).
new_loader = getattr(service_models.loader, "__wrapped__", service_models.loader)

#: (service, kind of file) a run reads: a model of each protocol, endpoint rules, paginators, waiters.
FILES = (("ec2", "service-2"), ("s3", "service-2"), ("iam", "service-2"), ("s3", "endpoint-rule-set-1"),
         ("iam", "paginators-1"), ("ecs", "waiters-2"))


def documented(model: dict) -> int:
    """How many documentation strings a service model holds where botocore looks for them."""
    shapes = model.get("shapes", {}).values()
    return sum(1 for part in (model, *model.get("operations", {}).values(), *shapes,
                              *(member for shape in shapes for member in shape.get("members", {}).values()))
               if "documentation" in part)


def test_models_are_botocores_as_plain_dicts_without_documentation(tmp_path):
    ours, botocores = new_loader(None, tmp_path), create_loader()
    for service, kind in FILES:
        model, reference = ours.load_service_model(service, kind), botocores.load_service_model(service, kind)
        if kind == "service-2":
            assert documented(reference) > 100 and documented(model) == 0
            reference = without_documentation(json.loads(json.dumps(reference)))
        assert type(model) is dict and list(model) == list(reference)
        assert model == reference
    assert ours.load_data("endpoints") == botocores.load_data("endpoints")


def test_a_later_run_reads_the_kept_files_without_parsing_json(tmp_path, monkeypatch):
    first = {(service, kind): new_loader(None, tmp_path).load_service_model(service, kind)
             for service, kind in FILES}
    kept = list(tmp_path.glob("*.pickle"))
    assert len(kept) >= len(FILES)
    monkeypatch.setattr(json, "loads", lambda *args, **kwargs: pytest.fail("parsed JSON again"))
    later = new_loader(None, tmp_path)
    assert {key: later.load_service_model(*key) for key in FILES} == first


def test_a_damaged_or_unwritable_cache_still_gives_the_models(tmp_path):
    reference = new_loader(None, None).load_service_model("sts", "service-2")
    new_loader(None, tmp_path).load_service_model("sts", "service-2")
    for kept in tmp_path.glob("*.pickle"):
        kept.write_bytes(kept.read_bytes()[:100])  # a write cut short (by a full disk, say)
    assert new_loader(None, tmp_path).load_service_model("sts", "service-2") == reference
    assert new_loader(None, tmp_path).load_service_model("sts", "service-2") == reference  # kept again

    blocked = tmp_path / "a file"
    blocked.write_text("")
    assert new_loader(None, blocked / "cache").load_service_model("sts", "service-2") == reference
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_changed_data_file_is_read_afresh(tmp_path):
    """A model of the user's own (AWS_DATA_PATH, ~/.aws/models) or an upgraded botocore: the kept
    copy is keyed by the file's path, size and time."""
    data = tmp_path / "data" / "gamepulse-test" / "2020-01-01"
    data.mkdir(parents=True)
    model = data / "service-2.json"
    model.write_text(json.dumps({"metadata": {"apiVersion": "2020-01-01"}, "operations": {}, "shapes": {}}))
    cache = tmp_path / "cache"
    assert new_loader(str(tmp_path / "data"), cache).load_service_model(
        "gamepulse-test", "service-2")["operations"] == {}
    model.write_text(json.dumps({"metadata": {"apiVersion": "2020-01-01"}, "operations": {"Ping": {}}, "shapes": {}}))
    os.utime(model, ns=(1, 1))
    assert new_loader(str(tmp_path / "data"), cache).load_service_model(
        "gamepulse-test", "service-2")["operations"] == {"Ping": {}}


def test_a_service_is_found_in_its_own_folder_and_an_unknown_one_named(tmp_path, monkeypatch):
    listed = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path=".": listed.append(str(path)) or real_listdir(path))
    loader = new_loader(None, tmp_path)
    loader.load_service_model("ecs", "service-2")
    data_folder = loader.BUILTIN_DATA_PATH
    assert data_folder not in listed  # botocore's own loader lists all ~410 services' folders here
    with pytest.raises(UnknownServiceError, match="Unknown service: 'no-such-service'"):
        loader.load_service_model("no-such-service", "service-2")


def test_files_no_run_wrote_for_a_month_are_removed_whatever_their_botocore(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = service_models.cache_folder()
    old, recent = tmp_path / "gamepulse-orchestrator" / "botocore-1.0.0-1", folder.parent / "botocore-2.0.0-1"
    for each in (old, recent):
        each.mkdir(parents=True)
        (each / "kept.pickle").write_bytes(b"")
    month_ago = time.time() - kept_data.KEPT_FOR_SECONDS - 60
    os.utime(old / "kept.pickle", (month_ago, month_ago))
    new_loader(None, folder).load_service_model("sts", "service-2")
    assert not old.exists() and (recent / "kept.pickle").exists() and list(folder.glob("*.pickle"))


def test_a_kept_file_that_names_code_is_never_run(tmp_path):
    """Kept files hold plain data: a pickle that would call a function when loaded is refused
    and the JSON is read instead."""
    reference = new_loader(None, None).load_service_model("sts", "service-2")
    new_loader(None, tmp_path).load_service_model("sts", "service-2")
    marker = tmp_path / "ran"
    for kept in tmp_path.glob("*.pickle"):
        kept.write_bytes(pickle.dumps(Runs(str(marker))))
    assert new_loader(None, tmp_path).load_service_model("sts", "service-2") == reference
    assert not marker.exists()


class Runs:
    """What a planted pickle could do: call a function (here, create a file) when loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("opened", ["the cache folder", "the folder holding it"])
def test_a_cache_folder_others_may_write_in_is_never_read_nor_written(tmp_path, opened):
    """Planted data (an endpoint rule set sending requests elsewhere, say) must not be read: a
    folder others may write in, or one held by such a folder (they could swap it), is passed over."""
    shared = tmp_path / "cache" / "botocore-x"
    new_loader(None, shared).load_service_model("sts", "service-2")
    planted = {"metadata": {}, "operations": {"Planted": {}}, "shapes": {}}
    for kept in shared.glob("*.pickle"):
        kept.write_bytes(pickle.dumps(planted))
        os.utime(kept)
    (shared if opened == "the cache folder" else shared.parent).chmod(0o777)
    kept_data._PRIVATE.clear()  # a later run
    fresh = new_loader(None, shared).load_service_model("sts", "service-2")
    assert "Planted" not in fresh["operations"] and "GetCallerIdentity" in fresh["operations"]
    assert all(pickle.loads(kept.read_bytes()) == planted for kept in shared.glob("*.pickle"))  # nothing written


def kept_model(cache, service: str) -> dict:
    """A service model as a later run loads it: from the file an earlier run kept."""
    new_loader(None, cache).load_service_model(service, "service-2")
    model = new_loader(None, cache).load_service_model(service, "service-2")
    assert isinstance(model["shapes"], LazyShapes)
    return model


@pytest.mark.parametrize("service", ["ec2", "s3", "iam", "rds", "secretsmanager"])
def test_a_kept_model_whose_shapes_are_decoded_on_demand_is_botocores(tmp_path, service):
    """Every shape decoded, the model is botocore's own, less documentation: the sdk-extras of
    s3 (changing a shape), rds (adding members to shapes, with their documentation) and
    secretsmanager (changing its metadata) merged as botocore merges them."""
    reference = without_documentation(json.loads(json.dumps(create_loader().load_service_model(service, "service-2"))))
    model = kept_model(tmp_path, service)
    assert model["shapes"].decoded() < len(model["shapes"])
    assert list(model) == list(reference) and list(model["shapes"]) == list(reference["shapes"])
    assert without_documentation(model) == reference
    assert model["shapes"].decoded() == len(model["shapes"])


def test_s3s_sdk_extras_change_its_kept_shapes(tmp_path):
    model = kept_model(tmp_path, "s3")
    assert model["shapes"]["Expires"] == {"type": "timestamp"}  # the model's own says string


@pytest.fixture
def run_loader(tmp_path, monkeypatch):
    """The loader of a run whose cache holds ec2's and iam's models kept by an earlier one; the
    clients the factory makes read through it."""
    for service in ("ec2", "iam"):
        new_loader(None, tmp_path).load_service_model(service, "service-2")
    loader = new_loader(None, tmp_path)
    monkeypatch.setattr(service_models, "loader", lambda data_path, cache: loader)
    return loader


def test_a_client_decodes_only_the_shapes_its_calls_use(run_loader, mock):
    ec2 = Aws("us-east-1").client("ec2")
    vpcs = ec2.describe_vpcs()["Vpcs"]
    shapes = run_loader.load_service_model("ec2", "service-2")["shapes"]
    assert vpcs and isinstance(shapes, LazyShapes)
    assert shapes.decoded() < 50 < 4000 < len(shapes)


def test_a_client_on_lazy_shapes_calls_pages_waits_and_raises_modeled_errors(run_loader, mock):
    aws = Aws("us-east-1")
    ec2, iam = aws.client("ec2"), aws.client("iam")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    ec2.get_waiter("vpc_available").wait(VpcIds=[vpc], WaiterConfig={"Delay": 0, "MaxAttempts": 2})
    pages = list(ec2.get_paginator("describe_vpcs").paginate(PaginationConfig={"PageSize": 5}))
    assert vpc in [each["VpcId"] for page in pages for each in page["Vpcs"]]
    with pytest.raises(ClientError) as missing:
        ec2.describe_vpcs(VpcIds=["vpc-0000000000000000f"])
    assert missing.value.response["Error"]["Code"] == "InvalidVpcID.NotFound"
    with pytest.raises(iam.exceptions.NoSuchEntityException):  # found among all of iam's shapes
        iam.get_role(RoleName="nobody")


def test_a_damaged_kept_shape_is_read_from_the_json_and_kept_again(tmp_path):
    """A kept file whole but one shape's bytes damaged (a disk error, say): the shapes not yet
    decoded come from the JSON file, and the next run keeps the model again."""
    reference = new_loader(None, None).load_service_model("sts", "service-2")
    kept = only_kept_model(tmp_path, "sts")
    model = pickle.loads(kept.read_bytes())
    model["shapes"]["GetCallerIdentityResponse"] = model["shapes"]["GetCallerIdentityResponse"][:-3]
    kept.write_bytes(pickle.dumps(model))
    loaded = new_loader(None, tmp_path).load_service_model("sts", "service-2")
    assert loaded["shapes"]["AssumeRoleRequest"] == reference["shapes"]["AssumeRoleRequest"]
    assert loaded["shapes"]["GetCallerIdentityResponse"] == reference["shapes"]["GetCallerIdentityResponse"]
    assert loaded == reference and not kept.exists()
    assert isinstance(kept_model(tmp_path, "sts")["shapes"], LazyShapes) and kept.exists()


def test_a_kept_shape_that_names_code_is_never_run(tmp_path):
    reference = new_loader(None, None).load_service_model("sts", "service-2")
    kept = only_kept_model(tmp_path, "sts")
    marker = tmp_path / "ran"
    model = pickle.loads(kept.read_bytes())
    model["shapes"]["AssumeRoleRequest"] = pickle.dumps(Runs(str(marker)))
    kept.write_bytes(pickle.dumps(model))
    loaded = new_loader(None, tmp_path).load_service_model("sts", "service-2")
    assert loaded["shapes"]["AssumeRoleRequest"] == reference["shapes"]["AssumeRoleRequest"]
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="plain data only"):
        service_models.PlainData(io.BytesIO(pickle.dumps(Runs(str(marker))))).load()
    assert not marker.exists()


def only_kept_model(cache, service: str):
    """The file a run keeps of `service`'s model, alone in `cache`."""
    new_loader(None, cache).load_service_model(service, "service-2")
    kept = [each for each in cache.glob("*.pickle") if "operations" in pickle.loads(each.read_bytes())]
    assert len(kept) == 1
    return kept[0]
