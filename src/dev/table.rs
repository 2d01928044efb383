//! The session table `dev` keeps on screen: redrawn in place on a terminal, printed again
//! only when it changed otherwise (a pipe or a file gets a readable history, not a flood).

use std::io::Write;

use kube::ResourceExt;

use crate::crd::Session;

/// One row per session, with a header; plain text.
pub fn render(sessions: &[Session]) -> String {
    let mut out = format!(
        "{:<16} {:<22} {:<8} {:<16} {:<11} {:<11} POD / REASON\n",
        "NAMESPACE", "NAME", "USER", "TEMPLATE", "STATE", "PHASE"
    );
    for session in sessions {
        let status = session.status.clone().unwrap_or_default();
        let detail = status.pod_name.clone().unwrap_or_else(|| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && !c.is_true())
                .map(|c| c.message.clone())
                .unwrap_or_default()
        });
        out += &format!(
            "{:<16} {:<22} {:<8} {:<16} {:<11} {:<11} {}\n",
            session.namespace().unwrap_or_default(),
            session.name_any(),
            session.spec.user,
            session.spec.template,
            session.spec.desired_state(),
            status.phase.map(|p| p.to_string()).unwrap_or_default(),
            detail
        );
    }
    out
}

/// Prints successive tables to standard output.
pub struct TablePrinter {
    terminal: bool,
    /// Lines of the table on screen (terminal) and its text (to skip unchanged tables).
    last: Option<(usize, String)>,
}

impl TablePrinter {
    pub fn new(terminal: bool) -> Self {
        TablePrinter {
            terminal,
            last: None,
        }
    }

    /// What to write for `table`: on a terminal, move up over the previous table and clear
    /// it first; elsewhere the table after a blank line, or nothing when it did not change.
    pub fn frame(&mut self, table: &str) -> Option<String> {
        if self.last.as_ref().is_some_and(|(_, text)| text == table) {
            return None;
        }
        let lines = table.lines().count();
        let frame = match (&self.last, self.terminal) {
            (Some((previous, _)), true) => format!("\x1b[{previous}A\x1b[J\n{table}"),
            _ => format!("\n{table}"),
        };
        // The blank line before the table is on screen too.
        self.last = Some((lines + 1, table.to_string()));
        Some(frame)
    }

    pub fn print(&mut self, table: &str) {
        if let Some(frame) = self.frame(table) {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(frame.as_bytes());
            let _ = out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_redraws_in_place_and_a_pipe_gets_changes_only() {
        let mut terminal = TablePrinter::new(true);
        assert_eq!(terminal.frame("h\na\n").as_deref(), Some("\nh\na\n"));
        assert_eq!(terminal.frame("h\na\n"), None, "unchanged");
        assert_eq!(
            terminal.frame("h\na\nb\n").as_deref(),
            Some("\x1b[3A\x1b[J\nh\na\nb\n"),
            "up over the blank line and two rows, clear, draw"
        );
        assert_eq!(terminal.frame("h\n").as_deref(), Some("\x1b[4A\x1b[J\nh\n"));

        let mut pipe = TablePrinter::new(false);
        assert_eq!(pipe.frame("h\n").as_deref(), Some("\nh\n"));
        assert_eq!(pipe.frame("h\n"), None);
        assert_eq!(
            pipe.frame("h\nx\n").as_deref(),
            Some("\nh\nx\n"),
            "no escapes"
        );
    }
}
