//! Build-time files:
//! - the commit `signup --version` names: `git rev-parse`, or "unknown" outside a git checkout
//!   (a source tarball), in `$OUT_DIR/commit.txt`, so that only the binary is rebuilt when the
//!   commit changes, not the library and its tests;
//! - what the Debian package ships besides the binary (SPEC §9), generated from `src/cli.rs`
//!   and `config.toml` into `target/<profile>/assets/` (where `cargo deb` finds them, as
//!   `target/release/assets/…`): shell completions (bash, zsh, fish), man pages (one per
//!   command), and the packaged `config.toml`.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;

#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;

/// The line of `config.toml` the package changes: its database lives in the unit's
/// `StateDirectory`, whatever directory `signup` is started from.
const DATABASE_URL: &str = "url = \"sqlite://signup.db\"";
const PACKAGED_DATABASE_URL: &str = "url = \"sqlite:///var/lib/signup/signup.db\"";

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    write_if_changed(&out.join("commit.txt"), commit().as_bytes());

    // OUT_DIR is target/<profile>/build/signup-<hash>/out.
    let profile_dir = out
        .ancestors()
        .nth(3)
        .expect("OUT_DIR is target/<profile>/build/<crate>/out");
    let assets = profile_dir.join("assets");
    completions(&assets.join("completions"));
    man_pages(&assets.join("man"));
    packaged_config(&assets.join("config.toml"));

    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cli.rs");
    println!("cargo:rerun-if-changed=config.toml");
}

fn commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn completions(dir: &Path) {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir).expect("the completions directory");
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cli::Cli::command(), "signup", &mut text);
        let name = match shell {
            Shell::Zsh => "_signup".to_owned(),
            shell => format!("signup.{shell}"),
        };
        write_if_changed(&dir.join(name), &text);
    }
}

/// `signup.1`, and `signup-<command>.1` for each command and its own commands.
fn man_pages(dir: &Path) {
    std::fs::create_dir_all(dir).expect("the man directory");
    let command = cli::Cli::command().version(env!("CARGO_PKG_VERSION"));
    clap_mangen::generate_to(command, dir).expect("the man pages");
}

fn packaged_config(file: &Path) {
    let text = std::fs::read_to_string("config.toml").expect("config.toml");
    assert_eq!(
        text.matches(DATABASE_URL).count(),
        1,
        "config.toml has one `{DATABASE_URL}` line for the package to change"
    );
    let text = text.replace(DATABASE_URL, PACKAGED_DATABASE_URL).replace(
        "# sqlite://signup.db (relative to the working directory, created if missing),",
        "# sqlite://signup.db (relative to the working directory, created if missing; the\n\
         # package's default is in the unit's StateDirectory),",
    );
    write_if_changed(file, text.as_bytes());
}

fn write_if_changed(file: &Path, contents: &[u8]) {
    if std::fs::read(file).ok().as_deref() != Some(contents) {
        std::fs::write(file, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
    }
}
