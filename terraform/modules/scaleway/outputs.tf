output "cluster_name" {
  description = "Name of the swarm cluster as registered with the coordinator."
  value       = local.cluster
}

output "manager_public_ips" {
  description = "Public IPv4 addresses of the manager instances, in index order."
  value       = scaleway_instance_ip.manager[*].address
}

output "manager_private_ips" {
  description = "Private-network addresses of the manager instances, in index order."
  value       = [for ip in scaleway_ipam_ip.manager : split("/", ip.address)[0]]
}

output "worker_public_ips" {
  description = "Public IPv4 addresses of the worker instances, in index order."
  value       = scaleway_instance_ip.worker[*].address
}

output "worker_private_ips" {
  description = "Private-network addresses of the worker instances, in index order."
  value       = [for ip in scaleway_ipam_ip.worker : split("/", ip.address)[0]]
}

output "lb_url" {
  description = "URL of the load balancer's first port (null without lb_ports)."
  value       = length(var.lb_ports) > 0 ? "http://${scaleway_lb_ip.this[0].ip_address}:${var.lb_ports[0]}" : null
}

output "coordinator_url" {
  description = "URL the agents use to reach the coordinator (private-network address)."
  value       = local.coordinator_url
}

output "coordinator_fingerprint" {
  description = "sha256 pin of the coordinator's certificate, as written into every agent's config."
  value       = local.coordinator_fingerprint
}

output "status_commands" {
  description = "Per node: the command that prints `swarm-agent status` on it (needs ssh_allowed_cidrs and an SSH key in your Scaleway project)."
  value = merge(
    { for i, s in scaleway_instance_server.manager : s.name => "ssh root@${scaleway_instance_ip.manager[i].address} swarm-agent status" },
    { for i, s in scaleway_instance_server.worker : s.name => "ssh root@${scaleway_instance_ip.worker[i].address} swarm-agent status" },
  )
}

output "ssh_first_manager" {
  description = "SSH command for the first manager, e.g. to run `docker node ls` or `docker stack deploy`."
  value       = "ssh root@${scaleway_instance_ip.manager[0].address}"
}
