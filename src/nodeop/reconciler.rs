//! The I/O shell around the node operation rules: read the operation, its siblings (from the
//! watch cache), the node and its pods; take one step (edit the node, evict the next batch);
//! write status only when it changed; requeue instead of waiting.
//!
//! Steps of one operation: `Pending` while an older operation of the same node is unfinished;
//! `Running` while the node edits and the drain progress; `Succeeded` or `Failed` at the end.
//! A finished operation that cordons keeps the node cordoned until it is deleted; the finalizer
//! then uncordons the node if it was schedulable before.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::edits::{self, NodeEdit, NodeView};
use super::outcome::{self, Attempt, Attempted, Outcome, Verdict, phase_label, set};
use super::plan::{self, Budget, PodFacts};
use super::policy::{self, Eviction};
use super::shadow;
use super::shared::{NodeOpShared, siblings};
use super::state::{self, Sibling};
use super::{Error, Result, is_not_found};
use crate::api_status::Attempts;
use crate::api_status::KubeFailure;
use crate::context::{Context, FIELD_MANAGER};
use crate::crd::node_operation::{NodeOperation, NodeOperationPhase, NodeOperationStatus};
use crate::ownership::handoff::Record;
use crate::ownership::shadow::Subject;
use crate::ownership::{self, Gate, ResourceType, Skip};

pub const CONTROLLER: &str = "nodeoperation";
/// Held while the operation may still need to uncordon its node.
pub const FINALIZER: &str = "stream.space/node-operation";
/// Condition that summarises the operation.
pub use super::outcome::CONDITION;

/// How soon a waiting operation checks again (sibling changes also wake it).
const WAITING_RECHECK: Duration = Duration::from_secs(5);
/// Attempts of a node write that keeps conflicting with other writers.
const CONFLICT_ATTEMPTS: u32 = 5;

/// The operations of `node`, to wake when the node changes.
pub fn operations_of_node(
    store: &Store<NodeOperation>,
    node: &str,
) -> Vec<ObjectRef<NodeOperation>> {
    store
        .state()
        .iter()
        .filter(|o| o.spec.node_name == node)
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

pub async fn reconcile(op: Arc<NodeOperation>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcilers.start(CONTROLLER);
    crate::caches::wait_loaded(&ctx.caches_loaded).await?;
    let Some(shared) = ctx.node_operations.as_ref() else {
        return Ok(Action::await_change());
    };
    let siblings = siblings(&shared.store, &op);
    let now = Timestamp::now();
    // Nodes are cluster-scoped: the ownership key is ("", node name).
    let gate = ownership::controller_gate(
        &ctx.flags,
        &ctx.metrics.ownership,
        ResourceType::Nodes,
        ("", &op.spec.node_name),
        &Record::from_annotations(op.annotations()),
        now,
    );
    let name = op.name_any();
    let action = if op.meta().deletion_timestamp.is_some() {
        let action = cleanup(&ctx, &op, &siblings, gate.acts()).await?;
        shared.wake_siblings(&op);
        ctx.shadow.clear(ResourceType::Nodes, &name);
        action
    } else {
        match gate {
            // Claim too: the legacy API never writes NodeOperations, so there is nothing to
            // claim from; the node writes carry the node's resourceVersion.
            Gate::Act | Gate::Claim => {
                ctx.shadow.clear(ResourceType::Nodes, &name);
                if !op.finalizers().iter().any(|f| f == FINALIZER) {
                    add_finalizer(&ctx, &op).await?;
                }
                let step = Stepper {
                    ctx: &ctx,
                    shared,
                    op: &op,
                    siblings: &siblings,
                    now: Timestamp::now(),
                };
                step.run().await?
            }
            Gate::Shadow => not_owned(&ctx, &op, true, now).await?,
            Gate::Skip(Skip::NotOurs) => not_owned(&ctx, &op, false, now).await?,
            Gate::Skip(skip) => {
                ownership::gate::skipped(&ctx.shadow, (ResourceType::Nodes, &name), skip, now)
            }
        }
    };
    ctx.backoff.succeeded(&backoff_key(&op));
    Ok(action)
}

pub fn error_policy(op: Arc<NodeOperation>, error: &Error, ctx: Arc<Context>) -> Action {
    let metrics = &ctx.metrics.reconcilers;
    let delay = ctx
        .backoff
        .failed_with(metrics, CONTROLLER, backoff_key(&op), error);
    warn!(operation = %op.name_any(), %error, retry_in = ?delay, "node operation reconcile failed");
    Action::requeue(delay)
}

fn backoff_key(op: &NodeOperation) -> String {
    format!("nodeoperation/{}", op.name_any())
}

fn api_error(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Api(KubeFailure::new(action, source))
}

/// Whether this operation ever cordoned its node: the prior state is recorded before the
/// first cordon, so an operation without it (never started, or failed validation) holds no
/// cordon of its own to keep or release.
fn cordoned_once(op: &NodeOperation) -> bool {
    op.status
        .as_ref()
        .is_some_and(|s| s.prior_unschedulable.is_some())
}

/// Uncordons (when this operation cordoned a schedulable node, no other holds it, and the
/// controller owns the node), then releases the object. A node handed to the legacy side keeps
/// its cordon: the legacy API decides about it now.
async fn cleanup(
    ctx: &Context,
    op: &NodeOperation,
    siblings: &[Sibling],
    ours: bool,
) -> Result<Action> {
    if !op.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    if !ours && cordoned_once(op) {
        info!(node = %op.spec.node_name, operation = %op.name_any(), "node not uncordoned: the legacy side owns it (flag nodes)");
    }
    if ours && cordoned_once(op) && state::release_cordon_on_delete(op.spec.cordons(), siblings) {
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        match nodes.get_opt(&op.spec.node_name).await {
            Ok(Some(node)) => {
                let before = NodeView::of(&node);
                edit_node(ctx, &nodes, node, edits::uncordon_edit).await?;
                if before.cordoned_by_us {
                    info!(node = %op.spec.node_name, operation = %op.name_any(), "node uncordoned");
                }
            }
            Ok(None) => {}
            Err(source) => return Err(api_error("reading the node")(source)),
        }
    }
    let remaining: Vec<String> = op
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    write_finalizers(ctx, op, remaining).await?;
    Ok(Action::await_change())
}

async fn add_finalizer(ctx: &Context, op: &NodeOperation) -> Result<()> {
    let mut finalizers = op.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    write_finalizers(ctx, op, finalizers).await
}

/// Replaces the finalizer list, guarded by the resource version (a conflict retries).
async fn write_finalizers(
    ctx: &Context,
    op: &NodeOperation,
    finalizers: Vec<String>,
) -> Result<()> {
    ctx.metrics.reconcilers.write(CONTROLLER, "nodeoperation");
    let patch = serde_json::json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": op.resource_version(),
    }});
    let api: Api<NodeOperation> = Api::all(ctx.client.clone());
    match api
        .patch(
            &op.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(source) => Err(api_error("writing finalizers")(source)),
    }
}

/// Applies the edits computed by `edit` to the freshest node, re-reading and recomputing on
/// every conflict.
async fn edit_node(
    ctx: &Context,
    nodes: &Api<Node>,
    node: Node,
    edit: impl Fn(&NodeView) -> NodeEdit,
) -> Result<Node> {
    let name = node.name_any();
    let mut node = node;
    let stale = |e: &Error| matches!(e, Error::Api(failure) if failure.is_conflict());
    let give_up = |_| Error::TooManyConflicts(CONFLICT_ATTEMPTS);
    let mut attempts = Attempts::new(CONFLICT_ATTEMPTS);
    loop {
        let result = async {
            if attempts.made() > 0 {
                node = nodes
                    .get(&name)
                    .await
                    .map_err(api_error("re-reading the node after a conflict"))?;
            }
            let change = edit(&NodeView::of(&node));
            if change.is_empty() {
                return Ok(std::mem::take(&mut node));
            }
            ctx.metrics.reconcilers.write(CONTROLLER, "node");
            let patch = change.merge_patch(node.resource_version().as_deref());
            nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(api_error("editing the node"))
        }
        .await;
        if let Some(done) = attempts.settle(result, stale, give_up) {
            return done;
        }
    }
}

/// One pass over one live operation.
struct Stepper<'a> {
    ctx: &'a Context,
    shared: &'a NodeOpShared,
    op: &'a NodeOperation,
    siblings: &'a [Sibling],
    now: Timestamp,
}

impl Stepper<'_> {
    async fn run(&self) -> Result<Action> {
        let before = self.op.status.clone().unwrap_or_default();
        let outcome = self.step(before.clone()).await?;
        self.report(&before, outcome.status).await?;
        for (type_, reason, note) in outcome.events {
            self.publish(type_, reason, note).await;
        }
        Ok(match outcome.requeue {
            Some(delay) => Action::requeue(delay),
            None => Action::await_change(),
        })
    }

    async fn step(&self, mut status: NodeOperationStatus) -> Result<Outcome> {
        let spec = &self.op.spec;
        let phase = status.phase.clone();
        if phase.as_ref().is_some_and(NodeOperationPhase::is_finished) {
            return self.hold(status).await;
        }
        status.observed_generation = self.op.meta().generation;
        if let Err(message) = state::validate(spec) {
            return Ok(self.finish(status, false, "InvalidSpec", message));
        }
        if let Some(first) = state::waits_for(
            &self.op.name_any(),
            self.op.meta().creation_timestamp.as_ref().map(|t| t.0),
            self.siblings,
        ) {
            let message = format!(
                "waiting for NodeOperation {} on node {} to finish (one operation per node at a time)",
                first.name, spec.node_name
            );
            set(
                &mut status,
                NodeOperationPhase::Pending,
                "WaitingForOperation",
                message,
                self.now,
            );
            return Ok(Outcome {
                status,
                requeue: Some(WAITING_RECHECK),
                events: vec![],
            });
        }
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        let Some(node) = nodes
            .get_opt(&spec.node_name)
            .await
            .map_err(api_error("reading the node"))?
        else {
            let message = format!("node {} does not exist", spec.node_name);
            return Ok(self.finish(status, false, "NodeNotFound", message));
        };
        let mut events = Vec::new();
        if phase != Some(NodeOperationPhase::Running) {
            status.start_time = Some(Time(self.now));
            events.push((
                EventType::Normal,
                "Started",
                outcome::describe(&self.op.spec),
            ));
        }
        if spec.cordons() && status.prior_unschedulable.is_none() {
            // Recorded before cordoning, so a crash in between cannot lose it.
            let view = NodeView::of(&node);
            status.prior_unschedulable = Some(state::prior_unschedulable(
                view.unschedulable,
                view.cordoned_by_us,
            ));
            set(
                &mut status,
                NodeOperationPhase::Running,
                "Started",
                outcome::describe(&self.op.spec),
                self.now,
            );
            self.write_status(&status).await?;
        }
        edit_node(self.ctx, &nodes, node, |view| {
            edits::node_edit(
                view,
                spec.labels.as_ref(),
                spec.taints.as_ref(),
                spec.cordons(),
            )
        })
        .await?;
        let mut outcome = match &spec.drain {
            Some(_) => self.drain(status).await?,
            None => {
                let message = format!("node {} edited", spec.node_name);
                self.finish(status, true, "Succeeded", message)
            }
        };
        events.append(&mut outcome.events);
        outcome.events = events;
        Ok(outcome)
    }

    /// A finished operation keeps its cordon and counts down its time to live. Its first pass
    /// here follows the watch event of its final status, so the cache already shows it
    /// finished: the right moment to wake an operation waiting for it.
    async fn hold(&self, status: NodeOperationStatus) -> Result<Outcome> {
        self.shared.wake_siblings(self.op);
        if self.op.spec.cordons() && cordoned_once(self.op) {
            let nodes: Api<Node> = Api::all(self.ctx.client.clone());
            if let Some(node) = nodes
                .get_opt(&self.op.spec.node_name)
                .await
                .map_err(api_error("reading the node"))?
            {
                edit_node(self.ctx, &nodes, node, |view| {
                    edits::node_edit(view, None, None, true)
                })
                .await?;
            }
        }
        let completion = status.completion_time.as_ref().map(|t| t.0);
        let left = state::ttl_left(
            completion,
            self.op.spec.ttl_seconds_after_finished,
            self.now,
        );
        if left == Some(Duration::ZERO) {
            let api: Api<NodeOperation> = Api::all(self.ctx.client.clone());
            self.ctx
                .metrics
                .reconcilers
                .write(CONTROLLER, "nodeoperation");
            match api
                .delete(&self.op.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => info!(operation = %self.op.name_any(), "time to live expired; deleted"),
                Err(e) if is_not_found(&e) => {}
                Err(source) => return Err(api_error("deleting an expired operation")(source)),
            }
            return Ok(Outcome {
                status,
                requeue: None,
                events: vec![],
            });
        }
        Ok(Outcome {
            status,
            requeue: left,
            events: vec![],
        })
    }

    /// One drain pass: list the node's pods, plan, evict the next batch (at most `concurrency`
    /// evictions in flight), and report progress; what it all comes to is decided by
    /// [`outcome::drain_verdict`] and [`outcome::drain_progress`].
    async fn drain(&self, status: NodeOperationStatus) -> Result<Outcome> {
        let spec = &self.op.spec;
        let options = spec.drain.clone().unwrap_or_default();
        let pods: Api<Pod> = Api::all(self.ctx.client.clone());
        let listed = pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", spec.node_name)))
            .await
            .map_err(api_error("listing the node's pods"))?;
        let facts: Vec<PodFacts> = listed.items.iter().map(PodFacts::from_pod).collect();
        let blocked_before: BTreeSet<String> = status
            .drain
            .iter()
            .flat_map(|d| d.blocked.iter().map(|b| b.pod.clone()))
            .collect();
        let plan = plan::plan(&facts, &options, &blocked_before);
        let status = match outcome::drain_verdict(spec, &options, status, &plan, self.now) {
            Verdict::Finished(finished) => return Ok(finished),
            Verdict::Evict(status) => status,
        };
        let results: Vec<(PodFacts, Eviction)> =
            futures::stream::iter(plan.evict_now.iter().cloned())
                .map(|pod| async move {
                    let result = policy::evict(
                        &self.shared.eviction_client,
                        &self.shared.policy,
                        &pod,
                        options.grace_period_seconds,
                    )
                    .await;
                    (pod, result)
                })
                .buffer_unordered(options.concurrency())
                .collect()
                .await;
        let attempts = self.attempts(results).await;
        Ok(outcome::drain_progress(
            spec, status, &plan, attempts, self.now,
        ))
    }

    /// Counts the evictions of a pass and looks up what their outcome reports: the budget
    /// that blocks a pod, and whether its Event is due.
    async fn attempts(&self, results: Vec<(PodFacts, Eviction)>) -> Vec<Attempt> {
        let metrics = &self.ctx.metrics;
        let mut budgets: HashMap<String, Vec<Budget>> = HashMap::new();
        let mut attempts = Vec::with_capacity(results.len());
        for (pod, result) in results {
            let result = match result {
                Eviction::Accepted => {
                    metrics.node_operations.evictions.inc();
                    metrics.reconcilers.write(CONTROLLER, "eviction");
                    Attempted::Evicted
                }
                Eviction::Gone => Attempted::Gone,
                Eviction::Blocked(message) => {
                    metrics.node_operations.blocked_evictions.inc();
                    let budget = self.budget_of(&pod, &mut budgets).await;
                    let key = format!("{}/{}", self.op.name_any(), pod.key());
                    Attempted::Blocked {
                        message,
                        budget,
                        event_due: self.shared.blocked_event_due(key),
                    }
                }
                Eviction::Failed(message) => Attempted::Failed(message),
            };
            attempts.push(Attempt {
                pod: pod.key(),
                result,
            });
        }
        attempts
    }

    /// `namespace/name` of the budget that covers the pod, reading each namespace's budgets once
    /// per pass.
    async fn budget_of(
        &self,
        pod: &PodFacts,
        cache: &mut HashMap<String, Vec<Budget>>,
    ) -> Option<String> {
        if !cache.contains_key(&pod.namespace) {
            let read = policy::budgets(&self.ctx.client, &self.shared.policy, &pod.namespace).await;
            let list = read.unwrap_or_else(|error| {
                warn!(namespace = %pod.namespace, %error, "could not read PodDisruptionBudgets");
                Vec::new()
            });
            cache.insert(pod.namespace.clone(), list);
        }
        let budgets = cache.get(&pod.namespace)?;
        plan::budget_for(pod, budgets).map(|b| format!("{}/{}", b.namespace, b.name))
    }

    fn finish(
        &self,
        status: NodeOperationStatus,
        succeeded: bool,
        reason: &'static str,
        message: String,
    ) -> Outcome {
        outcome::finish(&self.op.spec, status, succeeded, reason, message, self.now)
    }

    /// Writes status when it changed and counts phase transitions.
    async fn report(
        &self,
        before: &NodeOperationStatus,
        status: NodeOperationStatus,
    ) -> Result<()> {
        if &status == before {
            return Ok(());
        }
        self.write_status(&status).await?;
        if status.phase != before.phase
            && let Some(phase) = &status.phase
        {
            let metrics = &self.ctx.metrics.node_operations;
            metrics.entered(phase_label(phase));
            info!(operation = %self.op.name_any(), node = %self.op.spec.node_name, %phase, "node operation phase changed");
            if phase.is_finished()
                && self.op.spec.drain.is_some()
                && let Some(start) = &status.start_time
            {
                metrics
                    .drain_duration
                    .observe(state::elapsed(start.0, self.now).as_secs_f64());
            }
        }
        Ok(())
    }

    async fn write_status(&self, status: &NodeOperationStatus) -> Result<()> {
        write_status(self.ctx, self.op, status).await
    }

    async fn publish(&self, type_: EventType, reason: &str, note: String) {
        publish(self.ctx, self.op, type_, reason, note).await;
    }
}

async fn write_status(
    ctx: &Context,
    op: &NodeOperation,
    status: &NodeOperationStatus,
) -> Result<()> {
    ctx.metrics
        .reconcilers
        .write(CONTROLLER, "nodeoperation_status");
    let body = serde_json::json!({
        "apiVersion": "stream.space/v1alpha1",
        "kind": "NodeOperation",
        "status": status,
    });
    let api: Api<NodeOperation> = Api::all(ctx.client.clone());
    api.patch_status(
        &op.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(|_| ())
    .map_err(api_error("writing node operation status"))
}

async fn publish(ctx: &Context, op: &NodeOperation, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "NodeOperation".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &event_reference(op)).await {
        warn!(%error, "could not publish node operation event");
    }
}

/// Where the operation's Events go. Events of cluster-scoped objects live in `default`;
/// Kubernetes 1.20 insists that the reference names the event's namespace too.
fn event_reference(op: &NodeOperation) -> ObjectReference {
    let mut reference = op.object_ref(&());
    reference.namespace = Some("default".into());
    reference
}

/// An operation whose node the legacy side owns: it waits (Pending, or Running when it had
/// started) with a message saying why, written once; no node writes. In shadow mode the
/// message and an Event carry the plan the controller would execute.
async fn not_owned(
    ctx: &Context,
    op: &NodeOperation,
    shadow: bool,
    now: Timestamp,
) -> Result<Action> {
    let before = op.status.clone().unwrap_or_default();
    if before
        .phase
        .as_ref()
        .is_some_and(NodeOperationPhase::is_finished)
    {
        // Finished: it holds its cordon only while the controller owns the node.
        return Ok(Action::await_change());
    }
    let node = &op.spec.node_name;
    let (reason, message, plan) = if shadow {
        let plan = shadow_plan(ctx, op).await?;
        let message = format!(
            "node {node} is handled by the legacy API (flag nodes, shadow mode); the controller would: {}",
            plan.join("; ")
        );
        ("ShadowPlan", message, Some(plan))
    } else {
        let message = format!("node {node} is handled by the legacy API (flag nodes)");
        ("LegacyOwned", message, None)
    };
    let phase = match before.phase {
        Some(NodeOperationPhase::Running) => NodeOperationPhase::Running,
        _ => NodeOperationPhase::Pending,
    };
    let mut status = before.clone();
    set(&mut status, phase, reason, message, now);
    if status != before {
        write_status(ctx, op, &status).await?;
    }
    match plan {
        Some(plan) => {
            let name = op.name_any();
            let subject = Subject {
                resource: ResourceType::Nodes,
                key: &name,
                reference: event_reference(op),
                action: "NodeOperation",
            };
            let lead = "the controller would";
            if let Some(wait) = ctx
                .shadow
                .report(&ctx.recorder, &subject, lead, &plan)
                .await
            {
                return Ok(Action::requeue(wait));
            }
        }
        None => ctx.shadow.clear(ResourceType::Nodes, &op.name_any()),
    }
    Ok(Action::await_change())
}

/// Reads the node and, for a drain, its pods: the plan of [`shadow::plan_lines`].
async fn shadow_plan(ctx: &Context, op: &NodeOperation) -> Result<Vec<String>> {
    let spec = &op.spec;
    let node = Api::<Node>::all(ctx.client.clone())
        .get_opt(&spec.node_name)
        .await
        .map_err(api_error("reading the node"))?;
    let pods = match (&node, &spec.drain) {
        (Some(_), Some(_)) => Api::<Pod>::all(ctx.client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", spec.node_name)))
            .await
            .map_err(api_error("listing the node's pods"))?
            .items
            .iter()
            .map(PodFacts::from_pod)
            .collect(),
        _ => Vec::new(),
    };
    let view = node.as_ref().map(NodeView::of);
    Ok(shadow::plan_lines(spec, view.as_ref(), &pods))
}
