output "cluster_name" {
  description = "Name of the swarm cluster (as registered with the coordinator, or in the etcd prefix)."
  value       = local.cluster
}

output "manager_public_ips" {
  description = "Public IPv4 addresses of the manager droplets, in index order."
  value       = digitalocean_droplet.manager[*].ipv4_address
}

output "manager_private_ips" {
  description = "VPC addresses of the manager droplets, in index order."
  value       = digitalocean_droplet.manager[*].ipv4_address_private
}

output "worker_public_ips" {
  description = "Public IPv4 addresses of the worker droplets, in index order."
  value       = digitalocean_droplet.worker[*].ipv4_address
}

output "worker_private_ips" {
  description = "VPC addresses of the worker droplets, in index order."
  value       = digitalocean_droplet.worker[*].ipv4_address_private
}

output "lb_url" {
  description = "URL of the load balancer's first port (null without lb_ports)."
  value       = length(var.lb_ports) > 0 ? "http://${digitalocean_loadbalancer.this[0].ip}:${var.lb_ports[0]}" : null
}

output "coordinator_url" {
  description = "backend \"coordinator\": URL the agents use to reach the coordinator (VPC address). null with backend \"etcd\"."
  value       = local.coordinator ? local.coordinator_url : null
}

output "coordinator_fingerprint" {
  description = "backend \"coordinator\": sha256 pin of the coordinator's certificate, as written into every agent's config. null with backend \"etcd\"."
  value       = local.coordinator ? local.coordinator_fingerprint : null
}

output "etcd_prefixes" {
  description = "backend \"etcd\": the cluster's key prefixes in etcd, { shared = the prefix every node reads and writes (etcd_prefix, default /swarmstrap/CLUSTER/), managers = the managers-only prefix beside it holding the manager join token (/swarmstrap/CLUSTER.managers/) }: the worker role gets readwrite on shared, the manager role on both (see the README, \"etcd\"). null with the other backends."
  value       = local.etcd ? { shared = local.etcd_prefix, managers = local.etcd_managers_prefix } : null
}

output "status_commands" {
  description = "Per node: the command that prints `swarm-agent status` on it (needs ssh_keys and ssh_allowed_cidrs)."
  value = merge(
    { for i, d in digitalocean_droplet.manager : d.name => "ssh root@${d.ipv4_address} swarm-agent status" },
    { for i, d in digitalocean_droplet.worker : d.name => "ssh root@${d.ipv4_address} swarm-agent status" },
  )
}

output "ssh_first_manager" {
  description = "SSH command for the first manager, e.g. to run `docker node ls` or `docker stack deploy`."
  value       = "ssh root@${digitalocean_droplet.manager[0].ipv4_address}"
}

output "wait_ready_command" {
  description = "Command that returns once the swarm is up: on the first manager (SSH; needs ssh_keys and ssh_allowed_cidrs) `swarm-agent status --wait` waits until that node is joined and healthy and the swarm has manager_count + worker_count nodes Ready; exit 0 then, exit 1 with the reason after 600 s."
  value       = "ssh root@${digitalocean_droplet.manager[0].ipv4_address} swarm-agent status --wait --timeout 600 --expect-nodes ${local.expected_nodes}"
}
