//! Quota checked by the API itself, for sessions whose `quota` owner is legacy: the webhook's
//! decision and ledger ([`crate::quota`]) fed from the API's QuotaPolicy and Session
//! watch caches, so both give the same answer with the same message, and API replicas (and
//! webhook replicas, when the ledger namespace is the same) never admit over a limit together.
//!
//! Checked on every move to running the API makes: create, `PATCH {state: running}` and the
//! connect auto-start. A move that then fails releases its reservation.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kube::Client;

use super::{Result, SessionsError};
use crate::api::ApiState;
use crate::crd::{Session, SessionState};
use crate::ownership::{ResourceType, Side};
use crate::quota::ledger::{self, SessionKey};
use crate::quota::store::{Admission, LedgerStore};
use crate::quota::{Decision, Request};

/// How long a quota check waits for the caches after start-up.
const CACHE_WAIT: Duration = Duration::from_secs(5);

/// The ledgers of the API's namespace.
pub(crate) struct LegacyQuota {
    ledger: LedgerStore,
}

impl LegacyQuota {
    pub(crate) fn new(client: &Client, namespace: &str) -> LegacyQuota {
        LegacyQuota {
            ledger: LedgerStore::new(client.clone(), namespace),
        }
    }
}

impl LegacyQuota {
    /// The live reservations of `user`'s ledger.
    pub(crate) async fn live_reservations(
        &self,
        user: &str,
    ) -> std::result::Result<Vec<ledger::Reservation>, crate::quota::store::LedgerError> {
        self.ledger.live_reservations(user).await
    }
}

/// A move to running the API is about to write.
pub(crate) struct Move<'a> {
    pub user: &'a str,
    pub name: &'a str,
    /// The Session's uid, `None` for a create.
    pub uid: Option<String>,
    /// The generation the Session has once the move is written.
    pub generation: i64,
    pub request: Request,
}

impl<'a> Move<'a> {
    /// Waking `session`: its own requests, one generation on.
    pub(crate) fn wake(session: &'a Session) -> Result<Move<'a>> {
        let request = Request::of(session.spec.resources.as_ref())
            .map_err(|message| SessionsError::QuotaExceeded(message.to_string()))?;
        Ok(Move {
            user: &session.spec.user,
            name: session.metadata.name.as_deref().unwrap_or_default(),
            uid: session.metadata.uid.clone(),
            generation: session.metadata.generation.unwrap_or(0) + 1,
            request,
        })
    }
}

/// Whether the API (not the webhook) checks the quota of session `name`.
pub(crate) fn by_api(state: &ApiState, name: &str) -> bool {
    state
        .flags()
        .owner(ResourceType::Quota, &state.namespace, name)
        .acting_side()
        == Side::Legacy
}

/// Admits the move and reserves its slot, or answers 403 with the quota message (503 when
/// the caches or the ledger cannot be read).
pub(crate) async fn admit(state: &ApiState, wanted: &Move<'_>) -> Result<()> {
    let shared = &state.session_api;
    let deadline = Instant::now() + CACHE_WAIT;
    while !(shared.policies_loaded.load(Ordering::Relaxed)
        && state.sessions_loaded.load(Ordering::Relaxed))
    {
        if Instant::now() > deadline {
            return Err(SessionsError::Unavailable(
                "quota caches are still loading; retry shortly".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = SessionKey::new(&state.namespace, wanted.name);
    let admission = Admission {
        user: wanted.user,
        key: &key,
        uid: wanted.uid.clone(),
        generation: wanted.generation,
        request: wanted.request,
        limits: shared.limits_for(wanted.user),
        reserve: true,
    };
    let decided = shared
        .quota
        .ledger
        .admit(admission, |reservations, now| {
            let sessions = state.sessions.state();
            let sessions = sessions.iter().map(AsRef::as_ref);
            ledger::cached_usage(wanted.user, &key, sessions, reservations, now)
        })
        .await;
    match decided {
        Ok(Decision::Allowed) => Ok(()),
        Ok(Decision::Denied { message }) => Err(SessionsError::QuotaExceeded(message)),
        Err(error) => Err(SessionsError::Unavailable(error.to_string())),
    }
}

/// Frees the slot of a move that did not happen.
pub(crate) async fn release(state: &ApiState, user: &str, name: &str) {
    let key = SessionKey::new(&state.namespace, name);
    state.session_api.quota.ledger.release(user, &key).await;
}

/// Admits `session` moving to running when the API checks its quota and it is not running
/// yet; `Ok(true)` when a slot was reserved (release it if the move then fails).
pub(crate) async fn admit_wake(state: &ApiState, session: &Session) -> Result<bool> {
    let name = session.metadata.name.as_deref().unwrap_or_default();
    if session.spec.desired_state() == SessionState::Running || !by_api(state, name) {
        return Ok(false);
    }
    admit(state, &Move::wake(session)?).await?;
    Ok(true)
}
