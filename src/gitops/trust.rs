//! Who and what a GitSync may use: the namespaces where GitSyncs are honoured, and the URL
//! schemes a repository may be fetched over.
//!
//! Whoever can create a GitSync can label and taint every node, so only GitSyncs in the
//! namespaces the operator lists are honoured (`--gitsync-namespaces`, default: the
//! controller's own namespace). `https`, `ssh` and scp-like `user@host:path` are always
//! allowed; `http`, `git` and `file` (and plain local paths) only with
//! `--gitsync-allow-insecure-transports`, and credentials are never sent over `http` or `git`.

use std::collections::BTreeSet;

/// File of the in-cluster ServiceAccount that names the pod's namespace.
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The controller's own namespace: `POD_NAMESPACE`, else the in-cluster ServiceAccount's,
/// else `default`.
pub fn own_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|ns| !ns.trim().is_empty())
        .or_else(|| std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok())
        .map(|ns| ns.trim().to_string())
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Namespaces whose GitSyncs are honoured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespacePolicy {
    Only(BTreeSet<String>),
    /// `--gitsync-namespaces '*'`: every namespace (only for single-tenant clusters).
    Any,
}

impl Default for NamespacePolicy {
    fn default() -> Self {
        NamespacePolicy::Only(BTreeSet::from([own_namespace()]))
    }
}

impl NamespacePolicy {
    /// Reads `a,b,c` or `*`.
    pub fn parse(text: &str) -> NamespacePolicy {
        let names: BTreeSet<String> = text
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect();
        if names.contains("*") {
            NamespacePolicy::Any
        } else {
            NamespacePolicy::Only(names)
        }
    }

    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            NamespacePolicy::Any => true,
            NamespacePolicy::Only(names) => names.contains(namespace),
        }
    }

    /// Why a GitSync in `namespace` is not honoured (for its status).
    pub fn refusal(&self, namespace: &str) -> String {
        let listed = match self {
            NamespacePolicy::Any => "*".to_string(),
            NamespacePolicy::Only(names) => names.iter().cloned().collect::<Vec<_>>().join(", "),
        };
        format!(
            "GitSyncs in namespace {namespace:?} are not honoured by this controller (allowed: {listed}; --gitsync-namespaces); nothing is applied"
        )
    }
}

/// How a URL reaches its repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Https,
    Ssh,
    /// `http://`: plaintext.
    Http,
    /// `git://`: plaintext, unauthenticated.
    Git,
    /// `file://` or a path on the controller's own disk.
    Local,
}

impl Transport {
    pub fn of(url: &str) -> Option<Transport> {
        let lower = url.to_ascii_lowercase();
        let scheme = lower.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("https") => Some(Transport::Https),
            Some("ssh") | Some("git+ssh") | Some("ssh+git") => Some(Transport::Ssh),
            Some("http") => Some(Transport::Http),
            Some("git") => Some(Transport::Git),
            Some("file") => Some(Transport::Local),
            Some(_) => None,
            // scp-like `user@host:path`; anything else without a scheme is a local path.
            None => match url.split_once(':') {
                Some((host, _)) if host.contains('@') && !host.contains('/') => {
                    Some(Transport::Ssh)
                }
                _ => Some(Transport::Local),
            },
        }
    }

    fn secure(self) -> bool {
        matches!(self, Transport::Https | Transport::Ssh)
    }

    fn plaintext(self) -> bool {
        matches!(self, Transport::Http | Transport::Git)
    }
}

/// Whether a GitSync may fetch `url`; `credentials` says whether it names a credentials Secret.
pub fn check_url(url: &str, credentials: bool, allow_insecure: bool) -> Result<Transport, String> {
    let transport = Transport::of(url).ok_or_else(|| {
        "the URL scheme is not supported (use https://, ssh:// or user@host:path)".to_string()
    })?;
    if transport.plaintext() && credentials {
        return Err(
            "credentials are never sent over plaintext http:// or git://; use https:// or ssh://"
                .into(),
        );
    }
    if !transport.secure() && !allow_insecure {
        return Err(format!(
            "{} URLs are refused: use https://, ssh:// or user@host:path (an operator may allow http, git and file with --gitsync-allow-insecure-transports)",
            match transport {
                Transport::Http => "http://",
                Transport::Git => "git://",
                _ => "file:// and local path",
            }
        ));
    }
    Ok(transport)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        let only = NamespacePolicy::parse("streamspace, ops");
        assert!(only.allows("streamspace"));
        assert!(only.allows("ops"));
        assert!(!only.allows("tenant"));
        assert!(only.refusal("tenant").contains("allowed: ops, streamspace"));
        assert_eq!(NamespacePolicy::parse("a,*"), NamespacePolicy::Any);
        assert!(NamespacePolicy::Any.allows("tenant"));
        assert!(!NamespacePolicy::parse("").allows(""));
    }

    #[test]
    fn urls() {
        use Transport::*;
        // (url, credentials, insecure allowed, result)
        let cases = [
            ("https://git.example.com/a.git", true, false, Some(Https)),
            ("HTTPS://git.example.com/a.git", false, false, Some(Https)),
            ("ssh://git@git.example.com/a.git", true, false, Some(Ssh)),
            ("git@github.com:org/repo.git", true, false, Some(Ssh)),
            ("http://git.example.com/a.git", false, false, None),
            ("http://git.example.com/a.git", false, true, Some(Http)),
            ("http://git.example.com/a.git", true, true, None),
            ("git://git.example.com/a.git", false, false, None),
            ("git://git.example.com/a.git", false, true, Some(Git)),
            ("git://git.example.com/a.git", true, true, None),
            ("file:///etc", false, false, None),
            ("file:///srv/repo", false, true, Some(Local)),
            ("/srv/repo", false, false, None),
            ("./repo:x", false, true, Some(Local)),
            ("ftp://example.com/a", false, true, None),
        ];
        for (url, credentials, insecure, expected) in cases {
            assert_eq!(
                check_url(url, credentials, insecure).ok(),
                expected,
                "{url} {credentials} {insecure}"
            );
        }
        let refused = check_url("http://h/r", true, true).unwrap_err();
        assert!(refused.contains("plaintext"), "{refused}");
    }
}
