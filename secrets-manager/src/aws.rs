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
    /// Unknown or lost (a stage move that failed, a timeout): re-read; the document's
    /// `recent_writes` tells whether this attempt committed after all.
    Lost,
    /// The successor of the version this attempt read already exists (someone else's write,
    /// or an earlier attempt of this call): nothing was created. Carries that successor's id,
    /// so the caller can promote it if AWSCURRENT still lags on the version it read.
    Taken(String),
    /// The name is blocked by a recent deletion (CreateSecret: "scheduled for deletion"):
    /// retry with backoff for a while — a force-deleted name frees within seconds or minutes.
    NameBlocked,
}

/// The version id of the one version that may follow `prev` (`None`: the secret's first
/// value), used as the write's ClientRequestToken. AWS refuses a second, different version
/// under an existing token (ResourceExistsException) and creates nothing, so every version
/// has at most one successor: the stored versions form a single chain however many writers
/// race, whatever a stale read showed them, and however the stage moves interleave. A UUID
/// layout (36 characters) built from sha256 of the predecessor's id.
pub fn successor_token(secret_name: &str, prev: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"swarmstrap successor 1\0");
    match prev {
        Some(p) => {
            h.update(b"after\0");
            h.update(p.as_bytes());
        }
        None => {
            h.update(b"first\0");
            h.update(secret_name.as_bytes());
        }
    }
    let d = h.finalize();
    uuid_text(&d[..16])
}

fn uuid_text(b: &[u8]) -> String {
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

/// A fresh random version id / idempotency token (UUID v4 text, 36 characters; AWS requires
/// 32–64). Fresh per attempt, so a version id names exactly one write by exactly one node.
pub fn request_token() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid_text(&b)
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
        // The versions quota (or another account quota): it clears as old versions age out
        // (unlabeled versions past 100 and older than 24 h are removed), so retry later; the
        // backend itself creates a version per committed write only.
        "LimitExceededException" => RendezvousError::Transient(format!(
            "{detail} (a Secrets Manager quota, e.g. too many versions of the secret created \
             within 24 h: something else writes this secret often; retrying with backoff)"
        )),
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
        let Some((version_id, text)) = self.read_text().await? else {
            return Ok(None);
        };
        let doc = self.parse(&text)?;
        Ok(Some(Snapshot { version_id, doc }))
    }

    /// The AWSCURRENT version's id and text; `None` when the secret (or its value) does not
    /// exist.
    pub(crate) async fn read_text(&self) -> Result<Option<(String, String)>> {
        self.read_text_of(None).await
    }

    /// The document of version `version_id` (versions are immutable: a read by id is never
    /// stale in content, only maybe not yet visible); `None` when it does not exist (yet).
    pub async fn read_version(&self, version_id: &str) -> Result<Option<Snapshot>> {
        let Some((version_id, text)) = self.read_text_of(Some(version_id)).await? else {
            return Ok(None);
        };
        let doc = self.parse(&text)?;
        Ok(Some(Snapshot { version_id, doc }))
    }

    async fn read_text_of(&self, version_id: Option<&str>) -> Result<Option<(String, String)>> {
        let req = self.client.get_secret_value().secret_id(&self.secret_name);
        let req = match version_id {
            Some(v) => req.version_id(v),
            None => req.version_stage(CURRENT_STAGE),
        };
        let out = match req.send().await {
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
        Ok(Some((version_id, text.to_string())))
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

    /// CreateSecret with the first document under the first version's id
    /// ([`successor_token`] of `None`): an SDK retry of the same attempt is idempotent, and
    /// of all contenders exactly one creates the secret (the others get
    /// ResourceExistsException: `Lost`, re-read). The secret is tagged with the cluster and
    /// its role, so an operator (and `terraform destroy` policies) can find what the agents
    /// created.
    pub async fn create(&self, doc: &ClusterDoc) -> Result<WriteOutcome> {
        let text = self.encode(doc)?;
        // The read that found no secret may have been stale: a first version that is already
        // visible by its id saves a CreateSecret that would be refused.
        let first = successor_token(&self.secret_name, None);
        if self.exists(&first).await? {
            return Ok(WriteOutcome::Taken(first));
        }
        self.create_text(text, "rendezvous").await
    }

    pub(crate) async fn create_text(&self, text: String, role: &str) -> Result<WriteOutcome> {
        use aws_sdk_secretsmanager::types::Tag;
        let mut req = self
            .client
            .create_secret()
            .name(&self.secret_name)
            .client_request_token(successor_token(&self.secret_name, None))
            .description(format!(
                "swarmstrap {role} secret of cluster {} (written by swarm-agent; holds join tokens)",
                self.cluster
            ))
            .tags(Tag::builder().key("swarmstrap:cluster").value(&self.cluster).build())
            .tags(Tag::builder().key("swarmstrap:secret").value(role).build())
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
                } else if e.is_code("InvalidRequestException") && mentions_deletion(&e.message) {
                    Ok(WriteOutcome::NameBlocked)
                } else if e.kind != FailureKind::Service || is_transient_code(&e) {
                    // Maybe created: the re-read tells.
                    tracing::warn!(
                        operation = e.op,
                        code = e.code.as_deref().unwrap_or("-"),
                        "outcome of CreateSecret unknown; re-reading"
                    );
                    Ok(WriteOutcome::Lost)
                } else {
                    Err(e.into_rendezvous(&self.secret_name))
                }
            }
        }
    }

    /// Whether version `version_id` exists (GetSecretValue by VersionId). A stale read may
    /// say no for a version just created; only used to skip a write that would fail.
    pub async fn exists(&self, version_id: &str) -> Result<bool> {
        match self
            .client
            .get_secret_value()
            .secret_id(&self.secret_name)
            .version_id(version_id)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = AwsError::from_sdk("GetSecretValue", e);
                if e.is_code("ResourceNotFoundException") {
                    Ok(false)
                } else {
                    Err(e.into_rendezvous(&self.secret_name))
                }
            }
        }
    }

    /// Compare-and-swap on the chain of versions: write `doc` as *the* successor of
    /// `prev_version` ([`successor_token`]), under a non-current label, then move AWSCURRENT
    /// to it from `prev_version`.
    ///
    /// What makes it a CAS does not depend on fresh reads or on the stage move being atomic:
    /// the successor's id is fixed by its predecessor, and AWS creates at most one version per
    /// ClientRequestToken per secret (a different value under an existing token fails with
    /// ResourceExistsException and creates nothing). So whoever read an older version (a
    /// stale read) or lost the race gets `Taken` and writes nothing; the stored versions form
    /// one chain in which each document was computed from the one before. A loser creates no
    /// version, which bounds the versions of a busy secret by its commits.
    ///
    /// The stage move only makes the chain's newest version the one readers see. Any failure
    /// of it is `Lost` (the re-read tells whether this write is current or built upon, by its
    /// write id in `recent_writes`); a writer that died between the two calls leaves
    /// AWSCURRENT one version behind, which the next writer repairs ([`Store::promote`]) when
    /// its own write comes back `Taken`.
    ///
    /// `prev_version` is `None` for a secret that exists without any value (created empty by
    /// Terraform or by hand): the first value is the successor of nothing, also unique.
    pub async fn cas(&self, prev_version: Option<&str>, doc: &ClusterDoc) -> Result<WriteOutcome> {
        let text = self.encode(doc)?;
        self.cas_text(prev_version, text).await
    }

    pub(crate) async fn cas_text(
        &self,
        prev_version: Option<&str>,
        text: String,
    ) -> Result<WriteOutcome> {
        let next = successor_token(&self.secret_name, prev_version);
        // A successor that is already visible is someone else's (or an earlier attempt of
        // this call): skip the write call (reads are cheap, writes share ~50 TPS per account).
        if self.exists(&next).await? {
            return Ok(WriteOutcome::Taken(next));
        }
        self.put_and_promote(prev_version, text).await
    }

    async fn put_and_promote(
        &self,
        prev_version: Option<&str>,
        text: String,
    ) -> Result<WriteOutcome> {
        let next = successor_token(&self.secret_name, prev_version);
        if let Err(e) = self
            .client
            .put_secret_value()
            .secret_id(&self.secret_name)
            .client_request_token(&next)
            .secret_string(text)
            .version_stages(PENDING_STAGE)
            .send()
            .await
        {
            let e = AwsError::from_sdk("PutSecretValue", e);
            if e.is_code("ResourceExistsException") {
                return Ok(WriteOutcome::Taken(next));
            }
            if e.kind != FailureKind::Service || is_transient_code(&e) {
                tracing::warn!(
                    operation = e.op,
                    code = e.code.as_deref().unwrap_or("-"),
                    "outcome of PutSecretValue unknown; re-reading"
                );
                return Ok(WriteOutcome::Lost);
            }
            return Err(e.into_rendezvous(&self.secret_name));
        }
        self.promote(prev_version, &next).await
    }

    /// Move AWSCURRENT from `prev_version` to `next` (its successor). `Committed` when AWS
    /// says so; every failure is `Lost` except a permanent one (access denied, ...): the
    /// re-read decides. AWS documents that the move fails unless AWSCURRENT is on
    /// `RemoveFromVersionId`; the code it answers with is not documented (moto:
    /// InvalidParameterException), so no code is trusted to mean anything but "re-read".
    pub async fn promote(&self, prev_version: Option<&str>, next: &str) -> Result<WriteOutcome> {
        match self
            .client
            .update_secret_version_stage()
            .secret_id(&self.secret_name)
            .version_stage(CURRENT_STAGE)
            .move_to_version_id(next)
            .set_remove_from_version_id(prev_version.map(str::to_string))
            .send()
            .await
        {
            Ok(_) => Ok(WriteOutcome::Committed),
            Err(e) => {
                let e = AwsError::from_sdk("UpdateSecretVersionStage", e);
                if e.kind == FailureKind::Service
                    && !is_transient_code(&e)
                    && matches!(
                        classify(
                            e.op,
                            e.code.as_deref().unwrap_or(""),
                            &e.message,
                            e.status,
                            ""
                        ),
                        RendezvousError::Unauthorized(_)
                    )
                {
                    return Err(e.into_rendezvous(&self.secret_name));
                }
                tracing::debug!(
                    operation = e.op,
                    code = e.code.as_deref().unwrap_or("-"),
                    "AWSCURRENT move refused or unknown; re-reading"
                );
                Ok(WriteOutcome::Lost)
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
