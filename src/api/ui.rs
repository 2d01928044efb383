//! Read endpoints the StreamSpace UI calls besides the session list:
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/api/v1/templates[?category=]` | `{templates, total}` from the Template watch cache |
//! | GET | `/api/v1/templates/{name}` | one Template |
//! | GET | `/api/v1/quota[?user=]` | the caller's (or, for an operator, `user`'s) limits and usage |
//!
//! Templates are a catalogue every authenticated caller may read. The quota is computed by the
//! admission webhook's own code ([`crate::quota`]): the same limits from the
//! QuotaPolicy cache, the same usage from the Session cache and the live reservations of the
//! user's ledger.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::auth::Permission;
use super::handlers::{ApiError, Reply};
use super::sessions::request::requested_amount;
use super::{ApiState, valid_name};
use crate::crd::Template;
use crate::quantity::Milli;
use crate::quota::ledger::{self, SessionKey};
use crate::quota::{self, Limits, Usage};

/// Longest `category` filter accepted.
const MAX_CATEGORY: usize = 253;

// ---------------------------------------------------------------------------------------------
// Templates (pure)

/// One Template as the UI's catalogue shows it.
pub fn template_item(template: &Template) -> Value {
    let spec = &template.spec;
    let resources = spec.default_resources.as_ref();
    let vnc = spec.effective_vnc();
    let status = template.status.as_ref();
    json!({
        "name": template.name_any(),
        "namespace": template.namespace(),
        "displayName": spec.display_name,
        "description": spec.description.clone().unwrap_or_default(),
        "category": spec.category.clone().unwrap_or_default(),
        "icon": spec.icon.clone().unwrap_or_default(),
        "baseImage": spec.base_image,
        "defaultResources": {
            "memory": requested_amount(resources, "memory"),
            "cpu": requested_amount(resources, "cpu"),
        },
        "ports": spec.ports,
        "capabilities": spec.capabilities,
        "tags": spec.tags,
        "vnc": {
            "enabled": vnc.is_some_and(|v| v.enabled),
            "port": spec.vnc_port(),
        },
        "valid": status.is_some_and(|s| s.valid),
        "message": status.map(|s| s.message.clone()).unwrap_or_default(),
        "createdAt": template.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
    })
}

/// The templates of `category` (case-insensitive; every template without one), sorted by
/// name.
pub fn templates_of(templates: &[Arc<Template>], category: Option<&str>) -> Vec<Value> {
    let mut chosen: Vec<&Arc<Template>> = templates
        .iter()
        .filter(|t| {
            category.is_none_or(|wanted| {
                t.spec
                    .category
                    .as_deref()
                    .is_some_and(|c| c.eq_ignore_ascii_case(wanted))
            })
        })
        .collect();
    chosen.sort_by_key(|t| t.name_any());
    chosen.into_iter().map(|t| template_item(t)).collect()
}

// ---------------------------------------------------------------------------------------------
// Quota (pure)

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaLimitsView {
    pub max_sessions: i64,
    pub max_cpu_per_session: String,
    pub max_memory_per_session: String,
    pub max_cpu: String,
    pub max_memory: String,
    pub max_gpu: i64,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaAmounts {
    pub sessions: i64,
    pub cpu: String,
    pub memory: String,
    pub gpu: i64,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaView {
    pub user: String,
    pub limits: QuotaLimitsView,
    pub usage: QuotaAmounts,
    /// What is left before a further session is refused (never below zero).
    pub remaining: QuotaAmounts,
}

fn gpus(value: Milli) -> i64 {
    i64::try_from(value.0.div_euclid(1000)).unwrap_or(i64::MAX)
}

fn left(limit: Milli, used: Milli) -> Milli {
    Milli((limit.0 - used.0).max(0))
}

/// The report of `user`'s `limits` and `usage`, in the units of the quota's messages
/// (millicores, MiB rounded up, whole GPUs).
pub fn quota_view(user: &str, limits: &Limits, usage: &Usage) -> QuotaView {
    QuotaView {
        user: user.to_string(),
        limits: QuotaLimitsView {
            max_sessions: limits.max_sessions,
            max_cpu_per_session: quota::cpu(limits.max_cpu_per_session),
            max_memory_per_session: quota::mib(limits.max_memory_per_session),
            max_cpu: quota::cpu(limits.max_cpu),
            max_memory: quota::mib(limits.max_memory),
            max_gpu: limits.max_gpu,
        },
        usage: QuotaAmounts {
            sessions: usage.sessions,
            cpu: quota::cpu(usage.cpu),
            memory: quota::mib(usage.memory),
            gpu: gpus(usage.gpu),
        },
        remaining: QuotaAmounts {
            sessions: (limits.max_sessions - usage.sessions).max(0),
            cpu: quota::cpu(left(limits.max_cpu, usage.cpu)),
            memory: quota::mib(left(limits.max_memory, usage.memory)),
            gpu: (limits.max_gpu - gpus(usage.gpu)).max(0),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

#[derive(Deserialize)]
pub(super) struct TemplateQuery {
    category: Option<String>,
}

fn templates_loading() -> ApiError {
    ApiError::Unavailable("the template cache is still loading; retry shortly".into())
}

pub(super) async fn list_templates(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(query): Query<TemplateQuery>,
) -> Response {
    let reply: Reply = async {
        state.principal(&headers).await?;
        let category = query.category.filter(|c| !c.is_empty());
        if let Some(category) = &category
            && (category.len() > MAX_CATEGORY || category.chars().any(char::is_control))
        {
            return Err(ApiError::BadRequest(format!(
                "category must be at most {MAX_CATEGORY} printable characters"
            )));
        }
        if !state.templates_loaded.load(Ordering::Relaxed) {
            return Err(templates_loading());
        }
        let templates = templates_of(&state.templates.state(), category.as_deref());
        Ok(Json(json!({"total": templates.len(), "templates": templates})).into_response())
    }
    .await;
    reply.into_response()
}

pub(super) async fn get_template(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let reply: Reply = async {
        state.principal(&headers).await?;
        if !valid_name(&name) {
            return Err(ApiError::BadRequest(format!(
                "{name:?} is not a valid template name (lowercase letters, digits, '-' and '.')"
            )));
        }
        if !state.templates_loaded.load(Ordering::Relaxed) {
            return Err(templates_loading());
        }
        let template = state
            .templates
            .get(&ObjectRef::new(&name).within(&state.namespace))
            .ok_or_else(|| ApiError::Missing(format!("template {name:?} not found")))?;
        Ok(Json(template_item(&template)).into_response())
    }
    .await;
    reply.into_response()
}

#[derive(Deserialize)]
pub(super) struct QuotaQuery {
    user: Option<String>,
}

pub(super) async fn quota(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(query): Query<QuotaQuery>,
) -> Response {
    let reply: Reply = async {
        let principal = state.principal(&headers).await?;
        let user = match query.user.filter(|u| !u.is_empty()) {
            None => principal.name.clone(),
            Some(user) if user == principal.name => user,
            Some(user) => {
                if !valid_name(&user) {
                    return Err(ApiError::BadRequest(format!(
                        "user {user:?} is not a valid user name"
                    )));
                }
                state
                    .require(&principal, Permission::OperateSessions("get"))
                    .await?;
                user
            }
        };
        let shared = &state.session_api;
        if !(shared.quota_caches_loaded() && state.sessions_loaded.load(Ordering::Relaxed)) {
            return Err(ApiError::Unavailable(
                "the quota caches are still loading; retry shortly".into(),
            ));
        }
        let limits = shared.limits_for(&user);
        let reservations = shared
            .live_reservations(&user)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let refs: Vec<&ledger::Reservation> = reservations.iter().collect();
        let sessions = state.sessions.state();
        // No session is being admitted: the empty name excludes none.
        let nothing = SessionKey::new(&state.namespace, "");
        let usage = ledger::cached_usage(
            &user,
            &nothing,
            sessions.iter().map(AsRef::as_ref),
            &refs,
            Timestamp::now(),
        );
        Ok(Json(quota_view(&user, &limits, &usage)).into_response())
    }
    .await;
    reply.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str, category: Option<&str>) -> Arc<Template> {
        let mut spec = json!({"displayName": name, "baseImage": "img",
            "defaultResources": {"memory": "2Gi", "cpu": "1000m"},
            "vnc": {"enabled": true, "port": 3000}});
        if let Some(category) = category {
            spec["category"] = json!(category);
        }
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "stream.space/v1alpha1", "kind": "Template",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": spec,
                "status": {"valid": true, "message": "Template is valid and ready to use"},
            }))
            .expect("template"),
        )
    }

    #[test]
    fn templates_filter_by_category_case_insensitively() {
        let all = [
            template("gimp", Some("Design")),
            template("firefox", Some("Browsers")),
            template("chrome", Some("browsers")),
            template("bare", None),
        ];
        let names = |items: Vec<Value>| {
            items
                .iter()
                .map(|i| i["name"].as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(templates_of(&all, None)),
            ["bare", "chrome", "firefox", "gimp"]
        );
        assert_eq!(
            names(templates_of(&all, Some("BROWSERS"))),
            ["chrome", "firefox"]
        );
        assert!(templates_of(&all, Some("games")).is_empty());
        let item = template_item(&all[1]);
        assert_eq!(
            item["defaultResources"],
            json!({"memory": "2Gi", "cpu": "1000m"})
        );
        assert_eq!(item["vnc"], json!({"enabled": true, "port": 3000}));
        assert_eq!(item["valid"], true);
    }

    #[test]
    fn quota_reports_limits_usage_and_what_is_left() {
        let usage = Usage {
            sessions: 2,
            cpu: Milli(3000),
            memory: Milli(6 * 1024 * 1024 * 1024 * 1000),
            gpu: Milli::ZERO,
        };
        let view = quota_view("alice", &Limits::BUILT_IN, &usage);
        let json = serde_json::to_value(&view).expect("json");
        assert_eq!(
            json,
            json!({
                "user": "alice",
                "limits": {"maxSessions": 5, "maxCpuPerSession": "2000m",
                    "maxMemoryPerSession": "4096Mi", "maxCpu": "4000m",
                    "maxMemory": "8192Mi", "maxGpu": 0},
                "usage": {"sessions": 2, "cpu": "3000m", "memory": "6144Mi", "gpu": 0},
                "remaining": {"sessions": 3, "cpu": "1000m", "memory": "2048Mi", "gpu": 0},
            })
        );
        let over = Usage {
            sessions: 9,
            cpu: Milli(9000),
            ..usage
        };
        let view = quota_view("alice", &Limits::BUILT_IN, &over);
        assert_eq!(view.remaining.sessions, 0);
        assert_eq!(view.remaining.cpu, "0m");
    }
}
