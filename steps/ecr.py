"""Step `ecr`: the platform's image repositories (scan on push, immutable tags, encryption,
lifecycle policy), and the image each deploys: the manifest's tag, resolved to its digest
(`resolve_image`) and given to dependants as the output `images`.

Repository names are the manifest's keys (`gamepulse`), so they are shared by every
environment deployed to one account and region: a repository of that name owned by anyone
else is an error, never adopted. Only our tag keys are managed: tags others added stay.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from orchestrator import tags as tagging
from orchestrator.aws import error_code, unless_code
from orchestrator.errors import OrchestratorError
from orchestrator.model import DELETE_DATA, Change, FieldDiff, Step, Unknown
from orchestrator.permissions import FIND_BY_TAG, allow

#: What ECR answers for a repository that is gone already: a delete counts as done.
GONE = frozenset({"RepositoryNotFoundException"})


@dataclass(frozen=True)
class DesiredRepository:
    key: str  # the manifest's name, which outputs and the services step use
    name: str
    scan_on_push: bool
    tag_mutability: str
    encryption: str
    lifecycle_policy: dict
    tags: dict[str, str]
    #: The image tag to deploy (`images.repositories.KEY.tag`), resolved to its digest; None: none.
    image_tag: str | None = None


@dataclass(frozen=True)
class EcrDesired:
    app: str
    env: str
    repositories: dict[str, DesiredRepository]


@dataclass
class ObservedRepository:
    name: str
    arn: str
    uri: str
    scan_on_push: bool
    tag_mutability: str
    encryption: str
    tags: dict[str, str]
    lifecycle_policy: dict | None = None  # canonical form; None when the repository has none
    holds_images: bool = False


@dataclass
class EcrFacts:
    owned: dict[str, ObservedRepository] = field(default_factory=dict)
    foreign: dict[str, dict[str, str]] = field(default_factory=dict)  # desired name → its owner's tags
    images: dict[str, str] = field(default_factory=dict)  # repository name → URI@digest of its image_tag
    #: Repository name → why its image_tag cannot be deployed (not pushed).
    missing_images: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RepositoryWork:
    repository: DesiredRepository
    arn: str = ""
    scan_on_push: bool = False
    tag_mutability: bool = False
    force: bool = False  # replace even though it holds images (only reachable with --delete-data)


@dataclass(frozen=True)
class DeleteWork:
    force: bool  # delete even though it holds images (only reachable with --delete-data)


def lifecycle_policy(expire_untagged_days: int, keep_tagged: int) -> dict:
    """Expire untagged images after N days; keep only the newest M tagged ones."""
    return {"rules": [
        {"rulePriority": 1, "description": f"expire untagged images after {expire_untagged_days} days",
         "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
                       "countNumber": expire_untagged_days},
         "action": {"type": "expire"}},
        {"rulePriority": 2, "description": f"keep the last {keep_tagged} tagged images",
         # tagStatus "tagged" needs a tagPatternList (or tagPrefixList); "*" selects every tag.
         "selection": {"tagStatus": "tagged", "tagPatternList": ["*"], "countType": "imageCountMoreThan",
                       "countNumber": keep_tagged},
         "action": {"type": "expire"}},
    ]}


def canonical_lifecycle_policy(policy: dict | str) -> dict:
    """A lifecycle policy in a form two equal policies share: parsed, rules in priority order."""
    document = json.loads(policy) if isinstance(policy, str) else policy
    rules = []
    for rule in document.get("rules", []):
        selection = {key: sorted(value) if isinstance(value, list) else value
                     for key, value in rule.get("selection", {}).items()}
        rules.append({**rule, "selection": selection})
    return {**document, "rules": sorted(rules, key=lambda rule: rule.get("rulePriority", 0))}


def resolve_image(client, repository_name: str, uri: str, tag: str) -> str:
    """`URI@sha256:…` of the image `tag` in `repository_name` (whose URI observe already read),
    for deploying by digest.

    Raises OrchestratorError naming repository and tag when either does not exist.
    """
    try:
        image = client.describe_images(repositoryName=repository_name, imageIds=[{"imageTag": tag}])["imageDetails"][0]
    except ClientError as err:
        if error_code(err) == "ImageNotFoundException":
            raise OrchestratorError(f"image tag {tag!r} does not exist in ECR repository {repository_name!r} "
                                    f"(its tags: {', '.join(_tags(client, repository_name)) or 'none'}); "
                                    "push it first or name an existing tag") from None
        if error_code(err) == "RepositoryNotFoundException":
            raise OrchestratorError(f"ECR repository {repository_name!r} does not exist (wanted image tag {tag!r}); "
                                    "apply the ecr step and push the image first") from None
        raise
    return f"{uri}@{image['imageDigest']}"


def _tags(client, repository_name: str) -> list[str]:
    """The tags a repository holds, newest version first where they look like versions."""
    pages = client.get_paginator("list_images").paginate(repositoryName=repository_name,
                                                         filter={"tagStatus": "TAGGED"})
    tags = {image["imageTag"] for page in pages for image in page["imageIds"] if "imageTag" in image}
    return sorted(tags, key=_version_key, reverse=True)


def _version_key(tag: str) -> tuple:
    return tuple(int(part) if part.isdigit() else -1 for part in tag.lstrip("v").replace("-", ".").split("."))


@dataclass(frozen=True)
class EcrOutputs:
    repositories: dict[str, str]  # repository URI by the manifest's name
    repository_arns: dict[str, str]
    #: The image to deploy by the manifest's name, `URI@sha256:…` (its tag resolved to the digest).
    images: dict[str, str]
    #: Why the image of a manifest's name cannot be deployed (its tag is not in the repository):
    #: the services step stops on it before any change, where it deploys that image.
    image_problems: dict[str, str]


class EcrStep(Step):
    name = "ecr"
    depends_on = ()
    Outputs = EcrOutputs
    description = "ECR repositories: scan on push, immutable tags, encryption, lifecycle policy"

    def permissions(self, manifest, scope) -> list[dict]:
        """The deploy role's statements for this step: the manifest's repositories only (their
        names are not per environment, so no wider pattern would be ours alone)."""
        names = sorted(spec.name or key for key, spec in manifest.images.repositories.items())
        return [allow("EcrRepositories", ["ecr:DescribeRepositories", "ecr:ListTagsForResource",
                                          "ecr:GetLifecyclePolicy", "ecr:ListImages", "ecr:DescribeImages",
                                          "ecr:CreateRepository", "ecr:DeleteRepository", "ecr:TagResource",
                                          "ecr:PutImageScanningConfiguration", "ecr:PutImageTagMutability",
                                          "ecr:PutLifecyclePolicy"],
                      [scope.arn("ecr", f"repository/{name}") for name in names]),
                FIND_BY_TAG]

    # -- desired ---------------------------------------------------------------------------

    def desired(self, manifest, inputs) -> EcrDesired:
        tags = tagging.ownership_tags(manifest.app, manifest.environment, self.name, manifest.tags)
        repositories = {
            spec.name or key: DesiredRepository(
                key=key, name=spec.name or key, scan_on_push=spec.scan_on_push, tag_mutability=spec.tag_mutability,
                encryption=spec.encryption, lifecycle_policy=lifecycle_policy(spec.expire_untagged_days, spec.keep_tagged),
                tags=tags, image_tag=spec.tag)
            for key, spec in sorted(manifest.images.repositories.items())}
        return EcrDesired(app=manifest.app, env=manifest.environment, repositories=repositories)

    # -- observe ---------------------------------------------------------------------------

    def observe(self, ctx, desired: EcrDesired) -> EcrFacts:
        """The wanted repositories by name, and any other of ours (one removed from the manifest)
        by one tagging-API query; never a listing of the account's repositories. ECR describes
        carry no tags: a wanted repository the query lists is ours by the tags it lists it with
        (as storage takes a bucket's). The query lags behind by seconds to minutes, so any other
        found (just created, or not ours), and any a destroy, the manifest's removal or a
        re-encryption may delete, has its own tags read: a delete never rests on tags that may since have changed.
        Then each one's lifecycle policy and, before a delete, whether it holds images."""
        client = ctx.client("ecr")
        facts = EcrFacts()
        tagged = self._tagged(ctx)
        for item in _repositories_named(client, sorted(set(desired.repositories) | set(tagged))):
            name = item["repositoryName"]
            wanted = desired.repositories.get(name)
            kept = wanted is not None and wanted.encryption == _encryption_of(item)  # not re-encrypted
            tags = tagged.get(name) if ctx.trusts_listed_tags(kept) else None
            if tags is None:
                tags = tagging.tag_dict(client.list_tags_for_resource(resourceArn=item["repositoryArn"]).get("tags"))
            if ctx.owns(tags):
                # Whether it holds images matters only to a delete: destroy, removal, re-encryption.
                may_delete = ctx.destroying or not kept
                facts.owned[name] = self._observed(client, item, tags, wanted=wanted is not None,
                                                   count_images=may_delete)
            elif name in desired.repositories:
                facts.foreign[name] = tags
        if not ctx.destroying:
            for name in sorted(set(facts.owned) & set(desired.repositories)):
                _resolve_into(facts, client, desired.repositories[name])
        return facts

    def _tagged(self, ctx) -> dict[str, dict[str, str]]:
        """Our repositories the tagging API lists: name → tags."""
        pages = ctx.client("resourcegroupstaggingapi").get_paginator("get_resources").paginate(
            TagFilters=tagging.owner_tag_filters(ctx.app, ctx.env, self.name), ResourceTypeFilters=["ecr:repository"])
        return {item["ResourceARN"].split(":repository/", 1)[-1]: tagging.tag_dict(item.get("Tags"))
                for page in pages for item in page["ResourceTagMappingList"]}

    @staticmethod
    def _observed(client, item: dict, tags: dict[str, str], *, wanted: bool, count_images: bool) -> ObservedRepository:
        name = item["repositoryName"]
        images = client.list_images(repositoryName=name, maxResults=1)["imageIds"] if count_images else []
        return ObservedRepository(
            name=name, arn=item["repositoryArn"], uri=item["repositoryUri"],
            scan_on_push=item.get("imageScanningConfiguration", {}).get("scanOnPush", False),
            tag_mutability=item.get("imageTagMutability", "MUTABLE"),
            encryption=_encryption_of(item), tags=tags,
            lifecycle_policy=_lifecycle_policy_of(client, name) if wanted else None, holds_images=bool(images))

    # -- plan ------------------------------------------------------------------------------

    def plan(self, desired: EcrDesired, observed: EcrFacts, recorded: dict[str, dict]) -> list[Change]:
        changes: list[Change] = []
        for name, repository in desired.repositories.items():
            if name in observed.foreign:
                raise OrchestratorError(_foreign_message(name, observed.foreign[name], desired))
            current = observed.owned.get(name)
            if current is None:
                changes.append(_create(repository))
            elif current.encryption != repository.encryption:
                changes.append(_replace(repository, current))
            else:
                changes += _updates(repository, current)
        for name, current in sorted(observed.owned.items()):
            if name not in desired.repositories:
                changes.append(_delete(current, "no longer in the manifest"))
        return changes

    # -- apply -----------------------------------------------------------------------------

    def _create_repository(self, ctx, change: Change, observed: EcrFacts) -> None:
        repository = change.payload.repository
        client = ctx.client("ecr")
        observed.owned[repository.name] = _apply_create(client, repository)
        _resolve_into(observed, client, repository)

    def _replace_repository(self, ctx, change: Change, observed: EcrFacts) -> None:
        """The encryption of a repository is fixed at creation: delete, then create."""
        work: RepositoryWork = change.payload
        client = ctx.client("ecr")
        unless_code(GONE, client.delete_repository, repositoryName=work.repository.name, force=work.force)
        observed.owned[work.repository.name] = _apply_create(client, work.repository)
        _resolve_into(observed, client, work.repository)

    def _update_repository(self, ctx, change: Change, observed: EcrFacts) -> None:
        work: RepositoryWork = change.payload
        repository = work.repository
        _apply_settings(ctx.client("ecr"), work, change.tags_to_set())
        current = observed.owned[repository.name]
        current.scan_on_push, current.tag_mutability = repository.scan_on_push, repository.tag_mutability
        current.tags.update(change.tags_to_set())

    def _delete_repository(self, ctx, change: Change, observed: EcrFacts) -> None:
        work: DeleteWork = change.payload
        unless_code(GONE, ctx.client("ecr").delete_repository, repositoryName=change.name, force=work.force)
        del observed.owned[change.name]

    def _set_lifecycle_policy(self, ctx, change: Change, observed: EcrFacts) -> None:
        repository = change.payload.repository
        _put_lifecycle_policy(ctx.client("ecr"), repository)
        observed.owned[repository.name].lifecycle_policy = canonical_lifecycle_policy(repository.lifecycle_policy)

    handlers = {
        ("create", "repository"): _create_repository,
        ("replace", "repository"): _replace_repository,
        ("update", "repository"): _update_repository,
        ("delete", "repository"): _delete_repository,
        ("create", "lifecycle_policy"): _set_lifecycle_policy,
        ("update", "lifecycle_policy"): _set_lifecycle_policy,
    }

    # -- outputs and destroy ---------------------------------------------------------------

    def outputs(self, desired: EcrDesired, observed: EcrFacts) -> EcrOutputs:
        def known(name: str, attribute: str, output: str) -> str:
            if name in observed.owned:
                return getattr(observed.owned[name], attribute)
            return Unknown(f"{self.name}.{output}.{desired.repositories[name].key}")

        return EcrOutputs(
            repositories={repo.key: known(name, "uri", "repositories") for name, repo in desired.repositories.items()},
            repository_arns={repo.key: known(name, "arn", "repository_arns")
                             for name, repo in desired.repositories.items()},
            images={repo.key: observed.images[name] for name, repo in desired.repositories.items()
                    if name in observed.images},
            image_problems={repo.key: observed.missing_images[name] for name, repo in desired.repositories.items()
                            if name in observed.missing_images})

    def plan_destroy(self, observed: EcrFacts) -> list[Change]:
        return [_delete(current, "destroy") for _, current in sorted(observed.owned.items())]


# -- planning helpers (pure) ---------------------------------------------------------------


def _foreign_message(name: str, tags: dict[str, str], desired: EcrDesired) -> str:
    owner_env, owner_app = tags.get(tagging.ENV), tags.get(tagging.APP)
    if owner_env or owner_app:
        owner = f"environment {owner_env!r} of {owner_app!r}"
    else:
        owner = "no orchestrator environment (it has no ownership tags)"
    return (f"ECR repository {name!r} already exists and belongs to {owner}, not to {desired.app}/{desired.env}; "
            "repository names are shared by every environment in an account and region, so it is neither adopted "
            "nor changed. Rename the repository in the manifest or deploy to another account or region.")


def _create(repository: DesiredRepository) -> Change:
    diffs = (FieldDiff("scan_on_push", None, repository.scan_on_push),
             FieldDiff("tag_mutability", None, repository.tag_mutability),
             FieldDiff("encryption", None, repository.encryption))
    return Change("create", "repository", repository.name, diffs=diffs,
                  calls=("ecr:CreateRepository", "ecr:PutLifecyclePolicy"),
                  payload=RepositoryWork(repository=repository))


def _replace(repository: DesiredRepository, current: ObservedRepository) -> Change:
    note = "the encryption of a repository cannot change after creation"
    if current.holds_images:
        note += "; it holds images, which are lost: needs --delete-data"
    return Change("replace", "repository", repository.name,
                  diffs=(FieldDiff("encryption", current.encryption, repository.encryption),),
                  calls=("ecr:DeleteRepository", "ecr:CreateRepository", "ecr:PutLifecyclePolicy"),
                  payload=RepositoryWork(repository=repository, arn=current.arn, force=current.holds_images),
                  blocked=DELETE_DATA if current.holds_images else None, note=note,
                  outage=f"a repository's name cannot exist twice: {repository.name} is deleted first, and "
                         "tasks cannot pull images until they are pushed again")


def _updates(repository: DesiredRepository, current: ObservedRepository) -> list[Change]:
    changes = []
    work = RepositoryWork(
        repository=repository, arn=current.arn, scan_on_push=current.scan_on_push != repository.scan_on_push,
        tag_mutability=current.tag_mutability != repository.tag_mutability)
    retag = tagging.tag_diffs(current.tags, repository.tags)  # our keys only: tags others added are no difference
    diffs = [FieldDiff(name, getattr(current, name), getattr(repository, name))
             for name in ("scan_on_push", "tag_mutability") if getattr(work, name)] + list(retag)
    if diffs:
        calls = [call for needed, call in ((work.scan_on_push, "ecr:PutImageScanningConfiguration"),
                                           (work.tag_mutability, "ecr:PutImageTagMutability"),
                                           (bool(retag), "ecr:TagResource")) if needed]
        changes.append(Change("update", "repository", repository.name, diffs=tuple(diffs), calls=tuple(calls),
                              payload=work))
    wanted = canonical_lifecycle_policy(repository.lifecycle_policy)
    if current.lifecycle_policy != wanted:
        action = "update" if current.lifecycle_policy else "create"
        changes.append(_lifecycle_change(action, repository, current.lifecycle_policy))
    return changes


def _lifecycle_change(action: str, repository: DesiredRepository, current: dict | None) -> Change:
    return Change(action, "lifecycle_policy", repository.name,
                  diffs=(FieldDiff("policy", current, canonical_lifecycle_policy(repository.lifecycle_policy)),),
                  calls=("ecr:PutLifecyclePolicy",), payload=RepositoryWork(repository=repository))


def _delete(current: ObservedRepository, why: str) -> Change:
    note = f"{why}; " + ("it holds images, which are lost: needs --delete-data" if current.holds_images
                         else "it holds no images")
    return Change("delete", "repository", current.name, calls=("ecr:DeleteRepository",),
                  payload=DeleteWork(force=current.holds_images),
                  blocked=DELETE_DATA if current.holds_images else None, note=note)


# -- AWS helpers ---------------------------------------------------------------------------


def _repositories_named(client, names: list[str]) -> list[dict]:
    """The repositories of these names that exist: one describe for all, or, when one of them
    does not exist (ECR then fails the whole call), one describe each."""
    if not names:
        return []
    found = unless_code({"RepositoryNotFoundException"}, client.describe_repositories, repositoryNames=names)
    if found is not None:
        return found["repositories"]
    if len(names) == 1:
        return []
    return [item for name in names for item in _repositories_named(client, [name])]


def _lifecycle_policy_of(client, name: str) -> dict | None:
    found = unless_code({"LifecyclePolicyNotFoundException"}, client.get_lifecycle_policy, repositoryName=name)
    return canonical_lifecycle_policy(found["lifecyclePolicyText"]) if found else None


def _resolve_into(facts: EcrFacts, client, repository: DesiredRepository) -> None:
    """The digest of the repository's image tag into `facts.images`, or why it cannot be had into
    `facts.missing_images`. Also read right after the repository is made: a registry that fills
    new repositories (replication, a pull-through cache, the sandbox's) may hold the tag already."""
    facts.images.pop(repository.name, None)
    facts.missing_images.pop(repository.name, None)
    if repository.image_tag is None:
        return
    try:
        facts.images[repository.name] = resolve_image(client, repository.name, facts.owned[repository.name].uri,
                                                      repository.image_tag)
    except OrchestratorError as error:
        facts.missing_images[repository.name] = str(error)


def _apply_create(client, repository: DesiredRepository) -> ObservedRepository:
    try:
        item = client.create_repository(
            repositoryName=repository.name, imageTagMutability=repository.tag_mutability,
            imageScanningConfiguration={"scanOnPush": repository.scan_on_push},
            encryptionConfiguration={"encryptionType": repository.encryption},
            tags=tagging.tag_list(repository.tags))["repository"]
    except Exception as error:
        if error_code(error) != "RepositoryAlreadyExistsException":
            raise
        # Made already (a lost answer retried): carry on only with a repository carrying our tags.
        item = client.describe_repositories(repositoryNames=[repository.name])["repositories"][0]
        tags = tagging.tag_dict(client.list_tags_for_resource(resourceArn=item["repositoryArn"])["tags"])
        if any(tags.get(key) != repository.tags.get(key) for key in (tagging.APP, tagging.ENV, tagging.STEP)):
            raise tagging.not_ours("ECR repository", repository.name, repository.tags) from None
    _put_lifecycle_policy(client, repository)
    return ObservedRepository(name=repository.name, arn=item["repositoryArn"], uri=item["repositoryUri"],
                              scan_on_push=repository.scan_on_push, tag_mutability=repository.tag_mutability,
                              encryption=repository.encryption, tags=dict(repository.tags),
                              lifecycle_policy=canonical_lifecycle_policy(repository.lifecycle_policy))


def _put_lifecycle_policy(client, repository: DesiredRepository) -> None:
    client.put_lifecycle_policy(repositoryName=repository.name,
                                lifecyclePolicyText=json.dumps(repository.lifecycle_policy))


def _apply_settings(client, work: RepositoryWork, tags_to_set: dict[str, str]) -> None:
    repository = work.repository
    if work.scan_on_push:
        client.put_image_scanning_configuration(repositoryName=repository.name,
                                                imageScanningConfiguration={"scanOnPush": repository.scan_on_push})
    if work.tag_mutability:
        client.put_image_tag_mutability(repositoryName=repository.name, imageTagMutability=repository.tag_mutability)
    if tags_to_set:
        client.tag_resource(resourceArn=work.arn, tags=tagging.tag_list(tags_to_set))


def _encryption_of(item: dict) -> str:
    return item.get("encryptionConfiguration", {}).get("encryptionType", "AES256")


STEP = EcrStep
