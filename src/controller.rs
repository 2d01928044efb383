//! Wiring of the reconcilers: the shared [`Context`], the watch caches they read, and the task
//! that runs them all until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{StreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::info;

use crate::backoff::FailureBackoff;
use crate::crd::{NodeOperation, Session, Template};
use crate::idle::deadline::IdleSettings;
use crate::idle::reconciler as idle_reconciler;
use crate::idle::wake::Waker;
use crate::metrics::SharedMetrics;
use crate::nodeop::reconciler::{self as nodeop_reconciler, NodeOpShared};
use crate::ownership::ResourceType;
use crate::ownership::index::{FlagIndex, FlagSettings};
use crate::ownership::shadow::ShadowReports;
use crate::session::names::{APP_SESSION, APP_USER_HOME};
use crate::session::objects::SessionSettings;
use crate::session::reconciler::{self as session_reconciler, SessionStores};
use crate::template::reconciler as template_reconciler;

/// Field manager of every server-side apply this controller makes.
pub const FIELD_MANAGER: &str = "streamspace-controller";

#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace to watch; `None` watches all namespaces.
    pub namespace: Option<String>,
    /// Sessions reconciled at the same time.
    pub concurrency: u16,
    pub session: SessionSettings,
    pub node_operations: NodeOperationSettings,
    /// Idle grace and what `maxSessionDuration` does.
    pub idle: IdleSettings,
    /// Bearer token of `POST /events/connection`; `None` refuses every event (the
    /// `wake-requested` annotation still wakes sessions).
    pub connection_event_token: Option<String>,
    pub gitops: crate::gitops::reconciler::GitopsSettings,
    /// Ownership flags: who acts on each resource type. Shared with the admission webhooks
    /// when they run in the same process; [`run`] keeps it fed from a watch.
    pub flags: Arc<FlagIndex>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: None,
            concurrency: 16,
            session: SessionSettings::default(),
            node_operations: NodeOperationSettings::default(),
            idle: IdleSettings::default(),
            connection_event_token: None,
            gitops: Default::default(),
            flags: FlagIndex::new(FlagSettings::default()),
        }
    }
}

/// Which NodeOperations this instance handles, and how.
#[derive(Clone, Debug)]
pub struct NodeOperationSettings {
    pub enabled: bool,
    /// Label selector on NodeOperations (all when `None`); NodeOperations are cluster-scoped,
    /// so `Config::namespace` does not narrow them.
    pub selector: Option<String>,
    /// NodeOperations reconciled at the same time.
    pub concurrency: u16,
    /// Connection settings for the eviction client. kube's default client retries HTTP 429 for
    /// minutes, which would hold a reconcile worker while a PodDisruptionBudget blocks an
    /// eviction; with these settings evictions use a client that does not. Without them the
    /// shared client is used (and a warning logged).
    pub kube_config: Option<kube::Config>,
}

impl Default for NodeOperationSettings {
    fn default() -> Self {
        NodeOperationSettings {
            enabled: true,
            selector: None,
            concurrency: 4,
            kube_config: None,
        }
    }
}

/// What every reconciler shares: client, event recorder, metrics, configuration, caches.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: SharedMetrics,
    pub config: Config,
    pub session_stores: SessionStores,
    /// Becomes true once every watch cache has its initial list.
    pub caches_loaded: watch::Receiver<bool>,
    /// Retry delays of objects whose reconcile keeps failing.
    pub backoff: FailureBackoff,
    /// Shared state of the node operation reconciler; `None` when it is disabled.
    pub node_operations: Option<NodeOpShared>,
    /// Wakes hibernated sessions (wake-requested annotation and connection events).
    pub waker: Waker,
    /// Who acts on what ([`crate::ownership`]).
    pub flags: Arc<FlagIndex>,
    /// Differences found in shadow mode, per object.
    pub shadow: ShadowReports,
}

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
}

/// Readiness of the controller: true once every watch cache has loaded.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
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

/// A watch cache plus the stream that keeps it filled (and triggers reconciles).
pub(crate) type Reflected<K> = (
    Store<K>,
    futures::stream::BoxStream<'static, Result<K, watcher::Error>>,
);

pub(crate) fn reflect<K>(api: Api<K>, config: watcher::Config) -> Reflected<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config.any_semantic()))
        .default_backoff()
        .touched_objects()
        .boxed();
    (store, stream)
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

/// Runs all reconcilers until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: Config,
    metrics: SharedMetrics,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    check_crds(&client).await?;
    let ns = config.namespace.as_deref();
    let session_selector = watcher::Config::default().labels(&format!("app={APP_SESSION}"));
    let (templates, template_stream) =
        reflect(api::<Template>(&client, ns), watcher::Config::default());
    let (deployments, deployment_stream) =
        reflect(api::<Deployment>(&client, ns), session_selector.clone());
    let (services, service_stream) = reflect(api::<Service>(&client, ns), session_selector.clone());
    let (ingresses, ingress_stream) =
        reflect(api::<Ingress>(&client, ns), session_selector.clone());
    let (pods, pod_stream) = reflect(api::<Pod>(&client, ns), session_selector);
    let (claims, claim_stream) = reflect(
        api::<PersistentVolumeClaim>(&client, ns),
        watcher::Config::default().labels(&format!("app={APP_USER_HOME}")),
    );
    let stores = SessionStores {
        templates: templates.clone(),
        deployments: deployments.clone(),
        services: services.clone(),
        ingresses: ingresses.clone(),
        pods: pods.clone(),
        claims: claims.clone(),
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let (loaded_tx, caches_loaded) = watch::channel(false);
    let nodeop_settings = &config.node_operations;
    let mut nodeop_watch = watcher::Config::default().any_semantic();
    if let Some(selector) = &nodeop_settings.selector {
        nodeop_watch = nodeop_watch.labels(selector);
    }
    let mut nodeop_controller =
        Controller::new(Api::<NodeOperation>::all(client.clone()), nodeop_watch).with_config(
            ControllerConfig::default().concurrency(nodeop_settings.concurrency.max(1)),
        );
    let nodeop_store = nodeop_controller.store();
    let node_operations = if nodeop_settings.enabled {
        Api::<NodeOperation>::all(client.clone())
            .list(&ListParams::default().limit(1))
            .await
            .map_err(|e| StartError::CrdMissing("nodeoperations.stream.space", e))?;
        let policy = crate::nodeop::policy::discover(&client)
            .await
            .map_err(StartError::PolicyDiscovery)?;
        let eviction_client = match &nodeop_settings.kube_config {
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
        let (shared, woken) = NodeOpShared::new(nodeop_store.clone(), policy, eviction_client);
        nodeop_controller = nodeop_controller.reconcile_on(woken);
        Some(shared)
    } else {
        None
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder,
        waker: Waker::new(client.clone(), metrics.clone(), config.flags.clone()),
        shadow: ShadowReports::new(metrics.ownership.clone()),
        metrics,
        config: config.clone(),
        session_stores: stores.clone(),
        caches_loaded,
        backoff: FailureBackoff::default(),
        node_operations,
        flags: config.flags.clone(),
    });

    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let flags = {
        let index = config.flags.clone();
        let client = client.clone();
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                () = index.run(client) => {}
                () = shutdown => {}
            }
        }
    };
    let session_controller = Controller::new(
        api::<Session>(&client, ns),
        watcher::Config::default().any_semantic(),
    )
    .with_config(ControllerConfig::default().concurrency(config.concurrency));
    let session_store = session_controller.store();
    let sessions_of_template = {
        let session_store = session_store.clone();
        move |template: Template| {
            let namespace = template.namespace();
            let name = template.name_any();
            session_store
                .state()
                .into_iter()
                .filter(|s| s.namespace() == namespace && s.spec.template == name)
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let session_of_pod = |pod: Pod| {
        let namespace = pod.namespace();
        pod.labels()
            .get("session")
            .zip(namespace)
            .map(|(session, namespace)| ObjectRef::<Session>::new(session).within(&namespace))
    };
    let sessions_of_claim = {
        let session_store = session_store.clone();
        move |claim: PersistentVolumeClaim| {
            let namespace = claim.namespace();
            let user = claim.labels().get("user").cloned().unwrap_or_default();
            session_store
                .state()
                .into_iter()
                .filter(|s| {
                    s.namespace() == namespace
                        && crate::session::names::label_value(&s.spec.user) == user
                })
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let flag_status = crate::ownership::status::controller(
        Arc::new(crate::ownership::status::FlagStatusContext {
            client: client.clone(),
            flags: config.flags.clone(),
            sessions: session_store.clone(),
            caches_loaded: ctx.caches_loaded.clone(),
        }),
        shutdown.clone(),
    );
    let sessions = session_controller
        .owns_stream(deployment_stream)
        .owns_stream(service_stream)
        .owns_stream(ingress_stream)
        .watches_stream(pod_stream, session_of_pod)
        .watches_stream(template_stream, sessions_of_template)
        .watches_stream(claim_stream, sessions_of_claim)
        .reconcile_all_on(flag_changes(&config.flags, ResourceType::Sessions))
        .graceful_shutdown_on(shutdown.clone())
        .run(
            session_reconciler::reconcile,
            session_reconciler::error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()));

    let templates_controller = Controller::new(
        api::<Template>(&client, ns),
        watcher::Config::default().any_semantic(),
    )
    .graceful_shutdown_on(shutdown.clone())
    .run(
        template_reconciler::reconcile,
        template_reconciler::error_policy,
        ctx.clone(),
    )
    .for_each(|_| future::ready(()));

    let nodeops_enabled = config.node_operations.enabled;
    let node_operations = async {
        if !nodeops_enabled {
            return;
        }
        let operations_of_node = {
            let store = nodeop_store.clone();
            move |node: Node| nodeop_reconciler::operations_of_node(&store, &node.name_any())
        };
        nodeop_controller
            .reconcile_all_on(flag_changes(&config.flags, ResourceType::Nodes))
            .watches(
                Api::<Node>::all(client.clone()),
                watcher::Config::default().any_semantic(),
                operations_of_node,
            )
            .graceful_shutdown_on(shutdown.clone())
            .run(
                nodeop_reconciler::reconcile,
                nodeop_reconciler::error_policy,
                ctx.clone(),
            )
            .for_each(|_| future::ready(()))
            .await;
    };

    // Idle deadlines: a second controller on Sessions. It reads only the Session itself, so it
    // does not wait for the other caches; each session is requeued for its own deadline.
    let idle_controller = Controller::new(
        api::<Session>(&client, ns),
        watcher::Config::default().any_semantic(),
    )
    .with_config(ControllerConfig::default().concurrency(config.concurrency))
    // Autostart changes too: the idle reconciler hands wake requests to the waker.
    .reconcile_all_on(flag_changes(&config.flags, ResourceType::Idle))
    .reconcile_all_on(flag_changes(&config.flags, ResourceType::Autostart))
    .graceful_shutdown_on(shutdown.clone())
    .run(
        idle_reconciler::reconcile,
        idle_reconciler::error_policy,
        ctx.clone(),
    )
    .for_each(|_| future::ready(()));

    let (gitsyncs, gitops_ready) = crate::gitops::reconciler::controller(
        client.clone(),
        ns,
        config.gitops.clone(),
        ctx.metrics.clone(),
        shutdown.clone(),
    );

    let ready = async {
        let loaded = stores.wait_until_ready().await.is_ok()
            && session_store.wait_until_ready().await.is_ok()
            && (!nodeops_enabled || nodeop_store.wait_until_ready().await.is_ok())
            && gitops_ready.await;
        ctx.flags.wait_loaded().await;
        if loaded {
            let _ = loaded_tx.send(true);
            readiness.set();
            info!("all watch caches loaded; controller ready");
        }
    };
    info!(namespace = ns.unwrap_or("<all>"), "controller started");
    tokio::join!(
        sessions,
        templates_controller,
        node_operations,
        idle_controller,
        gitsyncs,
        ready,
        flags,
        flag_status,
    );
    info!("controller stopped");
    Ok(())
}
