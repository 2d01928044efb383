//! The I/O around [`super::fence`] and [`super::adopt`] for the session reconciler: read what
//! the decisions need from the watch caches and the old controller's Lease, then write the
//! fence condition, delete old objects, and publish Events.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::adopt::{self, LegacyKind, LegacyObject, Plan, Progress};
use super::fence::{self, CONDITION_FENCED, FENCE_FIELD_MANAGER, REASON_ACTIVE};
use super::{Error, Result, names};
use crate::api_status::KubeFailure;
use crate::context::Context;
use crate::crd::Session;

/// `Some(action)` when the session must be left alone because the old controller is active:
/// the condition and Event say why, and the session is looked at again when the evidence may
/// have ended. `None` lets the reconcile go on (and removes a fence condition left from before).
pub async fn fenced(ctx: &Context, session: &Session) -> Result<Option<Action>> {
    let settings = &ctx.fence.settings;
    let now = Timestamp::now();
    let mut evidence = Vec::new();
    if !settings.allow {
        let observation = ctx.fence.observe().await;
        evidence = fence::assess(&observation, now);
        ctx.metrics
            .migration
            .legacy_controller_active
            .set(i64::from(!evidence.is_empty()));
        evidence.extend(fence::session_writers(
            session.managed_fields(),
            now,
            settings.writer_window,
        ));
    }
    let current = session
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_FENCED));
    if evidence.is_empty() {
        if current.is_some() {
            write_condition(ctx, session, None).await?;
            info!(session = %session.name_any(), "the old controller is gone; acting again");
        }
        return Ok(None);
    }
    ctx.metrics.migration.fenced.inc();
    let message = fence::message(&evidence);
    if current.is_none_or(|c| c.message != message) {
        warn!(session = %session.name_any(), %message, "fenced");
        write_condition(ctx, session, Some(&message)).await?;
        publish(ctx, session, EventType::Warning, REASON_ACTIVE, message).await;
    }
    Ok(Some(Action::requeue(fence::recheck(&evidence, now))))
}

/// Applies the fence condition under its own field manager, or removes it (an apply that no
/// longer lists it), touching nothing else in the status.
async fn write_condition(ctx: &Context, session: &Session, message: Option<&str>) -> Result<()> {
    let conditions: Vec<serde_json::Value> = message
        .map(|message| {
            serde_json::json!({
                "type": CONDITION_FENCED,
                "status": "True",
                "reason": REASON_ACTIVE,
                "message": message,
                "lastTransitionTime": Timestamp::now().to_string(),
                "observedGeneration": session.meta().generation,
            })
        })
        .into_iter()
        .collect();
    let body = serde_json::json!({
        "apiVersion": "stream.space/v1alpha1",
        "kind": "Session",
        "status": {"conditions": conditions},
    });
    ctx.metrics
        .reconcilers
        .write(super::CONTROLLER, "session_status");
    Api::<Session>::namespaced(ctx.client.clone(), &session.namespace().unwrap_or_default())
        .patch_status(
            &session.name_any(),
            &PatchParams::apply(FENCE_FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map(|_| ())
        .map_err(|source| {
            Error::Api(KubeFailure::new(
                "writing the legacy controller condition",
                source,
            ))
        })
}

/// The session's adoption plan from the watch caches. An object this process deleted is
/// gone even while its cache still shows it.
pub fn plan(ctx: &Context, session: &Session, namespace: &str) -> Plan {
    let name = session.name_any();
    let legacy = adopt::legacy_names(&session.spec.user, &session.spec.template);
    let stores = &ctx.session_stores;
    let deleted = &stores.written.deleted;
    let present = |meta: &ObjectMeta| !deleted.is_deleted(meta.uid.as_deref());
    let found = adopt::legacy_found(
        stores
            .deployments
            .get(&ObjectRef::new(&legacy.workload).within(namespace))
            .as_deref()
            .filter(|o| present(&o.metadata)),
        stores
            .services
            .get(&ObjectRef::new(&legacy.service).within(namespace))
            .as_deref()
            .filter(|o| present(&o.metadata)),
        stores
            .ingresses
            .get(&ObjectRef::new(&legacy.workload).within(namespace))
            .as_deref()
            .filter(|o| present(&o.metadata)),
    );
    let running = session.spec.desired_state() == crate::crd::SessionState::Running;
    adopt::plan(&name, &names::child_name(&name), running, &found)
}

/// What the reconcile does after applying the plan's due deletions.
pub enum Adoption {
    /// Go on with the normal reconcile.
    Continue,
    /// An old Deployment holds our Deployment's name and was just deleted: look again shortly
    /// instead of applying ours over it.
    Requeue(Action),
}

/// Deletes the old objects that are due (all of them for a stopped session; after a pod of our
/// own Deployment is ready for a running one), and reports the adoption once none is left.
pub async fn adopt(
    ctx: &Context,
    session: &Session,
    namespace: &str,
    plan: &Plan,
    pods: &[&Pod],
) -> Result<Adoption> {
    let child = names::child_name(&session.name_any());
    let ready = adopt::replacement_ready(pods, &child);
    let Progress::Delete { objects, completes } = plan.progress(ready) else {
        return Ok(Adoption::Continue);
    };
    for object in &objects {
        if let Err(error) = delete(ctx, namespace, object).await {
            ctx.metrics.migration.adoption("failed");
            return Err(error);
        }
    }
    info!(session = %session.name_any(), ?objects, completes, "deleted old controller objects");
    if completes {
        ctx.metrics.migration.adoption("adopted");
        let note = adopt::adopted_note(&objects, &child);
        publish(
            ctx,
            session,
            EventType::Normal,
            adopt::ADOPTED_EVENT_REASON,
            note,
        )
        .await;
    }
    if plan.blocks_own_deployment(&child) {
        return Ok(Adoption::Requeue(Action::requeue(
            std::time::Duration::from_secs(1),
        )));
    }
    Ok(Adoption::Continue)
}

/// Deletes one old object and remembers its UID, so that reconciles before its cache shows the
/// deletion do not see it. The UID is a precondition: a newer object of the same name is left.
async fn delete(ctx: &Context, namespace: &str, object: &LegacyObject) -> Result<()> {
    let stores = &ctx.session_stores;
    let uid = match object.kind {
        LegacyKind::Deployment => cached_uid(&stores.deployments, namespace, &object.name),
        LegacyKind::Service => cached_uid(&stores.services, namespace, &object.name),
        LegacyKind::Ingress => cached_uid(&stores.ingresses, namespace, &object.name),
    };
    let client = ctx.client.clone();
    let params = DeleteParams {
        preconditions: uid.clone().map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    let kind = match object.kind {
        LegacyKind::Deployment => "deployment",
        LegacyKind::Service => "service",
        LegacyKind::Ingress => "ingress",
    };
    ctx.metrics.reconcilers.write(super::CONTROLLER, kind);
    let result = match object.kind {
        LegacyKind::Deployment => Api::<Deployment>::namespaced(client, namespace)
            .delete(&object.name, &params)
            .await
            .map(|_| ()),
        LegacyKind::Service => Api::<Service>::namespaced(client, namespace)
            .delete(&object.name, &params)
            .await
            .map(|_| ()),
        LegacyKind::Ingress => Api::<Ingress>::namespaced(client, namespace)
            .delete(&object.name, &params)
            .await
            .map(|_| ()),
    };
    match result {
        // Gone already, or replaced by an object of the same name (the UID precondition).
        Ok(()) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 409 => {}
        Err(source) => {
            return Err(Error::Api(KubeFailure::new(
                "deleting an object of the old controller",
                source,
            )));
        }
    }
    if let Some(uid) = uid {
        stores.written.deleted.deleted(&uid);
    }
    Ok(())
}

fn cached_uid<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<String>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let object = store.get(&ObjectRef::new(name).within(namespace))?;
    object.meta().uid.clone()
}

async fn publish(ctx: &Context, session: &Session, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Adopt".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &session.object_ref(&())).await {
        warn!(%error, "could not publish adoption event");
    }
}
