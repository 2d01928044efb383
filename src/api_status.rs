//! Classifies Kubernetes API errors by their status, for retry decisions and metric labels.

/// 409: someone else wrote first; retrying with fresh data usually succeeds at once.
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_conflict())
}

/// 404: the object (or the resource type) does not exist.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_not_found())
}

/// A failed Kubernetes API request and what the failing code was doing. Every reconciler's
/// error enum wraps it the same way (`#[error(transparent)] Api(#[from] KubeFailure)`), so the
/// message, the conflict and not-found tests and the metric label have one definition.
#[derive(Debug, thiserror::Error)]
#[error("Kubernetes API request failed while {action}: {source}")]
pub struct KubeFailure {
    pub action: &'static str,
    #[source]
    pub source: kube::Error,
}

impl KubeFailure {
    pub fn new(action: &'static str, source: kube::Error) -> KubeFailure {
        KubeFailure { action, source }
    }

    /// For `map_err`: `api.get(name).await.map_err(KubeFailure::during("reading it"))?`.
    pub fn during(action: &'static str) -> impl FnOnce(kube::Error) -> KubeFailure {
        move |source| KubeFailure { action, source }
    }

    pub fn is_conflict(&self) -> bool {
        is_conflict(&self.source)
    }

    pub fn is_not_found(&self) -> bool {
        is_not_found(&self.source)
    }

    /// A fixed metric label: `conflict` (409), `not_found` (404) or `api`.
    pub fn metric_label(&self) -> &'static str {
        if self.is_conflict() {
            "conflict"
        } else if self.is_not_found() {
            "not_found"
        } else {
            "api"
        }
    }
}

/// The attempts of a read-decide-write that another writer may refuse as stale (409, or a
/// failed `test` of the resourceVersion): the one conflict-retry rule of the code base.
///
/// Each attempt reads what it needs (the first may reuse what the caller already read),
/// decides, and writes guarded by the `resourceVersion` it read; a stale write is decided again
/// on fresh data, up to `limit` attempts in all. Written as a loop around an `async` block, so
/// an attempt may keep state between tries:
///
/// ```ignore
/// let mut attempts = Attempts::new(5);
/// loop {
///     let result = async { /* read (fresh when attempts.made() > 0), decide, write */ }.await;
///     if let Some(done) = attempts.settle(result, is_stale, give_up) {
///         return done;
///     }
/// }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Attempts {
    limit: u32,
    made: u32,
}

impl Attempts {
    /// At most `limit` attempts (at least one).
    pub fn new(limit: u32) -> Self {
        Attempts {
            limit: limit.max(1),
            made: 0,
        }
    }

    /// Attempts made so far: 0 during the first, which may use data read before.
    pub fn made(&self) -> u32 {
        self.made
    }

    /// After an attempt: `None` when it was stale and another may be made; otherwise the result
    /// to return. The error of a stale last attempt goes through `give_up` (a "kept changing"
    /// error, or the conflict itself).
    pub fn settle<T, E>(
        &mut self,
        result: Result<T, E>,
        is_stale: impl Fn(&E) -> bool,
        give_up: impl FnOnce(E) -> E,
    ) -> Option<Result<T, E>> {
        self.made += 1;
        match result {
            Err(error) if is_stale(&error) => {
                (self.made >= self.limit).then(|| Err(give_up(error)))
            }
            done => Some(done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: u16) -> KubeFailure {
        let reason = match code {
            404 => "NotFound",
            409 => "Conflict",
            _ => "InternalError",
        };
        let status = kube::core::Status::failure("refused", reason).with_code(code);
        KubeFailure::new("writing it", kube::Error::Api(status.boxed()))
    }

    #[test]
    fn a_failure_names_what_it_was_doing_and_labels_by_status() {
        assert_eq!(failure(409).metric_label(), "conflict");
        assert_eq!(failure(404).metric_label(), "not_found");
        assert_eq!(failure(500).metric_label(), "api");
        assert!(failure(409).is_conflict() && !failure(409).is_not_found());
        let message = failure(500).to_string();
        assert!(
            message.starts_with("Kubernetes API request failed while writing it: "),
            "{message}"
        );
    }

    /// Runs attempts that are stale (`true`) or succeed (`false`) in turn: the result and the
    /// number of attempts made.
    fn run(limit: u32, stale: &[bool]) -> (Result<u32, String>, u32) {
        let mut attempts = Attempts::new(limit);
        loop {
            let result = match stale.get(attempts.made() as usize) {
                Some(true) => Err("stale".to_string()),
                Some(false) => Ok(attempts.made()),
                None => Err("other".to_string()),
            };
            let done = attempts.settle(result, |e| e == "stale", |_| "gave up".to_string());
            if let Some(done) = done {
                return (done, attempts.made());
            }
        }
    }

    /// (limit, stale attempts in turn, result, attempts made)
    type Case = (u32, &'static [bool], Result<u32, &'static str>, u32);

    #[test]
    fn retries_only_stale_writes_and_gives_up_after_the_last() {
        let cases: [Case; 6] = [
            (5, &[false], Ok(0), 1),
            (5, &[true, false], Ok(1), 2),
            (5, &[true, true, true, true, false], Ok(4), 5),
            (3, &[true, true, true, false], Err("gave up"), 3),
            // another error ends the attempts at once
            (5, &[true], Err("other"), 2),
            // at least one attempt, whatever the limit
            (0, &[true], Err("gave up"), 1),
        ];
        for (limit, stale, expected, made) in cases {
            let (result, count) = run(limit, stale);
            assert_eq!(result, expected.map_err(str::to_string), "{stale:?}");
            assert_eq!(count, made, "{stale:?}");
        }
    }
}
