"""Operator commands that prove a deployed environment works: `verify` (end to end: traffic,
traces, logs, metrics, dashboards, alert rules, alarms), `loadtest` (k6, with autoscaling and
monitoring overhead observed) and `drill` (notifications, a task failure, an alert's path).

They read what `apply` recorded (the steps' outputs in the state table) and ask AWS and Grafana
what is true now; they change nothing but what a drill says it changes, and restores.
"""
