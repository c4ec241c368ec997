//! What a reload changes, item by item, and whether each change applies
//! live or needs a restart.
//!
//! The reloader decides "unchanged / applied / restart required" from this
//! diff alone, so it must cover everything a generation holds: this host's
//! identity, every trust bundle and CRL, the inventory's content (not its
//! path), and every section of the configuration. Items are a closed enum;
//! their names (`identity`, `trust_domain.mesh`, `crl.mesh`, `inventory`,
//! `config.listener.web`, …) exist only for the audit log and the log.

use std::collections::{BTreeMap, BTreeSet};

use mtlsd_expiry::Fingerprint;
use mtlsd_reload::Generation;

use crate::config::{Config, Section};
pub use crate::reload_report::{Applies, Item, ItemChange};

/// What a configuration file changes against the running configuration,
/// decided before its material is loaded: the reloader and `mtlsd check
/// --compare` both classify a change with this, so they cannot disagree
/// about what needs a restart.
#[derive(Debug)]
pub struct ConfigChange {
    /// The configuration to run with: the file's, but every setting only a
    /// restart applies kept at its running value (see
    /// [`Config::apply_live`]).
    pub effective: Config,
    /// Each change only a restart applies: its section and what to tell
    /// the operator.
    pub refused: Vec<(Section, String)>,
    running_sections: BTreeMap<Section, Fingerprint>,
    /// Sections as they will run, except restart-only ones as the file has
    /// them (so the diff shows what waits for a restart).
    compared_sections: BTreeMap<Section, Fingerprint>,
}

impl ConfigChange {
    /// Classifies `file` (a freshly parsed configuration) against `running`.
    pub fn new(running: &Config, file: Config) -> Self {
        let in_file = file.sections();
        let (effective, refused) = running.apply_live(file);
        let mut compared_sections = effective.sections();
        for (section, _) in &refused {
            match in_file.get(section) {
                Some(fp) => compared_sections.insert(section.clone(), *fp),
                None => compared_sections.remove(section),
            };
        }
        Self {
            effective,
            refused,
            running_sections: running.sections(),
            compared_sections,
        }
    }

    /// The sections only a restart applies.
    pub fn restart_sections(&self) -> BTreeSet<Section> {
        self.refused.iter().map(|(s, _)| s.clone()).collect()
    }

    /// Every item that differs, material and configuration, with how it
    /// applies. `running` is `None` when the running material is unknown:
    /// every material item is then listed as new.
    pub fn items(&self, running: Option<&Generation>, next: &Generation) -> Vec<ItemChange> {
        diff(
            running,
            &self.running_sections,
            (next, &self.compared_sections),
            &self.restart_sections(),
        )
    }
}

/// Every material item of a generation with its fingerprint.
fn material(generation: &Generation) -> BTreeMap<Item, Fingerprint> {
    let mut items = BTreeMap::new();
    let identity = generation.identity();
    let chain = identity.chain();
    items.insert(
        Item::Identity,
        if chain.len() == 1 {
            identity.leaf().fingerprint
        } else {
            Fingerprint::of_all(chain.iter().map(AsRef::as_ref))
        },
    );
    for (domain, bundle) in generation.bundles() {
        items.insert(Item::TrustBundle(domain.clone()), bundle.fingerprint());
        if let Some(crls) = bundle.crl_fingerprint() {
            items.insert(Item::Crl(domain.clone()), crls);
        }
    }
    if let Some(inventory) = generation.inventory() {
        items.insert(Item::Inventory, inventory.fingerprint());
    }
    items
}

/// The items that differ between the running state and the next one.
/// `old` is `None` at start-up (with no sections): every item is then
/// listed as new.
pub fn diff(
    old: Option<&Generation>,
    old_sections: &BTreeMap<Section, Fingerprint>,
    new: (&Generation, &BTreeMap<Section, Fingerprint>),
    restart: &BTreeSet<Section>,
) -> Vec<ItemChange> {
    let show = |fp: Option<&Fingerprint>| fp.map(Fingerprint::to_hex);
    let old_material = old.map(material).unwrap_or_default();
    let new_material = material(new.0);
    let mut changes = Vec::new();
    let keys: BTreeSet<&Item> = old_material.keys().chain(new_material.keys()).collect();
    for item in keys {
        let (before, after) = (old_material.get(item), new_material.get(item));
        if before == after {
            continue;
        }
        let inventory = match (item, old, new.0.inventory()) {
            (Item::Inventory, Some(old), Some(next)) => {
                old.inventory().map(|before| next.delta_from(before))
            }
            _ => None,
        };
        changes.push(ItemChange {
            item: item.clone(),
            old: show(before),
            new: show(after),
            applies: Applies::Live,
            inventory,
        });
    }
    let sections: BTreeSet<&Section> = old_sections.keys().chain(new.1.keys()).collect();
    for section in sections {
        let (before, after) = (old_sections.get(section), new.1.get(section));
        if before == after {
            continue;
        }
        changes.push(ItemChange {
            item: Item::Config(section.clone()),
            old: show(before),
            new: show(after),
            applies: if restart.contains(section) {
                Applies::Restart
            } else {
                Applies::Live
            },
            inventory: None,
        });
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_have_stable_names() {
        let names: Vec<String> = [
            Item::Identity,
            Item::TrustBundle("mesh".into()),
            Item::Crl("mesh".into()),
            Item::Inventory,
            Item::Config(Section::Listener("web".into())),
            Item::Config(Section::AuditLog),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            names,
            [
                "identity",
                "trust_domain.mesh",
                "crl.mesh",
                "inventory",
                "config.listener.web",
                "config.reload.audit_log"
            ]
        );
        assert!(Section::Admin.restart_only() && !Section::Reload.restart_only());
    }
}
