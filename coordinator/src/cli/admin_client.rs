//! The admin API client the CLI uses while a server holds the data dir's database lock. It
//! reads the admin listener's address and the certificate fingerprint from DATA_DIR/server.json
//! and the bearer token from DATA_DIR/admin.token, and pins the certificate. The admin API is
//! served only on the admin listener (`serve --admin-listen`, loopback by default).

use crate::datadir::DataDir;
use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use swarmstrap_wire::{ClusterStatus, CreateCluster, CreatedCluster, ErrorBody, Secret};

pub struct AdminClient {
    base: String,
    token: Secret,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn from_data_dir(dir: &DataDir) -> anyhow::Result<Self> {
        let info = dir.read_server_info().context(
            "the database is locked by a running server, but its connection details are missing",
        )?;
        let token = dir
            .read_admin_token()
            .context("the database is locked by a running server, but its admin token cannot be read (run this as the user that runs the server)")?;
        let Some(admin) = info.admin_listen else {
            bail!(
                "the running server's {} names no admin listener (a server older than this CLI?): \
                 run the CLI of the same version as the server",
                dir.path(crate::datadir::SERVER_FILE).display()
            );
        };
        let addr = connect_addr(admin);
        swarmstrap_wire::pin::crypto_provider(); // reqwest has no provider of its own
        let builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .no_proxy();
        let http = match info.scheme.as_str() {
            "https" => {
                let fp = info
                    .fingerprint
                    .as_deref()
                    .context("server.json says https but names no certificate fingerprint")?;
                let pin = swarmstrap_wire::parse_fingerprint(fp)
                    .map_err(anyhow::Error::msg)
                    .context("bad fingerprint in server.json")?;
                builder
                    .tls_backend_preconfigured(swarmstrap_wire::pin::pinned_client_config(pin))
                    .build()?
            }
            "http" => builder.build()?,
            other => bail!("server.json names an unknown scheme {other:?}"),
        };
        Ok(AdminClient {
            base: format!("{}://{addr}", info.scheme),
            token,
            http,
        })
    }

    async fn call<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let resp = req
            .bearer_auth(self.token.expose())
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the running server at {} (if it is gone, remove its stale server.json)",
                    self.base
                )
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .context("cannot read the server's answer")?;
        if !status.is_success() {
            if let Ok(e) = serde_json::from_slice::<ErrorBody>(&bytes) {
                bail!(
                    "the server refused: {} ({}): {}",
                    status,
                    e.error,
                    e.message
                );
            }
            bail!("the server refused: {status}");
        }
        serde_json::from_slice(&bytes).context("the server's answer is not what this CLI expects")
    }

    pub async fn create(&self, req: &CreateCluster) -> anyhow::Result<CreatedCluster> {
        self.call(
            self.http
                .post(format!("{}/v1/admin/clusters", self.base))
                .json(req),
        )
        .await
    }

    pub async fn reset(&self, name: &str) -> anyhow::Result<ClusterStatus> {
        self.call(
            self.http
                .post(format!("{}/v1/admin/clusters/{name}/reset", self.base))
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await
    }

    pub async fn request_token_rotation(&self, name: &str) -> anyhow::Result<ClusterStatus> {
        self.call(
            self.http
                .post(format!(
                    "{}/v1/admin/clusters/{name}/rotate-tokens",
                    self.base
                ))
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await
    }

    pub async fn set_adoption_hold(&self, name: &str, hold: bool) -> anyhow::Result<ClusterStatus> {
        self.call(
            self.http
                .post(format!(
                    "{}/v1/admin/clusters/{name}/adoption-hold",
                    self.base
                ))
                .json(&serde_json::json!({ "hold": hold })),
        )
        .await
    }

    pub async fn set_operator_credential(
        &self,
        name: &str,
        req: &crate::api::OperatorCredentialChange,
    ) -> anyhow::Result<crate::api::OperatorCredentialChanged> {
        let body = serde_json::json!({
            "operator_credential": req.operator_credential.as_ref().map(|s| s.expose()),
        });
        self.call(
            self.http
                .post(format!(
                    "{}/v1/admin/clusters/{name}/operator-credential",
                    self.base
                ))
                .json(&body),
        )
        .await
    }

    pub async fn list(&self) -> anyhow::Result<Vec<ClusterStatus>> {
        self.call(self.http.get(format!("{}/v1/admin/clusters", self.base)))
            .await
    }

    pub async fn show(&self, name: &str) -> anyhow::Result<ClusterStatus> {
        self.call(
            self.http
                .get(format!("{}/v1/admin/clusters/{name}", self.base)),
        )
        .await
    }
}

/// The address to dial for a listen address (unspecified → loopback of the same family).
fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_becomes_loopback() {
        assert_eq!(
            connect_addr("0.0.0.0:8443".parse().unwrap()),
            "127.0.0.1:8443".parse().unwrap()
        );
        assert_eq!(
            connect_addr("[::]:1".parse().unwrap()),
            "[::1]:1".parse().unwrap()
        );
        assert_eq!(
            connect_addr("198.18.0.5:2".parse().unwrap()),
            "198.18.0.5:2".parse().unwrap()
        );
    }
}
