"""Step `storage`: pure planning without AWS, then apply / drift / destroy / crash against moto."""
from __future__ import annotations

import copy
import dataclasses
import json
from types import SimpleNamespace

import boto3
import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.schema import BucketSpec, StorageSpec
from steps.storage import ObservedBucket, StorageFacts, StorageStep
from tests import harness

ACCOUNT = "123456789012"
LOKI = f"gamepulse-dev-loki-chunks-{ACCOUNT}"
CONFIG = f"gamepulse-dev-config-{ACCOUNT}"
STEP = StorageStep()


# -- pure planning ------------------------------------------------------------------------------


def desired_for(manifest, region="us-east-1"):
    return STEP.desired(manifest, harness.inputs(STEP, account_id=ACCOUNT, region=region))


def as_found(bucket, **changed) -> ObservedBucket:
    """What observe would report for a bucket configured exactly as desired."""
    found = ObservedBucket(name=bucket.name, owned=True, tags=dict(bucket.tags),
                           public_access_block=dict(bucket.public_access_block), ownership=bucket.ownership,
                           encryption=dict(bucket.encryption), versioning=bucket.versioning,
                           lifecycle=copy.deepcopy(bucket.lifecycle), policy=copy.deepcopy(bucket.policy))
    return dataclasses.replace(found, **changed)


def facts_for(desired, *found: ObservedBucket) -> StorageFacts:
    return StorageFacts(prefix=desired.prefix, account_id=desired.account_id, buckets={b.name: b for b in found})


def test_desired_names_buckets_per_account_with_log_retention_on_the_log_bucket(manifest):
    desired = desired_for(manifest)
    loki, config = {b.key: b for b in desired.buckets}["loki-chunks"], {b.key: b for b in desired.buckets}["config"]
    assert (loki.name, config.name) == (LOKI, CONFIG)
    assert loki.arn == f"arn:aws:s3:::{LOKI}"
    assert loki.lifecycle[0]["Expiration"] == {"Days": manifest.logging.retention_days}
    assert "Expiration" not in config.lifecycle[0]
    assert config.lifecycle[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert config.lifecycle[0]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert loki.tags["orchestrator:step"] == "storage" and loki.tags["project"] == "gamepulse"
    assert loki.policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert all(loki.public_access_block.values()) and loki.versioning == "Enabled"


def test_explicit_expiry_wins_over_log_retention(manifest):
    buckets = {"loki-chunks": BucketSpec(purpose="logs", holds_logs=True, expire_days=7)}
    desired = desired_for(manifest.model_copy(update={"storage": StorageSpec(buckets=buckets)}))
    assert desired.buckets[0].lifecycle[0]["Expiration"] == {"Days": 7}


def test_plan_from_nothing_creates_each_bucket_with_its_settings(manifest):
    desired = desired_for(manifest)
    changes = STEP.plan(desired, facts_for(desired), {})
    assert [(c.action, c.kind, c.name) for c in changes] == [("create", "bucket", "config"),
                                                             ("create", "bucket", "loki-chunks")]
    assert changes[0].calls == ("s3:CreateBucket", "s3:PutPublicAccessBlock", "s3:PutBucketEncryption",
                                "s3:PutBucketVersioning", "s3:PutBucketLifecycleConfiguration", "s3:PutBucketPolicy")
    assert {d.field for d in changes[0].diffs} >= {"tags", "versioning", "lifecycle", "policy", "encryption"}


def test_unversioned_bucket_is_created_without_a_versioning_call(manifest):
    buckets = {"scratch": BucketSpec(purpose="scratch", versioning=False)}
    desired = desired_for(manifest.model_copy(update={"storage": StorageSpec(buckets=buckets)}))
    (change,) = STEP.plan(desired, facts_for(desired), {})
    assert "s3:PutBucketVersioning" not in change.calls


def test_no_change_when_everything_matches(manifest):
    desired = desired_for(manifest)
    assert STEP.plan(desired, facts_for(desired, *(as_found(b) for b in desired.buckets)), {}) == []


@pytest.mark.parametrize("setting, drifted, call", [
    ("versioning", "Suspended", "s3:PutBucketVersioning"),
    ("lifecycle", [], "s3:PutBucketLifecycleConfiguration"),
    ("public_access_block", {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": False,
                             "RestrictPublicBuckets": False}, "s3:PutPublicAccessBlock"),
    ("encryption", None, "s3:PutBucketEncryption"),
    ("ownership", "ObjectWriter", "s3:PutBucketOwnershipControls"),
    ("policy", None, "s3:PutBucketPolicy"),
])
def test_each_drifted_setting_is_put_back_alone(manifest, setting, drifted, call):
    desired = desired_for(manifest)
    loki = next(b for b in desired.buckets if b.key == "loki-chunks")
    found = [as_found(b) for b in desired.buckets if b is not loki] + [as_found(loki, **{setting: drifted})]
    (change,) = STEP.plan(desired, facts_for(desired, *found), {})
    assert (change.action, change.name, change.calls) == ("update", "loki-chunks", (call,))
    assert [(d.field, d.old, d.new) for d in change.diffs] == [(setting, drifted, getattr(loki, setting))]


def test_a_missing_tag_of_ours_is_put_back_with_the_tags_others_added(manifest):
    desired = desired_for(manifest)
    loki = next(b for b in desired.buckets if b.key == "loki-chunks")
    theirs = {"cost-allocation": "team-42"}
    drifted = {k: v for k, v in loki.tags.items() if k != "project"} | theirs
    found = [as_found(b, tags=dict(b.tags) | theirs) for b in desired.buckets if b is not loki]
    (change,) = STEP.plan(desired, facts_for(desired, *found, as_found(loki, tags=drifted)), {})
    assert (change.action, change.name, change.calls) == ("update", "loki-chunks", ("s3:PutBucketTagging",))
    assert [(d.field, d.old, d.new) for d in change.diffs] == [("tags", {"project": None}, {"project": "gamepulse"})]
    assert change.payload.tags == loki.tags | theirs  # the whole set PutBucketTagging writes


def test_untagged_bucket_under_our_name_is_refused_with_how_to_adopt_it(manifest):
    desired = desired_for(manifest)
    found = [as_found(b, owned=False, tags={}) for b in desired.buckets]
    with pytest.raises(OrchestratorError) as caught:
        STEP.plan(desired, facts_for(desired, *found), {})
    assert f"bucket {CONFIG} exists but does not carry this environment's ownership tags" in str(caught.value)
    assert ("to adopt it deliberately, tag it orchestrator:app=gamepulse, orchestrator:env=dev, "
            "orchestrator:step=storage") in str(caught.value)


def test_bucket_removed_from_manifest_is_deleted_when_empty_and_guarded_when_not(manifest):
    desired = desired_for(manifest)
    old_empty = ObservedBucket(name=f"gamepulse-dev-old-{ACCOUNT}", owned=True, tags={})
    old_full = ObservedBucket(name=f"gamepulse-dev-full-{ACCOUNT}", owned=True, tags={}, versions=1000,
                              more_versions=True)
    changes = STEP.plan(desired, facts_for(desired, *(as_found(b) for b in desired.buckets), old_empty, old_full), {})
    full, empty = changes
    assert (empty.action, empty.name, empty.blocked, empty.calls) == ("delete", "old", None, ("s3:DeleteBucket",))
    assert (full.action, full.name, full.blocked) == ("delete", "full", "delete-data")
    assert "more than 1000 object version(s)" in full.note


def test_destroy_deletes_only_tagged_buckets(manifest):
    desired = desired_for(manifest)
    loki, config = desired.buckets[1], desired.buckets[0]
    changes = STEP.plan_destroy(facts_for(desired, as_found(loki, versions=3), as_found(config, owned=False)))
    assert [(c.name, c.blocked) for c in changes] == [("loki-chunks", "delete-data")]
    assert "holds 3 object version(s)" in changes[0].note


# -- against moto -------------------------------------------------------------------------------


@pytest.fixture
def s3(mock):
    """A client of our own, so that what the test does is not counted as the step's calls."""
    return boto3.client("s3", region_name="us-east-1")


def our_buckets(s3) -> list[str]:
    return sorted(b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith("gamepulse-dev-"))


def assert_configured(s3, name: str, expire_days: int | None) -> None:
    assert s3.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    rule = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256" and rule["BucketKeyEnabled"]
    assert all(s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"].values())
    assert s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"]["Rules"] == [
        {"ObjectOwnership": "BucketOwnerEnforced"}]
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
    assert rule.get("Expiration") == ({"Days": expire_days} if expire_days else None)
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    policy = json.loads(s3.get_bucket_policy(Bucket=name)["Policy"])
    assert policy["Statement"][0]["Effect"] == "Deny"
    tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=name)["TagSet"]}
    assert tags["orchestrator:env"] == "dev" and tags["orchestrator:step"] == "storage" and tags["owner"]


def test_apply_creates_configured_buckets_then_changes_nothing(manifest, aws, s3):
    applied, outputs, _ = harness.run_step(STEP, manifest, aws)
    assert len(applied) == 2
    assert our_buckets(s3) == [CONFIG, LOKI]
    assert_configured(s3, LOKI, expire_days=30)
    assert_configured(s3, CONFIG, expire_days=None)
    assert outputs == {"buckets": {"config": CONFIG, "loki-chunks": LOKI},
                       "bucket_arns": {"config": f"arn:aws:s3:::{CONFIG}", "loki-chunks": f"arn:aws:s3:::{LOKI}"}}

    assert len(harness.mutations(aws)) == 12  # per bucket: create (tags, ownership) and five puts

    before = len(aws.ledger.calls)
    applied, again, _ = harness.run_step(STEP, manifest, aws)
    assert applied == [] and again == outputs
    assert len(harness.mutations(aws)) == 12
    # One listing, the tags of both from one call, then six reads per bucket (objects are counted
    # only when a delete is planned).
    assert len(harness.calls_since(aws, before, STEP.name)) == 1 + 1 + 2 * 6


def test_the_tagging_query_and_the_bucket_listing_go_out_together(manifest, aws):
    """Neither needs the other's answer: one round trip, not two in a row; then every setting of
    every bucket at once. The reads are those of an unchanged step (1 + 1 + 2 * 6, as above)."""
    harness.run_step(STEP, manifest, aws)
    again = harness.forget_crash(aws)  # a fresh run: hooks of its own
    waited = harness.held_until_sent_together(again, {"GetResources", "ListBuckets"})
    assert harness.plan_step(STEP, manifest, again) == []
    assert waited == [True, True]
    assert again.ledger.count(step=STEP.name) == 1 + 1 + 2 * 6


def test_bucket_outside_us_east_1_is_created_in_its_region(manifest, mock):
    from orchestrator.aws import Aws
    manifest = manifest.model_copy(update={"region": "eu-west-1"})
    aws = Aws("eu-west-1")
    harness.run_step(STEP, manifest, aws)
    s3 = boto3.client("s3", region_name="eu-west-1")
    assert s3.get_bucket_location(Bucket=LOKI)["LocationConstraint"] == "eu-west-1"
    assert harness.run_step(STEP, manifest, aws)[0] == []


def test_drift_is_shown_by_plan_then_repaired(manifest, aws, s3):
    harness.run_step(STEP, manifest, aws)
    s3.delete_bucket_lifecycle(Bucket=LOKI)
    s3.put_bucket_versioning(Bucket=LOKI, VersioningConfiguration={"Status": "Suspended"})
    s3.put_public_access_block(Bucket=CONFIG, PublicAccessBlockConfiguration={
        "BlockPublicAcls": False, "IgnorePublicAcls": True, "BlockPublicPolicy": False, "RestrictPublicBuckets": True})
    s3.put_bucket_tagging(Bucket=CONFIG, Tagging={"TagSet": [
        tag for tag in s3.get_bucket_tagging(Bucket=CONFIG)["TagSet"] if tag["Key"] != "owner"]})

    planned = harness.plan_step(STEP, manifest, aws)
    assert {(c.name, d.field) for c in planned for d in c.diffs} == {
        ("loki-chunks", "lifecycle"), ("loki-chunks", "versioning"),
        ("config", "public_access_block"), ("config", "tags")}

    start = len(harness.mutations(aws))
    harness.run_step(STEP, manifest, aws)
    assert sorted(harness.mutations(aws)[start:]) == ["s3:PutBucketLifecycleConfiguration", "s3:PutBucketTagging",
                                                      "s3:PutBucketVersioning", "s3:PutPublicAccessBlock"]
    assert_configured(s3, LOKI, expire_days=30)
    assert_configured(s3, CONFIG, expire_days=None)
    assert harness.plan_step(STEP, manifest, aws) == []


def test_destroy_keeps_data_and_strangers_unless_told(manifest, aws, s3):
    harness.run_step(STEP, manifest, aws)
    for body in (b"one", b"two", b"three"):
        s3.put_object(Bucket=LOKI, Key="chunk", Body=body)
    s3.delete_object(Bucket=LOKI, Key="chunk")  # no current object left: versions and a marker remain
    stranger = f"gamepulse-dev-stray-{ACCOUNT}"  # looks like ours, carries no tags
    s3.create_bucket(Bucket=stranger)

    changes, _, _ = harness.run_step(STEP, manifest, aws, destroy=True)
    assert [c.name for c in changes] == ["config"]
    assert our_buckets(s3) == [LOKI, stranger]
    (kept,) = harness.plan_step(STEP, manifest.model_copy(
        update={"storage": StorageSpec(buckets={})}), aws)
    assert (kept.name, kept.blocked) == ("loki-chunks", "delete-data")
    assert "holds 4 object version(s)" in kept.note

    changes, _, _ = harness.run_step(STEP, manifest, aws, destroy=True, allow=("delete-data",))
    assert [c.name for c in changes] == ["loki-chunks"]
    assert our_buckets(s3) == [stranger]


def test_removing_a_bucket_from_the_manifest_deletes_it_when_empty(manifest, aws, s3):
    harness.run_step(STEP, manifest, aws)
    only_loki = manifest.model_copy(update={"storage": StorageSpec(
        buckets={"loki-chunks": manifest.storage.buckets["loki-chunks"]})})
    (change,) = harness.plan_step(STEP, only_loki, aws)
    assert (change.action, change.name, change.blocked) == ("delete", "config", None)
    harness.run_step(STEP, only_loki, aws)
    assert our_buckets(s3) == [LOKI]


def test_a_bucket_under_our_name_without_our_tags_is_refused_and_left_untouched(manifest, aws, s3):
    s3.create_bucket(Bucket=CONFIG)  # made by hand: no tags, no policy, no lifecycle
    s3.put_bucket_lifecycle_configuration(Bucket=CONFIG, LifecycleConfiguration={"Rules": [
        {"ID": "theirs", "Status": "Enabled", "Filter": {"Prefix": "tmp/"}, "Expiration": {"Days": 1}}]})
    with pytest.raises(OrchestratorError, match=f"bucket {CONFIG} exists but does not carry"):
        harness.plan_step(STEP, manifest, aws)
    with pytest.raises(OrchestratorError, match=f"bucket {CONFIG} exists but does not carry"):
        harness.run_step(STEP, manifest, aws)
    assert harness.mutations(aws) == []
    assert [r["ID"] for r in s3.get_bucket_lifecycle_configuration(Bucket=CONFIG)["Rules"]] == ["theirs"]
    with pytest.raises(s3.exceptions.ClientError, match="NoSuchBucketPolicy"):
        s3.get_bucket_policy(Bucket=CONFIG)
    with pytest.raises(s3.exceptions.ClientError, match="NoSuchTagSet"):
        s3.get_bucket_tagging(Bucket=CONFIG)

    # Adopted deliberately, as the error says: tagged by hand, it is then configured like ours.
    s3.put_bucket_tagging(Bucket=CONFIG, Tagging={"TagSet": [
        {"Key": "orchestrator:app", "Value": "gamepulse"}, {"Key": "orchestrator:env", "Value": "dev"},
        {"Key": "orchestrator:step", "Value": "storage"}]})
    harness.run_step(STEP, manifest, aws)
    assert_configured(s3, CONFIG, expire_days=None)


def test_a_name_taken_by_another_account_is_a_clear_error(manifest, aws):
    def taken(**kwargs):
        # Stands for AWS's answer when another account owns the name (moto holds one account).
        raise aws.client("s3").exceptions.BucketAlreadyExists(
            {"Error": {"Code": "BucketAlreadyExists", "Message": "taken"}}, "CreateBucket")

    aws.client("s3").meta.events.register("before-call.s3.CreateBucket", taken)
    with pytest.raises(OrchestratorError, match=f"bucket {CONFIG}: the name is taken by another AWS account"):
        harness.run_step(STEP, manifest, aws)


def test_a_crash_after_any_call_converges_on_rerun(manifest, s3):
    from moto.moto_api._internal.models import moto_api_backend
    from orchestrator.aws import Aws

    # One crashing and one fresh Aws for all rounds (building clients dominates the time): a
    # crash hook fires once, at its own count, and is inert afterwards.
    crashing = Aws("us-east-1")
    rerun = harness.forget_crash(crashing)
    for n in harness.kill_points(crashing, reset=moto_api_backend.reset,
                                 run=lambda aws: harness.run_step(STEP, manifest, aws)):
        harness.run_step(STEP, manifest, rerun)
        assert our_buckets(s3) == [CONFIG, LOKI], f"after a crash at call {n}"
        assert harness.plan_step(STEP, manifest, rerun) == [], f"after a crash at call {n}"
    assert n == 12, "12 mutating calls on a cold apply"


def test_after_an_apply_the_steps_facts_are_what_a_fresh_look_finds(manifest, aws, s3):
    """Handlers update the observed facts in place (the step contract): what apply leaves behind
    is what observing AWS again gives, settings and tags alike, so prune and outputs are right."""
    _, _, left = harness.run_step(STEP, manifest, aws)
    assert sorted(left.buckets) == [CONFIG, LOKI]
    s3.put_bucket_versioning(Bucket=LOKI, VersioningConfiguration={"Status": "Suspended"})  # drift: updated back
    _, _, left = harness.run_step(STEP, manifest, aws)
    _, _, fresh = harness.run_step(STEP, manifest, aws)  # nothing to change: what observe found
    assert left.buckets == fresh.buckets


def test_tags_others_added_survive_an_apply_and_make_no_plan_change(manifest, aws, s3):
    harness.run_step(STEP, manifest, aws)
    theirs = {"Key": "cost-allocation", "Value": "team-42"}
    for name in (LOKI, CONFIG):
        tag_set = s3.get_bucket_tagging(Bucket=name)["TagSet"]
        s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tag_set + [theirs]})
    assert harness.plan_step(STEP, manifest, aws) == []

    # One of ours removed by hand: put back, in a tag set that keeps theirs.
    s3.put_bucket_tagging(Bucket=LOKI, Tagging={"TagSet": [
        tag for tag in s3.get_bucket_tagging(Bucket=LOKI)["TagSet"] if tag["Key"] != "project"]})
    (change,) = harness.plan_step(STEP, manifest, aws)
    assert [(d.field, d.old, d.new) for d in change.diffs] == [("tags", {"project": None}, {"project": "gamepulse"})]
    harness.run_step(STEP, manifest, aws)
    for name in (LOKI, CONFIG):
        tags = s3.get_bucket_tagging(Bucket=name)["TagSet"]
        assert theirs in tags and {"Key": "project", "Value": "gamepulse"} in tags
    assert harness.plan_step(STEP, manifest, aws) == []


class _FailingS3:
    """An S3 client whose bucket-settings reads answer 'not configured', except the failures
    asked for: {(bucket, method): error code}."""
    ABSENT = {"get_public_access_block": "NoSuchPublicAccessBlockConfiguration",
              "get_bucket_ownership_controls": "OwnershipControlsNotFoundError",
              "get_bucket_encryption": "ServerSideEncryptionConfigurationNotFoundError",
              "get_bucket_lifecycle_configuration": "NoSuchLifecycleConfiguration",
              "get_bucket_policy": "NoSuchBucketPolicy"}

    def __init__(self, failures: dict[tuple[str, str], str]):
        self.failures = failures

    def __getattr__(self, method: str):
        from botocore.exceptions import ClientError

        def call(Bucket: str, **params):
            code = self.failures.get((Bucket, method)) or self.ABSENT.get(method)
            if code:
                raise ClientError({"Error": {"Code": code, "Message": f"{method} of {Bucket}: {code}"}}, method)
            return {}
        return call


@pytest.mark.parametrize("failures, outcome", [
    # The first bucket is found gone before its policy read fails: it is skipped, the second one's error raised.
    ({("a", "get_bucket_ownership_controls"): "NoSuchBucket", ("a", "get_bucket_policy"): "AccessDenied",
      ("b", "get_bucket_encryption"): "AccessDenied"}, "get_bucket_encryption of b: AccessDenied"),
    # The first bucket's failure wins over the second's, and over a 'gone' found later in its own reads.
    ({("a", "get_bucket_versioning"): "AccessDenied", ("a", "get_bucket_policy"): "NoSuchBucket",
      ("b", "get_public_access_block"): "SlowDown"}, "get_bucket_versioning of a: AccessDenied"),
    # Only 'gone' buckets: no error, and they are left out.
    ({("a", "get_bucket_policy"): "NoSuchBucket"}, ["b"]),
])
def test_bucket_reads_at_once_fail_as_the_bucket_by_bucket_loop_did(failures, outcome):
    from botocore.exceptions import ClientError

    from orchestrator.aws import Aws
    from steps.storage import read_buckets

    aws = Aws("us-east-1")
    buckets = [("a", {}, False), ("b", {}, False)]

    def read():
        return read_buckets(lambda fn, items: aws.each("s3", fn, items), _FailingS3(failures), buckets)

    if isinstance(outcome, str):
        with pytest.raises(ClientError, match=outcome):
            read()
    else:
        assert [found.name for found in read() if found is not None] == outcome


def test_a_bucket_left_out_of_the_manifest_is_judged_by_its_own_tags_not_the_tagging_apis_late_ones(
        manifest, aws, s3):
    """The tagging API still lists the config bucket with our tags, but they were taken off since
    (it lags by minutes): it is no longer ours, and leaving it out of the manifest deletes nothing."""
    harness.run_step(STEP, manifest, aws)
    config = next(name for name in our_buckets(s3) if name != LOKI)
    tags = s3.get_bucket_tagging(Bucket=config)["TagSet"]
    arn = f"arn:aws:s3:::{config}"
    answered = SimpleNamespace(status_code=200, headers={})
    aws.register("before-call.resource-groups-tagging-api.GetResources",
                 lambda **kwargs: (answered, {"ResourceTagMappingList": [{"ResourceARN": arn, "Tags": tags}]}))
    s3.put_bucket_tagging(Bucket=config, Tagging={"TagSet": [t for t in tags if t["Key"] != "orchestrator:env"]})
    only_loki = manifest.model_copy(update={"storage": StorageSpec(
        buckets={"loki-chunks": manifest.storage.buckets["loki-chunks"]})})
    assert harness.plan_step(STEP, only_loki, aws) == []
