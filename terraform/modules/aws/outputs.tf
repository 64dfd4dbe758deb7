output "cluster_name" {
  description = "Name of the swarm cluster."
  value       = local.cluster
}

output "manager_private_ips" {
  description = "Private IPv4 addresses of the manager instances, in index order."
  value       = aws_instance.manager[*].private_ip
}

output "worker_private_ips" {
  description = "Private IPv4 addresses of the worker instances, in index order."
  value       = aws_instance.worker[*].private_ip
}

output "manager_instance_ids" {
  description = "EC2 instance ids of the managers, in index order (targets for SSM sessions)."
  value       = aws_instance.manager[*].id
}

output "worker_instance_ids" {
  description = "EC2 instance ids of the workers, in index order."
  value       = aws_instance.worker[*].id
}

output "lb_url" {
  description = "URL of the network load balancer's first port (null without lb_ports)."
  value       = length(var.lb_ports) > 0 ? "http://${aws_lb.this[0].dns_name}:${var.lb_ports[0]}" : null
}

output "coordinator_url" {
  description = "Always null on AWS: the agents rendezvous through Secrets Manager (see secret_name and manager_secret_name), not a coordinator."
  value       = null
}

output "secret_name" {
  description = "Name of the shared rendezvous secret S (every node reads and writes it). Created by the module and scheduled for deletion by `terraform destroy`."
  value       = aws_secretsmanager_secret.rendezvous.name
}

output "manager_secret_name" {
  description = "Name of the managers-only secret (secret_name followed by /managers: manager join token, init election). Created by the module and scheduled for deletion by `terraform destroy`."
  value       = aws_secretsmanager_secret.managers.name
}

output "vpc_id" {
  description = "Id of the cluster's VPC."
  value       = aws_vpc.this.id
}

output "status_commands" {
  description = "Per node: the AWS CLI command that prints `swarm-agent status` on it through SSM Session Manager (needs the session-manager-plugin)."
  value = merge(
    { for i, inst in aws_instance.manager : "${local.prefix}-manager-${i + 1}" => "aws ssm start-session --region ${local.region} --target ${inst.id} --document-name AWS-StartInteractiveCommand --parameters command='sudo swarm-agent status'" },
    { for i, inst in aws_instance.worker : "${local.prefix}-worker-${i + 1}" => "aws ssm start-session --region ${local.region} --target ${inst.id} --document-name AWS-StartInteractiveCommand --parameters command='sudo swarm-agent status'" },
  )
}

output "shell_first_manager" {
  description = "AWS CLI command for a shell on the first manager (SSM Session Manager), e.g. to run `docker node ls`."
  value       = "aws ssm start-session --region ${local.region} --target ${aws_instance.manager[0].id}"
}
