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
  description = "The Secrets Manager secret the agents share (delete it after `terraform destroy`)."
  value       = module.swarm.secret_name
}
