//! `mtlsd-packaging`: the build-time tool of the Debian package
//! (`deploy/debian/build`). From the clap definitions of `mtlsd` it writes
//! the man pages (`mtlsd(8)` and one per command) and the bash, zsh and fish
//! completions; from the Ansible role's unit (`deploy/systemd/mtlsd.service`)
//! it derives the packaged unit. Never shipped.
//!
//! ```text
//! mtlsd-packaging --out DIR [--date YYYY-MM-DD] [--unit-source FILE]
//! ```
//!
//! writes `DIR/man/*.8`, `DIR/completions/{mtlsd.bash,_mtlsd,mtlsd.fish}`
//! and `DIR/mtlsd.service`.

mod man;
mod unit;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use clap_complete::Shell;

/// Writes the man pages, shell completions and packaged systemd unit of the
/// mtlsd Debian package.
#[derive(Debug, Parser)]
#[command(name = "mtlsd-packaging", about, long_about = None)]
struct Args {
    /// Output directory (created): man/, completions/ and mtlsd.service go
    /// under it.
    #[arg(long)]
    out: PathBuf,
    /// Date printed in the man pages' footer, YYYY-MM-DD (the build script
    /// passes the date of the newest changelog entry, so the pages are
    /// reproducible). Empty by default.
    #[arg(long, default_value = "")]
    date: String,
    /// The unit the packaged one is derived from: the Ansible role's unit
    /// rendered with its defaults.
    #[arg(long, default_value = unit::DEFAULT_SOURCE)]
    unit_source: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match write_all(&args) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mtlsd-packaging: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes everything; returns the paths written.
fn write_all(args: &Args) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    let man_dir = args.out.join("man");
    let completions_dir = args.out.join("completions");
    for dir in [&man_dir, &completions_dir] {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }

    for (name, page) in man::pages(&cli_command(), &args.date) {
        written.push(write(&man_dir.join(name), page.as_bytes())?);
    }
    for (name, script) in completions(&cli_command()) {
        written.push(write(&completions_dir.join(name), &script)?);
    }

    let source = fs::read_to_string(&args.unit_source)
        .map_err(|e| format!("cannot read {}: {e}", args.unit_source.display()))?;
    let unit =
        unit::package_unit(&source).map_err(|e| format!("{}: {e}", args.unit_source.display()))?;
    written.push(write(&args.out.join("mtlsd.service"), unit.as_bytes())?);
    Ok(written)
}

fn write(path: &Path, contents: &[u8]) -> Result<PathBuf, String> {
    fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path.to_path_buf())
}

/// The `mtlsd` command line as its users see it (no `help` subcommand: the
/// man pages and completions cover `--help`).
fn cli_command() -> clap::Command {
    let mut cmd = mtlsd::commands::Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Completion scripts, named as Debian installs them: bash in
/// /usr/share/bash-completion/completions/ (the file name is the command's),
/// zsh in /usr/share/zsh/vendor-completions/, fish in
/// /usr/share/fish/vendor_completions.d/.
fn completions(cmd: &clap::Command) -> Vec<(&'static str, Vec<u8>)> {
    [
        (Shell::Bash, "mtlsd.bash"),
        (Shell::Zsh, "_mtlsd"),
        (Shell::Fish, "mtlsd.fish"),
    ]
    .into_iter()
    .map(|(shell, name)| {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "mtlsd", &mut script);
        (name, script)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_cover_every_command_in_every_shell() {
        let cmd = cli_command();
        let scripts = completions(&cmd);
        assert_eq!(scripts.len(), 3);
        for (name, script) in scripts {
            let text = String::from_utf8(script).unwrap();
            for sub in ["run", "status", "check", "reload", "inspect", "dev"] {
                assert!(text.contains(sub), "{name} lacks {sub}");
            }
            assert!(text.contains("config"), "{name} lacks --config");
            assert!(!text.contains("mtlsd-packaging"), "{name} names the tool");
        }
    }

    #[test]
    fn write_all_writes_pages_completions_and_unit() {
        let out = std::env::temp_dir().join(format!("mtlsd-packaging-test-{}", std::process::id()));
        let args = Args {
            out: out.clone(),
            date: "2026-11-29".into(),
            unit_source: unit::DEFAULT_SOURCE.into(),
        };
        let written = write_all(&args).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.strip_prefix(&out).unwrap().display().to_string())
            .collect();
        for expected in [
            "man/mtlsd.8",
            "man/mtlsd-run.8",
            "man/mtlsd-status.8",
            "man/mtlsd-check.8",
            "man/mtlsd-reload.8",
            "man/mtlsd-inspect.8",
            "man/mtlsd-dev.8",
            "man/mtlsd-rotation-check.8",
            "man/mtlsd-trust-fetch.8",
            "completions/mtlsd.bash",
            "completions/_mtlsd",
            "completions/mtlsd.fish",
            "mtlsd.service",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} not in {names:?}"
            );
        }
        assert_eq!(names.len(), 13, "{names:?}");
        fs::remove_dir_all(&out).unwrap();
    }
}
