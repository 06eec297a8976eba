"""Step `storage`: the S3 buckets (Loki chunks, config bundles), each private, encrypted,
versioned, reachable over TLS only, and expiring what it no longer needs.

Bucket names are global, so each is `PREFIX-NAME-ACCOUNT` (`gamepulse-dev-loki-chunks-123456789012`).

Ownership. The tags go on in the create call (`CreateBucketConfiguration.Tags`). A bucket found
under one of the manifest's names but without our tags is refused, and left untouched: DESIGN.md
changes nothing that lacks our tags (the error says how to adopt it deliberately). Buckets outside
the manifest are deleted only when they carry our tags, and `destroy` deletes only tagged buckets.
Only our tag keys are managed; as `PutBucketTagging` replaces the whole set, a tag change writes
the tags others added along with ours.

S3 has no batch describe: `observe` lists the buckets under the prefix once, takes the tags of
all of ours from one call to the tagging API (a bucket it does not return, such as one tagged a
moment ago or someone else's, and one that may be deleted, has its tags read from S3 itself), then reads the settings this
step manages from each of ours, one call per setting. A bucket holding any object version
(noncurrent versions and delete markers included) is deleted only with the `delete-data` flag.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from orchestrator import tags as tagging
from orchestrator.aws import SEVERAL_SERVICES, error_code, unless_code
from orchestrator.errors import OrchestratorError
from orchestrator.model import DELETE_DATA, Change, FieldDiff, Step, diff_fields
from orchestrator.permissions import allow
from orchestrator.retry import eventually

ABORT_MULTIPART_DAYS = 7
LIFECYCLE_RULE_ID = "orchestrator-retention"
#: How many object versions `observe` counts for a plan's note; beyond it the note says "more than".
COUNT_LIMIT = 1000

#: The settings compared with what S3 reads back (tags on our keys only), in the order `apply` puts them.
SETTINGS = ("public_access_block", "ownership", "encryption", "versioning", "lifecycle", "policy", "tags")
PUT_CALLS = {"public_access_block": "s3:PutPublicAccessBlock", "ownership": "s3:PutBucketOwnershipControls",
             "encryption": "s3:PutBucketEncryption", "versioning": "s3:PutBucketVersioning",
             "lifecycle": "s3:PutBucketLifecycleConfiguration", "policy": "s3:PutBucketPolicy",
             "tags": "s3:PutBucketTagging"}
#: Set by the create call itself, so a new bucket needs no separate put for them.
SET_AT_CREATE = ("ownership", "tags")


@dataclass(frozen=True)
class Bucket:
    key: str  # the manifest's name: loki-chunks
    name: str  # gamepulse-dev-loki-chunks-123456789012
    arn: str
    region: str
    tags: dict[str, str]
    public_access_block: dict[str, bool]
    ownership: str
    encryption: dict
    versioning: str  # Enabled | Suspended
    lifecycle: list[dict]
    policy: dict
    rendered: bool = False  # holds only what the tool renders (config bundles): no data to keep


@dataclass(frozen=True)
class StorageDesired:
    prefix: str  # gamepulse-dev
    account_id: str
    buckets: tuple[Bucket, ...]


@dataclass
class ObservedBucket:
    name: str
    owned: bool  # carries this environment's ownership tags
    tags: dict[str, str]
    public_access_block: dict | None = None
    ownership: str | None = None
    encryption: dict | None = None
    versioning: str = "Suspended"
    lifecycle: list[dict] = field(default_factory=list)
    policy: dict | str | None = None
    versions: int = 0  # object versions and delete markers, counted up to COUNT_LIMIT
    more_versions: bool = False  # more than COUNT_LIMIT


@dataclass
class StorageFacts:
    prefix: str
    account_id: str
    buckets: dict[str, ObservedBucket] = field(default_factory=dict)  # bucket name → ours
    rendered: frozenset[str] = frozenset()  # names of the buckets that hold only rendered files


# -- what a bucket should look like ---------------------------------------------------------


def lifecycle_rules(expire_days: int | None, noncurrent_days: int) -> list[dict]:
    """One rule for the whole bucket: expire objects (when asked), drop noncurrent versions,
    abort incomplete multipart uploads."""
    rule: dict = {"ID": LIFECYCLE_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": ""}}
    if expire_days is not None:
        rule["Expiration"] = {"Days": expire_days}
    rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": noncurrent_days}
    rule["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": ABORT_MULTIPART_DAYS}
    return [rule]


def tls_only_policy(arn: str) -> dict:
    return {"Version": "2012-10-17",
            "Statement": [{"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
                           "Resource": [arn, f"{arn}/*"],
                           "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}


def desired_bucket(manifest, key: str, spec, account_id: str, region: str, partition: str,
                   tags: dict[str, str]) -> Bucket:
    name = f"{manifest.prefix}-{key}-{account_id}"
    arn = f"arn:{partition}:s3:::{name}"
    expire_days = spec.expire_days
    if expire_days is None and spec.holds_logs:
        expire_days = manifest.logging.retention_days
    return Bucket(
        key=key, name=name, arn=arn, region=region, tags=tags,
        public_access_block={"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                             "RestrictPublicBuckets": True},
        ownership="BucketOwnerEnforced",
        encryption={"SSEAlgorithm": "AES256", "BucketKeyEnabled": True},
        versioning="Enabled" if spec.versioning else "Suspended",
        lifecycle=lifecycle_rules(expire_days, spec.noncurrent_expire_days),
        policy=tls_only_policy(arn), rendered=spec.rendered)


def logical_name(bucket_name: str, prefix: str, account_id: str) -> str:
    """`gamepulse-dev-loki-chunks-123456789012` → `loki-chunks`."""
    return bucket_name.removeprefix(f"{prefix}-").removesuffix(f"-{account_id}")


# -- reading a bucket -------------------------------------------------------------------------


def read_tags(s3, name: str) -> dict[str, str] | None:
    """The bucket's tags; None when the bucket is gone. Also the existence probe."""
    try:
        return without_aws_tags(tagging.tag_dict(s3.get_bucket_tagging(Bucket=name)["TagSet"]))
    except ClientError as error:
        code = error_code(error)
        if code == "NoSuchTagSet":
            return {}
        if code == "NoSuchBucket":
            return None
        if code in ("AccessDenied", "403"):
            raise OrchestratorError(f"bucket {name}: access denied reading its tags; it belongs to another account "
                                    "or this identity lacks s3:GetBucketTagging") from None
        raise


def normalized_rules(rules: list[dict]) -> list[dict]:
    """Lifecycle rules as S3 reads them back, reduced to the keys this step sets."""
    kept = ("ID", "Status", "Filter", "Expiration", "NoncurrentVersionExpiration", "AbortIncompleteMultipartUpload")
    result = []
    for rule in rules:
        rule = {key: rule[key] for key in kept if key in rule}
        if rule.get("Filter") == {}:
            rule["Filter"] = {"Prefix": ""}  # both mean the whole bucket
        result.append(rule)
    return result


def parse_policy(text: str) -> dict | str:
    try:
        return json.loads(text)
    except ValueError:
        return text  # not JSON: differs from anything we want, and shows as is in the plan


def read_buckets(each, s3, buckets: list[tuple[str, dict[str, str], bool]]) -> list[ObservedBucket | None]:
    """Our buckets (name, tags, count_versions) with their managed settings, every setting of
    every bucket read at once through `each` (`StepContext.each`); None for a bucket deleted
    since the listing. A failure surfaces as reading them one by one would have raised it: the
    first in bucket and setting order, unless its bucket was found gone by an earlier read."""
    found = [ObservedBucket(name=name, owned=True, tags=tags) for name, tags, _ in buckets]
    reads = [(bucket, reader) for bucket, (_, _, count_versions) in zip(found, buckets)
             for reader in SETTING_READS + ((_read_versions,) if count_versions else ())]
    failures = each(lambda read: _failure_of(read[1], s3, read[0]), reads)
    gone = set()
    for (bucket, _), failure in zip(reads, failures):
        if failure is None or bucket.name in gone:
            continue
        if error_code(failure) != "NoSuchBucket":
            raise failure
        gone.add(bucket.name)
    return [None if bucket.name in gone else bucket for bucket in found]


def _failure_of(reader, s3, bucket: ObservedBucket) -> Exception | None:
    try:
        reader(s3, bucket)
        return None
    except Exception as error:  # raised in bucket order by read_buckets
        return error


def _read_public_access_block(s3, bucket: ObservedBucket) -> None:
    block = unless_code({"NoSuchPublicAccessBlockConfiguration"}, s3.get_public_access_block, Bucket=bucket.name)
    bucket.public_access_block = block and block["PublicAccessBlockConfiguration"]


def _read_ownership(s3, bucket: ObservedBucket) -> None:
    controls = unless_code({"OwnershipControlsNotFoundError"}, s3.get_bucket_ownership_controls, Bucket=bucket.name)
    bucket.ownership = controls and controls["OwnershipControls"]["Rules"][0]["ObjectOwnership"]


def _read_encryption(s3, bucket: ObservedBucket) -> None:
    encryption = unless_code({"ServerSideEncryptionConfigurationNotFoundError"}, s3.get_bucket_encryption,
                             Bucket=bucket.name)
    if encryption:
        rule = encryption["ServerSideEncryptionConfiguration"]["Rules"][0]
        bucket.encryption = {"SSEAlgorithm": rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"],
                             "BucketKeyEnabled": rule.get("BucketKeyEnabled", False)}


def _read_versioning(s3, bucket: ObservedBucket) -> None:
    # A bucket that was never versioned has no Status; for this step it is the same as Suspended.
    bucket.versioning = s3.get_bucket_versioning(Bucket=bucket.name).get("Status") or "Suspended"


def _read_lifecycle(s3, bucket: ObservedBucket) -> None:
    lifecycle = unless_code({"NoSuchLifecycleConfiguration"}, s3.get_bucket_lifecycle_configuration,
                            Bucket=bucket.name)
    bucket.lifecycle = normalized_rules(lifecycle["Rules"]) if lifecycle else []


def _read_policy(s3, bucket: ObservedBucket) -> None:
    policy = unless_code({"NoSuchBucketPolicy"}, s3.get_bucket_policy, Bucket=bucket.name)
    bucket.policy = parse_policy(policy["Policy"]) if policy else None


def _read_versions(s3, bucket: ObservedBucket) -> None:
    """Only a delete needs to know whether the bucket holds data."""
    versions = s3.list_object_versions(Bucket=bucket.name, MaxKeys=COUNT_LIMIT)
    bucket.versions = len(versions.get("Versions", [])) + len(versions.get("DeleteMarkers", []))
    bucket.more_versions = bool(versions.get("IsTruncated"))


#: The managed settings' reads, in the order a bucket is read.
SETTING_READS = (_read_public_access_block, _read_ownership, _read_encryption, _read_versioning, _read_lifecycle,
                 _read_policy)


def owned_bucket_tags(tagging_api, app: str, env: str, step: str) -> dict[str, dict[str, str]]:
    """The tags of the buckets carrying this step's ownership tags, by bucket name: one call
    (a page per hundred buckets) instead of one GetBucketTagging per bucket."""
    filters = [{"Key": key, "Values": [value]}
               for key, value in ((tagging.APP, app), (tagging.ENV, env), (tagging.STEP, step))]
    pages = tagging_api.get_paginator("get_resources").paginate(TagFilters=filters, ResourceTypeFilters=["s3"])
    return {item["ResourceARN"].rpartition(":")[2]: without_aws_tags(tagging.tag_dict(item.get("Tags")))
            for page in pages for item in page["ResourceTagMappingList"]}


def without_aws_tags(tags: dict[str, str]) -> dict[str, str]:
    # aws: tags are AWS's own; nobody can put them, so they take no part in the comparison.
    return {key: value for key, value in tags.items() if not key.startswith("aws:")}


def list_bucket_names(s3, prefix: str) -> list[str]:
    names = []
    for page in s3.get_paginator("list_buckets").paginate(Prefix=prefix):
        names += [bucket["Name"] for bucket in page.get("Buckets", [])]
    return sorted(names)


# -- changing a bucket ----------------------------------------------------------------------


def put_setting(s3, bucket: Bucket, setting: str) -> None:
    """Put one managed setting. Retries NoSuchBucket: a new bucket can take a moment to be seen."""
    name = bucket.name
    calls = {
        "public_access_block": lambda: s3.put_public_access_block(
            Bucket=name, PublicAccessBlockConfiguration=bucket.public_access_block),
        "ownership": lambda: s3.put_bucket_ownership_controls(
            Bucket=name, OwnershipControls={"Rules": [{"ObjectOwnership": bucket.ownership}]}),
        "encryption": lambda: s3.put_bucket_encryption(
            Bucket=name, ServerSideEncryptionConfiguration={"Rules": [{
                "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": bucket.encryption["SSEAlgorithm"]},
                "BucketKeyEnabled": bucket.encryption["BucketKeyEnabled"]}]}),
        "versioning": lambda: s3.put_bucket_versioning(
            Bucket=name, VersioningConfiguration={"Status": bucket.versioning}),
        "lifecycle": lambda: s3.put_bucket_lifecycle_configuration(
            Bucket=name, LifecycleConfiguration={"Rules": bucket.lifecycle}),
        "policy": lambda: s3.put_bucket_policy(Bucket=name, Policy=json.dumps(bucket.policy)),
        "tags": lambda: s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tagging.tag_list(bucket.tags)}),
    }
    eventually(calls[setting], retry_on={"NoSuchBucket"})


def setting_diffs(bucket: Bucket, found: ObservedBucket) -> tuple[FieldDiff, ...]:
    """The settings that differ; tags only on our keys (tags others added are no difference)."""
    return (diff_fields(bucket, found, [setting for setting in SETTINGS if setting != "tags"])
            + tagging.tag_diffs(found.tags, bucket.tags))


def settings_to_put_at_create(bucket: Bucket) -> list[str]:
    """A new bucket is unversioned, so Suspended needs no call; ownership and tags came with it."""
    return [setting for setting in SETTINGS
            if setting not in SET_AT_CREATE and not (setting == "versioning" and bucket.versioning == "Suspended")]


def create_bucket(s3, bucket: Bucket) -> None:
    config: dict = {"Tags": tagging.tag_list(bucket.tags)}
    if bucket.region != "us-east-1":  # us-east-1 refuses a LocationConstraint naming itself
        config["LocationConstraint"] = bucket.region
    try:
        s3.create_bucket(Bucket=bucket.name, CreateBucketConfiguration=config, ObjectOwnership=bucket.ownership)
    except ClientError as error:
        code = error_code(error)
        if code == "BucketAlreadyExists":
            raise OrchestratorError(f"bucket {bucket.name}: the name is taken by another AWS account; "
                                    "bucket names are global") from None
        if code != "BucketAlreadyOwnedByYou":
            raise
        # This account's already (a crash, or a lost answer retried): carry on only with ours.
        found = read_tags(s3, bucket.name) or {}
        if any(found.get(key) != bucket.tags.get(key) for key in (tagging.APP, tagging.ENV, tagging.STEP)):
            raise tagging.not_ours("S3 bucket", bucket.name, bucket.tags) from None
    for setting in settings_to_put_at_create(bucket):
        put_setting(s3, bucket, setting)


def delete_all_versions(s3, name: str) -> None:
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
        items = [{"Key": item["Key"], "VersionId": item["VersionId"]}
                 for item in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if not items:
            continue
        result = s3.delete_objects(Bucket=name, Delete={"Objects": items, "Quiet": True})
        if result.get("Errors"):
            first = result["Errors"][0]
            raise OrchestratorError(f"bucket {name}: could not delete {len(result['Errors'])} object version(s), "
                                    f"e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}")


def delete_bucket(s3, name: str, purge: bool) -> None:
    """Delete the bucket; with `purge` (the user passed the flag) every object version first.
    Without it S3 refuses a bucket that gained objects since the plan, which is what we want."""
    if purge:
        delete_all_versions(s3, name)
    try:
        s3.delete_bucket(Bucket=name)
    except ClientError as error:
        code = error_code(error)
        if code == "NoSuchBucket":
            return
        if code == "BucketNotEmpty":
            raise OrchestratorError(f"bucket {name}: it now holds objects, so it was not deleted; "
                                    "run the plan again to see them") from None
        raise


# -- the step ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageOutputs:
    buckets: dict[str, str]  # bucket name by the manifest's name
    bucket_arns: dict[str, str]


class StorageStep(Step):
    name = "storage"
    depends_on = ()
    Outputs = StorageOutputs
    description = "S3 buckets: Loki chunks and config bundles (encrypted, versioned, private, TLS only)"

    def permissions(self, manifest, scope) -> list[dict]:
        """The deploy role's statements for this step: the environment's buckets only."""
        buckets = f"arn:{scope.partition}:s3:::{manifest.prefix}-*-{scope.account_id}"  # no region, no account
        return [
            # CreateBucket with tags (CreateBucketConfiguration.Tags) also needs s3:TagResource.
            allow("S3Buckets", [f"s3:{action}" for action in (
                "CreateBucket", "TagResource", "DeleteBucket", "ListBucket", "ListBucketVersions", "GetBucketTagging",
                "PutBucketTagging", "GetBucketVersioning", "PutBucketVersioning", "GetEncryptionConfiguration",
                "PutEncryptionConfiguration", "GetLifecycleConfiguration", "PutLifecycleConfiguration",
                "GetBucketOwnershipControls", "PutBucketOwnershipControls", "GetBucketPolicy", "PutBucketPolicy",
                "GetBucketPublicAccessBlock", "PutBucketPublicAccessBlock")], buckets),
            # Emptying a bucket before its delete (only with --delete-data).
            allow("S3EmptyBuckets", ["s3:DeleteObject", "s3:DeleteObjectVersion"], f"{buckets}/*"),
            # ListBuckets supports no resource-level permissions (it answers bucket names).
            allow("S3ListBucketNames", ["s3:ListAllMyBuckets"], "*")]

    # -- desired -----------------------------------------------------------------------------

    def desired(self, manifest, inputs) -> StorageDesired:
        tags = tagging.ownership_tags(manifest.app, manifest.environment, self.name, manifest.tags)
        buckets = tuple(desired_bucket(manifest, key, spec, inputs.account_id, inputs.region, inputs.partition, tags)
                        for key, spec in sorted(manifest.storage.buckets.items()))
        return StorageDesired(prefix=manifest.prefix, account_id=inputs.account_id, buckets=buckets)

    # -- observe -----------------------------------------------------------------------------

    def observe(self, ctx, desired: StorageDesired) -> StorageFacts:
        """The buckets named under our prefix, their tags from one tagging-API query (by name
        where it does not show a bucket: untagged, or not indexed yet) and, for ours, their
        settings. Reads that need no answer of another go out together (`ctx.each`): the query
        and the listing; the tags read by name; every setting of every bucket."""
        s3 = ctx.client("s3")
        facts = StorageFacts(prefix=desired.prefix, account_id=desired.account_id,
                             rendered=frozenset(bucket.name for bucket in desired.buckets if bucket.rendered))
        wanted = {bucket.name for bucket in desired.buckets}
        owned_tags, listed = ctx.each(SEVERAL_SERVICES, lambda read: read(), [
            lambda: owned_bucket_tags(ctx.client("resourcegroupstaggingapi"), ctx.app, ctx.env, self.name),
            lambda: list_bucket_names(s3, f"{desired.prefix}-")])
        names = [name for name in listed if name in wanted or name.endswith(f"-{desired.account_id}")]
        unshown = [name for name in names if name not in owned_tags or not ctx.trusts_listed_tags(name in wanted)]
        tags_of = {**owned_tags, **dict(zip(unshown, ctx.each("s3", lambda name: read_tags(s3, name), unshown)))}
        ours = []
        for name in names:
            tags = tags_of[name]
            if tags is None:
                continue  # deleted since the listing
            if not ctx.owns(tags):
                if name in wanted:  # refused by plan: nothing more to read
                    facts.buckets[name] = ObservedBucket(name=name, owned=False, tags=tags)
                continue
            ours.append((name, tags, ctx.destroying or name not in wanted))
        for found in read_buckets(lambda read, items: ctx.each("s3", read, items), s3, ours):
            if found is not None:
                facts.buckets[found.name] = found
        facts.buckets = dict(sorted(facts.buckets.items()))  # in the listing's order, as plan shows them
        return facts

    # -- plan --------------------------------------------------------------------------------

    def plan(self, desired: StorageDesired, observed: StorageFacts, recorded: dict[str, dict]) -> list[Change]:
        changes = []
        for bucket in desired.buckets:
            found = observed.buckets.get(bucket.name)
            if found is None:
                changes.append(self._create(bucket))
                continue
            if not found.owned:
                raise tagging.not_ours("bucket", bucket.name, owner_tags=bucket.tags)
            diffs = setting_diffs(bucket, found)
            if diffs:
                changes.append(self._update(bucket, found, diffs))
        wanted = {bucket.name for bucket in desired.buckets}
        removed = StorageFacts(observed.prefix, observed.account_id,
                               {name: found for name, found in observed.buckets.items() if name not in wanted})
        return changes + self.plan_destroy(removed)

    # -- apply -------------------------------------------------------------------------------

    def _create_bucket(self, ctx, change: Change, observed: StorageFacts) -> None:
        bucket: Bucket = change.payload
        create_bucket(ctx.client("s3"), bucket)
        observed.buckets[bucket.name] = ObservedBucket(
            name=bucket.name, owned=True, tags=dict(bucket.tags),
            **{setting: getattr(bucket, setting) for setting in SETTINGS if setting != "tags"})

    def _update_bucket(self, ctx, change: Change, observed: StorageFacts) -> None:
        bucket: Bucket = change.payload
        s3 = ctx.client("s3")
        found = observed.buckets[bucket.name]
        for diff in change.diffs:
            put_setting(s3, bucket, diff.field)
            if diff.field == "tags":
                found.tags.update(diff.new)
            else:
                setattr(found, diff.field, diff.new)

    def _delete_bucket(self, ctx, change: Change, observed: StorageFacts) -> None:
        found: ObservedBucket = change.payload
        delete_bucket(ctx.client("s3"), found.name, purge=bool(found.versions))
        observed.buckets.pop(found.name, None)

    handlers = {
        ("create", "bucket"): _create_bucket,
        ("update", "bucket"): _update_bucket,
        ("delete", "bucket"): _delete_bucket,
    }

    # -- outputs and destroy -----------------------------------------------------------------

    def outputs(self, desired: StorageDesired, observed: StorageFacts) -> StorageOutputs:
        return StorageOutputs(buckets={bucket.key: bucket.name for bucket in desired.buckets},
                              bucket_arns={bucket.key: bucket.arn for bucket in desired.buckets})

    def plan_destroy(self, observed: StorageFacts) -> list[Change]:
        """Deletes of the tagged buckets; one holding any object version waits for `delete-data`."""
        return [self._delete(found, observed) for _, found in sorted(observed.buckets.items()) if found.owned]

    # -- changes ------------------------------------------------------------------------------

    @staticmethod
    def _create(bucket: Bucket) -> Change:
        diffs = tuple(FieldDiff(setting, None, getattr(bucket, setting)) for setting in SETTINGS)
        calls = ("s3:CreateBucket",) + tuple(PUT_CALLS[s] for s in settings_to_put_at_create(bucket))
        return Change("create", "bucket", bucket.key, diffs=diffs, calls=calls, payload=bucket,
                      note=f"bucket {bucket.name}")

    @staticmethod
    def _update(bucket: Bucket, found: ObservedBucket, diffs: tuple[FieldDiff, ...]) -> Change:
        # PutBucketTagging replaces the whole set: what it writes keeps the tags others added.
        payload = dataclasses.replace(bucket, tags={**found.tags, **bucket.tags})
        return Change("update", "bucket", bucket.key, diffs=diffs,
                      calls=tuple(PUT_CALLS[diff.field] for diff in diffs), payload=payload,
                      note=f"bucket {bucket.name}")

    @staticmethod
    def _delete(found: ObservedBucket, facts: StorageFacts) -> Change:
        key = logical_name(found.name, facts.prefix, facts.account_id)
        if not found.versions:
            return Change("delete", "bucket", key, calls=("s3:DeleteBucket",), payload=found,
                          note=f"bucket {found.name} is empty")
        count = f"more than {found.versions}" if found.more_versions else str(found.versions)
        calls = ("s3:ListObjectVersions", "s3:DeleteObjects", "s3:DeleteBucket")
        if found.name in facts.rendered:
            return Change("delete", "bucket", key, calls=calls, payload=found,
                          note=f"bucket {found.name} holds {count} object version(s) of rendered config bundles, "
                               "which every apply uploads again: emptied and deleted")
        return Change("delete", "bucket", key, calls=calls,
                      payload=found, blocked=DELETE_DATA,
                      note=f"bucket {found.name} holds {count} object version(s); deleting it deletes them "
                           "for good (pass --delete-data to allow)")


STEP = StorageStep
