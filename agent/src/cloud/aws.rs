//! AWS EC2 instance metadata, IMDSv2: PUT a session token, then GET with it. Node labels come
//! from instance tags `swarm.label.<KEY>` = `<VALUE>` (`/latest/meta-data/tags/instance`: the
//! keys, one a line, then each value), which needs instance tags allowed in the metadata.

use super::{fetch_text, http_client, parse_ipv4, CloudError, MetadataProvider, TagLabels};
use async_trait::async_trait;
use std::net::Ipv4Addr;

pub(super) const BASE_URL: &str = "http://169.254.169.254";
/// Token lifetime asked for; the agent needs it for one round of requests.
const TOKEN_TTL_SECS: &str = "60";
/// The tag key prefix that makes an instance tag a node label.
pub const TAG_PREFIX: &str = "swarm.label.";

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

    async fn token(&self) -> Result<String, CloudError> {
        let token_url = format!("{}/latest/api/token", self.base);
        let token = fetch_text(
            self.http
                .put(&token_url)
                .header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECS),
            &token_url,
        )
        .await?;
        Ok(token.trim().to_string())
    }
}

#[async_trait]
impl MetadataProvider for Aws {
    fn name(&self) -> &'static str {
        "aws"
    }

    async fn private_ipv4(&self) -> Result<Ipv4Addr, CloudError> {
        let token = self.token().await?;
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

    async fn tag_labels(&self) -> Result<TagLabels, CloudError> {
        let token = self.token().await?;
        let list_url = format!("{}/latest/meta-data/tags/instance", self.base);
        let resp = self
            .http
            .get(&list_url)
            .header("X-aws-ec2-metadata-token", &token)
            .send()
            .await
            .map_err(|e| CloudError::Unavailable {
                url: list_url.clone(),
                message: e.to_string(),
            })?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(CloudError::TagsNotInMetadata { url: list_url });
        }
        let keys = super::body_text(resp, &list_url).await?;
        let mut tags = Vec::new();
        let mut refused = Vec::new();
        for tag in keys.lines().map(str::trim).filter(|k| !k.is_empty()) {
            let Some(key) = tag.strip_prefix(TAG_PREFIX) else {
                continue;
            };
            // Check the key before it goes into a URL (AWS allows only letters, digits and
            // `+ - = . , _ : @` in keys shown in the metadata; the label rules are stricter).
            if let Err(e) = swarmstrap_wire::labels::validate_node_label(key, "") {
                refused.push(format!("tag {tag:?}: {e}"));
                continue;
            }
            let url = format!("{list_url}/{tag}");
            let value = fetch_text(
                self.http
                    .get(&url)
                    .header("X-aws-ec2-metadata-token", &token),
                &url,
            )
            .await?;
            tags.push((tag.to_string(), key.to_string(), value));
        }
        let mut out = TagLabels::collect(tags);
        out.refused.splice(0..0, refused);
        Ok(out)
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

    fn imds(tags: &'static [(&'static str, &'static str)]) -> Router {
        use axum::extract::Path;
        let authorized = |h: &HeaderMap| {
            h.get("x-aws-ec2-metadata-token")
                .is_some_and(|t| t == "tok-9")
        };
        Router::new()
            .route("/latest/api/token", put(|| async { "tok-9" }))
            .route(
                "/latest/meta-data/tags/instance",
                get(move |h: HeaderMap| async move {
                    if !authorized(&h) {
                        return (StatusCode::UNAUTHORIZED, String::new());
                    }
                    let keys: Vec<&str> = tags.iter().map(|(k, _)| *k).collect();
                    (StatusCode::OK, keys.join("\n"))
                }),
            )
            .route(
                "/latest/meta-data/tags/instance/{key}",
                get(move |h: HeaderMap, Path(key): Path<String>| async move {
                    if !authorized(&h) {
                        return (StatusCode::UNAUTHORIZED, String::new());
                    }
                    match tags.iter().find(|(k, _)| *k == key) {
                        Some((_, v)) => (StatusCode::OK, v.to_string()),
                        None => (StatusCode::NOT_FOUND, String::new()),
                    }
                }),
            )
    }

    #[tokio::test]
    async fn instance_tags_with_the_prefix_become_labels() {
        let base = crate::cloud::mock::serve(imds(&[
            ("Name", "web-1"),
            ("swarm.label.zone", "eu-west-1a"),
            ("swarm.label.gpu", "a100"),
            ("swarm.label.com.docker.evil", "x"),
            ("swarm.label.bad", "a;b"),
        ]))
        .await;
        let got = Aws::new(&base).tag_labels().await.unwrap();
        assert_eq!(
            got.labels,
            [
                ("gpu".to_string(), "a100".to_string()),
                ("zone".into(), "eu-west-1a".into())
            ]
            .into()
        );
        let refused = got.refused.join("\n");
        assert!(refused.contains("swarm.label.com.docker.evil"), "{refused}");
        assert!(refused.contains("swarm.label.bad"), "{refused}");
        assert_eq!(got.refused.len(), 2);
    }

    #[tokio::test]
    async fn tags_not_allowed_in_metadata_say_what_to_do() {
        let app = Router::new().route("/latest/api/token", put(|| async { "t" }));
        let base = crate::cloud::mock::serve(app).await;
        let err = Aws::new(&base).tag_labels().await.unwrap_err();
        assert!(matches!(err, CloudError::TagsNotInMetadata { .. }), "{err}");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("instance_metadata_tags"), "{err}");
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
