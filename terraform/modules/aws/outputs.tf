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
  description = "backend \"coordinator\": URL the agents use to reach the coordinator (its fixed private address). null with the other backends (secrets-manager: see secret_name and manager_secret_name)."
  value       = local.coordinator ? local.coordinator_url : null
}

output "coordinator_fingerprint" {
  description = "backend \"coordinator\": sha256 pin of the coordinator's certificate, as written into every agent's config. null with the other backends."
  value       = local.coordinator ? local.coordinator_fingerprint : null
}

output "secret_name" {
  description = "backend \"secrets-manager\": name of the shared rendezvous secret S (every node reads and writes it). Created by the module and scheduled for deletion by `terraform destroy`. null with the other backends."
  value       = local.secrets_manager ? aws_secretsmanager_secret.rendezvous[0].name : null
}

output "manager_secret_name" {
  description = "backend \"secrets-manager\": name of the managers-only secret (secret_name followed by /managers: manager join token, init election). Created by the module and scheduled for deletion by `terraform destroy`. null with the other backends."
  value       = local.secrets_manager ? aws_secretsmanager_secret.managers[0].name : null
}

output "etcd_prefixes" {
  description = "backend \"etcd\": the cluster's key prefixes in etcd, { shared = the prefix every node reads and writes (etcd_prefix, default /swarmstrap/CLUSTER/), managers = the managers-only prefix beside it holding the manager join token (/swarmstrap/CLUSTER.managers/) }: the worker role gets readwrite on shared, the manager role on both (see the README, \"etcd\"). null with the other backends."
  value       = local.etcd ? { shared = local.etcd_prefix, managers = local.etcd_managers_prefix } : null
}

output "vpc_id" {
  description = "Id of the cluster's VPC (the module's own, or vpc_id)."
  value       = local.vpc_id
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

output "wait_ready_command" {
  description = "Shell command (run it with `sh -c \"$(terraform output -raw wait_ready_command)\"`; needs the AWS CLI and ssm:SendCommand/GetCommandInvocation) that returns once the swarm is up: SSM Run Command (AWS-RunShellScript) runs `swarm-agent status --wait --timeout 600 --expect-nodes N` on the first manager (N = manager_count + worker_count), waits while it runs, prints its output and exits 0 only if it succeeded (the node joined and healthy, N nodes Ready)."
  value = join(" ", [
    "id=$(aws ssm send-command --region ${local.region} --instance-ids ${aws_instance.manager[0].id} --document-name AWS-RunShellScript --comment 'swarmstrap: wait until the swarm is ready'",
    "--parameters '{\"commands\":[\"/usr/local/bin/swarm-agent status --wait --timeout 600 --expect-nodes ${local.expected_nodes}\"],\"executionTimeout\":[\"660\"]}'",
    "--query Command.CommandId --output text) || exit 1;",
    "until aws ssm wait command-executed ${local.ssm_invocation} 2>/dev/null; do",
    "case $(aws ssm get-command-invocation ${local.ssm_invocation} --query Status --output text) in Pending|InProgress|Delayed) ;; *) break ;; esac;",
    "done;",
    "aws ssm get-command-invocation ${local.ssm_invocation} --query '[StandardOutputContent,StandardErrorContent]' --output text;",
    "[ \"$(aws ssm get-command-invocation ${local.ssm_invocation} --query Status --output text)\" = Success ]",
  ])
}

output "secrets_cleanup_command" {
  description = "backend \"secrets-manager\": the command that deletes, for good, every secret of this cluster that is still there after `terraform destroy`: the module's two secrets are only scheduled for deletion (secret_recovery_window_days), and a secret an agent re-created while the cluster ran (after it had been deleted for good) is not in the Terraform state. It lists the secrets named secret_name or secret_name/managers and force-deletes them. null with the other backends."
  value       = local.secrets_manager ? "aws secretsmanager list-secrets --region ${local.region} --include-planned-deletion --filters Key=name,Values=${local.secret_name} --query 'SecretList[?Name==`${local.secret_name}` || Name==`${local.manager_secret_name}`].ARN' --output text | tr '\\t' '\\n' | while read -r arn; do [ -z \"$arn\" ] || aws secretsmanager delete-secret --region ${local.region} --force-delete-without-recovery --secret-id \"$arn\"; done" : null
}
