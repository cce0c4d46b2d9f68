//! The commit `signup --version` names: `git rev-parse` at build time, or "unknown" outside a
//! git checkout (a source tarball). Written to a file the binary includes, so that only the
//! binary is rebuilt when the commit changes, not the library and its tests.

use std::path::Path;
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let out = std::env::var("OUT_DIR").unwrap_or_else(|_| ".".to_owned());
    let file = Path::new(&out).join("commit.txt");
    if std::fs::read_to_string(&file).ok().as_deref() != Some(commit.as_str()) {
        let _ = std::fs::write(&file, &commit);
    }
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
