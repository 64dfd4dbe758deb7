"""Variables for the cloud-init templates, built the way the Terraform modules build them, and
helpers to pull files back out of a rendered cloud-config. Shared by render_node.py and the
tests."""

from __future__ import annotations

import os
import re

import yaml

import tfrender

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLOUD_INIT = os.path.join(REPO, "cloud-init")
NODE_TEMPLATE = os.path.join(CLOUD_INIT, "node.yaml.tftpl")
COORDINATOR_TEMPLATE = os.path.join(CLOUD_INIT, "coordinator.yaml.tftpl")
MULTIPART_TEMPLATE = os.path.join(CLOUD_INIT, "multipart.tftpl")
# The MIME boundary multipart.tftpl uses; the modules refuse a cloud_config_extra containing it.
MULTIPART_BOUNDARY = "swarmstrap-cloud-config-part"
CONFIG_PATH = "/etc/swarm-agent/config.toml"
JOIN_SECRET_PATH = "/etc/swarm-agent/join-secret"
# What the node template writes for the etcd backend (render_node.py's output names).
ETCD_FILES = {
    "etcd_ca": "/etc/swarm-agent/etcd-ca.pem",
    "etcd_cert": "/etc/swarm-agent/etcd-client.pem",
    "etcd_key": "/etc/swarm-agent/etcd-client.key",
    "etcd_password": "/etc/swarm-agent/etcd-password",
}
# AWS refuses user-data above 16 KB (before base64); the modules send it uncompressed.
AWS_USER_DATA_LIMIT = 16384

CLUSTER_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
FINGERPRINT_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SECRET_RE = re.compile(r"^[\x21-\x7e]{16,256}$")
# The release defaults the modules use (release/README.md): the workspace version, the project's
# release location and its public key (the key line of release/minisign.pub).
DEFAULT_BASE_URL = "https://github.com/swarmstrap/swarmstrap/releases/download"
VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$")
PUBLIC_KEY_RE = re.compile(r"^RW[A-Za-z0-9+/]{54}$")
# What the agent's [cloud] provider accepts (agent/README.md, "Node labels from cloud tags").
CLOUD_PROVIDERS = ("aws", "digitalocean", "scaleway", "none")


def _workspace_version() -> str:
    with open(os.path.join(REPO, "Cargo.toml"), encoding="utf-8") as f:
        m = re.search(r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"', f.read(), re.M | re.S)
    if not m:
        raise RuntimeError("Cargo.toml: no [workspace.package] version")
    return m.group(1)


def _project_public_key() -> str:
    with open(os.path.join(REPO, "release", "minisign.pub"), encoding="utf-8") as f:
        return f.read().splitlines()[1].strip()


DEFAULT_VERSION = _workspace_version()
DEFAULT_PUBLIC_KEY = _project_public_key()


def read(name: str) -> str:
    with open(os.path.join(CLOUD_INIT, name), encoding="utf-8") as f:
        return f.read()


def check_release(version: str, base_url: str, public_key: str) -> None:
    """What the modules' validations allow for agent_version, release_base_url and
    release_public_key."""
    if not VERSION_RE.match(version):
        raise ValueError(f"agent version {version!r}: must be a release version such as 0.2.0")
    if not re.match(r"^https://[A-Za-z0-9._~:/%@+=,-]+$", base_url):
        raise ValueError(f"release base url {base_url!r}: must be an https:// URL")
    if not PUBLIC_KEY_RE.match(public_key):
        raise ValueError(f"release public key {public_key!r}: must be the key line of a minisign.pub")


def check_override(what: str, url: str, sha256: str) -> None:
    """An explicit binary (air-gapped mirror without the signature files): both or neither."""
    if bool(url) != bool(sha256):
        raise ValueError(f"{what} url and sha256: give both or neither")
    if url and not url.startswith("https://"):
        raise ValueError(f"{what} url {url!r}: must start with https://")
    if sha256 and not SHA256_RE.match(sha256):
        raise ValueError(f"{what} sha256 {sha256!r}: must be 64 lowercase hex digits")


def node_vars(
    *,
    cluster: str,
    backend: str = "coordinator",
    role: str = "auto",
    target_managers: int = 3,
    advertise_addr: str = "auto",
    coordinator_url: str = "",
    coordinator_fingerprint: str = "",
    join_secret: str = "",
    sm_secret_name: str = "",
    sm_region: str = "",
    sm_kms_key_id: str = "",
    sm_endpoint_url: str = "",
    etcd_endpoints: list | None = None,
    etcd_prefix: str = "",
    etcd_ca_pem: str = "",
    etcd_cert_pem: str = "",
    etcd_key_pem: str = "",
    etcd_user: str = "",
    etcd_password: str = "",
    lb_enabled: bool = True,
    lb_path: str = "/loadbalancer/default.conf",
    lb_reload_service: str = "",
    agent_version: str = DEFAULT_VERSION,
    release_base_url: str = DEFAULT_BASE_URL,
    release_public_key: str = DEFAULT_PUBLIC_KEY,
    agent_url: str = "",
    agent_sha256: str = "",
    docker_version: str = "distro",
    docker_log_max_size: str = "10m",
    docker_log_max_file: str = "3",
    cloud_provider: str = "none",
) -> dict:
    """The vars map of node.yaml.tftpl (the modules pass exactly these keys). cloud_provider:
    the config's [cloud] provider, whose metadata service the agent reads the VM's tags from
    (each module sets its own cloud; "none" reads no metadata, e.g. the lab)."""
    if not CLUSTER_RE.match(cluster):
        raise ValueError(
            f"cluster {cluster!r}: use 1-32 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    if backend not in ("coordinator", "secrets-manager", "etcd"):
        raise ValueError(f"backend {backend!r}: must be coordinator, secrets-manager or etcd")
    etcd_endpoints = list(etcd_endpoints or [])
    if role not in ("auto", "manager", "worker"):
        raise ValueError(f"role {role!r}: must be auto, manager or worker")
    if target_managers not in (1, 3, 5, 7):
        raise ValueError(f"target_managers {target_managers}: must be 1, 3, 5 or 7")
    if backend == "coordinator":
        if not coordinator_url.startswith("https://"):
            raise ValueError(f"coordinator url {coordinator_url!r}: must start with https://")
        if not FINGERPRINT_RE.match(coordinator_fingerprint):
            raise ValueError(
                f"fingerprint {coordinator_fingerprint!r}: must be sha256: and 64 lowercase hex digits"
            )
        if not SECRET_RE.match(join_secret):
            raise ValueError(
                "the coordinator backend needs a join secret of 16-256 printable ASCII characters "
                "without spaces (what swarm-coordinator accepts)"
            )
    elif backend == "secrets-manager":
        if not sm_secret_name or not sm_region:
            raise ValueError("the secrets-manager backend needs a secret name and a region")
    else:
        if not etcd_endpoints:
            raise ValueError("the etcd backend needs at least one endpoint (https://HOST:2379)")
        for e in etcd_endpoints:
            if not re.match(r"^https://[^\s/]+$", e):
                raise ValueError(f"etcd endpoint {e!r}: must be https://HOST:PORT")
        if not etcd_ca_pem:
            raise ValueError("the etcd backend needs the CA (PEM) that signed the etcd members' certificates")
        if bool(etcd_cert_pem) != bool(etcd_key_pem):
            raise ValueError("etcd client certificate and key go together: give both or neither")
        if bool(etcd_user) != bool(etcd_password):
            raise ValueError("etcd user and password go together: give both or neither")
        if etcd_prefix and not re.match(r"^/[A-Za-z0-9._/-]*/$", etcd_prefix):
            raise ValueError(f"etcd prefix {etcd_prefix!r}: must start and end with '/'")
    if not re.match(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,62})?$", lb_reload_service):
        raise ValueError(f"lb reload service {lb_reload_service!r}: must be empty or a swarm service name")
    if cloud_provider not in CLOUD_PROVIDERS:
        raise ValueError(f"cloud provider {cloud_provider!r}: must be one of {', '.join(CLOUD_PROVIDERS)}")
    check_release(agent_version, release_base_url, release_public_key)
    check_override("agent", agent_url, agent_sha256)
    return {
        "cluster": cluster,
        "backend": backend,
        "role": role,
        "target_managers": target_managers,
        "advertise_addr": advertise_addr,
        "coordinator_url": coordinator_url,
        "coordinator_fingerprint": coordinator_fingerprint,
        "join_secret": join_secret,
        "sm_secret_name": sm_secret_name,
        "sm_region": sm_region,
        "sm_kms_key_id": sm_kms_key_id,
        "sm_endpoint_url": sm_endpoint_url,
        "etcd_endpoints": etcd_endpoints,
        "etcd_prefix": etcd_prefix,
        "etcd_ca_pem": etcd_ca_pem,
        "etcd_cert_pem": etcd_cert_pem,
        "etcd_key_pem": etcd_key_pem,
        "etcd_user": etcd_user,
        "etcd_password": etcd_password,
        "lb_enabled": lb_enabled,
        "lb_path": lb_path,
        "lb_reload_service": lb_reload_service,
        "agent_version": agent_version,
        "release_base_url": release_base_url,
        "release_public_key": release_public_key,
        "agent_url": agent_url,
        "agent_sha256": agent_sha256,
        "docker_version": docker_version,
        "docker_log_max_size": docker_log_max_size,
        "docker_log_max_file": docker_log_max_file,
        "cloud_provider": cloud_provider,
        "agent_unit": read("swarm-agent.service"),
        "install_script": read("swarmstrap-install.sh"),
        "metadata_block_script": read("swarmstrap-metadata-block.sh"),
        "metadata_block_unit": read("swarmstrap-metadata-block.service"),
    }


def coordinator_vars(
    *,
    cluster: str,
    target_managers: int = 3,
    cluster_secret: str,
    tls_cert_pem: str,
    tls_key_pem: str,
    agent_version: str = DEFAULT_VERSION,
    release_base_url: str = DEFAULT_BASE_URL,
    release_public_key: str = DEFAULT_PUBLIC_KEY,
    coordinator_binary_url: str = "",
    coordinator_binary_sha256: str = "",
    adopt_running_swarm: bool = False,
) -> dict:
    """The vars map of coordinator.yaml.tftpl. adopt_running_swarm: the modules'
    coordinator_adopt_running_swarm (a bool: `%{ if }` refuses anything else)."""
    if not isinstance(adopt_running_swarm, bool):
        raise ValueError(f"adopt_running_swarm {adopt_running_swarm!r}: must be true or false")
    check_release(agent_version, release_base_url, release_public_key)
    check_override("coordinator binary", coordinator_binary_url, coordinator_binary_sha256)
    return {
        "cluster": cluster,
        "target_managers": target_managers,
        "cluster_secret": cluster_secret,
        "tls_cert_pem": tls_cert_pem,
        "tls_key_pem": tls_key_pem,
        "agent_version": agent_version,
        "release_base_url": release_base_url,
        "release_public_key": release_public_key,
        "coordinator_binary_url": coordinator_binary_url,
        "coordinator_binary_sha256": coordinator_binary_sha256,
        "adopt_running_swarm": adopt_running_swarm,
        "coordinator_unit": read("swarm-coordinator.service"),
        "install_script": read("swarmstrap-install.sh"),
    }


def render_node(variables: dict) -> str:
    return tfrender.render_file(NODE_TEMPLATE, variables)


def check_cloud_config_extra(extra: str) -> None:
    """What the modules' cloud_config_extra validation allows (besides "": no extra part)."""
    if not re.match(r"^#cloud-config[ \t]*\r?\n", extra):
        raise ValueError("cloud_config_extra: must be a cloud-config document starting with a '#cloud-config' line")
    if MULTIPART_BOUNDARY in extra:
        raise ValueError(f"cloud_config_extra: must not contain {MULTIPART_BOUNDARY!r} (the MIME boundary)")


def render_user_data(swarmstrap: str, extra: str) -> str:
    """What the modules send: our cloud-config alone, or with the operator's cloud_config_extra
    a MIME multipart whose second part is merged into ours (lists appended)."""
    if extra == "":
        return swarmstrap
    check_cloud_config_extra(extra)
    return tfrender.render_file(MULTIPART_TEMPLATE, {"swarmstrap": swarmstrap, "extra": extra})


def render_coordinator(variables: dict) -> str:
    return tfrender.render_file(COORDINATOR_TEMPLATE, variables)


def write_files(user_data: str) -> dict:
    """path -> write_files entry of a rendered cloud-config."""
    doc = yaml.safe_load(user_data)
    return {e["path"]: e for e in doc.get("write_files", [])}
