"""Step `ecr`: pure planning without AWS, then apply / drift / destroy / crash against moto, and
the image to deploy it resolves for the services step (its outputs `images`, `image_problems`)."""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.schema import ImagesSpec, RepositorySpec
from steps.ecr import (DesiredRepository, EcrFacts, EcrStep, ObservedRepository, canonical_lifecycle_policy,
                       resolve_image)
from tests import harness

STEP = EcrStep()
ACCOUNT = "123456789012"
URI = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/gamepulse"


# -- pure planning ------------------------------------------------------------------------------


def desired_for(manifest):
    return STEP.desired(manifest, harness.inputs(STEP, account_id=ACCOUNT))


def as_found(repository: DesiredRepository, **changed) -> ObservedRepository:
    """What observe reports for a repository exactly as desired."""
    arn = f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/{repository.name}"
    found = ObservedRepository(name=repository.name, arn=arn,
                               uri=URI, scan_on_push=repository.scan_on_push, tag_mutability=repository.tag_mutability,
                               encryption=repository.encryption, tags=dict(repository.tags),
                               lifecycle_policy=canonical_lifecycle_policy(json.dumps(repository.lifecycle_policy)))
    return dataclasses.replace(found, **changed)


def facts_for(desired, **changed) -> EcrFacts:
    return EcrFacts(owned={name: as_found(repo, **changed) for name, repo in desired.repositories.items()})


def with_repository(manifest, **settings):
    spec = RepositorySpec(**settings)
    return manifest.model_copy(update={"images": ImagesSpec(repositories={"gamepulse": spec})})


def test_desired_repository_follows_the_platform(manifest):
    [repository] = desired_for(manifest).repositories.values()
    assert (repository.name, repository.scan_on_push, repository.tag_mutability, repository.encryption) == (
        "gamepulse", True, "IMMUTABLE", "AES256")
    untagged, tagged = repository.lifecycle_policy["rules"]
    assert untagged["selection"] == {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
                                     "countNumber": 7}
    assert tagged["selection"] == {"tagStatus": "tagged", "tagPatternList": ["*"], "countType": "imageCountMoreThan",
                                   "countNumber": 30}
    assert untagged["action"] == tagged["action"] == {"type": "expire"}
    assert repository.tags["orchestrator:step"] == "ecr"


def test_plan_from_nothing_creates_the_repository_with_its_lifecycle_policy(manifest):
    [change] = STEP.plan(desired_for(manifest), EcrFacts(), {})
    assert (change.action, change.kind, change.name) == ("create", "repository", "gamepulse")
    assert change.calls == ("ecr:CreateRepository", "ecr:PutLifecyclePolicy")
    assert {d.field: d.new for d in change.diffs} == {"scan_on_push": True, "tag_mutability": "IMMUTABLE",
                                                      "encryption": "AES256"}


def test_no_change_when_everything_matches_even_if_the_policy_text_is_ordered_differently(manifest):
    desired = desired_for(manifest)
    policy = desired.repositories["gamepulse"].lifecycle_policy
    reordered = json.dumps({"rules": [dict(reversed(list(rule.items()))) for rule in reversed(policy["rules"])]},
                           indent=2)
    assert STEP.plan(desired, facts_for(desired, lifecycle_policy=canonical_lifecycle_policy(reordered)), {}) == []


@pytest.mark.parametrize("field, drifted, call", [
    ("scan_on_push", False, "ecr:PutImageScanningConfiguration"),
    ("tag_mutability", "MUTABLE", "ecr:PutImageTagMutability"),
])
def test_each_drifted_setting_is_put_back_alone(manifest, field, drifted, call):
    desired = desired_for(manifest)
    [change] = STEP.plan(desired, facts_for(desired, **{field: drifted}), {})
    assert (change.action, change.kind, change.calls) == ("update", "repository", (call,))
    assert [(d.field, d.old) for d in change.diffs] == [(field, drifted)]


def test_tag_drift_is_repaired_and_tags_others_added_are_kept(manifest):
    desired = desired_for(manifest)
    tags = {**desired.repositories["gamepulse"].tags, "owner": "someone", "extra": "x"}
    [change] = STEP.plan(desired, facts_for(desired, tags=tags), {})
    assert change.calls == ("ecr:TagResource",)
    assert change.tags_to_set() == {"owner": "platform-team"}
    assert [(d.field, d.old, d.new) for d in change.diffs] == [("tags", {"owner": "someone"},
                                                                 {"owner": "platform-team"})]
    assert STEP.plan(desired, facts_for(desired, tags={**desired.repositories["gamepulse"].tags, "extra": "x"}),
                     {}) == []


def test_a_missing_or_changed_lifecycle_policy_is_put_back(manifest):
    desired = desired_for(manifest)
    [missing] = STEP.plan(desired, facts_for(desired, lifecycle_policy=None), {})
    assert (missing.action, missing.kind, missing.calls) == ("create", "lifecycle_policy", ("ecr:PutLifecyclePolicy",))
    loosened = canonical_lifecycle_policy(json.dumps(desired_for(with_repository(manifest, keep_tagged=99))
                                                     .repositories["gamepulse"].lifecycle_policy))
    [changed] = STEP.plan(desired, facts_for(desired, lifecycle_policy=loosened), {})
    assert (changed.action, changed.kind) == ("update", "lifecycle_policy")
    assert changed.diffs[0].old == loosened


def test_new_encryption_replaces_the_repository_guarded_when_it_holds_images(manifest):
    desired = desired_for(with_repository(manifest, encryption="KMS"))
    [empty] = STEP.plan(desired, facts_for(desired, encryption="AES256"), {})
    assert (empty.action, empty.blocked) == ("replace", None)
    assert empty.calls == ("ecr:DeleteRepository", "ecr:CreateRepository", "ecr:PutLifecyclePolicy")
    [full] = STEP.plan(desired, facts_for(desired, encryption="AES256", holds_images=True), {})
    assert (full.action, full.blocked) == ("replace", "delete-data")
    assert "holds images" in full.note and "cannot change after creation" in full.note


def test_a_repository_left_out_of_the_manifest_is_deleted_guarded_when_it_holds_images(manifest):
    desired = desired_for(manifest)
    facts = facts_for(desired)
    facts.owned["worker"] = as_found(desired.repositories["gamepulse"], name="worker", holds_images=True)
    facts.owned["tools"] = as_found(desired.repositories["gamepulse"], name="tools")
    changes = STEP.plan(desired, facts, {})
    assert [(c.action, c.name, c.blocked) for c in changes] == [("delete", "tools", None),
                                                               ("delete", "worker", "delete-data")]


@pytest.mark.parametrize("tags, owner", [
    ({"orchestrator:app": "gamepulse", "orchestrator:env": "staging", "orchestrator:step": "ecr"},
     "environment 'staging' of 'gamepulse'"),
    ({}, "no orchestrator environment"),
])
def test_a_repository_of_our_name_owned_by_anyone_else_is_an_error(manifest, tags, owner):
    with pytest.raises(OrchestratorError, match=f"ECR repository 'gamepulse' already exists and belongs to {owner}"):
        STEP.plan(desired_for(manifest), EcrFacts(foreign={"gamepulse": tags}), {})


def test_destroy_deletes_every_owned_repository_guarding_those_with_images(manifest):
    desired = desired_for(manifest)
    changes = STEP.plan_destroy(facts_for(desired, holds_images=True))
    assert [(c.action, c.name, c.blocked) for c in changes] == [("delete", "gamepulse", "delete-data")]
    assert STEP.plan_destroy(facts_for(desired))[0].blocked is None


# -- against moto -------------------------------------------------------------------------------


@pytest.fixture
def ecr(aws):
    return aws.client("ecr")


def push(ecr, repository: str, tag: str, layer: str = "a") -> str:
    """Seed an image tag (moto accepts any schema-2 manifest); returns its digest."""
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023,
                           "digest": "sha256:" + layer * 64},
                "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 32654,
                            "digest": "sha256:" + layer * 64}]}
    image = ecr.put_image(repositoryName=repository, imageTag=tag, imageManifest=json.dumps(manifest))["image"]
    return image["imageId"]["imageDigest"]


def repository(ecr, name: str = "gamepulse") -> dict:
    return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]


def test_apply_creates_the_repository_with_settings_tags_and_lifecycle_then_changes_nothing(manifest, aws, ecr):
    applied, outputs, _ = harness.run_step(STEP, manifest, aws)
    assert [(c.action, c.name) for c in applied] == [("create", "gamepulse")]

    repo = repository(ecr)
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["encryptionConfiguration"]["encryptionType"] == "AES256"
    tags = {t["Key"]: t["Value"] for t in ecr.list_tags_for_resource(resourceArn=repo["repositoryArn"])["tags"]}
    assert tags["orchestrator:env"] == "dev" and tags["orchestrator:step"] == "ecr" and tags["project"] == "gamepulse"
    rules = json.loads(ecr.get_lifecycle_policy(repositoryName="gamepulse")["lifecyclePolicyText"])["rules"]
    assert [(r["selection"]["tagStatus"], r["selection"]["countNumber"]) for r in rules] == [("untagged", 7),
                                                                                             ("tagged", 30)]
    # The manifest's tag 1.4.1 is not pushed: no image to deploy, and why (the services step stops on it).
    assert outputs == {"repositories": {"gamepulse": repo["repositoryUri"]},
                       "repository_arns": {"gamepulse": repo["repositoryArn"]}, "images": {},
                       "image_problems": {"gamepulse": "image tag '1.4.1' does not exist in ECR repository 'gamepulse' "
                                                       "(its tags: none); push it first or name an existing tag"}}
    assert harness.mutations(aws) == ["ecr:CreateRepository", "ecr:PutLifecyclePolicy"]

    before = len(aws.ledger.calls)
    again, outputs_again, _ = harness.run_step(STEP, manifest, aws)
    assert again == [] and len(harness.mutations(aws)) == 2 and outputs_again == outputs
    assert sorted(c.operation for c in harness.calls_since(aws, before, STEP.name)) == [
        "DescribeImages", "DescribeRepositories", "GetLifecyclePolicy", "GetResources",  # others of ours, by tag
        "ListImages"]  # the tags it holds, for the message: 1.4.1 is not among them; images are counted
    # only to delete, and its tags came with the tagging API's answer


def test_the_image_to_deploy_is_the_manifests_tag_by_its_digest(manifest, aws, ecr):
    harness.run_step(STEP, manifest, aws)
    digest = push(ecr, "gamepulse", "1.4.1")
    push(ecr, "gamepulse", "1.4.2", layer="b")
    before = len(aws.ledger.calls)
    applied, outputs, _ = harness.run_step(STEP, manifest, aws)
    assert applied == []
    assert (outputs["images"], outputs["image_problems"]) == ({"gamepulse": f"{URI}@{digest}"}, {})
    reads = [c.operation for c in harness.calls_since(aws, before, STEP.name)]
    assert reads.count("DescribeImages") == 1 and "ListImages" not in reads


def test_a_repository_that_holds_the_tag_once_made_gives_its_image_in_the_same_run(manifest, aws, monkeypatch):
    """A registry that fills new repositories (here the sandbox's seeded tags) holds the image
    the moment the repository exists: the run that made it deploys it."""
    monkeypatch.setenv("ORCHESTRATOR_SANDBOX_IMAGE_TAGS", "1.4.1")
    applied, outputs, _ = harness.run_step(STEP, manifest, aws)
    assert [(c.action, c.name) for c in applied] == [("create", "gamepulse")]
    [image] = aws.client("ecr").describe_images(repositoryName="gamepulse")["imageDetails"]
    assert (outputs["images"], outputs["image_problems"]) == ({"gamepulse": f"{URI}@{image['imageDigest']}"}, {})


def test_destroy_resolves_no_image(manifest, aws):
    harness.run_step(STEP, manifest, aws)
    before = len(aws.ledger.calls)
    applied, _, _ = harness.run_step(STEP, manifest, aws, destroy=True)
    assert [(c.action, c.name) for c in applied] == [("delete", "gamepulse")]
    assert "DescribeImages" not in [c.operation for c in harness.calls_since(aws, before, STEP.name)]


def test_drift_is_shown_by_plan_then_repaired(manifest, aws, ecr):
    harness.run_step(STEP, manifest, aws)
    ecr.delete_lifecycle_policy(repositoryName="gamepulse")
    ecr.put_image_tag_mutability(repositoryName="gamepulse", imageTagMutability="MUTABLE")
    ecr.put_image_scanning_configuration(repositoryName="gamepulse", imageScanningConfiguration={"scanOnPush": False})
    writes = len(harness.mutations(aws))

    plan = harness.plan_step(STEP, manifest, aws)
    assert len(harness.mutations(aws)) == writes
    assert [(c.action, c.kind) for c in plan] == [("update", "repository"), ("create", "lifecycle_policy")]
    assert {d.field for d in plan[0].diffs} == {"scan_on_push", "tag_mutability"}

    harness.run_step(STEP, manifest, aws)
    repo = repository(ecr)
    assert repo["imageTagMutability"] == "IMMUTABLE" and repo["imageScanningConfiguration"] == {"scanOnPush": True}
    assert "expire untagged" in ecr.get_lifecycle_policy(repositoryName="gamepulse")["lifecyclePolicyText"]
    assert harness.plan_step(STEP, manifest, aws) == []


def test_tags_others_added_survive_an_apply_and_make_no_plan_change(manifest, aws, ecr):
    harness.run_step(STEP, manifest, aws)
    arn = repository(ecr)["repositoryArn"]
    theirs = {"Key": "cost-allocation", "Value": "team-42"}
    ecr.tag_resource(resourceArn=arn, tags=[theirs])
    assert harness.plan_step(STEP, manifest, aws) == []

    ecr.untag_resource(resourceArn=arn, tagKeys=["project"])  # one of ours: put back, theirs stays
    [change] = harness.plan_step(STEP, manifest, aws)
    assert [(d.field, d.old, d.new) for d in change.diffs] == [("tags", {"project": None}, {"project": "gamepulse"})]
    before = len(harness.mutations(aws))
    harness.run_step(STEP, manifest, aws)
    assert harness.mutations(aws)[before:] == ["ecr:TagResource"]
    tags = ecr.list_tags_for_resource(resourceArn=arn)["tags"]
    assert theirs in tags and {"Key": "project", "Value": "gamepulse"} in tags
    assert harness.plan_step(STEP, manifest, aws) == []


def test_a_repository_of_our_name_from_another_environment_is_refused_untouched(manifest, aws, ecr):
    staging = {"orchestrator:app": "gamepulse", "orchestrator:env": "staging", "orchestrator:step": "ecr"}
    ecr.create_repository(repositoryName="gamepulse", imageTagMutability="MUTABLE",
                          tags=[{"Key": k, "Value": v} for k, v in staging.items()])
    writes = len(harness.mutations(aws))
    with pytest.raises(OrchestratorError, match="'gamepulse' already exists and belongs to environment 'staging'"):
        harness.run_step(STEP, manifest, aws)
    assert len(harness.mutations(aws)) == writes
    assert repository(ecr)["imageTagMutability"] == "MUTABLE"


def test_destroy_keeps_images_and_strangers_unless_told(manifest, aws, ecr):
    harness.run_step(STEP, manifest, aws)
    push(ecr, "gamepulse", "1.0.0")
    ecr.create_repository(repositoryName="gamepulse-legacy")  # named like ours, but not tagged as ours

    refused, _, _ = harness.run_step(STEP, manifest, aws, destroy=True)
    assert refused == []
    assert repository(ecr)["repositoryName"] == "gamepulse"

    deleted, _, _ = harness.run_step(STEP, manifest, aws, destroy=True, allow={"delete-data"})
    assert [(c.action, c.name) for c in deleted] == [("delete", "gamepulse")]
    assert [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]] == ["gamepulse-legacy"]


def test_an_empty_repository_is_destroyed_without_a_flag(manifest, aws, ecr):
    harness.run_step(STEP, manifest, aws)
    deleted, _, _ = harness.run_step(STEP, manifest, aws, destroy=True)
    assert [(c.action, c.name) for c in deleted] == [("delete", "gamepulse")]
    assert ecr.describe_repositories()["repositories"] == []


def test_a_new_encryption_replaces_the_repository_only_with_delete_data_when_it_holds_images(manifest, aws, ecr):
    harness.run_step(STEP, manifest, aws)
    push(ecr, "gamepulse", "1.0.0")
    kms = with_repository(manifest, encryption="KMS")

    assert harness.run_step(STEP, kms, aws)[0] == []
    assert repository(ecr)["encryptionConfiguration"]["encryptionType"] == "AES256"

    applied, _, _ = harness.run_step(STEP, kms, aws, allow={"delete-data"})
    assert [(c.action, c.name) for c in applied] == [("replace", "gamepulse")]
    assert repository(ecr)["encryptionConfiguration"]["encryptionType"] == "KMS"
    assert ecr.list_images(repositoryName="gamepulse")["imageIds"] == []
    assert harness.plan_step(STEP, kms, aws) == []  # lifecycle policy and tags came back with it


def test_a_run_killed_after_any_mutating_call_converges_without_duplicates(manifest, aws, ecr):
    crashing, rerun = harness.forget_crash(aws), harness.forget_crash(aws)

    def reset():
        if ecr.describe_repositories()["repositories"]:
            ecr.delete_repository(repositoryName="gamepulse", force=True)

    for n in harness.kill_points(crashing, reset=reset, run=lambda killed: harness.run_step(STEP, manifest, killed)):
        harness.run_step(STEP, manifest, rerun)
        assert [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]] == ["gamepulse"]
        assert ecr.get_lifecycle_policy(repositoryName="gamepulse")["lifecyclePolicyText"]
        writes = len(harness.mutations(rerun))
        assert harness.run_step(STEP, manifest, rerun)[0] == [] and len(harness.mutations(rerun)) == writes
    assert n == 2, "2 mutating calls on a cold apply: the repository, its lifecycle policy"


def test_resolve_image_gives_the_digest_of_a_tag(aws, ecr):
    ecr.create_repository(repositoryName="gamepulse")
    digest = push(ecr, "gamepulse", "1.4.2")
    push(ecr, "gamepulse", "1.4.3", layer="b")
    assert resolve_image(ecr, "gamepulse", URI, "1.4.2") == f"{URI}@{digest}"
    assert digest.startswith("sha256:")


def test_resolve_image_names_repository_and_tag_when_either_is_missing(aws, ecr):
    ecr.create_repository(repositoryName="gamepulse")
    with pytest.raises(OrchestratorError, match="image tag '9.9.9' does not exist in ECR repository 'gamepulse'"):
        resolve_image(ecr, "gamepulse", URI, "9.9.9")
    with pytest.raises(OrchestratorError, match="ECR repository 'nope' does not exist \\(wanted image tag '1.0.0'\\)"):
        resolve_image(ecr, "nope", URI, "1.0.0")


def test_repositories_of_others_cost_no_read_and_a_removed_one_of_ours_is_found_by_its_tags(manifest, aws, ecr):
    two = manifest.model_copy(update={"images": ImagesSpec(repositories={
        "gamepulse": RepositorySpec(), "gamepulse-tools": RepositorySpec()})})
    harness.run_step(STEP, two, aws)
    before = len(aws.ledger.calls)
    harness.run_step(STEP, two, aws)
    alone = len(aws.ledger.calls) - before
    for i in range(40):  # other environments' repositories, named like ours, and strangers
        owner = ("staging", "prod")[i % 2]
        ecr.create_repository(repositoryName=f"gamepulse-{owner}-{i}" if i % 3 else f"team/{i}/service", tags=[
            {"Key": "orchestrator:app", "Value": "gamepulse"}, {"Key": "orchestrator:env", "Value": owner},
            {"Key": "orchestrator:step", "Value": "ecr"}])

    before = len(aws.ledger.calls)
    assert harness.run_step(STEP, two, aws)[0] == []
    assert len(aws.ledger.calls) - before == alone

    applied = harness.run_step(STEP, manifest, aws)[0]  # gamepulse-tools left the manifest
    assert [(c.action, c.name) for c in applied] == [("delete", "gamepulse-tools")]
    assert len(ecr.describe_repositories()["repositories"]) == 41


def test_a_repository_the_tagging_api_does_not_list_yet_is_known_ours_by_its_own_tags(manifest, aws, ecr):
    """The tagging API lags behind by seconds to minutes: a re-apply right after the create finds
    the repository by name, reads its tags, and changes nothing."""
    harness.run_step(STEP, manifest, aws)
    answered = SimpleNamespace(status_code=200, headers={})
    aws.register("before-call.resource-groups-tagging-api.GetResources",
                 lambda **kwargs: (answered, {"ResourceTagMappingList": []}))  # not listed yet
    before = len(aws.ledger.calls)
    again, _, _ = harness.run_step(STEP, manifest, aws)
    assert again == []
    assert "ListTagsForResource" in [c.operation for c in harness.calls_since(aws, before, STEP.name)]


def test_a_destroy_reads_each_repositorys_own_tags_not_the_tagging_apis_late_ones(manifest, aws, ecr):
    """The tagging API still lists the repository with our tags, but they were taken off since
    (it lags by minutes): it is no longer ours, and a destroy leaves it."""
    harness.run_step(STEP, manifest, aws)
    arn = repository(ecr)["repositoryArn"]
    ours = ecr.list_tags_for_resource(resourceArn=arn)["tags"]
    answered = SimpleNamespace(status_code=200, headers={})
    aws.register("before-call.resource-groups-tagging-api.GetResources",
                 lambda **kwargs: (answered, {"ResourceTagMappingList": [{"ResourceARN": arn, "Tags": ours}]}))
    ecr.untag_resource(resourceArn=arn, tagKeys=["orchestrator:env"])
    deleted, _, _ = harness.run_step(STEP, manifest, aws, destroy=True)
    assert deleted == [] and repository(ecr)["repositoryArn"] == arn


def test_a_re_encryption_reads_the_repositorys_own_tags_not_the_tagging_apis_late_ones(manifest, aws, ecr):
    """A new encryption replaces the repository (a delete): the tagging API still lists it with
    our tags, taken off since, so it is no longer ours and stays, whatever the flags."""
    harness.run_step(STEP, manifest, aws)
    arn = repository(ecr)["repositoryArn"]
    ours = ecr.list_tags_for_resource(resourceArn=arn)["tags"]
    answered = SimpleNamespace(status_code=200, headers={})
    aws.register("before-call.resource-groups-tagging-api.GetResources",
                 lambda **kwargs: (answered, {"ResourceTagMappingList": [{"ResourceARN": arn, "Tags": ours}]}))
    ecr.untag_resource(resourceArn=arn, tagKeys=["orchestrator:env"])
    kms = with_repository(manifest, encryption="KMS")
    with pytest.raises(OrchestratorError, match="gamepulse"):
        harness.plan_step(STEP, kms, aws)
    assert repository(ecr)["repositoryArn"] == arn
    assert repository(ecr)["encryptionConfiguration"]["encryptionType"] == "AES256"
