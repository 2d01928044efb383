//! Which label and taint keys a repository may declare on nodes.
//!
//! Keys under Kubernetes' own domains (`kubernetes.io`, `k8s.io` and their subdomains such as
//! `node.kubernetes.io` and `node-role.kubernetes.io`) belong to the kubelet, the node
//! lifecycle controller and the scheduler: a repository that sets them could relabel a node's
//! hostname or role, or lift the control-plane taint. They are refused, with every prefix the
//! operator adds (`--gitsync-reserved-prefixes`). A `NoExecute` taint evicts every pod without
//! a toleration at once, so it is refused unless the operator allows it
//! (`--gitsync-allow-noexecute`).

/// Prefixes no repository may use, whatever the operator configures.
pub const BUILTIN_RESERVED: &[&str] = &[
    "kubernetes.io/",
    "k8s.io/",
    "node.kubernetes.io/",
    "node-role.kubernetes.io/",
];

/// The key rules of a controller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Extra reserved prefixes (`example.com/` or `example.com`), besides [`BUILTIN_RESERVED`].
    pub reserved: Vec<String>,
    pub allow_no_execute: bool,
}

/// The domain of a prefix entry: `kubernetes.io/` and `kubernetes.io` both mean the domain.
fn domain(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// Whether `key`'s prefix is `reserved` or one of its subdomains (`a.kubernetes.io` is under
/// `kubernetes.io`); keys without a prefix are never reserved.
fn under(key: &str, reserved: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return false;
    };
    let reserved = domain(reserved).to_ascii_lowercase();
    let prefix = prefix.to_ascii_lowercase();
    !reserved.is_empty()
        && (prefix == reserved
            || prefix
                .strip_suffix(reserved.as_str())
                .is_some_and(|head| head.ends_with('.')))
}

impl KeyPolicy {
    /// Why a label or taint key may not be declared, if it may not.
    pub fn check_key(&self, key: &str) -> Result<(), String> {
        let reserved = BUILTIN_RESERVED
            .iter()
            .copied()
            .chain(self.reserved.iter().map(String::as_str))
            .find(|r| under(key, r));
        match reserved {
            Some(prefix) => Err(format!(
                "{key:?} is under the reserved prefix {:?}; Git may not set it",
                format!("{}/", domain(prefix))
            )),
            None => Ok(()),
        }
    }

    /// Why a taint may not be declared, if it may not.
    pub fn check_taint(&self, key: &str, effect: &str) -> Result<(), String> {
        self.check_key(key)?;
        if effect == "NoExecute" && !self.allow_no_execute {
            return Err(format!(
                "taint {key}:NoExecute evicts running pods; the controller does not allow NoExecute taints from Git (--gitsync-allow-noexecute)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_keys() {
        let policy = KeyPolicy {
            reserved: vec!["example.com/".into(), "corp.internal".into()],
            allow_no_execute: false,
        };
        let cases = [
            ("kubernetes.io/hostname", false),
            ("node-role.kubernetes.io/control-plane", false),
            (
                "node.kubernetes.io/exclude-from-external-load-balancers",
                false,
            ),
            ("topology.kubernetes.io/zone", false),
            ("KUBERNETES.IO/x", false),
            ("k8s.io/x", false),
            ("kubelet.k8s.io/x", false),
            ("example.com/team", false),
            ("a.example.com/team", false),
            ("corp.internal/x", false),
            ("notkubernetes.io/x", true),
            ("kubernetes.io.example.org/x", true),
            ("stream.space/tier", true),
            ("tier", true),
            ("kubernetes.io", true),
        ];
        for (key, allowed) in cases {
            assert_eq!(policy.check_key(key).is_ok(), allowed, "{key}");
        }
        assert!(
            policy
                .check_key("kubernetes.io/hostname")
                .unwrap_err()
                .contains("\"kubernetes.io/\"")
        );
    }

    #[test]
    fn no_execute_only_when_allowed() {
        let strict = KeyPolicy::default();
        let open = KeyPolicy {
            allow_no_execute: true,
            ..KeyPolicy::default()
        };
        let cases = [
            ("gpu", "NoSchedule", true, true),
            ("gpu", "PreferNoSchedule", true, true),
            ("gpu", "NoExecute", false, true),
            (
                "node-role.kubernetes.io/control-plane",
                "NoSchedule",
                false,
                false,
            ),
        ];
        for (key, effect, by_strict, by_open) in cases {
            assert_eq!(
                strict.check_taint(key, effect).is_ok(),
                by_strict,
                "{key}:{effect}"
            );
            assert_eq!(
                open.check_taint(key, effect).is_ok(),
                by_open,
                "{key}:{effect}"
            );
        }
    }
}
