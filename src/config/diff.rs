//! What a reload changes: [`diff`] compares the mappings in force with the ones just read
//! and sorts them into added, removed and changed ports, so the server can open, close and
//! retarget only those and leave every other public port (and its streams) alone. It works on
//! any list of mappings: the TCP ones (`ServerConfig::mappings`) and the UDP ones
//! (`ServerConfig::udp_mappings`) are diffed each on its own, since a port number may be in
//! both. The types are re-exported as `crate::config::{diff, MappingDiff}`.

use std::collections::BTreeMap;

use super::Mapping;

/// The ports whose mapping differs between two lists, each kind sorted by public port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MappingDiff {
    /// Ports only in the new list.
    pub added: Vec<Mapping>,
    /// Ports only in the old list.
    pub removed: Vec<Mapping>,
    /// Ports in both whose target, tag, allow-list, PROXY setting or limit differ:
    /// `(old, new)`.
    pub changed: Vec<(Mapping, Mapping)>,
}

impl MappingDiff {
    /// True when the two lists map the same ports to the same targets and tags.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The difference from `old` to `new`, keyed by public port; ports mapped alike in both
/// appear nowhere. Both lists should be of one protocol (TCP with TCP, UDP with UDP), and
/// each should name a port once (as `load_mappings` gives them); if one does not, its last
/// mapping of the port counts.
pub fn diff(old: &[Mapping], new: &[Mapping]) -> MappingDiff {
    let old: BTreeMap<u16, &Mapping> = old.iter().map(|m| (m.public_port, m)).collect();
    let new: BTreeMap<u16, &Mapping> = new.iter().map(|m| (m.public_port, m)).collect();
    let mut d = MappingDiff::default();
    for (port, &o) in &old {
        match new.get(port) {
            None => d.removed.push(o.clone()),
            Some(&n) if n != o => d.changed.push((o.clone(), n.clone())),
            Some(_) => {}
        }
    }
    d.added = new
        .iter()
        .filter(|(port, _)| !old.contains_key(port))
        .map(|(_, &n)| n.clone())
        .collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Target;

    fn m(port: u16, target: &str, tag: &str) -> Mapping {
        Mapping {
            public_port: port,
            target: Target::parse(target).unwrap(),
            tag: tag.to_string(),
            allow: None,
            proxy: None,
            limit: None,
        }
    }

    #[test]
    fn same_lists_differ_in_nothing() {
        let a = [m(1, "10.0.0.1:22", "default"), m(2, "db:5432", "web")];
        assert!(diff(&a, &a).is_empty());
        assert!(diff(&[], &[]).is_empty());
        assert_eq!(diff(&a, &a), MappingDiff::default());
    }

    #[test]
    fn added_removed_and_changed_by_port() {
        let old = [
            m(3000, "10.0.0.3:80", "default"),
            m(1000, "10.0.0.1:22", "default"),
            m(2000, "db:5432", "office"),
            m(4000, "10.0.0.4:80", "a"),
            m(5000, "10.0.0.5:80", "keep"),
        ];
        let new = [
            m(6000, "10.0.0.6:80", "default"),
            m(5000, "10.0.0.5:80", "keep"),
            m(2000, "db:5432", "home"),
            m(1000, "10.0.0.9:22", "default"),
            m(500, "[::1]:8080", "x"),
        ];
        let d = diff(&old, &new);
        assert!(!d.is_empty());
        assert_eq!(
            d.added,
            vec![m(500, "[::1]:8080", "x"), m(6000, "10.0.0.6:80", "default")]
        );
        assert_eq!(
            d.removed,
            vec![
                m(3000, "10.0.0.3:80", "default"),
                m(4000, "10.0.0.4:80", "a")
            ]
        );
        assert_eq!(
            d.changed,
            vec![
                (
                    m(1000, "10.0.0.1:22", "default"),
                    m(1000, "10.0.0.9:22", "default")
                ),
                (m(2000, "db:5432", "office"), m(2000, "db:5432", "home")),
            ]
        );
    }

    #[test]
    fn a_changed_allow_list_changes_the_mapping() {
        let open = m(1, "h:1", "default");
        let mut locked = open.clone();
        locked.allow = Some(vec![crate::config::parse_cidr("10.0.0.0/8").unwrap()]);
        let d = diff(std::slice::from_ref(&open), std::slice::from_ref(&locked));
        assert_eq!(d.changed, vec![(open, locked.clone())]);
        assert!(d.added.is_empty() && d.removed.is_empty());
        let mut other = locked.clone();
        other.allow = Some(vec![crate::config::parse_cidr("10.0.0.0/16").unwrap()]);
        assert_eq!(diff(&[locked.clone()], &[other]).changed.len(), 1);
        assert!(diff(&[locked.clone()], &[locked]).is_empty());
    }

    #[test]
    fn only_one_side() {
        let a = [m(2, "h:2", "default"), m(1, "h:1", "default")];
        let d = diff(&[], &a);
        assert_eq!(
            d.added,
            vec![m(1, "h:1", "default"), m(2, "h:2", "default")]
        );
        assert!(d.removed.is_empty() && d.changed.is_empty());
        let d = diff(&a, &[]);
        assert_eq!(
            d.removed,
            vec![m(1, "h:1", "default"), m(2, "h:2", "default")]
        );
        assert!(d.added.is_empty() && d.changed.is_empty());
    }

    #[test]
    fn a_port_given_twice_counts_its_last_mapping() {
        let old = [m(1, "h:1", "default")];
        let new = [m(1, "h:2", "default"), m(1, "h:1", "default")];
        assert!(diff(&old, &new).is_empty());
    }
}
