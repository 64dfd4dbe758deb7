#!/bin/sh
# Deploy stack.yml onto the swarm this example's `terraform apply` created, through the first
# manager's Docker engine over SSH (DOCKER_HOST=ssh://...). Waits (capped exponential backoff
# with jitter, 15 minutes at most) until every node has joined, since the agents form the swarm
# in the background after the droplets boot.
set -eu
cd "$(dirname "$0")"

manager_ip=$(terraform output -raw first_manager_ip)
manager_name=$(terraform output -raw first_manager_name)
want=$(terraform output -raw node_count)
export DOCKER_HOST="ssh://root@$manager_ip"

deadline=$(( $(date +%s) + 900 ))
delay=2
while :; do
  ready=$(docker node ls --format '{{.Status}}' 2>/dev/null | grep -c '^Ready$' || true)
  [ "$ready" -ge "$want" ] && break
  now=$(date +%s)
  if [ "$now" -ge "$deadline" ]; then
    echo "deploy: only $ready of $want nodes are Ready after 15 minutes; see 'terraform output status_commands'" >&2
    exit 1
  fi
  echo "deploy: $ready of $want nodes Ready; waiting" >&2
  sleep $(( delay + $(od -An -N1 -tu1 /dev/urandom | tr -d ' ') % delay ))
  delay=$(( delay * 2 )); [ "$delay" -gt 30 ] && delay=30
done

docker node update --label-add minitwit.db=true "$manager_name" >/dev/null
if ! docker secret inspect minitwit_db_password >/dev/null 2>&1; then
  # The password goes through stdin, never through a command line.
  head -c 24 /dev/urandom | base64 | tr -d '\n' | docker secret create minitwit_db_password - >/dev/null
fi
docker stack deploy --with-registry-auth -c stack.yml minitwit
echo "minitwit: $(terraform output -raw lb_url)"
