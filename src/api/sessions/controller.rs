//! Controller handlers: the API writes intent on the Session (guarded by `resourceVersion`,
//! recorded `acted-by: controller`) and answers 202; the controller does the Kubernetes work.

use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{
    INTENT_FIELD_MANAGER, Result, SessionsError, create_error, refresh_activity, session_labels,
};
use crate::api::ApiState;
use crate::crd::{Session, SessionSpec, SessionState};
use crate::ownership::Side;
use crate::ownership::handoff::ACTED_BY_ANNOTATION;

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(INTENT_FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// Creates the Session only.
pub(super) async fn create(state: &ApiState, name: &str, spec: SessionSpec) -> Result<()> {
    let mut session = Session::new(name, spec);
    session.metadata.namespace = Some(state.namespace.clone());
    session.metadata.labels = Some(session_labels(&session.spec));
    session.metadata.annotations = Some(
        [(
            ACTED_BY_ANNOTATION.to_string(),
            Side::Controller.as_str().to_string(),
        )]
        .into(),
    );
    let params = PostParams {
        field_manager: Some(INTENT_FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    state
        .sessions()
        .create(&params, &session)
        .await
        .map_err(create_error)?;
    Ok(())
}

/// Sets `spec.state` with the read's `resourceVersion`; a conflict is returned for a retry.
pub(super) async fn set_state(
    state: &ApiState,
    session: &Session,
    wanted: &SessionState,
) -> Result<()> {
    let api = state.sessions();
    let mut version = session.resource_version();
    if *wanted == SessionState::Running && session.spec.desired_state() != SessionState::Running {
        version = refresh_activity(&api, session, INTENT_FIELD_MANAGER).await?;
    }
    let patch = json!({
        "metadata": {
            "resourceVersion": version,
            "annotations": {ACTED_BY_ANNOTATION: Side::Controller.as_str()},
        },
        "spec": {"state": wanted.as_str()},
    });
    api.patch(&session.name_any(), &params(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Deletes the Session; its children go with garbage collection (the home claim stays).
pub(super) async fn delete(state: &ApiState, session: &Session) -> Result<()> {
    let name = session.name_any();
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: session.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match state.sessions().delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            Err(SessionsError::not_found(&name))
        }
        Err(error) => Err(error.into()),
    }
}
