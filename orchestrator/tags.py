"""The one tagging helper: ownership tags and the shapes the AWS APIs want them in."""
from __future__ import annotations

from orchestrator.errors import OrchestratorError
from orchestrator.model import FieldDiff

APP, ENV, STEP = "orchestrator:app", "orchestrator:env", "orchestrator:step"


def ownership_tags(app: str, env: str, step: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The manifest's own tags plus the three ownership tags (which always win)."""
    return {**(extra or {}), APP: app, ENV: env, STEP: step}


def is_owned(tags: dict[str, str], app: str, env: str, step: str | None = None) -> bool:
    """Ours: this app and environment (and, given `step`, created by that step)."""
    return tags.get(APP) == app and tags.get(ENV) == env and (step is None or tags.get(STEP) == step)


def not_ours(what: str, name: str, owner_tags: dict[str, str] | None = None) -> OrchestratorError:
    """The error for a resource under one of our names that lacks our ownership tags; given the
    tags it would carry, it says which to add to adopt it deliberately."""
    adopt = ""
    if owner_tags:
        adopt = "; to adopt it deliberately, tag it " + ", ".join(
            f"{key}={owner_tags[key]}" for key in (APP, ENV, STEP) if key in owner_tags)
    return OrchestratorError(f"{what} {name} exists but does not carry this environment's ownership tags; "
                             "the orchestrator will not adopt or change it: rename or remove it, or change "
                             f"the manifest{adopt}")


def tag_list(tags: dict[str, str], key: str = "Key", value: str = "Value") -> list[dict[str, str]]:
    """`{"k": "v"}` → `[{"Key": "k", "Value": "v"}]` (ECS wants `key`/`value`)."""
    return [{key: k, value: v} for k, v in sorted(tags.items())]


def tag_dict(items: list[dict] | None, key: str = "Key", value: str = "Value") -> dict[str, str]:
    """The inverse of `tag_list`; tolerates None (a resource without tags)."""
    return {item[key]: item.get(value, "") for item in items or []}


def ec2_tag_specifications(resource_type: str, tags: dict[str, str], name: str | None = None) -> list[dict]:
    """`TagSpecifications` for an EC2 create call, with the `Name` tag the console shows."""
    all_tags = {**tags, **({"Name": name} if name else {})}
    return [{"ResourceType": resource_type, "Tags": tag_list(all_tags)}]


def owner_filters(app: str, env: str, step: str | None = None) -> list[dict]:
    """EC2-style `Filters` that select what this environment (and step) owns."""
    filters = [{"Name": f"tag:{APP}", "Values": [app]}, {"Name": f"tag:{ENV}", "Values": [env]}]
    if step:
        filters.append({"Name": f"tag:{STEP}", "Values": [step]})
    return filters


def owner_tag_filters(app: str, env: str, step: str) -> list[dict]:
    """Tagging-API (`GetResources`) `TagFilters` that select what this environment's step owns."""
    return [{"Key": key, "Values": [value]} for key, value in ((APP, app), (ENV, env), (STEP, step))]


def owned_arns(aws, app: str, env: str) -> list[str]:
    """Every resource the tagging API lists with this environment's ownership tags. It leaves
    out some kinds (IAM roles; in some regions more): the steps' own describe calls find those."""
    pages = aws.client("resourcegroupstaggingapi").get_paginator("get_resources").paginate(
        TagFilters=[{"Key": APP, "Values": [app]}, {"Key": ENV, "Values": [env]}])
    return sorted(item["ResourceARN"] for page in pages for item in page["ResourceTagMappingList"])


def arns_of(arns, service: str, resource: str) -> list[str]:
    """The ARNs of one kind of resource (`ec2`, `natgateway`), of a list the tagging API gave."""
    return [arn for arn in arns if arn.split(":")[2] == service and arn.split(":", 5)[5].startswith(resource + "/")]


def tag_diffs(current: dict[str, str], wanted: dict[str, str]) -> tuple[FieldDiff, ...]:
    """The plan's view of `reconcile`: one `tags` difference holding only our keys, or none."""
    to_set = reconcile(current, wanted)
    return (FieldDiff("tags", {key: current.get(key) for key in to_set}, to_set),) if to_set else ()


def reconcile(current: dict[str, str], wanted: dict[str, str]) -> dict[str, str]:
    """The tags to set so that `current` carries every tag of `wanted` (missing or with another
    value). Only our keys are managed: tags others added are never removed, and `aws:` keys
    (which only AWS may write) are never touched."""
    return {key: value for key, value in wanted.items()
            if not key.startswith("aws:") and current.get(key) != value}
