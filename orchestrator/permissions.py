"""The deploy role's least-privilege policy.

Each step states the IAM statements its observe, apply and destroy need (`Step.permissions`),
scoped to the environment's resource names; the state store states its own. This module holds
what they share and puts the policy together. Resource "*" appears only for actions that
support no resource-level permissions, and each step says so where it uses it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from orchestrator.tags import APP, ENV


def partition_of(region: str) -> str:
    """The ARN partition a region belongs to, for a policy printed without credentials (a run
    reads its partition from the credentials: `Aws.partition`)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


@dataclass(frozen=True)
class Scope:
    """Where the environment lives: the ARNs of its resources are built from this."""

    account_id: str
    region: str
    partition: str

    def arn(self, service: str, resource: str, *, regional: bool = True) -> str:
        region = self.region if regional else ""
        return f"arn:{self.partition}:{service}:{region}:{self.account_id}:{resource}"


def allow(sid: str, actions: list[str], resources: list[str] | str, condition: dict | None = None) -> dict:
    statement = {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement


def tagged_as_ours(manifest) -> dict:
    """The condition that a create (or its tag-on-create) sends this environment's ownership
    tags: for actions authorised only on "*" (no ARN exists before the create), so the
    statement still allows nothing but making resources of this environment."""
    return {"StringEquals": {f"aws:RequestTag/{APP}": manifest.app, f"aws:RequestTag/{ENV}": manifest.environment}}


#: Steps find their other resources by their ownership tags; GetResources supports no
#: resource-level permissions (it answers resource ARNs and tags, nothing else).
FIND_BY_TAG = allow("FindOwnResourcesByTag", ["tag:GetResources"], "*")


def service_linked_role(scope: Scope, service: str) -> dict:
    """Creating a service's linked role, which AWS does on the first use of some services in an
    account (ELB, ECS); nothing else of IAM."""
    return allow(f"ServiceLinkedRole{service.split('.')[0].title().replace('-', '')}", ["iam:CreateServiceLinkedRole"],
                 scope.arn("iam", f"role/aws-service-role/{service}/*", regional=False),
                 {"StringEquals": {"iam:AWSServiceName": service}})


#: The run facts every run reads once (orchestrator/aws.py): the zones the region offers the
#: account, and which of them offer the interface endpoint services the manifest names; neither
#: describe supports resource-level permissions. (GetCallerIdentity, for the account and
#: partition, needs no permission.)
RUN_FACTS = allow("RunFactsZones", ["ec2:DescribeAvailabilityZones", "ec2:DescribeVpcEndpointServices"], "*")


def deploy_policy(manifest, scope: Scope, steps, state_statements: list[dict]) -> dict:
    """One policy document: the run facts' and the state store's statements, then each step's in
    graph order; a statement several steps need (finding by tag) appears once."""
    statements = [RUN_FACTS, *state_statements]
    for step in steps:
        statements += [s for s in step.permissions(manifest, scope) if s not in statements]
    return {"Version": "2012-10-17", "Statement": statements}


#: IAM's limit on a managed policy's size, counted without whitespace; a role takes 10 of them
#: by default (more on request), where one inline policy may hold 10,240 characters in all.
MANAGED_POLICY_CHARACTERS = 6_144


def managed_policies(document: dict, name: str) -> dict[str, dict]:
    """`document`'s statements, in order, packed into as few managed policies as IAM's size
    limit allows, named `NAME-1`, `NAME-2`, …: the deploy policy outgrew an inline policy."""
    def size(statements: list[dict]) -> int:
        return len(json.dumps({"Version": document["Version"], "Statement": statements}, separators=(",", ":")))

    packs: list[list[dict]] = [[]]
    for statement in document["Statement"]:
        if packs[-1] and size(packs[-1] + [statement]) > MANAGED_POLICY_CHARACTERS:
            packs.append([])
        packs[-1].append(statement)
    return {f"{name}-{number}": {"Version": document["Version"], "Statement": statements}
            for number, statements in enumerate(packs, start=1)}
