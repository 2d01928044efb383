//! Legacy handlers: the API does the Kubernetes work itself, as the old API did, minus its
//! defects. Objects are the ones the controller builds ([`crate::session::objects`], named
//! `ss-<session>`, owned by the Session, server-side applied under [`LEGACY_FIELD_MANAGER`]),
//! so the controller adopts them later without duplicates.
//!
//! Hand-off ([`crate::ownership::handoff`]): the intent and the record (`acted-by: legacy` plus
//! the in-flight `legacy-operation`) go in one write guarded by `resourceVersion`; the direct
//! work follows; then the in-flight mark is removed (only if it is still ours).

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::{
    LEGACY_FIELD_MANAGER, Result, SessionsError, create_error, refresh_activity, session_labels,
};
use crate::api::ApiState;
use crate::crd::{Session, SessionPhase, SessionSpec, SessionState, TemplateSpec};
use crate::ownership::Side;
use crate::ownership::handoff::{
    ACTED_BY_ANNOTATION, LEGACY_OPERATION_ANNOTATION, legacy_operation_value,
};
use crate::session::adopt::{self, LegacyKind, Progress};
use crate::session::names;
use crate::session::objects::{self, SessionContext};

/// The component named by the Events the legacy handlers publish.
const REPORTER: &str = "streamspace-api";

fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(LEGACY_FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

fn api<K>(state: &ApiState) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(state.client.clone(), &state.namespace)
}

/// Creates the Session (recorded legacy, operation in flight), then its home claim, Service,
/// Ingress and Deployment; on a failure after the Session exists, deletes it again (garbage
/// collection takes whatever was built) so no half-built session stays behind.
pub(super) async fn create(
    state: &ApiState,
    name: &str,
    spec: SessionSpec,
    template: &TemplateSpec,
) -> Result<()> {
    let operation = legacy_operation_value("create", Timestamp::now());
    let mut session = Session::new(name, spec);
    session.metadata.namespace = Some(state.namespace.clone());
    session.metadata.labels = Some(session_labels(&session.spec));
    session.metadata.annotations = Some(
        [
            (
                ACTED_BY_ANNOTATION.to_string(),
                Side::Legacy.as_str().to_string(),
            ),
            (LEGACY_OPERATION_ANNOTATION.to_string(), operation.clone()),
        ]
        .into(),
    );
    let params = PostParams {
        field_manager: Some(LEGACY_FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let sessions = state.sessions();
    let created = sessions
        .create(&params, &session)
        .await
        .map_err(create_error)?;
    let built = async {
        apply_children(state, &created, template, 1).await?;
        write_status(
            state,
            name,
            status_patch(state, name, &SessionState::Running, None),
        )
        .await
    }
    .await;
    if let Err(error) = built {
        warn!(session = name, %error, "legacy create failed; removing the session");
        let _ = sessions.delete(name, &DeleteParams::background()).await;
        return Err(error);
    }
    clear_operation(state, name, &operation).await;
    Ok(())
}

/// Sets `spec.state` (with the record, guarded), then scales, rebuilds or deletes the
/// Deployment, writes the phase, and clears the in-flight mark. A conflict is returned for a
/// retry on fresh data.
pub(super) async fn set_state(
    state: &ApiState,
    session: &Session,
    wanted: &SessionState,
) -> Result<()> {
    let name = session.name_any();
    let sessions = state.sessions();
    let verb = match wanted {
        SessionState::Running => "wake",
        SessionState::Hibernated => "hibernate",
        SessionState::Terminated => "terminate",
        SessionState::Unknown(_) => "update",
    };
    let operation = legacy_operation_value(verb, Timestamp::now());
    let was = session.spec.desired_state();
    let mut version = session.resource_version();
    if *wanted == SessionState::Running && was != SessionState::Running {
        version = refresh_activity(&sessions, session, LEGACY_FIELD_MANAGER).await?;
    }
    let intent = json!({
        "metadata": {
            "resourceVersion": version,
            "annotations": {
                ACTED_BY_ANNOTATION: Side::Legacy.as_str(),
                LEGACY_OPERATION_ANNOTATION: operation,
            },
        },
        "spec": {"state": wanted.as_str()},
    });
    let updated = sessions
        .patch(&name, &merge_params(), &Patch::Merge(intent))
        .await?;
    let child = names::child_name(&name);
    let work = async {
        if !adopt_old_objects(state, &updated, wanted).await? {
            return Ok(());
        }
        match wanted {
            SessionState::Hibernated => scale(state, &child, 0).await,
            SessionState::Terminated => delete_child::<Deployment>(state, &child).await,
            SessionState::Running => wake(state, &updated, &child).await,
            SessionState::Unknown(_) => Ok(()),
        }
    }
    .await;
    let current_phase = session.status.as_ref().and_then(|s| s.phase.clone());
    let status = work.and(Ok(status_patch(state, &name, wanted, current_phase)));
    let result = match status {
        Ok(patch) => write_status(state, &name, patch).await,
        Err(error) => Err(error),
    };
    // Cleared whatever happened: a failed operation is not in flight any more.
    clear_operation(state, &name, &operation).await;
    result
}

/// A session the old controller built ([`crate::session::adopt`]): its old objects are
/// deleted now when no desktop of it has to be kept (hibernate, terminate, or a wake of a
/// stopped one). A session whose old Deployment still runs its desktop and is asked to run is
/// left as it is (`false`: build nothing, so it never gets a second pod); the controller
/// replaces it make-before-break once it owns the session. When the last old object goes, the
/// adoption is counted (`streamspace_adoptions_total`) and an `Adopted` Event published, as the
/// controller does.
async fn adopt_old_objects(
    state: &ApiState,
    session: &Session,
    wanted: &SessionState,
) -> Result<bool> {
    let name = session.name_any();
    let legacy = adopt::legacy_names(&session.spec.user, &session.spec.template);
    let (deployments, services, ingresses) = (
        api::<Deployment>(state),
        api::<Service>(state),
        api::<Ingress>(state),
    );
    let (deployment, service, ingress) = tokio::try_join!(
        deployments.get_opt(&legacy.workload),
        services.get_opt(&legacy.service),
        ingresses.get_opt(&legacy.workload),
    )?;
    let found = adopt::legacy_found(deployment.as_ref(), service.as_ref(), ingress.as_ref());
    let desktop_runs = deployment
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .is_some_and(|spec| spec.replicas.unwrap_or(1) > 0);
    let keep = *wanted == SessionState::Running && desktop_runs;
    let plan = adopt::plan(&name, &names::child_name(&name), keep, &found);
    match plan.progress(false) {
        Progress::Nothing => Ok(true),
        Progress::Waiting => Ok(false),
        Progress::Delete { objects, completes } => {
            for object in &objects {
                let deleted = match object.kind {
                    LegacyKind::Deployment => delete_child::<Deployment>(state, &object.name).await,
                    LegacyKind::Service => delete_child::<Service>(state, &object.name).await,
                    LegacyKind::Ingress => delete_child::<Ingress>(state, &object.name).await,
                };
                if let Err(error) = deleted {
                    state.metrics.migration.adoption("failed");
                    return Err(error);
                }
            }
            info!(session = %name, ?objects, completes, "deleted the old controller's objects");
            if completes {
                state.metrics.migration.adoption("adopted");
                let note = adopt::adopted_note(&objects, &names::child_name(&name));
                publish_adopted(state, session, note).await;
            }
            Ok(true)
        }
    }
}

/// Publishes the `Adopted` Event on `session`, as the controller does when it adopts; a failure
/// is logged, not returned (the adoption itself is done).
async fn publish_adopted(state: &ApiState, session: &Session, note: String) {
    let recorder = Recorder::new(
        state.client.clone(),
        Reporter {
            controller: REPORTER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let event = Event {
        type_: EventType::Normal,
        reason: adopt::ADOPTED_EVENT_REASON.into(),
        note: Some(note),
        action: "Adopt".into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &session.object_ref(&())).await {
        warn!(session = %session.name_any(), %error, "could not publish the adoption event");
    }
}

/// Deletes the Session, then its Deployment, Service and Ingress at once rather than waiting
/// for garbage collection (the home claim stays). The Session goes first so that nothing that
/// still sees it rebuilds a child deleted a moment before.
pub(super) async fn delete(state: &ApiState, session: &Session) -> Result<()> {
    let name = session.name_any();
    let mark = json!({
        "metadata": {
            "resourceVersion": session.resource_version(),
            "annotations": {
                ACTED_BY_ANNOTATION: Side::Legacy.as_str(),
                LEGACY_OPERATION_ANNOTATION: legacy_operation_value("delete", Timestamp::now()),
            },
        },
    });
    state
        .sessions()
        .patch(&name, &merge_params(), &Patch::Merge(mark))
        .await?;
    match state
        .sessions()
        .delete(&name, &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(error) => return Err(error.into()),
    }
    let child = names::child_name(&name);
    delete_child::<Deployment>(state, &child).await?;
    delete_child::<Service>(state, &child).await?;
    delete_child::<Ingress>(state, &child).await
}

/// Wakes: rebuilds every object from the Template (recreating what `terminated` deleted);
/// without the Template only an existing Deployment can be scaled back up.
async fn wake(state: &ApiState, session: &Session, child: &str) -> Result<()> {
    match state.templates().get_opt(&session.spec.template).await? {
        Some(template) => apply_children(state, session, &template.spec, 1).await,
        None => {
            warn!(session = %session.name_any(), template = %session.spec.template,
                "template not found; scaling the existing deployment only");
            scale(state, child, 1).await
        }
    }
}

/// The home claim (created once, never owned) and the owned Service, Ingress and Deployment.
async fn apply_children(
    state: &ApiState,
    session: &Session,
    template: &TemplateSpec,
    replicas: i32,
) -> Result<()> {
    let name = session.name_any();
    let owner = session
        .controller_owner_ref(&())
        .ok_or_else(|| SessionsError::Conflict(format!("session {name:?} has no uid yet")))?;
    let ctx = SessionContext {
        name: &name,
        namespace: &state.namespace,
        spec: &session.spec,
        owner,
        settings: &state.session_api.settings,
    };
    if session.spec.persistent_home {
        let claim = objects::home_claim(&ctx);
        let params = PostParams {
            field_manager: Some(LEGACY_FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match api::<PersistentVolumeClaim>(state)
            .create(&params, &claim)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(error) => return Err(error.into()),
        }
    }
    let child = names::child_name(&name);
    apply(state, &child, &objects::service(&ctx, template)).await?;
    if let Some(ingress) = objects::ingress(&ctx, template) {
        apply(state, &child, &ingress).await?;
    }
    apply(
        state,
        &child,
        &objects::deployment(&ctx, template, replicas),
    )
    .await
}

async fn apply<K>(state: &ApiState, name: &str, object: &K) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    // Server-side apply needs the type information in the body.
    let mut body = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = body.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    let params = PatchParams::apply(LEGACY_FIELD_MANAGER).force();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match api::<K>(state)
            .patch(name, &params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => return Ok(()),
            // An apply that creates races with another creator (the controller adopting the
            // session); the next apply updates what they created.
            Err(kube::Error::Api(status)) if status.is_already_exists() && attempts < 3 => {}
            Err(error) => return Err(error.into()),
        }
    }
}

async fn scale(state: &ApiState, child: &str, replicas: i32) -> Result<()> {
    let patch = json!({"spec": {"replicas": replicas}});
    match api::<Deployment>(state)
        .patch(child, &merge_params(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(error.into()),
    }
}

async fn delete_child<K>(state: &ApiState, name: &str) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    match api::<K>(state)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// The status the legacy side writes right after acting: the phase it just caused (the
/// follower turns `Pending` into `Running` once a pod is ready). A session already running that
/// is asked to run keeps its phase.
fn status_patch(
    state: &ApiState,
    name: &str,
    wanted: &SessionState,
    current: Option<SessionPhase>,
) -> Option<Value> {
    let url = format!(
        "https://{name}.{}",
        state.session_api.settings.ingress_domain
    );
    match wanted {
        SessionState::Running if current == Some(SessionPhase::Running) => None,
        SessionState::Running => Some(json!({"status": {"phase": "Pending", "url": url}})),
        SessionState::Hibernated => {
            Some(json!({"status": {"phase": "Hibernated", "url": url, "podName": null}}))
        }
        SessionState::Terminated => {
            Some(json!({"status": {"phase": "Terminated", "podName": null}}))
        }
        SessionState::Unknown(_) => None,
    }
}

/// A merge patch of the status subresource: only the fields given change (never
/// `lastActivity` or conditions).
async fn write_status(state: &ApiState, name: &str, patch: Option<Value>) -> Result<()> {
    if let Some(patch) = patch {
        state
            .sessions()
            .patch_status(name, &merge_params(), &Patch::Merge(patch))
            .await?;
    }
    Ok(())
}

/// Removes the in-flight mark if it is still `operation` (a JSON Patch `test` makes the check
/// and the removal one atomic write); another operation's mark is left alone.
async fn clear_operation(state: &ApiState, name: &str, operation: &str) {
    let path = format!(
        "/metadata/annotations/{}",
        LEGACY_OPERATION_ANNOTATION
            .replace('~', "~0")
            .replace('/', "~1")
    );
    let patch: std::result::Result<json_patch::Patch, _> = serde_json::from_value(json!([
        {"op": "test", "path": path, "value": operation},
        {"op": "remove", "path": path},
    ]));
    let Ok(patch) = patch else {
        return;
    };
    if let Err(error) = state
        .sessions()
        .patch(name, &merge_params(), &Patch::<()>::Json(patch))
        .await
    {
        debug!(session = name, %error, "in-flight mark not removed (changed or gone)");
    }
}
