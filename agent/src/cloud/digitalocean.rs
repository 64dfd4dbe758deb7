//! DigitalOcean droplet metadata: the first private interface's IPv4.

use super::{fetch_text, http_client, parse_ipv4, CloudError, MetadataProvider};
use async_trait::async_trait;
use std::net::Ipv4Addr;

pub(super) const BASE_URL: &str = "http://169.254.169.254";

pub struct DigitalOcean {
    base: String,
    http: reqwest::Client,
}

impl DigitalOcean {
    pub fn new(base_url: &str) -> DigitalOcean {
        DigitalOcean {
            base: base_url.trim_end_matches('/').to_string(),
            http: http_client(),
        }
    }
}

#[async_trait]
impl MetadataProvider for DigitalOcean {
    fn name(&self) -> &'static str {
        "digitalocean"
    }

    async fn private_ipv4(&self) -> Result<Ipv4Addr, CloudError> {
        let url = format!(
            "{}/metadata/v1/interfaces/private/0/ipv4/address",
            self.base
        );
        let text = fetch_text(self.http.get(&url), &url).await?;
        parse_ipv4(&text, &url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::Router;

    #[tokio::test]
    async fn private_interface_address() {
        let app = Router::new().route(
            "/metadata/v1/interfaces/private/0/ipv4/address",
            get(|| async { "10.110.0.5\n" }),
        );
        let base = crate::cloud::mock::serve(app).await;
        let ip = DigitalOcean::new(&base).private_ipv4().await.unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 110, 0, 5));
    }

    #[tokio::test]
    async fn no_private_interface_is_permanent() {
        let app = Router::new().route(
            "/metadata/v1/interfaces/private/0/ipv4/address",
            get(|| async { (StatusCode::NOT_FOUND, "not found") }),
        );
        let base = crate::cloud::mock::serve(app).await;
        let err = DigitalOcean::new(&base).private_ipv4().await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
    }
}
