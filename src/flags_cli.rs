//! `flags`: read and change the ownership flags from the command line, through the API
//! (`--api-url`, bearer token from `STREAMSPACE_TOKEN`) or straight against the cluster
//! (`--kubeconfig`). Both ways write what the API's endpoints write (the same functions), and
//! print a table like kubectl's, or JSON / YAML with `-o`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use serde_json::{Value, json};

use crate::api::flags::{
    BaselineRequest, OverrideRequest, build_baseline, build_override, clear_override, view,
    write_baseline, write_override,
};
use crate::crd::FeatureFlag;
use crate::ownership::ResourceType;
use crate::ownership::index::FlagIndex;

#[derive(Args)]
pub struct FlagsArgs {
    /// Base URL of the API, such as http://127.0.0.1:8000 (the token comes from
    /// $STREAMSPACE_TOKEN).
    #[arg(long, env = "STREAMSPACE_API", global = true)]
    api_url: Option<String>,
    /// Bearer token for --api-url.
    #[arg(long, env = "STREAMSPACE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Work straight against this cluster instead of the API (wins over --api-url).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(flatten)]
    flags: crate::cli::FlagArgs,
    #[command(subcommand)]
    command: FlagsCommand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum FlagsCommand {
    /// Every resource type's flag.
    List,
    /// One resource type's flag.
    Get { resource: String },
    /// Set the break-glass override: wins over the baseline until it expires or is cleared.
    Override {
        resource: String,
        #[arg(long)]
        mode: String,
        #[arg(long)]
        percent: Option<u8>,
        /// How long it lasts (30s, 15m, 2h).
        #[arg(long)]
        ttl: String,
        /// Why (recorded in an Event with who set it).
        #[arg(long)]
        reason: String,
    },
    /// Remove the override: the baseline is in force again.
    Clear { resource: String },
    /// Set the baseline (refused for a flag that comes from a GitSync: commit to Git).
    SetBaseline {
        resource: String,
        #[arg(long)]
        mode: String,
        #[arg(long)]
        percent: Option<u8>,
        #[arg(long)]
        reason: String,
    },
}

/// Where the flags are read and written.
enum Target {
    Api {
        url: String,
        token: String,
    },
    Cluster {
        client: kube::Client,
        index: std::sync::Arc<FlagIndex>,
    },
}

/// Runs the command; the text to print.
pub async fn run(args: FlagsArgs) -> anyhow::Result<String> {
    let target = match (&args.api_url, &args.kubeconfig) {
        (Some(url), None) => Target::Api {
            url: url.trim_end_matches('/').to_string(),
            token: args
                .token
                .clone()
                .filter(|t| !t.is_empty())
                .context("--api-url needs a token: set STREAMSPACE_TOKEN (or --token)")?,
        },
        (_, kubeconfig) => Target::Cluster {
            client: crate::kube_client::client_from(kubeconfig.as_deref()).await?,
            index: args.flags.index(),
        },
    };
    let views = match args.command {
        FlagsCommand::List => target.list().await?,
        FlagsCommand::Get { resource } => vec![target.get(parse(&resource)?).await?],
        FlagsCommand::Override {
            resource,
            mode,
            percent,
            ttl,
            reason,
        } => {
            let request = OverrideRequest {
                mode,
                percent,
                ttl: Some(ttl),
                reason: Some(reason),
            };
            vec![target.set_override(parse(&resource)?, request).await?]
        }
        FlagsCommand::Clear { resource } => vec![target.clear(parse(&resource)?).await?],
        FlagsCommand::SetBaseline {
            resource,
            mode,
            percent,
            reason,
        } => {
            let request = BaselineRequest {
                mode,
                percent,
                reason: Some(reason),
            };
            vec![target.set_baseline(parse(&resource)?, request).await?]
        }
    };
    format(&views, args.output, Timestamp::now())
}

fn parse(text: &str) -> anyhow::Result<ResourceType> {
    ResourceType::parse(text).with_context(|| {
        format!("no flag {text:?} (known: sessions, idle, autostart, nodes, quota)")
    })
}

/// Who the cluster path records as having changed a flag.
fn local_user() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("{user} (flags CLI)")
}

impl Target {
    async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let Target::Api { url, token } = self else {
            anyhow::bail!("not an API target");
        };
        let full = format!("{url}/api/v1{path}");
        let reply = crate::api_client::request(method.clone(), &full, Some(token), body)
            .await
            .with_context(|| format!("{method} {full}"))?;
        let parsed: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        if !(200..300).contains(&reply.status) {
            let message = parsed
                .get("message")
                .or_else(|| parsed.get("error"))
                .and_then(Value::as_str)
                .map_or_else(|| reply.text(), str::to_string);
            anyhow::bail!("{method} {full}: {} {message}", reply.status);
        }
        Ok(parsed)
    }

    async fn list(&self) -> anyhow::Result<Vec<Value>> {
        match self {
            Target::Api { .. } => {
                let all = self.call(hyper::Method::GET, "/flags", None).await?;
                Ok(all
                    .get("flags")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default())
            }
            Target::Cluster { .. } => {
                let mut views = Vec::new();
                for resource in ResourceType::ALL {
                    views.push(self.get(resource).await?);
                }
                Ok(views)
            }
        }
    }

    async fn get(&self, resource: ResourceType) -> anyhow::Result<Value> {
        match self {
            Target::Api { .. } => {
                let path = format!("/flags/{}", resource.as_str());
                self.call(hyper::Method::GET, &path, None).await
            }
            Target::Cluster { client, index } => {
                let name = index.object_name(resource);
                let flag = Api::<FeatureFlag>::all(client.clone())
                    .get_opt(&name)
                    .await
                    .with_context(|| format!("reading FeatureFlag {name}"))?;
                Ok(cluster_view(index, resource, flag.as_ref()))
            }
        }
    }

    async fn set_override(
        &self,
        resource: ResourceType,
        request: OverrideRequest,
    ) -> anyhow::Result<Value> {
        match self {
            Target::Api { .. } => {
                let path = format!("/flags/{}/override", resource.as_str());
                let body = json!({
                    "mode": request.mode, "percent": request.percent,
                    "ttl": request.ttl, "reason": request.reason,
                });
                self.call(hyper::Method::PUT, &path, Some(&body)).await
            }
            Target::Cluster { client, index } => {
                let who = local_user();
                let over =
                    build_override(&request, &who, Timestamp::now()).map_err(anyhow::Error::msg)?;
                let name = index.object_name(resource);
                let current = self.get(resource).await?;
                let default = crate::ownership::Effective::default_for(
                    current.get("mode").and_then(Value::as_str).map_or(
                        index.settings().default_mode.clone(),
                        crate::crd::FlagMode::from,
                    ),
                );
                let stored = write_override(client, &name, &over, &default)
                    .await
                    .with_context(|| format!("writing the override of {name}"))?;
                let note = format!(
                    "{who} set override {} {}% until {}: {}",
                    over.mode,
                    over.percent,
                    over.expires_at
                        .as_ref()
                        .map_or("cleared".into(), |t| t.0.to_string()),
                    over.reason.as_deref().unwrap_or_default()
                );
                record(client, &stored, "OverrideSet", &note).await;
                Ok(cluster_view(index, resource, Some(&stored)))
            }
        }
    }

    async fn clear(&self, resource: ResourceType) -> anyhow::Result<Value> {
        match self {
            Target::Api { .. } => {
                let path = format!("/flags/{}/override", resource.as_str());
                self.call(hyper::Method::DELETE, &path, None).await
            }
            Target::Cluster { client, index } => {
                let name = index.object_name(resource);
                let stored = clear_override(client, &name)
                    .await
                    .with_context(|| format!("clearing the override of {name}"))?
                    .with_context(|| format!("flag object {name:?} does not exist"))?;
                let note = format!("{} cleared the override", local_user());
                record(client, &stored, "OverrideCleared", &note).await;
                Ok(cluster_view(index, resource, Some(&stored)))
            }
        }
    }

    async fn set_baseline(
        &self,
        resource: ResourceType,
        request: BaselineRequest,
    ) -> anyhow::Result<Value> {
        match self {
            Target::Api { .. } => {
                let path = format!("/flags/{}/baseline", resource.as_str());
                let body = json!({
                    "mode": request.mode, "percent": request.percent, "reason": request.reason,
                });
                self.call(hyper::Method::PUT, &path, Some(&body)).await
            }
            Target::Cluster { client, index } => {
                let baseline = build_baseline(&request).map_err(anyhow::Error::msg)?;
                let name = index.object_name(resource);
                let stored = write_baseline(client, &name, &baseline).await?;
                let note = format!(
                    "{} set the baseline {} {}%: {}",
                    local_user(),
                    baseline.mode,
                    baseline.percent,
                    baseline.reason
                );
                record(client, &stored, "BaselineSet", &note).await;
                Ok(cluster_view(index, resource, Some(&stored)))
            }
        }
    }
}

/// The API's view of a flag read straight from the cluster.
fn cluster_view(index: &FlagIndex, resource: ResourceType, flag: Option<&FeatureFlag>) -> Value {
    let spec = flag.map(|f| &f.spec);
    let effective = match spec {
        Some(spec) => crate::ownership::effective(spec, Timestamp::now()),
        None => crate::ownership::Effective::default_for(index.settings().default_mode.clone()),
    };
    view(resource, &index.object_name(resource), spec, &effective)
}

async fn record(client: &kube::Client, flag: &FeatureFlag, reason: &str, note: &str) {
    if let Err(error) =
        crate::ownership::audit::record(client, flag, "streamspace-flags-cli", reason, note).await
    {
        eprintln!("warning: could not record the change as an Event: {error}");
    }
}

/// The views as a table, JSON or YAML. `now` tells an expired override from a live one.
pub fn format(views: &[Value], output: Output, now: Timestamp) -> anyhow::Result<String> {
    match output {
        Output::Json => {
            let value = match views {
                [one] => one.clone(),
                many => json!({"flags": many}),
            };
            Ok(serde_json::to_string_pretty(&value)? + "\n")
        }
        Output::Yaml => {
            let value = match views {
                [one] => one.clone(),
                many => json!({"flags": many}),
            };
            serde_saphyr::to_string(&value).context("writing YAML")
        }
        Output::Table => Ok(table(views, now)),
    }
}

fn table(views: &[Value], now: Timestamp) -> String {
    let text = |v: &Value, key: &str| -> String {
        match v.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        }
    };
    let mut rows = vec![[
        "TYPE".to_string(),
        "MODE".into(),
        "PERCENT".into(),
        "SOURCE".into(),
        "BASELINE".into(),
        "OVERRIDE".into(),
        "EXPIRES".into(),
        "SET BY".into(),
        "REASON".into(),
    ]];
    for view in views {
        let baseline = view
            .get("baseline")
            .filter(|b| !b.is_null())
            .map_or("<none>".to_string(), |b| {
                format!("{}/{}", text(b, "mode"), text(b, "percent"))
            });
        let over = view.get("override").filter(|o| !o.is_null());
        let (over_text, expires, by, reason) = match over {
            None => (
                "<none>".to_string(),
                String::new(),
                String::new(),
                String::new(),
            ),
            Some(o) => {
                let expires = text(o, "expiresAt");
                let expired = expires.parse::<Timestamp>().is_ok_and(|at| at <= now);
                let mut label = format!("{}/{}", text(o, "mode"), text(o, "percent"));
                if expired {
                    label += " (expired)";
                }
                let expires = if expires.is_empty() {
                    "never".into()
                } else {
                    expires
                };
                (label, expires, text(o, "setBy"), text(o, "reason"))
            }
        };
        rows.push([
            text(view, "type"),
            text(view, "mode"),
            text(view, "percent"),
            text(view, "source"),
            baseline,
            over_text,
            expires,
            by,
            reason,
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out += line.join("   ").trim_end();
        out += "\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(expires: Option<&str>) -> Value {
        json!({
            "type": "sessions", "name": "sessions", "exists": true,
            "mode": "legacy", "percent": 100, "source": "override",
            "expiresAt": expires,
            "baseline": {"mode": "controller", "percent": 30},
            "override": {"mode": "legacy", "percent": 100, "expiresAt": expires,
                          "reason": "incident 7", "setBy": "alice"},
        })
    }

    #[test]
    fn the_table_reads_like_kubectl_and_marks_expired_overrides() {
        let now: Timestamp = "2026-12-01T12:00:00Z".parse().expect("time");
        let live = table(&[sample(Some("2026-12-01T12:30:00Z"))], now);
        let lines: Vec<&str> = live.lines().collect();
        assert!(
            lines[0].starts_with("TYPE       MODE     PERCENT   SOURCE"),
            "{live}"
        );
        assert!(lines[1].contains("controller/30") && lines[1].contains("legacy/100   "));
        assert!(lines[1].ends_with("alice    incident 7"), "{live}");
        let expired = table(&[sample(Some("2026-12-01T11:00:00Z"))], now);
        assert!(expired.contains("legacy/100 (expired)"), "{expired}");
        let none = table(
            &[json!({"type": "idle", "mode": "controller", "percent": 100,
                     "source": "default", "baseline": null, "override": null})],
            now,
        );
        assert!(
            none.lines().nth(1).is_some_and(|l| l.contains("<none>")),
            "{none}"
        );
    }

    #[test]
    fn json_and_yaml_print_one_flag_as_itself_and_many_as_a_list() {
        let now = Timestamp::UNIX_EPOCH;
        let one = format(&[sample(None)], Output::Json, now).expect("json");
        let parsed: Value = serde_json::from_str(&one).expect("parses");
        assert_eq!(parsed["type"], "sessions");
        let many = format(&[sample(None), sample(None)], Output::Json, now).expect("json");
        let parsed: Value = serde_json::from_str(&many).expect("parses");
        assert_eq!(parsed["flags"].as_array().map(Vec::len), Some(2));
        let yaml = format(&[sample(None)], Output::Yaml, now).expect("yaml");
        assert!(yaml.contains("type: sessions"), "{yaml}");
    }
}
