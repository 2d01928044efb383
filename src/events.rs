//! Kubernetes Events sent off the reconcile path.
//!
//! An Event is a note for people reading `kubectl describe`, never something a decision waits
//! on, yet publishing one is an API write of its own (tens of milliseconds when the server is
//! busy). A reconcile that awaited it would hold its concurrency slot for that long, and with
//! many sessions starting at once those slots are what other sessions wait for. So reconcilers
//! hand Events to an [`EventQueue`]: a bounded channel drained by one task that publishes a few
//! at a time. When the queue is full the Event is dropped with a warning: a burst never makes a
//! reconcile wait, and never grows memory without bound.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use tokio::sync::mpsc;
use tracing::warn;

/// Events waiting to be published before new ones are dropped.
const QUEUE_CAPACITY: usize = 1024;
/// Events published at the same time.
const IN_FLIGHT: usize = 8;

/// Publishes Events in the background; cheap to clone.
#[derive(Clone)]
pub struct EventQueue {
    sender: mpsc::Sender<(Event, ObjectReference)>,
}

impl EventQueue {
    /// Starts the task that publishes through `recorder`; it ends when every queue handle is
    /// gone, after publishing what is queued.
    pub fn start(recorder: Recorder) -> EventQueue {
        let (sender, receiver) = mpsc::channel::<(Event, ObjectReference)>(QUEUE_CAPACITY);
        let published =
            receiver_stream(receiver).for_each_concurrent(IN_FLIGHT, move |(event, reference)| {
                let recorder = recorder.clone();
                async move {
                    if let Err(error) = recorder.publish(&event, &reference).await {
                        warn!(%error, reason = %event.reason, "could not publish an event");
                    }
                }
            });
        tokio::spawn(published);
        EventQueue { sender }
    }

    /// Queues `event` about `reference`; returns at once.
    pub fn publish(&self, event: Event, reference: ObjectReference) {
        if let Err(error) = self.sender.try_send((event, reference)) {
            let (event, _) = match error {
                mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item) => {
                    item
                }
            };
            warn!(reason = %event.reason, "event queue full; event dropped");
        }
    }
}

/// The receiver as a stream.
fn receiver_stream<T: Send + 'static>(
    receiver: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_waiting() {
        let (sender, mut receiver) = mpsc::channel(1);
        let queue = EventQueue { sender };
        let event = || Event {
            type_: kube::runtime::events::EventType::Normal,
            reason: "Running".into(),
            note: None,
            action: "Reconcile".into(),
            secondary: None,
        };
        queue.publish(event(), ObjectReference::default());
        // The queue holds one: the second returns at once instead of waiting for room.
        queue.publish(event(), ObjectReference::default());
        assert!(receiver.recv().await.is_some());
        assert!(receiver.try_recv().is_err(), "the second was dropped");
    }
}
