//! What a sync may call its own on a node.
//!
//! The inventory annotation on a node is written by us, but anyone who may write the node (its
//! kubelet, for one) can write it too. So an entry is believed only where the GitSync's own
//! record (`status.inventory`, which only the controller writes) agrees: a forged entry can
//! never make a prune remove someone else's label or taint. If the two disagree because the
//! controller stopped between the node write and the status write, the key is kept, never
//! removed: the safe direction.
//!
//! A sync owns only what it created: a declared label or taint that was already on the node
//! when Git first declared it is set to the declared value but not recorded as ours, so
//! removing it from Git leaves it in place.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Taint;

use serde::{Deserialize, Serialize};

use super::model::taint_id;

/// What one sync owns on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub labels: BTreeSet<String>,
    /// `key:Effect`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub taints: BTreeSet<String>,
}

impl Owned {
    pub(crate) fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.taints.is_empty()
    }
}

/// The part of the annotation's entry that the record confirms; with no record (the offline
/// `plan`), the annotation itself.
pub fn verified(annotation: Option<&Owned>, record: Option<Option<&Owned>>) -> Owned {
    let annotation = annotation.cloned().unwrap_or_default();
    match record {
        None => annotation,
        Some(None) => Owned::default(),
        Some(Some(record)) => Owned {
            labels: annotation
                .labels
                .intersection(&record.labels)
                .cloned()
                .collect(),
            taints: annotation
                .taints
                .intersection(&record.taints)
                .cloned()
                .collect(),
        },
    }
}

/// What the sync owns after this plan: each wanted key it owned before, or that the node does
/// not carry yet (so this sync creates it).
pub fn claim(
    wanted_labels: &BTreeMap<String, String>,
    wanted_taints: &BTreeMap<String, Taint>,
    live_labels: &BTreeMap<String, String>,
    live_taints: &[Taint],
    previous: &Owned,
) -> Owned {
    let live_taints: BTreeSet<String> = live_taints
        .iter()
        .map(|t| taint_id(&t.key, &t.effect))
        .collect();
    Owned {
        labels: wanted_labels
            .keys()
            .filter(|k| previous.labels.contains(*k) || !live_labels.contains_key(*k))
            .cloned()
            .collect(),
        taints: wanted_taints
            .keys()
            .filter(|id| previous.taints.contains(*id) || !live_taints.contains(*id))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(labels: &[&str], taints: &[&str]) -> Owned {
        Owned {
            labels: labels.iter().map(|s| s.to_string()).collect(),
            taints: taints.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn only_what_the_record_confirms_is_believed() {
        let forged = owned(
            &["ours", "foreign"],
            &["gpu:NoSchedule", "dedicated:NoSchedule"],
        );
        let record = owned(&["ours", "gone"], &["gpu:NoSchedule"]);
        let cases = [
            (
                Some(&forged),
                Some(Some(&record)),
                owned(&["ours"], &["gpu:NoSchedule"]),
            ),
            (Some(&forged), Some(None), owned(&[], &[])),
            (None, Some(Some(&record)), owned(&[], &[])),
            (Some(&forged), None, forged.clone()),
        ];
        for (annotation, record, expected) in cases {
            assert_eq!(
                verified(annotation, record),
                expected,
                "{annotation:?} {record:?}"
            );
        }
    }

    #[test]
    fn keys_already_on_the_node_are_not_claimed() {
        let taint = |key: &str| Taint {
            key: key.into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        let wanted_labels = BTreeMap::from([
            ("new".to_string(), "v".to_string()),
            ("preexisting".to_string(), "v".to_string()),
            ("ours-before".to_string(), "v".to_string()),
        ]);
        let wanted_taints = BTreeMap::from([
            ("fresh:NoSchedule".to_string(), taint("fresh")),
            ("theirs:NoSchedule".to_string(), taint("theirs")),
        ]);
        let live_labels = BTreeMap::from([
            ("preexisting".to_string(), "other".to_string()),
            ("ours-before".to_string(), "v".to_string()),
        ]);
        let live_taints = [taint("theirs")];
        let previous = owned(&["ours-before"], &[]);
        let claimed = claim(
            &wanted_labels,
            &wanted_taints,
            &live_labels,
            &live_taints,
            &previous,
        );
        assert_eq!(
            claimed,
            owned(&["new", "ours-before"], &["fresh:NoSchedule"])
        );
    }
}
