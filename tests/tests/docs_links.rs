//! Every path a README (any tracked `*.md`) names exists in the repository: markdown link
//! targets (relative to the file), and repository paths written in backticks or in code blocks
//! (`scripts/test.sh`, `agent/src/relay/`, …: a token that starts with one of the repository's
//! top-level entries). Placeholders (`<id>`, `*`, `{…}`, `$VAR`, `…`) and build outputs
//! (`target/`) are not paths to check. No lab, no root: plain file checks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The tracked markdown files (git knows what is part of the repository; untracked notes and
/// build outputs are not).
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let out = Command::new("git")
        .args(["ls-files", "-z", "--", "*.md"])
        .current_dir(root)
        .output()
        .expect("run git ls-files (git is needed to list the tracked docs)");
    assert!(out.status.success(), "git ls-files failed: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8 paths")
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(|p| root.join(p))
        .collect()
}

/// Top-level names a repository path starts with (`agent`, `scripts`, `README.md`, …).
fn top_level(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root)
        .expect("read the repository root")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "target")
        .collect()
}

/// Markdown link targets: `[text](target)` and `[text](target "title")`.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split_whitespace().next().unwrap_or("");
        out.push(target.to_string());
        rest = &rest[end..];
    }
    out
}

/// Path-like tokens in inline code spans and fenced code blocks.
fn code_tokens(text: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            spans.push(line.to_string());
            continue;
        }
        let parts: Vec<&str> = line.split('`').collect();
        // Odd-indexed parts are inside backticks.
        for (i, p) in parts.iter().enumerate() {
            if i % 2 == 1 {
                spans.push((*p).to_string());
            }
        }
    }
    spans
        .iter()
        .flat_map(|s| {
            s.split(|c: char| c.is_whitespace() || "\"'=(),;|>".contains(c))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn is_placeholder(p: &str) -> bool {
    p.is_empty()
        || p.contains(['<', '>', '*', '{', '}', '$', '…', '[', ']', '?'])
        || p.contains("...")
}

/// A token names a repository path when its first component is a top-level entry and it has
/// at least one `/` (a bare `README.md` in prose is ambiguous: which one?).
fn repo_path(token: &str, top: &BTreeSet<String>) -> Option<String> {
    let t = token
        .trim_start_matches("./")
        .trim_end_matches([':', '.', ','])
        .to_string();
    // `file.rs:123` line references.
    let t = match t.rsplit_once(':') {
        Some((p, n)) if n.chars().all(|c| c.is_ascii_digit()) => p.to_string(),
        _ => t,
    };
    let first = t.split('/').next()?;
    // Build outputs (`fuzz/target/asan`) exist only after a build.
    let built = t.split('/').any(|c| c == "target");
    if !t.contains('/') || !top.contains(first) || is_placeholder(&t) || built {
        return None;
    }
    Some(t)
}

#[test]
fn every_path_a_readme_names_exists() {
    let root = repo_root();
    let top = top_level(&root);
    let docs = markdown_files(&root);
    assert!(
        docs.len() >= 10,
        "expected the repository's READMEs, found {docs:?}"
    );
    let mut missing = Vec::new();
    let mut checked = 0usize;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).expect("read a markdown file");
        let rel = doc.strip_prefix(&root).unwrap().display().to_string();
        let dir = doc.parent().unwrap();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap_or("");
            if path.is_empty() || is_placeholder(path) {
                continue;
            }
            checked += 1;
            if !dir.join(path).exists() {
                missing.push(format!("{rel}: link ({target})"));
            }
        }
        for token in code_tokens(&text) {
            let Some(p) = repo_path(&token, &top) else {
                continue;
            };
            checked += 1;
            if !root.join(&p).exists() && !dir.join(&p).exists() {
                missing.push(format!("{rel}: `{p}`"));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} paths found: is the parser broken?"
    );
    assert!(
        missing.is_empty(),
        "{} path(s) named in the docs do not exist (fix the doc or the path):\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
    println!(
        "docs: {checked} paths in {} markdown files exist",
        docs.len()
    );
}

#[test]
fn the_parsers_find_what_they_should() {
    let top: BTreeSet<String> = ["agent", "scripts"].iter().map(|s| s.to_string()).collect();
    assert_eq!(
        link_targets("see [x](agent/README.md#run) and [y](https://e.x \"t\")"),
        ["agent/README.md#run", "https://e.x"]
    );
    let toks = code_tokens("run `bash scripts/test.sh` then\n```sh\nagent/src/x.rs:12 foo\n```\n");
    let paths: Vec<String> = toks.iter().filter_map(|t| repo_path(t, &top)).collect();
    assert_eq!(paths, ["scripts/test.sh", "agent/src/x.rs"]);
    assert_eq!(repo_path("agent/<id>/x", &top), None);
    assert_eq!(repo_path("other/x", &top), None);
}
