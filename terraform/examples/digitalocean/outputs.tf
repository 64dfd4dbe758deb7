output "lb_url" {
  description = "Where minitwit answers once deployed."
  value       = module.swarm.lb_url
}

output "first_manager_ip" {
  description = "Public address of the first manager (deploy.sh talks to its Docker engine over SSH)."
  value       = module.swarm.manager_public_ips[0]
}

output "first_manager_name" {
  description = "Swarm node name (hostname) of the first manager, which keeps the database volume."
  value       = "${terraform.workspace}-manager-1"
}

output "node_count" {
  description = "Number of swarm nodes deploy.sh waits for."
  value       = length(module.swarm.manager_public_ips) + length(module.swarm.worker_public_ips)
}

output "status_commands" {
  description = "Per node: how to see `swarm-agent status`."
  value       = module.swarm.status_commands
}

output "coordinator_url" {
  description = "The coordinator the agents use (VPC address)."
  value       = module.swarm.coordinator_url
}

output "wait_ready_command" {
  description = "Returns once every node is in the swarm: sh -c \"$(terraform output -raw wait_ready_command)\" (SSH to the first manager)."
  value       = module.swarm.wait_ready_command
}
