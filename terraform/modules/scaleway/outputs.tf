output "cluster_name" {
  description = "Name of the swarm cluster (as registered with the coordinator, or in the etcd prefix)."
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
  description = "backend \"coordinator\": URL the agents use to reach the coordinator (private-network address). null with backend \"etcd\"."
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

output "wait_ready_command" {
  description = "Command that returns once the swarm is up: on the first manager (SSH; needs ssh_allowed_cidrs and an SSH key in your Scaleway project) `swarm-agent status --wait` waits until that node is joined and healthy and the swarm has manager_count + worker_count nodes Ready; exit 0 then, exit 1 with the reason after 600 s."
  value       = "ssh root@${scaleway_instance_ip.manager[0].address} swarm-agent status --wait --timeout 600 --expect-nodes ${local.expected_nodes}"
}

output "leave_commands" {
  description = "Per node: the command that makes it leave the swarm cleanly (tasks moved, demoted if a manager, `docker swarm leave`) and leaves it running, out of the swarm, until Terraform deletes it (not powered off: the provider powers a stopped server on again to terminate it, and a restarted agent joins again). Run it for the nodes a scale-in removes (the highest-numbered workers) before lowering worker_count or destroying: Scaleway deletes a running server with the terminate action, which is not documented to shut the guest down cleanly, so the unit's own leave at poweroff is not guaranteed to run."
  value = merge(
    { for i, s in scaleway_instance_server.manager : s.name => "ssh root@${scaleway_instance_ip.manager[i].address} '${local.leave_command}'" },
    { for i, s in scaleway_instance_server.worker : s.name => "ssh root@${scaleway_instance_ip.worker[i].address} '${local.leave_command}'" },
  )
}
