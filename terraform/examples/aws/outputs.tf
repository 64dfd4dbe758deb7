output "lb_url" {
  description = "Network load balancer URL (port 80 of the routing mesh)."
  value       = module.swarm.lb_url
}

output "manager_private_ips" {
  description = "Private addresses of the managers."
  value       = module.swarm.manager_private_ips
}

output "status_commands" {
  description = "Per node: the SSM command that prints `swarm-agent status`."
  value       = module.swarm.status_commands
}

output "secret_name" {
  description = "The Secrets Manager secret every node shares (`terraform destroy` schedules it for deletion)."
  value       = module.swarm.secret_name
}

output "manager_secret_name" {
  description = "The managers-only Secrets Manager secret (`terraform destroy` schedules it for deletion)."
  value       = module.swarm.manager_secret_name
}

output "wait_ready_command" {
  description = "Returns once every node is in the swarm: sh -c \"$(terraform output -raw wait_ready_command)\" (SSM Run Command on the first manager)."
  value       = module.swarm.wait_ready_command
}
