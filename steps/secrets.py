"""Step `secrets`: the platform's Secrets Manager secrets, named `APP/ENV/NAME`
(`gamepulse/dev/db-connection`).

A value comes from an environment variable, a file, or is generated once and then kept; never
from the manifest. It is registered with the log redactor the moment it is read and never
enters a plan, a `Change`, a state record, an output or an error: `observe` compares the
current value with its source in memory and keeps only the verdict, and `apply` reads the
source again when it writes.
"""
from __future__ import annotations

import os
import secrets as random_tokens
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import tags as tagging
from orchestrator.aws import error_code, unless_code
from orchestrator.errors import OrchestratorError
from orchestrator.model import DELETE_SECRETS, SENSITIVE, Change, FieldDiff, Step, Unknown
from orchestrator.permissions import allow

#: BatchGetSecretValue takes at most this many secret ids per call.
BATCH_LIMIT = 20


@dataclass(frozen=True)
class DesiredSecret:
    key: str  # the manifest's name: db-connection
    name: str  # gamepulse/dev/db-connection
    description: str
    source: str  # env | file | generate
    env: str | None
    path: str | None
    length: int
    tags: dict[str, str]

    def source_label(self) -> str:
        """Where the value comes from, for plans and errors (never the value itself)."""
        if self.source == "env":
            return f"environment variable {self.env}"
        if self.source == "file":
            return f"file {self.path}"
        return f"generated ({self.length} characters)"


@dataclass(frozen=True)
class SecretsDesired:
    app: str
    env: str
    prefix: str  # gamepulse/dev/
    recovery_window_days: int
    secrets: dict[str, DesiredSecret]


@dataclass
class ObservedSecret:
    name: str
    arn: str
    description: str
    tags: dict[str, str]
    deleted: bool  # scheduled for deletion (DeletedDate set)
    #: The id of the version labelled AWSCURRENT: it changes whenever the value does (a write by
    #: this tool, a rotation, a hand edit). Services record it at their rollout; never a value.
    version: str = ""
    #: "same" / "differs" from the source; "unknown" when not compared (a generated value, a
    #: source that cannot be read, or a secret scheduled for deletion, whose value AWS withholds).
    value: str = "unknown"


@dataclass
class SecretsFacts:
    recovery_window_days: int
    owned: dict[str, ObservedSecret] = field(default_factory=dict)  # key → ours
    foreign: dict[str, ObservedSecret] = field(default_factory=dict)  # desired key taken by another owner
    missing_sources: set[str] = field(default_factory=set)  # keys of existing secrets whose source is unread
    #: Why a secret that does not exist yet cannot be made (its source cannot be read): pre-flight problems.
    unreadable: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SecretWork:
    """What `apply` does to one secret. Holds no value: `apply` reads the source again."""

    secret: DesiredSecret
    arn: str = ""
    restore: bool = False
    description: bool = False
    put_value: bool = False


@dataclass(frozen=True)
class SecretDeletion:
    """A secret to schedule for deletion, recoverable for the window's days."""

    arn: str
    recovery_window_days: int


class SourceUnavailable(OrchestratorError):
    """The environment variable or file a secret's value comes from cannot be read."""


def read_source(secret: DesiredSecret) -> str:
    """The value from the secret's environment variable or file (one trailing newline dropped)."""
    if secret.source == "env":
        value = os.environ.get(secret.env or "", "")
        if not value:
            raise SourceUnavailable(f"secret {secret.name}: environment variable {secret.env} is not set or empty; "
                                    "set it to the secret's value (values are never read from the manifest)")
        return value
    try:
        value = Path(secret.path or "").read_text(encoding="utf-8").removesuffix("\n")
    except OSError as err:
        raise SourceUnavailable(f"secret {secret.name}: cannot read file {secret.path}: "
                                f"{err.strerror or type(err).__name__}") from None
    if not value:
        raise SourceUnavailable(f"secret {secret.name}: file {secret.path} is empty")
    return value


def generate_value(length: int) -> str:
    """A URL-safe random value of exactly `length` characters."""
    return random_tokens.token_urlsafe(length)[:length]


def _value_origin(secret: DesiredSecret) -> str:
    if secret.source == "generate":
        return f"value generated once ({secret.length} characters), then kept"
    return f"value from {secret.source_label()}"


@dataclass(frozen=True)
class SecretsOutputs:
    arns: dict[str, str]  # secret ARN by the manifest's name (never a value)
    names: dict[str, str]
    #: The AWSCURRENT version id by the manifest's name ("known after apply" where this run writes
    #: a value): a service whose tasks read a secret rolls when it differs from its rollout's.
    versions: dict[str, str]


class SecretsStep(Step):
    name = "secrets"
    depends_on = ()
    Outputs = SecretsOutputs
    description = "Secrets Manager secrets (values from env, file, or generated once)"

    def permissions(self, manifest, scope) -> list[dict]:
        """The deploy role's statements for this step: the environment's secrets only."""
        return [
            allow("SecretsOfTheEnvironment", [f"secretsmanager:{action}" for action in (
                "DescribeSecret", "GetSecretValue", "CreateSecret", "PutSecretValue", "UpdateSecret", "DeleteSecret",
                "RestoreSecret", "TagResource")],
                  scope.arn("secretsmanager", f"secret:{manifest.app}/{manifest.environment}/*")),
            # ListSecrets and BatchGetSecretValue support no resource-level permissions; the
            # latter still needs GetSecretValue on each secret it reads (above).
            allow("SecretsListAndBatchRead", ["secretsmanager:ListSecrets", "secretsmanager:BatchGetSecretValue"],
                  "*")]

    # -- desired ---------------------------------------------------------------------------

    def desired(self, manifest, inputs) -> SecretsDesired:
        prefix = f"{manifest.app}/{manifest.environment}/"
        tags = tagging.ownership_tags(manifest.app, manifest.environment, self.name, manifest.tags)
        secrets = {key: DesiredSecret(key=key, name=prefix + key, description=spec.description, source=spec.source,
                                      env=spec.variable(manifest.environment), path=spec.path, length=spec.length, tags=tags)
                   for key, spec in sorted(manifest.secrets.values.items())}
        return SecretsDesired(app=manifest.app, env=manifest.environment, prefix=prefix,
                              recovery_window_days=manifest.secrets.recovery_window_days, secrets=secrets)

    # -- observe ---------------------------------------------------------------------------

    def observe(self, ctx, desired: SecretsDesired) -> SecretsFacts:
        client = ctx.client("secretsmanager")
        facts = SecretsFacts(recovery_window_days=desired.recovery_window_days)
        for item in self._list_under_prefix(client, desired.prefix):
            key = item["Name"][len(desired.prefix):]
            secret = _observed(item)
            if ctx.owns(secret.tags):
                facts.owned[key] = secret
            elif key in desired.secrets:
                facts.foreign[key] = secret
        if not ctx.destroying:  # a destroy needs no value: it never reads the sources
            sources = self._read_sources(ctx, desired, facts)
            self._compare_values(ctx, client, facts, sources)
            self._describe_versions(client, facts, compared=set(sources))
        return facts

    @staticmethod
    def _list_under_prefix(client, prefix: str) -> list[dict]:
        """Every secret whose name starts with `prefix`, including those scheduled for deletion."""
        pages = client.get_paginator("list_secrets").paginate(
            Filters=[{"Key": "name", "Values": [prefix]}], IncludePlannedDeletion=True)
        return [item for page in pages for item in page["SecretList"] if item["Name"].startswith(prefix)]

    @staticmethod
    def _read_sources(ctx, desired: SecretsDesired, facts: SecretsFacts) -> dict[str, str]:
        """Values of the env and file sources, by key, each registered with the redactor at once.

        A source that cannot be read is a pre-flight problem (`preflight`: apply stops before any
        change, plan names every such secret) for a secret that does not exist yet; for one that exists, its current
        value is kept (an image-only pipeline need not hold every secret), with a warning and a
        line in the plan (`remarks`).
        """
        values: dict[str, str] = {}
        for key, secret in desired.secrets.items():
            if secret.source == "generate":
                continue
            try:
                values[key] = ctx.secret(read_source(secret))
            except SourceUnavailable as problem:
                if key not in facts.owned:
                    facts.unreadable.append(str(problem))
                    continue
                facts.missing_sources.add(key)
                ctx.log.warning("secret source unavailable; keeping the current value", secret=secret.name,
                                problem=str(problem))
        return values

    @staticmethod
    def _compare_values(ctx, client, facts: SecretsFacts, sources: dict[str, str]) -> None:
        """Mark each live secret with a readable source as same/differs, in batched reads."""
        by_arn = {facts.owned[key].arn: key for key in sources if key in facts.owned and not facts.owned[key].deleted}
        arns = sorted(by_arn)
        for start in range(0, len(arns), BATCH_LIMIT):
            response = client.batch_get_secret_value(SecretIdList=arns[start:start + BATCH_LIMIT])
            if response.get("Errors"):
                error = response["Errors"][0]
                raise OrchestratorError(f"secret {error.get('SecretId')}: cannot read its current value to compare "
                                        f"it with the source ({error.get('ErrorCode')})")
            for item in response["SecretValues"]:
                key = by_arn[item["ARN"]]
                current = ctx.secret(item.get("SecretString", ""))
                facts.owned[key].value = "same" if current == sources[key] else "differs"
                facts.owned[key].version = item.get("VersionId") or facts.owned[key].version

    @staticmethod
    def _describe_versions(client, facts: SecretsFacts, compared: set[str]) -> None:
        """The current version of each live secret whose value was not read (a generated one, a
        source not set), by DescribeSecret: ListSecrets "might not reflect changes from the last
        five minutes" (AWS), and a stale version would roll the services that read the secret
        again. The values read above came with their version."""
        for key, secret in sorted(facts.owned.items()):
            if key not in compared and not secret.deleted:
                secret.version = _version_of(client.describe_secret(SecretId=secret.arn)) or secret.version

    def preflight(self, ctx, desired: SecretsDesired, observed: SecretsFacts) -> list[str]:
        return list(observed.unreadable)

    # -- plan ------------------------------------------------------------------------------

    def remarks(self, desired: SecretsDesired, observed: SecretsFacts) -> list[str]:
        def unread(secret: DesiredSecret) -> str:
            return f"{secret.source_label()} is {'not set' if secret.source == 'env' else 'not readable'}"

        return [f"secret {desired.secrets[key].name}: {unread(desired.secrets[key])}; its current value is kept "
                "(the tasks keep reading it)" for key in sorted(observed.missing_sources)]

    def plan(self, desired: SecretsDesired, observed: SecretsFacts, recorded: dict[str, dict]) -> list[Change]:
        changes: list[Change] = []
        for key, secret in desired.secrets.items():
            if key in observed.foreign:
                raise tagging.not_ours("secret", secret.name)
            current = observed.owned.get(key)
            if current is None:
                changes.append(self._create(secret))
            elif current.deleted:
                changes.append(self._restore(secret, current, key not in observed.missing_sources))
            else:
                change = self._update(secret, current)
                if change is not None:
                    changes.append(change)
        for key, current in sorted(observed.owned.items()):
            if key not in desired.secrets and not current.deleted:
                changes.append(self._delete(key, current, observed.recovery_window_days,
                                            "no longer in the manifest"))
        return changes

    @staticmethod
    def _record(secret: DesiredSecret) -> dict:
        """Where the value came from: never the value, nor a hash of it."""
        return {"source": secret.source_label()}

    def _create(self, secret: DesiredSecret) -> Change:
        return Change("create", "secret", secret.key,
                      diffs=(FieldDiff("description", None, secret.description),
                             FieldDiff("value", None, SENSITIVE, sensitive=True)),
                      calls=("secretsmanager:CreateSecret",), payload=SecretWork(secret=secret),
                      record=self._record(secret), note=_value_origin(secret), after=())  # made together

    def _restore(self, secret: DesiredSecret, current: ObservedSecret, source_readable: bool) -> Change:
        put_value = secret.source != "generate" and source_readable
        work = self._settings_work(secret, current, restore=True, put_value=put_value)
        diffs = self._settings_diffs(work, current)
        calls = ("secretsmanager:RestoreSecret",) + self._settings_calls(work, diffs)
        if put_value:
            diffs += (FieldDiff("value", SENSITIVE, SENSITIVE, sensitive=True),)
        note = "restores the secret scheduled for deletion; " + (
            f"value set again from {secret.source_label()}" if put_value else "its value is kept")
        return Change("update", "secret", secret.key, diffs=diffs, calls=calls, payload=work,
                      record=self._record(secret), note=note)

    def _update(self, secret: DesiredSecret, current: ObservedSecret) -> Change | None:
        work = self._settings_work(secret, current, put_value=current.value == "differs")
        diffs = self._settings_diffs(work, current)
        if work.put_value:
            diffs += (FieldDiff("value", SENSITIVE, SENSITIVE, sensitive=True),)
        if not diffs:
            return None
        note = f"value will change (from {secret.source_label()})" if work.put_value else ""
        return Change("update", "secret", secret.key, diffs=diffs, calls=self._settings_calls(work, diffs),
                      payload=work, record=self._record(secret), note=note)

    @staticmethod
    def _settings_work(secret: DesiredSecret, current: ObservedSecret, *, restore: bool = False,
                       put_value: bool = False) -> SecretWork:
        """Only our tag keys are managed: tags others added (cost allocation, compliance) stay."""
        return SecretWork(
            secret=secret, arn=current.arn, restore=restore, description=current.description != secret.description,
            put_value=put_value)

    @staticmethod
    def _settings_diffs(work: SecretWork, current: ObservedSecret) -> tuple[FieldDiff, ...]:
        diffs = []
        if work.description:
            diffs.append(FieldDiff("description", current.description, work.secret.description))
        return tuple(diffs) + tagging.tag_diffs(current.tags, work.secret.tags)

    @staticmethod
    def _settings_calls(work: SecretWork, diffs: tuple[FieldDiff, ...]) -> tuple[str, ...]:
        wanted = [(work.description, "secretsmanager:UpdateSecret"),
                  (any(diff.field == "tags" for diff in diffs), "secretsmanager:TagResource"),
                  (work.put_value, "secretsmanager:PutSecretValue")]
        return tuple(call for needed, call in wanted if needed)

    @staticmethod
    def _delete(key: str, current: ObservedSecret, window: int, why: str) -> Change:
        return Change("delete", "secret", key, calls=("secretsmanager:DeleteSecret",),
                      payload=SecretDeletion(current.arn, window), blocked=DELETE_SECRETS,
                      note=f"{why}: schedules deletion of {current.name} with a {window}-day recovery window; "
                           "needs --delete-secrets")

    # -- apply -----------------------------------------------------------------------------

    def _create_secret(self, ctx, change: Change, observed: SecretsFacts) -> None:
        work: SecretWork = change.payload
        self._apply_create(ctx, ctx.client("secretsmanager"), work.secret, observed)

    def _update_secret(self, ctx, change: Change, observed: SecretsFacts) -> None:
        self._apply_update(ctx, ctx.client("secretsmanager"), change, observed)

    def _delete_secret(self, ctx, change: Change, observed: SecretsFacts) -> None:
        deletion: SecretDeletion = change.payload
        unless_code({"ResourceNotFoundException"}, ctx.client("secretsmanager").delete_secret,
                    SecretId=deletion.arn, RecoveryWindowInDays=deletion.recovery_window_days)
        observed.owned[change.name].deleted = True

    handlers = {
        ("create", "secret"): _create_secret,
        ("update", "secret"): _update_secret,
        ("delete", "secret"): _delete_secret,
    }

    def _apply_create(self, ctx, client, secret: DesiredSecret, observed: SecretsFacts) -> None:
        value = ctx.secret(generate_value(secret.length) if secret.source == "generate" else read_source(secret))
        try:
            response = client.create_secret(Name=secret.name, ClientRequestToken=ctx.token(secret.key),
                                            Description=secret.description, SecretString=value,
                                            Tags=tagging.tag_list(secret.tags))
        except Exception as error:
            if error_code(error) not in ("ResourceExistsException", "InvalidRequestException"):
                raise
            # ListSecrets may not show changes of the last minutes: a quick re-apply plans a create
            # for a secret the last run made (or scheduled for deletion: AWS then answers
            # InvalidRequestException). If it is ours, carry on as with an existing secret.
            current = _observed(client.describe_secret(SecretId=secret.name))
            if error_code(error) == "InvalidRequestException" and not current.deleted:
                raise
            self._apply_to_existing(ctx, client, secret, value, current, observed)
            return
        observed.owned[secret.key] = ObservedSecret(name=secret.name, arn=response["ARN"],
                                                    description=secret.description, tags=dict(secret.tags),
                                                    deleted=False, version=response.get("VersionId", ""),
                                                    value="same")

    def _apply_to_existing(self, ctx, client, secret: DesiredSecret, value: str, current: ObservedSecret,
                           observed: SecretsFacts) -> None:
        """What plan would have done had observe seen the secret: restore it, or update what
        differs. A generated value is kept, so only a value from a source is compared."""
        if not ctx.owns(current.tags):
            raise tagging.not_ours("secret", secret.name)
        observed.owned[secret.key] = current
        if current.deleted:
            change = self._restore(secret, current, source_readable=True)
        else:
            if secret.source != "generate":
                stored = ctx.secret(client.get_secret_value(SecretId=current.arn)["SecretString"])
                current.value = "same" if stored == value else "differs"
            change = self._update(secret, current)
        if change is not None:
            self._apply_update(ctx, client, change, observed)

    @staticmethod
    def _apply_update(ctx, client, change: Change, observed: SecretsFacts) -> None:
        work: SecretWork = change.payload
        tags_to_set = change.tags_to_set()
        secret, current = work.secret, observed.owned[work.secret.key]
        if work.restore:
            client.restore_secret(SecretId=work.arn)
            current.deleted = False
        if work.description:
            client.update_secret(SecretId=work.arn, Description=secret.description)
        if tags_to_set:
            client.tag_resource(SecretId=work.arn, Tags=tagging.tag_list(tags_to_set))
        if work.put_value:
            # A fresh token per write: observe has already established that the value differs.
            written = client.put_secret_value(SecretId=work.arn, SecretString=ctx.secret(read_source(secret)),
                                              ClientRequestToken=str(uuid.uuid4()))
            current.value, current.version = "same", written["VersionId"]
        current.description, current.tags = secret.description, {**current.tags, **secret.tags}

    # -- outputs and destroy ---------------------------------------------------------------

    def outputs(self, desired: SecretsDesired, observed: SecretsFacts) -> SecretsOutputs:
        return SecretsOutputs(arns={key: observed.owned[key].arn if key in observed.owned
                                    else Unknown(f"{self.name}.arns.{key}") for key in desired.secrets},
                              names={key: secret.name for key, secret in desired.secrets.items()},
                              versions={key: _current_version(observed, key) for key in desired.secrets})

    def plan_destroy(self, observed: SecretsFacts) -> list[Change]:
        return [self._delete(key, current, observed.recovery_window_days, "destroy")
                for key, current in sorted(observed.owned.items()) if not current.deleted]


def _observed(item: dict) -> ObservedSecret:
    """A secret as ListSecrets or DescribeSecret show it (its value is compared separately)."""
    return ObservedSecret(name=item["Name"], arn=item["ARN"], description=item.get("Description", ""),
                          tags=tagging.tag_dict(item.get("Tags")), deleted="DeletedDate" in item,
                          version=_version_of(item))


def _version_of(item: dict) -> str:
    """The AWSCURRENT version id, from ListSecrets' SecretVersionsToStages or DescribeSecret's
    VersionIdsToStages."""
    stages = item.get("SecretVersionsToStages") or item.get("VersionIdsToStages") or {}
    return next((version for version, labels in stages.items() if "AWSCURRENT" in labels), "")


def _current_version(observed: SecretsFacts, key: str) -> str:
    """The version tasks starting now would read, or "known after apply" where this run writes a
    new value (or creates or restores the secret)."""
    current = observed.owned.get(key)
    if current is None or current.deleted or current.value == "differs" or not current.version:
        return Unknown(f"secrets.versions.{key}")
    return current.version


STEP = SecretsStep
