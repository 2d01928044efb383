//! The I/O shell around [`state::decide`]: read the session's world from watch caches, apply the
//! decision with server-side apply under our own field manager, and write status only when it
//! changed.

use std::ops::ControlFlow;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::objects::{self, Hashed, SessionContext};
use super::state::{self, DeploymentChange, Observed};
use super::takeover::{self, Adoption};
use super::{Error, Result, names, shadow};
use crate::api_status::KubeFailure;
use crate::context::{Context, FIELD_MANAGER};
use crate::crd::{Session, SessionPhase, Template};
use crate::ownership::gate::LOOK_AGAIN_SLACK;
use crate::ownership::handoff::{ACTED_BY_ANNOTATION, Record};
use crate::ownership::shadow::Subject;
use crate::ownership::{self, Gate, ResourceType, Side};
use crate::writes::WriteLog;

pub use super::CONTROLLER;

/// Watch caches the session reconciler reads instead of the API server.
pub use crate::caches::SessionStores;

pub async fn reconcile(session: Arc<Session>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcilers.start(CONTROLLER);
    crate::caches::wait_loaded(&ctx.caches_loaded).await?;
    let namespace = session.namespace().ok_or(Error::NoNamespace)?;
    let name = session.name_any();
    let key = format!("{namespace}/{name}");
    let gate = match pass_gate(&ctx, &session, &namespace, &key).await? {
        ControlFlow::Continue(gate) => gate,
        ControlFlow::Break(action) => return Ok(action),
    };
    let child = names::child_name(&name);
    let stores = &ctx.session_stores;
    let world = World::read(stores, &session, &namespace, &child);
    let sctx = SessionContext {
        name: &name,
        namespace: &namespace,
        spec: &session.spec,
        owner: session
            .controller_owner_ref(&())
            .ok_or(Error::NoNamespace)?,
        settings: &ctx.config.session,
    };
    let observed = world.observed();
    let decision = state::decide(&sctx, &observed);
    if gate == Gate::Shadow {
        return Ok(report_shadow(&ctx, &session, &key, &decision, &observed).await);
    }
    let plan = takeover::plan(&ctx, &session, &namespace);
    if let Adoption::Requeue(action) =
        takeover::adopt(&ctx, &session, &namespace, &plan, &observed.pods).await?
    {
        return Ok(action);
    }

    let writer = Writer {
        ctx: &ctx,
        namespace: &namespace,
        written: &stores.written,
    };
    // The children are independent of each other: write them concurrently.
    tokio::try_join!(
        writer.deployment(&child, decision.deployment, version(&world.deployment)),
        async {
            match &decision.service {
                Some(desired) => {
                    let cached = version(&world.service);
                    writer.service(&session, &child, desired, cached).await
                }
                None => Ok(()),
            }
        },
        async {
            match &decision.ingress {
                Some(desired) => {
                    let log = &stores.written.ingresses;
                    writer
                        .apply("ingress", &child, desired, log, version(&world.ingress))
                        .await
                }
                None => Ok(()),
            }
        },
        async {
            match &decision.home_claim {
                Some(claim) => writer.create_claim(claim).await,
                None => Ok(()),
            }
        },
    )?;

    let previous_phase = session.status.as_ref().and_then(|s| s.phase.clone());
    let generation = session.meta().generation;
    let now = Timestamp::now();
    let update = state::status_update(session.status.as_ref(), &decision.status, generation, now);
    let held_back = update
        .as_ref()
        .and_then(|update| state::progress_wait(session.status.as_ref(), update, now));
    if let Some(left) = held_back {
        ctx.backoff.succeeded(&backoff_key(&session));
        return Ok(Action::requeue(left.min(decision.recheck)));
    }
    if let Some(status) = update {
        let digest = objects::digest(format!("{:?}/{generation:?}", decision.status).as_bytes());
        if writer
            .status(&name, &status, &digest, session.resource_version())
            .await?
            && previous_phase.as_ref() != Some(&decision.status.phase)
        {
            publish_phase_event(&ctx, &session, &decision.status);
        }
    }
    ctx.backoff.succeeded(&backoff_key(&session));
    Ok(Action::requeue(decision.recheck))
}

pub fn error_policy(session: Arc<Session>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcilers
        .failure(CONTROLLER, error.metric_label());
    let delay = ctx
        .backoff
        .failed(backoff_key(&session), error.is_transient());
    warn!(session = %session.name_any(), %error, retry_in = ?delay, "session reconcile failed");
    Action::requeue(delay)
}

/// The ownership gate of the session: `Continue` with the gate when the reconcile goes on
/// (to act, or to compute the shadow report), `Break` with the next look when it stops here
/// (also for a session being deleted). A claim is written here, before anything else.
async fn pass_gate(
    ctx: &Context,
    session: &Session,
    namespace: &str,
    key: &str,
) -> Result<ControlFlow<Action, Gate>> {
    if session.meta().deletion_timestamp.is_some() {
        // Owned objects go with garbage collection; the home claim stays by design.
        ctx.shadow.clear(ResourceType::Sessions, key);
        return Ok(ControlFlow::Break(Action::await_change()));
    }
    let record = Record::from_annotations(session.annotations())
        .with_controller_in_flight(!state::operation_settled(session));
    let now = Timestamp::now();
    let gate = ownership::controller_gate(
        &ctx.flags,
        &ctx.metrics.ownership,
        ResourceType::Sessions,
        (namespace, &session.name_any()),
        &record,
        now,
    );
    // Nothing is claimed or written while the old controller may still act on the session.
    if gate.acts()
        && let Some(action) = takeover::fenced(ctx, session).await?
    {
        return Ok(ControlFlow::Break(action));
    }
    match gate {
        Gate::Skip(skip) => {
            let subject = (ResourceType::Sessions, key);
            let action = ownership::gate::skipped(&ctx.shadow, subject, skip, now);
            return Ok(ControlFlow::Break(action));
        }
        Gate::Claim => claim(ctx, session, namespace).await?,
        Gate::Act => {}
        // Shadow mode computes the decision, to report it.
        Gate::Shadow => return Ok(ControlFlow::Continue(gate)),
    }
    ctx.shadow.clear(ResourceType::Sessions, key);
    Ok(ControlFlow::Continue(gate))
}

/// The session's Template, children and pods as the watch caches hold them.
struct World {
    template: Option<Arc<Template>>,
    deployment: Option<Arc<Deployment>>,
    service: Option<Arc<Service>>,
    ingress: Option<Arc<Ingress>>,
    home_claim: Option<Arc<PersistentVolumeClaim>>,
    pods: Vec<Arc<Pod>>,
}

impl World {
    fn read(stores: &SessionStores, session: &Session, namespace: &str, child: &str) -> World {
        let session_label = names::label_value(&session.name_any());
        let home = names::home_claim_name(&session.spec.user);
        World {
            template: stores
                .templates
                .get(&ObjectRef::new(&session.spec.template).within(namespace)),
            deployment: stores
                .deployments
                .get(&ObjectRef::new(child).within(namespace)),
            service: stores
                .services
                .get(&ObjectRef::new(child).within(namespace)),
            ingress: stores
                .ingresses
                .get(&ObjectRef::new(child).within(namespace)),
            home_claim: stores.claims.get(&ObjectRef::new(&home).within(namespace)),
            pods: stores.pods.get(namespace, &session_label),
        }
    }

    fn observed(&self) -> Observed<'_> {
        Observed {
            template: self.template.as_deref().map(|t| &t.spec),
            deployment: self.deployment.as_deref(),
            service: self.service.as_deref(),
            ingress: self.ingress.as_deref(),
            home_claim: self.home_claim.as_deref(),
            pods: self.pods.iter().map(Arc::as_ref).collect(),
        }
    }
}

/// Records the controller as the acting side on a session the legacy side acted on last. The
/// write carries the resourceVersion the decision was made from: a conflict means someone
/// wrote in between, and the retry decides again on the newer object.
async fn claim(ctx: &Context, session: &Session, namespace: &str) -> Result<()> {
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": session.resource_version(),
        "annotations": {ACTED_BY_ANNOTATION: Side::Controller.as_str()},
    }});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    ctx.metrics.reconcilers.write(CONTROLLER, "session");
    let result = Api::<Session>::namespaced(ctx.client.clone(), namespace)
        .patch(&session.name_any(), &params, &Patch::Merge(patch))
        .await;
    let sessions = ResourceType::Sessions.as_str();
    match result {
        Ok(_) => {
            ctx.metrics.ownership.claim(sessions, "claimed");
            info!(session = %session.name_any(), "claimed from the legacy side");
            Ok(())
        }
        Err(source) => {
            let label = if crate::api_status::is_conflict(&source) {
                "conflict"
            } else {
                "error"
            };
            ctx.metrics.ownership.claim(sessions, label);
            Err(Error::Api(KubeFailure::new(
                "claiming the session from the legacy side",
                source,
            )))
        }
    }
}

/// Shadow mode: reports what the reconcile would change (metric and an Event once the set of
/// differences has settled and whenever it changes); writes nothing to the session or its
/// children.
async fn report_shadow(
    ctx: &Context,
    session: &Session,
    key: &str,
    decision: &state::Decision,
    observed: &Observed<'_>,
) -> Action {
    let status = session.status.as_ref();
    let differences = shadow::differences(
        &session.name_any(),
        &session.spec.user,
        decision,
        observed,
        status,
    );
    let subject = Subject {
        resource: ResourceType::Sessions,
        key,
        reference: session.object_ref(&()),
        action: "Shadow",
    };
    let lead = "the controller would change";
    match ctx
        .shadow
        .report(&ctx.recorder, &subject, lead, &differences)
        .await
    {
        // Compare again once it could have settled (legacy may be half-way through a create).
        Some(wait) => Action::requeue(wait + LOOK_AGAIN_SLACK),
        None => Action::await_change(),
    }
}

fn backoff_key(session: &Session) -> String {
    format!(
        "session/{}/{}",
        session.namespace().unwrap_or_default(),
        session.name_any()
    )
}

/// The resourceVersion of a cached object, if it is cached.
fn version<K: Resource>(cached: &Option<Arc<K>>) -> Option<String> {
    cached.as_ref().and_then(|object| object.resource_version())
}

/// Writes of one reconcile. Each write is skipped when it would repeat this process's last
/// write of the object that its watch cache does not show yet ([`crate::writes`]), and
/// recorded in the object's write log once made.
struct Writer<'a> {
    ctx: &'a Context,
    namespace: &'a str,
    written: &'a crate::caches::SessionWrites,
}

impl Writer<'_> {
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.ctx.client.clone(), self.namespace)
    }

    /// True when `digest` to `name` is already written and on its way to the cache.
    fn pending(&self, log: &WriteLog, name: &str, digest: &str, cached: Option<&str>) -> bool {
        let pending = log.pending(self.namespace, name, digest, cached);
        if pending {
            self.ctx.metrics.reconcilers.skipped_write(CONTROLLER);
        }
        pending
    }

    /// The digest of `object` when a write of it is due (counted as one), `None` when it
    /// would repeat our last write of it, which the cache does not show yet.
    fn due<K: Hashed>(
        &self,
        kind: &'static str,
        name: &str,
        object: &K,
        log: &WriteLog,
        cached: Option<String>,
    ) -> Option<String> {
        let digest = objects::recorded_hash(object)
            .unwrap_or_default()
            .to_string();
        if self.pending(log, name, &digest, cached.as_deref()) {
            return None;
        }
        self.ctx.metrics.reconcilers.write(CONTROLLER, kind);
        Some(digest)
    }

    async fn apply<K>(
        &self,
        kind: &'static str,
        name: &str,
        object: &K,
        log: &WriteLog,
        cached: Option<String>,
    ) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Hashed
            + Serialize
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let Some(digest) = self.due(kind, name, object, log, cached) else {
            return Ok(());
        };
        // Server-side apply needs the type information in the body.
        let body = with_type_meta(object);
        let applied = self
            .api::<K>()
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .map_err(KubeFailure::during("applying a session object"))?;
        log.wrote(self.namespace, name, &digest, applied.resource_version());
        Ok(())
    }

    /// Starts the Service write without waiting for it ([`super::detached`]), or writes it
    /// inline when the last detached write failed.
    async fn service(
        &self,
        session: &Session,
        name: &str,
        desired: &Service,
        cached: Option<String>,
    ) -> Result<()> {
        let log = &self.written.services;
        let session = ObjectRef::from_obj(session);
        if self.ctx.session_services.take_failure(&session) {
            return self.apply("service", name, desired, log, cached).await;
        }
        let Some(digest) = self.due("service", name, desired, log, cached) else {
            return Ok(());
        };
        let write = super::detached::ServiceWrite {
            api: self.api(),
            params: PatchParams::apply(FIELD_MANAGER).force(),
            namespace: self.namespace.to_string(),
            name: name.to_string(),
            digest,
            body: with_type_meta(desired),
            session,
        };
        self.ctx
            .session_services
            .start(write, log.clone(), self.ctx.metrics.clone());
        Ok(())
    }

    async fn deployment(
        &self,
        name: &str,
        change: DeploymentChange,
        cached: Option<String>,
    ) -> Result<()> {
        let log = &self.written.deployments;
        match change {
            DeploymentChange::Keep => Ok(()),
            DeploymentChange::Apply(deployment) => {
                self.apply("deployment", name, deployment.as_ref(), log, cached)
                    .await
            }
            DeploymentChange::ScaleToZero => {
                const DIGEST: &str = "replicas=0";
                if self.pending(log, name, DIGEST, cached.as_deref()) {
                    return Ok(());
                }
                self.ctx.metrics.reconcilers.write(CONTROLLER, "deployment");
                let patch = serde_json::json!({"spec": {"replicas": 0}});
                let scaled = self
                    .api::<Deployment>()
                    .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(KubeFailure::during("scaling the deployment to zero"))?;
                log.wrote(self.namespace, name, DIGEST, scaled.resource_version());
                Ok(())
            }
            DeploymentChange::Delete => {
                // Pending until the watch delivers the delete.
                const DIGEST: &str = "deleted";
                if self.pending(log, name, DIGEST, cached.as_deref()) {
                    return Ok(());
                }
                self.ctx.metrics.reconcilers.write(CONTROLLER, "deployment");
                match self
                    .api::<Deployment>()
                    .delete(name, &DeleteParams::background())
                    .await
                {
                    Ok(_) => {
                        log.wrote(self.namespace, name, DIGEST, None);
                        Ok(())
                    }
                    Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
                    Err(source) => Err(Error::Api(KubeFailure::new(
                        "deleting the deployment",
                        source,
                    ))),
                }
            }
        }
    }

    /// Creates the home claim; one that already exists (another session of the same user
    /// raced us) is left exactly as it is.
    async fn create_claim(&self, claim: &PersistentVolumeClaim) -> Result<()> {
        // Only asked for while the cache has no claim: pending until the watch delivers it.
        const DIGEST: &str = "created";
        let log = &self.written.claims;
        let name = claim.name_any();
        if self.pending(log, &name, DIGEST, None) {
            return Ok(());
        }
        self.ctx
            .metrics
            .reconcilers
            .write(CONTROLLER, "persistentvolumeclaim");
        match self
            .api::<PersistentVolumeClaim>()
            .create(&PostParams::default(), claim)
            .await
        {
            Ok(created) => {
                log.wrote(self.namespace, &name, DIGEST, created.resource_version());
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                log.wrote(self.namespace, &name, DIGEST, None);
                Ok(())
            }
            Err(source) => Err(Error::Api(KubeFailure::new(
                "creating the home volume claim",
                source,
            ))),
        }
    }

    /// Writes the status computed as `digest`, unless that write is already made and on its
    /// way to the Session cache (now at `cached`); true when it wrote.
    async fn status(
        &self,
        name: &str,
        status: &crate::crd::SessionStatus,
        digest: &str,
        cached: Option<String>,
    ) -> Result<bool> {
        let log = &self.written.sessions;
        if self.pending(log, name, digest, cached.as_deref()) {
            return Ok(false);
        }
        self.ctx
            .metrics
            .reconcilers
            .write(CONTROLLER, "session_status");
        let body = serde_json::json!({
            "apiVersion": "stream.space/v1alpha1",
            "kind": "Session",
            "status": status,
        });
        let written = self
            .api::<Session>()
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .map_err(KubeFailure::during("writing session status"))?;
        log.wrote(self.namespace, name, digest, written.resource_version());
        Ok(true)
    }
}

fn with_type_meta<K>(object: &K) -> serde_json::Value
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let mut body = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = body.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    body
}

fn publish_phase_event(ctx: &Context, session: &Session, status: &state::StatusReport) {
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == state::CONDITION_READY);
    let (type_, reason) = match &status.phase {
        SessionPhase::Failed => (EventType::Warning, ready.map_or("Failed", |c| c.reason)),
        SessionPhase::Pending if ready.is_some_and(|c| c.reason == "TemplateNotFound") => {
            (EventType::Warning, "TemplateNotFound")
        }
        _ => (EventType::Normal, status.phase.as_str()),
    };
    let note = ready.map(|c| c.message.clone());
    info!(session = %session.name_any(), phase = %status.phase, "session phase changed");
    let event = Event {
        type_,
        reason: reason.to_string(),
        note,
        action: "Reconcile".into(),
        secondary: None,
    };
    // Not awaited: the reconcile slot is not held for a note to people.
    ctx.events.publish(event, session.object_ref(&()));
}
