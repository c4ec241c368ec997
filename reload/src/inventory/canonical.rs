//! The inventory's canonical shape, read line by line.
//!
//! The general parser builds a whole document tree of a format it knows
//! nothing about and then maps it onto ours: for 50,000 hosts that took
//! most of a second, on every host, on every reload. An inventory almost
//! always has one shape (the one the module docs show, the one the Ansible
//! role renders), so this reader accepts exactly that shape, one line at a
//! time, and answers `None` — "read it with the general parser" — for
//! anything else: an escape sequence, a multi-line array, an inline table,
//! a dotted key, a duplicate, a key it does not know, a YAML scalar whose
//! type is not obviously a string. It never reports an error itself: the
//! general parser sees the file when it is unusual, and names the problem.
//!
//! The promise, tested below by comparing both readers on generated and
//! mutated files: whenever this returns `Some`, the general parser would
//! have produced the same raw inventory with no unknown key.

use std::collections::btree_map::Entry;

use super::{Format, RawHost, RawInventory, RawRevoked};

/// The raw inventory, or `None` when `text` is not in the canonical shape.
pub(super) fn read(text: &str, format: Format) -> Option<RawInventory> {
    let inventory = match format {
        Format::Toml => toml(text),
        Format::Yaml => yaml(text),
    }?;
    // A host with no key at all is an empty table to one format and a
    // null to the other: the general parser decides what it means.
    let every_host_has_a_key = inventory
        .hosts
        .values()
        .all(|host| host.sans.is_some() || host.roles.is_some());
    every_host_has_a_key.then_some(inventory)
}

/// Where the TOML lines being read belong.
enum TomlTable {
    Top,
    Host(String),
    Revoked,
}

fn toml(text: &str) -> Option<RawInventory> {
    let mut inventory = RawInventory::default();
    let mut table = TomlTable::Top;
    for line in text.lines() {
        let line = toml_strip_comment(line)?.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix("[[") {
            if header.strip_suffix("]]")?.trim() != "revoked" {
                return None;
            }
            inventory.revoked.push(RawRevoked::default());
            table = TomlTable::Revoked;
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let name = header.strip_suffix(']')?.trim().strip_prefix("hosts.")?;
            let name = toml_key(name)?;
            match inventory.hosts.entry(name.clone()) {
                Entry::Occupied(_) => return None,
                Entry::Vacant(slot) => slot.insert(RawHost::default()),
            };
            table = TomlTable::Host(name);
            continue;
        }
        let (key, value) = line.split_once('=')?;
        let (key, value) = (key.trim(), value.trim());
        match &table {
            TomlTable::Top => match key {
                "cluster" => set_once(&mut inventory.cluster, toml_string(value)?)?,
                _ => return None,
            },
            TomlTable::Host(name) => {
                let host = inventory.hosts.get_mut(name)?;
                match key {
                    "sans" => set_once(&mut host.sans, toml_array(value)?)?,
                    "roles" => set_once(&mut host.roles, toml_array(value)?)?,
                    _ => return None,
                }
            }
            TomlTable::Revoked => {
                let entry = inventory.revoked.last_mut()?;
                revoked_field(entry, key, toml_string(value)?)?;
            }
        }
    }
    Some(inventory)
}

/// The line up to a `#` that is outside a string; `None` when the line
/// holds a backslash (escapes are the general parser's business).
fn toml_strip_comment(line: &str) -> Option<&str> {
    if line.contains('\\') {
        return None;
    }
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') => return Some(&line[..i]),
            _ => {}
        }
    }
    Some(line)
}

/// A bare key (letters, digits, `-`, `_`) or a quoted one without escapes.
fn toml_key(text: &str) -> Option<String> {
    if text.starts_with('"') || text.starts_with('\'') {
        return toml_string(text);
    }
    let bare = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    bare.then(|| text.to_owned())
}

/// `"basic"` or `'literal'`, whole, without escapes or control characters.
fn toml_string(text: &str) -> Option<String> {
    let quote = text.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = text.strip_prefix(quote)?.strip_suffix(quote)?;
    let plain = !inner.contains(quote)
        && !inner.contains('\\')
        && !inner.chars().any(|c| c.is_control() && c != '\t');
    plain.then(|| inner.to_owned())
}

/// `["a", 'b']` on one line; a trailing comma is allowed.
fn toml_array(text: &str) -> Option<Vec<String>> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?.trim();
    let inner = inner.strip_suffix(',').unwrap_or(inner);
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    // Strings hold no quote of their own kind, so a comma between two
    // elements is the only comma outside quotes.
    split_outside_quotes(inner, ',')?
        .into_iter()
        .map(|item| toml_string(item.trim()))
        .collect()
}

/// Where the YAML lines being read belong.
enum Yaml {
    Top,
    /// After `hosts:`, before the first host; hosts sit at `hosts`.
    Hosts {
        hosts: Option<usize>,
    },
    /// Inside host `name` (at indent `hosts`); its keys sit at `fields`,
    /// known from its first key.
    Host {
        name: String,
        hosts: usize,
        fields: Option<usize>,
    },
    /// A block list (`- item` lines) under `sans:` or `roles:`.
    List {
        name: String,
        hosts: usize,
        fields: usize,
        field: HostField,
        items: Option<usize>,
    },
    /// After `revoked:`; `- key: value` items sit at `items`.
    Revoked {
        items: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostField {
    Sans,
    Roles,
}

fn yaml(text: &str) -> Option<RawInventory> {
    let mut inventory = RawInventory::default();
    let mut section = Yaml::Top;
    let mut seen = [false; 3];
    for (number, line) in text.lines().enumerate() {
        let line = yaml_strip_comment(line)?.trim_end();
        let content = line.trim_start_matches(' ');
        if content.is_empty() || (number == 0 && content == "---") {
            continue;
        }
        if content.starts_with('\t') {
            return None;
        }
        let indent = line.len() - content.len();
        section = if indent == 0 && !content.starts_with("- ") {
            close_list(&inventory, &section)?;
            yaml_top(&mut inventory, &mut seen, content)?
        } else {
            yaml_line(&mut inventory, section, indent, content)?
        };
    }
    close_list(&inventory, &section)?;
    Some(inventory)
}

/// A top-level key: `cluster: name`, `hosts:`, `revoked:` (or `[]`).
fn yaml_top(inventory: &mut RawInventory, seen: &mut [bool; 3], content: &str) -> Option<Yaml> {
    let (key, value) = yaml_key_value(content)?;
    let slot = match key.as_str() {
        "cluster" => 0,
        "hosts" => 1,
        "revoked" => 2,
        _ => return None,
    };
    if std::mem::replace(&mut seen[slot], true) {
        return None;
    }
    match (slot, value) {
        (0, Some(value)) => {
            inventory.cluster = Some(yaml_scalar(value)?);
            Some(Yaml::Top)
        }
        (1, None) => Some(Yaml::Hosts { hosts: None }),
        (2, None) => Some(Yaml::Revoked { items: None }),
        _ => None,
    }
}

/// A block list must hold something: an empty one is a null to the
/// general parser.
fn close_list(inventory: &RawInventory, section: &Yaml) -> Option<()> {
    if let Yaml::List { name, field, .. } = section {
        let host = inventory.hosts.get(name)?;
        let list = match field {
            HostField::Sans => &host.sans,
            HostField::Roles => &host.roles,
        };
        if list.as_ref().is_none_or(Vec::is_empty) {
            return None;
        }
    }
    Some(())
}

/// One indented line (or a top-level `- ` item), read in `section`.
fn yaml_line(
    inventory: &mut RawInventory,
    section: Yaml,
    indent: usize,
    content: &str,
) -> Option<Yaml> {
    match section {
        Yaml::Top => None,
        Yaml::Hosts { hosts } => {
            if hosts.is_some_and(|h| h != indent) || indent == 0 {
                return None;
            }
            yaml_host(inventory, indent, content)
        }
        Yaml::Host {
            name,
            hosts,
            fields,
        } => {
            if indent == hosts {
                return yaml_host(inventory, indent, content);
            }
            if indent < hosts || fields.is_some_and(|f| f != indent) {
                return None;
            }
            yaml_field(inventory, name, hosts, indent, content)
        }
        Yaml::List {
            name,
            hosts,
            fields,
            field,
            items,
        } => match content.strip_prefix("- ") {
            Some(item) if indent >= fields && items.is_none_or(|i| i == indent) => {
                let value = yaml_scalar(item.trim_start_matches(' '))?;
                let host = inventory.hosts.get_mut(&name)?;
                match field {
                    HostField::Sans => host.sans.as_mut()?.push(value),
                    HostField::Roles => host.roles.as_mut()?.push(value),
                }
                Some(Yaml::List {
                    name,
                    hosts,
                    fields,
                    field,
                    items: Some(indent),
                })
            }
            _ => {
                let list = Yaml::List {
                    name,
                    hosts,
                    fields,
                    field,
                    items,
                };
                close_list(inventory, &list)?;
                let Yaml::List {
                    name,
                    hosts,
                    fields,
                    ..
                } = list
                else {
                    return None;
                };
                let host = Yaml::Host {
                    name,
                    hosts,
                    fields: Some(fields),
                };
                yaml_line(inventory, host, indent, content)
            }
        },
        Yaml::Revoked { items } => yaml_revoked(inventory, items, indent, content),
    }
}

/// `name:` opening a host under `hosts:`.
fn yaml_host(inventory: &mut RawInventory, indent: usize, content: &str) -> Option<Yaml> {
    let (name, value) = yaml_key_value(content)?;
    if value.is_some() {
        return None;
    }
    match inventory.hosts.entry(name.clone()) {
        Entry::Occupied(_) => return None,
        Entry::Vacant(slot) => slot.insert(RawHost::default()),
    };
    Some(Yaml::Host {
        name,
        hosts: indent,
        fields: None,
    })
}

/// `sans: [...]`, `roles: [...]`, or either opening a block list.
fn yaml_field(
    inventory: &mut RawInventory,
    name: String,
    hosts: usize,
    fields: usize,
    content: &str,
) -> Option<Yaml> {
    let (key, value) = yaml_key_value(content)?;
    let field = match key.as_str() {
        "sans" => HostField::Sans,
        "roles" => HostField::Roles,
        _ => return None,
    };
    let host = inventory.hosts.get_mut(&name)?;
    let slot = match field {
        HostField::Sans => &mut host.sans,
        HostField::Roles => &mut host.roles,
    };
    match value {
        Some(value) => {
            set_once(slot, yaml_flow_list(value)?)?;
            Some(Yaml::Host {
                name,
                hosts,
                fields: Some(fields),
            })
        }
        None => {
            set_once(slot, Vec::new())?;
            Some(Yaml::List {
                name,
                hosts,
                fields,
                field,
                items: None,
            })
        }
    }
}

/// `- serial: "…"` opening an entry, or `issuer:`/`note:` continuing it
/// (lined up with the first key, two columns right of the dash).
fn yaml_revoked(
    inventory: &mut RawInventory,
    items: Option<usize>,
    indent: usize,
    content: &str,
) -> Option<Yaml> {
    let rest = match content.strip_prefix("- ") {
        Some(rest) => {
            if items.is_some_and(|i| i != indent) {
                return None;
            }
            let rest = rest.trim_start_matches(' ');
            if rest.len() + 2 != content.len() {
                return None;
            }
            inventory.revoked.push(RawRevoked::default());
            rest
        }
        None => {
            if indent != items? + 2 {
                return None;
            }
            content
        }
    };
    let (key, value) = yaml_key_value(rest)?;
    let value = value?;
    let value = if key == "note" {
        yaml_note(value)?
    } else {
        yaml_scalar(value)?
    };
    revoked_field(inventory.revoked.last_mut()?, &key, value)?;
    Some(Yaml::Revoked {
        items: Some(items.unwrap_or(indent)),
    })
}

/// The line up to a comment (`#` at the start or after a space, outside
/// quotes); `None` when it holds a backslash.
fn yaml_strip_comment(line: &str) -> Option<&str> {
    if line.contains('\\') {
        return None;
    }
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if previous == ' ' => return Some(&line[..i]),
            _ => {}
        }
        previous = c;
    }
    Some(line)
}

/// `key: value` or `key:`; the key a plain word or quoted.
fn yaml_key_value(content: &str) -> Option<(String, Option<&str>)> {
    let (key, rest) = if content.starts_with('"') || content.starts_with('\'') {
        let quote = content.chars().next()?;
        let end = content[1..].find(quote)? + 2;
        (yaml_scalar(&content[..end])?, &content[end..])
    } else {
        let end = content.find(':')?;
        (yaml_scalar(&content[..end])?, &content[end..])
    };
    let rest = rest.strip_prefix(':')?;
    if rest.is_empty() {
        return Some((key, None));
    }
    let value = rest.strip_prefix(' ')?.trim();
    Some((key, (!value.is_empty()).then_some(value)))
}

/// A scalar that is a string to every YAML reader: quoted without
/// escapes, or a plain word that cannot be read as anything else.
fn yaml_scalar(text: &str) -> Option<String> {
    if let Some(quote) = text.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let inner = text.strip_prefix(quote)?.strip_suffix(quote)?;
        let plain = !inner.contains(quote) && !inner.chars().any(char::is_control);
        return plain.then(|| inner.to_owned());
    }
    let first = text.chars().next()?;
    let word = first.is_ascii_alphabetic()
        && !text.ends_with(':')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b))
        && !text.contains(": ")
        && !is_yaml_keyword(text);
    word.then(|| text.to_owned())
}

/// Words some YAML reader takes for a boolean or a null.
fn is_yaml_keyword(text: &str) -> bool {
    matches!(
        text.to_ascii_lowercase().as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
    )
}

/// A revoked entry's note: free text, as long as it is plainly text.
fn yaml_note(text: &str) -> Option<String> {
    if let Some(value) = yaml_scalar(text) {
        return Some(value);
    }
    let first = text.chars().next()?;
    let prose = first.is_ascii_alphabetic()
        && !text.ends_with(':')
        && !text.contains(": ")
        && !text.contains('#')
        && text
            .bytes()
            .all(|b| (b.is_ascii_graphic() || b == b' ') && !b"[]{},\"'`&*!|>%@".contains(&b))
        && !is_yaml_keyword(text);
    prose.then(|| text.to_owned())
}

/// `[a, "b"]` on one line.
fn yaml_flow_list(text: &str) -> Option<Vec<String>> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?.trim();
    if inner.is_empty() {
        return Some(Vec::new());
    }
    split_outside_quotes(inner, ',')?
        .into_iter()
        .map(|item| yaml_scalar(item.trim()))
        .collect()
}

/// Splits at `separator` outside quotes; `None` on an unclosed quote.
fn split_outside_quotes(text: &str, separator: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut quote = None;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c == separator => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if quote.is_some() {
        return None;
    }
    parts.push(&text[start..]);
    Some(parts)
}

/// Sets a field the first time; a second time is a duplicate key.
fn set_once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

fn revoked_field(entry: &mut RawRevoked, key: &str, value: String) -> Option<()> {
    match key {
        "serial" => set_once(&mut entry.serial, value),
        "issuer" => set_once(&mut entry.issuer, value),
        "note" => set_once(&mut entry.note, value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::general;

    /// Both readers on `text`: the canonical one must accept it (when
    /// `canonical`) and must agree with the general one whenever it does.
    fn agree(text: &str, format: Format) -> Option<RawInventory> {
        let fast = read(text, format);
        if let Some(fast) = &fast {
            let (general, unknown) = general(text, format).unwrap_or_else(|e| {
                panic!("canonical read {text:?} but the general parser failed: {e}")
            });
            assert!(unknown.is_empty(), "unknown keys {unknown:?} in {text:?}");
            assert_eq!(fast, &general, "the readers disagree on {text:?}");
        }
        fast
    }

    const TOML: &str = r#"# rendered by Ansible
cluster = "prod"

[hosts."db1"]
sans = ["DNS:db1.prod.example", "IP:10.0.0.11"]
roles = ["database"]

[hosts.API-1]   # a comment after a header
sans = [ 'DNS:api-1.prod.example' , "IP:fe80::1", ]
roles = ["api", "monitoring"] # and after a value

[hosts.h2]
roles = ["backup"]

[[revoked]]
serial = "5f3a9c0e21"
note = "hv3 key lost # not a comment"

[[revoked]]
serial = "01"
issuer = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
"#;

    const YAML: &str = r#"---
# rendered by hand
cluster: prod
hosts:
  db1:
    sans: ["DNS:db1.prod.example", "IP:10.0.0.11"]
    roles: [database]
  "API-1":   # a comment
    sans:
      - DNS:api-1.prod.example
      - 'IP:fe80::1'
    roles:
    - api
    - monitoring
  h2:
    roles: [backup]
revoked:
- serial: "5f3a9c0e21"
  note: hv3 key lost
- serial: '01'
  issuer: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
"#;

    #[test]
    fn the_canonical_shapes_are_read_and_agree_with_the_general_parser() {
        for (text, format) in [(TOML, Format::Toml), (YAML, Format::Yaml)] {
            let raw = agree(text, format).expect("canonical");
            assert_eq!(raw.cluster.as_deref(), Some("prod"));
            assert_eq!(raw.hosts.len(), 3);
            assert_eq!(
                raw.hosts["API-1"].sans.as_deref(),
                Some(&["DNS:api-1.prod.example".to_owned(), "IP:fe80::1".to_owned()][..])
            );
            assert_eq!(raw.hosts["h2"].sans, None);
            assert_eq!(raw.revoked.len(), 2);
            assert_eq!(raw.revoked[1].serial.as_deref(), Some("01"));
        }
    }

    #[test]
    fn anything_else_goes_to_the_general_parser() {
        let toml = [
            "cluster = \"a\\tb\"\n",                              // an escape
            "cluster = \"p\"\n[hosts.a]\nsans = [\n\"DNS:a\"]\n", // multi-line array
            "cluster = \"p\"\nhosts.a.sans = [\"DNS:a\"]\n",      // dotted key
            "cluster = \"p\"\nhosts = { a = { sans = [\"DNS:a\"] } }\n",
            "cluster = \"p\"\n[hosts.a]\nsans = [\"DNS:a\"]\nsans = [\"DNS:b\"]\n",
            "cluster = \"p\"\n[hosts.a]\nsans = [\"DNS:a\"]\n[hosts.a]\nroles = [\"x\"]\n",
            "cluster = \"p\"\n[hosts.a]\nsanz = [\"DNS:a\"]\n", // unknown key
            "cluster = \"p\"\n[hosts.a]\n",                     // a host with no key
            "cluster = \"p\"\ncolour = \"blue\"\n",
            "[hosts.a]\nsans = [\"DNS:a\"]\ncluster = \"p\"\n", // cluster inside a host
            "cluster = \"\"\"p\"\"\"\n",
        ];
        for text in toml {
            assert_eq!(read(text, Format::Toml), None, "{text:?}");
        }
        let yaml = [
            "cluster: p\nhosts:\n  a:\n    sans: [\"DNS:a\\n\"]\n",
            "cluster: p\nhosts:\n  a:\n    sans: [DNS:a,\n      DNS:b]\n",
            "cluster: p\nhosts:\n  a: {sans: [DNS:a]}\n",
            "cluster: p\nhosts:\n  10.0.0.1:\n    sans: [DNS:a]\n", // a name read as a number
            "cluster: p\nrevoked:\n  - serial: 01\n",               // read as the integer 1
            "cluster: yes\n",
            "cluster: p\nhosts:\n  a:\n    sans:\n", // an empty block list
            "cluster: p\nhosts:\n  a:\n\tsans: [DNS:a]\n",
            "cluster: &c p\n",
            "cluster: p\nhosts:\n  a:\n    sans: [DNS:a]\n   roles: [x]\n", // misaligned
            "cluster: p\nhosts:\n  a:\n  b:\n    sans: [DNS:a]\n",          // a host with no key
            "cluster: p\nrevoked:\n  - serial: \"1\"\n    note: see: ticket\n",
        ];
        for text in yaml {
            assert_eq!(read(text, Format::Yaml), None, "{text:?}");
        }
    }

    /// A small deterministic generator (no dependency needed for this).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, below: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 33) as usize) % below.max(1)
        }
    }

    #[test]
    fn mutated_files_are_either_refused_or_read_as_the_general_parser_reads_them() {
        let pieces = [
            "\"",
            "'",
            "#",
            "[",
            "]",
            "{",
            "}",
            ":",
            ",",
            "-",
            " ",
            "\n",
            "  ",
            "=",
            "\\",
            "0",
            "x",
            ".",
            "yes",
            "[[revoked]]\n",
            "- ",
            "\t",
            "é",
        ];
        let mut rng = Lcg(0x5eed);
        let mut read_canonically = 0;
        for (base, format) in [(TOML, Format::Toml), (YAML, Format::Yaml)] {
            let lines: Vec<&str> = base.lines().collect();
            for _ in 0..3_000 {
                let mut text = base.to_owned();
                for _ in 0..1 + rng.next(3) {
                    let at = rng.next(text.len());
                    let at = (0..=at)
                        .rev()
                        .find(|i| text.is_char_boundary(*i))
                        .unwrap_or(0);
                    match rng.next(4) {
                        0 => {
                            let end = (at + 1 + rng.next(3)).min(text.len());
                            let end = (end..=text.len())
                                .find(|i| text.is_char_boundary(*i))
                                .unwrap_or(text.len());
                            text.replace_range(at..end, "");
                        }
                        1 => text.insert_str(at, pieces[rng.next(pieces.len())]),
                        2 => {
                            let line = lines[rng.next(lines.len())];
                            text.insert_str(at, &format!("{line}\n"));
                        }
                        _ => text.replace_range(at..at, pieces[rng.next(pieces.len())]),
                    }
                }
                if agree(&text, format).is_some() {
                    read_canonically += 1;
                }
            }
        }
        // The mutations must also exercise the agreeing side, not only
        // the refusals.
        assert!(
            read_canonically > 500,
            "only {read_canonically} mutants read canonically"
        );
    }
}
