//! Man pages: `mtlsd(8)` and `mtlsd-<command>(8)` for each command,
//! rendered by clap_mangen from the clap definitions, plus the sections clap
//! does not know (files, environment, signals, exit status, see also).

use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

/// Section 8: mtlsd is a daemon and its administration commands.
const SECTION: &str = "8";

/// One entry of an extra section, a tagged paragraph: the tag in bold (a
/// path, variable, signal or exit code), then its description.
struct Item(&'static str, &'static str);

/// The man pages of `cmd` (the built `mtlsd` command): file name and roff.
pub(crate) fn pages(cmd: &clap::Command, date: &str) -> Vec<(String, String)> {
    let version = cmd.get_version().unwrap_or_default();
    let source = format!("mtlsd {version}");
    let subcommands = commands(cmd);
    let see_also: Vec<String> = std::iter::once("mtlsd".to_string())
        .chain(subcommands.iter().map(|(name, _)| format!("mtlsd-{name}")))
        .collect();

    let mut pages = Vec::new();
    for (name, page_cmd) in std::iter::once(("mtlsd", cmd))
        .chain(subcommands.iter().map(|(name, sub)| (name.as_str(), sub)))
    {
        let man = Man::new(page_cmd.clone())
            .title(page_title(name).to_uppercase())
            .section(SECTION)
            .date(date)
            .source(source.as_str())
            .manual("mtlsd manual");
        let mut out: Vec<u8> = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = render(&man, page_cmd, name, &mut out);
        let mut roff = Roff::default();
        for (heading, items) in extra_sections(name) {
            roff.control("SH", [heading]);
            for Item(tag, text) in items {
                roff.control("TP", []);
                roff.text([bold(tag)]);
                roff.text([roman(text)]);
            }
        }
        roff.control("SH", ["SEE ALSO"]);
        let mut refs = Vec::new();
        for other in see_also.iter().filter(|o| **o != page_title(name)) {
            if !refs.is_empty() {
                refs.push(roman(", "));
            }
            refs.push(bold(other.as_str()));
            refs.push(roman("(8)"));
        }
        for (page, section) in [
            ("systemctl", "1"),
            ("journalctl", "1"),
            ("systemd.service", "5"),
        ] {
            refs.push(roman(", "));
            refs.push(bold(page));
            refs.push(roman(format!("({section})")));
        }
        roff.text(refs);
        roff.control("PP", []);
        roff.text([
            roman("An annotated configuration and role inventory: "),
            italic("/usr/share/doc/mtlsd/examples/"),
            roman("."),
        ]);
        out.extend_from_slice(roff.to_roff().as_bytes());
        let page = single_preamble(&String::from_utf8_lossy(&out));
        pages.push((format!("{}.{SECTION}", page_title(name)), page));
    }
    pages
}

/// Each piece rendered separately starts with roff's apostrophe preamble
/// (two lines defining `Aq`); keep the first only.
fn single_preamble(page: &str) -> String {
    let mut seen = std::collections::HashSet::new();
    page.lines()
        .filter(|l| {
            !l.starts_with(".ie \\n(.g .ds Aq") && !l.starts_with(".el .ds Aq") || seen.insert(*l)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The commands that get a page, by page name: a command with commands of
/// its own (`mtlsd rotation check`) gets a page per inner command, named
/// after both (`rotation-check`).
fn commands(cmd: &clap::Command) -> Vec<(String, clap::Command)> {
    let mut commands = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let inner: Vec<&clap::Command> =
            sub.get_subcommands().filter(|s| !s.is_hide_set()).collect();
        if inner.is_empty() {
            commands.push((sub.get_name().to_owned(), sub.clone()));
        }
        for nested in inner {
            let name = format!("{}-{}", sub.get_name(), nested.get_name());
            let bin = format!("mtlsd {} {}", sub.get_name(), nested.get_name());
            commands.push((name, nested.clone().bin_name(bin)));
        }
    }
    commands
}

fn page_title(name: &str) -> String {
    if name == "mtlsd" {
        name.to_string()
    } else {
        format!("mtlsd-{name}")
    }
}

/// The page up to OPTIONS and COMMANDS: clap_mangen's sections, except for
/// NAME (a one-line summary instead of the whole help text), the main page's
/// DESCRIPTION (ours, not the crate's one-line description) and VERSION (the
/// footer carries the version).
fn render(man: &Man, cmd: &clap::Command, name: &str, out: &mut Vec<u8>) -> std::io::Result<()> {
    man.render_title(out)?;
    let mut roff = Roff::default();
    // No hyphenation, ragged right: paths, keys and variables stay whole.
    roff.control("nh", []);
    roff.control("ad", ["l"]);
    roff.control("SH", ["NAME"]);
    roff.text([roman(format!(
        "{} - {}",
        page_title(name),
        summary(name, cmd)
    ))]);
    roff.to_writer(out)?;
    man.render_synopsis_section(out)?;
    if name == "mtlsd" {
        let mut roff = Roff::default();
        roff.control("SH", ["DESCRIPTION"]);
        roff.to_writer(out)?;
    } else {
        man.render_description_section(out)?;
    }
    if let Some(text) = description_extra(name) {
        let mut roff = Roff::default();
        for (i, para) in text.iter().enumerate() {
            if i > 0 || name != "mtlsd" {
                roff.control("PP", []);
            }
            roff.text([roman(*para)]);
        }
        roff.to_writer(out)?;
    }
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(out)?;
    }
    let listed = commands(cmd);
    if !listed.is_empty() {
        // Ours, not clap_mangen's: it would list `rotation`, which has no
        // page of its own.
        let mut roff = Roff::default();
        roff.control("SH", ["COMMANDS"]);
        for (name, sub) in &listed {
            roff.control("TP", []);
            roff.text([bold(page_title(name)), roman("(8)")]);
            roff.text([roman(summary(name, sub))]);
        }
        roff.to_writer(out)?;
    }
    Ok(())
}

/// The NAME line's summary: curated for the commands there are, else the
/// first sentence of the command's help.
fn summary(name: &str, cmd: &clap::Command) -> String {
    let curated = match name {
        "mtlsd" => "per-host mTLS sidecar proxy",
        "run" => "run the mtlsd daemon",
        "status" => "show what a running mtlsd serves",
        "check" => "validate the mtlsd configuration and all TLS material",
        "reload" => "make a running mtlsd reload now and wait for the outcome",
        "inspect" => "show what PEM files hold and whether certificates chain to a bundle",
        "dev" => "run mtlsd in development mode with a throw-away CA",
        "rotation-check" => "tell whether a phase of a CA rotation is done on this host",
        "trust-fetch" => {
            "fetch a trust bundle from a running host and keep it only if its CAs are the pinned ones"
        }
        _ => {
            let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
            let end = about.find([':', '.', '(']).unwrap_or(about.len());
            return about[..end].trim().to_string();
        }
    };
    curated.to_string()
}

/// Paragraphs added to DESCRIPTION.
fn description_extra(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "mtlsd" => &[
            "mtlsd puts mutual TLS on every connection between a cluster's daemons without \
             changing the daemons. They keep talking plaintext on loopback: an inbound listener \
             terminates mTLS from other hosts and forwards to a local daemon; an outbound \
             listener accepts plaintext on loopback and originates mTLS to another host. Every \
             peer's certificate is checked against the bundle of the listener's trust domain and \
             the peer's roles in the role inventory. mtlsd never falls back to plaintext.",
            "mtlsd run is the daemon (under systemd: mtlsd.service). The other commands validate \
             configuration and material, show what certificate files hold, and query or reload \
             a running daemon: on its control socket (admin.socket, /run/mtlsd/admin.sock under \
             systemd; root and the mtlsd user only, no client certificate), else through its \
             admin endpoint (admin.listen).",
        ],
        "run" => &[
            "Reads the configuration, validates it and every file it names exactly as mtlsd \
             check does, binds every listener, then tells systemd READY=1. A reload (SIGHUP, a \
             change to a watched file, reload.interval, or mtlsd reload) validates everything \
             again and swaps it in atomically; when anything is wrong the previous material \
             keeps serving. Every reload attempt is a JSON line in the audit log.",
            "Logs go to standard error (the journal under systemd).",
        ],
        "reload" => &[
            "The unit's ExecReload=, so systemctl reload mtlsd fails when the daemon rejects \
             the new files. It reaches the daemon on the control socket, which needs no client \
             certificate: it works with the host key in a PKCS#11 token (ExecReload= gets no \
             credentials, so no PIN) and when files on disk are refused.",
        ],
        "dev" => &["For development only: the dev CA is not for production."],
        "trust-fetch" => &[
            "How a host that is not deployed by Ansible gets the mesh's bundle: the operator \
             reads each CA's SHA-256 on a host that runs (mtlsd inspect, or openssl x509 \
             -outform DER | sha256sum), carries it to the new host by a channel an attacker \
             cannot change, and fetches with it. The bootstrap endpoint is [bootstrap] listen \
             on the running host. A file already at --out is replaced only by a bundle that \
             matched.",
        ],
        _ => return None,
    })
}

/// Sections after OPTIONS/COMMANDS, per page.
fn extra_sections(name: &str) -> Vec<(&'static str, Vec<Item>)> {
    let config_file = Item(
        "/etc/mtlsd/mtlsd.toml",
        "The configuration (the default of --config). The package does not install one; \
         the Ansible role or the operator writes it. mtlsd.service does not start without it.",
    );
    match name {
        "mtlsd" => vec![
            (
                "FILES",
                vec![
                    config_file,
                    Item(
                        "/etc/mtlsd/inventory.toml",
                        "The role inventory (inventory.path): hosts, their SANs and roles; \
                         revoked serials.",
                    ),
                    Item(
                        "/etc/mtlsd/tls/",
                        "This host's certificate and key (the key owned by mtlsd, mode 0600) \
                         and a trust bundle per trust domain.",
                    ),
                    Item(
                        "/var/lib/mtlsd/",
                        "The state directory; audit.jsonl is the reload audit log.",
                    ),
                    Item(
                        "/lib/systemd/system/mtlsd.service",
                        "The hardened systemd unit.",
                    ),
                    Item(
                        "/usr/share/doc/mtlsd/examples/",
                        "An annotated mtlsd.toml and inventory.toml to start from.",
                    ),
                ],
            ),
            ("ENVIRONMENT", environment()),
            ("SIGNALS", signals()),
            (
                "EXIT STATUS",
                vec![
                    Item("0", "Success."),
                    Item("1", "Failure; the reason is printed."),
                    Item(
                        "2",
                        "The command line is wrong; trust fetch without --sha256: nothing \
                         written.",
                    ),
                    Item("3", "status, reload or rotation check: no daemon answered."),
                    Item(
                        "4",
                        "reload: a changed setting needs a restart (the rest was applied).",
                    ),
                ],
            ),
        ],
        "run" => vec![
            (
                "FILES",
                vec![
                    config_file,
                    Item(
                        "/var/lib/mtlsd/audit.jsonl",
                        "The reload audit log (reload.audit_log), one JSON line per attempt.",
                    ),
                ],
            ),
            ("ENVIRONMENT", environment()),
            ("SIGNALS", signals()),
            (
                "EXIT STATUS",
                vec![
                    Item("0", "Stopped by SIGTERM or SIGINT after draining."),
                    Item(
                        "1",
                        "The configuration or material is invalid, or a listener cannot be \
                         bound; the reason is printed.",
                    ),
                ],
            ),
        ],
        "rotation-check" => vec![(
            "EXIT STATUS",
            vec![
                Item("0", "The phase is done on this host."),
                Item(
                    "1",
                    "Failure, or a question the daemon cannot answer; the reason is printed.",
                ),
                Item("3", "No daemon answered."),
                Item("4", "Not done: each blocker is printed (a host and why)."),
                Item(
                    "5",
                    "Nothing known blocks, but hosts this host should talk to were not seen \
                     within peers.stale_after; --allow-unknown accepts that.",
                ),
            ],
        )],
        "trust-fetch" => vec![(
            "EXIT STATUS",
            vec![
                Item(
                    "0",
                    "The bundle's CAs are exactly the pinned ones; it was written to --out.",
                ),
                Item(
                    "1",
                    "Refused (other CAs than pinned, a server of the domain whose certificate \
                     does not chain to it, a malformed answer) or unreachable; nothing written, \
                     the reason and both sets of fingerprints are printed.",
                ),
                Item(
                    "2",
                    "No --sha256: each CA's fingerprint and subject are printed, nothing is \
                     written (or the command line is wrong).",
                ),
            ],
        )],
        "status" => vec![(
            "EXIT STATUS",
            vec![
                Item("0", "The daemon answered."),
                Item("1", "Failure; the reason is printed."),
                Item("3", "No daemon answered."),
            ],
        )],
        "check" => vec![(
            "EXIT STATUS",
            vec![
                Item("0", "No problem found."),
                Item(
                    "1",
                    "At least one problem (with --strict, also a warning); each is printed \
                     with its file or key.",
                ),
            ],
        )],
        "reload" => vec![(
            "EXIT STATUS",
            vec![
                Item("0", "Applied, or nothing changed."),
                Item(
                    "1",
                    "Rejected: the reason is printed, and the previous material keeps serving.",
                ),
                Item("3", "No daemon answered."),
                Item(
                    "4",
                    "A changed setting needs a restart; the rest was applied.",
                ),
            ],
        )],
        "inspect" => vec![(
            "EXIT STATUS",
            vec![
                Item(
                    "0",
                    "Every file was read and every leaf chains to the given bundles.",
                ),
                Item(
                    "1",
                    "A file cannot be read or parsed, or a certificate does not chain to a \
                     given bundle.",
                ),
            ],
        )],
        "dev" => vec![(
            "EXIT STATUS",
            vec![
                Item("0", "Stopped by Ctrl-C (SIGINT) or SIGTERM after draining."),
                Item("1", "Failure; the reason is printed."),
            ],
        )],
        _ => Vec::new(),
    }
}

fn environment() -> Vec<Item> {
    vec![
        Item("MTLSD_CONFIG", "The configuration file, as --config."),
        Item("MTLSD_LOG", "Log filter, for example debug (default info)."),
        Item("MTLSD_LOG_FORMAT", "text or json, as --log-format."),
        Item(
            "MTLSD_<KEY>",
            "Every other variable starting with MTLSD_ overrides a configuration key, with __ \
             between levels: MTLSD_ADMIN__LISTEN=127.0.0.1:9651 sets admin.listen. Unknown keys \
             are errors, so do not use the prefix for anything else.",
        ),
    ]
}

fn signals() -> Vec<Item> {
    vec![
        Item(
            "SIGHUP",
            "Reload: validate the configuration and every file again, then swap atomically; \
             the previous material stays when anything is wrong.",
        ),
        Item(
            "SIGTERM, SIGINT",
            "Stop accepting, drain open connections for up to shutdown.drain_timeout, exit 0.",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<(String, String)> {
        pages(&crate::cli_command(), "2026-11-29")
    }

    #[test]
    fn one_page_per_command_plus_mtlsd() {
        let names: Vec<String> = all().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "mtlsd.8",
                "mtlsd-run.8",
                "mtlsd-status.8",
                "mtlsd-check.8",
                "mtlsd-reload.8",
                "mtlsd-rotation-check.8",
                "mtlsd-trust-fetch.8",
                "mtlsd-inspect.8",
                "mtlsd-dev.8"
            ]
        );
    }

    #[test]
    fn pages_have_title_synopsis_and_see_also() {
        for (name, page) in all() {
            let title = name.trim_end_matches(".8").to_uppercase();
            let th = page.lines().find(|l| l.starts_with(".TH ")).unwrap();
            let version = env!("CARGO_PKG_VERSION");
            assert_eq!(
                th,
                format!(".TH {title} 8 2026-11-29 \"mtlsd {version}\" \"mtlsd manual\"")
            );
            assert_eq!(page.matches(".ds Aq").count(), 2, "{name}: one preamble");
            assert!(page.contains(".SH SYNOPSIS"), "{name}");
            assert!(page.contains(".SH \"SEE ALSO\""), "{name}");
            assert!(!page.contains(".SH VERSION"), "{name}");
            assert!(!page.contains("mtlsd-help"), "{name}");
        }
    }

    #[test]
    fn the_main_page_lists_every_command_and_the_files() {
        let (_, page) = all().remove(0);
        for sub in [
            "run",
            "status",
            "check",
            "reload",
            "rotation\\-check",
            "trust\\-fetch",
            "inspect",
            "dev",
        ] {
            let commands = page.split(".SH COMMANDS").nth(1).unwrap_or_default();
            assert!(
                commands.contains(&format!("\\fBmtlsd\\-{sub}\\fR(8)")),
                "{sub}: {page}"
            );
        }
        assert!(page.contains("/etc/mtlsd/mtlsd.toml"));
        assert!(page.contains(".SH ENVIRONMENT"));
        assert!(page.contains(".SH \"EXIT STATUS\""));
    }

    #[test]
    fn command_pages_use_the_full_command_in_the_synopsis() {
        let page = &all()[1].1;
        assert!(page.contains("mtlsd run"), "{page}");
        assert!(page.contains("\\-\\-config"), "{page}");
    }
}
