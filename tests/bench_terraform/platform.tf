# Steps iam, ecs and alb: roles, the cluster with its log groups and namespace, the load balancer.

locals {
  log_groups    = ["gamepulse", "otel-collector", "prometheus", "loki", "jaeger", "grafana"]
  cluster_arn   = "arn:aws:ecs:us-east-1:${local.account}:cluster/${local.prefix}"
  config_bucket = "arn:aws:s3:::${local.prefix}-config-${local.account}"
  loki_bucket   = "arn:aws:s3:::${local.prefix}-loki-chunks-${local.account}"
  task_roles    = ["gamepulse", "loki", "prometheus", "grafana", "jaeger", "otel-collector"]
  ecs_describe = [
    { Sid = "EcsDescribeCluster", Effect = "Allow", Action = ["ecs:DescribeClusters"], Resource = local.cluster_arn },
    { Sid = "EcsDescribeServicesAndTasks", Effect = "Allow", Action = ["ecs:DescribeServices", "ecs:DescribeTasks"],
      Resource = ["arn:aws:ecs:us-east-1:${local.account}:service/${local.prefix}/*",
    "arn:aws:ecs:us-east-1:${local.account}:task/${local.prefix}/*"] },
    { Sid = "EcsListInCluster", Effect = "Allow", Action = ["ecs:ListServices", "ecs:ListTasks"], Resource = "*",
    Condition = { ArnEquals = { "ecs:cluster" = local.cluster_arn } } },
  ]
  cloudwatch_read = [
    { Sid = "CloudWatchRead", Effect = "Allow", Resource = "*", Action = ["cloudwatch:DescribeAlarms",
      "cloudwatch:GetMetricData", "cloudwatch:GetMetricStatistics", "cloudwatch:ListMetrics",
    "logs:DescribeLogGroups", "logs:GetQueryResults"] },
    { Sid = "LogEventsRead", Effect = "Allow", Resource = "arn:aws:logs:us-east-1:${local.account}:log-group:*",
    Action = ["logs:FilterLogEvents", "logs:GetLogEvents", "logs:GetLogGroupFields", "logs:StartQuery"] },
  ]
  # Each task role's grants (manifests/gamepulse.yaml iam.task_roles), after the config-bundle read all have.
  extra_grants = {
    gamepulse        = []
    jaeger           = []
    "otel-collector" = []
    loki = [
      { Sid = "LokiChunksReadWrite", Effect = "Allow", Action = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
      Resource = "${local.loki_bucket}/*" },
      { Sid = "LokiChunksList", Effect = "Allow", Action = ["s3:ListBucket"], Resource = local.loki_bucket },
    ]
    prometheus = concat(local.cloudwatch_read, local.ecs_describe, [
      { Sid = "EcsCredentialCheck", Effect = "Allow", Action = ["ecs:DescribeClusters"],
      Resource = "arn:aws:ecs:us-east-1:${local.account}:cluster/default" },
      { Sid = "TaskNetworkInterfaces", Effect = "Allow", Action = ["ec2:DescribeNetworkInterfaces"], Resource = "*" },
    ])
    grafana = concat(local.cloudwatch_read, local.ecs_describe)
  }
  ecs_tasks_trust = jsonencode({ Version = "2012-10-17", Statement = [{
    Effect    = "Allow", Principal = { Service = "ecs-tasks.amazonaws.com" }, Action = "sts:AssumeRole",
    Condition = { StringEquals = { "aws:SourceAccount" = local.account } }
  }] })
}

# ECS creates it on a fresh account's first cluster with capacity providers; the orchestrator
# creates it first (AWS refuses that first CreateCluster while it makes the role).
resource "aws_iam_service_linked_role" "ecs" {
  aws_service_name = "ecs.amazonaws.com"
}

resource "aws_iam_role" "execution" {
  name               = "${local.prefix}-execution"
  assume_role_policy = local.ecs_tasks_trust
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_iam_role_policy" "read_secrets" {
  name = "read-secrets"
  role = aws_iam_role.execution.id
  policy = jsonencode({ Version = "2012-10-17", Statement = [{
    Sid      = "ReadPlatformSecrets", Effect = "Allow", Action = ["secretsmanager:GetSecretValue"],
    Resource = [for secret in aws_secretsmanager_secret.main : secret.arn]
  }] })
}

resource "aws_iam_role" "task" {
  for_each           = toset(local.task_roles)
  name               = "${local.prefix}-task-${each.key}"
  assume_role_policy = local.ecs_tasks_trust
}

resource "aws_iam_role_policy" "grants" {
  for_each = aws_iam_role.task
  name     = "grants"
  role     = each.value.id
  policy = jsonencode({ Version = "2012-10-17", Statement = concat([
    { Sid = "ConfigBundleRead", Effect = "Allow", Action = ["s3:GetObject"], Resource = "${local.config_bucket}/${each.key}/*" },
    { Sid = "ConfigBundleList", Effect = "Allow", Action = ["s3:ListBucket"], Resource = local.config_bucket,
    Condition = { StringLike = { "s3:prefix" = ["${each.key}/*"] } } },
  ], local.extra_grants[each.key]) })
}

resource "aws_ecs_cluster" "main" {
  name = local.prefix
  setting {
    name  = "containerInsights"
    value = "enhanced"
  }
  depends_on = [aws_iam_service_linked_role.ecs]
}

resource "aws_ecs_cluster_capacity_providers" "main" {
  cluster_name       = aws_ecs_cluster.main.name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]
  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
    base              = 0
  }
}

resource "aws_cloudwatch_log_group" "task" {
  for_each          = toset(local.log_groups)
  name              = "/ecs/${local.prefix}/${each.key}"
  retention_in_days = 30
}

resource "aws_service_discovery_private_dns_namespace" "main" {
  name = "${local.prefix}.local"
  vpc  = aws_vpc.main.id
}

resource "aws_lb" "main" {
  name                       = local.prefix
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = [for subnet in aws_subnet.public : subnet.id]
  security_groups            = [aws_security_group.main["alb"].id]
  idle_timeout               = 60
  enable_deletion_protection = false
}

resource "aws_lb_target_group" "main" {
  for_each    = { gamepulse = { port = 8080, path = "/health" }, grafana = { port = 3000, path = "/grafana/api/health" } }
  name        = "${local.prefix}-${each.key}"
  port        = each.value.port
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = aws_vpc.main.id
  health_check {
    path    = each.value.path
    matcher = "200"
  }
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.main.arn
  port              = 80
  protocol          = "HTTP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.main["gamepulse"].arn
  }
}

resource "aws_lb_listener_rule" "grafana" {
  listener_arn = aws_lb_listener.http.arn
  priority     = 10
  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.main["grafana"].arn
  }
  condition {
    path_pattern {
      values = ["/grafana*"]
    }
  }
}
