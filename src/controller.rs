//! Wiring of the controller process's work: build the shared caches, build the contexts, and
//! start the reconcilers (on the leader only, when leader election is on), every task under
//! the process's [`Supervisor`].
//!
//! The reconcilers depend on [`crate::context`] and [`crate::caches`], never on this module.

use std::sync::Arc;

use futures::{Future, FutureExt, StreamExt, future};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tracing::info;

use crate::backoff::FailureBackoff;
use crate::caches::Caches;
pub use crate::context::{Config, Context, FIELD_MANAGER, NodeOperationSettings, Readiness};
use crate::crd::{NodeOperation, Session, Template};
use crate::idle::reconciler as idle_reconciler;
use crate::idle::wake::Waker;
use crate::metrics::SharedMetrics;
use crate::nodeop::reconciler as nodeop_reconciler;
use crate::nodeop::shared::NodeOpShared;
use crate::ownership::ResourceType;
use crate::ownership::index::FlagIndex;
use crate::ownership::shadow::ShadowReports;
use crate::session::reconciler as session_reconciler;
use crate::supervisor::{Supervisor, SupervisorError, SupervisorHandle};
use crate::template::reconciler as template_reconciler;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the {0} CRD is not served by the cluster ({1}); install it with `streamspace-controller crds | kubectl apply -f -`"
    )]
    CrdMissing(&'static str, #[source] kube::Error),
    #[error("could not discover the policy API versions (Eviction, PodDisruptionBudget): {0}")]
    PolicyDiscovery(#[source] kube::Error),
    #[error("could not build the eviction client: {0}")]
    EvictionClient(#[source] kube::Error),
    #[error(transparent)]
    Leader(#[from] crate::leader::LeaderError),
    #[error(transparent)]
    Task(#[from] SupervisorError),
}

/// Fails early, with the fix in the message, when a CRD this controller needs is not served.
pub async fn check_crds(client: &Client) -> Result<(), StartError> {
    let probe = ListParams::default().limit(1);
    Api::<Session>::all(client.clone())
        .list(&probe)
        .await
        .map_err(|e| StartError::CrdMissing("sessions.stream.space", e))?;
    Api::<Template>::all(client.clone())
        .list(&probe)
        .await
        .map_err(|e| StartError::CrdMissing("templates.stream.space", e))?;
    Api::<crate::crd::GitSync>::all(client.clone())
        .list(&probe)
        .await
        .map_err(|e| StartError::CrdMissing("gitsyncs.stream.space", e))?;
    Api::<crate::crd::FeatureFlag>::all(client.clone())
        .list(&probe)
        .await
        .map_err(|e| StartError::CrdMissing("featureflags.stream.space", e))?;
    Ok(())
}

/// Runs the controller until `shutdown` resolves, under a supervisor of its own (for `dev` and
/// tests; the `controller` process shares one supervisor with its servers through [`start`]).
pub async fn run(
    client: Client,
    config: Config,
    metrics: SharedMetrics,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    let supervisor = Supervisor::new();
    start(&supervisor.handle(), client, config, metrics, readiness).await?;
    supervisor.run(shutdown).await?;
    info!("controller stopped");
    Ok(())
}

/// Starts the controller's tasks under `supervisor` and returns its caches (the admission
/// webhooks of the same process read them too). Caches load on every replica; the reconcilers
/// start once they have, on the leader only when `config.leader_election` is set.
pub async fn start(
    supervisor: &SupervisorHandle,
    client: Client,
    config: Config,
    metrics: SharedMetrics,
    readiness: Readiness,
) -> Result<Caches, StartError> {
    check_crds(&client).await?;
    if let Some(settings) = &config.leader_election {
        settings.validate()?;
    }
    let caches = Caches::start(&client, config.namespace.as_deref(), supervisor);
    let flags = config.flags.clone();
    let flag_cache = caches.flags.clone();
    // Ends at once when another component of the process already feeds the index.
    supervisor.spawn_once("feature flag index", async move {
        flags.follow(flag_cache).await;
        Ok(())
    });
    let (ctx, nodeop_controller) = build_context(&client, &config, &metrics, &caches).await?;
    spawn_readiness(supervisor, &caches, &config.flags, readiness);
    info!(
        namespace = config.namespace.as_deref().unwrap_or("<all>"),
        "controller started"
    );
    let reconcilers = Reconcilers {
        ctx,
        caches: caches.clone(),
        nodeops: nodeop_controller,
        supervisor: supervisor.clone(),
    };
    match config.leader_election.clone() {
        None => {
            metrics.process.leader.set(1);
            supervisor.spawn_once("reconcilers", async move {
                reconcilers.start().await;
                Ok(())
            });
        }
        Some(settings) => supervisor.spawn_graceful(
            "leader election",
            lead(client, settings, metrics, reconcilers),
        ),
    }
    Ok(caches)
}

/// Campaigns for the lease, starts the reconcilers once elected, and guards the lease: losing
/// it fails this task (and so the process); on shutdown the lease is released after the
/// reconcilers have stopped.
async fn lead(
    client: Client,
    settings: crate::leader::LeaderSettings,
    metrics: SharedMetrics,
    reconcilers: Reconcilers,
) -> anyhow::Result<()> {
    let stopping = reconcilers.supervisor.stopping();
    let leadership = tokio::select! {
        elected = crate::leader::campaign(client, settings, metrics) => elected?,
        () = stopping => return Ok(()),
    };
    let stopping = reconcilers.supervisor.stopping();
    let mut running = reconcilers.start().await;
    let all_stopped = async move {
        stopping.await;
        // Every reconciler task holds a sender; `None` once the last one has ended.
        let _ = running.recv().await;
    };
    leadership.guard(all_stopped).await?;
    Ok(())
}

/// Resolves readiness once every cache and the flags have loaded.
fn spawn_readiness(
    supervisor: &SupervisorHandle,
    caches: &Caches,
    flags: &Arc<FlagIndex>,
    readiness: Readiness,
) {
    let caches = caches.clone();
    let flags = flags.clone();
    supervisor.spawn_once("readiness", async move {
        if caches.wait_loaded().await {
            flags.wait_loaded().await;
            readiness.set();
            info!("all watch caches loaded; controller ready");
        }
        Ok(())
    });
}

/// The context every reconciler shares, and the node operation controller (whose cache the
/// context holds).
async fn build_context(
    client: &Client,
    config: &Config,
    metrics: &SharedMetrics,
    caches: &Caches,
) -> Result<(Arc<Context>, Option<Controller<NodeOperation>>), StartError> {
    let (node_operations, nodeop_controller) = build_node_operations(client, config).await?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        events: crate::events::EventQueue::start(recorder.clone()),
        session_services: Arc::new(crate::session::detached::Detached::new(usize::from(
            config.concurrency,
        ))),
        recorder,
        waker: Waker::new(client.clone(), metrics.clone(), config.flags.clone()),
        shadow: ShadowReports::new(metrics.ownership.clone()),
        metrics: metrics.clone(),
        config: config.clone(),
        session_stores: caches.session_stores(),
        caches_loaded: caches.loaded(),
        backoff: FailureBackoff::default(),
        node_operations,
        flags: config.flags.clone(),
        fence: Arc::new(crate::session::fence::Observer::new(
            client.clone(),
            config.legacy_controller.clone(),
        )),
    });
    Ok((ctx, nodeop_controller))
}

/// The node operation controller (its own watch: it may be narrowed by a label selector) and
/// what its reconciler shares; `None` when node operations are disabled.
async fn build_node_operations(
    client: &Client,
    config: &Config,
) -> Result<(Option<NodeOpShared>, Option<Controller<NodeOperation>>), StartError> {
    let settings = &config.node_operations;
    if !settings.enabled {
        return Ok((None, None));
    }
    Api::<NodeOperation>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .map_err(|e| StartError::CrdMissing("nodeoperations.stream.space", e))?;
    let mut watch = watcher::Config::default().any_semantic();
    if let Some(selector) = &settings.selector {
        watch = watch.labels(selector);
    }
    let controller = Controller::new(Api::<NodeOperation>::all(client.clone()), watch)
        .with_config(ControllerConfig::default().concurrency(settings.concurrency.max(1)));
    let policy = crate::nodeop::policy::discover(client)
        .await
        .map_err(StartError::PolicyDiscovery)?;
    let eviction_client = match &settings.kube_config {
        Some(kube_config) => {
            let mut kube_config = kube_config.clone();
            kube_config.default_retry = false;
            Client::try_from(kube_config).map_err(StartError::EvictionClient)?
        }
        None => {
            tracing::warn!(
                "no kube config for evictions: a blocked eviction will be retried inside the client"
            );
            client.clone()
        }
    };
    let (shared, woken) = NodeOpShared::new(controller.store(), policy, eviction_client);
    Ok((Some(shared), Some(controller.reconcile_on(woken))))
}

/// Fires once for every change of the effective flag of `resource`: a reconciler re-reconciles
/// all its objects on it, so a flip takes effect without waiting for a resync.
fn flag_changes(
    flags: &Arc<FlagIndex>,
    resource: ResourceType,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    flags.changes(resource).map(move |effective| {
        info!(resource = %resource, mode = effective.mode_str(), percent = effective.percent, "ownership flag changed; reconciling everything");
    })
}

/// Everything needed to start the reconcilers, kept until this replica may act.
struct Reconcilers {
    ctx: Arc<Context>,
    caches: Caches,
    nodeops: Option<Controller<NodeOperation>>,
    supervisor: SupervisorHandle,
}

impl Reconcilers {
    /// Waits for the caches, then starts every reconciler as a supervised task. The returned
    /// receiver yields `None` once every reconciler has stopped.
    async fn start(self) -> mpsc::Receiver<()> {
        let (running, stopped) = mpsc::channel(1);
        if !self.caches.wait_loaded().await {
            return stopped;
        }
        let Reconcilers {
            ctx,
            caches,
            nodeops,
            supervisor,
        } = self;
        let spawn = |name: &'static str, task: futures::future::BoxFuture<'static, ()>| {
            let running = running.clone();
            supervisor.spawn_graceful(name, async move {
                task.await;
                drop(running);
                Ok(())
            });
        };
        let stop = || -> Stop { Box::pin(supervisor.stopping()) };
        spawn(
            "session reconciler",
            sessions(&ctx, &caches, stop()).boxed(),
        );
        spawn(
            "template reconciler",
            templates(&ctx, &caches, stop()).boxed(),
        );
        spawn("idle reconciler", idle(&ctx, &caches, stop()).boxed());
        if let Some(nodeops) = nodeops {
            spawn(
                "node operation reconciler",
                node_operations(nodeops, &ctx, &caches, stop()).boxed(),
            );
        }
        spawn(
            "gitsync reconciler",
            gitsyncs(&ctx, &caches, stop()).boxed(),
        );
        spawn(
            "flag status writer",
            flag_status(&ctx, &caches, stop()).boxed(),
        );
        info!("reconcilers started");
        stopped
    }
}

/// The shutdown signal a reconciler stops on.
type Stop = std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

fn sessions(
    ctx: &Arc<Context>,
    caches: &Caches,
    stop: Stop,
) -> impl Future<Output = ()> + Send + use<> {
    let session_store = caches.sessions.store();
    let sessions_of_template = {
        let store = session_store.clone();
        move |template: Arc<Template>| {
            let namespace = template.namespace();
            let name = template.name_any();
            sessions_where(&store, |s| {
                s.namespace() == namespace && s.spec.template == name
            })
        }
    };
    let session_of_pod = |pod: Arc<Pod>| {
        let namespace = pod.namespace();
        pod.labels()
            .get("session")
            .zip(namespace)
            .map(|(session, namespace)| ObjectRef::<Session>::new(session).within(&namespace))
    };
    let sessions_of_claim = {
        let store = session_store.clone();
        move |claim: Arc<PersistentVolumeClaim>| {
            let namespace = claim.namespace();
            let user = claim.labels().get("user").cloned().unwrap_or_default();
            sessions_where(&store, |s| {
                s.namespace() == namespace
                    && crate::session::names::label_value(&s.spec.user) == user
            })
        }
    };
    let metrics = ctx.metrics.clone();
    let changes = crate::caches::relevant_changes(
        caches.sessions.subscribe(),
        session_store.clone(),
        session_reconciler_digest,
        move || {
            metrics
                .reconcilers
                .ignored_change(session_reconciler::CONTROLLER)
        },
    );
    Controller::for_shared_stream(changes, session_store)
        .with_config(ControllerConfig::default().concurrency(ctx.config.concurrency))
        .owns_shared_stream(caches.deployments.subscribe())
        .owns_shared_stream(caches.services.subscribe())
        .owns_shared_stream(caches.ingresses.subscribe())
        .watches_shared_stream(caches.pods.subscribe(), session_of_pod)
        .watches_shared_stream(caches.templates.subscribe(), sessions_of_template)
        .watches_shared_stream(caches.claims.subscribe(), sessions_of_claim)
        .reconcile_all_on(flag_changes(&ctx.flags, ResourceType::Sessions))
        .reconcile_on(ctx.session_services.retries())
        .graceful_shutdown_on(stop)
        .run(
            session_reconciler::reconcile,
            session_reconciler::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()))
}

/// A digest of what the session reconciler reads from a Session: everything except the
/// clocks of the idle side (`status.lastActivity`, written on heartbeats, and
/// `status.startedAt`), the wake request annotation the idle side handles, and the
/// bookkeeping every write changes (resourceVersion, managedFields). A heartbeat-only change
/// keeps the digest, so it starts no session reconcile.
fn session_reconciler_digest(session: &Session) -> u64 {
    use std::hash::{Hash, Hasher};
    let meta = &session.metadata;
    let status = session.status.clone().map(|mut status| {
        status.last_activity = None;
        status.started_at = None;
        status
    });
    let annotations: Vec<(&String, &String)> = session
        .annotations()
        .iter()
        .filter(|(key, _)| key.as_str() != crate::idle::WAKE_ANNOTATION)
        .collect();
    let read = (
        (&meta.uid, &meta.generation, &meta.labels, annotations),
        (
            &meta.deletion_timestamp,
            &meta.finalizers,
            &meta.owner_references,
        ),
        (&session.spec, status),
    );
    // Serialising plain CRD values cannot fail; an empty body would only pass the change on.
    let bytes = serde_json::to_vec(&read).unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

fn sessions_where(
    store: &Store<Session>,
    keep: impl Fn(&Session) -> bool,
) -> Vec<ObjectRef<Session>> {
    store
        .state()
        .into_iter()
        .filter(|s| keep(s))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

fn templates(
    ctx: &Arc<Context>,
    caches: &Caches,
    stop: Stop,
) -> impl Future<Output = ()> + Send + use<> {
    Controller::for_shared_stream(caches.templates.subscribe(), caches.templates.store())
        .graceful_shutdown_on(stop)
        .run(
            template_reconciler::reconcile,
            template_reconciler::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()))
}

/// Idle deadlines: a second controller on the shared Session cache; each session is requeued
/// for its own deadline.
fn idle(
    ctx: &Arc<Context>,
    caches: &Caches,
    stop: Stop,
) -> impl Future<Output = ()> + Send + use<> {
    Controller::for_shared_stream(caches.sessions.subscribe(), caches.sessions.store())
        .with_config(ControllerConfig::default().concurrency(ctx.config.concurrency))
        // Autostart changes too: the idle reconciler hands wake requests to the waker.
        .reconcile_all_on(flag_changes(&ctx.flags, ResourceType::Idle))
        .reconcile_all_on(flag_changes(&ctx.flags, ResourceType::Autostart))
        .graceful_shutdown_on(stop)
        .run(
            idle_reconciler::reconcile,
            idle_reconciler::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()))
}

fn node_operations(
    controller: Controller<NodeOperation>,
    ctx: &Arc<Context>,
    caches: &Caches,
    stop: Stop,
) -> impl Future<Output = ()> + Send + use<> {
    let store = controller.store();
    let operations_of_node =
        move |node: Arc<Node>| nodeop_reconciler::operations_of_node(&store, &node.name_any());
    controller
        .reconcile_all_on(flag_changes(&ctx.flags, ResourceType::Nodes))
        .watches_shared_stream(caches.nodes.subscribe(), operations_of_node)
        .graceful_shutdown_on(stop)
        .run(
            nodeop_reconciler::reconcile,
            nodeop_reconciler::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()))
}

fn gitsyncs(
    ctx: &Arc<Context>,
    caches: &Caches,
    stop: Stop,
) -> impl Future<Output = ()> + Send + use<> {
    let (ctx, nodes, flags) = (ctx.clone(), caches.nodes.clone(), caches.flags.clone());
    async move {
        let (run, ready) = crate::gitops::reconciler::controller(
            ctx.client.clone(),
            ctx.config.namespace.as_deref(),
            ctx.config.gitops.clone(),
            ctx.metrics.clone(),
            (&nodes, &flags),
            stop,
        );
        // `ready` feeds the GitSync context's loaded flag: it must be driven alongside.
        future::join(run, ready).await;
    }
}

fn flag_status(
    ctx: &Arc<Context>,
    caches: &Caches,
    stop: Stop,
) -> impl Future<Output = ()> + Send + use<> {
    let status = Arc::new(crate::ownership::status::FlagStatusContext {
        client: ctx.client.clone(),
        flags: ctx.flags.clone(),
        sessions: caches.sessions.store(),
        caches_loaded: caches.loaded(),
    });
    let flags = caches.flags.clone();
    async move { crate::ownership::status::controller(status, &flags, stop).await }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": "s1", "namespace": "ns", "uid": "u1", "generation": 1,
                         "resourceVersion": "10"},
            "spec": {"user": "alice", "template": "firefox", "state": "running"},
            "status": {"phase": "Running", "lastActivity": "2026-01-01T00:00:00Z"}
        }))
        .expect("a valid session")
    }

    #[test]
    fn heartbeat_only_changes_keep_the_session_reconciler_digest() {
        type Edit = fn(&mut Session);
        let rows: [(&str, Edit, bool); 9] = [
            (
                "heartbeat",
                |s| {
                    let status = s.status.get_or_insert_with(Default::default);
                    status.last_activity =
                        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            "2026-01-01T00:05:00Z".parse().expect("time"),
                        ));
                },
                false,
            ),
            (
                "idle clock",
                |s| {
                    let status = s.status.get_or_insert_with(Default::default);
                    status.started_at = status.last_activity.clone();
                },
                false,
            ),
            (
                "wake request",
                |s| {
                    s.annotations_mut()
                        .insert(crate::idle::WAKE_ANNOTATION.into(), "now".into());
                },
                false,
            ),
            (
                "new resourceVersion",
                |s| {
                    s.metadata.resource_version = Some("11".into());
                },
                false,
            ),
            (
                "spec",
                |s| s.spec.state = Some(crate::crd::SessionState::Hibernated),
                true,
            ),
            (
                "phase",
                |s| {
                    s.status.get_or_insert_with(Default::default).phase =
                        Some(crate::crd::SessionPhase::Pending);
                },
                true,
            ),
            (
                "hand-off annotation",
                |s| {
                    s.annotations_mut().insert(
                        crate::ownership::handoff::ACTED_BY_ANNOTATION.into(),
                        "legacy".into(),
                    );
                },
                true,
            ),
            (
                "deletion",
                |s| {
                    s.metadata.deletion_timestamp =
                        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            "2026-01-01T00:06:00Z".parse().expect("time"),
                        ));
                },
                true,
            ),
            ("recreated", |s| s.metadata.uid = Some("u2".into()), true),
        ];
        let before = session_reconciler_digest(&session());
        for (case, edit, changes) in rows {
            let mut edited = session();
            edit(&mut edited);
            let after = session_reconciler_digest(&edited);
            assert_eq!(before != after, changes, "{case}");
        }
    }
}
