//! Ownership flag endpoints: read the flags as this replica sees them, set or clear the
//! break-glass override.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/api/v1/flags` | every resource type |
//! | GET | `/api/v1/flags/{type}` | one type |
//! | PUT | `/api/v1/flags/{type}/override` | `{mode, percent?, ttl?, reason}`; needs the flags permission |
//! | DELETE | `/api/v1/flags/{type}/override` | needs the flags permission |
//! | PUT | `/api/v1/flags/{type}/baseline` | `{mode, percent?, reason}`; needs the flags permission; refused (409) for a flag from Git |
//!
//! Reads come from this replica's watch-fed [`FlagIndex`](crate::ownership::index::FlagIndex),
//! so they show what this replica decides with right now. An override or a baseline is written
//! in one server-side apply of the whole spec under this endpoint's own field manager, guarded
//! by the `resourceVersion` of a read ([`write_override`], [`write_baseline`]): the part not
//! being changed is applied as read, so nothing another writer set is overwritten, and a Git
//! sync of the baseline (`spec.mode`, `spec.percent`, another field manager) never touches the
//! override. Every change is recorded as an Event naming who and why.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::ApiState;
use super::auth::Permission;
use super::handlers::ApiError;
use crate::api_status::Attempts;
use crate::crd::{FeatureFlag, FeatureFlagSpec, FlagMode, FlagOverride};
use crate::idle::deadline::parse_duration;
use crate::ownership::{Effective, ResourceType};

/// Field manager of override and baseline writes; Git syncs use another, so neither erases the
/// other.
pub const FIELD_MANAGER: &str = "streamspace-api-flags";
/// Longest accepted reason, in bytes.
const MAX_REASON: usize = 1024;

/// Body of `PUT /api/v1/flags/{type}/override`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideRequest {
    pub mode: String,
    pub percent: Option<u8>,
    /// How long the override lasts (`30s`, `15m`, `2h`); forever when absent.
    pub ttl: Option<String>,
    pub reason: Option<String>,
}

/// Checks an override request and turns it into the override to store.
pub fn build_override(
    request: &OverrideRequest,
    set_by: &str,
    now: Timestamp,
) -> Result<FlagOverride, String> {
    let mode = FlagMode::from(request.mode.as_str());
    if let FlagMode::Unknown(other) = &mode {
        return Err(format!(
            "mode {other:?} is not one of legacy, shadow, controller"
        ));
    }
    let percent = request.percent.unwrap_or(100);
    if percent > 100 {
        return Err(format!("percent {percent} is not between 0 and 100"));
    }
    let reason = request.reason.as_deref().map(str::trim).unwrap_or_default();
    if reason.is_empty() {
        return Err("reason is required: say why the override is needed".into());
    }
    if reason.len() > MAX_REASON {
        return Err(format!("reason is longer than {MAX_REASON} bytes"));
    }
    let expires_at = match &request.ttl {
        None => None,
        Some(text) => {
            let ttl = parse_duration(text)
                .filter(|d| *d >= Duration::from_secs(1))
                .ok_or_else(|| {
                    format!("ttl {text:?} is not a duration of at least 1s (such as 30s, 15m, 2h)")
                })?;
            Some(Time(
                now.checked_add(ttl)
                    .map_err(|_| format!("ttl {text:?} is too long"))?,
            ))
        }
    };
    Ok(FlagOverride {
        mode,
        percent,
        expires_at,
        reason: Some(reason.to_string()),
        set_by: Some(set_by.to_string()),
    })
}

fn parse_type(text: &str) -> Result<ResourceType, ApiError> {
    ResourceType::parse(text).ok_or_else(|| {
        ApiError::Missing(format!(
            "no flag {text:?} (known: sessions, idle, autostart, nodes, quota)"
        ))
    })
}

pub use crate::ownership::view;

fn current_view(state: &ApiState, resource: ResourceType) -> Value {
    let index = state.flags();
    view(
        resource,
        &index.object_name(resource),
        index.spec(resource).as_ref(),
        &index.effective(resource),
    )
}

pub(crate) async fn list(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.principal(&headers).await?;
    let flags: Vec<Value> = ResourceType::ALL
        .into_iter()
        .map(|t| current_view(&state, t))
        .collect();
    Ok(Json(json!({"flags": flags, "loaded": state.flags().loaded()})).into_response())
}

pub(crate) async fn get(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
) -> Result<Response, ApiError> {
    state.principal(&headers).await?;
    let resource = parse_type(&kind)?;
    Ok(Json(current_view(&state, resource)).into_response())
}

pub(crate) async fn put_override(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let principal = state.principal(&headers).await?;
    let resource = parse_type(&kind)?;
    state.require(&principal, Permission::ManageFlags).await?;
    let request: OverrideRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid override: {e}")))?;
    let over = build_override(&request, &principal.name, Timestamp::now())
        .map_err(ApiError::BadRequest)?;
    let name = state.flags().object_name(resource);
    let default = state.flags().effective(resource);
    let stored = write_override(&state.client, &name, &over, &default).await?;
    let until = over
        .expires_at
        .as_ref()
        .map_or("until cleared".to_string(), |t| format!("until {}", t.0));
    let note = format!(
        "{} set override {} {}% {until}: {}",
        principal.name,
        over.mode,
        over.percent,
        over.reason.as_deref().unwrap_or_default()
    );
    info!(flag = %name, by = %principal.name, mode = %over.mode, percent = over.percent, "flag override set");
    record(&state, &stored, "OverrideSet", note).await;
    let effective = crate::ownership::effective(&stored.spec, Timestamp::now());
    Ok(Json(view(resource, &name, Some(&stored.spec), &effective)).into_response())
}

pub(crate) async fn delete_override(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
) -> Result<Response, ApiError> {
    let principal = state.principal(&headers).await?;
    let resource = parse_type(&kind)?;
    state.require(&principal, Permission::ManageFlags).await?;
    let name = state.flags().object_name(resource);
    let Some(stored) = clear_override(&state.client, &name).await? else {
        return Err(ApiError::Missing(format!(
            "flag object {name:?} does not exist"
        )));
    };
    info!(flag = %name, by = %principal.name, "flag override cleared");
    record(
        &state,
        &stored,
        "OverrideCleared",
        format!("{} cleared the override", principal.name),
    )
    .await;
    let effective = crate::ownership::effective(&stored.spec, Timestamp::now());
    Ok(Json(view(resource, &name, Some(&stored.spec), &effective)).into_response())
}

/// Reads of a flag object and applies made on them before a concurrent writer (a Git sync, the
/// controller's status) lets one through; each retry reads again.
const WRITE_ATTEMPTS: u32 = 5;

/// Writes flag object `name` with one server-side apply of its whole spec under
/// [`FIELD_MANAGER`]. `next` turns the object as read (`None`: there is none) into the spec to
/// apply, or refuses. The read guards the write:
///
/// - an object that exists is applied with its `resourceVersion` as a precondition and forced:
///   the fields `next` keeps are the values just read, so taking them over changes nothing, and
///   whatever changed in between (a Git sync of the baseline, another override) fails the
///   precondition instead of being overwritten; the write is then retried on a fresh read;
/// - a new object is applied without force: if someone created it meanwhile with other values,
///   the field conflict stops the write and the retry reads what they wrote.
///
/// One writer of the whole spec also means a later apply that leaves a field out removes it
/// only when no other manager (Git, for the baseline) has applied it.
async fn apply_spec<E>(
    client: &kube::Client,
    name: &str,
    next: impl Fn(Option<&FeatureFlag>) -> Result<FeatureFlagSpec, E>,
) -> Result<FeatureFlag, E>
where
    E: From<kube::Error>,
{
    let api: Api<FeatureFlag> = Api::all(client.clone());
    let mut attempts = Attempts::new(WRITE_ATTEMPTS);
    loop {
        let current = api.get_opt(name).await?;
        let spec = next(current.as_ref())?;
        let mut metadata = json!({"name": name});
        let params = match current.as_ref().and_then(|f| f.resource_version()) {
            Some(version) => {
                metadata["resourceVersion"] = version.into();
                PatchParams::apply(FIELD_MANAGER).force()
            }
            None => PatchParams::apply(FIELD_MANAGER),
        };
        let mut spec = serde_json::to_value(&spec).map_err(kube::Error::SerdeError)?;
        // An override without expiry says so explicitly: a leaving-out would keep an expiry
        // another manager wrote (a merge patch of an earlier release), the forced null does not.
        if let Some(over) = spec.get_mut("override").and_then(Value::as_object_mut) {
            over.entry("expiresAt").or_insert(Value::Null);
        }
        let body = json!({
            "apiVersion": "stream.space/v1alpha1",
            "kind": "FeatureFlag",
            "metadata": metadata,
            "spec": spec,
        });
        let written = api.patch(name, &params, &Patch::Apply(&body)).await;
        let stale = |error: &kube::Error| {
            matches!(error, kube::Error::Api(status)
                if status.is_conflict() || status.is_already_exists())
        };
        if let Some(done) = attempts.settle(written, stale, |error| error) {
            return done.map_err(E::from);
        }
        info!(
            flag = name,
            attempt = attempts.made(),
            "flag changed while it was written; retrying"
        );
    }
}

/// Writes `over` as the override of flag object `name`, in one server-side apply
/// (`apply_spec`). The whole override is spelled out, so none of a previous one survives; the
/// baseline is the one stored (Git's stays Git's), or, for a new object, `default`, the value
/// in force now, so the override does not change what the baseline means.
pub async fn write_override(
    client: &kube::Client,
    name: &str,
    over: &FlagOverride,
    default: &Effective,
) -> Result<FeatureFlag, kube::Error> {
    apply_spec(client, name, |current| {
        let mut spec = match current {
            Some(flag) => flag.spec.clone(),
            None => FeatureFlagSpec {
                mode: default.mode.clone(),
                percent: default.percent,
                override_: None,
            },
        };
        spec.override_ = Some(over.clone());
        Ok::<_, kube::Error>(spec)
    })
    .await
}

/// Removes the override of flag object `name`, whoever wrote it; `None` when the object does
/// not exist.
pub async fn clear_override(
    client: &kube::Client,
    name: &str,
) -> Result<Option<FeatureFlag>, kube::Error> {
    let api: Api<FeatureFlag> = Api::all(client.clone());
    if api.get_opt(name).await?.is_none() {
        return Ok(None);
    }
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"override": null}})),
    )
    .await
    .map(Some)
}

/// Body of `PUT /api/v1/flags/{type}/baseline`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineRequest {
    pub mode: String,
    pub percent: Option<u8>,
    pub reason: Option<String>,
}

/// A checked baseline: mode, percent and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Baseline {
    pub mode: FlagMode,
    pub percent: u8,
    pub reason: String,
}

/// Checks a baseline request (the same rules as an override's mode, percent and reason).
pub fn build_baseline(request: &BaselineRequest) -> Result<Baseline, String> {
    let checked = build_override(
        &OverrideRequest {
            mode: request.mode.clone(),
            percent: request.percent,
            ttl: None,
            reason: request.reason.clone(),
        },
        "",
        Timestamp::UNIX_EPOCH,
    )?;
    Ok(Baseline {
        mode: checked.mode,
        percent: checked.percent,
        reason: checked.reason.unwrap_or_default(),
    })
}

/// Why a baseline was not written.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error(
        "the baseline of flag {flag:?} comes from GitSync {owner} (label {label}): commit the change to its repository, or set an override"
    )]
    FromGit {
        flag: String,
        owner: String,
        label: &'static str,
    },
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Sets the baseline (`spec.mode`, `spec.percent`) of flag object `name`, creating it when
/// missing, in one server-side apply (`apply_spec`) that keeps the stored override; refused
/// for a flag a GitSync applied (the next sync would put Git's back). The precondition of the
/// apply makes the refusal hold even if a sync takes the flag over between the read and the
/// write.
pub async fn write_baseline(
    client: &kube::Client,
    name: &str,
    baseline: &Baseline,
) -> Result<FeatureFlag, BaselineError> {
    let label = crate::gitops::manifest::OWNER_LABEL;
    apply_spec(client, name, |current| {
        if let Some(owner) = current.and_then(|f| f.labels().get(label)) {
            return Err(BaselineError::FromGit {
                flag: name.to_string(),
                owner: owner.clone(),
                label,
            });
        }
        Ok(FeatureFlagSpec {
            mode: baseline.mode.clone(),
            percent: baseline.percent,
            override_: current.and_then(|f| f.spec.override_.clone()),
        })
    })
    .await
}

pub(super) async fn put_baseline(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let principal = state.principal(&headers).await?;
    let resource = parse_type(&kind)?;
    state.require(&principal, Permission::ManageFlags).await?;
    let request: BaselineRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid baseline: {e}")))?;
    let baseline = build_baseline(&request).map_err(ApiError::BadRequest)?;
    let name = state.flags().object_name(resource);
    let stored = match write_baseline(&state.client, &name, &baseline).await {
        Ok(stored) => stored,
        Err(BaselineError::Kube(error)) => return Err(error.into()),
        Err(refused) => return Err(ApiError::Conflict(refused.to_string())),
    };
    let note = format!(
        "{} set the baseline {} {}%: {}",
        principal.name, baseline.mode, baseline.percent, baseline.reason
    );
    info!(flag = %name, by = %principal.name, mode = %baseline.mode, percent = baseline.percent, "flag baseline set");
    record(&state, &stored, "BaselineSet", note).await;
    let effective = crate::ownership::effective(&stored.spec, Timestamp::now());
    Ok(Json(view(resource, &name, Some(&stored.spec), &effective)).into_response())
}

/// Records a flag change as an Event on the FeatureFlag; a failure is logged, not returned
/// (the change itself is done).
async fn record(state: &ApiState, flag: &FeatureFlag, reason: &str, note: String) {
    if let Err(error) =
        crate::ownership::audit::record(&state.client, flag, "streamspace-api", reason, &note).await
    {
        warn!(%error, "could not record the flag change as an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        mode: &str,
        percent: Option<u8>,
        ttl: Option<&str>,
        reason: Option<&str>,
    ) -> OverrideRequest {
        OverrideRequest {
            mode: mode.into(),
            percent,
            ttl: ttl.map(Into::into),
            reason: reason.map(Into::into),
        }
    }

    #[test]
    fn overrides_are_checked() {
        let now = Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let ok = build_override(
            &request("legacy", None, Some("2s"), Some(" rollback ")),
            "alice",
            now,
        );
        let ok = ok.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.mode, FlagMode::Legacy);
        assert_eq!(ok.percent, 100);
        assert_eq!(ok.reason.as_deref(), Some("rollback"));
        assert_eq!(ok.set_by.as_deref(), Some("alice"));
        assert_eq!(ok.expires_at.map(|t| t.0.as_second()), Some(1_700_000_002));
        let forever = build_override(&request("controller", Some(30), None, Some("x")), "a", now);
        assert_eq!(forever.map(|o| o.expires_at), Ok(None));

        for (bad, needle) in [
            (request("everything", None, None, Some("x")), "not one of"),
            (
                request("legacy", Some(101), None, Some("x")),
                "between 0 and 100",
            ),
            (request("legacy", None, Some("soon"), Some("x")), "ttl"),
            (
                request("legacy", None, Some("0s"), Some("x")),
                "at least 1s",
            ),
            (request("legacy", None, None, None), "reason is required"),
            (
                request("legacy", None, None, Some("  ")),
                "reason is required",
            ),
        ] {
            let error = build_override(&bad, "a", now).err().unwrap_or_default();
            assert!(error.contains(needle), "{error}");
        }
    }
}
