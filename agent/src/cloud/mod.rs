//! Cloud metadata: the private IPv4 a node advertises to the swarm, and the node labels its
//! tags ask for. One trait whose methods default to "not supported", one file per cloud, one
//! `match` that picks the provider by name.
//!
//! Tag encodings (the Terraform modules write them from `manager_labels` / `worker_labels`):
//! AWS instance tag `swarm.label.<KEY>` = `<VALUE>` (read through IMDS instance tags);
//! Scaleway server tag `swarm.label.<KEY>=<VALUE>`; DigitalOcean tag `swarm-label:<KEY>:<VALUE>`
//! (DigitalOcean tag names allow only letters, digits, `:`, `-`, `_`).
//! Every provider takes its base URL as a parameter so tests run it against an in-process mock
//! server; only [`provider`] knows the real link-local addresses.

mod aws;
mod digitalocean;
mod scaleway;

pub use aws::Aws;
pub use digitalocean::DigitalOcean;
pub use scaleway::Scaleway;

use crate::config::CloudKind;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Per-request timeout: the metadata service is link-local and answers in milliseconds when it
/// is up; a longer wait only delays the retry.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("{provider} metadata does not provide {what}")]
    NotSupported {
        provider: &'static str,
        what: &'static str,
    },
    /// Network trouble or a 5xx: the service may not be up yet (early boot).
    #[error("{url}: {message}")]
    Unavailable { url: String, message: String },
    /// The service answered, but not what we expect: retrying will not help.
    #[error("{url}: unexpected answer: {message}")]
    BadResponse { url: String, message: String },
    /// AWS answers 404 for the instance tags when tags are not allowed in the metadata.
    #[error(
        "{url}: HTTP 404: instance tags are not available in the instance metadata, so no node \
         labels are read from tags. Allow them: the launch template's `metadata_options {{ \
         instance_metadata_tags = \"enabled\" }}` (the swarmstrap AWS module sets it), or `aws ec2 \
         modify-instance-metadata-options --instance-id ID --instance-metadata-tags enabled`"
    )]
    TagsNotInMetadata { url: String },
}

impl CloudError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CloudError::Unavailable { .. })
    }
}

#[async_trait]
pub trait MetadataProvider: Send + Sync {
    fn name(&self) -> &'static str;

    /// The instance's private IPv4 address.
    async fn private_ipv4(&self) -> Result<Ipv4Addr, CloudError> {
        Err(CloudError::NotSupported {
            provider: self.name(),
            what: "a private IPv4 address",
        })
    }

    /// The node labels the instance's tags ask for, decoded from this cloud's encoding.
    async fn tag_labels(&self) -> Result<TagLabels, CloudError> {
        Err(CloudError::NotSupported {
            provider: self.name(),
            what: "instance tags",
        })
    }
}

/// Node labels decoded from an instance's tags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagLabels {
    pub labels: BTreeMap<String, String>,
    /// Tags in the label encoding that were refused, each with the tag and the reason (the
    /// agent logs each at warn).
    pub refused: Vec<String>,
}

impl TagLabels {
    /// Build from `(tag as the cloud shows it, key, value)`: each checked by the rendezvous's
    /// label rules ([`swarmstrap_wire::labels`]); a key given twice with different values is
    /// refused (ambiguous); beyond [`swarmstrap_wire::labels::MAX_NODE_LABELS`] the rest
    /// (in key order) is refused.
    pub fn collect(tags: impl IntoIterator<Item = (String, String, String)>) -> TagLabels {
        use swarmstrap_wire::labels::{validate_node_label, MAX_NODE_LABELS};
        let mut out = TagLabels::default();
        let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
        let mut ambiguous = std::collections::BTreeSet::new();
        for (tag, key, value) in tags {
            if let Err(e) = validate_node_label(&key, &value) {
                out.refused.push(format!("tag {tag:?}: {e}"));
                continue;
            }
            match seen.get(&key) {
                Some((_, v)) if *v != value => {
                    ambiguous.insert(key.clone());
                }
                Some(_) => {}
                None => {
                    seen.insert(key, (tag, value));
                }
            }
        }
        for key in &ambiguous {
            seen.remove(key);
            out.refused.push(format!(
                "label {key:?}: several tags give it different values; keep one"
            ));
        }
        for (i, (key, (tag, value))) in seen.into_iter().enumerate() {
            if i >= MAX_NODE_LABELS {
                out.refused.push(format!(
                    "tag {tag:?}: more than {MAX_NODE_LABELS} label tags; this one is left out"
                ));
            } else {
                out.labels.insert(key, value);
            }
        }
        out
    }
}

/// The provider for `kind` at its real metadata address.
pub fn provider(kind: CloudKind) -> Box<dyn MetadataProvider> {
    provider_at(kind, None)
}

/// The provider for `kind` at `base_url` (`[cloud] metadata_url`: tests, private clouds), else
/// at its real metadata address. The kind picks the parser either way.
pub fn provider_at(kind: CloudKind, base_url: Option<&str>) -> Box<dyn MetadataProvider> {
    match kind {
        CloudKind::Aws => Box::new(Aws::new(base_url.unwrap_or(aws::BASE_URL))),
        CloudKind::DigitalOcean => Box::new(DigitalOcean::new(
            base_url.unwrap_or(digitalocean::BASE_URL),
        )),
        CloudKind::Scaleway => Box::new(Scaleway::new(base_url.unwrap_or(scaleway::BASE_URL))),
    }
}

pub(crate) fn http_client() -> reqwest::Client {
    swarmstrap_wire::pin::crypto_provider(); // reqwest has no provider of its own
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT)
        .build()
        .expect("a plain http client builds")
}

/// Send a request and return its body text; 5xx and network errors are transient.
pub(crate) async fn fetch_text(
    req: reqwest::RequestBuilder,
    url: &str,
) -> Result<String, CloudError> {
    let unavailable = |message: String| CloudError::Unavailable {
        url: url.to_string(),
        message,
    };
    let resp = req.send().await.map_err(|e| unavailable(e.to_string()))?;
    body_text(resp, url).await
}

/// A response's body text; 5xx and network errors are transient.
pub(crate) async fn body_text(resp: reqwest::Response, url: &str) -> Result<String, CloudError> {
    let unavailable = |message: String| CloudError::Unavailable {
        url: url.to_string(),
        message,
    };
    let status = resp.status();
    let body = resp.text().await.map_err(|e| unavailable(e.to_string()))?;
    if status.is_success() {
        Ok(body)
    } else if status.is_server_error() || status.as_u16() == 429 {
        Err(unavailable(format!("HTTP {status}")))
    } else {
        Err(CloudError::BadResponse {
            url: url.to_string(),
            message: format!("HTTP {status}"),
        })
    }
}

pub(crate) fn parse_ipv4(text: &str, url: &str) -> Result<Ipv4Addr, CloudError> {
    text.trim().parse().map_err(|_| CloudError::BadResponse {
        url: url.to_string(),
        message: format!("{:?} is not an IPv4 address", text.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(key: &str, value: &str) -> (String, String, String) {
        (
            format!("swarm.label.{key}"),
            key.to_string(),
            value.to_string(),
        )
    }

    #[test]
    fn collect_refuses_bad_reserved_ambiguous_and_surplus_tags_by_name() {
        let got = TagLabels::collect([
            t("zone", "a"),
            t("com.docker.x", "v"),
            t("bad key", "v"),
            t("dup", "1"),
            t("dup", "2"),
            t("same", "1"),
            t("same", "1"),
        ]);
        assert_eq!(got.labels.len(), 2, "{got:?}");
        assert_eq!(got.labels["zone"], "a");
        assert_eq!(got.labels["same"], "1");
        let refused = got.refused.join("\n");
        assert!(refused.contains("swarm.label.com.docker.x") && refused.contains("reserved"));
        assert!(refused.contains("swarm.label.bad key"), "{refused}");
        assert!(refused.contains("\"dup\"") && refused.contains("different values"));
        let many = TagLabels::collect((0..40).map(|i| t(&format!("k{i:02}"), "v")));
        assert_eq!(many.labels.len(), swarmstrap_wire::labels::MAX_NODE_LABELS);
        assert_eq!(
            many.refused.len(),
            40 - swarmstrap_wire::labels::MAX_NODE_LABELS
        );
    }
}

#[cfg(test)]
pub(crate) mod mock {
    //! An in-process HTTP server on 127.0.0.1:0 for the provider tests.
    use axum::Router;

    pub async fn serve(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        format!("http://{addr}")
    }
}
