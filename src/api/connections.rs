//! Connections of `connect`, shared by every API replica, and open WebSocket streams.
//!
//! **Connections** live in the API server, one `coordination.k8s.io/v1` Lease per connection
//! ([`ConnectionStore`]), so every replica answers the same `activeConnections` and a
//! connection made through one replica can be heartbeated and closed through another:
//!
//! - `spec.holderIdentity` is the connection id, `spec.acquireTime` when it was made,
//!   `spec.renewTime` its last heartbeat, `spec.leaseDurationSeconds` its expiry (the
//!   `--connection-expiry` of the replica that made it, so every replica agrees on when it
//!   expires);
//! - name `streamspace-conn-<hash of session and connection id>`, so a repeated `connect` with
//!   the same `connectionId` finds the same object instead of making a new one;
//! - labels `app=streamspace-connection`, `session`, `user`; annotations with the exact session
//!   name, user and connection id; an ownerReference to the Session, so deleting the session
//!   removes its connections.
//!
//! Why a Lease per connection: a heartbeat writes one small object that no other connection
//! shares (no conflicts between the heartbeats of one session's connections, as a shared
//! ConfigMap or a Session annotation would have), Sessions are not rewritten on every
//! heartbeat (their watchers, the controller among them, see nothing), and expiry is a pure
//! function of stored fields and the clock ([`is_live`]), so replicas need no coordination.
//! Every replica reads them from one watch (label `app=streamspace-connection`) and deletes
//! expired ones ([`ConnectionStore::sweep`], guarded by uid and resourceVersion, so a renewal
//! in between wins).
//!
//! **Renewals are batched**: a heartbeat (or a repeated `connect`) of an open connection writes
//! its Lease only when the newest renewTime known to this replica (stored, or written by this
//! replica and not yet back through the watch) is at least [`renew_threshold`] old, a quarter
//! of the Lease's own expiry ([`on_heartbeat`]). So a connection costs at most one write per
//! threshold (15 s with the default 60 s expiry) however often its client heartbeats, and a
//! client that heartbeats more often than every three quarters of the expiry never loses it.
//! The stored renewTime, reported as `lastHeartbeat`, is therefore the last *written*
//! heartbeat: the real last one is at most one threshold later, and a connection whose client
//! stops expires between `expiry - threshold` and `expiry` after its last heartbeat. Every
//! replica reads the same stored fields, so all of them agree on both.
//!
//! **Streams** ([`StreamSlots`]): open WebSocket streams per user and in total; a stream holds
//! a [`StreamSlot`] that gives its place back when dropped, so a user's entry exists only while
//! they have a stream open.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::crd::Session;
use crate::session::names::label_value;

/// Label value of `app` on every connection Lease.
pub const APP_CONNECTION: &str = "streamspace-connection";
/// Annotation with the exact session name (labels may be shortened).
pub const SESSION_ANNOTATION: &str = "stream.space/session";
/// Annotation with the user who connected.
pub const USER_ANNOTATION: &str = "stream.space/user";
/// Annotation with the connection id (also `spec.holderIdentity`).
pub const CONNECTION_ANNOTATION: &str = "stream.space/connection-id";
/// Default expiry: a connection without a heartbeat for this long is gone.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(60);
/// Live connections one session may have; a further new connection is refused (429).
pub const MAX_PER_SESSION: usize = 64;
/// Longest connection id a client may choose.
pub const MAX_ID_LEN: usize = 128;
/// Field manager of the API's connection writes.
const FIELD_MANAGER: &str = "streamspace-api";

/// Whether `id` may be a connection id: 1 to [`MAX_ID_LEN`] characters of `A-Z a-z 0-9 . _ -`.
pub fn valid_connection_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Name of the Lease of connection `id` to `session`: the same for every replica and every
/// repeated `connect`, a valid object name whatever the two are.
pub fn lease_name(session: &str, id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(session.as_bytes());
    hasher.update([0]);
    hasher.update(id.as_bytes());
    let hex: String = hasher
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("streamspace-conn-{hex}")
}

/// When a connection last heartbeated at `renewed` with `duration` expires.
pub fn expires_at(renewed: Timestamp, duration: Duration) -> Timestamp {
    let signed = SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX);
    renewed.checked_add(signed).unwrap_or(Timestamp::MAX)
}

/// Whether a connection last heartbeated at `renewed` is still open at `now`.
pub fn is_live(renewed: Timestamp, duration: Duration, now: Timestamp) -> bool {
    now < expires_at(renewed, duration)
}

/// A renewal is written once the last one is this fraction of the expiry old: with a quarter,
/// a 60 s expiry renews at most every 15 s (the default flush interval of activity), and a 2 s
/// one every 500 ms.
const RENEW_FRACTION: u32 = 4;

/// How old the last written renewal of a connection with expiry `duration` may get before a
/// heartbeat writes a new one.
pub fn renew_threshold(duration: Duration) -> Duration {
    duration / RENEW_FRACTION
}

/// What a heartbeat of a connection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// The connection is not open any more: the client connects again.
    Expired,
    /// Write a renewal now.
    Renew,
    /// The last renewal is recent enough: nothing is written.
    Recent,
}

/// The newest renewTime of a connection: the stored one, or this replica's own write when the
/// watch has not brought it back yet.
fn newest_renewal(stored: Timestamp, written: Option<Timestamp>) -> Timestamp {
    written.map_or(stored, |w| w.max(stored))
}

/// The decision for a heartbeat at `now` of a connection with expiry `duration` whose stored
/// renewTime is `stored`, and which this replica last renewed at `written` (a write the watch
/// may not have brought back yet).
pub fn on_heartbeat(
    stored: Timestamp,
    written: Option<Timestamp>,
    duration: Duration,
    now: Timestamp,
) -> Beat {
    let newest = newest_renewal(stored, written);
    if !is_live(newest, duration, now) {
        return Beat::Expired;
    }
    let threshold =
        SignedDuration::try_from(renew_threshold(duration)).unwrap_or(SignedDuration::MAX);
    if now.duration_since(newest) >= threshold {
        Beat::Renew
    } else {
        Beat::Recent
    }
}

/// One connection, as stored and as answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfo {
    pub connection_id: String,
    pub user: String,
    pub connected_at: String,
    pub last_heartbeat: String,
    pub expires_at: String,
}

/// The fields of a connection Lease that matter here; `None` for an object that is not one.
#[derive(Clone, Debug)]
struct Parsed<'a> {
    session: &'a str,
    id: &'a str,
    user: &'a str,
    acquired: Timestamp,
    renewed: Timestamp,
    duration: Duration,
}

fn parse(lease: &Lease) -> Option<Parsed<'_>> {
    let annotations = lease.metadata.annotations.as_ref()?;
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref()?.0;
    Some(Parsed {
        session: annotations.get(SESSION_ANNOTATION)?,
        id: annotations.get(CONNECTION_ANNOTATION)?,
        user: annotations.get(USER_ANNOTATION).map_or("", String::as_str),
        acquired: spec.acquire_time.as_ref().map_or(renewed, |t| t.0),
        renewed,
        duration: Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        ),
    })
}

impl Parsed<'_> {
    fn live(&self, now: Timestamp) -> bool {
        is_live(self.renewed, self.duration, now)
    }

    fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            connection_id: self.id.to_string(),
            user: self.user.to_string(),
            connected_at: micro(self.acquired),
            last_heartbeat: micro(self.renewed),
            expires_at: micro(expires_at(self.renewed, self.duration)),
        }
    }
}

fn micro(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Live connections per session among `leases` at `now`.
pub fn live_counts<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    now: Timestamp,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for parsed in leases.into_iter().filter_map(parse) {
        if parsed.live(now) {
            *counts.entry(parsed.session.to_string()).or_default() += 1;
        }
    }
    counts
}

/// Live connections of `session` among `leases` at `now`, oldest first.
pub fn live_of<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    session: &str,
    now: Timestamp,
) -> Vec<ConnectionInfo> {
    let mut live: Vec<ConnectionInfo> = leases
        .into_iter()
        .filter_map(parse)
        .filter(|p| p.session == session && p.live(now))
        .map(|p| p.info())
        .collect();
    live.sort_by(|a, b| {
        (&a.connected_at, &a.connection_id).cmp(&(&b.connected_at, &b.connection_id))
    });
    live
}

/// Why a connection could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("session {session:?} already has {limit} open connections; disconnect one first")]
    TooMany { session: String, limit: usize },
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// What `connect` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// A new connection.
    New,
    /// The connection id was already open: only its heartbeat was renewed.
    Renewed,
}

/// Connections of one namespace, read from this replica's watch and written to the API server.
pub struct ConnectionStore {
    api: Api<Lease>,
    cache: Store<Lease>,
    loaded: AtomicBool,
    expiry: Duration,
    /// The renewTime this replica last wrote (or is writing), per Lease name: the watch may not
    /// have brought it back yet. Entries go once they would have expired ([`Self::sweep`]).
    written: Mutex<HashMap<String, Timestamp>>,
}

impl ConnectionStore {
    pub fn new(api: Api<Lease>, cache: Store<Lease>, expiry: Duration) -> ConnectionStore {
        ConnectionStore {
            api,
            cache,
            loaded: AtomicBool::new(false),
            expiry,
            written: Mutex::new(HashMap::new()),
        }
    }

    fn written(&self) -> MutexGuard<'_, HashMap<String, Timestamp>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watch configuration of the connection Leases.
    pub fn watch_config() -> kube::runtime::watcher::Config {
        kube::runtime::watcher::Config::default().labels(&format!("app={APP_CONNECTION}"))
    }

    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Relaxed);
    }

    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Live connections of every session, from the watch cache.
    pub fn counts(&self, now: Timestamp) -> HashMap<String, usize> {
        let leases = self.cache.state();
        live_counts(leases.iter().map(AsRef::as_ref), now)
    }

    /// Live connections of `session`, from the watch cache.
    pub fn count(&self, session: &str, now: Timestamp) -> usize {
        self.counts(now).get(session).copied().unwrap_or(0)
    }

    /// Live connections of `session`, from the watch cache, oldest first.
    pub fn list(&self, session: &str, now: Timestamp) -> Vec<ConnectionInfo> {
        let leases = self.cache.state();
        live_of(leases.iter().map(AsRef::as_ref), session, now)
    }

    /// The Lease of connection `id` to `session`: from the cache, else from the API server (it
    /// may have been made through another replica a moment ago).
    async fn find(&self, session: &str, id: &str) -> Result<Option<Lease>, kube::Error> {
        let name = lease_name(session, id);
        let key = ObjectRef::new(&name).within(self.api.namespace().unwrap_or_default());
        match self.cache.get(&key) {
            Some(lease) => Ok(Some(Lease::clone(&lease))),
            None => self.api.get_opt(&name).await,
        }
    }

    /// Records connection `id` by `user` to `session`: a new Lease, or the renewal of the one
    /// this id already has (a repeated `connect` of the same client is one connection).
    pub async fn open(
        &self,
        session: &Session,
        id: &str,
        user: &str,
    ) -> Result<Opened, ConnectionError> {
        let name = session.name_any();
        let now = Timestamp::now();
        if let Some(existing) = self.find(&name, id).await? {
            let live = match parse(&existing) {
                Some(parsed) => self.beat(&existing, &parsed, now).await?.is_some(),
                None => false,
            };
            if !live {
                self.renew_lease(&existing, now, true).await?;
                self.written().insert(existing.name_any(), now);
            }
            return Ok(if live { Opened::Renewed } else { Opened::New });
        }
        // Counted in the API server, not the cache: a fast connect loop must not outrun it.
        if self.live_in_server(&name, now).await? >= MAX_PER_SESSION {
            return Err(ConnectionError::TooMany {
                session: name,
                limit: MAX_PER_SESSION,
            });
        }
        let lease = self.new_lease(session, id, user, now);
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => {
                self.written().insert(lease.name_any(), now);
                Ok(Opened::New)
            }
            // Another replica made it at the same moment: the same connection.
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                if let Some(existing) = self.api.get_opt(&lease_name(&name, id)).await?
                    && let Some(parsed) = parse(&existing)
                {
                    self.beat(&existing, &parsed, now).await?;
                }
                Ok(Opened::Renewed)
            }
            Err(error) => Err(error.into()),
        }
    }

    fn new_lease(&self, session: &Session, id: &str, user: &str, now: Timestamp) -> Lease {
        let name = session.name_any();
        let owner = session.controller_owner_ref(&()).map(|mut owner| {
            owner.controller = Some(false);
            owner.block_owner_deletion = Some(false);
            owner
        });
        Lease {
            metadata: ObjectMeta {
                name: Some(lease_name(&name, id)),
                labels: Some(BTreeMap::from([
                    ("app".to_string(), APP_CONNECTION.to_string()),
                    ("session".to_string(), label_value(&name)),
                    ("user".to_string(), label_value(user)),
                ])),
                annotations: Some(BTreeMap::from([
                    (SESSION_ANNOTATION.to_string(), name.clone()),
                    (USER_ANNOTATION.to_string(), user.to_string()),
                    (CONNECTION_ANNOTATION.to_string(), id.to_string()),
                ])),
                owner_references: owner.map(|o: OwnerReference| vec![o]),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(id.to_string()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_duration_seconds: Some(self.duration_seconds()),
                ..LeaseSpec::default()
            }),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.expiry.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// Sets the Lease's heartbeat to `now` (and, for a connection that had expired, its start
    /// and this replica's expiry).
    async fn renew_lease(
        &self,
        lease: &Lease,
        now: Timestamp,
        restart: bool,
    ) -> Result<(), kube::Error> {
        let mut spec = json!({"renewTime": MicroTime(now)});
        if restart {
            spec["acquireTime"] = json!(MicroTime(now));
            spec["leaseDurationSeconds"] = json!(self.duration_seconds());
        }
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        self.api
            .patch(
                &lease.name_any(),
                &params,
                &Patch::Merge(json!({"spec": spec})),
            )
            .await?;
        Ok(())
    }

    /// A heartbeat of connection `id`: renews it when due ([`on_heartbeat`]); `Ok(None)` when
    /// it is not open (never made, closed or expired: the client connects again). Returns when
    /// it now expires (from the newest renewal written, as every replica computes it).
    pub async fn heartbeat(
        &self,
        session: &str,
        id: &str,
    ) -> Result<Option<Timestamp>, kube::Error> {
        let now = Timestamp::now();
        let Some(lease) = self.find(session, id).await? else {
            return Ok(None);
        };
        let Some(parsed) = parse(&lease).filter(|p| p.session == session) else {
            return Ok(None);
        };
        match self.beat(&lease, &parsed, now).await {
            Ok(renewed) => Ok(renewed.map(|at| expires_at(at, parsed.duration))),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// One heartbeat at `now` of an existing connection Lease: writes a renewal when
    /// [`on_heartbeat`] says so, claiming it in memory first so that concurrent heartbeats on
    /// this replica write once. Returns the newest renewTime written, `None` when expired.
    async fn beat(
        &self,
        lease: &Lease,
        parsed: &Parsed<'_>,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, kube::Error> {
        let name = lease.name_any();
        let previous = {
            let mut written = self.written();
            let previous = written.get(&name).copied();
            match on_heartbeat(parsed.renewed, previous, parsed.duration, now) {
                Beat::Expired => return Ok(None),
                Beat::Recent => return Ok(Some(newest_renewal(parsed.renewed, previous))),
                Beat::Renew => written.insert(name.clone(), now),
            }
        };
        if let Err(error) = self.renew_lease(lease, now, false).await {
            // Not written: the next heartbeat tries again.
            let mut written = self.written();
            if written.get(&name) == Some(&now) {
                match previous {
                    Some(at) => written.insert(name, at),
                    None => written.remove(&name),
                };
            }
            return Err(error);
        }
        Ok(Some(now))
    }

    /// Closes connection `id` of `session` (closing one that is not open is no error); returns
    /// the live connections left, read from the API server so that every replica answers alike.
    pub async fn close(&self, session: &str, id: &str) -> Result<usize, kube::Error> {
        let name = lease_name(session, id);
        self.written().remove(&name);
        match self.api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(error) => return Err(error),
        }
        self.live_in_server(session, Timestamp::now()).await
    }

    /// Live connections of `session` at `now`, listed from the API server.
    async fn live_in_server(&self, session: &str, now: Timestamp) -> Result<usize, kube::Error> {
        let selector = format!("app={APP_CONNECTION},session={}", label_value(session));
        let leases = self
            .api
            .list(&ListParams::default().labels(&selector))
            .await?;
        Ok(live_counts(&leases.items, now)
            .get(session)
            .copied()
            .unwrap_or(0))
    }

    /// Deletes the expired connections in the cache, each guarded by its uid and
    /// resourceVersion (a heartbeat in between keeps it). Every replica sweeps; a lost race
    /// is no error.
    pub async fn sweep(&self, now: Timestamp) {
        self.written()
            .retain(|_, at| is_live(*at, self.expiry, now));
        for lease in self.cache.state() {
            if parse(&lease).is_none_or(|p| p.live(now)) {
                continue;
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: lease.metadata.uid.clone(),
                    resource_version: lease.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            match self.api.delete(&lease.name_any(), &params).await {
                Ok(_) => debug!(lease = %lease.name_any(), "expired connection removed"),
                Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => {}
                Err(error) => {
                    warn!(lease = %lease.name_any(), %error, "could not remove an expired connection")
                }
            }
        }
    }

    /// How often [`Self::sweep`] runs: half the expiry, between 1 s and 60 s.
    pub fn sweep_interval(&self) -> Duration {
        (self.expiry / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// Why a stream was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlotRefused {
    #[error("{user} already has {limit} session streams open; close one first")]
    User { user: String, limit: usize },
    #[error("this API replica already serves {0} session streams; retry later")]
    Total(usize),
}

#[derive(Debug, Default)]
struct Open {
    per_user: HashMap<String, usize>,
    total: usize,
}

/// Open WebSocket streams per user and in total, each capped.
#[derive(Debug)]
pub struct StreamSlots {
    per_user: usize,
    total: usize,
    open: Mutex<Open>,
}

/// One open stream's place; given back when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    user: String,
}

impl StreamSlots {
    pub fn new(per_user: usize, total: usize) -> Arc<StreamSlots> {
        Arc::new(StreamSlots {
            per_user,
            total,
            open: Mutex::new(Open::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for one more stream of `user`, unless they or the replica are at the cap.
    pub fn acquire(self: &Arc<Self>, user: &str) -> Result<StreamSlot, SlotRefused> {
        let mut open = self.lock();
        if open.total >= self.total {
            return Err(SlotRefused::Total(self.total));
        }
        let mine = open.per_user.get(user).copied().unwrap_or(0);
        if mine >= self.per_user {
            return Err(SlotRefused::User {
                user: user.to_string(),
                limit: self.per_user,
            });
        }
        open.per_user.insert(user.to_string(), mine + 1);
        open.total += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            user: user.to_string(),
        })
    }

    /// Streams open now: (users with one, total).
    pub fn open(&self) -> (usize, usize) {
        let open = self.lock();
        (open.per_user.len(), open.total)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(mine) = open.per_user.get_mut(&self.user) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                open.per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn lease(session: &str, id: &str, acquired: i64, renewed: i64, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(lease_name(session, id)),
                annotations: Some(BTreeMap::from([
                    (SESSION_ANNOTATION.to_string(), session.to_string()),
                    (USER_ANNOTATION.to_string(), "alice".to_string()),
                    (CONNECTION_ANNOTATION.to_string(), id.to_string()),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(id.to_string()),
                acquire_time: Some(MicroTime(at(acquired))),
                renew_time: Some(MicroTime(at(renewed))),
                lease_duration_seconds: Some(seconds),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn connection_ids() {
        for good in [
            "a",
            "tab-1",
            "0f3c2a1b-aaaa-bbbb-cccc-1234567890ab",
            "x.y_z",
        ] {
            assert!(valid_connection_id(good), "{good}");
        }
        let long = "a".repeat(MAX_ID_LEN + 1);
        for bad in ["", "a b", "a/b", "é", long.as_str(), "a\nb"] {
            assert!(!valid_connection_id(bad), "{bad}");
        }
    }

    #[test]
    fn lease_names_are_stable_distinct_and_valid() {
        let name = lease_name("alice-firefox-1", "tab-1");
        assert_eq!(
            name,
            lease_name("alice-firefox-1", "tab-1"),
            "a repeated connect finds it"
        );
        assert_ne!(name, lease_name("alice-firefox-1", "tab-2"));
        assert_ne!(
            name,
            lease_name("alice-firefox-", "1tab-1"),
            "the parts stay apart"
        );
        assert!(crate::api::valid_name(&name) && name.len() <= 63, "{name}");
    }

    #[test]
    fn a_connection_lives_until_its_expiry_after_the_last_heartbeat() {
        let expiry = Duration::from_secs(60);
        assert!(is_live(at(0), expiry, at(59)));
        assert!(!is_live(at(0), expiry, at(60)));
        assert!(
            is_live(at(0), expiry, at(-5)),
            "a clock behind counts it open"
        );
        assert_eq!(expires_at(at(10), expiry), at(70));
    }

    #[test]
    fn a_heartbeat_renews_only_when_the_last_renewal_is_a_quarter_of_the_expiry_old() {
        let ms = |n: i64| at(0) + SignedDuration::from_millis(n);
        let (minute, short) = (Duration::from_secs(60), Duration::from_secs(2));
        #[rustfmt::skip]
        let rows = [
            // (stored, written by this replica, expiry, now, decision, why)
            (ms(0), None, minute, ms(0), Beat::Recent, "just renewed"),
            (ms(0), None, minute, ms(14_999), Beat::Recent, "under 15 s"),
            (ms(0), None, minute, ms(15_000), Beat::Renew, "15 s: a quarter"),
            (ms(0), None, minute, ms(59_999), Beat::Renew, "late but open"),
            (ms(0), None, minute, ms(60_000), Beat::Expired, "at expiry"),
            (ms(0), Some(ms(10_000)), minute, ms(20_000), Beat::Recent, "own write not yet in the cache"),
            (ms(0), Some(ms(10_000)), minute, ms(25_000), Beat::Renew, "own write old too"),
            (ms(0), Some(ms(10_000)), minute, ms(65_000), Beat::Renew, "own write keeps it open"),
            (ms(10_000), Some(ms(0)), minute, ms(20_000), Beat::Recent, "another replica renewed later"),
            (ms(5_000), None, minute, ms(0), Beat::Recent, "clock behind the writer's"),
            (ms(0), None, short, ms(499), Beat::Recent, "2 s expiry: under 500 ms"),
            (ms(0), None, short, ms(500), Beat::Renew, "2 s expiry: 500 ms"),
            (ms(0), None, short, ms(2_000), Beat::Expired, "2 s expiry: gone"),
            (ms(0), None, Duration::ZERO, ms(0), Beat::Expired, "no expiry stored"),
        ];
        for (stored, written, expiry, now, want, why) in rows {
            assert_eq!(on_heartbeat(stored, written, expiry, now), want, "{why}");
        }
        // A client heartbeating more often than the threshold never loses its connection, and
        // costs one write per threshold: simulate 10 minutes at one heartbeat a second.
        let (mut stored, mut writes) = (ms(0), 0);
        for second in 1..=600 {
            match on_heartbeat(stored, None, minute, ms(second * 1_000)) {
                Beat::Renew => (stored, writes) = (ms(second * 1_000), writes + 1),
                Beat::Recent => {}
                Beat::Expired => panic!("expired at {second} s"),
            }
        }
        assert_eq!(writes, 40, "one write per 15 s");
    }

    #[test]
    fn counts_and_lists_take_only_live_connections() {
        let leases = [
            lease("s1", "old", 0, 0, 60),   // expired at 60
            lease("s1", "kept", 0, 50, 60), // renewed: open until 110
            lease("s1", "new", 90, 90, 60),
            lease("s2", "short", 95, 95, 2), // its own expiry: gone at 97
            lease("s2", "other", 99, 99, 60),
        ];
        let mut broken = lease("s3", "x", 0, 100, 60);
        broken.metadata.annotations = None;
        let all: Vec<&Lease> = leases.iter().chain([&broken]).collect();
        let counts = live_counts(all.iter().copied(), at(100));
        assert_eq!(counts, HashMap::from([("s1".into(), 2), ("s2".into(), 1)]));
        let listed = live_of(all.iter().copied(), "s1", at(100));
        let ids: Vec<&str> = listed.iter().map(|c| c.connection_id.as_str()).collect();
        assert_eq!(ids, ["kept", "new"], "oldest first");
        assert_eq!(listed[0].user, "alice");
        assert_eq!(listed[0].expires_at, "2023-11-14T22:15:10.000000Z");
        assert!(live_of(all.iter().copied(), "s1", at(200)).is_empty());
    }

    #[test]
    fn streams_are_capped_per_user_and_in_total() {
        let slots = StreamSlots::new(2, 3);
        let a1 = slots.acquire("alice");
        let a2 = slots.acquire("alice");
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(
            slots.acquire("alice").err(),
            Some(SlotRefused::User {
                user: "alice".into(),
                limit: 2
            })
        );
        let b1 = slots.acquire("bob");
        assert!(b1.is_ok());
        assert_eq!(slots.acquire("carol").err(), Some(SlotRefused::Total(3)));
        drop(a1);
        assert!(
            slots.acquire("alice").is_ok(),
            "a closed stream frees its slot"
        );
        drop((a2, b1));
        assert_eq!(slots.open(), (0, 0), "no entry outlives its streams");
    }
}
