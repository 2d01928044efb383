//! What the node operation reconciler shares besides the common context: its cache of
//! operations, the policy API versions, the eviction client, and the wake-up channel through
//! which a finishing operation starts the next one of the same node at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc::UnboundedSender;

use super::policy::PolicyApi;
use super::state::Sibling;
use crate::crd::NodeOperation;
use crate::crd::node_operation::NodeOperationPhase;

/// At most one "eviction blocked" Event per pod and operation in this interval.
const BLOCKED_EVENT_INTERVAL: Duration = Duration::from_secs(60);

/// What the node operation reconciler shares besides the common [`crate::context::Context`].
pub struct NodeOpShared {
    /// Every NodeOperation this controller handles (the controller's own cache).
    pub store: Store<NodeOperation>,
    pub policy: PolicyApi,
    /// A client that does not retry HTTP 429 by itself.
    pub eviction_client: Client,
    /// When an "eviction blocked" Event was last published, by operation and pod.
    blocked_events: Mutex<HashMap<String, Instant>>,
    /// Asks the controller to reconcile an operation now (see [`NodeOpShared::wake_siblings`]).
    wake: UnboundedSender<ObjectRef<NodeOperation>>,
}

impl NodeOpShared {
    /// The shared state, and the stream of operations to reconcile at once, for
    /// `Controller::reconcile_on`.
    pub fn new(
        store: Store<NodeOperation>,
        policy: PolicyApi,
        eviction_client: Client,
    ) -> (
        Self,
        impl futures::Stream<Item = ObjectRef<NodeOperation>> + Send + 'static,
    ) {
        let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
        let shared = NodeOpShared {
            store,
            policy,
            eviction_client,
            blocked_events: Mutex::default(),
            wake,
        };
        let woken = futures::stream::unfold(woken, |mut rx| async move {
            rx.recv().await.map(|next| (next, rx))
        });
        (shared, woken)
    }

    /// Wakes the unfinished operations of the node when this one finished or goes, so a
    /// waiting operation starts at once instead of at its next periodic check.
    pub(crate) fn wake_siblings(&self, op: &NodeOperation) {
        let waiting = self.store.state().into_iter().filter(|o| {
            o.spec.node_name == op.spec.node_name
                && o.name_any() != op.name_any()
                && !sibling(o).finished
        });
        for other in waiting {
            // The receiver only goes away with the controller.
            let _ = self.wake.send(ObjectRef::from_obj(other.as_ref()));
        }
    }

    /// Whether an Event about this blocked pod may be published now (and notes that it is).
    pub(crate) fn blocked_event_due(&self, key: String) -> bool {
        let mut last = self
            .blocked_events
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        last.retain(|_, at| now.duration_since(*at) < BLOCKED_EVENT_INTERVAL);
        if last.contains_key(&key) {
            return false;
        }
        last.insert(key, now);
        true
    }
}

/// The other operations of the same node, from the cache.
pub fn siblings(store: &Store<NodeOperation>, op: &NodeOperation) -> Vec<Sibling> {
    store
        .state()
        .iter()
        .filter(|o| o.spec.node_name == op.spec.node_name && o.name_any() != op.name_any())
        .map(|o| sibling(o))
        .collect()
}

fn sibling(op: &NodeOperation) -> Sibling {
    let status = op.status.as_ref();
    Sibling {
        name: op.name_any(),
        created: op.meta().creation_timestamp.as_ref().map(|t| t.0),
        finished: status
            .and_then(|s| s.phase.as_ref())
            .is_some_and(NodeOperationPhase::is_finished),
        deleting: op.meta().deletion_timestamp.is_some(),
        cordons: op.spec.cordons(),
    }
}
