"""Step dashboards: the AWS side of alerting, beside Grafana's own (steps/grafana_content.py).

- An SNS topic `APP-ENV-alerts` with an email subscription per address of the manifest's
  `alerting` section, encrypted at rest with a KMS key of its own (`alias/APP-ENV-alerts`).
  Not the AWS managed key `alias/aws/sns`: its policy cannot be changed, and CloudWatch calls
  KMS itself to publish an alarm, so with that key every notification fails (AccessDenied in
  the alarm's history) while the alarm looks well wired. The key's policy lets CloudWatch use
  it for this environment's alarms only. AWS mails each address a confirmation link; until it is
  followed the subscription is "pending confirmation" and receives nothing, which is normal.
- CloudWatch alarms on the load balancer's own 5XX answers, each target group's response time
  and unhealthy hosts, and each ECS service's CPU and memory, with the real dimension values
  from the alb and services steps, each notifying the topic (alarm and recovery).
- A CloudWatch dashboard `APP-ENV` for the AWS-level view.

The alarms and the dashboard body are built in steps/cloudwatch_content.py (pure); this module
puts them and the topic in place.

Reads on an unchanged apply (seven): the key and its policy, the topic's attributes, its
subscriptions, every alarm of the environment (one `describe_alarms` by name prefix), the tags
of key, topic and alarms (one tagging-API query) and the dashboard. Alarms that Application
Auto Scaling makes for target tracking (`TargetTracking-…`) belong to it: they do not match our
prefix and carry none of our tags, and are never touched.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from orchestrator import tags as tagging
from orchestrator.aws import SEVERAL_SERVICES, unless_code
from orchestrator.model import Change, FieldDiff, Step, Unknown, diff_fields, is_unknown
from orchestrator.permissions import FIND_BY_TAG, allow, tagged_as_ours
from steps import cloudwatch_content
from steps.cloudwatch_content import ALARM_FIELDS, Alarm, Dashboard

#: KMS's shortest wait before it deletes a key scheduled for deletion.
KEY_DELETION_DAYS = 7
EMAIL = "email"
PENDING = "PendingConfirmation"  # what SNS lists instead of the ARN of an unconfirmed subscription
#: Alarms Application Auto Scaling creates for target tracking: never ours.
AUTOSCALING_ALARMS = "TargetTracking-"
DELETE_ALARMS_BATCH = 100  # DeleteAlarms takes at most 100 names
#: GetResources pages by tags counted (a resource with five tags counts five); 500 is its most.
TAGS_PER_PAGE = 500
#: What a plan shows of a new alarm (an update shows every field that differs).
ALARM_SUMMARY = ("metric", "dimensions", "statistic", "threshold", "alarm_actions")


# --- desired ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    alias: str
    description: str
    policy: dict


@dataclass(frozen=True)
class Topic:
    name: str
    arn: str  # built from account, region and name: known before it exists
    kms_key: str  # the alias of the topic's key


@dataclass(frozen=True)
class DashboardsDesired:
    key: Key | None  # None (as topic): the manifest has no alerting section
    topic: Topic | None
    key_alias: str  # where the key and topic are (or were, to delete them once the section is gone)
    topic_arn: str
    emails: tuple[str, ...]
    alarm_prefix: str
    alarms: tuple[Alarm, ...]
    dashboard: Dashboard
    alb_url: str
    grafana_url: str
    tags: dict[str, str]


# --- observed --------------------------------------------------------------------------------


@dataclass
class ObservedKey:
    id: str
    arn: str
    alias: str  # ours, whether or not the key has it yet
    owned: bool
    aliased: bool  # False: a run was killed between creating the key and naming it
    policy: dict | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class ObservedTopic:
    arn: str
    kms_key: str | None
    owned: bool
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class ObservedAlarm:
    name: str
    arn: str
    owned: bool
    state: str
    namespace: str | None = None
    metric: str | None = None
    statistic: str | None = None
    dimensions: tuple[tuple[str, str], ...] = ()
    period: int | None = None
    evaluation_periods: int | None = None
    datapoints_to_alarm: int | None = None
    threshold: float | None = None
    comparison: str | None = None
    treat_missing_data: str | None = None
    actions_enabled: bool | None = None
    alarm_actions: tuple[str, ...] = ()
    ok_actions: tuple[str, ...] = ()
    insufficient_data_actions: tuple[str, ...] = ()
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class DashboardsFacts:
    key: ObservedKey | None = None
    topic: ObservedTopic | None = None
    subscriptions: dict[str, str] = field(default_factory=dict)  # email → subscription ARN or PENDING
    alarms: dict[str, ObservedAlarm] = field(default_factory=dict)  # by name, those of our prefix
    dashboard_name: str = ""
    dashboard: dict | None = None  # the body AWS holds, parsed


@dataclass(frozen=True)
class DashboardsOutputs:
    topic_arn: str
    subscriptions: dict[str, str]  # email → "confirmed" | "pending confirmation"
    alarm_names: list[str]
    dashboard_name: str
    alb_url: str
    grafana_url: str


class DashboardsStep(Step):
    name = "dashboards"
    depends_on = ("alb", "services")
    observes_by_manifest = True  # key, topic, alarms, dashboard by the names the manifest gives them
    Outputs = DashboardsOutputs
    description = "SNS alert topic with email subscriptions, CloudWatch alarms, CloudWatch dashboard"

    def permissions(self, manifest, scope) -> list[dict]:
        """The deploy role's statements for this step: the environment's topic (and its
        subscriptions), its alarms by name prefix and its dashboard."""
        topic = scope.arn("sns", f"{manifest.prefix}-alerts")
        return [
            # CreateKey supports no resource-level permissions; key ids are generated. Created
            # with tags, it also needs kms:TagResource, which cannot be held to a key ARN (the key
            # does not exist yet): both on "*", for a key carrying this environment's tags.
            allow("AlertKeyCreate", ["kms:CreateKey", "kms:TagResource"], "*", tagged_as_ours(manifest)),
            allow("AlertKey", [f"kms:{action}" for action in (
                "DescribeKey", "GetKeyPolicy", "PutKeyPolicy", "CreateAlias", "DeleteAlias", "ScheduleKeyDeletion",
                "TagResource", "ListResourceTags")], [scope.arn("kms", f"alias/{manifest.prefix}-alerts"),
                                                      scope.arn("kms", "key/*")]),
            allow("AlertTopic", [f"sns:{action}" for action in (
                "CreateTopic", "GetTopicAttributes", "SetTopicAttributes", "DeleteTopic", "TagResource",
                "ListTagsForResource", "Subscribe", "GetSubscriptionAttributes", "ListSubscriptionsByTopic",
                "Unsubscribe")], [topic, f"{topic}:*"]),
            allow("AlarmsAndDashboard", [f"cloudwatch:{action}" for action in (
                "PutMetricAlarm", "DeleteAlarms", "TagResource", "ListTagsForResource", "PutDashboard", "GetDashboard",
                "DeleteDashboards")], [scope.arn("cloudwatch", f"alarm:{manifest.prefix}-*"),
                                       scope.arn("cloudwatch", f"dashboard/{manifest.prefix}", regional=False)]),
            # DescribeAlarms is asked with our name prefix, but is authorised on all alarms.
            allow("AlarmsDescribe", ["cloudwatch:DescribeAlarms"], scope.arn("cloudwatch", "alarm:*")),
            FIND_BY_TAG]

    # -- desired ----------------------------------------------------------------------------

    def desired(self, manifest, inputs) -> DashboardsDesired:
        prefix = manifest.prefix
        alerting = manifest.alerting
        topic_name = f"{prefix}-alerts"
        key_alias = f"alias/{topic_name}"
        topic_arn = f"arn:{inputs.partition}:sns:{inputs.region}:{inputs.account_id}:{topic_name}"
        key = _key(manifest, inputs, key_alias) if alerting is not None else None
        topic = Topic(topic_name, topic_arn, key_alias) if alerting is not None else None
        lb_suffix = inputs.output("alb", "arn_suffix")
        groups = {group: inputs.entry("alb", "target_group_arn_suffixes", group)
                  for group in manifest.load_balancer.target_groups}
        cluster = inputs.output("services", "cluster_name")
        tasks = list(manifest.services.tasks) if manifest.services else []
        services = {task: cloudwatch_content.service_name(inputs.entry("services", "services", task))
                    for task in tasks}
        alarms = cloudwatch_content.alarms(prefix, alerting.cloudwatch, topic_arn, lb_suffix, groups, cluster,
                                           services) if alerting is not None else ()
        alarm_arns = [f"arn:{inputs.partition}:cloudwatch:{inputs.region}:{inputs.account_id}:alarm:{alarm.name}"
                      for alarm in alarms]
        url = inputs.output("alb", "url")
        return DashboardsDesired(
            key=key, topic=topic, key_alias=key_alias, topic_arn=topic_arn,
            emails=tuple(sorted(set(alerting.email_addresses))) if alerting else (), alarm_prefix=f"{prefix}-",
            alarms=alarms,
            dashboard=Dashboard(prefix, cloudwatch_content.dashboard_body(inputs.region, lb_suffix, groups, cluster,
                                                                          services, alarm_arns)),
            alb_url=url, grafana_url=url if is_unknown(url) else f"{url}/grafana/",
            tags=tagging.ownership_tags(manifest.app, manifest.environment, self.name, manifest.tags))

    # -- observe ----------------------------------------------------------------------------

    def observe(self, ctx, desired: DashboardsDesired) -> DashboardsFacts:
        facts = DashboardsFacts(dashboard_name=desired.dashboard.name)
        owned_tags = self._owned_tags(ctx)

        def topic_and_subscriptions():
            topic = self._observe_topic(ctx, desired.topic_arn, owned_tags)
            return topic, (self._observe_subscriptions(ctx, topic.arn) if topic is not None else None)

        # Key, topic, alarms and dashboard: four services, read at once.
        facts.key, (facts.topic, subscriptions), facts.alarms, facts.dashboard = ctx.each(
            SEVERAL_SERVICES, lambda read: read(), [
                lambda: self._observe_key(ctx, desired.key_alias, owned_tags),
                topic_and_subscriptions,
                lambda: self._observe_alarms(ctx, desired.alarm_prefix, owned_tags),
                lambda: self._observe_dashboard(ctx, desired.dashboard.name)])
        if subscriptions is not None:
            facts.subscriptions = subscriptions
        return facts

    def _owned_tags(self, ctx) -> dict[str, dict[str, str]]:
        """The tags of the key, topic and alarms carrying this step's ownership tags, by ARN, in one
        tagging-API query (one page for some 80 alarms). That API shows new tags only after a
        while: what it leaves out is asked about by itself (normally nothing: only what was made
        moments ago)."""
        pages = ctx.client("resourcegroupstaggingapi").get_paginator("get_resources").paginate(
            TagFilters=tagging.owner_tag_filters(ctx.app, ctx.env, self.name),
            ResourceTypeFilters=["kms", "sns", "cloudwatch:alarm"], TagsPerPage=TAGS_PER_PAGE)
        return {item["ResourceARN"]: tagging.tag_dict(item.get("Tags"))
                for page in pages for item in page["ResourceTagMappingList"]}

    def _observe_key(self, ctx, alias: str, owned_tags: dict) -> ObservedKey | None:
        """The key by its alias; without one, a key of ours that a killed run left unnamed
        (one scheduled for deletion by a destroy is not one to use)."""
        kms = ctx.client("kms")
        found = unless_code({"NotFoundException"}, kms.describe_key, KeyId=alias)
        aliased = found is not None
        if found is None:
            candidates = (kms.describe_key(KeyId=arn) for arn in sorted(owned_tags) if ":key/" in arn)
            found = next((key for key in candidates if key["KeyMetadata"]["KeyState"] == "Enabled"), None)
        if found is None:
            return None
        meta = found["KeyMetadata"]
        tags = owned_tags.get(meta["Arn"])
        if tags is None:
            tags = tagging.tag_dict(kms.list_resource_tags(KeyId=meta["KeyId"]).get("Tags"), "TagKey", "TagValue")
        policy = json.loads(kms.get_key_policy(KeyId=meta["KeyId"], PolicyName="default")["Policy"])
        return ObservedKey(id=meta["KeyId"], arn=meta["Arn"], alias=alias, owned=ctx.owns(tags), aliased=aliased,
                           policy=policy, tags=tags)

    def _observe_topic(self, ctx, arn: str, owned_tags: dict) -> ObservedTopic | None:
        sns = ctx.client("sns")
        found = unless_code({"NotFound"}, sns.get_topic_attributes, TopicArn=arn)
        if found is None:
            return None
        tags = owned_tags.get(arn)
        if tags is None:
            tags = tagging.tag_dict(sns.list_tags_for_resource(ResourceArn=arn).get("Tags"))
        return ObservedTopic(arn=arn, kms_key=found["Attributes"].get("KmsMasterKeyId"), owned=ctx.owns(tags),
                             tags=tags)

    def _observe_subscriptions(self, ctx, topic_arn: str) -> dict[str, str]:
        """Email subscriptions by address: the ARN, or PENDING while the address has not confirmed."""
        pages = ctx.client("sns").get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn)
        return {item["Endpoint"]: item["SubscriptionArn"] for page in pages for item in page["Subscriptions"]
                if item["Protocol"] == EMAIL}

    def _observe_alarms(self, ctx, prefix: str, owned_tags: dict) -> dict[str, ObservedAlarm]:
        cloudwatch = ctx.client("cloudwatch")
        alarms = {}
        for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmNamePrefix=prefix,
                                                                         AlarmTypes=["MetricAlarm"]):
            for item in page["MetricAlarms"]:
                if item["AlarmName"].startswith(AUTOSCALING_ALARMS):
                    continue
                arn = item["AlarmArn"]
                tags = owned_tags.get(arn)
                if tags is None:
                    tags = tagging.tag_dict(cloudwatch.list_tags_for_resource(ResourceARN=arn).get("Tags"))
                alarms[item["AlarmName"]] = _observed_alarm(item, ctx.owns(tags), tags)
        return alarms

    def _observe_dashboard(self, ctx, name: str) -> dict | None:
        found = unless_code({"ResourceNotFound"}, ctx.client("cloudwatch").get_dashboard, DashboardName=name)
        return json.loads(found["DashboardBody"]) if found else None

    # -- plan -------------------------------------------------------------------------------

    def plan(self, desired: DashboardsDesired, observed: DashboardsFacts, recorded: dict[str, dict]) -> list[Change]:
        return [*self._plan_key(desired, observed), *self._plan_topic(desired, observed),
                *self._plan_subscriptions(desired, observed),
                *self._plan_alarms(desired, observed), *self._plan_dashboard(desired, observed)]

    def _plan_key(self, desired: DashboardsDesired, observed: DashboardsFacts) -> list[Change]:
        key, seen = desired.key, observed.key
        if key is None:
            return [_key_deletion(seen)] if seen and seen.owned else []
        if seen is None:
            return [Change("create", "key", key.alias, diffs=(FieldDiff("policy", None, key.policy),),
                           calls=("kms:CreateKey", "kms:CreateAlias"), payload=key)]
        if not seen.owned:
            raise tagging.not_ours("KMS key", key.alias, desired.tags)
        diffs = (() if seen.aliased else (FieldDiff("alias", None, key.alias),)) + \
            diff_fields(key, seen, ("policy",)) + tagging.tag_diffs(seen.tags, desired.tags)
        if not diffs:
            return []
        calls = {"alias": "kms:CreateAlias", "policy": "kms:PutKeyPolicy", "tags": "kms:TagResource"}
        return [Change("update", "key", key.alias, diffs=diffs, calls=tuple(calls[d.field] for d in diffs),
                       payload=key)]

    def _plan_topic(self, desired: DashboardsDesired, observed: DashboardsFacts) -> list[Change]:
        topic, seen = desired.topic, observed.topic
        if topic is None:
            return [_topic_deletion(seen)] if seen and seen.owned else []
        if seen is None:
            return [Change("create", "topic", topic.name, diffs=(FieldDiff("kms_key", None, topic.kms_key),),
                           calls=("sns:CreateTopic",), payload=topic)]
        if not seen.owned:
            raise tagging.not_ours("SNS topic", topic.name, desired.tags)
        diffs = diff_fields(topic, seen, ("kms_key",)) + tagging.tag_diffs(seen.tags, desired.tags)
        if not diffs:
            return []
        calls = (("sns:SetTopicAttributes",) if any(d.field == "kms_key" for d in diffs) else ()) + \
            (("sns:TagResource",) if any(d.field == "tags" for d in diffs) else ())
        return [Change("update", "topic", topic.name, diffs=diffs, calls=calls, payload=topic)]

    def _plan_subscriptions(self, desired: DashboardsDesired, observed: DashboardsFacts) -> list[Change]:
        changes = [Change("create", "subscription", email, diffs=(FieldDiff("protocol", None, EMAIL),),
                          calls=("sns:Subscribe",), payload=email,
                          note="AWS mails the address a confirmation link; alarms reach it once it is followed")
                   for email in desired.emails if email not in observed.subscriptions]
        # An unconfirmed subscription has no ARN to remove it by: SNS deletes it after three days.
        changes += [Change("delete", "subscription", email, calls=("sns:Unsubscribe",), payload=arn)
                    for email, arn in sorted(observed.subscriptions.items())
                    if email not in desired.emails and arn != PENDING]
        return changes

    def _plan_alarms(self, desired: DashboardsDesired, observed: DashboardsFacts) -> list[Change]:
        changes = []
        for alarm in desired.alarms:
            seen = observed.alarms.get(alarm.name)
            if seen is None:
                changes.append(Change("create", "alarm", alarm.name, diffs=diff_fields(alarm, None, ALARM_SUMMARY),
                                      calls=("cloudwatch:PutMetricAlarm",), payload=alarm, after=()))  # together
                continue
            if not seen.owned:
                raise tagging.not_ours("CloudWatch alarm", alarm.name, desired.tags)
            fields = diff_fields(alarm, seen, ALARM_FIELDS)
            retag = tagging.tag_diffs(seen.tags, desired.tags)
            if fields or retag:
                calls = (("cloudwatch:PutMetricAlarm",) if fields else ()) + \
                    (("cloudwatch:TagResource",) if retag else ())
                changes.append(Change("update", "alarm", alarm.name, diffs=fields + retag, calls=calls,
                                      payload=alarm))
        wanted = {alarm.name for alarm in desired.alarms}
        gone = sorted(name for name, seen in observed.alarms.items() if seen.owned and name not in wanted)
        if gone:
            changes.append(_alarms_deletion(gone, "no longer in the manifest"))
        return changes

    def _plan_dashboard(self, desired: DashboardsDesired, observed: DashboardsFacts) -> list[Change]:
        dashboard = desired.dashboard
        if observed.dashboard == dashboard.body:
            return []
        action = "create" if observed.dashboard is None else "update"
        # The body is long: the plan names the widgets that differ, by title.
        return [Change(action, "dashboard", dashboard.name,
                       diffs=(FieldDiff("widgets", cloudwatch_content.widget_titles(observed.dashboard),
                                        cloudwatch_content.widget_titles(dashboard.body)),),
                       calls=("cloudwatch:PutDashboard",), payload=dashboard)]

    # -- apply ------------------------------------------------------------------------------

    def _create_key(self, ctx, change: Change, observed: DashboardsFacts) -> None:
        key: Key = change.payload
        kms = ctx.client("kms")
        meta = kms.create_key(Description=key.description, Policy=json.dumps(key.policy),
                              Tags=tagging.tag_list(ctx.tags(), "TagKey", "TagValue"))["KeyMetadata"]
        kms.create_alias(AliasName=key.alias, TargetKeyId=meta["KeyId"])
        observed.key = ObservedKey(meta["KeyId"], meta["Arn"], key.alias, True, True, key.policy, ctx.tags())

    def _update_key(self, ctx, change: Change, observed: DashboardsFacts) -> None:
        key: Key = change.payload
        kms, seen = ctx.client("kms"), observed.key
        if change.differs("alias"):
            kms.create_alias(AliasName=key.alias, TargetKeyId=seen.id)
            seen.aliased = True
        if change.differs("policy"):
            kms.put_key_policy(KeyId=seen.id, PolicyName="default", Policy=json.dumps(key.policy))
            seen.policy = key.policy
        if change.differs("tags"):
            to_set = change.tags_to_set()
            kms.tag_resource(KeyId=seen.id, Tags=tagging.tag_list(to_set, "TagKey", "TagValue"))
            seen.tags = {**seen.tags, **to_set}

    def _delete_key(self, ctx, change: Change, observed: DashboardsFacts) -> None:
        kms, seen = ctx.client("kms"), observed.key
        if seen.aliased:
            unless_code({"NotFoundException"}, kms.delete_alias, AliasName=seen.alias)
        kms.schedule_key_deletion(KeyId=seen.id, PendingWindowInDays=KEY_DELETION_DAYS)
        observed.key = None

    def _create_topic(self, ctx, change: Change, observed: DashboardsFacts) -> None:
        topic: Topic = change.payload
        arn = ctx.client("sns").create_topic(Name=topic.name, Attributes={"KmsMasterKeyId": topic.kms_key},
                                             Tags=tagging.tag_list(ctx.tags()))["TopicArn"]
        observed.topic = ObservedTopic(arn=arn, kms_key=topic.kms_key, owned=True, tags=ctx.tags())

    def _update_topic(self, ctx, change: Change, observed: DashboardsFacts) -> None:
        topic: Topic = change.payload
        sns, seen = ctx.client("sns"), observed.topic
        if change.differs("kms_key"):
            sns.set_topic_attributes(TopicArn=seen.arn, AttributeName="KmsMasterKeyId", AttributeValue=topic.kms_key)
            seen.kms_key = topic.kms_key
        if change.differs("tags"):
            to_set = change.tags_to_set()
            sns.tag_resource(ResourceArn=seen.arn, Tags=tagging.tag_list(to_set))
            seen.tags = {**seen.tags, **to_set}

    def _delete_topic(self, ctx, change: Change, observed: DashboardsFacts) -> None:
        # Deleting a topic deletes its subscriptions with it, pending ones included.
        ctx.client("sns").delete_topic(TopicArn=observed.topic.arn)
        observed.topic, observed.subscriptions = None, {}

    def _create_subscription(self, ctx, change: Change, observed: DashboardsFacts) -> None:
        email = change.payload
        sns = ctx.client("sns")
        arn = sns.subscribe(TopicArn=observed.topic.arn, Protocol=EMAIL, Endpoint=email,
                            ReturnSubscriptionArn=True)["SubscriptionArn"]
        # An email subscription waits for the address to follow the link AWS mails it (the ARN
        # comes back all the same); the outputs say which.
        attributes = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
        observed.subscriptions[email] = PENDING if attributes.get("PendingConfirmation") == "true" else arn

    def _delete_subscription(self, ctx, change: Change, observed: DashboardsFacts) -> None:
        unless_code({"NotFound"}, ctx.client("sns").unsubscribe, SubscriptionArn=change.payload)
        observed.subscriptions.pop(change.name, None)

    def _create_alarm(self, ctx, change: Change, observed: DashboardsFacts) -> None:
        alarm: Alarm = change.payload
        ctx.client("cloudwatch").put_metric_alarm(**cloudwatch_content.alarm_params(alarm),
                                                  Tags=tagging.tag_list(ctx.tags()))
        observed.alarms[alarm.name] = _as_observed(alarm, ctx.tags(), arn="", state="")

    def _update_alarm(self, ctx, change: Change, observed: DashboardsFacts) -> None:
        """PutMetricAlarm replaces the whole alarm (and ignores Tags for one that exists)."""
        alarm: Alarm = change.payload
        cloudwatch, seen = ctx.client("cloudwatch"), observed.alarms[alarm.name]
        if any(diff.field != "tags" for diff in change.diffs):
            cloudwatch.put_metric_alarm(**cloudwatch_content.alarm_params(alarm))
        tags = seen.tags
        if change.differs("tags"):
            to_set = change.tags_to_set()
            cloudwatch.tag_resource(ResourceARN=seen.arn, Tags=tagging.tag_list(to_set))
            tags = {**tags, **to_set}
        observed.alarms[alarm.name] = _as_observed(alarm, tags, seen.arn, seen.state)

    def _delete_alarms(self, ctx, change: Change, observed: DashboardsFacts) -> None:
        names = list(change.payload)
        for start in range(0, len(names), DELETE_ALARMS_BATCH):
            ctx.client("cloudwatch").delete_alarms(AlarmNames=names[start:start + DELETE_ALARMS_BATCH])
        for name in names:
            observed.alarms.pop(name, None)

    def _create_dashboard(self, ctx, change: Change, observed: DashboardsFacts) -> None:
        dashboard: Dashboard = change.payload
        ctx.client("cloudwatch").put_dashboard(DashboardName=dashboard.name,
                                               DashboardBody=cloudwatch_content.canonical(dashboard.body))
        observed.dashboard = dashboard.body


    def _delete_dashboard(self, ctx, change: Change, observed: DashboardsFacts) -> None:
        unless_code({"ResourceNotFound"}, ctx.client("cloudwatch").delete_dashboards, DashboardNames=[change.name])
        observed.dashboard = None

    handlers = {
        ("create", "key"): _create_key,
        ("update", "key"): _update_key,
        ("delete", "key"): _delete_key,
        ("create", "topic"): _create_topic,
        ("update", "topic"): _update_topic,
        ("delete", "topic"): _delete_topic,
        ("create", "subscription"): _create_subscription,
        ("delete", "subscription"): _delete_subscription,
        ("create", "alarm"): _create_alarm,
        ("update", "alarm"): _update_alarm,
        ("delete", "alarms"): _delete_alarms,
        ("create", "dashboard"): _create_dashboard,
        ("update", "dashboard"): _create_dashboard,
        ("delete", "dashboard"): _delete_dashboard,
    }

    # -- outputs and destroy ----------------------------------------------------------------

    def outputs(self, desired: DashboardsDesired, observed: DashboardsFacts) -> DashboardsOutputs:
        topic = observed.topic
        return DashboardsOutputs(
            topic_arn=topic.arn if topic else (Unknown(f"{self.name}.topic_arn") if desired.topic else ""),
            subscriptions={email: "pending confirmation" if arn == PENDING else "confirmed"
                           for email, arn in sorted(observed.subscriptions.items()) if email in desired.emails},
            alarm_names=[alarm.name for alarm in desired.alarms],
            dashboard_name=desired.dashboard.name,
            alb_url=desired.alb_url, grafana_url=desired.grafana_url)

    def gone(self, ctx, arns: list[str]) -> set[str]:
        """KMS keys pending deletion, which the tagging API lists until their deletion date."""
        kms = ctx.client("kms")

        def going(arn: str) -> bool:
            answer = unless_code({"NotFoundException"}, kms.describe_key, KeyId=arn)
            return answer is None or answer["KeyMetadata"]["KeyState"] in ("PendingDeletion", "PendingReplicaDeletion")

        keys = tagging.arns_of(arns, "kms", "key")
        return {arn for arn, gone in zip(keys, ctx.each("kms", going, keys), strict=True) if gone}

    def plan_destroy(self, observed: DashboardsFacts) -> list[Change]:
        """Alarms, the dashboard, the topic with its subscriptions, then its key: only what is
        ours (the dashboard takes no tags: it is ours by its name)."""
        changes = []
        ours = sorted(name for name, seen in observed.alarms.items() if seen.owned)
        if ours:
            changes.append(_alarms_deletion(ours, "the environment is destroyed"))
        if observed.dashboard is not None:
            changes.append(Change("delete", "dashboard", observed.dashboard_name,
                                  calls=("cloudwatch:DeleteDashboards",)))
        if observed.topic is not None and observed.topic.owned:
            changes += [Change("delete", "subscription", email, calls=("sns:Unsubscribe",), payload=arn)
                        for email, arn in sorted(observed.subscriptions.items()) if arn != PENDING]
            changes.append(_topic_deletion(observed.topic))
        if observed.key is not None and observed.key.owned:
            changes.append(_key_deletion(observed.key))
        return changes

    # -- status --live ------------------------------------------------------------------------

    def live(self, ctx, outputs: dict) -> dict:
        """What `status --live` shows of this step: every alarm's state by what it watches (one
        `describe_alarms` read), and the URLs of the load balancer and of Grafana."""
        prefix = f"{ctx.manifest.prefix}-"
        states: dict[str, dict[str, str]] = {}
        pages = ctx.client("cloudwatch").get_paginator("describe_alarms").paginate(AlarmNamePrefix=prefix,
                                                                                   AlarmTypes=["MetricAlarm"])
        known = set(outputs.get("alarm_names") or [])
        for page in pages:
            for item in page["MetricAlarms"]:
                if item["AlarmName"] in known:
                    subject, check = cloudwatch_content.subject_and_check(item["AlarmName"], prefix)
                    states.setdefault(subject, {})[check] = item["StateValue"]
        alb_url, grafana_url = outputs.get("alb_url", ""), outputs.get("grafana_url", "")
        lines = [f"load balancer  {alb_url or '(not known)'}", f"Grafana        {grafana_url or '(not known)'}"]
        lines += [f"{subject:<28} {', '.join(f'{check} {state}' for check, state in sorted(checks.items()))}"
                  for subject, checks in sorted(states.items())]
        return {"title": "alerting", "alb_url": alb_url, "grafana_url": grafana_url, "alarms": states,
                "lines": lines}


# --- helpers ---------------------------------------------------------------------------------


def _observed_alarm(item: dict, owned: bool, tags: dict[str, str]) -> ObservedAlarm:
    """An alarm as `describe_alarms` answers it, in the desired model's terms."""
    return ObservedAlarm(
        name=item["AlarmName"], arn=item["AlarmArn"], owned=owned, state=item.get("StateValue", ""), tags=tags,
        namespace=item.get("Namespace"), metric=item.get("MetricName"), statistic=item.get("Statistic"),
        dimensions=tuple(sorted((d["Name"], d["Value"]) for d in item.get("Dimensions", []))),
        period=item.get("Period"), evaluation_periods=item.get("EvaluationPeriods"),
        datapoints_to_alarm=item.get("DatapointsToAlarm"), threshold=item.get("Threshold"),
        comparison=item.get("ComparisonOperator"), treat_missing_data=item.get("TreatMissingData"),
        actions_enabled=item.get("ActionsEnabled"), alarm_actions=tuple(item.get("AlarmActions", [])),
        ok_actions=tuple(item.get("OKActions", [])),
        insufficient_data_actions=tuple(item.get("InsufficientDataActions", [])),
        description=item.get("AlarmDescription"))


def _as_observed(alarm: Alarm, tags: dict[str, str], arn: str, state: str) -> ObservedAlarm:
    """What an alarm AWS accepted now is (no second read)."""
    return ObservedAlarm(alarm.name, arn, True, state, tags=tags,
                         **{name: getattr(alarm, name) for name in ALARM_FIELDS})


def _alarms_deletion(names: list[str], why: str) -> Change:
    return Change("delete", "alarms", f"{len(names)} alarm(s)", diffs=(FieldDiff("names", names, None),),
                  calls=("cloudwatch:DeleteAlarms",), payload=tuple(names), note=why)


def _key(manifest, inputs, alias: str) -> Key:
    """The topic's key: the account administers it (as every key's default policy says), and
    CloudWatch may use it to publish alarms of this environment, and nothing else."""
    root = f"arn:{inputs.partition}:iam::{inputs.account_id}:root"
    alarms = f"arn:{inputs.partition}:cloudwatch:{inputs.region}:{inputs.account_id}:alarm:{manifest.prefix}-*"
    return Key(alias=alias, description=f"{manifest.prefix}: encrypts the alert topic's messages at rest", policy={
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "AccountAdministersTheKey", "Effect": "Allow", "Principal": {"AWS": root}, "Action": "kms:*",
             "Resource": "*"},
            {"Sid": "CloudWatchPublishesThisEnvironmentsAlarms", "Effect": "Allow",
             "Principal": {"Service": "cloudwatch.amazonaws.com"},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*",
             "Condition": {"StringEquals": {"aws:SourceAccount": inputs.account_id},
                           "ArnLike": {"aws:SourceArn": alarms}}}]})


def _key_deletion(seen: ObservedKey) -> Change:
    return Change("delete", "key", seen.alias,
                  calls=(("kms:DeleteAlias",) if seen.aliased else ()) + ("kms:ScheduleKeyDeletion",),
                  note=f"KMS deletes the key {KEY_DELETION_DAYS} days later (its shortest wait)")


def _topic_deletion(seen: ObservedTopic) -> Change:
    return Change("delete", "topic", seen.arn.rsplit(":", 1)[-1], calls=("sns:DeleteTopic",),
                  note="its email subscriptions go with it")


STEP = DashboardsStep
