//! AWS EC2 instance metadata, IMDSv2: PUT a session token, then GET with it.

use super::{fetch_text, http_client, parse_ipv4, CloudError, MetadataProvider};
use async_trait::async_trait;
use std::net::Ipv4Addr;

pub(super) const BASE_URL: &str = "http://169.254.169.254";
/// Token lifetime asked for; the agent needs it for one request.
const TOKEN_TTL_SECS: &str = "60";

pub struct Aws {
    base: String,
    http: reqwest::Client,
}

impl Aws {
    pub fn new(base_url: &str) -> Aws {
        Aws {
            base: base_url.trim_end_matches('/').to_string(),
            http: http_client(),
        }
    }
}

#[async_trait]
impl MetadataProvider for Aws {
    fn name(&self) -> &'static str {
        "aws"
    }

    async fn private_ipv4(&self) -> Result<Ipv4Addr, CloudError> {
        let token_url = format!("{}/latest/api/token", self.base);
        let token = fetch_text(
            self.http
                .put(&token_url)
                .header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECS),
            &token_url,
        )
        .await?;
        let url = format!("{}/latest/meta-data/local-ipv4", self.base);
        let text = fetch_text(
            self.http
                .get(&url)
                .header("X-aws-ec2-metadata-token", token.trim()),
            &url,
        )
        .await?;
        parse_ipv4(&text, &url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, put};
    use axum::Router;

    #[tokio::test]
    async fn imdsv2_token_then_local_ipv4() {
        let app = Router::new()
            .route(
                "/latest/api/token",
                put(|h: HeaderMap| async move {
                    assert_eq!(h["x-aws-ec2-metadata-token-ttl-seconds"], TOKEN_TTL_SECS);
                    "tok-123"
                }),
            )
            .route(
                "/latest/meta-data/local-ipv4",
                get(|h: HeaderMap| async move {
                    match h.get("x-aws-ec2-metadata-token") {
                        Some(t) if t == "tok-123" => (StatusCode::OK, "10.0.1.17"),
                        _ => (StatusCode::UNAUTHORIZED, ""),
                    }
                }),
            );
        let base = crate::cloud::mock::serve(app).await;
        let ip = Aws::new(&base).private_ipv4().await.unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 0, 1, 17));
    }

    #[tokio::test]
    async fn server_errors_are_transient_and_garbage_is_not() {
        let app = Router::new().route(
            "/latest/api/token",
            put(|| async { (StatusCode::SERVICE_UNAVAILABLE, "") }),
        );
        let base = crate::cloud::mock::serve(app).await;
        let err = Aws::new(&base).private_ipv4().await.unwrap_err();
        assert!(err.is_transient(), "{err}");

        let app = Router::new()
            .route("/latest/api/token", put(|| async { "t" }))
            .route("/latest/meta-data/local-ipv4", get(|| async { "<html>" }));
        let base = crate::cloud::mock::serve(app).await;
        let err = Aws::new(&base).private_ipv4().await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert!(err.to_string().contains("local-ipv4"), "{err}");
    }
}
