//! Everything a push hook passes before it may request a sync, without one Kubernetes API
//! call: the path's names are DNS labels; the GitSync's shared secret is read from memory
//! ([`HookKeys`], filled by the GitSync reconciler when it syncs, never by a request); the
//! signature is verified; a verified delivery is remembered for [`REPLAY_WINDOW`] so the same
//! request sent again is refused; and each GitSync takes at most [`RATE_BURST`] requests at
//! once, then one per [`RATE_REFILL`].
//!
//! "No such GitSync", "no webhook secret" and "bad signature" get the same 401, so the hook
//! does not tell an unauthenticated caller which GitSyncs exist. The refusals after
//! verification (replay, rate) can tell more, since the caller proved it holds the secret.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use super::signature::{Forge, SignatureError, verify};

/// How long a verified delivery is remembered.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(3600);
/// Deliveries remembered at most (the oldest are forgotten first).
pub const REPLAY_CAPACITY: usize = 10_000;
/// Requests one GitSync may take at once.
pub const RATE_BURST: u32 = 10;
/// One more request is allowed per this interval.
pub const RATE_REFILL: Duration = Duration::from_secs(6);
/// Headers naming a delivery: GitHub, Gitea/Forgejo, GitLab.
const DELIVERY_HEADERS: &[&str] = &[
    "x-github-delivery",
    "x-gitea-delivery",
    "x-gitlab-event-uuid",
];

/// Whether `name` is an RFC 1123 label (what namespaces and, here, GitSync names must be).
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

type SyncKey = (String, String);

/// The shared secrets of the GitSyncs that have one, by `(namespace, name)`.
#[derive(Clone, Default)]
pub struct HookKeys(Arc<RwLock<HashMap<SyncKey, Vec<u8>>>>);

impl std::fmt::Debug for HookKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookKeys(<redacted>)")
    }
}

impl HookKeys {
    /// Records (`Some`) or forgets (`None`) the secret of a GitSync.
    pub fn set(&self, namespace: &str, name: &str, secret: Option<Vec<u8>>) {
        let mut keys = self.0.write().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), name.to_string());
        match secret.filter(|s| !s.is_empty()) {
            Some(secret) => keys.insert(key, secret),
            None => keys.remove(&key),
        };
    }

    /// Forgets the secrets of every GitSync `keep` refuses (for example the ones deleted).
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut keys = self.0.write().unwrap_or_else(|e| e.into_inner());
        keys.retain(|(namespace, name), _| keep(namespace, name));
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Vec<u8>> {
        let keys = self.0.read().unwrap_or_else(|e| e.into_inner());
        keys.get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.0.read().map(|k| k.len()).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Verified deliveries seen within the window, oldest first.
#[derive(Default)]
struct Replays {
    order: VecDeque<(Instant, String)>,
    seen: HashSet<String>,
}

impl Replays {
    /// Forgets what left the window (and the oldest, to make room for `room` more); true when
    /// one of `ids` is still remembered.
    fn seen(&mut self, ids: &[String], room: usize, now: Instant) -> bool {
        while let Some((at, id)) = self.order.front() {
            let fits = self.order.len() + room <= REPLAY_CAPACITY;
            if now.duration_since(*at) < REPLAY_WINDOW && fits {
                break;
            }
            self.seen.remove(id);
            self.order.pop_front();
        }
        ids.iter().any(|id| self.seen.contains(id))
    }

    fn record(&mut self, ids: &[String], now: Instant) {
        for id in ids {
            if self.seen.insert(id.clone()) {
                self.order.push_back((now, id.clone()));
            }
        }
    }

    /// Records `ids`; false when one of them was seen within the window.
    #[cfg(test)]
    fn first_time(&mut self, ids: &[String], now: Instant) -> bool {
        if self.seen(ids, ids.len(), now) {
            return false;
        }
        self.record(ids, now);
        true
    }
}

/// A token bucket per GitSync: `(tokens, last refill)`.
#[derive(Default)]
struct Rates(HashMap<SyncKey, (u32, Instant)>);

impl Rates {
    fn take(&mut self, key: &SyncKey, now: Instant) -> bool {
        let (tokens, since) = self.0.entry(key.clone()).or_insert((RATE_BURST, now));
        let refills = now.duration_since(*since).as_secs() / RATE_REFILL.as_secs().max(1);
        if refills > 0 {
            *tokens = (*tokens).saturating_add(u32::try_from(refills).unwrap_or(u32::MAX));
            *tokens = (*tokens).min(RATE_BURST);
            *since = now;
        }
        if *tokens == 0 {
            return false;
        }
        *tokens -= 1;
        true
    }
}

/// Why a hook request is refused: the answer and the metric reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Bad names, no such GitSync, no secret, or a wrong signature: one answer for all.
    Unauthorized(&'static str),
    Replayed,
    RateLimited,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refusal::Replayed => StatusCode::CONFLICT,
            Refusal::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Unauthorized(_) => "unauthorized\n",
            Refusal::Replayed => "this delivery was already received\n",
            Refusal::RateLimited => "too many sync requests for this GitSync; retry later\n",
        }
    }

    pub fn metric_label(self) -> &'static str {
        match self {
            Refusal::Unauthorized(reason) => reason,
            Refusal::Replayed => "replayed",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// The checks of every hook request, shared by the hook listener and the reconciler.
#[derive(Clone, Default)]
pub struct HookGuard {
    pub keys: HookKeys,
    replays: Arc<Mutex<Replays>>,
    rates: Arc<Mutex<Rates>>,
}

impl std::fmt::Debug for HookGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookGuard")
    }
}

impl HookGuard {
    /// Decides one request; `Ok` means it is authentic, new and within the rate.
    pub fn check(
        &self,
        namespace: &str,
        name: &str,
        headers: &HeaderMap,
        body: &[u8],
        now: Instant,
    ) -> Result<Forge, Refusal> {
        if !is_dns_label(namespace) || !is_dns_label(name) {
            return Err(Refusal::Unauthorized("bad_name"));
        }
        let Some(secret) = self.keys.get(namespace, name) else {
            return Err(Refusal::Unauthorized("unknown"));
        };
        let forge = verify(headers, body, &secret)
            .map_err(|e: SignatureError| Refusal::Unauthorized(e.metric_label()))?;
        let mut ids: Vec<String> = DELIVERY_HEADERS
            .iter()
            .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
            .map(|id| format!("{namespace}/{name}/delivery/{id}"))
            .collect();
        let digest = Sha256::digest(body);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        ids.push(format!("{namespace}/{name}/body/{hex}"));
        let mut replays = self.replays.lock().unwrap_or_else(|e| e.into_inner());
        if replays.seen(&ids, ids.len(), now) {
            return Err(Refusal::Replayed);
        }
        // The rate is taken before the delivery is recorded, so a refused request can be sent
        // again later, and replays do not use up the rate of genuine deliveries.
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        if !rates.take(&(namespace.to_string(), name.to_string()), now) {
            return Err(Refusal::RateLimited);
        }
        replays.record(&ids, now);
        Ok(forge)
    }

    /// Forgets a deleted GitSync's secret and rate.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.keys.set(namespace, name, None);
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        rates.0.remove(&(namespace.to_string(), name.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, KeyInit, Mac};

    use super::*;

    fn signed(secret: &[u8], body: &[u8], delivery: Option<&str>) -> HeaderMap {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-hub-signature-256",
            format!("sha256={hex}")
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        if let Some(id) = delivery {
            headers.insert(
                "x-github-delivery",
                id.parse().unwrap_or_else(|_| unreachable!()),
            );
        }
        headers
    }

    #[test]
    fn dns_labels() {
        let cases = [
            ("a", true),
            ("gitops-1", true),
            (&"a".repeat(63), true),
            (&"a".repeat(64), false),
            ("", false),
            ("-a", false),
            ("a-", false),
            ("A", false),
            ("a.b", false),
            ("a/b", false),
            ("..", false),
        ];
        for (name, ok) in cases {
            assert_eq!(is_dns_label(name), ok, "{name}");
        }
    }

    #[test]
    fn one_answer_for_unknown_unconfigured_and_forged() {
        let guard = HookGuard::default();
        guard.keys.set("ns", "sync", Some(b"secret".to_vec()));
        guard.keys.set("ns", "empty", Some(Vec::new()));
        let now = Instant::now();
        let body = b"{}";
        let cases = [
            ("ns", "missing", signed(b"secret", body, None)),
            ("ns", "empty", signed(b"", body, None)),
            ("ns", "sync", signed(b"wrong", body, None)),
            ("ns", "sync", HeaderMap::new()),
            ("NS", "sync", signed(b"secret", body, None)),
            ("ns", "../sync", signed(b"secret", body, None)),
        ];
        for (namespace, name, headers) in cases {
            let refusal = guard
                .check(namespace, name, &headers, body, now)
                .expect_err("refused");
            assert_eq!(
                refusal.status(),
                StatusCode::UNAUTHORIZED,
                "{namespace}/{name}"
            );
            assert_eq!(refusal.message(), "unauthorized\n");
        }
    }

    #[test]
    fn a_delivery_is_accepted_once() {
        let guard = HookGuard::default();
        guard.keys.set("ns", "sync", Some(b"secret".to_vec()));
        let now = Instant::now();
        let first = signed(b"secret", b"push 1", Some("d-1"));
        assert_eq!(
            guard.check("ns", "sync", &first, b"push 1", now),
            Ok(Forge::GitHub)
        );
        assert_eq!(
            guard.check("ns", "sync", &first, b"push 1", now),
            Err(Refusal::Replayed)
        );
        // The same body under a new delivery id is the same request.
        let renamed = signed(b"secret", b"push 1", Some("d-2"));
        assert_eq!(
            guard.check("ns", "sync", &renamed, b"push 1", now),
            Err(Refusal::Replayed)
        );
        let later = now + REPLAY_WINDOW + Duration::from_secs(1);
        assert_eq!(
            guard.check("ns", "sync", &first, b"push 1", later),
            Ok(Forge::GitHub)
        );
    }

    #[test]
    fn the_replay_memory_is_bounded() {
        let mut replays = Replays::default();
        let now = Instant::now();
        for i in 0..REPLAY_CAPACITY + 50 {
            assert!(replays.first_time(&[format!("id-{i}")], now));
        }
        assert!(replays.order.len() <= REPLAY_CAPACITY);
        assert_eq!(replays.seen.len(), replays.order.len());
    }

    #[test]
    fn the_rate_refills_over_time() {
        let mut rates = Rates::default();
        let key = ("ns".to_string(), "sync".to_string());
        let now = Instant::now();
        for _ in 0..RATE_BURST {
            assert!(rates.take(&key, now));
        }
        assert!(!rates.take(&key, now));
        assert!(rates.take(&key, now + RATE_REFILL));
        assert!(!rates.take(&key, now + RATE_REFILL));
        let other = ("ns".to_string(), "other".to_string());
        assert!(rates.take(&other, now));
    }
}
