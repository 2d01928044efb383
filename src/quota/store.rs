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

use std::collections::BTreeMap;
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
            let stored = self.read(admission.user).await?;
            let ledger = stored.as_ref().map(|(_, l)| l.clone()).unwrap_or_default();
            let now = Timestamp::now();
            let live: Vec<&Reservation> = ledger.live(now).collect();
            let decision = decide(&admission.limits, &cached(&live, now), &admission.request);
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
                attempt, "quota ledger changed; deciding again"
            );
            backoff(attempt).await;
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
        let Some(object) = self.api.get_opt(&ledger_name(user)).await? else {
            return Ok(None);
        };
        let text = object.data.as_ref().and_then(|d| d.get(LEDGER_KEY));
        let ledger = Ledger::parse(text.map(String::as_str)).unwrap_or_else(|(empty, reason)| {
            warn!(ledger = %object.name_any(), %reason, "quota ledger replaced");
            empty
        });
        Ok(Some((object, ledger)))
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
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error.into()),
        }
    }
}

/// A short pause with jitter after the `attempt`-th conflict, so replicas that collided do not
/// collide again in step.
async fn backoff(attempt: u32) {
    let base = Duration::from_millis(2) * 2u32.saturating_pow(attempt.min(6));
    let jitter = u64::from(Timestamp::now().subsec_nanosecond().unsigned_abs() % 1000);
    tokio::time::sleep(base + base.mul_f64(jitter as f64 / 1000.0)).await;
}
