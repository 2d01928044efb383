//! Fixed development users of the local control plane, authenticated by the API server's
//! static token file, with fresh random tokens per control plane.
//!
//! | user | group | rights (through `rbac::dev_bindings`) |
//! |---|---|---|
//! | `alice`, `bob` | `streamspace:users` | none in Kubernetes: only their own sessions |
//! | `operator` | `streamspace:operators` | ClusterRole `streamspace-operator` |
//! | `streamspace-admin` | `streamspace:admins` | ClusterRole `streamspace-admin` |
//!
//! The tokens are written to `dev-users.json` next to the kubeconfig (mode 0600), so a test or
//! a developer holding only the kubeconfig path can find them ([`read_dev_users`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Error;

/// Group of ordinary users.
pub const USERS_GROUP: &str = "streamspace:users";
/// Group bound to the `streamspace-operator` ClusterRole.
pub const OPERATORS_GROUP: &str = "streamspace:operators";
/// Group bound to the `streamspace-admin` ClusterRole.
pub const ADMINS_GROUP: &str = "streamspace:admins";

/// Names and groups of the development users.
pub const DEV_USERS: [(&str, &str); 4] = [
    ("alice", USERS_GROUP),
    ("bob", USERS_GROUP),
    ("operator", OPERATORS_GROUP),
    ("streamspace-admin", ADMINS_GROUP),
];

/// File next to the kubeconfig that lists the users and their tokens.
pub const DEV_USERS_FILE: &str = "dev-users.json";

/// One development user and its bearer token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevUser {
    pub name: String,
    pub groups: Vec<String>,
    pub token: String,
}

/// The development users with fresh tokens from `random_token`.
pub(crate) fn generate(
    mut random_token: impl FnMut() -> Result<String, Error>,
) -> Result<Vec<DevUser>, Error> {
    DEV_USERS
        .iter()
        .map(|(name, group)| {
            Ok(DevUser {
                name: (*name).to_string(),
                groups: vec![(*group).to_string()],
                token: random_token()?,
            })
        })
        .collect()
}

/// Lines of the API server's `--token-auth-file`: `token,user,uid,"group1,group2"`.
pub(crate) fn token_file_lines(users: &[DevUser]) -> String {
    users
        .iter()
        .map(|u| {
            format!(
                "{},{},{},\"{}\"\n",
                u.token,
                u.name,
                u.name,
                u.groups.join(",")
            )
        })
        .collect()
}

/// Path of the users file that belongs to `kubeconfig`.
pub fn dev_users_path(kubeconfig: &Path) -> PathBuf {
    kubeconfig
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(DEV_USERS_FILE)
}

/// Writes the users file next to `kubeconfig`, readable only by the owner.
pub(crate) fn write(kubeconfig: &Path, users: &[DevUser]) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(users).map_err(|source| Error::Serialize {
        what: "the development users",
        source,
    })?;
    super::data_dir::write_file(&dev_users_path(kubeconfig), &text, true)
}

/// The development users of the control plane whose kubeconfig is `kubeconfig`.
pub fn read_dev_users(kubeconfig: &Path) -> Result<Vec<DevUser>, Error> {
    let path = dev_users_path(kubeconfig);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::io(
            format!("parsing {}", path.display()),
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_round_trip_through_the_file_and_the_token_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let mut n = 0;
        let users = generate(|| {
            n += 1;
            Ok(format!("token{n}"))
        })
        .expect("users");
        assert_eq!(users.len(), DEV_USERS.len());
        write(&kubeconfig, &users).expect("write");
        assert_eq!(read_dev_users(&kubeconfig).expect("read"), users);
        assert_eq!(
            token_file_lines(&users[..1]),
            "token1,alice,alice,\"streamspace:users\"\n"
        );
        assert!(
            token_file_lines(&users)
                .ends_with("token4,streamspace-admin,streamspace-admin,\"streamspace:admins\"\n")
        );
    }
}
