//! systemd's readiness protocol (sd_notify(3)): `READY=1` once this node is part of the
//! cluster's swarm, `STATUS=<phase>` as the bootstrap moves on, `STOPPING=1` on shutdown.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or a Linux abstract name written with a leading `@`). The standard
//! library covers both address kinds (`SocketAddrExt::from_abstract_name`), so this is a few
//! lines rather than a dependency: the `sd-notify` crate would add `libc` and an API for
//! features the agent does not use (fd store, watchdog, listen fds).
//!
//! Nothing happens when `$NOTIFY_SOCKET` is unset (not started by systemd with `Type=notify`,
//! or an operator's command). Errors are logged at debug and otherwise ignored: readiness
//! reporting must never stop the agent. Messages carry phase names and roles, never a secret.

use crate::state::AgentPhase;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;

/// The environment variable systemd sets for `Type=notify` services.
pub const ENV_NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Whether this process reports to systemd: only `swarm-agent run` turns it on ([`enable`]);
/// the state file is also written by operators' commands (`leave`, `recover`), which must not
/// speak for the service.
static ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The phase last reported (a `STATUS=` line goes out only when it changes).
static LAST_PHASE: Mutex<Option<AgentPhase>> = Mutex::new(None);

/// Turn notifications on for this process (`swarm-agent run`).
pub fn enable() {
    ON.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The socket address of `$NOTIFY_SOCKET` (`@name`: abstract), or `None` when unset or empty.
fn target() -> Option<std::io::Result<SocketAddr>> {
    let raw = std::env::var_os(ENV_NOTIFY_SOCKET)?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(raw.as_os_str());
    if bytes.is_empty() {
        return None;
    }
    Some(match bytes.strip_prefix(b"@") {
        Some(name) => <SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name),
        None => SocketAddr::from_pathname(&raw),
    })
}

/// Send `message` (newline-separated `KEY=VALUE` lines). `Ok(false)`: no socket configured.
pub fn send(message: &str) -> std::io::Result<bool> {
    let Some(addr) = target() else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(message.as_bytes(), &addr?)?;
    Ok(true)
}

fn send_logged(message: &str) {
    if !ON.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    if let Err(e) = send(message) {
        tracing::debug!("cannot notify systemd ({ENV_NOTIFY_SOCKET}): {e}");
    }
}

/// `STATUS=<text>` (one line: newlines would start a new key).
pub fn status(text: &str) {
    send_logged(&format!("STATUS={}", text.replace('\n', " ")));
}

/// `READY=1` with a final status line.
pub fn ready(text: &str) {
    send_logged(&format!("READY=1\nSTATUS={}", text.replace('\n', " ")));
}

/// `STOPPING=1`.
pub fn stopping() {
    send_logged("STOPPING=1\nSTATUS=stopping");
}

/// The status text of a bootstrap phase, as `systemctl status` shows it.
pub fn phase_text(phase: AgentPhase) -> &'static str {
    match phase {
        AgentPhase::Starting => "starting",
        AgentPhase::WaitingForEngine => "waiting for the Docker engine",
        AgentPhase::Registering => "registering with the rendezvous",
        AgentPhase::Claiming => "claiming the init lease",
        AgentPhase::Initialising => "initialising the swarm",
        AgentPhase::Publishing => "publishing the join tokens",
        AgentPhase::WaitingForTokens => "waiting for join info",
        AgentPhase::Joining => "joining the swarm",
        AgentPhase::Joined => "joined",
        AgentPhase::Failed => "failed (see swarm-agent status)",
        AgentPhase::Leaving => "leaving the swarm",
        AgentPhase::Left => "left the swarm",
    }
}

/// Called with every state the agent saves: a `STATUS=` line when the phase changed.
pub fn phase_saved(phase: AgentPhase) {
    if !ON.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let mut last = LAST_PHASE.lock().unwrap_or_else(|p| p.into_inner());
    if *last != Some(phase) {
        *last = Some(phase);
        drop(last);
        status(phase_text(phase));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_texts_are_single_lines() {
        for p in AgentPhase::ALL {
            assert!(!phase_text(p).contains('\n'));
        }
    }

    /// A real datagram socket, by path and by abstract name (`@`). One test: it sets the
    /// process environment.
    #[test]
    fn sends_to_path_and_abstract_sockets_and_nothing_when_unset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        std::env::set_var(ENV_NOTIFY_SOCKET, &path);
        assert!(send("READY=1\nSTATUS=joined").unwrap());
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=joined");

        let name = format!("swarmstrap-notify-test-{}", std::process::id());
        let addr =
            <SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name.as_bytes())
                .unwrap();
        let arx = UnixDatagram::bind_addr(&addr).unwrap();
        std::env::set_var(ENV_NOTIFY_SOCKET, format!("@{name}"));
        assert!(send("STOPPING=1").unwrap());
        let n = arx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        std::env::remove_var(ENV_NOTIFY_SOCKET);
        assert!(!send("READY=1").unwrap());
        std::env::set_var(ENV_NOTIFY_SOCKET, "");
        assert!(!send("READY=1").unwrap());
        std::env::remove_var(ENV_NOTIFY_SOCKET);
    }
}
