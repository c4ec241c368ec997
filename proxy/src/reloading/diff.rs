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

use crate::config::Section;
pub use crate::reload_report::{Applies, Item, ItemChange};

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
/// `old` is `None` at start-up: every item is then listed as new.
pub fn diff(
    old: Option<(&Generation, &BTreeMap<Section, Fingerprint>)>,
    new: (&Generation, &BTreeMap<Section, Fingerprint>),
    restart: &BTreeSet<Section>,
) -> Vec<ItemChange> {
    let show = |fp: Option<&Fingerprint>| fp.map(Fingerprint::to_hex);
    let empty = BTreeMap::new();
    let old_material = old.map(|(g, _)| material(g)).unwrap_or_default();
    let new_material = material(new.0);
    let mut changes = Vec::new();
    let keys: BTreeSet<&Item> = old_material.keys().chain(new_material.keys()).collect();
    for item in keys {
        let (before, after) = (old_material.get(item), new_material.get(item));
        if before == after {
            continue;
        }
        let inventory = match (item, old, new.0.inventory()) {
            (Item::Inventory, Some((old, _)), Some(next)) => {
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
    let old_sections = old.map(|(_, s)| s).unwrap_or(&empty);
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
