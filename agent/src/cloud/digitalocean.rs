//! DigitalOcean droplet metadata: the first private interface's IPv4, and node labels from
//! droplet tags `swarm-label:<KEY>:<VALUE>` (`/metadata/v1/tags/`, one tag a line; tag names
//! allow only letters, digits, `:`, `-` and `_`, so KEY has no `:` and VALUE is what follows).

use super::{fetch_text, http_client, parse_ipv4, CloudError, MetadataProvider, TagLabels};
use async_trait::async_trait;
use std::net::Ipv4Addr;

pub(super) const BASE_URL: &str = "http://169.254.169.254";
/// The tag name prefix that makes a droplet tag a node label.
pub const TAG_PREFIX: &str = "swarm-label:";

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

    async fn tag_labels(&self) -> Result<TagLabels, CloudError> {
        let url = format!("{}/metadata/v1/tags/", self.base);
        let text = fetch_text(self.http.get(&url), &url).await?;
        Ok(parse_tags(&text))
    }
}

/// Decode `swarm-label:<KEY>:<VALUE>` tags (one a line); other tags are not labels.
fn parse_tags(text: &str) -> TagLabels {
    let mut refused = Vec::new();
    let mut tags = Vec::new();
    for tag in text.lines().map(str::trim).filter(|t| !t.is_empty()) {
        let Some(rest) = tag.strip_prefix(TAG_PREFIX) else {
            continue;
        };
        match rest.split_once(':') {
            Some((key, value)) => tags.push((tag.to_string(), key.to_string(), value.to_string())),
            None => refused.push(format!(
                "tag {tag:?}: expected swarm-label:<KEY>:<VALUE> (no ':' after the key)"
            )),
        }
    }
    let mut out = TagLabels::collect(tags);
    out.refused.splice(0..0, refused);
    out
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
    async fn droplet_tags_with_the_prefix_become_labels() {
        let app = Router::new().route(
            "/metadata/v1/tags/",
            get(|| async {
                "k8s\nswarm-label:zone:ams3\nswarm-label:role:edge:1\nswarm-label:nokey\n\
                 swarm-label:swarmstrap.x:y\nswarm-label:empty:\n"
            }),
        );
        let base = crate::cloud::mock::serve(app).await;
        let got = DigitalOcean::new(&base).tag_labels().await.unwrap();
        assert_eq!(got.labels.len(), 3, "{got:?}");
        assert_eq!(got.labels["zone"], "ams3");
        assert_eq!(got.labels["role"], "edge:1");
        assert_eq!(got.labels["empty"], "");
        let refused = got.refused.join("\n");
        assert!(refused.contains("swarm-label:nokey"), "{refused}");
        assert!(refused.contains("swarm-label:swarmstrap.x:y") && refused.contains("reserved"));
    }

    #[tokio::test]
    async fn a_missing_tags_endpoint_is_a_permanent_error_naming_the_url() {
        let base = crate::cloud::mock::serve(Router::new()).await;
        let err = DigitalOcean::new(&base).tag_labels().await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert!(err.to_string().contains("/metadata/v1/tags/"), "{err}");
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
