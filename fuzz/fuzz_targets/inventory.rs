//! Feeds arbitrary bytes to the role inventory loader, as TOML or (when
//! the first byte is odd) YAML: every input must end in an inventory or a
//! list of problems, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mtlsd_reload::RoleInventory;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let path = if selector & 1 == 1 {
        Path::new("/etc/mtlsd/inventory.yaml")
    } else {
        Path::new("/etc/mtlsd/inventory.toml")
    };
    match RoleInventory::parse(path, text) {
        Ok(inventory) => {
            for host in inventory.hosts() {
                assert!(inventory.host(&host.name).is_some());
                assert!(!host.roles.is_empty());
            }
            let _ = inventory.is_revoked("01", None);
            let _ = inventory.fingerprint();
        }
        Err(problems) => {
            assert!(!problems.is_empty());
            for problem in problems {
                let _ = problem.to_string();
            }
        }
    }
});
