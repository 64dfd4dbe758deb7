//! Fuzz the `/v1` wire types' JSON decoding (`swarmstrap_wire`): the input is decoded as every
//! request and response type.
//!
//! Properties:
//! - decoding never panics;
//! - what decodes re-encodes to JSON that decodes to an equal value;
//! - the `Debug` of a value does not depend on its secrets (join tokens, cluster secret, node
//!   and operator credentials).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use swarmstrap_wire::*;

/// Decode; if that works, check the round trip and return the value.
fn decode<T: DeserializeOwned + Serialize + PartialEq + Debug>(data: &[u8]) -> Option<T> {
    let v: T = serde_json::from_slice(data).ok()?;
    let bytes = serde_json::to_vec(&v).expect("a decoded value encodes");
    let again: T = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("re-encoded {v:?} does not decode: {e}"));
    assert_eq!(
        v,
        again,
        "round trip through {}",
        String::from_utf8_lossy(&bytes)
    );
    Some(v)
}

/// Decode a value with secrets; its Debug must not change when only the secrets do.
fn decode_secret<T: DeserializeOwned + Serialize + PartialEq + Debug>(
    data: &[u8],
    blank: impl Fn(&mut T),
) {
    if let Some(v) = decode::<T>(data) {
        let mut other = serde_json::from_slice::<T>(data).expect("decoded once");
        blank(&mut other);
        assert_eq!(
            format!("{v:?}"),
            format!("{other:?}"),
            "Debug shows a secret"
        );
    }
}

fn blank() -> Secret {
    Secret::new("")
}

fuzz_target!(|data: &[u8]| {
    decode::<RegisterRequest>(data);
    decode_secret::<RegisterResponse>(data, |r| {
        if let Some(c) = r.credential.as_mut() {
            *c = blank();
        }
    });
    decode::<ClaimRequest>(data);
    decode::<ClaimResponse>(data);
    decode::<RenewRequest>(data);
    decode::<PublishResponse>(data);
    decode::<NodeInfo>(data);
    decode::<ResetRequest>(data);
    decode::<ClusterStatus>(data);
    decode::<Vec<ClusterStatus>>(data);
    decode::<ErrorBody>(data);
    decode::<Document>(data);
    decode::<DocumentWrite>(data);
    decode::<SyncRequest>(data);
    decode::<SyncResponse>(data);
    decode_secret::<AdoptResponse>(data, |r| {
        if let Some(c) = r.credential.as_mut() {
            *c = blank();
        }
    });
    decode_secret::<PublishRequest>(data, |p| {
        p.manager_token = blank();
        p.worker_token = blank();
    });
    decode_secret::<JoinResponse>(data, |j| {
        if let Some(info) = j.join.as_mut() {
            info.token = blank();
        }
    });
    decode_secret::<CreateCluster>(data, |c| {
        if let Some(s) = c.secret.as_mut() {
            *s = blank();
        }
        if let Some(s) = c.operator_credential.as_mut() {
            *s = blank();
        }
    });
    decode_secret::<CreatedCluster>(data, |c| {
        c.secret = blank();
        c.operator_credential = blank();
    });
    decode_secret::<AdoptRequest>(data, |a| {
        a.manager_token = blank();
        a.worker_token = blank();
    });
});
