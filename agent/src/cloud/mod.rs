//! Cloud metadata: the private IPv4 a node advertises to the swarm. One trait whose methods
//! default to "not supported", one file per cloud, one `match` that picks the provider by name.
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
}

/// The provider for `kind` at its real metadata address.
pub fn provider(kind: CloudKind) -> Box<dyn MetadataProvider> {
    match kind {
        CloudKind::Aws => Box::new(Aws::new(aws::BASE_URL)),
        CloudKind::DigitalOcean => Box::new(DigitalOcean::new(digitalocean::BASE_URL)),
        CloudKind::Scaleway => Box::new(Scaleway::new(scaleway::BASE_URL)),
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
