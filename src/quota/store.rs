//! Where the reservation ledgers live: one ConfigMap per user in the quota namespace, read and
//! written by every webhook and API replica with optimistic concurrency.
//!
//! An admission reads the user's ledger, decides on it plus the replica's Session cache, and
//! writes the ledger back with the read's `resourceVersion` as a precondition (or creates it).
//! When another replica wrote in between, the write fails with a conflict and the admission is
//! decided again on the fresh ledger; so of two replicas racing for a user's last slot, exactly
//! one gets it. A failure to reach the API server denies (503): the quota fails closed.
//! Within one process, admissions of one user are also serialised (a fixed set of locks by
//! user hash), so they do not conflict with each other.
//!
//! Each process remembers the ledger object it last read or wrote per user, so a reserving
//! admission usually needs one round trip (the guarded write) instead of two: if another
//! replica wrote since, that write fails with a conflict and the next attempt reads. A denial
//! or a dry run is never decided on the remembered copy (a reservation another replica released
//! would deny wrongly); those read.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::ledger::{Ledger, RESERVATION_TTL, Reservation, SessionKey};
use super::{Decision, Limits, Request, Usage, decide};

/// Data key of the ledger in its ConfigMap.
pub const LEDGER_KEY: &str = "reservations";
/// Label every ledger ConfigMap carries (to list or clean them up).
pub const LEDGER_LABEL: &str = "stream.space/quota-ledger";
/// Annotation naming the user a ledger belongs to (the object name is a hash).
pub const USER_ANNOTATION: &str = "stream.space/quota-user";
/// Attempts at a ledger write that keeps conflicting before answering 503.
const MAX_ATTEMPTS: u32 = 10;
/// Independent locks; admissions of users that share one are serialised in this process.
const LOCKS: usize = 64;
/// Most ledger objects remembered at once; beyond it the memory starts over (it only saves
/// reads).
const REMEMBERED: usize = 4096;

/// Why a ledger operation did not complete; every case denies the admission.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("quota ledger unavailable: {0}")]
    Kube(#[from] kube::Error),
    #[error("quota ledger kept changing during {MAX_ATTEMPTS} attempts; retry shortly")]
    Busy,
    #[error("too many admissions in flight for this user; retry shortly")]
    Full,
}

impl LedgerError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            LedgerError::Kube(_) => "kube",
            LedgerError::Busy => "busy",
            LedgerError::Full => "full",
        }
    }
}

/// One admission to decide (and, unless `reserve` is false, to record).
#[derive(Clone, Debug)]
pub struct Admission<'a> {
    pub user: &'a str,
    pub key: &'a SessionKey,
    /// The Session's uid, when known.
    pub uid: Option<String>,
    /// The generation the Session has once the admitted write is stored.
    pub generation: i64,
    pub request: Request,
    pub limits: Limits,
    /// False for a dry run: decide on the same data, record nothing.
    pub reserve: bool,
}

/// The ledgers of one namespace.
pub struct LedgerStore {
    api: Api<ConfigMap>,
    locks: Vec<Mutex<()>>,
    remembered: Remembered,
}

/// Name of `user`'s ledger: a hash, because user names need not be valid object names.
pub fn ledger_name(user: &str) -> String {
    let digest = Sha256::digest(user.as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("streamspace-quota-{hex}")
}

impl LedgerStore {
    pub fn new(client: Client, namespace: &str) -> LedgerStore {
        LedgerStore {
            api: Api::namespaced(client, namespace),
            locks: (0..LOCKS).map(|_| Mutex::new(())).collect(),
            remembered: Remembered::default(),
        }
    }

    fn lock(&self, user: &str) -> &Mutex<()> {
        let digest = Sha256::digest(user.as_bytes());
        &self.locks[usize::from(digest[0]) % LOCKS]
    }

    /// Decides `admission` on the user's ledger and the usage `cached` computes from the
    /// live reservations (see [`super::ledger::usage`]); when allowed, records the reservation
    /// in the same guarded write.
    pub async fn admit(
        &self,
        admission: Admission<'_>,
        cached: impl Fn(&[&Reservation], Timestamp) -> Usage,
    ) -> Result<Decision, LedgerError> {
        let _serialised = self.lock(admission.user).lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            let remembered = match attempt {
                0 if admission.reserve => self.remembered.get(admission.user),
                _ => None,
            };
            let from_memory = remembered.is_some();
            let stored = match remembered {
                Some(object) => Some(parse(object)),
                None => self.read(admission.user).await?,
            };
            let ledger = stored.as_ref().map(|(_, l)| l.clone()).unwrap_or_default();
            let now = Timestamp::now();
            let live: Vec<&Reservation> = ledger.live(now).collect();
            let decision = decide(&admission.limits, &cached(&live, now), &admission.request);
            if decision != Decision::Allowed && from_memory {
                continue;
            }
            if decision != Decision::Allowed || !admission.reserve {
                return Ok(decision);
            }
            let expires = now.checked_add(RESERVATION_TTL).unwrap_or(Timestamp::MAX);
            let reservation = Reservation::new(
                admission.key,
                admission.uid.clone(),
                admission.generation,
                &admission.request,
                expires,
            );
            let next = ledger.reserve(reservation, now).ok_or(LedgerError::Full)?;
            let object = stored.map(|(object, _)| object);
            if self.write(admission.user, object, &next).await? {
                return Ok(decision);
            }
            debug!(
                user = admission.user,
                attempt, from_memory, "quota ledger changed; deciding again"
            );
            if !from_memory {
                backoff(attempt).await;
            }
        }
        Err(LedgerError::Busy)
    }

    /// Removes `key`'s reservation (an admitted move to running that did not happen). Best
    /// effort: a reservation left behind stops counting when it expires.
    pub async fn release(&self, user: &str, key: &SessionKey) {
        let _serialised = self.lock(user).lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            let result = async {
                let Some((object, ledger)) = self.read(user).await? else {
                    return Ok(true);
                };
                if !ledger.reservations.iter().any(|r| r.is_for(key)) {
                    return Ok(true);
                }
                let next = ledger.without(key, Timestamp::now());
                self.write(user, Some(object), &next).await
            }
            .await;
            match result {
                Ok(true) => return,
                Ok(false) => backoff(attempt).await,
                Err(error) => {
                    let error: LedgerError = error;
                    warn!(user, session = %key.name, %error, "quota reservation not released; it expires on its own");
                    return;
                }
            }
        }
    }

    /// The user's live reservations now (for reports; deciding goes through [`Self::admit`]).
    pub async fn live_reservations(&self, user: &str) -> Result<Vec<Reservation>, LedgerError> {
        let now = Timestamp::now();
        Ok(self
            .read(user)
            .await?
            .map(|(_, ledger)| ledger.live(now).cloned().collect())
            .unwrap_or_default())
    }

    /// The user's ledger object and its content; `None` when there is none yet.
    async fn read(&self, user: &str) -> Result<Option<(ConfigMap, Ledger)>, LedgerError> {
        let name = ledger_name(user);
        let Some(object) = self.api.get_opt(&name).await? else {
            self.remembered.forget(user);
            return Ok(None);
        };
        self.remembered.keep(user, &object);
        Ok(Some(parse(object)))
    }

    /// Writes `ledger` guarded by `read`'s resourceVersion (or creates the object); `false`
    /// when someone else wrote first.
    async fn write(
        &self,
        user: &str,
        read: Option<ConfigMap>,
        ledger: &Ledger,
    ) -> Result<bool, LedgerError> {
        let data = BTreeMap::from([(LEDGER_KEY.to_string(), ledger.to_text())]);
        let params = PostParams {
            field_manager: Some(crate::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let result = match read {
            Some(mut object) => {
                object.data = Some(data);
                self.api.replace(&object.name_any(), &params, &object).await
            }
            None => {
                let object = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(ledger_name(user)),
                        labels: Some(BTreeMap::from([(LEDGER_LABEL.into(), "true".into())])),
                        annotations: Some(BTreeMap::from([(
                            USER_ANNOTATION.into(),
                            user.to_string(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    data: Some(data),
                    ..ConfigMap::default()
                };
                self.api.create(&params, &object).await
            }
        };
        match result {
            Ok(stored) => {
                self.remembered.keep(user, &stored);
                Ok(true)
            }
            // Someone wrote first, or deleted the ledger (a clean-up) since it was read.
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
                self.remembered.forget(user);
                Ok(false)
            }
            Err(error) => {
                self.remembered.forget(user);
                Err(error.into())
            }
        }
    }
}

/// A ledger object and its content; an unreadable ledger is reported and read as empty (the
/// next admission rewrites it).
fn parse(object: ConfigMap) -> (ConfigMap, Ledger) {
    let text = object.data.as_ref().and_then(|d| d.get(LEDGER_KEY));
    let ledger = Ledger::parse(text.map(String::as_str)).unwrap_or_else(|(empty, reason)| {
        warn!(ledger = %object.name_any(), %reason, "quota ledger replaced");
        empty
    });
    (object, ledger)
}

/// The ledger objects this process last read or wrote, by user: what a reserving admission
/// starts from instead of a read.
#[derive(Default)]
struct Remembered(std::sync::Mutex<HashMap<String, ConfigMap>>);

impl Remembered {
    fn get(&self, user: &str) -> Option<ConfigMap> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .cloned()
    }

    fn keep(&self, user: &str, object: &ConfigMap) {
        let mut object = object.clone();
        object.metadata.managed_fields = None;
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= REMEMBERED && !map.contains_key(user) {
            map.clear();
        }
        map.insert(user.to_string(), object);
    }

    fn forget(&self, user: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
    }
}

/// A short pause with jitter after the `attempt`-th conflict, so replicas that collided do not
/// collide again in step.
async fn backoff(attempt: u32) {
    let base = Duration::from_millis(2) * 2u32.saturating_pow(attempt.min(6));
    let jitter = u64::from(Timestamp::now().subsec_nanosecond().unsigned_abs() % 1000);
    tokio::time::sleep(base + base.mul_f64(jitter as f64 / 1000.0)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                resource_version: Some(version.into()),
                managed_fields: Some(Vec::new()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    #[test]
    fn keeps_the_last_copy_per_user_forgets_and_stays_bounded() {
        let remembered = Remembered::default();
        assert!(remembered.get("alice").is_none());
        remembered.keep("alice", &object("1"));
        remembered.keep("alice", &object("2"));
        let kept = remembered.get("alice").expect("kept");
        assert_eq!(kept.metadata.resource_version.as_deref(), Some("2"));
        assert!(
            kept.metadata.managed_fields.is_none(),
            "bookkeeping is not kept"
        );
        remembered.forget("alice");
        assert!(remembered.get("alice").is_none());
        for n in 0..REMEMBERED + 10 {
            remembered.keep(&format!("user-{n}"), &object("1"));
        }
        let size = remembered.0.lock().map(|m| m.len()).unwrap_or(usize::MAX);
        assert!(size <= REMEMBERED, "{size}");
    }
}
