//! Running host commands (ip, iptables, docker, umount, ...) with useful errors.

use crate::error::{LabError, Result};
use crate::wait::Backoff;
use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// `program arg arg ...` for messages (environment variables are not shown).
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run to completion and capture output; only failing to start is an error.
pub fn run_unchecked(cmd: &mut Command) -> Result<CmdOutput> {
    exec(cmd, None, None)
}

/// Run to completion; a non-zero exit is an error carrying stderr.
pub fn run(cmd: &mut Command) -> Result<CmdOutput> {
    let out = exec(cmd, None, None)?;
    check(cmd, out)
}

/// Run with `input` on stdin; a non-zero exit is an error.
pub fn run_stdin(cmd: &mut Command, input: &[u8]) -> Result<CmdOutput> {
    let out = exec(cmd, Some(input), None)?;
    check(cmd, out)
}

/// A non-zero exit as an error carrying stderr.
pub fn check(cmd: &Command, out: CmdOutput) -> Result<CmdOutput> {
    if out.success() {
        Ok(out)
    } else {
        Err(LabError::Command {
            cmd: describe(cmd),
            status: out.status.to_string(),
            stderr: out.stderr.trim().to_string(),
        })
    }
}

/// Run `cmd` (stdin from `input` or /dev/null), capture stdout and stderr, and wait for it at
/// most `timeout` (polling with backoff); on timeout it is SIGKILLed and that is an error.
/// Only failing to start or timing out is an error; look at the status yourself.
pub fn exec(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Option<Duration>,
) -> Result<CmdOutput> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .map_err(|e| LabError::io(format!("could not start `{}`", describe(cmd)), e))?;
    // Threads for the pipes, so a child that fills one pipe while we wait cannot deadlock.
    let writer = input.map(|data| {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        let data = data.to_vec();
        std::thread::spawn(move || stdin.write_all(&data))
    });
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            b
        })
    };
    let out_t = reader(Box::new(child.stdout.take().expect("stdout was piped")));
    let err_t = reader(Box::new(child.stderr.take().expect("stderr was piped")));
    let waited = |e| LabError::io(format!("waiting for `{}`", describe(cmd)), e);
    let status = match timeout {
        None => child.wait().map_err(waited)?,
        Some(t) => {
            let start = Instant::now();
            let deadline = start + t;
            let mut backoff = Backoff::default();
            loop {
                if let Some(st) = child.try_wait().map_err(waited)? {
                    break st;
                }
                if !backoff.sleep_until_next(deadline) {
                    let _ = child.kill();
                    let _ = child.wait();
                    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default())
                        .trim()
                        .to_string();
                    return Err(LabError::Timeout {
                        what: format!("`{}` to finish (killed)", describe(cmd)),
                        waited: start.elapsed(),
                        last: format!("stderr so far: {stderr}"),
                    });
                }
            }
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(CmdOutput {
        status,
        stdout: String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned(),
    })
}

/// Shorthand: `run(Command::new(program).args(args))`.
pub fn sh(program: &str, args: &[&str]) -> Result<CmdOutput> {
    run(Command::new(program).args(args))
}

/// Whether `program` can be found on PATH (or is an existing path).
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let out = run_stdin(Command::new("sh").args(["-c", "cat; echo err >&2"]), b"in").unwrap();
        assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("in", "err\n"));
        let e = run(Command::new("sh").args(["-c", "echo bad >&2; exit 3"])).unwrap_err();
        assert!(
            e.to_string().contains("bad") && e.to_string().contains('3'),
            "{e}"
        );
    }

    #[test]
    fn a_hung_command_is_killed_at_its_timeout() {
        let start = Instant::now();
        let e = exec(
            Command::new("sh").args(["-c", "echo started >&2; exec sleep 30"]),
            None,
            Some(Duration::from_millis(300)),
        )
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(
            matches!(e, LabError::Timeout { .. }) && e.to_string().contains("started"),
            "{e}"
        );
    }
}
