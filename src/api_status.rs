//! Classifies Kubernetes API errors by their status, for retry decisions and metric labels.

/// 409: someone else wrote first; retrying with fresh data usually succeeds at once.
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_conflict())
}

/// 404: the object (or the resource type) does not exist.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_not_found())
}
