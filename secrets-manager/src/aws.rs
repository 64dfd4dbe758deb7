//! The three storage primitives on top of Secrets Manager — read the current document, create
//! the secret, compare-and-swap a new version — plus error mapping and API call counting.
//!
//! Nothing here logs or formats a secret value: the document text only ever goes from
//! `serde_json` into the SDK builder (whose `Debug` redacts it) and back.

use crate::doc::{ClusterDoc, MAX_SECRET_BYTES, SCHEMA};
use crate::{rejected, ApiCallCounts};
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_secretsmanager::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::Client;
use rand::RngCore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use swarmstrap_wire::rendezvous::{RendezvousError, Result};

/// The label a new version is written under before it is promoted to AWSCURRENT. Any label
/// other than AWSCURRENT works: it only keeps PutSecretValue from making the version current
/// unconditionally (PutSecretValue without VersionStages would move AWSCURRENT itself).
pub const PENDING_STAGE: &str = "SWARMSTRAP_PENDING";
pub const CURRENT_STAGE: &str = "AWSCURRENT";

/// The current document and the id of the version that holds it.
#[derive(Debug)]
pub struct Snapshot {
    pub version_id: String,
    pub doc: ClusterDoc,
}

/// Outcome of a write attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The new version is AWSCURRENT.
    Committed,
    /// Someone else wrote first (secret created, or AWSCURRENT moved): re-read and retry.
    Lost,
}

/// A fresh random version id / idempotency token (UUID v4 text, 36 characters; AWS requires
/// 32–64). Fresh per attempt, so a version id names exactly one write by exactly one node.
pub fn request_token() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// One failed AWS call, reduced to what may be logged: operation, error code, AWS's message
/// (never contains the secret value), HTTP status.
#[derive(Debug)]
pub struct AwsError {
    pub op: &'static str,
    pub code: Option<String>,
    pub message: String,
    pub status: Option<u16>,
    kind: FailureKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    Service,
    Timeout,
    Dispatch,
    Response,
    Construction,
}

impl AwsError {
    pub fn from_sdk<E>(op: &'static str, err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let (kind, code, message) = match &err {
            SdkError::ServiceError(_) => (
                FailureKind::Service,
                err.code().map(str::to_string),
                err.message().unwrap_or("").to_string(),
            ),
            SdkError::TimeoutError(_) => (FailureKind::Timeout, None, "timed out".to_string()),
            // Connection errors and credential loading land here; their text names hosts and
            // providers, never request bodies.
            SdkError::DispatchFailure(_) => (
                FailureKind::Dispatch,
                None,
                DisplayErrorContext(&err).to_string(),
            ),
            // A response that could not be parsed: its body could be the secret, so the parser's
            // message is not kept.
            SdkError::ResponseError(_) => (
                FailureKind::Response,
                None,
                "unparseable response".to_string(),
            ),
            SdkError::ConstructionFailure(_) => (
                FailureKind::Construction,
                None,
                DisplayErrorContext(&err).to_string(),
            ),
            _ => (
                FailureKind::Dispatch,
                None,
                "unknown SDK failure".to_string(),
            ),
        };
        let e = AwsError {
            op,
            code,
            message,
            status,
            kind,
        };
        tracing::debug!(
            operation = op,
            code = e.code.as_deref().unwrap_or("-"),
            status = e.status.unwrap_or(0),
            "AWS call failed"
        );
        e
    }

    pub fn is_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// Map to the error the agent sees, and log it (operation + code, never a value).
    pub fn into_rendezvous(self, secret_name: &str) -> RendezvousError {
        let err = match self.kind {
            FailureKind::Service => classify(
                self.op,
                self.code.as_deref().unwrap_or("Unknown"),
                &self.message,
                self.status,
                secret_name,
            ),
            FailureKind::Timeout | FailureKind::Response => {
                RendezvousError::Transient(format!("{} on {secret_name}: {}", self.op, self.message))
            }
            FailureKind::Dispatch => {
                let lower = self.message.to_ascii_lowercase();
                if lower.contains("no providers in chain provided credentials")
                    || lower.contains("credentials not loaded")
                {
                    RendezvousError::Unauthorized(format!(
                        "{} on {secret_name}: no AWS credentials found ({}); attach an instance \
                         role (IMDSv2) or set AWS_* credentials",
                        self.op, self.message
                    ))
                } else {
                    RendezvousError::Transient(format!(
                        "{} on {secret_name}: {}",
                        self.op, self.message
                    ))
                }
            }
            FailureKind::Construction => rejected(
                "misconfigured",
                format!(
                    "{} on {secret_name}: cannot build the AWS request: {} (check region and endpoint)",
                    self.op, self.message
                ),
            ),
        };
        tracing::warn!(
            operation = self.op,
            code = self.code.as_deref().unwrap_or("-"),
            status = self.status.unwrap_or(0),
            secret = secret_name,
            error = %err,
            "AWS Secrets Manager call failed"
        );
        err
    }
}

/// Map a Secrets Manager service error code to the rendezvous error kind. Pure, unit-tested.
pub fn classify(
    op: &str,
    code: &str,
    message: &str,
    status: Option<u16>,
    secret_name: &str,
) -> RendezvousError {
    let detail = format!("{op} on secret {secret_name}: {code}: {message}");
    match code {
        "AccessDeniedException"
        | "AccessDenied"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "InvalidClientTokenId"
        | "MissingAuthenticationToken"
        | "ExpiredTokenException"
        | "ExpiredToken"
        | "NotAuthorized" => RendezvousError::Unauthorized(format!(
            "{detail} (the instance role needs the IAM policy in the swarmstrap secrets-manager \
             README: CreateSecret, GetSecretValue, PutSecretValue, UpdateSecretVersionStage on \
             both arn:…:secret:{secret_name}-?????? and, for calls made before the secret \
             exists, arn:…:secret:{secret_name})"
        )),
        "DecryptionFailure" | "EncryptionFailure" => RendezvousError::Unauthorized(format!(
            "{detail} (the role needs kms:Decrypt and kms:GenerateDataKey on the secret's KMS key, and the key must be enabled)"
        )),
        "InvalidRequestException" if mentions_deletion(message) => scheduled_for_deletion(secret_name),
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "InternalServiceError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "RequestTimeout"
        | "RequestTimeoutException" => RendezvousError::Transient(detail),
        "LimitExceededException" => rejected(
            "aws_limit_exceeded",
            format!("{detail} (a Secrets Manager quota was hit, e.g. too many versions of the secret; wait or raise the quota)"),
        ),
        "ResourceNotFoundException" => rejected(
            "secret_not_found",
            format!("{detail} (the secret disappeared; was it deleted?)"),
        ),
        _ if status.is_some_and(|s| s >= 500) => RendezvousError::Transient(detail),
        _ => rejected("aws_rejected", detail),
    }
}

fn mentions_deletion(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("scheduled for deletion")
        || m.contains("marked deleted")
        || m.contains("marked for deletion")
}

/// The clear error for a name that a recent DeleteSecret still blocks.
pub fn scheduled_for_deletion(secret_name: &str) -> RendezvousError {
    rejected(
        "secret_scheduled_for_deletion",
        format!(
            "secret {secret_name} is scheduled for deletion, and AWS blocks its name until the \
             recovery window (7-30 days) ends. Either restore it with `aws secretsmanager \
             restore-secret --secret-id {secret_name}` (only if it belongs to this cluster's \
             live swarm: it holds that swarm's join tokens), or delete it for good with `aws \
             secretsmanager delete-secret --secret-id {secret_name} \
             --force-delete-without-recovery`, or configure another secret name for this cluster"
        ),
    )
}

/// Counts every HTTP attempt the SDK makes (SDK-internal retries included), per operation.
#[derive(Debug, Default)]
pub struct CallCounter {
    get_secret_value: AtomicU64,
    create_secret: AtomicU64,
    put_secret_value: AtomicU64,
    update_secret_version_stage: AtomicU64,
    other: AtomicU64,
}

impl CallCounter {
    pub fn snapshot(&self) -> ApiCallCounts {
        ApiCallCounts {
            get_secret_value: self.get_secret_value.load(Ordering::Relaxed),
            create_secret: self.create_secret.load(Ordering::Relaxed),
            put_secret_value: self.put_secret_value.load(Ordering::Relaxed),
            update_secret_version_stage: self.update_secret_version_stage.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug)]
pub struct CountingInterceptor(pub Arc<CallCounter>);

impl Intercept for CountingInterceptor {
    fn name(&self) -> &'static str {
        "SwarmstrapCallCounter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        // awsJson1.1: the operation is named in the X-Amz-Target header.
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("");
        let c = &self.0;
        let slot = match target.rsplit('.').next().unwrap_or("") {
            "GetSecretValue" => &c.get_secret_value,
            "CreateSecret" => &c.create_secret,
            "PutSecretValue" => &c.put_secret_value,
            "UpdateSecretVersionStage" => &c.update_secret_version_stage,
            _ => &c.other,
        };
        slot.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The secret, seen as a versioned document store.
#[derive(Debug, Clone)]
pub struct Store {
    pub client: Client,
    pub secret_name: String,
    pub cluster: String,
    pub kms_key_id: Option<String>,
}

impl Store {
    /// GetSecretValue(VersionStage=AWSCURRENT). `None` when the secret does not exist.
    /// VersionStage is always given: moto answers a bare GetSecretValue with a stale version
    /// after AWSCURRENT moved (and on AWS it is the same request).
    pub async fn read(&self) -> Result<Option<Snapshot>> {
        let out = match self
            .client
            .get_secret_value()
            .secret_id(&self.secret_name)
            .version_stage(CURRENT_STAGE)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let e = AwsError::from_sdk("GetSecretValue", e);
                if e.is_code("ResourceNotFoundException") {
                    return Ok(None);
                }
                return Err(e.into_rendezvous(&self.secret_name));
            }
        };
        let version_id = out.version_id().unwrap_or_default().to_string();
        let Some(text) = out.secret_string() else {
            return Err(rejected(
                "foreign_secret",
                format!(
                    "secret {} holds binary data, not a swarmstrap document; use another secret name",
                    self.secret_name
                ),
            ));
        };
        let doc = self.parse(text)?;
        Ok(Some(Snapshot { version_id, doc }))
    }

    /// Parse and check the document. serde's messages can quote input values, so only the
    /// position is reported.
    fn parse(&self, text: &str) -> Result<ClusterDoc> {
        let doc: ClusterDoc = serde_json::from_str(text).map_err(|e| {
            rejected(
                "foreign_secret",
                format!(
                    "secret {} does not hold a swarmstrap document (invalid at line {} column {}); \
                     use another secret name, or delete this secret if it is a broken leftover",
                    self.secret_name,
                    e.line(),
                    e.column()
                ),
            )
        })?;
        if doc.schema != SCHEMA {
            return Err(rejected(
                "unsupported_schema",
                format!(
                    "secret {} holds document schema {}, this swarm-agent understands {SCHEMA}; upgrade the agent",
                    self.secret_name, doc.schema
                ),
            ));
        }
        if doc.name() != self.cluster {
            return Err(rejected(
                "foreign_secret",
                format!(
                    "secret {} belongs to cluster {:?}, not {:?}; use one secret per cluster",
                    self.secret_name,
                    doc.name(),
                    self.cluster
                ),
            ));
        }
        Ok(doc)
    }

    fn encode(&self, doc: &ClusterDoc) -> Result<String> {
        let text = serde_json::to_string(doc)
            .map_err(|_| rejected("internal", "cannot encode the cluster document"))?;
        if text.len() > MAX_SECRET_BYTES {
            return Err(rejected(
                "document_too_large",
                format!(
                    "the cluster document of {} would be {} bytes, above the {MAX_SECRET_BYTES}-byte \
                     Secrets Manager limit (too many nodes or too large documents)",
                    self.secret_name,
                    text.len()
                ),
            ));
        }
        Ok(text)
    }

    /// CreateSecret with the first document; `version_id` becomes its ClientRequestToken (so
    /// an SDK retry of the same attempt is idempotent) and the initial AWSCURRENT version id.
    pub async fn create(&self, doc: &ClusterDoc, version_id: &str) -> Result<WriteOutcome> {
        let text = self.encode(doc)?;
        let mut req = self
            .client
            .create_secret()
            .name(&self.secret_name)
            .client_request_token(version_id)
            .description(format!(
                "swarmstrap rendezvous of cluster {} (written by swarm-agent; holds join tokens)",
                self.cluster
            ))
            .secret_string(text);
        if let Some(key) = &self.kms_key_id {
            req = req.kms_key_id(key);
        }
        match req.send().await {
            Ok(_) => Ok(WriteOutcome::Committed),
            Err(e) => {
                let e = AwsError::from_sdk("CreateSecret", e);
                if e.is_code("ResourceExistsException") {
                    Ok(WriteOutcome::Lost)
                } else {
                    Err(e.into_rendezvous(&self.secret_name))
                }
            }
        }
    }

    /// Compare-and-swap: write `doc` as a new version under a non-current label, then move
    /// AWSCURRENT to it *from `prev_version`*. UpdateSecretVersionStage refuses the move
    /// (InvalidParameterException) unless AWSCURRENT is still on `prev_version`, so the new
    /// version becomes current only if nobody else committed since our read.
    ///
    /// Any failure of the stage move is reported as `Lost`, including a transient one after
    /// which the move may in fact have happened (or an SDK retry whose first attempt did
    /// move it, answered InvalidParameterException): the caller re-reads and recognises its
    /// own commit by the version id (fresh per attempt), either as AWSCURRENT or in the
    /// document's `recent_writes`, so nothing is applied twice or lost.
    ///
    /// `prev_version` is `None` for a secret that exists without any value (created empty,
    /// e.g. by hand or by Terraform): then the move is made without RemoveFromVersionId, which
    /// AWS refuses as soon as AWSCURRENT is attached to any version — again exactly one
    /// writer wins. (PutSecretValue attaches AWSCURRENT by itself to a secret's first
    /// version; the re-read then shows that version as ours.)
    pub async fn cas(
        &self,
        prev_version: Option<&str>,
        doc: &ClusterDoc,
        version_id: &str,
    ) -> Result<WriteOutcome> {
        let text = self.encode(doc)?;
        if let Err(e) = self
            .client
            .put_secret_value()
            .secret_id(&self.secret_name)
            .client_request_token(version_id)
            .secret_string(text)
            .version_stages(PENDING_STAGE)
            .send()
            .await
        {
            return Err(AwsError::from_sdk("PutSecretValue", e).into_rendezvous(&self.secret_name));
        }
        match self
            .client
            .update_secret_version_stage()
            .secret_id(&self.secret_name)
            .version_stage(CURRENT_STAGE)
            .move_to_version_id(version_id)
            .set_remove_from_version_id(prev_version.map(str::to_string))
            .send()
            .await
        {
            Ok(_) => Ok(WriteOutcome::Committed),
            Err(e) => {
                let e = AwsError::from_sdk("UpdateSecretVersionStage", e);
                if e.is_code("InvalidParameterException") {
                    // AWSCURRENT is no longer on prev_version: someone else committed.
                    Ok(WriteOutcome::Lost)
                } else if e.kind == FailureKind::Service && !is_transient_code(&e) {
                    Err(e.into_rendezvous(&self.secret_name))
                } else {
                    tracing::warn!(
                        operation = e.op,
                        code = e.code.as_deref().unwrap_or("-"),
                        "outcome of the AWSCURRENT move unknown; re-reading"
                    );
                    Ok(WriteOutcome::Lost)
                }
            }
        }
    }
}

fn is_transient_code(e: &AwsError) -> bool {
    matches!(
        classify(
            e.op,
            e.code.as_deref().unwrap_or(""),
            &e.message,
            e.status,
            ""
        ),
        RendezvousError::Transient(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(e: RendezvousError) -> (&'static str, String) {
        match e {
            RendezvousError::Unauthorized(m) => ("unauthorized", m),
            RendezvousError::Conflict { code, .. } => ("conflict", code),
            RendezvousError::Rejected { code, message } => {
                ("rejected", format!("{code}: {message}"))
            }
            RendezvousError::Transient(m) => ("transient", m),
        }
    }

    #[test]
    fn error_codes_map_to_what_the_caller_should_do() {
        for code in [
            "AccessDeniedException",
            "UnrecognizedClientException",
            "InvalidSignatureException",
            "ExpiredTokenException",
            "DecryptionFailure",
        ] {
            assert_eq!(
                kind(classify("GetSecretValue", code, "m", Some(400), "s")).0,
                "unauthorized",
                "{code}"
            );
        }
        for code in [
            "ThrottlingException",
            "InternalServiceError",
            "TooManyRequestsException",
        ] {
            assert_eq!(
                kind(classify("PutSecretValue", code, "m", Some(400), "s")).0,
                "transient",
                "{code}"
            );
        }
        assert_eq!(
            kind(classify("X", "SomethingNew", "m", Some(503), "s")).0,
            "transient"
        );
        assert_eq!(
            kind(classify("X", "SomethingNew", "m", Some(400), "s")).0,
            "rejected"
        );
        assert_eq!(
            kind(classify(
                "X",
                "InvalidRequestException",
                "bad",
                Some(400),
                "s"
            ))
            .0,
            "rejected"
        );
    }

    #[test]
    fn deletion_blocked_name_says_what_to_do() {
        // Real AWS (CreateSecret) and moto (GetSecretValue) wordings.
        for msg in [
            "You can't create this secret because a secret with this name is already scheduled for deletion.",
            "You tried to perform the operation on a secret that's currently marked deleted.",
            "You can't perform this operation on the secret because it was marked for deletion.",
        ] {
            let (k, m) = kind(classify("CreateSecret", "InvalidRequestException", msg, Some(400), "swarmstrap/prod"));
            assert_eq!(k, "rejected");
            assert!(m.starts_with("secret_scheduled_for_deletion"), "{m}");
            assert!(m.contains("aws secretsmanager restore-secret --secret-id swarmstrap/prod"), "{m}");
            assert!(m.contains("--force-delete-without-recovery"), "{m}");
            assert!(m.contains("another secret name"), "{m}");
        }
    }

    #[test]
    fn tokens_are_fresh_uuids() {
        let a = request_token();
        let b = request_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
