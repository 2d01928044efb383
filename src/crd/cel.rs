//! Building blocks of the CEL validation rules (`x-kubernetes-validations`) in the CRDs.
//!
//! API servers from Kubernetes 1.25 on evaluate these rules on every write, so `kubectl apply`
//! of an invalid object fails there with the rule's message. Older servers drop the unknown
//! schema field and store the object; the webhook or the controller then reports the problem
//! (see `docs/crd-validation.md`).

/// A label key or taint key: an optional DNS-subdomain prefix and `/`, then a name of at most
/// 63 characters (the same shape the API server demands of Node labels and taints).
pub const QUALIFIED_NAME: &str =
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";

/// A label value or taint value: empty, or at most 63 characters, alphanumeric at both ends.
pub const LABEL_VALUE: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$";

/// A CEL string literal holding `text` (single quotes, backslashes escaped).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// CEL: the string `expr` matches the regular expression `pattern`.
pub fn matches(expr: &str, pattern: &str) -> String {
    format!("{expr}.matches({})", literal(pattern))
}

/// CEL: every key of the map (or element of the list) `self` matches `pattern`.
pub fn all_keys_match(pattern: &str) -> String {
    format!("self.all(k, {})", matches("k", pattern))
}

/// CEL: every value of the map `self` matches `pattern`.
pub fn all_values_match(pattern: &str) -> String {
    format!("self.all(k, {})", matches("self[k]", pattern))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_backslashes_and_quotes() {
        assert_eq!(matches("self", r"^\S+'$"), r"self.matches('^\\S+\'$')");
        assert_eq!(all_keys_match("^a$"), "self.all(k, k.matches('^a$'))");
    }

    /// The patterns agree with the API server's own rules on a table of keys and values.
    #[test]
    fn patterns_accept_what_kubernetes_accepts() {
        let key = regex_lite(QUALIFIED_NAME);
        for good in [
            "tier",
            "example.com/tier",
            "a",
            "node-role.kubernetes.io/worker",
            "A_b.c",
        ] {
            assert!(key(good), "{good}");
        }
        for bad in [
            "",
            "-tier",
            "tier-",
            "Example.com/tier",
            "a/b/c",
            "with space",
            &"x".repeat(64),
        ] {
            assert!(!key(bad), "{bad}");
        }
        let value = regex_lite(LABEL_VALUE);
        for good in ["", "v1", "a-b_c.d", &"x".repeat(63)] {
            assert!(value(good), "{good}");
        }
        for bad in ["-v", "v-", "a b", &"x".repeat(64)] {
            assert!(!value(bad), "{bad}");
        }
    }

    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
        let re = regex::Regex::new(pattern).expect("pattern compiles");
        move |text| re.is_match(text)
    }
}
