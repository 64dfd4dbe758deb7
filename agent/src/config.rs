//! Agent configuration: a TOML file, `SWARM_AGENT_*` environment variables and command-line
//! flags, merged with precedence **flags > env > file > defaults**. The file format is also
//! written by the cloud-init templates, so unknown keys are an error that names the key.

use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use swarmstrap_etcd::EtcdConfig;
use swarmstrap_secrets_manager::SecretsManagerConfig;
use swarmstrap_wire::RequestedRole;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/swarm-agent/config.toml";
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/swarm-agent";
pub const DEFAULT_JOIN_SECRET_FILE: &str = "/etc/swarm-agent/join-secret";
pub const DEFAULT_LEASE_TTL_SECS: u64 = 30;
pub const DEFAULT_TARGET_MANAGERS: u8 = 3;
pub const DEFAULT_LB_PATH: &str = "/loadbalancer/default.conf";
/// Lease TTL bounds: shorter than 5 s risks losing the lease to a slow `swarm init`; the
/// upper bound is the rulebook's (every backend clamps a lease to it, so a longer setting
/// would only look longer).
pub const LEASE_TTL_RANGE_SECS: (u64, u64) = (5, swarmstrap_wire::rules::MAX_LEASE_TTL_MS / 1000);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("missing setting: {0}")]
    Missing(String),
}

fn invalid(origin: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_string(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// The file format (every key optional here; required-ness is checked after merging).

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub cluster: Option<String>,
    pub backend: Option<String>,
    pub role: Option<String>,
    pub target_managers: Option<i64>,
    pub advertise_addr: Option<String>,
    pub docker_host: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub join_secret_file: Option<PathBuf>,
    pub lease_ttl_secs: Option<i64>,
    pub coordinator: Option<FileCoordinator>,
    pub secrets_manager: Option<FileSecretsManager>,
    pub etcd: Option<FileEtcd>,
    pub lb: Option<FileLb>,
    pub quorum: Option<FileQuorum>,
    pub release: Option<FileRelease>,
    pub cloud: Option<FileCloud>,
    pub metrics: Option<FileMetrics>,
}

/// `[cloud]`: the cloud's metadata service, for node labels from the instance's tags.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCloud {
    pub provider: Option<String>,
    pub metadata_url: Option<String>,
    pub node_labels: Option<bool>,
    pub tags_refresh_secs: Option<i64>,
}

/// `[metrics]`: the agent's own Prometheus metrics listener (off unless `listen` is set).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMetrics {
    pub listen: Option<String>,
    pub allow_non_loopback: Option<bool>,
}

/// `[release]`: where `swarm-agent upgrade` fetches releases and which key signs them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRelease {
    pub base_url: Option<String>,
    pub public_key: Option<String>,
}

/// `[quorum]`: the quorum keeper and `swarm-agent leave`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuorum {
    pub enabled: Option<bool>,
    pub promote_after_secs: Option<i64>,
    pub remove_down_after_secs: Option<i64>,
    pub leave_timeout_secs: Option<i64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCoordinator {
    pub url: Option<String>,
    pub tls_fingerprint: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// Allow an `http://` URL (labs only: the join secret and the node credential travel in
    /// clear text). Without it an http URL is refused.
    pub insecure_http: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSecretsManager {
    pub secret_name: Option<String>,
    pub name_prefix: Option<String>,
    pub region: Option<String>,
    pub kms_key_id: Option<String>,
    pub endpoint_url: Option<String>,
    pub relay_port: Option<i64>,
}

/// `[etcd]`: the etcd backend (`backend = "etcd"`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEtcd {
    pub endpoints: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLb {
    pub enabled: Option<bool>,
    pub path: Option<PathBuf>,
    pub listen_port: Option<i64>,
    pub port: Option<i64>,
    pub services: Option<Vec<FileLbService>>,
    pub template_file: Option<PathBuf>,
    pub validate: Option<String>,
    pub nginx_bin: Option<PathBuf>,
    pub reload_label: Option<String>,
    pub reload_service: Option<String>,
}

/// One `[[lb.services]]` entry: an upstream `name` over every Ready node's `port`, served on
/// `listen`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLbService {
    pub name: Option<String>,
    pub port: Option<i64>,
    pub listen: Option<i64>,
}

impl FileConfig {
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            // toml's message names the key ("unknown field `foo`, expected one of …"); keep it
            // on one line. Not `e.to_string()`: that quotes the offending source line, so a join
            // secret pasted into the file by mistake (`join_secret = "…"`) would reach the log.
            // Give the line and column instead.
            let mut message = e.message().trim().replace('\n', " ");
            if let Some(span) = e.span() {
                let before = text.get(..span.start).unwrap_or(text);
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let line = before.matches('\n').count() + 1;
                let column = before[line_start..].chars().count() + 1;
                message = format!("line {line}, column {column}: {message}");
            }
            ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Environment variables: every name is written once, here. The clap help, the tables below,
// the parsing, the error messages and the tests all use these constants (and a test checks
// that the README documents each of them).

pub const ENV_CONFIG: &str = "SWARM_AGENT_CONFIG";
pub const ENV_CLUSTER: &str = "SWARM_AGENT_CLUSTER";
pub const ENV_BACKEND: &str = "SWARM_AGENT_BACKEND";
pub const ENV_ROLE: &str = "SWARM_AGENT_ROLE";
pub const ENV_TARGET_MANAGERS: &str = "SWARM_AGENT_TARGET_MANAGERS";
pub const ENV_ADVERTISE_ADDR: &str = "SWARM_AGENT_ADVERTISE_ADDR";
pub const ENV_DOCKER_HOST: &str = "SWARM_AGENT_DOCKER_HOST";
pub const ENV_STATE_DIR: &str = "SWARM_AGENT_STATE_DIR";
pub const ENV_JOIN_SECRET_FILE: &str = "SWARM_AGENT_JOIN_SECRET_FILE";
pub const ENV_LEASE_TTL_SECS: &str = "SWARM_AGENT_LEASE_TTL_SECS";
pub const ENV_COORDINATOR_URL: &str = "SWARM_AGENT_COORDINATOR_URL";
pub const ENV_COORDINATOR_FINGERPRINT: &str = "SWARM_AGENT_COORDINATOR_FINGERPRINT";
pub const ENV_COORDINATOR_CA_FILE: &str = "SWARM_AGENT_COORDINATOR_CA_FILE";
pub const ENV_ETCD_ENDPOINTS: &str = "SWARM_AGENT_ETCD_ENDPOINTS";
pub const ENV_ETCD_PREFIX: &str = "SWARM_AGENT_ETCD_PREFIX";
pub const ENV_ETCD_CA_FILE: &str = "SWARM_AGENT_ETCD_CA_FILE";
pub const ENV_ETCD_CERT_FILE: &str = "SWARM_AGENT_ETCD_CERT_FILE";
pub const ENV_ETCD_KEY_FILE: &str = "SWARM_AGENT_ETCD_KEY_FILE";
pub const ENV_ETCD_USER: &str = "SWARM_AGENT_ETCD_USER";
pub const ENV_ETCD_PASSWORD_FILE: &str = "SWARM_AGENT_ETCD_PASSWORD_FILE";

pub const ENV_LB_ENABLED: &str = "SWARM_AGENT_LB_ENABLED";
pub const ENV_LB_PATH: &str = "SWARM_AGENT_LB_PATH";
pub const ENV_LB_LISTEN_PORT: &str = "SWARM_AGENT_LB_LISTEN_PORT";
pub const ENV_LB_PORT: &str = "SWARM_AGENT_LB_PORT";
pub const ENV_LB_TEMPLATE_FILE: &str = "SWARM_AGENT_LB_TEMPLATE_FILE";
pub const ENV_LB_VALIDATE: &str = "SWARM_AGENT_LB_VALIDATE";
pub const ENV_LB_NGINX_BIN: &str = "SWARM_AGENT_LB_NGINX_BIN";
pub const ENV_LB_RELOAD_LABEL: &str = "SWARM_AGENT_LB_RELOAD_LABEL";
pub const ENV_LB_RELOAD_SERVICE: &str = "SWARM_AGENT_LB_RELOAD_SERVICE";

pub const ENV_QUORUM_ENABLED: &str = "SWARM_AGENT_QUORUM_ENABLED";
pub const ENV_QUORUM_PROMOTE_AFTER_SECS: &str = "SWARM_AGENT_QUORUM_PROMOTE_AFTER_SECS";
pub const ENV_QUORUM_REMOVE_DOWN_AFTER_SECS: &str = "SWARM_AGENT_QUORUM_REMOVE_DOWN_AFTER_SECS";
pub const ENV_QUORUM_LEAVE_TIMEOUT_SECS: &str = "SWARM_AGENT_QUORUM_LEAVE_TIMEOUT_SECS";

pub const ENV_CLOUD_PROVIDER: &str = "SWARM_AGENT_CLOUD_PROVIDER";
pub const ENV_CLOUD_METADATA_URL: &str = "SWARM_AGENT_CLOUD_METADATA_URL";
pub const ENV_CLOUD_NODE_LABELS: &str = "SWARM_AGENT_CLOUD_NODE_LABELS";
pub const ENV_CLOUD_TAGS_REFRESH_SECS: &str = "SWARM_AGENT_CLOUD_TAGS_REFRESH_SECS";
pub const ENV_METRICS_LISTEN: &str = "SWARM_AGENT_METRICS_LISTEN";
pub const ENV_METRICS_ALLOW_NON_LOOPBACK: &str = "SWARM_AGENT_METRICS_ALLOW_NON_LOOPBACK";

/// The log filter (`tracing` syntax, e.g. `debug`); `RUST_LOG` is the fallback.
pub const ENV_LOG: &str = "SWARM_AGENT_LOG";
/// Test-only fault injection (see README): after a granted claim, if this file can be removed,
/// hold forever before `swarm init` without renewing the lease.
pub const ENV_DEBUG_HOLD_AFTER_CLAIM_FILE: &str = "SWARM_AGENT_DEBUG_HOLD_AFTER_CLAIM_FILE";

/// `(field of [`Overrides`], environment variable)` for every override with a flag, in
/// declaration order.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("config", ENV_CONFIG),
    ("cluster", ENV_CLUSTER),
    ("backend", ENV_BACKEND),
    ("role", ENV_ROLE),
    ("target_managers", ENV_TARGET_MANAGERS),
    ("advertise_addr", ENV_ADVERTISE_ADDR),
    ("docker_host", ENV_DOCKER_HOST),
    ("state_dir", ENV_STATE_DIR),
    ("join_secret_file", ENV_JOIN_SECRET_FILE),
    ("lease_ttl_secs", ENV_LEASE_TTL_SECS),
    ("coordinator_url", ENV_COORDINATOR_URL),
    ("coordinator_fingerprint", ENV_COORDINATOR_FINGERPRINT),
    ("coordinator_ca_file", ENV_COORDINATOR_CA_FILE),
    ("etcd_endpoints", ENV_ETCD_ENDPOINTS),
    ("etcd_prefix", ENV_ETCD_PREFIX),
    ("etcd_ca_file", ENV_ETCD_CA_FILE),
    ("etcd_cert_file", ENV_ETCD_CERT_FILE),
    ("etcd_key_file", ENV_ETCD_KEY_FILE),
    ("etcd_user", ENV_ETCD_USER),
    ("etcd_password_file", ENV_ETCD_PASSWORD_FILE),
];

/// `(key in [lb], environment variable)`.
pub const LB_ENV_VARS: &[(&str, &str)] = &[
    ("enabled", ENV_LB_ENABLED),
    ("path", ENV_LB_PATH),
    ("listen_port", ENV_LB_LISTEN_PORT),
    ("port", ENV_LB_PORT),
    ("template_file", ENV_LB_TEMPLATE_FILE),
    ("validate", ENV_LB_VALIDATE),
    ("nginx_bin", ENV_LB_NGINX_BIN),
    ("reload_label", ENV_LB_RELOAD_LABEL),
    ("reload_service", ENV_LB_RELOAD_SERVICE),
];

/// `(key in [quorum], environment variable)`.
pub const QUORUM_ENV_VARS: &[(&str, &str)] = &[
    ("enabled", ENV_QUORUM_ENABLED),
    ("promote_after_secs", ENV_QUORUM_PROMOTE_AFTER_SECS),
    ("remove_down_after_secs", ENV_QUORUM_REMOVE_DOWN_AFTER_SECS),
    ("leave_timeout_secs", ENV_QUORUM_LEAVE_TIMEOUT_SECS),
];

/// `(key in [cloud], environment variable)`.
pub const CLOUD_ENV_VARS: &[(&str, &str)] = &[
    ("provider", ENV_CLOUD_PROVIDER),
    ("metadata_url", ENV_CLOUD_METADATA_URL),
    ("node_labels", ENV_CLOUD_NODE_LABELS),
    ("tags_refresh_secs", ENV_CLOUD_TAGS_REFRESH_SECS),
];

/// `(key in [metrics], environment variable)`.
pub const METRICS_ENV_VARS: &[(&str, &str)] = &[
    ("listen", ENV_METRICS_LISTEN),
    ("allow_non_loopback", ENV_METRICS_ALLOW_NON_LOOPBACK),
];

/// Every environment variable the agent reads, for documentation checks.
pub fn all_env_vars() -> impl Iterator<Item = &'static str> {
    ENV_VARS
        .iter()
        .chain(LB_ENV_VARS)
        .chain(QUORUM_ENV_VARS)
        .chain(CLOUD_ENV_VARS)
        .chain(METRICS_ENV_VARS)
        .map(|(_, var)| *var)
        .chain([ENV_LOG, ENV_DEBUG_HOLD_AFTER_CLAIM_FILE])
}

/// A flag's help line: what it sets, and its environment variable.
fn flag_help(what: &str, var: &str) -> String {
    format!("{what} [env: {var}]")
}

// ---------------------------------------------------------------------------------------------
// Overrides: one struct for both the environment and the command line.

/// Settings given by flags or environment variables. Flags are declared on this struct (clap);
/// [`Overrides::from_env`] fills the same struct from `SWARM_AGENT_*`.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    #[arg(
        long,
        value_name = "FILE",
        help = format!("{} [default: {DEFAULT_CONFIG_PATH}]", flag_help("Config file", ENV_CONFIG))
    )]
    pub config: Option<PathBuf>,
    #[arg(long, help = flag_help("Cluster name", ENV_CLUSTER))]
    pub cluster: Option<String>,
    #[arg(
        long,
        help = flag_help("Rendezvous backend: coordinator | secrets-manager | etcd", ENV_BACKEND)
    )]
    pub backend: Option<String>,
    #[arg(long, help = flag_help("Requested role: auto | manager | worker", ENV_ROLE))]
    pub role: Option<String>,
    #[arg(
        long,
        value_name = "N",
        help = flag_help("Managers wanted: 1, 3, 5 or 7", ENV_TARGET_MANAGERS)
    )]
    pub target_managers: Option<u8>,
    #[arg(
        long,
        value_name = "SPEC",
        help = flag_help(
            "auto | interface:NAME | aws | digitalocean | scaleway | IP",
            ENV_ADVERTISE_ADDR
        )
    )]
    pub advertise_addr: Option<String>,
    #[arg(
        long,
        value_name = "URL",
        help = flag_help(
            "Docker engine address, unix:///… or tcp://IP:PORT",
            ENV_DOCKER_HOST
        )
    )]
    pub docker_host: Option<String>,
    #[arg(
        long,
        value_name = "DIR",
        help = flag_help("Agent state directory", ENV_STATE_DIR)
    )]
    pub state_dir: Option<PathBuf>,
    #[arg(
        long,
        value_name = "FILE",
        help = flag_help("File holding the cluster's join secret", ENV_JOIN_SECRET_FILE)
    )]
    pub join_secret_file: Option<PathBuf>,
    #[arg(
        long,
        value_name = "SECS",
        help = flag_help("Init lease TTL in seconds", ENV_LEASE_TTL_SECS)
    )]
    pub lease_ttl_secs: Option<u64>,
    #[arg(
        long,
        value_name = "URL",
        help = flag_help(
            "Coordinator base URL, e.g. https://10.10.0.2:8443",
            ENV_COORDINATOR_URL
        )
    )]
    pub coordinator_url: Option<String>,
    #[arg(
        long,
        value_name = "SHA256",
        help = flag_help(
            "sha256 pin of the coordinator certificate",
            ENV_COORDINATOR_FINGERPRINT
        )
    )]
    pub coordinator_fingerprint: Option<String>,
    #[arg(
        long,
        value_name = "FILE",
        help = flag_help(
            "CA bundle that signs the coordinator certificate",
            ENV_COORDINATOR_CA_FILE
        )
    )]
    pub coordinator_ca_file: Option<PathBuf>,
    #[arg(
        long,
        value_name = "URL,URL,…",
        help = flag_help(
            "etcd client URLs (comma-separated), e.g. https://10.0.0.5:2379",
            ENV_ETCD_ENDPOINTS
        )
    )]
    pub etcd_endpoints: Option<String>,
    #[arg(
        long,
        value_name = "PREFIX",
        help = flag_help(
            "etcd key prefix of this cluster [default: /swarmstrap/<cluster>/]",
            ENV_ETCD_PREFIX
        )
    )]
    pub etcd_prefix: Option<String>,
    #[arg(
        long,
        value_name = "FILE",
        help = flag_help("CA bundle that signs the etcd members' certificates", ENV_ETCD_CA_FILE)
    )]
    pub etcd_ca_file: Option<PathBuf>,
    #[arg(
        long,
        value_name = "FILE",
        help = flag_help("Client certificate for etcd (PEM)", ENV_ETCD_CERT_FILE)
    )]
    pub etcd_cert_file: Option<PathBuf>,
    #[arg(
        long,
        value_name = "FILE",
        help = flag_help("Client key for etcd (PEM, mode 0600)", ENV_ETCD_KEY_FILE)
    )]
    pub etcd_key_file: Option<PathBuf>,
    #[arg(long, value_name = "USER", help = flag_help("etcd user", ENV_ETCD_USER))]
    pub etcd_user: Option<String>,
    #[arg(
        long,
        value_name = "FILE",
        help = flag_help("File holding the etcd user's password (mode 0600)", ENV_ETCD_PASSWORD_FILE)
    )]
    pub etcd_password_file: Option<PathBuf>,
    /// `SWARM_AGENT_LB_*` (environment only; the [lb] table has no flags).
    #[arg(skip)]
    pub lb: LbEnv,
    /// `SWARM_AGENT_QUORUM_*` (environment only).
    #[arg(skip)]
    pub quorum: QuorumEnv,
    /// `SWARM_AGENT_CLOUD_*` (environment only).
    #[arg(skip)]
    pub cloud: CloudEnv,
    /// `SWARM_AGENT_METRICS_*` (environment only).
    #[arg(skip)]
    pub metrics: MetricsEnv,
}

/// `SWARM_AGENT_CLOUD_*` overrides of the `[cloud]` table, raw.
#[derive(Debug, Default, Clone)]
pub struct CloudEnv {
    pub provider: Option<String>,
    pub metadata_url: Option<String>,
    pub node_labels: Option<String>,
    pub tags_refresh_secs: Option<String>,
}

/// `SWARM_AGENT_METRICS_*` overrides of the `[metrics]` table, raw.
#[derive(Debug, Default, Clone)]
pub struct MetricsEnv {
    pub listen: Option<String>,
    pub allow_non_loopback: Option<String>,
}

/// `SWARM_AGENT_QUORUM_*` overrides of the `[quorum]` table, raw.
#[derive(Debug, Default, Clone)]
pub struct QuorumEnv {
    pub enabled: Option<String>,
    pub promote_after_secs: Option<String>,
    pub remove_down_after_secs: Option<String>,
    pub leave_timeout_secs: Option<String>,
}

/// `SWARM_AGENT_LB_*` overrides of the `[lb]` table, raw (validated in [`Config::resolve`]).
#[derive(Debug, Default, Clone)]
pub struct LbEnv {
    pub enabled: Option<String>,
    pub path: Option<String>,
    pub listen_port: Option<String>,
    pub port: Option<String>,
    pub template_file: Option<String>,
    pub validate: Option<String>,
    pub nginx_bin: Option<String>,
    pub reload_label: Option<String>,
    pub reload_service: Option<String>,
}

impl Overrides {
    /// Read `SWARM_AGENT_*` through `get` (the process environment in production, a map in
    /// tests). Empty variables count as unset.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Overrides, ConfigError> {
        let s = |var: &str| get(var).filter(|v| !v.trim().is_empty());
        let p = |var: &str| s(var).map(PathBuf::from);
        let num = |var: &str| -> Result<Option<u64>, ConfigError> {
            s(var)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| invalid(var, format!("{v:?} is not a non-negative integer")))
                })
                .transpose()
        };
        let target_managers = num(ENV_TARGET_MANAGERS)?
            .map(|n| {
                u8::try_from(n)
                    .map_err(|_| invalid(ENV_TARGET_MANAGERS, format!("{n}: must be 1, 3, 5 or 7")))
            })
            .transpose()?;
        Ok(Overrides {
            config: p(ENV_CONFIG),
            cluster: s(ENV_CLUSTER),
            backend: s(ENV_BACKEND),
            role: s(ENV_ROLE),
            target_managers,
            advertise_addr: s(ENV_ADVERTISE_ADDR),
            docker_host: s(ENV_DOCKER_HOST),
            state_dir: p(ENV_STATE_DIR),
            join_secret_file: p(ENV_JOIN_SECRET_FILE),
            lease_ttl_secs: num(ENV_LEASE_TTL_SECS)?,
            coordinator_url: s(ENV_COORDINATOR_URL),
            coordinator_fingerprint: s(ENV_COORDINATOR_FINGERPRINT),
            coordinator_ca_file: p(ENV_COORDINATOR_CA_FILE),
            etcd_endpoints: s(ENV_ETCD_ENDPOINTS),
            etcd_prefix: s(ENV_ETCD_PREFIX),
            etcd_ca_file: p(ENV_ETCD_CA_FILE),
            etcd_cert_file: p(ENV_ETCD_CERT_FILE),
            etcd_key_file: p(ENV_ETCD_KEY_FILE),
            etcd_user: s(ENV_ETCD_USER),
            etcd_password_file: p(ENV_ETCD_PASSWORD_FILE),
            lb: LbEnv {
                enabled: s(ENV_LB_ENABLED),
                path: s(ENV_LB_PATH),
                listen_port: s(ENV_LB_LISTEN_PORT),
                port: s(ENV_LB_PORT),
                template_file: s(ENV_LB_TEMPLATE_FILE),
                validate: s(ENV_LB_VALIDATE),
                nginx_bin: s(ENV_LB_NGINX_BIN),
                reload_label: s(ENV_LB_RELOAD_LABEL),
                reload_service: s(ENV_LB_RELOAD_SERVICE),
            },
            quorum: QuorumEnv {
                enabled: s(ENV_QUORUM_ENABLED),
                promote_after_secs: s(ENV_QUORUM_PROMOTE_AFTER_SECS),
                remove_down_after_secs: s(ENV_QUORUM_REMOVE_DOWN_AFTER_SECS),
                leave_timeout_secs: s(ENV_QUORUM_LEAVE_TIMEOUT_SECS),
            },
            cloud: CloudEnv {
                provider: s(ENV_CLOUD_PROVIDER),
                metadata_url: s(ENV_CLOUD_METADATA_URL),
                node_labels: s(ENV_CLOUD_NODE_LABELS),
                tags_refresh_secs: s(ENV_CLOUD_TAGS_REFRESH_SECS),
            },
            metrics: MetricsEnv {
                listen: s(ENV_METRICS_LISTEN),
                allow_non_loopback: s(ENV_METRICS_ALLOW_NON_LOOPBACK),
            },
        })
    }

    pub fn from_process_env() -> Result<Overrides, ConfigError> {
        Overrides::from_env(|k| std::env::var(k).ok())
    }
}

// ---------------------------------------------------------------------------------------------
// The resolved configuration.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Coordinator,
    SecretsManager,
    Etcd,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Coordinator => "coordinator",
            BackendKind::SecretsManager => "secrets-manager",
            BackendKind::Etcd => "etcd",
        }
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "coordinator" => Ok(BackendKind::Coordinator),
            "secrets-manager" => Ok(BackendKind::SecretsManager),
            "etcd" => Ok(BackendKind::Etcd),
            other => Err(format!(
                "unknown backend {other:?}: use \"coordinator\", \"secrets-manager\" or \"etcd\""
            )),
        }
    }
}

/// `[etcd]` merged with `SWARM_AGENT_ETCD_*` and `--etcd-*` (flags win, then the environment,
/// then the file), checked by [`EtcdConfig::validate`] (endpoints, CA for https, cert + key and
/// user + password together, the prefix). The secret files' modes are checked when the backend
/// opens them.
fn resolve_etcd(
    fe: FileEtcd,
    env: &Overrides,
    flags: &Overrides,
    fp: &Option<PathBuf>,
    cluster: &str,
    target_managers: u8,
) -> Result<EtcdConfig, ConfigError> {
    let split = |v: String| -> Vec<String> {
        v.split(',')
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect()
    };
    let file_endpoints = fe
        .endpoints
        .map(|v| {
            v.into_iter()
                .map(|e| e.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty());
    let (endpoints, origin) = pick(
        flags.etcd_endpoints.clone().map(split),
        "etcd_endpoints",
        env.etcd_endpoints.clone().map(split),
        ENV_ETCD_ENDPOINTS,
        file_endpoints,
        "[etcd] endpoints",
        fp,
    )
    .ok_or_else(|| {
        ConfigError::Missing(format!(
            "the etcd endpoints: set `endpoints = [\"https://HOST:2379\", …]` in the [etcd] \
             table, {ENV_ETCD_ENDPOINTS} or --etcd-endpoints"
        ))
    })?;
    macro_rules! etcd_layer {
        ($field:ident, $var:expr, $file:expr, $key:expr) => {
            pick(
                flags.$field.clone(),
                stringify!($field),
                env.$field.clone(),
                $var,
                $file,
                $key,
                fp,
            )
            .map(|(v, _)| v)
        };
    }
    let mut cfg = EtcdConfig::new(cluster, target_managers, endpoints);
    cfg.prefix = etcd_layer!(
        etcd_prefix,
        ENV_ETCD_PREFIX,
        non_empty(fe.prefix),
        "[etcd] prefix"
    );
    cfg.ca_file = etcd_layer!(
        etcd_ca_file,
        ENV_ETCD_CA_FILE,
        non_empty_path(fe.ca_file),
        "[etcd] ca_file"
    );
    cfg.cert_file = etcd_layer!(
        etcd_cert_file,
        ENV_ETCD_CERT_FILE,
        non_empty_path(fe.cert_file),
        "[etcd] cert_file"
    );
    cfg.key_file = etcd_layer!(
        etcd_key_file,
        ENV_ETCD_KEY_FILE,
        non_empty_path(fe.key_file),
        "[etcd] key_file"
    );
    cfg.user = etcd_layer!(etcd_user, ENV_ETCD_USER, non_empty(fe.user), "[etcd] user");
    cfg.password_file = etcd_layer!(
        etcd_password_file,
        ENV_ETCD_PASSWORD_FILE,
        non_empty_path(fe.password_file),
        "[etcd] password_file"
    );
    cfg.validate().map_err(|e| match e {
        swarmstrap_wire::rendezvous::RendezvousError::Rejected { message, .. } => {
            invalid(&origin, message)
        }
        other => invalid(&origin, other.to_string()),
    })?;
    Ok(cfg)
}

fn parse_role(s: &str) -> Result<RequestedRole, String> {
    match s.trim() {
        "auto" => Ok(RequestedRole::Auto),
        "manager" => Ok(RequestedRole::Manager),
        "worker" => Ok(RequestedRole::Worker),
        other => Err(format!(
            "unknown role {other:?}: use \"auto\", \"manager\" or \"worker\""
        )),
    }
}

/// Which cloud's metadata service gives the private address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudKind {
    Aws,
    DigitalOcean,
    Scaleway,
}

/// How the address advertised to the swarm is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdvertiseSpec {
    /// The IPv4 address of the interface that carries the default route.
    Auto,
    /// The (first) IPv4 address of this interface.
    Interface(String),
    /// The private IPv4 from the cloud's metadata service.
    Cloud(CloudKind),
    /// Exactly this address.
    Ip(IpAddr),
}

impl FromStr for AdvertiseSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        Ok(match s {
            "auto" => AdvertiseSpec::Auto,
            "aws" => AdvertiseSpec::Cloud(CloudKind::Aws),
            "digitalocean" => AdvertiseSpec::Cloud(CloudKind::DigitalOcean),
            "scaleway" => AdvertiseSpec::Cloud(CloudKind::Scaleway),
            _ => {
                if let Some(name) = s.strip_prefix("interface:") {
                    if name.is_empty() {
                        return Err(
                            "\"interface:\" needs an interface name, e.g. interface:eth1".into(),
                        );
                    }
                    AdvertiseSpec::Interface(name.to_string())
                } else if let Ok(ip) = s.parse::<IpAddr>() {
                    AdvertiseSpec::Ip(ip)
                } else {
                    return Err(format!(
                        "{s:?} is not an advertise address: use auto, interface:NAME, aws, \
                         digitalocean, scaleway or an IP address (host names are not resolved)"
                    ));
                }
            }
        })
    }
}

impl fmt::Display for AdvertiseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdvertiseSpec::Auto => f.write_str("auto"),
            AdvertiseSpec::Interface(n) => write!(f, "interface:{n}"),
            AdvertiseSpec::Cloud(CloudKind::Aws) => f.write_str("aws"),
            AdvertiseSpec::Cloud(CloudKind::DigitalOcean) => f.write_str("digitalocean"),
            AdvertiseSpec::Cloud(CloudKind::Scaleway) => f.write_str("scaleway"),
            AdvertiseSpec::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// How the agent trusts the coordinator's TLS certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinatorTls {
    /// Exactly the certificate with this sha256 (what `swarm-coordinator` prints).
    Pinned([u8; 32]),
    /// Certificates signed by the CA(s) in this PEM file.
    CaFile(PathBuf),
    /// The system's trust store (https URL without pin or CA file).
    SystemRoots,
    /// Plain http (lab / development only: the join secret travels unencrypted).
    PlainHttp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// Base URL without trailing slash.
    pub url: String,
    pub tls: CoordinatorTls,
}

/// How a rendered load-balancer config is checked before it replaces the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbValidate {
    /// `nginx -t` when an nginx binary is found locally, else skipped (logged).
    Auto,
    /// `nginx -t` required: no nginx binary is an error (nothing is written).
    Nginx,
    /// Never validate.
    None,
}

impl FromStr for LbValidate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(LbValidate::Auto),
            "nginx" => Ok(LbValidate::Nginx),
            "none" => Ok(LbValidate::None),
            other => Err(format!(
                "unknown validate mode {other:?}: use \"auto\", \"nginx\" or \"none\""
            )),
        }
    }
}

/// One upstream + server block of the rendered config.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LbService {
    /// The upstream's name (`[A-Za-z0-9_]`).
    pub name: String,
    /// The service's published port on every node.
    pub port: u16,
    /// The port nginx listens on for it.
    pub listen: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbConfig {
    pub enabled: bool,
    pub path: PathBuf,
    /// Never empty: `[[lb.services]]`, or one `swarm` service from `port`/`listen_port`.
    pub services: Vec<LbService>,
    pub template_file: Option<PathBuf>,
    pub validate: LbValidate,
    /// `None`: look for `nginx` on PATH, then /usr/sbin/nginx.
    pub nginx_bin: Option<PathBuf>,
    /// `key=value` label of the nginx containers to reload (SIGHUP) after a change.
    pub reload_label: Option<String>,
    /// Swarm service whose containers are reloaded (in addition to the label).
    pub reload_service: Option<String>,
}

pub const DEFAULT_LB_LISTEN_PORT: u16 = 80;
pub const DEFAULT_LB_PORT: u16 = 8080;
pub const DEFAULT_LB_SERVICE: &str = "swarm";
pub const DEFAULT_LB_RELOAD_LABEL: &str = "swarmstrap.lb=nginx";

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            enabled: false,
            path: PathBuf::from(DEFAULT_LB_PATH),
            services: vec![LbService {
                name: DEFAULT_LB_SERVICE.into(),
                port: DEFAULT_LB_PORT,
                listen: DEFAULT_LB_LISTEN_PORT,
            }],
            template_file: None,
            validate: LbValidate::Auto,
            nginx_bin: None,
            reload_label: Some(DEFAULT_LB_RELOAD_LABEL.into()),
            reload_service: None,
        }
    }
}

fn parse_port(v: i64, origin: &str) -> Result<u16, ConfigError> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| invalid(origin, format!("{v} is not a TCP port (1..=65535)")))
}

fn env_port(v: &Option<String>, var: &str) -> Result<Option<u16>, ConfigError> {
    v.as_ref()
        .map(|s| {
            s.trim()
                .parse::<i64>()
                .map_err(|_| invalid(var, format!("{s:?} is not a TCP port (1..=65535)")))
                .and_then(|n| parse_port(n, var))
        })
        .transpose()
}

fn parse_bool(s: &str, origin: &str) -> Result<bool, ConfigError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(invalid(
            origin,
            format!("{other:?} is not a boolean: use true or false"),
        )),
    }
}

fn resolve_lb(flb: FileLb, env: &LbEnv, fp: &Option<PathBuf>) -> Result<LbConfig, ConfigError> {
    let file_origin = |key: &str| match fp {
        Some(p) => format!("[lb] {key} in {}", p.display()),
        None => format!("[lb] {key}"),
    };
    let d = LbConfig::default();
    let enabled = match &env.enabled {
        Some(v) => parse_bool(v, ENV_LB_ENABLED)?,
        None => flb.enabled.unwrap_or(false),
    };
    let path = env
        .path
        .as_ref()
        .map(PathBuf::from)
        .or(non_empty_path(flb.path))
        .unwrap_or(d.path);
    let listen_port = match env_port(&env.listen_port, ENV_LB_LISTEN_PORT)? {
        Some(p) => p,
        None => match flb.listen_port {
            Some(n) => parse_port(n, &file_origin("listen_port"))?,
            None => DEFAULT_LB_LISTEN_PORT,
        },
    };
    let port = match env_port(&env.port, ENV_LB_PORT)? {
        Some(p) => p,
        None => match flb.port {
            Some(n) => parse_port(n, &file_origin("port"))?,
            None => DEFAULT_LB_PORT,
        },
    };
    let services = match flb.services {
        Some(list) if !list.is_empty() => {
            let origin = file_origin("services");
            let mut out: Vec<LbService> = Vec::new();
            for (i, s) in list.into_iter().enumerate() {
                let name = non_empty(s.name).ok_or_else(|| {
                    invalid(&origin, format!("entry {}: `name` is required", i + 1))
                })?;
                if !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(invalid(
                        &origin,
                        format!("entry {}: name {name:?}: use [A-Za-z0-9_-]", i + 1),
                    ));
                }
                if out.iter().any(|o| o.name == name) {
                    return Err(invalid(&origin, format!("name {name:?} appears twice")));
                }
                let port = parse_port(
                    s.port.ok_or_else(|| {
                        invalid(&origin, format!("entry {name:?}: `port` is required"))
                    })?,
                    &origin,
                )?;
                let listen = match s.listen {
                    Some(n) => parse_port(n, &origin)?,
                    None => listen_port,
                };
                out.push(LbService { name, port, listen });
            }
            out
        }
        _ => vec![LbService {
            name: DEFAULT_LB_SERVICE.into(),
            port,
            listen: listen_port,
        }],
    };
    let template_file = env
        .template_file
        .as_ref()
        .map(PathBuf::from)
        .or(non_empty_path(flb.template_file));
    let validate = match (&env.validate, non_empty(flb.validate)) {
        (Some(v), _) => v.parse().map_err(|m| invalid(ENV_LB_VALIDATE, m))?,
        (None, Some(v)) => v
            .parse()
            .map_err(|m| invalid(&file_origin("validate"), m))?,
        (None, None) => LbValidate::Auto,
    };
    let nginx_bin = env
        .nginx_bin
        .as_ref()
        .map(PathBuf::from)
        .or(non_empty_path(flb.nginx_bin));
    let reload_label = match env.reload_label.clone().or(flb.reload_label) {
        // An explicitly empty label in the file disables label-based reloads.
        Some(l) if l.trim().is_empty() => None,
        Some(l) => Some(l.trim().to_string()),
        None => d.reload_label,
    };
    let reload_service = non_empty(env.reload_service.clone().or(flb.reload_service));
    Ok(LbConfig {
        enabled,
        path,
        services,
        template_file,
        validate,
        nginx_bin,
        reload_label,
        reload_service,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file that was read, if any.
    pub config_file: Option<PathBuf>,
    pub cluster: String,
    pub backend: BackendKind,
    pub role: RequestedRole,
    pub target_managers: u8,
    pub advertise_addr: AdvertiseSpec,
    pub docker_host: String,
    pub state_dir: PathBuf,
    pub join_secret_file: PathBuf,
    pub lease_ttl: Duration,
    /// Set when `backend = "coordinator"` (required then).
    pub coordinator: Option<CoordinatorConfig>,
    /// The Secrets Manager backend's own config (`[secrets_manager]`; used when
    /// `backend = "secrets-manager"`).
    pub secrets_manager: SecretsManagerConfig,
    /// The relay's TCP port (`[secrets_manager] relay_port`, default
    /// [`crate::relay::DEFAULT_PORT`]): on Secrets Manager, managers' agents serve the day-2
    /// documents to the swarm's nodes on it. `None`: off (`relay_port = 0`, or the coordinator
    /// backend, whose long-polls are cheap already).
    pub relay_port: Option<u16>,
    /// The etcd backend's config (`[etcd]`, `SWARM_AGENT_ETCD_*`, `--etcd-*`); `Some` exactly
    /// when `backend = "etcd"`.
    pub etcd: Option<EtcdConfig>,
    /// The live nginx load-balancer config (`[lb]`, `SWARM_AGENT_LB_*`).
    pub lb: LbConfig,
    /// The quorum keeper and `leave` (`[quorum]`, `SWARM_AGENT_QUORUM_*`).
    pub quorum: QuorumConfig,
    /// Releases for `swarm-agent upgrade` (`[release]`).
    pub release: ReleaseConfig,
    /// The cloud's metadata service for node labels from tags (`[cloud]`,
    /// `SWARM_AGENT_CLOUD_*`).
    pub cloud: CloudConfig,
    /// The agent's Prometheus metrics listener (`[metrics]`, `SWARM_AGENT_METRICS_*`).
    pub metrics: MetricsConfig,
}

/// Default of `[cloud] tags_refresh_secs`: tags change rarely, and on Secrets Manager every
/// change of the labels is a version of the secret (an unchanged set writes nothing).
pub const DEFAULT_TAGS_REFRESH_SECS: u64 = 300;
/// `[cloud] tags_refresh_secs` bounds (1 s is for labs; a day is the longest a tag change may
/// wait).
pub const TAGS_REFRESH_RANGE_SECS: (u64, u64) = (1, 86_400);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudConfig {
    /// Whose metadata service (and tag encoding); `None`: no cloud (no node labels from tags).
    pub provider: Option<CloudKind>,
    /// The metadata service's base URL instead of the cloud's link-local address (tests,
    /// private clouds). Used for the tags only; `advertise_addr = aws|…` asks the real one.
    pub metadata_url: Option<String>,
    /// Publish the instance's label tags as this node's Docker node labels.
    pub node_labels: bool,
    /// Re-read the tags about this often (±10 % jitter).
    pub tags_refresh: Duration,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            provider: None,
            metadata_url: None,
            node_labels: true,
            tags_refresh: Duration::from_secs(DEFAULT_TAGS_REFRESH_SECS),
        }
    }
}

impl CloudConfig {
    /// The cloud whose tags give this node's labels, if labels from tags are on.
    pub fn label_source(&self) -> Option<CloudKind> {
        self.provider.filter(|_| self.node_labels)
    }
}

fn resolve_cloud(
    fc: FileCloud,
    env: &CloudEnv,
    fp: &Option<PathBuf>,
    advertise: &AdvertiseSpec,
) -> Result<CloudConfig, ConfigError> {
    let file_origin = |key: &str| match fp {
        Some(p) => format!("[cloud] {key} in {}", p.display()),
        None => format!("[cloud] {key}"),
    };
    let d = CloudConfig::default();
    let provider = match (&env.provider, non_empty(fc.provider)) {
        (Some(v), _) => Some((v.clone(), ENV_CLOUD_PROVIDER.to_string())),
        (None, Some(v)) => Some((v, file_origin("provider"))),
        (None, None) => None,
    };
    let provider = match provider {
        None => match advertise {
            AdvertiseSpec::Cloud(kind) => Some(*kind),
            _ => None,
        },
        Some((v, origin)) => match v.trim() {
            "aws" => Some(CloudKind::Aws),
            "digitalocean" => Some(CloudKind::DigitalOcean),
            "scaleway" => Some(CloudKind::Scaleway),
            "none" => None,
            other => {
                return Err(invalid(
                    &origin,
                    format!(
                        "unknown cloud provider {other:?}: use \"aws\", \"digitalocean\", \
                         \"scaleway\" or \"none\""
                    ),
                ))
            }
        },
    };
    let metadata_url = match (&env.metadata_url, non_empty(fc.metadata_url)) {
        (Some(v), _) => Some((v.clone(), ENV_CLOUD_METADATA_URL.to_string())),
        (None, Some(v)) => Some((v, file_origin("metadata_url"))),
        (None, None) => None,
    };
    let metadata_url = match metadata_url {
        None => None,
        Some((url, origin)) => {
            let url = url.trim().trim_end_matches('/').to_string();
            let ok = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .is_some_and(|rest| !rest.is_empty() && !url.chars().any(char::is_whitespace));
            if !ok {
                return Err(invalid(
                    &origin,
                    format!(
                        "{url:?} is not an http(s):// URL: give the metadata service's base \
                         URL, e.g. http://169.254.169.254 (leave it unset on a public cloud)"
                    ),
                ));
            }
            Some(url)
        }
    };
    let node_labels = match (&env.node_labels, fc.node_labels) {
        (Some(v), _) => parse_bool(v, ENV_CLOUD_NODE_LABELS)?,
        (None, Some(b)) => b,
        (None, None) => d.node_labels,
    };
    let refresh = match (&env.tags_refresh_secs, fc.tags_refresh_secs) {
        (Some(v), _) => Some((
            v.trim().parse::<i64>().map_err(|_| {
                invalid(
                    ENV_CLOUD_TAGS_REFRESH_SECS,
                    format!("{v:?} is not a number of seconds"),
                )
            })?,
            ENV_CLOUD_TAGS_REFRESH_SECS.to_string(),
        )),
        (None, Some(n)) => Some((n, file_origin("tags_refresh_secs"))),
        (None, None) => None,
    };
    let tags_refresh = match refresh {
        None => d.tags_refresh,
        Some((n, origin)) => {
            let (lo, hi) = TAGS_REFRESH_RANGE_SECS;
            match u64::try_from(n) {
                Ok(n) if (lo..=hi).contains(&n) => Duration::from_secs(n),
                _ => {
                    return Err(invalid(
                        &origin,
                        format!("{n} is out of range: use {lo}..={hi} seconds"),
                    ))
                }
            }
        }
    };
    Ok(CloudConfig {
        provider,
        metadata_url,
        node_labels,
        tags_refresh,
    })
}

/// The project's release location (`release/README.md`): `{base}/v{VERSION}/{file}`.
pub const DEFAULT_RELEASE_BASE_URL: &str =
    "https://github.com/swarmstrap/swarmstrap/releases/download";

/// The key line of the project's release public key (`release/minisign.pub`).
pub fn default_release_public_key() -> &'static str {
    include_str!("../../release/minisign.pub")
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .unwrap_or_default()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseConfig {
    /// `http(s)://` directory holding `v{VERSION}/` (no trailing slash).
    pub base_url: String,
    /// The minisign public key (the base64 key line) that must have signed `SHA256SUMS`.
    pub public_key: String,
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        ReleaseConfig {
            base_url: DEFAULT_RELEASE_BASE_URL.to_string(),
            public_key: default_release_public_key().to_string(),
        }
    }
}

fn resolve_release(fr: FileRelease, fp: &Option<PathBuf>) -> Result<ReleaseConfig, ConfigError> {
    let origin = |key: &str| match fp {
        Some(p) => format!("[release] {key} in {}", p.display()),
        None => format!("[release] {key}"),
    };
    let mut r = ReleaseConfig::default();
    if let Some(url) = non_empty(fr.base_url) {
        let url = url.trim().trim_end_matches('/').to_string();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        match rest {
            Some(host) if !host.is_empty() && !url.chars().any(char::is_whitespace) => {}
            _ => {
                return Err(invalid(
                    &origin("base_url"),
                    format!(
                        "{url:?} is not an http(s):// URL: give the directory that holds \
                         v<VERSION>/SHA256SUMS, e.g. {DEFAULT_RELEASE_BASE_URL}"
                    ),
                ))
            }
        }
        r.base_url = url;
    }
    if let Some(key) = non_empty(fr.public_key) {
        let key = key.trim().to_string();
        minisign_verify::PublicKey::from_base64(&key).map_err(|e| {
            invalid(
                &origin("public_key"),
                format!(
                    "not a minisign public key ({e}): give the base64 line of the key file \
                     (the line after `untrusted comment:`), e.g. that of release/minisign.pub"
                ),
            )
        })?;
        r.public_key = key;
    }
    Ok(r)
}

/// The agent's metrics listener (`[metrics]`). Off unless `listen` is set; loopback only
/// unless `allow_non_loopback`: the metrics tell the cluster's state (phase, role, keeper
/// actions, backend errors) to whoever can connect, without authentication.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `GET /metrics` is served on this address (`None`: off, the default).
    pub listen: Option<SocketAddr>,
    pub allow_non_loopback: bool,
}

/// The example address of messages and docs.
pub const EXAMPLE_METRICS_LISTEN: &str = "127.0.0.1:9464";

fn resolve_metrics(
    fm: FileMetrics,
    env: &MetricsEnv,
    fp: &Option<PathBuf>,
) -> Result<MetricsConfig, ConfigError> {
    let file_origin = |key: &str| match fp {
        Some(p) => format!("[metrics] {key} in {}", p.display()),
        None => format!("[metrics] {key}"),
    };
    let allow_non_loopback = match (&env.allow_non_loopback, fm.allow_non_loopback) {
        (Some(v), _) => parse_bool(v, ENV_METRICS_ALLOW_NON_LOOPBACK)?,
        (None, Some(b)) => b,
        (None, None) => false,
    };
    let (listen, origin) = match (&env.listen, non_empty(fm.listen)) {
        (Some(v), _) => (v.trim().to_string(), ENV_METRICS_LISTEN.to_string()),
        (None, Some(v)) => (v.trim().to_string(), file_origin("listen")),
        (None, None) => return Ok(MetricsConfig::default()),
    };
    let addr: SocketAddr = listen.parse().map_err(|_| {
        invalid(
            &origin,
            format!(
                "{listen:?} is not an IP:PORT address (host names are not resolved): e.g.                  listen = \"{EXAMPLE_METRICS_LISTEN}\", or leave it unset to serve no metrics"
            ),
        )
    })?;
    if addr.port() == 0 {
        return Err(invalid(
            &origin,
            format!(
                "{listen:?}: give a fixed port for Prometheus to scrape, e.g.                  {EXAMPLE_METRICS_LISTEN}"
            ),
        ));
    }
    if !addr.ip().is_loopback() && !allow_non_loopback {
        return Err(invalid(
            &origin,
            format!(
                "{listen:?} is not a loopback address: the metrics tell the cluster's state                  (phase, role, keeper actions, backend errors) to anyone who can connect,                  without authentication. Listen on 127.0.0.1:PORT (or [::1]:PORT) and scrape                  from the host, or set allow_non_loopback = true in [metrics]                  ({ENV_METRICS_ALLOW_NON_LOOPBACK}=true) and firewall the port to your                  Prometheus"
            ),
        ));
    }
    Ok(MetricsConfig {
        listen: Some(addr),
        allow_non_loopback,
    })
}

pub const DEFAULT_PROMOTE_AFTER_SECS: u64 = 30;
pub const DEFAULT_LEAVE_TIMEOUT_SECS: u64 = 300;
/// T (promote after a manager is down this long) bounds: below 5 s a manager restarting its
/// engine would be replaced; above an hour the cluster sits without fault tolerance.
pub const PROMOTE_AFTER_RANGE_SECS: (u64, u64) = (5, 3600);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumConfig {
    /// Run the quorum keeper (it acts only on the agent of the raft leader).
    pub enabled: bool,
    /// T: a manager Down/Unreachable this long is replaced by a Ready worker; a wrong manager
    /// count must persist this long before the keeper changes it (joins settle first).
    pub promote_after: Duration,
    /// T2: remove nodes Down this long from the swarm (`None`: never; the default).
    pub remove_down_after: Option<Duration>,
    /// `swarm-agent leave`: longest wait for the node's tasks to move elsewhere.
    pub leave_timeout: Duration,
}

impl Default for QuorumConfig {
    fn default() -> Self {
        QuorumConfig {
            enabled: true,
            promote_after: Duration::from_secs(DEFAULT_PROMOTE_AFTER_SECS),
            remove_down_after: None,
            leave_timeout: Duration::from_secs(DEFAULT_LEAVE_TIMEOUT_SECS),
        }
    }
}

fn resolve_quorum(
    fq: FileQuorum,
    env: &QuorumEnv,
    fp: &Option<PathBuf>,
) -> Result<QuorumConfig, ConfigError> {
    let file_origin = |key: &str| match fp {
        Some(p) => format!("[quorum] {key} in {}", p.display()),
        None => format!("[quorum] {key}"),
    };
    // (value, origin) from env (string) or file (integer).
    let secs = |env_v: &Option<String>, env_name: &str, file_v: Option<i64>, key: &str| match (
        env_v, file_v,
    ) {
        (Some(v), _) => v
            .trim()
            .parse::<u64>()
            .map(|n| Some((n, env_name.to_string())))
            .map_err(|_| invalid(env_name, format!("{v:?} is not a number of seconds"))),
        (None, Some(n)) => u64::try_from(n)
            .map(|n| Some((n, file_origin(key))))
            .map_err(|_| invalid(&file_origin(key), format!("{n} is negative"))),
        (None, None) => Ok(None),
    };
    let d = QuorumConfig::default();
    let enabled = match (&env.enabled, fq.enabled) {
        (Some(v), _) => parse_bool(v, ENV_QUORUM_ENABLED)?,
        (None, Some(b)) => b,
        (None, None) => d.enabled,
    };
    let promote_after = match secs(
        &env.promote_after_secs,
        ENV_QUORUM_PROMOTE_AFTER_SECS,
        fq.promote_after_secs,
        "promote_after_secs",
    )? {
        Some((n, origin)) => {
            let (lo, hi) = PROMOTE_AFTER_RANGE_SECS;
            if !(lo..=hi).contains(&n) {
                return Err(invalid(
                    &origin,
                    format!("{n} s is out of range: use {lo}..={hi} seconds"),
                ));
            }
            Duration::from_secs(n)
        }
        None => d.promote_after,
    };
    let remove_down_after = match secs(
        &env.remove_down_after_secs,
        ENV_QUORUM_REMOVE_DOWN_AFTER_SECS,
        fq.remove_down_after_secs,
        "remove_down_after_secs",
    )? {
        Some((0, _)) | None => None,
        Some((n, origin)) => {
            if n < promote_after.as_secs() {
                return Err(invalid(
                    &origin,
                    format!(
                        "{n} s is shorter than promote_after_secs ({} s): a down manager must \
                         be replaced before it is removed (use 0 to never remove)",
                        promote_after.as_secs()
                    ),
                ));
            }
            Some(Duration::from_secs(n))
        }
    };
    let leave_timeout = match secs(
        &env.leave_timeout_secs,
        ENV_QUORUM_LEAVE_TIMEOUT_SECS,
        fq.leave_timeout_secs,
        "leave_timeout_secs",
    )? {
        Some((n, origin)) if n == 0 || n > 3600 => {
            return Err(invalid(&origin, format!("{n}: use 1..=3600 seconds")))
        }
        Some((n, _)) => Duration::from_secs(n),
        None => d.leave_timeout,
    };
    Ok(QuorumConfig {
        enabled,
        promote_after,
        remove_down_after,
        leave_timeout,
    })
}

/// Pick the highest-precedence value and say where it came from.
fn pick<T>(
    flag: Option<T>,
    flag_name: &str,
    env: Option<T>,
    env_name: &str,
    file: Option<T>,
    file_key: &str,
    file_path: &Option<PathBuf>,
) -> Option<(T, String)> {
    if let Some(v) = flag {
        return Some((v, format!("--{}", flag_name.replace('_', "-"))));
    }
    if let Some(v) = env {
        return Some((v, env_name.to_string()));
    }
    if let Some(v) = file {
        let origin = match file_path {
            Some(p) => format!("{file_key} in {}", p.display()),
            None => file_key.to_string(),
        };
        return Some((v, origin));
    }
    None
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|v| !v.trim().is_empty())
}

fn non_empty_path(p: Option<PathBuf>) -> Option<PathBuf> {
    p.filter(|v| !v.as_os_str().is_empty())
}

impl Config {
    /// Load the config the way the binary does: find the file (flag, env, default), read it if
    /// present, merge env and flags over it.
    pub fn load(flags: &Overrides) -> Result<Config, ConfigError> {
        let env = Overrides::from_process_env()?;
        Config::load_with(flags, &env)
    }

    pub fn load_with(flags: &Overrides, env: &Overrides) -> Result<Config, ConfigError> {
        let (path, explicit) = match (&flags.config, &env.config) {
            (Some(p), _) | (None, Some(p)) => (p.clone(), true),
            (None, None) => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let (file, file_path) = match std::fs::read_to_string(&path) {
            Ok(text) => (FileConfig::parse(&text, &path)?, Some(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                (FileConfig::default(), None)
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Config::resolve(file, file_path, env, flags)
    }

    /// Merge the layers: flags > env > file > defaults, then validate.
    pub fn resolve(
        file: FileConfig,
        file_path: Option<PathBuf>,
        env: &Overrides,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let fp = &file_path;
        macro_rules! layer {
            ($field:ident, $var:expr, $file:expr) => {
                pick(
                    flags.$field.clone(),
                    stringify!($field),
                    env.$field.clone(),
                    $var,
                    $file,
                    stringify!($field),
                    fp,
                )
            };
        }

        let (cluster, origin) = layer!(cluster, ENV_CLUSTER, non_empty(file.cluster.clone()))
            .ok_or_else(|| {
                ConfigError::Missing(format!(
                "cluster: set `cluster = \"NAME\"` in the config file, {ENV_CLUSTER} or --cluster"
            ))
            })?;
        swarmstrap_wire::validate_name(&cluster).map_err(|m| invalid(&origin, m))?;

        let backend = match layer!(backend, ENV_BACKEND, non_empty(file.backend.clone())) {
            Some((b, origin)) => b.parse::<BackendKind>().map_err(|m| invalid(&origin, m))?,
            None => BackendKind::Coordinator,
        };

        let role = match layer!(role, ENV_ROLE, non_empty(file.role.clone())) {
            Some((r, origin)) => parse_role(&r).map_err(|m| invalid(&origin, m))?,
            None => RequestedRole::Auto,
        };

        let file_target = match file.target_managers {
            Some(n) => Some(u8::try_from(n).map_err(|_| {
                invalid(
                    "target_managers in the config file",
                    format!("{n}: must be 1, 3, 5 or 7"),
                )
            })?),
            None => None,
        };
        let target_managers = match layer!(target_managers, ENV_TARGET_MANAGERS, file_target) {
            Some((n, origin)) => {
                swarmstrap_wire::validate_target_managers(n).map_err(|m| invalid(&origin, m))?;
                n
            }
            None => DEFAULT_TARGET_MANAGERS,
        };

        let advertise_addr = match layer!(
            advertise_addr,
            ENV_ADVERTISE_ADDR,
            non_empty(file.advertise_addr.clone())
        ) {
            Some((s, origin)) => s
                .parse::<AdvertiseSpec>()
                .map_err(|m| invalid(&origin, m))?,
            None => AdvertiseSpec::Auto,
        };

        let docker_host = match layer!(
            docker_host,
            ENV_DOCKER_HOST,
            non_empty(file.docker_host.clone())
        ) {
            Some((h, origin)) => {
                validate_docker_host(&h).map_err(|m| invalid(&origin, m))?;
                h
            }
            None => DEFAULT_DOCKER_HOST.to_string(),
        };

        let state_dir = layer!(
            state_dir,
            ENV_STATE_DIR,
            non_empty_path(file.state_dir.clone())
        )
        .map(|(p, _)| p)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let join_secret_file = layer!(
            join_secret_file,
            ENV_JOIN_SECRET_FILE,
            non_empty_path(file.join_secret_file.clone())
        )
        .map(|(p, _)| p)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_JOIN_SECRET_FILE));

        let file_ttl = match file.lease_ttl_secs {
            Some(n) => Some(u64::try_from(n).map_err(|_| {
                invalid(
                    "lease_ttl_secs in the config file",
                    format!("{n}: must be positive"),
                )
            })?),
            None => None,
        };
        let lease_ttl_secs = match layer!(lease_ttl_secs, ENV_LEASE_TTL_SECS, file_ttl) {
            Some((n, origin)) => {
                let (lo, hi) = LEASE_TTL_RANGE_SECS;
                if !(lo..=hi).contains(&n) {
                    return Err(invalid(
                        &origin,
                        format!("lease TTL {n} s is out of range: use {lo}..={hi} seconds"),
                    ));
                }
                n
            }
            None => DEFAULT_LEASE_TTL_SECS,
        };

        // [coordinator]
        let fc = file.coordinator.clone().unwrap_or_default();
        let url = pick(
            flags.coordinator_url.clone(),
            "coordinator_url",
            env.coordinator_url.clone(),
            ENV_COORDINATOR_URL,
            non_empty(fc.url),
            "[coordinator] url",
            fp,
        );
        let fingerprint = pick(
            flags.coordinator_fingerprint.clone(),
            "coordinator_fingerprint",
            env.coordinator_fingerprint.clone(),
            ENV_COORDINATOR_FINGERPRINT,
            non_empty(fc.tls_fingerprint),
            "[coordinator] tls_fingerprint",
            fp,
        );
        let ca_file = pick(
            flags.coordinator_ca_file.clone(),
            "coordinator_ca_file",
            env.coordinator_ca_file.clone(),
            ENV_COORDINATOR_CA_FILE,
            non_empty_path(fc.ca_file),
            "[coordinator] ca_file",
            fp,
        );
        let insecure_http = fc.insecure_http.unwrap_or(false);
        let coordinator = match url {
            Some((url, origin)) => Some(resolve_coordinator(
                &url,
                &origin,
                fingerprint,
                ca_file,
                insecure_http,
            )?),
            None => None,
        };
        if backend == BackendKind::Coordinator && coordinator.is_none() {
            return Err(ConfigError::Missing(format!(
                "the coordinator URL: set `url` in the [coordinator] table, \
                 {ENV_COORDINATOR_URL} or --coordinator-url"
            )));
        }

        // [secrets_manager]
        let fs = file.secrets_manager.clone().unwrap_or_default();
        let mut secrets_manager = SecretsManagerConfig::new(cluster.clone(), target_managers);
        match (non_empty(fs.secret_name), non_empty(fs.name_prefix)) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "[secrets_manager] table",
                    "set either secret_name or name_prefix, not both",
                ))
            }
            (Some(name), None) => secrets_manager.secret_name = Some(name),
            (None, Some(prefix)) => secrets_manager.name_prefix = prefix,
            // The backend's default prefix.
            (None, None) => {}
        }
        secrets_manager.region = non_empty(fs.region);
        secrets_manager.kms_key_id = non_empty(fs.kms_key_id);
        secrets_manager.endpoint_url = non_empty(fs.endpoint_url);
        let relay_port = match fs.relay_port {
            None => Some(crate::relay::DEFAULT_PORT),
            Some(0) => None,
            Some(p) => Some(u16::try_from(p).map_err(|_| {
                invalid(
                    "[secrets_manager] relay_port",
                    format!("{p} is not a TCP port (1-65535, or 0 to turn the relay off)"),
                )
            })?),
        }
        .filter(|_| backend == BackendKind::SecretsManager);

        let etcd = if backend == BackendKind::Etcd {
            Some(resolve_etcd(
                file.etcd.clone().unwrap_or_default(),
                env,
                flags,
                fp,
                &cluster,
                target_managers,
            )?)
        } else {
            None
        };

        let flb = file.lb.clone().unwrap_or_default();
        let lb = resolve_lb(flb, &env.lb, fp)?;
        let quorum = resolve_quorum(file.quorum.clone().unwrap_or_default(), &env.quorum, fp)?;
        let release = resolve_release(file.release.clone().unwrap_or_default(), fp)?;
        let cloud = resolve_cloud(
            file.cloud.clone().unwrap_or_default(),
            &env.cloud,
            fp,
            &advertise_addr,
        )?;
        let metrics = resolve_metrics(file.metrics.clone().unwrap_or_default(), &env.metrics, fp)?;

        Ok(Config {
            config_file: file_path,
            cluster,
            backend,
            role,
            target_managers,
            advertise_addr,
            docker_host,
            state_dir,
            join_secret_file,
            lease_ttl: Duration::from_secs(lease_ttl_secs),
            coordinator,
            secrets_manager,
            relay_port,
            etcd,
            lb,
            quorum,
            release,
            cloud,
            metrics,
        })
    }

    pub fn node_id_file(&self) -> PathBuf {
        self.state_dir.join("node-id")
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }
}

fn validate_docker_host(h: &str) -> Result<(), String> {
    if let Some(path) = h.strip_prefix("unix://") {
        if path.starts_with('/') {
            return Ok(());
        }
        return Err(format!(
            "{h:?}: a unix socket needs an absolute path, e.g. unix:///var/run/docker.sock"
        ));
    }
    for scheme in ["tcp://", "http://"] {
        if let Some(rest) = h.strip_prefix(scheme) {
            return if rest.parse::<std::net::SocketAddr>().is_ok() {
                Ok(())
            } else {
                Err(format!(
                    "{h:?}: use {scheme}IP:PORT (host names are not resolved)"
                ))
            };
        }
    }
    Err(format!(
        "{h:?} is not a Docker address: use unix:///PATH or tcp://IP:PORT"
    ))
}

fn resolve_coordinator(
    url: &str,
    origin: &str,
    fingerprint: Option<(String, String)>,
    ca_file: Option<(PathBuf, String)>,
    insecure_http: bool,
) -> Result<CoordinatorConfig, ConfigError> {
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| invalid(origin, format!("{url:?} is not a URL: {e}")))?;
    let host = match parsed.host_str() {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => return Err(invalid(origin, format!("{url:?} has no host"))),
    };
    // A host name is fine: the release build is musl-static, whose resolver reads
    // /etc/resolv.conf and /etc/hosts itself (no NSS modules needed).
    if parsed.path() != "/" || parsed.query().is_some() {
        return Err(invalid(
            origin,
            format!("{url:?}: give only scheme, host and port, e.g. https://10.10.0.2:8443"),
        ));
    }
    let base = format!(
        "{}://{}{}",
        parsed.scheme(),
        host,
        parsed.port().map(|p| format!(":{p}")).unwrap_or_default()
    );
    let tls = match (parsed.scheme(), fingerprint, ca_file) {
        (_, Some((_, fo)), Some((_, co))) => {
            return Err(invalid(
                &format!("{fo} and {co}"),
                "set either a certificate fingerprint or a CA file, not both",
            ))
        }
        ("https", Some((pin, fo)), None) => CoordinatorTls::Pinned(
            swarmstrap_wire::parse_fingerprint(&pin).map_err(|m| invalid(&fo, m))?,
        ),
        ("https", None, Some((ca, _))) => CoordinatorTls::CaFile(ca),
        ("https", None, None) => CoordinatorTls::SystemRoots,
        ("http", None, None) if insecure_http => CoordinatorTls::PlainHttp,
        ("http", None, None) => {
            return Err(invalid(
                origin,
                format!(
                    "{url:?} is plain http: the join secret and this node's credential would \
                     travel in clear text. Use an https URL (with tls_fingerprint or ca_file), \
                     or, in a lab only, set `insecure_http = true` in the [coordinator] table"
                ),
            ))
        }
        ("http", Some((_, o)), _) | ("http", _, Some((_, o))) => {
            return Err(invalid(
                &o,
                format!("{url:?} is plain http: a fingerprint or CA file needs an https URL"),
            ))
        }
        (scheme, _, _) => {
            return Err(invalid(
                origin,
                format!("unsupported scheme {scheme:?}: use https:// (or http:// in a lab)"),
            ))
        }
    };
    Ok(CoordinatorConfig { url: base, tls })
}

/// Test helper and documentation aid: the environment as a map.
pub fn env_from_map(map: &HashMap<String, String>) -> impl Fn(&str) -> Option<String> + '_ {
    move |k| map.get(k).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
cluster = "prod"                       # required
backend = "coordinator"                # coordinator | secrets-manager
role = "auto"                          # auto | manager | worker
target_managers = 3
advertise_addr = "auto"
docker_host = "unix:///var/run/docker.sock"
state_dir = "/var/lib/swarm-agent"
join_secret_file = "/etc/swarm-agent/join-secret"
lease_ttl_secs = 30
[coordinator]
url = "https://10.10.0.2:8443"
tls_fingerprint = "sha256:abababababababababababababababababababababababababababababababab"
# ca_file = "/etc/swarm-agent/coordinator-ca.pem"
[secrets_manager]
secret_name = "swarmstrap/prod"
region = "eu-west-1"
kms_key_id = ""
endpoint_url = ""
[lb]
enabled = false
path = "/loadbalancer/default.conf"
"#;

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(text, Path::new("/etc/swarm-agent/config.toml")).unwrap()
    }

    fn resolve(text: &str, env: &[(&str, &str)], flags: Overrides) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = Overrides::from_env(env_from_map(&map))?;
        Config::resolve(
            file(text),
            Some(PathBuf::from("/etc/swarm-agent/config.toml")),
            &env,
            &flags,
        )
    }

    #[test]
    fn full_example_parses() {
        let c = resolve(FULL, &[], Overrides::default()).unwrap();
        assert_eq!(c.cluster, "prod");
        assert_eq!(c.backend, BackendKind::Coordinator);
        assert_eq!(c.role, RequestedRole::Auto);
        assert_eq!(c.target_managers, 3);
        assert_eq!(c.advertise_addr, AdvertiseSpec::Auto);
        assert_eq!(c.lease_ttl, Duration::from_secs(30));
        let co = c.coordinator.unwrap();
        assert_eq!(co.url, "https://10.10.0.2:8443");
        assert_eq!(co.tls, CoordinatorTls::Pinned([0xab; 32]));
        assert_eq!(c.secrets_manager.resolved_secret_name(), "swarmstrap/prod");
        assert_eq!(c.secrets_manager.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.secrets_manager.kms_key_id, None);
        assert_eq!(c.secrets_manager.endpoint_url, None);
        assert!(!c.lb.enabled);
        assert_eq!(c.lb.path, PathBuf::from("/loadbalancer/default.conf"));
    }

    #[test]
    fn cloud_follows_advertise_addr_and_takes_overrides() {
        const BASE: &str = "cluster = \"c\"\n[coordinator]\nurl = \"https://10.0.0.1:1\"\n";
        let c = resolve(BASE, &[], Overrides::default()).unwrap();
        assert_eq!(c.cloud, CloudConfig::default());
        assert_eq!(c.cloud.label_source(), None);
        let text = format!("advertise_addr = \"aws\"\n{BASE}");
        let c = resolve(&text, &[], Overrides::default()).unwrap();
        assert_eq!(c.cloud.label_source(), Some(CloudKind::Aws));
        let text = format!(
            "{BASE}[cloud]\nprovider = \"scaleway\"\nmetadata_url = \"http://198.18.0.254:9/\"\n\
             tags_refresh_secs = 60\n"
        );
        let c = resolve(&text, &[], Overrides::default()).unwrap();
        assert_eq!(c.cloud.provider, Some(CloudKind::Scaleway));
        assert_eq!(
            c.cloud.metadata_url.as_deref(),
            Some("http://198.18.0.254:9")
        );
        assert_eq!(c.cloud.tags_refresh, Duration::from_secs(60));
        let c = resolve(
            &text,
            &[
                (ENV_CLOUD_PROVIDER, "digitalocean"),
                (ENV_CLOUD_NODE_LABELS, "false"),
                (ENV_CLOUD_TAGS_REFRESH_SECS, "2"),
            ],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.cloud.provider, Some(CloudKind::DigitalOcean));
        assert_eq!(c.cloud.label_source(), None);
        assert_eq!(c.cloud.tags_refresh, Duration::from_secs(2));
        let text = format!("advertise_addr = \"aws\"\n{BASE}[cloud]\nprovider = \"none\"\n");
        let c = resolve(&text, &[], Overrides::default()).unwrap();
        assert_eq!(c.cloud.provider, None);
        for (bad, what) in [
            ("provider = \"gcp\"", "unknown cloud provider"),
            (
                "metadata_url = \"169.254.169.254\"",
                "not an http(s):// URL",
            ),
            ("tags_refresh_secs = 0", "out of range"),
            ("tags_refresh_secs = 86401", "out of range"),
        ] {
            let err = resolve(
                &format!("{BASE}[cloud]\n{bad}\n"),
                &[],
                Overrides::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(what) && err.contains("[cloud]"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn plain_http_needs_insecure_http() {
        let err = resolve(
            "cluster = \"c\"\n[coordinator]\nurl = \"http://198.18.0.1:1\"\n",
            &[],
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("insecure_http = true") && err.contains("clear text"),
            "{err}"
        );
        // From the environment or a flag too: the opt-in is the config file's.
        let err = resolve(
            "cluster = \"c\"\n",
            &[(ENV_COORDINATOR_URL, "http://198.18.0.2:2")],
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("insecure_http"), "{err}");
        let c = resolve(
            "cluster = \"c\"\n[coordinator]\nurl = \"http://198.18.0.1:1\"\ninsecure_http = true\n",
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.coordinator.unwrap().tls, CoordinatorTls::PlainHttp);
        // It changes nothing for https.
        let c = resolve(
            "cluster = \"c\"\n[coordinator]\nurl = \"https://10.0.0.1:8443\"\ninsecure_http = true\n",
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.coordinator.unwrap().tls, CoordinatorTls::SystemRoots);
    }

    #[test]
    fn defaults() {
        let c = resolve(
            "cluster = \"c1\"\n[coordinator]\nurl = \"http://198.18.0.254:8080\"\ninsecure_http = true\n",
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.backend, BackendKind::Coordinator);
        assert_eq!(c.role, RequestedRole::Auto);
        assert_eq!(c.target_managers, 3);
        assert_eq!(c.docker_host, DEFAULT_DOCKER_HOST);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.join_secret_file, PathBuf::from(DEFAULT_JOIN_SECRET_FILE));
        assert_eq!(c.lease_ttl, Duration::from_secs(30));
        assert_eq!(c.coordinator.unwrap().tls, CoordinatorTls::PlainHttp);
        assert_eq!(c.secrets_manager.resolved_secret_name(), "swarmstrap/c1");
        assert_eq!(c.lb.path, PathBuf::from(DEFAULT_LB_PATH));
    }

    #[test]
    fn precedence_flags_over_env_over_file() {
        let text = "cluster = \"from-file\"\nrole = \"worker\"\nlease_ttl_secs = 20\n\
                    target_managers = 5\n[coordinator]\nurl = \"http://198.18.0.1:1\"\ninsecure_http = true\n";
        // file only
        let c = resolve(text, &[], Overrides::default()).unwrap();
        assert_eq!(c.cluster, "from-file");
        assert_eq!(c.role, RequestedRole::Worker);
        assert_eq!(c.target_managers, 5);
        // env beats file
        let env = [
            (ENV_CLUSTER, "from-env"),
            (ENV_ROLE, "manager"),
            (ENV_LEASE_TTL_SECS, "40"),
            (ENV_COORDINATOR_URL, "http://198.18.0.2:2"),
        ];
        let c = resolve(text, &env, Overrides::default()).unwrap();
        assert_eq!(c.cluster, "from-env");
        assert_eq!(c.role, RequestedRole::Manager);
        assert_eq!(c.lease_ttl, Duration::from_secs(40));
        assert_eq!(c.coordinator.as_ref().unwrap().url, "http://198.18.0.2:2");
        assert_eq!(c.target_managers, 5, "unset in env: file value stays");
        // flags beat env
        let flags = Overrides {
            cluster: Some("from-flag".into()),
            lease_ttl_secs: Some(50),
            coordinator_url: Some("http://198.18.0.3:3".into()),
            ..Default::default()
        };
        let c = resolve(text, &env, flags).unwrap();
        assert_eq!(c.cluster, "from-flag");
        assert_eq!(
            c.role,
            RequestedRole::Manager,
            "flag unset: env value stays"
        );
        assert_eq!(c.lease_ttl, Duration::from_secs(50));
        assert_eq!(c.coordinator.unwrap().url, "http://198.18.0.3:3");
    }

    #[test]
    fn metrics_listener_is_off_by_default_and_loopback_only_unless_allowed() {
        let base =
            "cluster = \"c\"\n[coordinator]\nurl = \"http://198.18.0.1:1\"\ninsecure_http = true\n";
        let c = resolve(base, &[], Overrides::default()).unwrap();
        assert_eq!(c.metrics, MetricsConfig::default());
        assert_eq!(c.metrics.listen, None);

        let c = resolve(
            &format!("{base}[metrics]\nlisten = \"127.0.0.1:9464\"\n"),
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        let c = resolve(
            base,
            &[(ENV_METRICS_LISTEN, "[::1]:9100")],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.metrics.listen, Some("[::1]:9100".parse().unwrap()));
        // An empty listen is off.
        let c = resolve(
            &format!("{base}[metrics]\nlisten = \"\"\n"),
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.metrics.listen, None);

        // Not loopback: refused, with the way out named.
        for (text, env) in [
            (
                format!("{base}[metrics]\nlisten = \"0.0.0.0:9464\"\n"),
                vec![],
            ),
            (
                base.to_string(),
                vec![(ENV_METRICS_LISTEN, "10.0.0.5:9464")],
            ),
        ] {
            let e = resolve(&text, &env, Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a loopback address"), "{e}");
            assert!(e.contains("allow_non_loopback = true"), "{e}");
            assert!(e.contains(ENV_METRICS_ALLOW_NON_LOOPBACK), "{e}");
            if env.is_empty() {
                assert!(
                    e.contains("[metrics] listen in /etc/swarm-agent/config.toml"),
                    "{e}"
                );
            } else {
                assert!(e.contains(ENV_METRICS_LISTEN), "{e}");
            }
        }
        // ... unless explicitly allowed (file or environment).
        let c = resolve(
            &format!("{base}[metrics]\nlisten = \"0.0.0.0:9464\"\nallow_non_loopback = true\n"),
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.metrics.listen, Some("0.0.0.0:9464".parse().unwrap()));
        assert!(c.metrics.allow_non_loopback);
        let c = resolve(
            base,
            &[
                (ENV_METRICS_LISTEN, "10.0.0.5:9464"),
                (ENV_METRICS_ALLOW_NON_LOOPBACK, "true"),
            ],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.metrics.listen, Some("10.0.0.5:9464".parse().unwrap()));

        // Bad values name what was wrong.
        for (listen, want) in [
            ("localhost:9464", "not an IP:PORT address"),
            ("127.0.0.1", "not an IP:PORT address"),
            ("127.0.0.1:0", "give a fixed port"),
        ] {
            let e = resolve(base, &[(ENV_METRICS_LISTEN, listen)], Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{listen}: {e}");
        }
        let e = resolve(
            base,
            &[
                (ENV_METRICS_LISTEN, "127.0.0.1:9464"),
                (ENV_METRICS_ALLOW_NON_LOOPBACK, "maybe"),
            ],
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(ENV_METRICS_ALLOW_NON_LOOPBACK), "{e}");
        let e = FileConfig::parse(
            "[metrics]\nport = 1\n",
            Path::new("/etc/swarm-agent/config.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn lb_keys_env_overrides_and_errors() {
        let base =
            "cluster = \"c\"\n[coordinator]\nurl = \"http://198.18.0.1:1\"\ninsecure_http = true\n";
        // Defaults: one `swarm` service 8080 → 80, validate auto, the default reload label.
        let c = resolve(base, &[], Overrides::default()).unwrap();
        assert_eq!(c.lb, LbConfig::default());
        let text = format!(
            "{base}[lb]\nenabled = true\npath = \"/lb/a.conf\"\nvalidate = \"none\"\nreload_label = \"\"\nreload_service = \"proxy\"\nservices = [{{ name = \"web\", port = 8080, listen = 80 }}, {{ name = \"api\", port = 9000 }}]\n"
        );
        let c = resolve(&text, &[], Overrides::default()).unwrap();
        assert!(c.lb.enabled);
        assert_eq!(c.lb.path, PathBuf::from("/lb/a.conf"));
        assert_eq!(c.lb.validate, LbValidate::None);
        assert_eq!(c.lb.reload_label, None);
        assert_eq!(c.lb.reload_service.as_deref(), Some("proxy"));
        assert_eq!(c.lb.services.len(), 2);
        assert_eq!(
            c.lb.services[1].listen, 80,
            "listen defaults to listen_port"
        );
        // Environment beats the file.
        let c = resolve(
            &text,
            &[
                (ENV_LB_ENABLED, "false"),
                (ENV_LB_PATH, "/x/y.conf"),
                (ENV_LB_VALIDATE, "nginx"),
                (ENV_LB_TEMPLATE_FILE, "/t.j2"),
            ],
            Overrides::default(),
        )
        .unwrap();
        assert!(!c.lb.enabled);
        assert_eq!(c.lb.path, PathBuf::from("/x/y.conf"));
        assert_eq!(c.lb.validate, LbValidate::Nginx);
        assert_eq!(c.lb.template_file, Some(PathBuf::from("/t.j2")));
        let c = resolve(
            base,
            &[(ENV_LB_PORT, "9090"), (ENV_LB_LISTEN_PORT, "81")],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!((c.lb.services[0].port, c.lb.services[0].listen), (9090, 81));
        // Bad values name their origin.
        for (env, want) in [
            ((ENV_LB_PORT, "0"), ENV_LB_PORT),
            ((ENV_LB_ENABLED, "maybe"), ENV_LB_ENABLED),
            ((ENV_LB_VALIDATE, "strict"), ENV_LB_VALIDATE),
        ] {
            let err = resolve(base, &[env], Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
        let err = resolve(
            &format!("{base}[lb]\nservices = [{{ name = \"a b\", port = 1 }}]\n"),
            &[],
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("[lb] services") && err.contains("a b"),
            "{err}"
        );
        let err = resolve(
            &format!("{base}[lb]\nport = 70000\n"),
            &[],
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("[lb] port") && err.contains("70000"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = FileConfig::parse("cluster = \"a\"\nclustr = \"b\"\n", Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("clustr"), "{err}");
        let err = FileConfig::parse("[coordinator]\nfingerprint = \"x\"\n", Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("fingerprint"), "{err}");
        let err = FileConfig::parse("[lb]\nprot = 1\n", Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn parse_errors_do_not_quote_the_source_line() {
        let text = "cluster = \"a\"\njoin_secret = \"s3cr3t-value\"\n";
        let err = FileConfig::parse(text, Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("join_secret") && err.contains("line 2"),
            "{err}"
        );
        assert!(!err.contains("s3cr3t-value"), "{err}");
    }

    #[test]
    fn bad_values_name_their_origin() {
        let base =
            "cluster = \"c\"\n[coordinator]\nurl = \"http://198.18.0.1:1\"\ninsecure_http = true\n";
        let err = resolve(base, &[(ENV_ROLE, "boss")], Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(ENV_ROLE) && err.contains("boss"), "{err}");
        let err = resolve(base, &[(ENV_TARGET_MANAGERS, "4")], Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(ENV_TARGET_MANAGERS), "{err}");
        let err = resolve(base, &[(ENV_LEASE_TTL_SECS, "x")], Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(ENV_LEASE_TTL_SECS), "{err}");
        let flags = Overrides {
            advertise_addr: Some("myhost.example".into()),
            ..Default::default()
        };
        let err = resolve(base, &[], flags).unwrap_err().to_string();
        assert!(err.contains("--advertise-addr"), "{err}");
        let err = resolve("cluster = \"Prod\"\n", &[], Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cluster in /etc/swarm-agent/config.toml"),
            "{err}"
        );
        let err = resolve(
            "target_managers = 2\ncluster = \"c\"\n",
            &[],
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("target_managers"), "{err}");
    }

    #[test]
    fn required_settings() {
        let err = resolve("", &[], Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster"), "{err}");
        let err = resolve("cluster = \"c\"\n", &[], Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("coordinator URL"), "{err}");
        // secrets-manager needs no coordinator
        let c = resolve(
            "cluster = \"c\"\nbackend = \"secrets-manager\"\n[secrets_manager]\nname_prefix = \"x/\"\n",
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.backend, BackendKind::SecretsManager);
        assert_eq!(c.secrets_manager.resolved_secret_name(), "x/c");
        assert_eq!(c.relay_port, Some(crate::relay::DEFAULT_PORT));
    }

    #[test]
    fn the_relay_port_is_for_secrets_manager_and_zero_turns_it_off() {
        let sm = |extra: &str| {
            resolve(
                &format!(
                    "cluster = \"c\"\nbackend = \"secrets-manager\"\n[secrets_manager]\n{extra}"
                ),
                &[],
                Overrides::default(),
            )
        };
        assert_eq!(sm("relay_port = 9000\n").unwrap().relay_port, Some(9000));
        assert_eq!(sm("relay_port = 0\n").unwrap().relay_port, None);
        let err = sm("relay_port = 70000\n").unwrap_err().to_string();
        assert!(err.contains("relay_port") && err.contains("70000"), "{err}");
        let c = resolve(
            "cluster = \"c\"\n[coordinator]\nurl = \"https://10.0.0.2:8443\"\ntls_fingerprint = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n",
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.relay_port, None,
            "the coordinator's long-polls need no relay"
        );
    }

    #[test]
    fn the_etcd_table_env_and_flags() {
        let file = "cluster = \"prod\"\nbackend = \"etcd\"\ntarget_managers = 3\n[etcd]\n\
                    endpoints = [\"https://10.0.0.5:2379\", \"https://10.0.0.6:2379\"]\n\
                    ca_file = \"/etc/swarm-agent/etcd-ca.pem\"\n\
                    cert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n\
                    user = \"swarmstrap-prod\"\npassword_file = \"/pw\"\n";
        let c = resolve(file, &[], Overrides::default()).unwrap();
        assert_eq!(c.backend, BackendKind::Etcd);
        assert_eq!(c.relay_port, None, "etcd watches need no relay");
        let e = c.etcd.expect("[etcd] resolved");
        assert_eq!(
            e.endpoints,
            ["https://10.0.0.5:2379", "https://10.0.0.6:2379"]
        );
        assert_eq!(e.resolved_prefix(), "/swarmstrap/prod/");
        assert_eq!(e.managers_prefix(), "/swarmstrap/prod.managers/");
        assert_eq!(e.user.as_deref(), Some("swarmstrap-prod"));
        assert_eq!(e.target_managers, 3);
        // The environment beats the file, flags beat both.
        let c = resolve(
            file,
            &[
                (
                    ENV_ETCD_ENDPOINTS,
                    "https://10.0.0.9:2379, https://10.0.0.8:2379",
                ),
                (ENV_ETCD_PREFIX, "/env/"),
            ],
            Overrides {
                etcd_prefix: Some("/flag/".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let e = c.etcd.unwrap();
        assert_eq!(
            e.endpoints,
            ["https://10.0.0.9:2379", "https://10.0.0.8:2379"]
        );
        assert_eq!(e.resolved_prefix(), "/flag/");
        // Bad input says what is wrong and where it came from.
        let err = resolve(
            "cluster = \"c\"\nbackend = \"etcd\"\n",
            &[],
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("etcd endpoints") && err.contains(ENV_ETCD_ENDPOINTS),
            "{err}"
        );
        let err = resolve(
            "cluster = \"c\"\nbackend = \"etcd\"\n[etcd]\nendpoints = [\"https://10.0.0.5:2379\"]\n",
            &[],
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("[etcd] endpoints") && err.contains("CA file"),
            "{err}"
        );
        let err = resolve(
            "cluster = \"c\"\nbackend = \"etcd\"\n[etcd]\nendpoints = [\"http://10.0.0.5:2379\"]\nuser = \"u\"\n",
            &[],
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("user and password file go together"), "{err}");
        // [etcd] is ignored by the other backends (and not resolved).
        let c = resolve(
            "cluster = \"c\"\nbackend = \"secrets-manager\"\n[etcd]\nendpoints = []\n",
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert!(c.etcd.is_none());
    }

    #[test]
    fn coordinator_tls_choices() {
        let pin = "sha256:".to_string() + &"ab".repeat(32);
        let both = format!(
            "cluster = \"c\"\n[coordinator]\nurl = \"https://10.0.0.1:8443\"\ntls_fingerprint = \"{pin}\"\nca_file = \"/x.pem\"\n"
        );
        assert!(resolve(&both, &[], Overrides::default()).is_err());
        let ca = "cluster = \"c\"\n[coordinator]\nurl = \"https://10.0.0.1:8443/\"\nca_file = \"/x.pem\"\n";
        let c = resolve(ca, &[], Overrides::default()).unwrap();
        let co = c.coordinator.unwrap();
        assert_eq!(co.url, "https://10.0.0.1:8443");
        assert_eq!(co.tls, CoordinatorTls::CaFile("/x.pem".into()));
        let bad = "cluster = \"c\"\n[coordinator]\nurl = \"https://10.0.0.1\"\ntls_fingerprint = \"sha256:12\"\n";
        let err = resolve(bad, &[], Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls_fingerprint"), "{err}");
        let env_pin = [(ENV_COORDINATOR_FINGERPRINT, pin.as_str())];
        let c = resolve(
            "cluster = \"c\"\n[coordinator]\nurl = \"https://10.0.0.1\"\n",
            &env_pin,
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.coordinator.unwrap().tls,
            CoordinatorTls::Pinned([0xab; 32])
        );
    }

    #[test]
    fn advertise_specs() {
        assert_eq!(
            "auto".parse::<AdvertiseSpec>().unwrap(),
            AdvertiseSpec::Auto
        );
        assert_eq!(
            "interface:eth1".parse::<AdvertiseSpec>().unwrap(),
            AdvertiseSpec::Interface("eth1".into())
        );
        assert_eq!(
            "scaleway".parse::<AdvertiseSpec>().unwrap(),
            AdvertiseSpec::Cloud(CloudKind::Scaleway)
        );
        assert_eq!(
            "10.1.2.3".parse::<AdvertiseSpec>().unwrap(),
            AdvertiseSpec::Ip("10.1.2.3".parse().unwrap())
        );
        assert!("interface:".parse::<AdvertiseSpec>().is_err());
        assert!("host.example".parse::<AdvertiseSpec>().is_err());
    }

    #[test]
    fn docker_hosts() {
        assert!(validate_docker_host("unix:///run/docker.sock").is_ok());
        assert!(validate_docker_host("tcp://127.0.0.1:2375").is_ok());
        assert!(validate_docker_host("tcp://localhost:2375").is_err());
        assert!(validate_docker_host("unix://relative").is_err());
        assert!(validate_docker_host("ssh://x").is_err());
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let flags = Overrides {
            config: Some("/nonexistent/swarm-agent.toml".into()),
            ..Default::default()
        };
        let err = Config::load_with(&flags, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/swarm-agent.toml"), "{err}");
    }

    #[test]
    fn every_env_var_is_documented_once_in_the_readme() {
        let readme = include_str!("../README.md");
        let mut seen = std::collections::HashSet::new();
        for var in all_env_vars() {
            assert!(seen.insert(var), "{var} is declared twice");
            assert!(var.starts_with("SWARM_AGENT_"), "{var}");
            assert!(
                readme.contains(&format!("`{var}")),
                "agent/README.md does not document {var}"
            );
        }
    }

    #[test]
    fn flags_show_their_env_var_in_the_help() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            overrides: Overrides,
        }
        let cmd = Cli::command();
        for (field, var) in ENV_VARS {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == *field)
                .unwrap_or_else(|| panic!("no flag for {field}"));
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.contains(&format!("[env: {var}]")), "{field}: {help}");
        }
    }
}
