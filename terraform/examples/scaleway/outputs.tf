output "lb_url" {
  description = "Load balancer URL (port 80 of the routing mesh)."
  value       = module.swarm.lb_url
}

output "manager_public_ips" {
  description = "Public addresses of the managers."
  value       = module.swarm.manager_public_ips
}

output "status_commands" {
  description = "Per node: how to see `swarm-agent status`."
  value       = module.swarm.status_commands
}

output "coordinator_url" {
  description = "The coordinator the agents use (private-network address)."
  value       = module.swarm.coordinator_url
}

output "wait_ready_command" {
  description = "Returns once every node is in the swarm: sh -c \"$(terraform output -raw wait_ready_command)\" (SSH to the first manager)."
  value       = module.swarm.wait_ready_command
}

output "leave_commands" {
  description = "Per node: run it before a scale-in removes the node (Scaleway's delete is not a clean shutdown; see the module README, \"Scale-in\")."
  value       = module.swarm.leave_commands
}
