//! Wiring of the reconcilers: the shared [`Context`], the watch caches they read, and the task
//! that runs them all until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{StreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
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
use crate::crd::{Session, Template};
use crate::metrics::SharedMetrics;
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
    pub gitops: crate::gitops::reconciler::GitopsSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: None,
            concurrency: 16,
            session: SessionSettings::default(),
            gitops: Default::default(),
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
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the {0} CRD is not served by the cluster ({1}); install it with `streamspace-controller crds | kubectl apply -f -`"
    )]
    CrdMissing(&'static str, #[source] kube::Error),
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
    Ok(())
}

/// A watch cache plus the stream that keeps it filled (and triggers reconciles).
type Reflected<K> = (
    Store<K>,
    futures::stream::BoxStream<'static, Result<K, watcher::Error>>,
);

fn reflect<K>(api: Api<K>, config: watcher::Config) -> Reflected<K>
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
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder,
        metrics,
        config: config.clone(),
        session_stores: stores.clone(),
        caches_loaded,
        backoff: FailureBackoff::default(),
    });

    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
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
    let sessions = session_controller
        .owns_stream(deployment_stream)
        .owns_stream(service_stream)
        .owns_stream(ingress_stream)
        .watches_stream(pod_stream, session_of_pod)
        .watches_stream(template_stream, sessions_of_template)
        .watches_stream(claim_stream, sessions_of_claim)
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
            && gitops_ready.await;
        if loaded {
            let _ = loaded_tx.send(true);
            readiness.set();
            info!("all watch caches loaded; controller ready");
        }
    };
    info!(namespace = ns.unwrap_or("<all>"), "controller started");
    future::join4(sessions, templates_controller, gitsyncs, ready).await;
    info!("controller stopped");
    Ok(())
}
