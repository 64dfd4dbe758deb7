#!/usr/bin/env python3
"""Render cloud-init/node.yaml.tftpl the way the Terraform modules do and extract the exact
files it would write, so other tests (the lab end-to-end test) can run the real swarm-agent with
exactly the configuration a cloud VM gets. Stable entry point: see tests/iac/README.md.

    python3 tests/iac/render_node.py --out-dir DIR --cluster NAME \
        --coordinator-url https://198.18.0.2:8443 --fingerprint sha256:<64 hex> \
        --join-secret-file FILE --advertise 198.18.0.11 [--role auto] [--target-managers 3] \
        [--cloud-provider none]

Writes, in DIR:
  user-data.yaml   the rendered cloud-config (what the VM receives)
  config.toml      exactly what cloud-init writes to /etc/swarm-agent/config.toml (mode 0600)
  join-secret      exactly what it writes to /etc/swarm-agent/join-secret (0600; coordinator
                   backend only)
  etcd-ca.pem, etcd-client.pem, etcd-client.key, etcd-password
                   the etcd backend's files (when given: --etcd-ca-file, --etcd-cert-file,
                   --etcd-key-file, --etcd-password-file; written 0600 here, the template
                   writes the CA and certificate 0644 and the key and password 0600)
and prints a JSON object with those paths on stdout. The join secret is read from a file, never
taken from the command line. Exit status 2 on bad input, with a message saying what was wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nodecfg  # noqa: E402


def write_private(path: str, content: str) -> None:
    """Create path with mode 0600 (atomically: temp file in the same dir, then rename)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", required=True, help="directory for the rendered files (created)")
    p.add_argument("--cluster", required=True, help="cluster name")
    p.add_argument("--backend", default="coordinator", choices=["coordinator", "secrets-manager", "etcd"])
    p.add_argument("--role", default="auto", choices=["auto", "manager", "worker"])
    p.add_argument("--target-managers", type=int, default=3, choices=[1, 3, 5, 7])
    p.add_argument(
        "--advertise",
        default="auto",
        help="advertise_addr: auto | interface:NAME | aws | digitalocean | scaleway | an IP",
    )
    p.add_argument("--coordinator-url", default="", help="https://IP:PORT (coordinator backend)")
    p.add_argument("--fingerprint", default="", help="sha256:<64 hex> pin of the coordinator cert")
    p.add_argument(
        "--join-secret-file", default="", help="file holding the cluster secret (coordinator backend)"
    )
    p.add_argument("--secret-name", default="", help="Secrets Manager secret (secrets-manager backend)")
    p.add_argument("--region", default="", help="AWS region (secrets-manager backend)")
    p.add_argument("--kms-key-id", default="")
    p.add_argument("--endpoint-url", default="", help="Secrets Manager endpoint override (tests)")
    p.add_argument("--etcd-endpoint", action="append", default=[], help="etcd client URL (repeat; etcd backend)")
    p.add_argument("--etcd-prefix", default="", help="[etcd] prefix (default: /swarmstrap/<cluster>/)")
    p.add_argument("--etcd-ca-file", default="", help="PEM CA of the etcd members (etcd backend)")
    p.add_argument("--etcd-cert-file", default="", help="PEM client certificate for etcd")
    p.add_argument("--etcd-key-file", default="", help="PEM client key for etcd (read from the file, never argv)")
    p.add_argument("--etcd-user", default="", help="etcd user")
    p.add_argument("--etcd-password-file", default="", help="file holding the etcd user's password")
    p.add_argument("--no-lb", action="store_true", help="render [lb] enabled = false")
    p.add_argument("--lb-path", default="/loadbalancer/default.conf")
    p.add_argument("--lb-reload-service", default="", help="[lb] reload_service: also reload this swarm service's tasks")
    p.add_argument("--agent-version", default=nodecfg.DEFAULT_VERSION, help="release to install")
    p.add_argument("--release-base-url", default=nodecfg.DEFAULT_BASE_URL)
    p.add_argument("--release-public-key", default=nodecfg.DEFAULT_PUBLIC_KEY)
    p.add_argument("--agent-url", default="", help="explicit binary instead of the release (with --agent-sha256)")
    p.add_argument("--agent-sha256", default="")
    p.add_argument("--docker-version", default="distro")
    p.add_argument(
        "--cloud-provider",
        default="none",
        choices=list(nodecfg.CLOUD_PROVIDERS),
        help="[cloud] provider: whose metadata service the agent reads the VM's tags from (none: no metadata reads)",
    )
    a = p.parse_args(argv)

    join_secret = ""
    if a.join_secret_file:
        try:
            with open(a.join_secret_file, encoding="utf-8") as f:
                join_secret = f.read().strip()
        except OSError as e:
            print(f"render_node: cannot read --join-secret-file {a.join_secret_file}: {e}", file=sys.stderr)
            return 2
    etcd_files = {}
    for name, path in (
        ("ca", a.etcd_ca_file),
        ("cert", a.etcd_cert_file),
        ("key", a.etcd_key_file),
        ("password", a.etcd_password_file),
    ):
        if not path:
            etcd_files[name] = ""
            continue
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            print(f"render_node: cannot read --etcd-{name}-file {path}: {e}", file=sys.stderr)
            return 2
        etcd_files[name] = text.strip() if name == "password" else text
    try:
        variables = nodecfg.node_vars(
            cluster=a.cluster,
            backend=a.backend,
            role=a.role,
            target_managers=a.target_managers,
            advertise_addr=a.advertise,
            coordinator_url=a.coordinator_url,
            coordinator_fingerprint=a.fingerprint,
            join_secret=join_secret,
            sm_secret_name=a.secret_name,
            sm_region=a.region,
            sm_kms_key_id=a.kms_key_id,
            sm_endpoint_url=a.endpoint_url,
            etcd_endpoints=a.etcd_endpoint,
            etcd_prefix=a.etcd_prefix,
            etcd_ca_pem=etcd_files["ca"],
            etcd_cert_pem=etcd_files["cert"],
            etcd_key_pem=etcd_files["key"],
            etcd_user=a.etcd_user,
            etcd_password=etcd_files["password"],
            lb_enabled=not a.no_lb,
            lb_path=a.lb_path,
            lb_reload_service=a.lb_reload_service,
            agent_version=a.agent_version,
            release_base_url=a.release_base_url,
            release_public_key=a.release_public_key,
            agent_url=a.agent_url,
            agent_sha256=a.agent_sha256,
            docker_version=a.docker_version,
            cloud_provider=a.cloud_provider,
        )
    except ValueError as e:
        print(f"render_node: {e}", file=sys.stderr)
        return 2

    user_data = nodecfg.render_node(variables)
    files = nodecfg.write_files(user_data)
    os.makedirs(a.out_dir, exist_ok=True)
    out = {"user_data": os.path.join(a.out_dir, "user-data.yaml")}
    write_private(out["user_data"], user_data)
    out["config"] = os.path.join(a.out_dir, "config.toml")
    write_private(out["config"], files[nodecfg.CONFIG_PATH]["content"])
    if nodecfg.JOIN_SECRET_PATH in files:
        out["join_secret"] = os.path.join(a.out_dir, "join-secret")
        write_private(out["join_secret"], files[nodecfg.JOIN_SECRET_PATH]["content"])
    for name, vm_path in nodecfg.ETCD_FILES.items():
        if vm_path in files:
            out[name] = os.path.join(a.out_dir, os.path.basename(vm_path))
            write_private(out[name], files[vm_path]["content"])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
