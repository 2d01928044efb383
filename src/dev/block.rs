//! The block `dev` prints once everything runs: where things are and one command per first
//! step. Pure: built from plain values, so its shape is unit tested (and parsed by the e2e test).

use std::path::Path;

/// Everything the block names.
#[derive(Clone, Debug)]
pub struct Block<'a> {
    pub kubeconfig: Option<&'a Path>,
    pub api_url: &'a str,
    /// Name and token of the user with every right.
    pub admin: (&'a str, &'a str),
    /// Name and token of an ordinary user, when the cluster has one.
    pub user: Option<(&'a str, &'a str)>,
    /// File holding every development user's token.
    pub tokens_file: Option<&'a Path>,
    /// The local Git repository the GitSync follows, and whether this run created it.
    pub gitops_repo: Option<(&'a Path, bool)>,
    pub log_file: Option<&'a Path>,
    /// Template of the example session.
    pub template: &'a str,
    /// This program, as the flag command runs it.
    pub program: &'a str,
}

/// First line of the block; the e2e test reads up to [`END`].
pub const BEGIN: &str = "streamspace dev is running (Ctrl-C stops it and removes what it created).";
/// Last line of the block.
pub const END: &str = "# ----";

impl Block<'_> {
    /// The block as printed: `export` lines first, then one titled command per step; every
    /// command line is a shell command a user can paste after the exports.
    pub fn render(&self) -> String {
        let mut out = format!("{BEGIN}\n\n");
        if let Some(path) = self.kubeconfig {
            out += &format!(
                "export KUBECONFIG={}\n",
                shell_word(&path.display().to_string())
            );
        }
        out += &format!("export STREAMSPACE_API={}\n", self.api_url);
        out += &format!(
            "export ADMIN_TOKEN={}    # {}\n",
            self.admin.1, self.admin.0
        );
        if let Some((name, token)) = self.user {
            out += &format!("export USER_TOKEN={token}    # {name}\n");
        }
        out += "\n";
        if let Some(path) = self.tokens_file {
            out += &format!("# every user's token: {}\n", path.display());
        }
        out += &format!("# console: {}/console (paste ADMIN_TOKEN)\n", self.api_url);
        if let Some(path) = self.log_file {
            out += &format!("# logs: {}\n", path.display());
        }
        if let Some((path, created)) = self.gitops_repo {
            let whose = if created {
                "created for this run, removed on exit"
            } else {
                "yours (--gitops-repo), kept"
            };
            out += &format!("# GitOps repository: {} ({whose})\n", path.display());
        }
        let (user_var, user_name) = match self.user {
            Some((name, _)) => ("USER_TOKEN", name),
            None => ("ADMIN_TOKEN", self.admin.0),
        };
        out += &format!("\n# Create a session as {user_name}:\n");
        out += &format!(
            "curl -sS -X POST -H \"Authorization: Bearer ${user_var}\" -H 'Content-Type: application/json' \
             -d '{{\"user\":\"{user_name}\",\"template\":\"{}\"}}' \"$STREAMSPACE_API/api/v1/sessions\"\n",
            self.template
        );
        out += "\n# Flip a flag: sessions back to the legacy handlers for 2 minutes:\n";
        out += &format!(
            "STREAMSPACE_TOKEN=$ADMIN_TOKEN {} flags override sessions \
             --mode legacy --ttl 2m --reason 'trying a rollback' --api-url \"$STREAMSPACE_API\"\n",
            shell_word(self.program)
        );
        if let Some((path, _)) = self.gitops_repo {
            let repo = shell_word(&path.display().to_string());
            out +=
                "\n# Commit to the Git repository: allow 5 sessions per user (synced within 5s):\n";
            out += &format!(
                "sed -i 's/maxSessions: 3/maxSessions: 5/' {repo}/quota.yaml && \
                 git -C {repo} commit -qam 'Allow 5 sessions per user'\n"
            );
        }
        out += END;
        out += "\n";
        out
    }
}

/// `text` quoted for a POSIX shell when it holds anything but plain path characters.
fn shell_word(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_names_everything_and_one_command_per_step() {
        let kubeconfig = Path::new("/tmp/cp/kubeconfig");
        let repo = Path::new("/tmp/dev run/gitops");
        let block = Block {
            kubeconfig: Some(kubeconfig),
            api_url: "http://127.0.0.1:8000",
            admin: ("streamspace-admin", "a1"),
            user: Some(("alice", "u1")),
            tokens_file: Some(Path::new("/tmp/cp/dev-users.json")),
            gitops_repo: Some((repo, true)),
            log_file: Some(Path::new("/tmp/dev.log")),
            template: "firefox-browser",
            program: "/usr/bin/streamspace-controller",
        }
        .render();
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(lines.first(), Some(&BEGIN));
        assert_eq!(lines.last(), Some(&END));
        for expected in [
            "export KUBECONFIG=/tmp/cp/kubeconfig",
            "export STREAMSPACE_API=http://127.0.0.1:8000",
            "export ADMIN_TOKEN=a1    # streamspace-admin",
            "export USER_TOKEN=u1    # alice",
            "# console: http://127.0.0.1:8000/console (paste ADMIN_TOKEN)",
            "# GitOps repository: /tmp/dev run/gitops (created for this run, removed on exit)",
        ] {
            assert!(lines.contains(&expected), "{expected:?} in\n{block}");
        }
        let commands: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("export "))
            .filter(|l| *l != BEGIN)
            .collect();
        assert_eq!(commands.len(), 3, "{commands:?}");
        assert!(commands[0].contains("$USER_TOKEN") && commands[0].contains("\"user\":\"alice\""));
        assert!(commands[1].contains("/usr/bin/streamspace-controller flags override sessions"));
        assert!(commands[2].contains("git -C '/tmp/dev run/gitops' commit"));
    }

    #[test]
    fn without_dev_users_the_admin_creates_and_no_repository_means_no_commit() {
        let block = Block {
            kubeconfig: None,
            api_url: "http://127.0.0.1:1",
            admin: ("admin", "t"),
            user: None,
            tokens_file: None,
            gitops_repo: None,
            log_file: None,
            template: "x",
            program: "streamspace-controller",
        }
        .render();
        assert!(!block.contains("KUBECONFIG") && !block.contains("USER_TOKEN"));
        assert!(block.contains("Bearer $ADMIN_TOKEN") && !block.contains("git -C"));
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word("/a/b-c_d.e"), "/a/b-c_d.e");
        assert_eq!(shell_word("/a b"), "'/a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
