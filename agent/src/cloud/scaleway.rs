//! Scaleway instance metadata: `private_ip` of `/conf?format=json`.

use super::{fetch_text, http_client, parse_ipv4, CloudError, MetadataProvider};
use async_trait::async_trait;
use std::net::Ipv4Addr;

pub(super) const BASE_URL: &str = "http://169.254.42.42";

pub struct Scaleway {
    base: String,
    http: reqwest::Client,
}

impl Scaleway {
    pub fn new(base_url: &str) -> Scaleway {
        Scaleway {
            base: base_url.trim_end_matches('/').to_string(),
            http: http_client(),
        }
    }
}

#[async_trait]
impl MetadataProvider for Scaleway {
    fn name(&self) -> &'static str {
        "scaleway"
    }

    async fn private_ipv4(&self) -> Result<Ipv4Addr, CloudError> {
        let url = format!("{}/conf?format=json", self.base);
        let text = fetch_text(self.http.get(&url), &url).await?;
        let conf: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CloudError::BadResponse {
                url: url.clone(),
                message: format!("not JSON: {e}"),
            })?;
        match conf.get("private_ip").and_then(|v| v.as_str()) {
            Some(ip) => parse_ipv4(ip, &url),
            None => Err(CloudError::BadResponse {
                url,
                message: "no private_ip (does the instance have a private network?)".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;

    #[tokio::test]
    async fn private_ip_from_conf() {
        let app = Router::new().route(
            "/conf",
            get(|q: axum::extract::RawQuery| async move {
                assert_eq!(q.0.as_deref(), Some("format=json"));
                r#"{"id":"x","hostname":"scw-1","private_ip":"10.64.3.9","public_ip":null}"#
            }),
        );
        let base = crate::cloud::mock::serve(app).await;
        let ip = Scaleway::new(&base).private_ipv4().await.unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 64, 3, 9));
    }

    #[tokio::test]
    async fn missing_private_ip_is_explained() {
        let app = Router::new().route("/conf", get(|| async { r#"{"private_ip":null}"# }));
        let base = crate::cloud::mock::serve(app).await;
        let err = Scaleway::new(&base).private_ipv4().await.unwrap_err();
        assert!(err.to_string().contains("private_ip"), "{err}");
    }
}
