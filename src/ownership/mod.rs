//! Who acts on an object: the API's legacy handlers or the controller.
//!
//! Every decision goes through [`owner`], used by the API and by every reconciler, so both sides
//! always agree. Its inputs are a resource type's [`FeatureFlag`](crate::crd::FeatureFlag) (baseline or unexpired
//! override, see [`effective`]) and the object's key; buckets are stable (SHA-256 of
//! `<type>/<namespace>/<name>`, first 8 bytes big-endian, modulo 10 000, compared with
//! `percent * 100`), so raising the percentage only moves objects to the controller and
//! lowering it only moves them back.
//!
//! [`index`] keeps the flags from a watch; [`handoff`] records which side acted on an object so
//! an operation in flight when ownership changes is finished by exactly one side; [`gate()`] is
//! what every actor (reconciler or legacy handler) asks before it touches an object: act,
//! claim, shadow or skip; [`status`]
//! writes each flag's status and records every flip as an Event ([`audit`]); [`shadow`]
//! reports what the controller would do for objects it only shadows.

pub mod audit;
pub mod gate;
pub mod handoff;
pub mod index;
pub mod shadow;
pub mod status;
mod view;

pub use gate::{Gate, Skip, controller_gate, gate};
pub use view::view;

use k8s_openapi::jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::crd::{FeatureFlagSpec, FlagMode};

/// Resource types with a flag each; the flag object has the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// Session lifecycle: create, state changes, delete.
    Sessions,
    /// Idle hibernation and `maxSessionDuration`.
    Idle,
    /// Wake on connection.
    Autostart,
    /// Node operations: cordon, drain, labels, taints.
    Nodes,
    /// Quota admission of new sessions.
    Quota,
}

impl ResourceType {
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Sessions,
        ResourceType::Idle,
        ResourceType::Autostart,
        ResourceType::Nodes,
        ResourceType::Quota,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Sessions => "sessions",
            ResourceType::Idle => "idle",
            ResourceType::Autostart => "autostart",
            ResourceType::Nodes => "nodes",
            ResourceType::Quota => "quota",
        }
    }

    pub fn parse(text: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Which side acts on one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The legacy handlers act; the controller leaves the object alone.
    Legacy,
    /// The legacy handlers act; the controller computes what it would do and reports the
    /// difference, acting on nothing.
    Shadow,
    /// The controller acts; the API only writes intent.
    Controller,
}

impl Owner {
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Legacy => "legacy",
            Owner::Shadow => "shadow",
            Owner::Controller => "controller",
        }
    }

    /// The side that does the Kubernetes work.
    pub fn acting_side(self) -> Side {
        match self {
            Owner::Controller => Side::Controller,
            Owner::Legacy | Owner::Shadow => Side::Legacy,
        }
    }
}

/// The two sides that can act; recorded on objects by [`handoff`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Legacy,
    Controller,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::Controller => "controller",
        }
    }

    pub fn parse(text: &str) -> Option<Side> {
        match text {
            "legacy" => Some(Side::Legacy),
            "controller" => Some(Side::Controller),
            _ => None,
        }
    }
}

/// Where the effective value of a flag comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// No FeatureFlag object: the configured default.
    Default,
    Baseline,
    Override,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Baseline => "baseline",
            Source::Override => "override",
        }
    }
}

/// A flag's value at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    pub mode: FlagMode,
    /// 0..=100.
    pub percent: u8,
    pub source: Source,
    /// When the override in force stops applying.
    pub expires_at: Option<Timestamp>,
}

impl Effective {
    /// What applies when a type has no FeatureFlag object.
    pub fn default_for(mode: FlagMode) -> Effective {
        Effective {
            mode,
            percent: 100,
            source: Source::Default,
            expires_at: None,
        }
    }

    /// The mode as text, `legacy`, `shadow` or `controller` (an unknown mode reads as legacy:
    /// the controller then acts on nothing).
    pub fn mode_str(&self) -> &'static str {
        match self.mode {
            FlagMode::Controller => "controller",
            FlagMode::Shadow => "shadow",
            FlagMode::Legacy | FlagMode::Unknown(_) => "legacy",
        }
    }
}

/// The flag's value at `now`: an override wins until its `expiresAt` (exclusive).
pub fn effective(spec: &FeatureFlagSpec, now: Timestamp) -> Effective {
    if let Some(over) = &spec.override_ {
        let expires_at = over.expires_at.as_ref().map(|t| t.0);
        if expires_at.is_none_or(|at| now < at) {
            return Effective {
                mode: over.mode.clone(),
                percent: over.percent.min(100),
                source: Source::Override,
                expires_at,
            };
        }
    }
    Effective {
        mode: spec.mode.clone(),
        percent: spec.percent.min(100),
        source: Source::Baseline,
        expires_at: None,
    }
}

/// Number of buckets; `percent * 100` of them belong to the controller.
pub const BUCKETS: u64 = 10_000;

/// The stable bucket of an object, `0..BUCKETS`. Cluster-scoped objects (nodes) have an empty
/// namespace; an empty name still hashes to a fixed bucket.
pub fn bucket(resource: ResourceType, namespace: &str, name: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(resource.as_str())
        .chain_update(b"/")
        .chain_update(namespace)
        .chain_update(b"/")
        .chain_update(name)
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % BUCKETS
}

/// Who acts on `namespace/name` of `resource` under `flag`. The one decision both the API and
/// the controller use.
pub fn owner(flag: &Effective, resource: ResourceType, namespace: &str, name: &str) -> Owner {
    let selected = || bucket(resource, namespace, name) < u64::from(flag.percent.min(100)) * 100;
    match flag.mode {
        FlagMode::Controller if selected() => Owner::Controller,
        FlagMode::Shadow if selected() => Owner::Shadow,
        _ => Owner::Legacy,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use proptest::prelude::*;

    use super::*;
    use crate::crd::FlagOverride;

    fn flag(mode: FlagMode, percent: u8) -> Effective {
        Effective {
            mode,
            percent,
            source: Source::Baseline,
            expires_at: None,
        }
    }

    fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn bucket_follows_the_documented_formula() {
        let digest = Sha256::digest(b"sessions/streamspace/alice-firefox-1");
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        assert_eq!(
            bucket(ResourceType::Sessions, "streamspace", "alice-firefox-1"),
            u64::from_be_bytes(first) % 10_000
        );
        // The type is part of the key: the same object lands in independent buckets per type.
        let per_type: std::collections::HashSet<u64> = ResourceType::ALL
            .iter()
            .map(|t| bucket(*t, "streamspace", "alice-firefox-1"))
            .collect();
        assert!(per_type.len() > 1);
    }

    #[test]
    fn empty_keys_have_a_fixed_bucket() {
        let b = bucket(ResourceType::Nodes, "", "");
        assert!(b < BUCKETS);
        assert_eq!(b, bucket(ResourceType::Nodes, "", ""));
        assert_eq!(
            owner(
                &flag(FlagMode::Controller, 100),
                ResourceType::Nodes,
                "",
                ""
            ),
            Owner::Controller
        );
        assert_eq!(
            owner(&flag(FlagMode::Controller, 0), ResourceType::Nodes, "", ""),
            Owner::Legacy
        );
    }

    #[test]
    fn modes() {
        let key = (ResourceType::Sessions, "ns", "s");
        for (mode, percent, expected) in [
            (FlagMode::Legacy, 100, Owner::Legacy),
            (FlagMode::Legacy, 0, Owner::Legacy),
            (FlagMode::Shadow, 100, Owner::Shadow),
            (FlagMode::Shadow, 0, Owner::Legacy),
            (FlagMode::Controller, 100, Owner::Controller),
            (FlagMode::Controller, 0, Owner::Legacy),
            (FlagMode::Unknown("later".into()), 100, Owner::Legacy),
        ] {
            assert_eq!(
                owner(&flag(mode.clone(), percent), key.0, key.1, key.2),
                expected,
                "{mode} {percent}"
            );
        }
    }

    #[test]
    fn percent_over_100_reads_as_100() {
        assert_eq!(
            owner(
                &flag(FlagMode::Controller, 250),
                ResourceType::Quota,
                "a",
                "b"
            ),
            Owner::Controller
        );
    }

    #[test]
    fn overrides_win_until_they_expire() {
        let spec = FeatureFlagSpec {
            mode: FlagMode::Controller,
            percent: 40,
            override_: Some(FlagOverride {
                mode: FlagMode::Legacy,
                percent: 100,
                expires_at: Some(Time(ts(100))),
                reason: Some("rollback".into()),
                set_by: Some("alice".into()),
            }),
        };
        let during = effective(&spec, ts(99));
        assert_eq!(during.mode, FlagMode::Legacy);
        assert_eq!(during.source, Source::Override);
        assert_eq!(during.expires_at, Some(ts(100)));
        let after = effective(&spec, ts(100));
        assert_eq!(after.mode, FlagMode::Controller);
        assert_eq!(after.percent, 40);
        assert_eq!(after.source, Source::Baseline);

        let forever = FeatureFlagSpec {
            override_: spec.override_.clone().map(|o| FlagOverride {
                expires_at: None,
                ..o
            }),
            ..spec
        };
        assert_eq!(effective(&forever, ts(1 << 40)).source, Source::Override);
    }

    #[test]
    fn split_is_close_to_the_percentage() {
        let flag = flag(FlagMode::Controller, 30);
        let owned = (0..10_000)
            .filter(|i| {
                owner(
                    &flag,
                    ResourceType::Sessions,
                    "streamspace",
                    &format!("s-{i}"),
                ) == Owner::Controller
            })
            .count();
        // 3,000 expected; 4.6 standard deviations either side.
        assert!((2790..=3210).contains(&owned), "{owned}");
    }

    proptest! {
        #[test]
        fn raising_the_percentage_never_hands_an_object_back(
            namespace in "[a-z0-9-]{0,20}",
            name in "[a-z0-9.-]{0,60}",
            low in 0u8..=100,
            high in 0u8..=100,
        ) {
            let (low, high) = (low.min(high), low.max(high));
            for mode in [FlagMode::Controller, FlagMode::Shadow] {
                let before = owner(&flag(mode.clone(), low), ResourceType::Sessions, &namespace, &name);
                let after = owner(&flag(mode.clone(), high), ResourceType::Sessions, &namespace, &name);
                // Raising: an owned object stays owned. Lowering (read the other way): an
                // unowned object stays unowned.
                if before != Owner::Legacy {
                    prop_assert_eq!(after, before);
                }
                if after == Owner::Legacy {
                    prop_assert_eq!(before, Owner::Legacy);
                }
            }
        }

        #[test]
        fn zero_and_hundred_are_exact(
            resource in 0usize..5,
            namespace in ".{0,20}",
            name in ".{0,60}",
        ) {
            let resource = ResourceType::ALL[resource];
            prop_assert_eq!(
                owner(&flag(FlagMode::Controller, 0), resource, &namespace, &name),
                Owner::Legacy
            );
            prop_assert_eq!(
                owner(&flag(FlagMode::Controller, 100), resource, &namespace, &name),
                Owner::Controller
            );
            prop_assert_eq!(
                owner(&flag(FlagMode::Shadow, 100), resource, &namespace, &name),
                Owner::Shadow
            );
        }
    }
}
