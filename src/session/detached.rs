//! Service writes a session reconcile starts but does not wait for.
//!
//! Creating a Service waits for the API server to allocate its cluster IP, which Kubernetes
//! 1.20 does through one shared allocation record: with many sessions starting at once each
//! create waits hundreds of milliseconds behind the others. Nothing else of the session needs
//! the Service to exist, but a reconcile that awaited it would hold its concurrency slot all
//! that time, and the next session's first reconcile (the one that creates its Deployment)
//! would wait for the slot. So the reconcile starts the write and goes on:
//! - the Service's write log marks the write in flight, so no reconcile repeats it meanwhile;
//! - the Service's watch event reconciles the session again once it lands (the session is
//!   `Running` only with its Service in the cache, [`super::state`]);
//! - a failed write is remembered and the session reconciled at once ([`Detached::retries`]);
//!   that reconcile writes the Service inline, with the reconciler's ordinary error handling
//!   and backoff, so a Service that cannot be written never loops here.
//!
//! At most `in_flight` detached writes run at a time; the others wait for a permit in their
//! own task, not in a reconcile slot.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::Stream;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

use crate::crd::Session;
use crate::metrics::SharedMetrics;
use crate::writes::WriteLog;

use super::CONTROLLER;

/// Detached Service writes of the session reconciler.
pub struct Detached {
    permits: Arc<Semaphore>,
    /// Sessions whose last detached write failed: their next write is made inline.
    failed: Mutex<HashSet<String>>,
    retry: mpsc::UnboundedSender<ObjectRef<Session>>,
    retries: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<Session>>>>,
}

/// One Service write to make.
pub struct ServiceWrite {
    pub api: Api<Service>,
    /// Server-side apply under the reconciler's field manager.
    pub params: PatchParams,
    pub namespace: String,
    pub name: String,
    /// What the write log records (the Service's recorded hash).
    pub digest: String,
    /// The apply body, type information included.
    pub body: serde_json::Value,
    pub session: ObjectRef<Session>,
}

impl Detached {
    pub fn new(in_flight: usize) -> Detached {
        let (retry, retries) = mpsc::unbounded_channel();
        Detached {
            permits: Arc::new(Semaphore::new(in_flight.max(1))),
            failed: Mutex::default(),
            retry,
            retries: Mutex::new(Some(retries)),
        }
    }

    fn failed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sessions to reconcile again because their detached write failed; the first caller gets
    /// the stream, later callers an empty one.
    pub fn retries(&self) -> impl Stream<Item = ObjectRef<Session>> + Send + 'static {
        let receiver = self
            .retries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        futures::stream::unfold(receiver, |receiver| async move {
            let mut receiver = receiver?;
            let next = receiver.recv().await?;
            Some((next, Some(receiver)))
        })
    }

    /// True (once) when the last detached write for `session` failed: write inline now.
    pub fn take_failure(&self, session: &ObjectRef<Session>) -> bool {
        self.failed().remove(&session.to_string())
    }

    /// Starts `write`; the write log `log` marks it in flight until it is made (then it holds
    /// the answered version) or fails (then it is forgotten and the session retried).
    pub fn start(
        self: &Arc<Self>,
        write: ServiceWrite,
        log: Arc<WriteLog>,
        metrics: SharedMetrics,
    ) {
        log.wrote(&write.namespace, &write.name, &write.digest, None);
        let detached = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = detached.permits.clone().acquire_owned().await else {
                return;
            };
            match write
                .api
                .patch(&write.name, &write.params, &Patch::Apply(&write.body))
                .await
            {
                Ok(applied) => log.wrote(
                    &write.namespace,
                    &write.name,
                    &write.digest,
                    kube::ResourceExt::resource_version(&applied),
                ),
                Err(error) => {
                    log.forget(&write.namespace, &write.name);
                    metrics
                        .reconcilers
                        .failure(CONTROLLER, "detached_service_write");
                    warn!(session = %write.session, %error, "could not write the session's service; retrying inline");
                    detached.failed().insert(write.session.to_string());
                    let _ = detached.retry.send(write.session);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn a_failed_write_is_forgotten_remembered_and_retried_once() {
        // An API server nothing listens on: the write fails at once.
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        let detached = Arc::new(Detached::new(2));
        let mut retries = std::pin::pin!(detached.retries());
        let session = ObjectRef::<Session>::new("s1").within("ns");
        let log = Arc::new(WriteLog::default());
        let write = ServiceWrite {
            api: Api::namespaced(client, "ns"),
            params: PatchParams::apply("test").force(),
            namespace: "ns".into(),
            name: "ss-s1".into(),
            digest: "d1".into(),
            body: serde_json::json!({"apiVersion": "v1", "kind": "Service"}),
            session: session.clone(),
        };
        assert!(!detached.take_failure(&session), "nothing failed yet");
        detached.start(write, log.clone(), Arc::default());
        assert!(
            log.pending("ns", "ss-s1", "d1", None),
            "in flight: not written twice"
        );

        let retried = tokio::time::timeout(std::time::Duration::from_secs(30), retries.next())
            .await
            .expect("a retry in time");
        assert_eq!(retried, Some(session.clone()));
        assert!(
            !log.pending("ns", "ss-s1", "d1", None),
            "the failed write is forgotten"
        );
        assert!(detached.take_failure(&session), "the next write is inline");
        assert!(!detached.take_failure(&session), "only once");
        let mut second = std::pin::pin!(detached.retries());
        assert_eq!(second.next().await, None, "one consumer of the retries");
    }
}
