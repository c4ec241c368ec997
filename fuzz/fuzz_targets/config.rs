//! Feeds arbitrary text to the configuration loader (TOML, validation of
//! every key): every input must end in a config or a list of problems,
//! never a panic. Lines `MTLSD_…=value` after a `\0` are environment
//! overrides, so the override path is fuzzed too.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mtlsd::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, env) = text.split_once('\0').unwrap_or((text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match Config::parse(Path::new("/etc/mtlsd/mtlsd.toml"), file, env) {
        Ok(config) => {
            let _ = config.material_spec();
            let _ = config.watched_files();
            for listener in config.listeners() {
                let _ = listener.protocol.as_str();
            }
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty());
            for problem in problems {
                assert!(!problem.key.is_empty() || !problem.message.is_empty());
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
