# Steps services and dashboards: task definitions, ECS services, the alerts topic,
# CloudWatch alarms and dashboard.

locals {
  init_image = "public.ecr.aws/aws-cli/aws-cli:2.27.50"
  # manifests/gamepulse.yaml services.tasks (dev): sizes, deployment, capacity, group, target group, EFS.
  services = {
    gamepulse  = { bundle = "otel-collector", cpu = 512, memory = 1024, count = 2, min = 100, max = 200, spot = false, group = "app", target = "gamepulse", port = 8080, data = null, stop = 0 }
    prometheus = { bundle = "prometheus", cpu = 512, memory = 1024, count = 1, min = 0, max = 100, spot = true, group = "monitoring", target = null, port = 0, data = "prometheus", stop = 0 }
    loki       = { bundle = "loki", cpu = 512, memory = 1024, count = 1, min = 100, max = 200, spot = true, group = "monitoring", target = null, port = 0, data = null, stop = 120 }
    jaeger     = { bundle = "jaeger", cpu = 512, memory = 1024, count = 1, min = 100, max = 200, spot = true, group = "monitoring", target = null, port = 0, data = null, stop = 0 }
    grafana    = { bundle = "grafana", cpu = 256, memory = 512, count = 1, min = 0, max = 100, spot = true, group = "monitoring", target = "grafana", port = 3000, data = "grafana", stop = 0 }
  }
  secret_arns = { for key, secret in aws_secretsmanager_secret.main : key => secret.arn }

  containers = { for name, service in local.services : name => concat(
    [{
      name = "config-init", image = local.init_image, essential = false,
      command = ["s3", "cp", "--recursive", "--only-show-errors",
      "s3://${aws_s3_bucket.main["config"].id}/${var.bundles[service.bundle].prefix}", "/bundle"]
      mountPoints      = [{ sourceVolume = "config", containerPath = "/bundle" }]
      logConfiguration = local.logs[name]["config-init"]
    }],
    [merge({
      name         = service.bundle, image = var.bundles[service.bundle].image, essential = true,
      portMappings = [for port in var.bundles[service.bundle].ports : { containerPort = port, protocol = "tcp" }]
      environment  = [for key, value in var.bundles[service.bundle].environment : { name = key, value = value }]
      secrets      = [for key, secret in var.bundles[service.bundle].secrets : { name = key, valueFrom = local.secret_arns[secret] }]
      mountPoints = concat([{ sourceVolume = "config", containerPath = var.bundles[service.bundle].config_dir, readOnly = true }],
      service.data == null ? [] : [{ sourceVolume = "data", containerPath = var.bundles[service.bundle].data_dir }])
      dependsOn        = [{ containerName = "config-init", condition = "SUCCESS" }]
      logConfiguration = local.logs[name][service.bundle]
      },
      length(var.bundles[service.bundle].command) > 0 ? { command = var.bundles[service.bundle].command } : {},
      var.bundles[service.bundle].memory > 0 ? { memory = var.bundles[service.bundle].memory } : {},
      length(var.bundles[service.bundle].health_check) > 0 ? { healthCheck = {
        command = var.bundles[service.bundle].health_check, interval = 15, timeout = 5, retries = 3, startPeriod = 10
      } } : {},
      service.stop > 0 ? { stopTimeout = service.stop } : {},
    )],
    name == "gamepulse" ? [{
      name             = "app", image = "${aws_ecr_repository.gamepulse.repository_url}@${data.aws_ecr_image.gamepulse.image_digest}"
      essential        = true
      portMappings     = [{ containerPort = 8080, protocol = "tcp" }]
      environment      = [for key, value in var.app_environment : { name = key, value = value }]
      secrets          = [{ name = "ConnectionStrings__GamePulse", valueFrom = local.secret_arns["db-connection"] }]
      logConfiguration = local.logs[name]["app"]
      dependsOn        = [{ containerName = service.bundle, condition = "HEALTHY" }]
    }] : [],
  ) }
  logs = { for name, service in local.services : name => { for container in ["config-init", service.bundle, "app"] : container => {
    logDriver = "awslogs"
    options = { "awslogs-group" = aws_cloudwatch_log_group.task[name].name, "awslogs-region" = "us-east-1",
    "awslogs-stream-prefix" = container }
  } } }
}

resource "aws_ecs_task_definition" "main" {
  for_each                 = local.services
  family                   = "${local.prefix}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task[each.key].arn
  container_definitions    = jsonencode(local.containers[each.key])
  volume {
    name = "config"
  }
  dynamic "volume" {
    for_each = each.value.data == null ? [] : [each.value.data]
    content {
      name = "data"
      efs_volume_configuration {
        file_system_id     = aws_efs_file_system.data.id
        transit_encryption = "ENABLED"
        authorization_config {
          access_point_id = aws_efs_access_point.data[volume.value].id
          iam             = "ENABLED"
        }
      }
    }
  }
}

resource "aws_service_discovery_service" "main" {
  for_each = local.services
  name     = each.key
  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.main.id
    routing_policy = "MULTIVALUE"
    dns_records {
      type = "A"
      ttl  = 10
    }
  }
  health_check_custom_config {
    failure_threshold = 1
  }
}

resource "aws_ecs_service" "main" {
  for_each                           = local.services
  name                               = each.key
  cluster                            = aws_ecs_cluster.main.arn
  task_definition                    = aws_ecs_task_definition.main[each.key].arn
  desired_count                      = each.value.count
  deployment_minimum_healthy_percent = each.value.min
  deployment_maximum_percent         = each.value.max
  health_check_grace_period_seconds  = each.value.target == null ? null : 60
  propagate_tags                     = "SERVICE"
  enable_ecs_managed_tags            = true
  scheduling_strategy                = "REPLICA"
  capacity_provider_strategy {
    capacity_provider = each.value.spot ? "FARGATE_SPOT" : "FARGATE"
    weight            = 1
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  network_configuration {
    subnets          = [for subnet in aws_subnet.private : subnet.id]
    security_groups  = [aws_security_group.main[each.value.group].id]
    assign_public_ip = false
  }
  dynamic "load_balancer" {
    for_each = each.value.target == null ? [] : [each.value.target]
    content {
      target_group_arn = aws_lb_target_group.main[load_balancer.value].arn
      container_name   = each.key == "gamepulse" ? "app" : each.key
      container_port   = each.value.port
    }
  }
  service_registries {
    registry_arn = aws_service_discovery_service.main[each.key].arn
  }
  depends_on = [aws_lb_listener_rule.grafana, aws_ecs_cluster_capacity_providers.main]
  # moto drops these on CreateService: DescribeServices answers
  # launchType EC2 and no capacity provider strategy, grace period, managed tags or deployment
  # controller, which would make every apply replace the services.
  lifecycle {
    ignore_changes = [capacity_provider_strategy, health_check_grace_period_seconds, enable_ecs_managed_tags,
    availability_zone_rebalancing, deployment_controller, service_registries]
  }
}

# Left out: the autoscaling of gamepulse (aws_appautoscaling_target, 2..10 tasks, and its target
# tracking policy on CPU 60 %). The provider reads a scalable target's tags with
# ListTagsForResource, which moto does not implement (HTTP 500): it retries for minutes, then fails.

locals {
  # manifests/gamepulse.yaml alerting.cloudwatch; each alarm as steps/cloudwatch_content.py makes it.
  lb_dimension = { LoadBalancer = aws_lb.main.arn_suffix }
  alarms = merge(
    { "alb-5xx" = { namespace = "AWS/ApplicationELB", metric = "HTTPCode_ELB_5XX_Count", statistic = "Sum", threshold = 10,
    dimensions = local.lb_dimension, description = "The load balancer itself answers 5XX (no healthy target, timeouts)" } },
    merge([for key, group in aws_lb_target_group.main : {
      "tg-${key}-response-time" = { namespace = "AWS/ApplicationELB", metric = "TargetResponseTime", statistic = "Average",
        threshold = 1, dimensions = merge(local.lb_dimension, { TargetGroup = group.arn_suffix }),
      description = "Targets of ${key} answer slowly (seconds)" }
      "tg-${key}-unhealthy-hosts" = { namespace = "AWS/ApplicationELB", metric = "UnHealthyHostCount", statistic = "Maximum",
        threshold = 1, dimensions = merge(local.lb_dimension, { TargetGroup = group.arn_suffix }),
      description = "Targets of ${key} fail their health check" }
    }]...),
    merge([for name, service in aws_ecs_service.main : {
      "svc-${name}-cpu" = { namespace = "AWS/ECS", metric = "CPUUtilization", statistic = "Average", threshold = 90,
        dimensions = { ClusterName = aws_ecs_cluster.main.name, ServiceName = service.name },
      description = "ECS service ${name} uses much of its CPU (percent)" }
      "svc-${name}-memory" = { namespace = "AWS/ECS", metric = "MemoryUtilization", statistic = "Average", threshold = 90,
        dimensions = { ClusterName = aws_ecs_cluster.main.name, ServiceName = service.name },
      description = "ECS service ${name} uses much of its memory (percent)" }
    }]...),
  )
}

# CloudWatch cannot use alias/aws/sns: the topic is encrypted with a key whose policy lets it.
resource "aws_kms_key" "alerts" {
  description         = "${local.prefix} alerts topic"
  enable_key_rotation = true
  policy = jsonencode({ Version = "2012-10-17", Statement = [
    { Sid = "Account", Effect = "Allow", Principal = { AWS = "arn:aws:iam::${local.account}:root" }, Action = "kms:*", Resource = "*" },
    { Sid = "CloudWatchAlarms", Effect = "Allow", Principal = { Service = "cloudwatch.amazonaws.com" },
    Action = ["kms:Decrypt", "kms:GenerateDataKey*"], Resource = "*" },
  ] })
}

resource "aws_kms_alias" "alerts" {
  name          = "alias/${local.prefix}-alerts"
  target_key_id = aws_kms_key.alerts.key_id
}

resource "aws_sns_topic" "alerts" {
  name              = "${local.prefix}-alerts"
  kms_master_key_id = aws_kms_key.alerts.arn
}

resource "aws_sns_topic_subscription" "email" {
  topic_arn = aws_sns_topic.alerts.arn
  protocol  = "email"
  endpoint  = "platform-oncall@gamepulse.example"
}

resource "aws_cloudwatch_metric_alarm" "main" {
  for_each            = local.alarms
  alarm_name          = "${local.prefix}-${each.key}"
  alarm_description   = each.value.description
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  statistic           = each.value.statistic
  dimensions          = each.value.dimensions
  threshold           = each.value.threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alerts.arn]
  ok_actions          = [aws_sns_topic.alerts.arn]
}

resource "aws_cloudwatch_dashboard" "main" {
  dashboard_name = local.prefix
  dashboard_body = jsonencode({ widgets = [
    for index, widget in [
      { title = "Load balancer: requests and 5XX", metrics = [
        ["AWS/ApplicationELB", "RequestCount", "LoadBalancer", aws_lb.main.arn_suffix],
      ["AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", "LoadBalancer", aws_lb.main.arn_suffix]] },
      { title = "ECS CPU (%)", metrics = [for name, service in aws_ecs_service.main :
      ["AWS/ECS", "CPUUtilization", "ClusterName", aws_ecs_cluster.main.name, "ServiceName", service.name]] },
      { title = "ECS memory (%)", metrics = [for name, service in aws_ecs_service.main :
      ["AWS/ECS", "MemoryUtilization", "ClusterName", aws_ecs_cluster.main.name, "ServiceName", service.name]] },
      ] : {
      type       = "metric", x = 12 * (index % 2), y = 6 * floor(index / 2), width = 12, height = 6,
      properties = { title = widget.title, region = "us-east-1", stat = "Average", period = 60, metrics = widget.metrics }
    }
  ] })
}
