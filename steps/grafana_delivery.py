"""How the grafana container delivers alert notifications: the Slack webhook and the mail
server's password from Secrets Manager, the mail server's plain settings, and what plan must say
when critical alerts cannot be emailed.

Apart from `steps/grafana_content.py` (which builds the dashboards and alerting files with
grafana-foundation-sdk) because every plan needs these, while the files it renders are usually
kept from an earlier run (`steps/bundles.py`): a plan then never imports the SDK.
"""
from __future__ import annotations

#: Environment variable of the grafana container holding the Slack webhook (from Secrets Manager);
#: Grafana replaces `${...}` in a provisioned contact point's settings with it.
SLACK_WEBHOOK_VARIABLE = "GAMEPULSE_SLACK_WEBHOOK_URL"


def container_secrets(manifest) -> dict[str, str]:
    """Environment of the grafana container from Secrets Manager that its alerting needs."""
    if manifest.alerting is None:
        return {}
    secrets = {SLACK_WEBHOOK_VARIABLE: manifest.alerting.slack_webhook_secret}
    smtp = manifest.alerting.smtp
    if smtp is not None and smtp.password_secret:
        secrets["GF_SMTP_PASSWORD"] = smtp.password_secret
    return secrets


def container_environment(manifest) -> dict[str, str]:
    """Plain environment of the grafana container for its alerting: the mail server critical
    alerts are sent through (Grafana's [smtp] settings), when the manifest names one."""
    smtp = manifest.alerting.smtp if manifest.alerting is not None else None
    if smtp is None:
        return {}
    environment = {"GF_SMTP_ENABLED": "true", "GF_SMTP_HOST": smtp.host, "GF_SMTP_FROM_ADDRESS": smtp.from_address}
    if smtp.user:
        environment["GF_SMTP_USER"] = smtp.user
    return environment


def delivery_notes(manifest) -> tuple[str, ...]:
    """What plan must say about notifications that cannot reach anyone."""
    if manifest.alerting is not None and manifest.alerting.smtp is None:
        return (f"critical alerts cannot be emailed to {', '.join(manifest.alerting.email_addresses)}: Grafana has no "
                "mail server (set alerting.smtp); they still reach Slack, and the CloudWatch alarms still email "
                "through the SNS topic",)
    return ()
