//! Every flag change is recorded as its own Kubernetes Event: who, what and why.
//!
//! Written directly rather than through kube's `Recorder`, which folds events with the same
//! reason on the same object into one series and keeps only the first note; an audit record
//! must keep each note.

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client, Resource, ResourceExt};

use crate::crd::FeatureFlag;

/// Events of cluster-scoped objects live here (Kubernetes 1.20 insists that the reference
/// names the event's namespace too).
const EVENT_NAMESPACE: &str = "default";
/// The API server refuses longer notes.
const MAX_NOTE: usize = 1024;

/// Records `reason` with `note` on `flag`, as reported by `reporter` (the component name).
pub async fn record(
    client: &Client,
    flag: &FeatureFlag,
    reporter: &str,
    reason: &str,
    note: &str,
) -> Result<(), kube::Error> {
    let now = Timestamp::now();
    let mut regarding = flag.object_ref(&());
    regarding.namespace = Some(EVENT_NAMESPACE.into());
    let instance = std::env::var("POD_NAME").unwrap_or_else(|_| reporter.to_string());
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", flag.name_any(), now.as_nanosecond())),
            namespace: Some(EVENT_NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        action: Some("Ownership".into()),
        reason: Some(reason.into()),
        note: Some(truncate(note, MAX_NOTE).to_string()),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding),
        reporting_controller: Some(reporter.into()),
        reporting_instance: Some(instance),
        type_: Some("Normal".into()),
        ..Event::default()
    };
    Api::<Event>::namespaced(client.clone(), EVENT_NAMESPACE)
        .create(&PostParams::default(), &event)
        .await
        .map(|_| ())
}

/// The longest prefix of `text` within `max` bytes, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_at_character_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}
