//! Leader election: only the holder of a `coordination.k8s.io/v1` Lease runs the reconcilers;
//! every replica keeps serving webhooks, connection events, push hooks and metrics.
//!
//! The lease is taken and renewed by `kube-lease-manager`. On top of it this module keeps a
//! *renew deadline*: the leader watches its own Lease and, if no renewal of its own has been
//! stored for `renew_deadline` (shorter than the lease duration), it stops acting and the process
//! exits, before any other replica may take the lease. A replica that sees the lease go to
//! someone else also exits, so it restarts clean as a follower.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::runtime::watcher;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::SharedMetrics;

/// Default name of the Lease.
pub const DEFAULT_LEASE_NAME: &str = "streamspace-controller";
/// Field manager of our writes to the Lease.
const LEASE_FIELD_MANAGER: &str = "streamspace-controller-lease";

/// How this replica takes part in the election.
#[derive(Clone, Debug)]
pub struct LeaderSettings {
    pub lease_name: String,
    pub lease_namespace: String,
    /// Unique among replicas: the pod name, else host name and process id.
    pub identity: String,
    /// How long a lease stays valid after its last renewal (whole seconds).
    pub lease_duration: Duration,
    /// Longest time the leader acts without a stored renewal; shorter than the lease.
    pub renew_deadline: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election settings: {0}")]
    Settings(String),
    #[error("could not create or read Lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("lost the leader lease: {0}")]
    Lost(String),
    #[error("the lease manager stopped")]
    ManagerStopped,
}

impl LeaderSettings {
    /// Checks durations: whole seconds, renew deadline at least 2 s and below the lease.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let duration = self.lease_duration.as_secs();
        let deadline = self.renew_deadline.as_secs();
        let whole = |d: Duration| d.subsec_nanos() == 0;
        if !whole(self.lease_duration) || !whole(self.renew_deadline) {
            return Err(LeaderError::Settings(
                "lease duration and renew deadline are whole seconds".into(),
            ));
        }
        if deadline < 2 || deadline >= duration {
            return Err(LeaderError::Settings(format!(
                "the renew deadline ({deadline}s) must be at least 2s and shorter than the lease duration ({duration}s)"
            )));
        }
        Ok(())
    }

    /// Seconds before expiry at which the lease manager renews: a renewal every third of the
    /// renew deadline, so two renewals can fail before the deadline passes.
    pub fn renew_grace(&self) -> u64 {
        let every = (self.renew_deadline.as_secs() / 3).max(1);
        self.lease_duration.as_secs().saturating_sub(every).max(1)
    }
}

/// This replica's identity: `POD_NAME`, else the host name, with the process id.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "streamspace-controller".into());
    format!("{host}-{}", std::process::id())
}

/// What the leader knows about its lease at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Still the holder; acting is allowed until the instant given.
    Holding { until: SystemTime },
    /// Someone else holds it, or our renewals stopped in time: stop acting.
    Lost(String),
}

/// Pure rule: may the leader still act, given the latest Lease seen and its last renewal?
pub fn standing(
    me: &str,
    lease: Option<&LeaseSpec>,
    last_renewal: SystemTime,
    renew_deadline: Duration,
    now: SystemTime,
) -> Standing {
    let holder = lease.and_then(|l| l.holder_identity.as_deref());
    if let Some(holder) = holder
        && holder != me
    {
        return Standing::Lost(format!("the lease is now held by {holder:?}"));
    }
    let renewed = lease
        .filter(|_| holder == Some(me))
        .and_then(|l| l.renew_time.as_ref())
        .map(|t| SystemTime::from(t.0))
        .map_or(last_renewal, |t| t.max(last_renewal));
    let until = renewed + renew_deadline;
    if now >= until {
        Standing::Lost(format!(
            "no renewal stored for {}s (renew deadline {}s)",
            now.duration_since(renewed).unwrap_or_default().as_secs(),
            renew_deadline.as_secs()
        ))
    } else {
        Standing::Holding { until }
    }
}

/// Campaigns for the lease; resolves `Ok` when this replica becomes leader, with the guard that
/// must then be awaited (it resolves only with an error: the lease was lost).
pub async fn campaign(
    client: Client,
    settings: LeaderSettings,
    metrics: SharedMetrics,
) -> Result<Leadership, LeaderError> {
    settings.validate()?;
    let lease_error = |source| LeaderError::Lease {
        namespace: settings.lease_namespace.clone(),
        name: settings.lease_name.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
        .with_namespace(&settings.lease_namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.lease_duration.as_secs())
        .with_grace(settings.renew_grace())
        .with_field_manager(LEASE_FIELD_MANAGER)
        .build()
        .await
        .map_err(lease_error)?;
    metrics.process.leader.set(0);
    info!(lease = %settings.lease_name, namespace = %settings.lease_namespace, identity = %settings.identity, "waiting for the leader lease");
    let (mut held, task) = manager.watch().await;
    if held.wait_for(|held| *held).await.is_err() {
        return Err(LeaderError::ManagerStopped);
    }
    info!(identity = %settings.identity, "became the leader");
    metrics.process.leader.set(1);
    Ok(Leadership {
        client,
        settings,
        metrics,
        held,
        task,
        since: SystemTime::now(),
    })
}

/// The leader's hold on the lease; see [`Leadership::guard`].
pub struct Leadership {
    client: Client,
    settings: LeaderSettings,
    metrics: SharedMetrics,
    held: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
    since: SystemTime,
}

impl Leadership {
    /// Watches the lease until it is lost (an error) or `stop` resolves; on `stop` the lease is
    /// released so another replica takes over at once.
    pub async fn guard(self, stop: impl Future<Output = ()> + Send) -> Result<(), LeaderError> {
        let Leadership {
            client,
            settings,
            metrics,
            mut held,
            task,
            since,
        } = self;
        let lost = watch_lease(&client, &settings, &mut held, since);
        let result = tokio::select! {
            lost = lost => Err(lost),
            () = stop => Ok(()),
        };
        metrics.process.leader.set(0);
        if result.is_ok() {
            // Closing the channel makes the manager release the lease and end.
            drop(held);
            match task.await {
                Ok(Ok(_)) => info!("released the leader lease"),
                Ok(Err(error)) => warn!(%error, "could not release the leader lease"),
                Err(error) => warn!(%error, "lease manager task failed"),
            }
        }
        result
    }
}

/// Resolves with the reason once this replica may no longer act as leader.
async fn watch_lease(
    client: &Client,
    settings: &LeaderSettings,
    held: &mut watch::Receiver<bool>,
    since: SystemTime,
) -> LeaderError {
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.lease_namespace);
    let config =
        watcher::Config::default().fields(&format!("metadata.name={}", settings.lease_name));
    let mut events = watcher(api, config).boxed();
    let mut spec: Option<LeaseSpec> = None;
    loop {
        let now = SystemTime::now();
        let until = match standing(
            &settings.identity,
            spec.as_ref(),
            since,
            settings.renew_deadline,
            now,
        ) {
            Standing::Lost(reason) => return LeaderError::Lost(reason),
            Standing::Holding { until } => until,
        };
        let wait = until.duration_since(now).unwrap_or_default();
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease))) => spec = lease.spec,
                Some(Ok(watcher::Event::Delete(_))) => return LeaderError::Lost("the Lease was deleted".into()),
                Some(Ok(_)) => {}
                Some(Err(error)) => warn!(%error, "lease watch failed; retrying"),
                None => return LeaderError::ManagerStopped,
            },
            changed = held.changed() => {
                if changed.is_err() {
                    return LeaderError::ManagerStopped;
                }
                if !*held.borrow_and_update() {
                    return LeaderError::Lost("the lease manager reports the lease taken".into());
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + seconds)
    }

    fn lease(holder: &str, renewed: u64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(
                k8s_openapi::jiff::Timestamp::try_from(at(renewed)).expect("time"),
            )),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn the_leader_stops_acting_at_the_renew_deadline() {
        let deadline = Duration::from_secs(10);
        // (lease seen, last renewal known, now, still holding)
        let rows: Vec<(Option<LeaseSpec>, u64, u64, bool)> = vec![
            (None, 0, 5, true),
            (None, 0, 10, false),
            (Some(lease("me", 8)), 0, 15, true),
            (Some(lease("me", 8)), 0, 18, false),
            (Some(lease("me", 2)), 6, 15, true),
            (Some(lease("other", 8)), 0, 9, false),
            (Some(LeaseSpec::default()), 0, 9, true),
        ];
        for (i, (spec, renewed, now, holding)) in rows.into_iter().enumerate() {
            let result = standing("me", spec.as_ref(), at(renewed), deadline, at(now));
            assert_eq!(
                matches!(result, Standing::Holding { .. }),
                holding,
                "row {i}: {result:?}"
            );
        }
    }

    #[test]
    fn settings_need_a_deadline_below_the_lease() {
        let settings = |duration, deadline| LeaderSettings {
            lease_name: "l".into(),
            lease_namespace: "ns".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(duration),
            renew_deadline: Duration::from_secs(deadline),
        };
        assert!(settings(15, 10).validate().is_ok());
        assert!(settings(10, 10).validate().is_err());
        assert!(settings(3, 1).validate().is_err());
        assert_eq!(settings(15, 10).renew_grace(), 12);
        assert_eq!(settings(4, 3).renew_grace(), 3);
    }
}
