variable "region" {
  description = "AWS region for the cluster, e.g. eu-west-1."
  type        = string
  default     = "eu-west-1"
}

variable "worker_count" {
  description = "Number of worker instances (scale with `terraform apply -var worker_count=N`)."
  type        = number
  default     = 2
}

variable "agent_version" {
  description = "swarmstrap release to install, e.g. 0.3.0: every VM downloads it and checks its signature (the project's key). Upgrade a running cluster with `swarm-agent upgrade` (see README.md, \"Install\")."
  type        = string
  default     = "0.3.0"
}

variable "backend" {
  description = "The agents' rendezvous: secrets-manager (default) or coordinator (a coordinator instance in the VPC)."
  type        = string
  default     = "secrets-manager"
}

variable "coordinator_adopt_running_swarm" {
  description = "backend coordinator only: true only while replacing the coordinator of a running swarm (see the module README, \"Replacing the coordinator\")."
  type        = bool
  default     = false
}
