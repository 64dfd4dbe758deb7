//! Scaleway instance metadata: `private_ip` of `/conf?format=json`, and node labels from its
//! `tags` (server tags `swarm.label.<KEY>=<VALUE>`).

use super::{fetch_text, http_client, parse_ipv4, CloudError, MetadataProvider, TagLabels};
use async_trait::async_trait;
use std::net::Ipv4Addr;

pub(super) const BASE_URL: &str = "http://169.254.42.42";
/// The tag prefix that makes a server tag a node label.
pub const TAG_PREFIX: &str = "swarm.label.";

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

    async fn conf(&self) -> Result<(serde_json::Value, String), CloudError> {
        let url = format!("{}/conf?format=json", self.base);
        let text = fetch_text(self.http.get(&url), &url).await?;
        let conf = serde_json::from_str(&text).map_err(|e| CloudError::BadResponse {
            url: url.clone(),
            message: format!("not JSON: {e}"),
        })?;
        Ok((conf, url))
    }
}

#[async_trait]
impl MetadataProvider for Scaleway {
    fn name(&self) -> &'static str {
        "scaleway"
    }

    async fn private_ipv4(&self) -> Result<Ipv4Addr, CloudError> {
        let (conf, url) = self.conf().await?;
        match conf.get("private_ip").and_then(|v| v.as_str()) {
            Some(ip) => parse_ipv4(ip, &url),
            None => Err(CloudError::BadResponse {
                url,
                message: "no private_ip (does the instance have a private network?)".into(),
            }),
        }
    }

    async fn tag_labels(&self) -> Result<TagLabels, CloudError> {
        let (conf, url) = self.conf().await?;
        let tags = match conf.get("tags") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(a)) => a.clone(),
            Some(_) => {
                return Err(CloudError::BadResponse {
                    url,
                    message: "`tags` is not a list".into(),
                })
            }
        };
        let mut refused = Vec::new();
        let mut found = Vec::new();
        for tag in tags.iter().filter_map(|t| t.as_str()) {
            let Some(rest) = tag.strip_prefix(TAG_PREFIX) else {
                continue;
            };
            match rest.split_once('=') {
                Some((key, value)) => {
                    found.push((tag.to_string(), key.to_string(), value.to_string()))
                }
                None => refused.push(format!(
                    "tag {tag:?}: expected swarm.label.<KEY>=<VALUE> (no '=')"
                )),
            }
        }
        let mut out = TagLabels::collect(found);
        out.refused.splice(0..0, refused);
        Ok(out)
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
    async fn server_tags_with_the_prefix_become_labels() {
        let app = Router::new().route(
            "/conf",
            get(|| async {
                r#"{"private_ip":"10.0.0.1","tags":["web","swarm.label.zone=fr-par-1",
                   "swarm.label.team=a=b","swarm.label.novalue","swarm.label.com.docker.x=1"]}"#
            }),
        );
        let base = crate::cloud::mock::serve(app).await;
        let got = Scaleway::new(&base).tag_labels().await.unwrap();
        assert_eq!(got.labels.len(), 2, "{got:?}");
        assert_eq!(got.labels["zone"], "fr-par-1");
        assert_eq!(got.labels["team"], "a=b");
        let refused = got.refused.join("\n");
        assert!(refused.contains("swarm.label.novalue"), "{refused}");
        assert!(refused.contains("swarm.label.com.docker.x=1"), "{refused}");

        let app = Router::new().route("/conf", get(|| async { r#"{"private_ip":null}"# }));
        let base = crate::cloud::mock::serve(app).await;
        assert!(Scaleway::new(&base)
            .tag_labels()
            .await
            .unwrap()
            .labels
            .is_empty());
        let app = Router::new().route("/conf", get(|| async { r#"{"tags":"x"}"# }));
        let base = crate::cloud::mock::serve(app).await;
        let err = Scaleway::new(&base).tag_labels().await.unwrap_err();
        assert!(err.to_string().contains("not a list"), "{err}");
    }

    #[tokio::test]
    async fn missing_private_ip_is_explained() {
        let app = Router::new().route("/conf", get(|| async { r#"{"private_ip":null}"# }));
        let base = crate::cloud::mock::serve(app).await;
        let err = Scaleway::new(&base).private_ipv4().await.unwrap_err();
        assert!(err.to_string().contains("private_ip"), "{err}");
    }
}
