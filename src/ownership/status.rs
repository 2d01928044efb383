//! Status of FeatureFlag objects, written by the controller: the effective mode and percent,
//! when they last changed, and how many objects each side owns now. A change of the effective
//! value (an edit, an override set or cleared, an override expiring) is recorded as a `Flipped`
//! Event, so the history of who moved what is in one place.
//!
//! [`next_status`] is the decision; [`controller`] is the shell that loads counts and writes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::index::FlagIndex;
use super::{Effective, Owner, ResourceType, Source, effective, owner};
use crate::api_status::KubeFailure;
use crate::crd::feature_flag::OwnedCounts;
use crate::crd::{FeatureFlag, FeatureFlagStatus, Session};

/// How often counts are refreshed when nothing else happens.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Counts who owns each of `keys` (namespace, name) under `flag`.
pub fn count_owners<'a>(
    flag: &Effective,
    resource: ResourceType,
    keys: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> OwnedCounts {
    let mut counts = OwnedCounts::default();
    for (namespace, name) in keys {
        match owner(flag, resource, namespace, name) {
            Owner::Controller => counts.controller += 1,
            Owner::Shadow => {
                counts.legacy += 1;
                counts.shadowed += 1;
            }
            Owner::Legacy => counts.legacy += 1,
        }
    }
    counts
}

/// A change of the effective value, for the `Flipped` Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flip {
    pub note: String,
}

/// The status a flag should have, and the flip to record if the effective value changed.
pub fn next_status(
    current: &FeatureFlagStatus,
    flag: &FeatureFlag,
    effective_now: &Effective,
    counts: OwnedCounts,
    now: Timestamp,
) -> (FeatureFlagStatus, Option<Flip>) {
    let mode = effective_now.mode_str().to_string();
    let changed = current.effective_mode.as_deref() != Some(mode.as_str())
        || current.effective_percent != Some(effective_now.percent);
    let flip = changed.then(|| {
        let before = match (&current.effective_mode, current.effective_percent) {
            (Some(mode), Some(percent)) => format!("{mode} {percent}%"),
            _ => "unset".to_string(),
        };
        let why = match (effective_now.source, flag.spec.override_.as_ref()) {
            (Source::Override, Some(over)) => format!(
                "override by {}{}: {}",
                over.set_by.as_deref().unwrap_or("unknown"),
                over.expires_at
                    .as_ref()
                    .map(|t| format!(" until {}", t.0))
                    .unwrap_or_default(),
                over.reason.as_deref().unwrap_or("no reason given")
            ),
            (Source::Baseline, Some(_)) => "baseline (override expired)".to_string(),
            _ => "baseline".to_string(),
        };
        Flip {
            note: format!("{before} -> {mode} {}% ({why})", effective_now.percent),
        }
    });
    let status = FeatureFlagStatus {
        effective_mode: Some(mode),
        effective_percent: Some(effective_now.percent),
        source: Some(effective_now.source.as_str().to_string()),
        override_: override_state(flag, effective_now),
        last_changed: if changed {
            Some(Time(now))
        } else {
            current.last_changed.clone()
        },
        owned: Some(counts),
        observed_generation: flag.metadata.generation,
    };
    (status, flip)
}

/// What `status.override` shows: the override's mode while it applies, `expired` once it no
/// longer does (it stays in spec until cleared), nothing without one.
fn override_state(flag: &FeatureFlag, effective_now: &Effective) -> Option<String> {
    let over = flag.spec.override_.as_ref()?;
    Some(match effective_now.source {
        Source::Override => over.mode.as_str().to_string(),
        _ => "expired".to_string(),
    })
}

/// Reporting component of flip Events.
const REPORTER: &str = "streamspace-controller";

/// What the flag status controller needs.
pub struct FlagStatusContext {
    pub client: Client,
    pub flags: Arc<FlagIndex>,
    /// Sessions this controller watches; counted for every session-keyed type.
    pub sessions: Store<Session>,
    /// True once the controller's caches (the session store among them) have loaded.
    pub caches_loaded: tokio::sync::watch::Receiver<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] KubeFailure),
}

/// The FeatureFlag status controller, fed by the process's shared FeatureFlag cache; runs
/// until `shutdown` resolves.
pub fn controller(
    ctx: Arc<FlagStatusContext>,
    flags: &crate::caches::Shared<FeatureFlag>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl std::future::Future<Output = ()> + Send {
    Controller::for_shared_stream(flags.subscribe(), flags.store())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
}

async fn reconcile(flag: Arc<FeatureFlag>, ctx: Arc<FlagStatusContext>) -> Result<Action, Error> {
    let name = flag.name_any();
    let Some(resource) = ResourceType::ALL
        .into_iter()
        .find(|t| ctx.flags.object_name(*t) == name)
    else {
        // Not one of ours (another installation's prefix, or a misspelt name).
        return Ok(Action::await_change());
    };
    if !*ctx.caches_loaded.borrow() {
        // Counting an empty cache would report zero owned objects.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let now = Timestamp::now();
    let effective_now = effective(&flag.spec, now);
    let counts = match resource {
        ResourceType::Nodes => {
            let nodes = Api::<Node>::all(ctx.client.clone())
                .list_metadata(&ListParams::default())
                .await
                .map_err(KubeFailure::during("listing nodes"))?;
            let names: Vec<String> = nodes.items.iter().map(|n| n.name_any()).collect();
            count_owners(
                &effective_now,
                resource,
                names.iter().map(|n| ("", n.as_str())),
            )
        }
        _ => {
            let sessions = ctx.sessions.state();
            let keys: Vec<(String, String)> = sessions
                .iter()
                .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
                .collect();
            count_owners(
                &effective_now,
                resource,
                keys.iter().map(|(ns, n)| (ns.as_str(), n.as_str())),
            )
        }
    };
    let current = flag.status.clone().unwrap_or_default();
    let (status, flip) = next_status(&current, &flag, &effective_now, counts, now);
    if status != current {
        let mut body = json!({ "status": status });
        if status.override_.is_none() {
            // A merge patch leaves out what is absent: remove the column of a cleared override.
            body["status"]["override"] = serde_json::Value::Null;
        }
        let written = Api::<FeatureFlag>::all(ctx.client.clone())
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(body))
            .await;
        match written {
            Ok(_) => {}
            // Deleted since the watch saw it: nothing to report on.
            Err(kube::Error::Api(status)) if status.code == 404 => {
                return Ok(Action::await_change());
            }
            Err(source) => {
                return Err(Error::Api(KubeFailure::new("writing flag status", source)));
            }
        }
    }
    if let Some(flip) = flip
        && let Err(error) =
            super::audit::record(&ctx.client, &flag, REPORTER, "Flipped", &flip.note).await
    {
        warn!(%error, flag = %name, "could not record the flip as an event");
    }
    // Come back when the override expires, or to refresh the counts.
    let wait = effective_now
        .expires_at
        .map(|at| at.duration_since(now).unsigned_abs())
        .map_or(REFRESH, |until| until.min(REFRESH));
    Ok(Action::requeue(wait.max(Duration::from_millis(50))))
}

fn error_policy(_flag: Arc<FeatureFlag>, error: &Error, _ctx: Arc<FlagStatusContext>) -> Action {
    warn!(%error, "flag status reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{FeatureFlagSpec, FlagMode, FlagOverride};

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn flag(mode: FlagMode, percent: u8, over: Option<FlagOverride>) -> FeatureFlag {
        let mut flag = FeatureFlag::new(
            "sessions",
            FeatureFlagSpec {
                mode,
                percent,
                override_: over,
            },
        );
        flag.metadata.generation = Some(3);
        flag
    }

    #[test]
    fn counts_split_by_owner() {
        let names: Vec<String> = (0..1000).map(|i| format!("s{i}")).collect();
        let keys = || names.iter().map(|n| ("ns", n.as_str()));
        let half = Effective {
            mode: FlagMode::Shadow,
            percent: 50,
            source: Source::Baseline,
            expires_at: None,
        };
        let counts = count_owners(&half, ResourceType::Sessions, keys());
        assert_eq!(counts.controller, 0);
        assert_eq!(counts.legacy, 1000);
        assert!((400..=600).contains(&counts.shadowed), "{counts:?}");
        let all = Effective {
            mode: FlagMode::Controller,
            ..half
        };
        let counts = count_owners(&all, ResourceType::Sessions, keys());
        assert_eq!(counts.controller + counts.legacy, 1000);
        assert_eq!(counts.shadowed, 0);
    }

    #[test]
    fn a_flip_is_recorded_once_with_who_and_why() {
        let over = FlagOverride {
            mode: FlagMode::Legacy,
            percent: 100,
            expires_at: Some(Time(ts(200))),
            reason: Some("incident 42".into()),
            set_by: Some("alice".into()),
        };
        let flag = flag(FlagMode::Controller, 30, Some(over));
        let before = FeatureFlagStatus {
            effective_mode: Some("controller".into()),
            effective_percent: Some(30),
            source: Some("baseline".into()),
            override_: None,
            last_changed: Some(Time(ts(10))),
            owned: None,
            observed_generation: Some(2),
        };
        let during = effective(&flag.spec, ts(100));
        let (status, flip) = next_status(&before, &flag, &during, OwnedCounts::default(), ts(100));
        assert_eq!(status.effective_mode.as_deref(), Some("legacy"));
        assert_eq!(status.source.as_deref(), Some("override"));
        assert_eq!(status.override_.as_deref(), Some("legacy"));
        assert_eq!(status.last_changed, Some(Time(ts(100))));
        assert_eq!(status.observed_generation, Some(3));
        let note = flip.map(|f| f.note).unwrap_or_default();
        assert!(note.starts_with("controller 30% -> legacy 100%"), "{note}");
        assert!(
            note.contains("alice") && note.contains("incident 42"),
            "{note}"
        );

        // Same value again: no flip, the change time stays.
        let (again, flip) = next_status(&status, &flag, &during, OwnedCounts::default(), ts(150));
        assert_eq!(flip, None);
        assert_eq!(again.last_changed, Some(Time(ts(100))));

        // Expiry returns the baseline and says so.
        let after = effective(&flag.spec, ts(200));
        let (back, flip) = next_status(&again, &flag, &after, OwnedCounts::default(), ts(200));
        assert_eq!(back.effective_mode.as_deref(), Some("controller"));
        assert_eq!(back.effective_percent, Some(30));
        assert_eq!(
            back.override_.as_deref(),
            Some("expired"),
            "an expired override still in spec shows as expired"
        );
        let note = flip.map(|f| f.note).unwrap_or_default();
        assert!(note.contains("override expired"), "{note}");
    }
}
