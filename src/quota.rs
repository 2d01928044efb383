//! The one quota module of the webhook and of the API's legacy quota path: the decision
//! (plain values in, [`Decision`] out, here), the reservation ledger and usage ([`ledger`],
//! pure) and the ledger's storage in the API server ([`store`], the only I/O).
//!
//! Quantities are exact ([`Milli`]: millicores for CPU, millibytes for memory, thousandths of a
//! GPU), so `1Gi`, `1024Mi` and `1073741824` are the same request. Messages keep the wording of
//! the old API's enforcer (clients match on their prefixes) and add the usage they were missing.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::crd::{QuotaLimits, QuotaPolicy, ResourceSpec, SubjectKind};
use crate::quantity::{self, Milli};

pub mod ledger;
pub mod store;

/// Resource name of GPUs in requests and limits.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

const MI: i128 = 1024 * 1024 * 1000;
const GI: i128 = 1024 * MI;

/// Smallest and largest CPU one session may request (the old API's bounds).
pub const CPU_BOUNDS: (Milli, Milli) = (Milli(100), Milli(64_000));
/// Smallest and largest memory one session may request: 128Mi-512Gi.
pub const MEMORY_BOUNDS: (Milli, Milli) = (Milli(128 * MI), Milli(512 * GI));
/// Requested when a session and its Template set no CPU (the old API's system default).
pub const DEFAULT_CPU: Milli = Milli(1000);
/// Requested when a session and its Template set no memory.
pub const DEFAULT_MEMORY: Milli = Milli(2 * GI);

/// The limits in force for one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_sessions: i64,
    pub max_cpu_per_session: Milli,
    pub max_memory_per_session: Milli,
    pub max_cpu: Milli,
    pub max_memory: Milli,
    /// Whole GPUs.
    pub max_gpu: i64,
}

impl Limits {
    /// The old API's hard-coded limits, used where no policy says otherwise.
    pub const BUILT_IN: Limits = Limits {
        max_sessions: 5,
        max_cpu_per_session: Milli(2000),
        max_memory_per_session: Milli(4096 * MI),
        max_cpu: Milli(4000),
        max_memory: Milli(8192 * MI),
        max_gpu: 0,
    };

    /// These limits with every limit `partial` sets replacing the current one.
    fn overridden_by(&self, partial: &PartialLimits) -> Limits {
        Limits {
            max_sessions: partial.max_sessions.unwrap_or(self.max_sessions),
            max_cpu_per_session: partial
                .max_cpu_per_session
                .unwrap_or(self.max_cpu_per_session),
            max_memory_per_session: partial
                .max_memory_per_session
                .unwrap_or(self.max_memory_per_session),
            max_cpu: partial.max_cpu.unwrap_or(self.max_cpu),
            max_memory: partial.max_memory.unwrap_or(self.max_memory),
            max_gpu: partial.max_gpu.unwrap_or(self.max_gpu),
        }
    }

    /// These limits, each lowered to `partial`'s where that is smaller.
    fn tightened_by(&self, partial: &PartialLimits) -> Limits {
        fn min<T: Ord + Copy>(current: T, other: Option<T>) -> T {
            other.map_or(current, |other| current.min(other))
        }
        Limits {
            max_sessions: min(self.max_sessions, partial.max_sessions),
            max_cpu_per_session: min(self.max_cpu_per_session, partial.max_cpu_per_session),
            max_memory_per_session: min(
                self.max_memory_per_session,
                partial.max_memory_per_session,
            ),
            max_cpu: min(self.max_cpu, partial.max_cpu),
            max_memory: min(self.max_memory, partial.max_memory),
            max_gpu: min(self.max_gpu, partial.max_gpu),
        }
    }
}

/// The limits one policy sets; `None` where it sets none (or set one that does not parse).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartialLimits {
    pub max_sessions: Option<i64>,
    pub max_cpu_per_session: Option<Milli>,
    pub max_memory_per_session: Option<Milli>,
    pub max_cpu: Option<Milli>,
    pub max_memory: Option<Milli>,
    pub max_gpu: Option<i64>,
}

impl PartialLimits {
    /// Parses a policy's limits; an unparsable quantity is reported in `invalid` and ignored.
    pub fn parse(limits: &QuotaLimits, invalid: &mut Vec<String>) -> PartialLimits {
        let mut quantity = |field: &str, value: &Option<Quantity>| {
            value.as_ref().and_then(|q| match quantity::parse(&q.0) {
                Ok(parsed) if parsed >= Milli::ZERO => Some(parsed),
                Ok(_) => {
                    invalid.push(format!("{field}: {:?} is negative", q.0));
                    None
                }
                Err(e) => {
                    invalid.push(format!("{field}: {e}"));
                    None
                }
            })
        };
        PartialLimits {
            max_sessions: limits.max_sessions.map(|n| n.max(0)),
            max_cpu_per_session: quantity("maxCpuPerSession", &limits.max_cpu_per_session),
            max_memory_per_session: quantity("maxMemoryPerSession", &limits.max_memory_per_session),
            max_cpu: quantity("maxCpu", &limits.max_cpu),
            max_memory: quantity("maxMemory", &limits.max_memory),
            max_gpu: limits.max_gpu.map(|n| n.max(0)),
        }
    }
}

/// Whom a policy applies to, in plain values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Default,
    Group(Vec<String>),
    User(String),
    /// A kind this version does not know, or a User policy without a name: applies to nobody.
    Nobody,
}

/// One `QuotaPolicy`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Name of the object; the smallest name wins when two policies of one subject compete.
    pub name: String,
    pub subject: Subject,
    pub limits: PartialLimits,
}

impl Policy {
    /// Converts the object; problems with individual limits are returned alongside.
    pub fn from_object(object: &QuotaPolicy) -> (Policy, Vec<String>) {
        let mut invalid = Vec::new();
        let spec = &object.spec;
        let subject = match (&spec.subject.kind, &spec.subject.name) {
            (SubjectKind::Default, _) => Subject::Default,
            (SubjectKind::Group, _) => Subject::Group(spec.subject.members.clone()),
            (SubjectKind::User, Some(name)) if !name.is_empty() => Subject::User(name.clone()),
            (SubjectKind::User, _) => {
                invalid.push("subject.name: a User policy needs a name".into());
                Subject::Nobody
            }
            (SubjectKind::Unknown(kind), _) => {
                invalid.push(format!("subject.kind: unknown kind {kind:?}"));
                Subject::Nobody
            }
        };
        let policy = Policy {
            name: object.metadata.name.clone().unwrap_or_default(),
            subject,
            limits: PartialLimits::parse(&spec.limits, &mut invalid),
        };
        (policy, invalid)
    }
}

/// The user's limits: the User policy naming them, else the Default policy, else the built-in
/// limits; then every Group policy listing them can only lower each limit.
pub fn effective_limits<'a>(user: &str, policies: impl IntoIterator<Item = &'a Policy>) -> Limits {
    let mut user_policy: Option<&Policy> = None;
    let mut default_policy: Option<&Policy> = None;
    let mut groups = Vec::new();
    let earlier = |current: Option<&'a Policy>, candidate: &'a Policy| match current {
        Some(current) if current.name <= candidate.name => Some(current),
        _ => Some(candidate),
    };
    for policy in policies {
        match &policy.subject {
            Subject::User(name) if name == user => user_policy = earlier(user_policy, policy),
            Subject::Default => default_policy = earlier(default_policy, policy),
            Subject::Group(members) if members.iter().any(|m| m == user) => groups.push(policy),
            _ => {}
        }
    }
    let base = user_policy
        .or(default_policy)
        .map_or(Limits::BUILT_IN, |p| {
            Limits::BUILT_IN.overridden_by(&p.limits)
        });
    groups
        .into_iter()
        .fold(base, |limits, group| limits.tightened_by(&group.limits))
}

/// The limits of `user` under the stored `policies` (each parsed; unusable limits ignored).
pub fn limits_for<'a>(user: &str, policies: impl IntoIterator<Item = &'a QuotaPolicy>) -> Limits {
    let parsed: Vec<Policy> = policies
        .into_iter()
        .map(|p| Policy::from_object(p).0)
        .collect();
    effective_limits(user, &parsed)
}

/// What one session requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub cpu: Milli,
    pub memory: Milli,
    pub gpu: Milli,
}

impl Request {
    /// What a session with no resources at all requests.
    pub const SYSTEM_DEFAULT: Request = Request {
        cpu: DEFAULT_CPU,
        memory: DEFAULT_MEMORY,
        gpu: Milli::ZERO,
    };

    /// The requests of a Session's resources (requests, else limits, else the legacy flat
    /// form, else the system defaults), or the reason they cannot be read.
    pub fn of(resources: Option<&ResourceSpec>) -> Result<Request, String> {
        let requirements = resources.and_then(ResourceSpec::requirements);
        let requests = requirements
            .as_ref()
            .and_then(|r| r.requests.clone())
            .unwrap_or_default();
        let limits = requirements.and_then(|r| r.limits).unwrap_or_default();
        let value = |key: &str, default: Milli| -> Result<Milli, String> {
            match requests.get(key).or_else(|| limits.get(key)) {
                None => Ok(default),
                Some(q) => match quantity::parse(&q.0) {
                    Ok(parsed) if parsed >= Milli::ZERO => Ok(parsed),
                    Ok(_) => Err(format!(
                        "invalid resource request: {key} {:?} is negative",
                        q.0
                    )),
                    Err(e) => Err(format!("invalid resource request: {key}: {e}")),
                },
            }
        };
        Ok(Request {
            cpu: value("cpu", DEFAULT_CPU)?,
            memory: value("memory", DEFAULT_MEMORY)?,
            gpu: value(GPU_RESOURCE, Milli::ZERO)?,
        })
    }
}

/// What a user's running sessions already use (the session being admitted excluded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub sessions: i64,
    pub cpu: Milli,
    pub memory: Milli,
    pub gpu: Milli,
}

impl Usage {
    pub fn add(&mut self, request: &Request) {
        self.sessions += 1;
        self.cpu = Milli(self.cpu.0 + request.cpu.0);
        self.memory = Milli(self.memory.0 + request.memory.0);
        self.gpu = Milli(self.gpu.0 + request.gpu.0);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied { message: String },
}

impl Decision {
    fn denied(message: String) -> Decision {
        Decision::Denied { message }
    }
}

/// Millicores, as the messages print CPU.
pub fn cpu(value: Milli) -> String {
    format!("{}m", value.0)
}

/// MiB rounded up, as the messages print memory.
pub fn mib(value: Milli) -> String {
    format!(
        "{}Mi",
        value.0.div_euclid(MI) + i128::from(value.0.rem_euclid(MI) != 0)
    )
}

/// Out-of-bounds requests, whatever the limits (CPU 100m-64, memory 128Mi-512Gi).
pub fn check_bounds(request: &Request) -> Option<String> {
    let (cpu_min, cpu_max) = CPU_BOUNDS;
    let (memory_min, memory_max) = MEMORY_BOUNDS;
    if request.cpu < cpu_min || request.cpu > cpu_max {
        return Some(format!(
            "invalid resource request: CPU {} is outside {}-{}",
            cpu(request.cpu),
            cpu(cpu_min),
            cpu(cpu_max)
        ));
    }
    if request.memory < memory_min || request.memory > memory_max {
        return Some(format!(
            "invalid resource request: memory {} is outside {}-{}",
            mib(request.memory),
            mib(memory_min),
            mib(memory_max)
        ));
    }
    None
}

/// Admits one more running session requesting `request` for a user who uses `usage` under
/// `limits`, or says which limit it breaks. Checks run in the old enforcer's order.
pub fn decide(limits: &Limits, usage: &Usage, request: &Request) -> Decision {
    if let Some(message) = check_bounds(request) {
        return Decision::denied(message);
    }
    if usage.sessions >= limits.max_sessions {
        return Decision::denied(format!(
            "session quota exceeded: {}/{} sessions active",
            usage.sessions, limits.max_sessions
        ));
    }
    if request.cpu > limits.max_cpu_per_session {
        return Decision::denied(format!(
            "CPU quota exceeded: requested {}, limit is {} per session",
            cpu(request.cpu),
            cpu(limits.max_cpu_per_session)
        ));
    }
    if request.memory > limits.max_memory_per_session {
        return Decision::denied(format!(
            "memory quota exceeded: requested {}, limit is {} per session",
            mib(request.memory),
            mib(limits.max_memory_per_session)
        ));
    }
    let total_cpu = Milli(usage.cpu.0 + request.cpu.0);
    if total_cpu > limits.max_cpu {
        return Decision::denied(format!(
            "total CPU quota exceeded: would use {}, limit is {} (in use {}, requested {})",
            cpu(total_cpu),
            cpu(limits.max_cpu),
            cpu(usage.cpu),
            cpu(request.cpu)
        ));
    }
    let total_memory = Milli(usage.memory.0 + request.memory.0);
    if total_memory > limits.max_memory {
        return Decision::denied(format!(
            "total memory quota exceeded: would use {}, limit is {} (in use {}, requested {})",
            mib(total_memory),
            mib(limits.max_memory),
            mib(usage.memory),
            mib(request.memory)
        ));
    }
    let total_gpu = Milli(usage.gpu.0 + request.gpu.0);
    if total_gpu > Milli::from_units(i128::from(limits.max_gpu)) {
        return Decision::denied(format!(
            "GPU quota exceeded: would use {}, limit is {} (in use {}, requested {})",
            total_gpu.ceil_units(),
            limits.max_gpu,
            usage.gpu.ceil_units(),
            request.gpu.ceil_units()
        ));
    }
    Decision::Allowed
}

/// Whether two resource specs request the same amounts (an UPDATE that changes them is
/// checked again).
pub fn same_request(old: Option<&ResourceSpec>, new: Option<&ResourceSpec>) -> bool {
    let amounts = |spec: Option<&ResourceSpec>| -> BTreeMap<&'static str, Option<Milli>> {
        let request = Request::of(spec).ok();
        BTreeMap::from([
            ("cpu", request.map(|r| r.cpu)),
            ("memory", request.map(|r| r.memory)),
            ("gpu", request.map(|r| r.gpu)),
        ])
    };
    amounts(old) == amounts(new)
}

#[cfg(test)]
mod tests;
