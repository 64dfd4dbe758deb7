//! Join tokens never reach a log line: a full publish/join cycle (plus failing calls) runs
//! with every target at TRACE level — the AWS SDK's own logging included — into a buffer.

mod common;

use common::{publish_req, reg, Moto};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarmstrap_wire::rendezvous::Rendezvous;
use swarmstrap_wire::RequestedRole;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_logs() {
    let buf = Buffer::default();
    let writer = buf.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();

    let mgr = format!("SWMTKN-1-mgr{}", std::process::id());
    let wrk = format!("SWMTKN-1-wrk{}", std::process::id());
    let moto = Moto::start();
    let a: Box<dyn Rendezvous> = Box::new(moto.backend("logs", 3));
    let b: Box<dyn Rendezvous> = Box::new(moto.backend("logs", 3));
    a.register(&reg("a", RequestedRole::Manager)).await.unwrap();
    b.register(&reg("b", RequestedRole::Worker)).await.unwrap();
    let token = a
        .claim("a", Duration::from_secs(30))
        .await
        .unwrap()
        .lease
        .unwrap()
        .fencing_token;
    // failing publishes carry the tokens too
    assert!(b
        .publish(&publish_req("b", token, &mgr, &wrk))
        .await
        .is_err());
    a.publish(&publish_req("a", token, &mgr, &wrk))
        .await
        .unwrap();
    assert!(a
        .publish(&publish_req("a", token, &mgr, "SWMTKN-1-different"))
        .await
        .is_err());
    let ja = a.wait_join("a", Duration::from_secs(10)).await.unwrap();
    let jb = b.wait_join("b", Duration::from_secs(10)).await.unwrap();
    assert_eq!(ja.join.as_ref().unwrap().token.expose(), mgr);
    assert_eq!(jb.join.as_ref().unwrap().token.expose(), wrk);
    // adoption into a cluster whose secret is missing (created with the tokens), a refused one
    let c: Box<dyn Rendezvous> = Box::new(moto.backend("logs-adopted", 3));
    let adopt = swarmstrap_wire::AdoptRequest {
        node_id: "lead".into(),
        hostname: "host-lead".into(),
        advertise_addr: "198.18.0.10".into(),
        swarm_id: "swarm-live".into(),
        ca_digest: swarmstrap_wire::format_fingerprint(&[0x5a; 32]),
        manager_addrs: vec!["198.18.0.10:2377".into()],
        manager_token: swarmstrap_wire::Secret::new(&mgr),
        worker_token: swarmstrap_wire::Secret::new(&wrk),
        managers: 1,
    };
    assert!(c.adopt(&adopt).await.unwrap().adopted);
    let other = swarmstrap_wire::AdoptRequest {
        swarm_id: "swarm-other".into(),
        ..adopt.clone()
    };
    assert!(c.adopt(&other).await.is_err());
    tracing::info!(?adopt, "debug dump of an adoption");
    // Debug output of everything the agent might print is redacted too
    tracing::info!(?ja, ?jb, status = ?a.status().await.unwrap(), "debug dump");
    // an AWS failure (deleted secret) is logged with its code
    moto.client()
        .delete_secret()
        .secret_id("swarmstrap/logs")
        .send()
        .await
        .unwrap();
    assert!(b.wait_join("b", Duration::from_secs(1)).await.is_err());

    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("init lease granted"), "capture works");
    assert!(text.contains("join data published"), "capture works");
    assert!(
        text.contains("adopted swarm swarm-live from node lead under fencing token"),
        "the adoption is logged"
    );
    assert!(
        text.contains("InvalidRequestException"),
        "failures are logged with their code"
    );
    assert!(
        text.contains("operation=\"GetSecretValue\"") || text.contains("operation=GetSecretValue")
    );
    assert!(
        text.lines().count() > 50,
        "the SDK's trace logging was captured too"
    );
    for secret in [mgr.as_str(), wrk.as_str(), "SWMTKN-1-different", "SWMTKN"] {
        assert!(!text.contains(secret), "{secret} leaked into the logs");
    }
    // Node credentials neither (only their digests are stored in the secret).
    for (rv, id) in [(&a, "a"), (&b, "b"), (&c, "lead")] {
        let credential = rv.credential(id).expect("issued");
        assert!(
            !text.contains(credential.expose()),
            "{id}'s credential leaked into the logs"
        );
    }
}
