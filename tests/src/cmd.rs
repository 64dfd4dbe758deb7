//! Running host commands (ip, iptables, docker, umount, ...) with useful errors.

use crate::error::{LabError, Result};
use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};

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
    run_with_input(cmd, None)
}

/// Run to completion; a non-zero exit is an error carrying stderr.
pub fn run(cmd: &mut Command) -> Result<CmdOutput> {
    let out = run_unchecked(cmd)?;
    check(cmd, out)
}

/// Run with `input` on stdin; a non-zero exit is an error.
pub fn run_stdin(cmd: &mut Command, input: &[u8]) -> Result<CmdOutput> {
    let out = run_with_input(cmd, Some(input))?;
    check(cmd, out)
}

fn check(cmd: &Command, out: CmdOutput) -> Result<CmdOutput> {
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

fn run_with_input(cmd: &mut Command, input: Option<&[u8]>) -> Result<CmdOutput> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .map_err(|e| LabError::io(format!("could not start `{}`", describe(cmd)), e))?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        // Write from a thread so a child that fills its stdout pipe before reading all of its
        // stdin cannot deadlock us.
        let data = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data));
        let out = child
            .wait_with_output()
            .map_err(|e| LabError::io(format!("waiting for `{}`", describe(cmd)), e))?;
        let _ = writer.join();
        return Ok(to_output(out));
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::io(format!("waiting for `{}`", describe(cmd)), e))?;
    Ok(to_output(out))
}

fn to_output(out: std::process::Output) -> CmdOutput {
    CmdOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
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
