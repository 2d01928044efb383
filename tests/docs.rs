//! The documentation test: the shell examples of README.md and docs/*.md run against `dev`.
//!
//! Every fenced shell block (```` ```sh ````, `bash`, `shell`, `console`) must carry a marker
//! in its info string, and so must an unlabelled block whose first line is a prompt (`$ `):
//! - ```` ```sh run ````: executed with `bash -eo pipefail`, in order; README.md first, then
//!   docs/operating.md, then the other pages by name, all in one environment (the variables a
//!   block exports are seen by the blocks after it, as in one terminal). A block that exits
//!   non-zero fails the test. When the next fence (after blank lines only) is a
//!   ```` ```text ```` block, it is the expected output (stdout and stderr together),
//!   compared with snapbox: `[..]` matches within a line, `...` on a line of its own matches
//!   any lines, and `[HASH]` (a Git commit), `[TIME]` (RFC 3339), `[TMP]` (this run's
//!   temporary directory) stand for values that change from run to run.
//! - ```` ```sh norun ````: not executed (it needs a real forge, a cloud, a real cluster, or
//!   it is the command this test itself runs); counted. The count may not grow above
//!   [`MAX_UNRUN`]; it is written, with the list, to `<target>/artefacts/docs-blocks.txt`,
//!   which `scripts/test.sh` prints after the suite.
//!
//! The environment is the one a reader has after `streamspace-controller dev`: this test
//! starts `dev` (local control plane, node simulator `sim-node-1` and `sim-node-2`, examples,
//! the GitSync `streamspace/examples`, the controller with its admission webhooks and the API)
//! on free loopback ports with a private `TMPDIR`, reads the block `dev` prints, and gives the
//! blocks what that block exports (`KUBECONFIG`, `STREAMSPACE_API`, `ADMIN_TOKEN`,
//! `USER_TOKEN`), `TMPDIR`, and `PATH` with `streamspace-controller` and `kubectl`. Blocks run
//! in the repository root. Processes a block leaves in the background are stopped at the end.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use streamspace_controller::dev::block;

/// Longest a single block may run.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(180);
/// What every text log line of this program holds (level, then the crate's target).
const LOG_LINE: &str = " INFO streamspace_controller";
/// Longest `dev` may take to print its block and become ready.
const DEV_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mark {
    Run,
    NoRun,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    mark: Mark,
    script: String,
    expected: Option<String>,
}

const SHELL_LANGUAGES: [&str; 4] = ["sh", "bash", "shell", "console"];

/// The shell blocks of one Markdown text; an unmarked shell block is an error naming its line.
fn parse(text: &str) -> Result<Vec<Block>, String> {
    struct Fence {
        line: usize,
        info: String,
        body: String,
    }
    let mut fences: Vec<(Fence, usize)> = Vec::new();
    let mut open: Option<(Fence, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let indent = raw.len() - trimmed.len();
                    open = Some((
                        Fence {
                            line: index + 1,
                            info: info.trim().to_string(),
                            body: String::new(),
                        },
                        " ".repeat(indent),
                    ));
                }
            }
            Some((mut fence, indent)) => {
                if trimmed.starts_with("```") {
                    fences.push((fence, index + 1));
                } else {
                    fence
                        .body
                        .push_str(raw.strip_prefix(indent.as_str()).unwrap_or(raw));
                    fence.body.push('\n');
                    open = Some((fence, indent));
                }
            }
        }
    }
    if let Some((fence, _)) = open {
        return Err(format!("line {}: unclosed code fence", fence.line));
    }
    let mut blocks = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, (fence, end)) in fences.iter().enumerate() {
        let mut words = fence.info.split_whitespace();
        let language = words.next().unwrap_or("");
        if language.is_empty() && fence.body.starts_with("$ ") {
            return Err(format!(
                "line {}: an unlabelled block starting with a prompt (`$ `); mark it `console run` or `console norun`",
                fence.line
            ));
        }
        if !SHELL_LANGUAGES.contains(&language) {
            continue;
        }
        let mark = match words.next() {
            Some("run") => Mark::Run,
            Some("norun") => Mark::NoRun,
            other => {
                return Err(format!(
                    "line {}: shell block marked {other:?}; mark it `{language} run` or `{language} norun`",
                    fence.line
                ));
            }
        };
        // The expected output: a `text` fence right after this one (blank lines between).
        let expected = fences.get(i + 1).and_then(|(next, _)| {
            let between = &lines[*end..next.line - 1];
            (next.info == "text" && between.iter().all(|l| l.trim().is_empty()))
                .then(|| next.body.clone())
        });
        blocks.push(Block {
            line: fence.line,
            mark,
            script: fence.body.clone(),
            expected,
        });
    }
    Ok(blocks)
}

/// README.md, docs/operating.md, then the other pages by name.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "md"))
                .collect()
        })
        .unwrap_or_default();
    docs.sort_by_key(|p| (p.file_name().is_none_or(|n| n != "operating.md"), p.clone()));
    let mut out = vec![root.join("README.md")];
    out.extend(docs);
    out
}

/// A free loopback port (bound, read and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a pid (or process group) this test started.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// `dev` running in the background, stopped (SIGINT, as Ctrl-C) when dropped.
struct Dev {
    child: Child,
    /// What its block exports (`KUBECONFIG`, `STREAMSPACE_API`, `ADMIN_TOKEN`, ...).
    exports: Vec<(String, String)>,
    /// The log file its block names.
    log: PathBuf,
    /// Its standard output (the block, then the session table) and standard error.
    stdout: PathBuf,
    stderr: PathBuf,
}

/// The exports and the log file named by the block `dev` printed into `text`, once it is
/// complete (its last line is [`block::END`]).
fn parse_dev_block(text: &str) -> Option<(Vec<(String, String)>, PathBuf)> {
    let begin = text.find(block::BEGIN)?;
    let printed = &text[begin..];
    let end = printed.lines().position(|l| l == block::END)?;
    let mut exports = Vec::new();
    let mut log = None;
    for line in printed.lines().take(end) {
        if let Some(assignment) = line.strip_prefix("export ") {
            let assignment = assignment.split("    #").next().unwrap_or_default().trim();
            if let Some((name, value)) = assignment.split_once('=') {
                let value = value.trim_matches('\'');
                exports.push((name.to_string(), value.to_string()));
            }
        } else if let Some(path) = line.strip_prefix("# logs: ") {
            log = Some(PathBuf::from(path));
        }
    }
    Some((exports, log?))
}

impl Dev {
    /// Starts `dev` on free ports, without `--log-file` (the default path in `tmp`), and
    /// waits for its block and for the controller's `/readyz`.
    fn start(tmp: &Path, http_port: u16) -> Dev {
        let stdout = tmp.join("dev.out");
        let stderr = tmp.join("dev.err");
        let child = Command::new(env!("CARGO_BIN_EXE_streamspace-controller"))
            .args(["dev", "--refresh", "3600", "--http-addr"])
            .arg(format!("127.0.0.1:{http_port}"))
            .args(["--api-addr", "127.0.0.1:0", "--webhook-addr", "127.0.0.1:0"])
            .env("TMPDIR", tmp)
            .env_remove("KUBECONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("dev stdout"))
            .stderr(std::fs::File::create(&stderr).expect("dev stderr"))
            .spawn()
            .expect("starting dev");
        let mut dev = Dev {
            child,
            exports: Vec::new(),
            log: PathBuf::new(),
            stdout,
            stderr,
        };
        let deadline = Instant::now() + DEV_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&dev.stdout).unwrap_or_default();
            if let Some((exports, log)) = parse_dev_block(&text) {
                dev.exports = exports;
                dev.log = log;
                break;
            }
            if let Ok(Some(status)) = dev.child.try_wait() {
                panic!(
                    "dev exited ({status}) before printing its block:\n{text}\n{}",
                    dev.errors()
                );
            }
            assert!(
                Instant::now() < deadline,
                "dev printed no block:\n{text}\n{}",
                dev.errors()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The controller's caches loaded too (the block needs the API's only).
        let url = format!("http://127.0.0.1:{http_port}/readyz");
        loop {
            let ready = Command::new("curl")
                .args(["-fs", "-o", "/dev/null", &url])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            if let Ok(Some(status)) = dev.child.try_wait() {
                panic!("dev exited ({status}):\n{}", dev.errors());
            }
            assert!(Instant::now() < deadline, "dev never became ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        dev
    }

    fn errors(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The value `dev`'s block exports as `name`.
    fn export(&self, name: &str) -> &str {
        self.exports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("dev's block exports no {name}: {:?}", self.exports))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        signal(self.child.id(), libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the blocks in one environment: exported variables carry over through a state file.
struct Runner {
    root: PathBuf,
    tmp: PathBuf,
    state: PathBuf,
    env: Vec<(String, String)>,
    /// Process groups of the blocks run so far (background processes live on in them).
    groups: Vec<u32>,
    counter: usize,
}

impl Runner {
    /// Runs one block; returns its output, or why it failed.
    fn run(&mut self, script: &str) -> Result<String, String> {
        self.counter += 1;
        let out_path = self.tmp.join(format!("block-{}.out", self.counter));
        let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let state = self.state.display();
        let wrapped = format!(
            "source '{state}'\n{script}\nexport -p | grep -Ev '^declare -x (PWD|OLDPWD|SHLVL|_)=' > '{state}.next' && mv '{state}.next' '{state}'\n"
        );
        let mut command = Command::new("bash");
        command
            .args(["-eo", "pipefail", "-c", &wrapped])
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|e| format!("bash: {e}"))?;
        self.groups.push(child.id());
        let deadline = Instant::now() + BLOCK_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if Instant::now() > deadline {
                signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
                let text = std::fs::read_to_string(&out_path).unwrap_or_default();
                return Err(format!(
                    "timed out after {BLOCK_TIMEOUT:?}; output so far:\n{text}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = std::fs::read_to_string(&out_path).map_err(|e| e.to_string())?;
        if status.success() {
            Ok(text)
        } else {
            Err(format!("exited with {status}; output:\n{text}"))
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        for group in &self.groups {
            if let Ok(pid) = libc::pid_t::try_from(*group) {
                // SAFETY: kill(2) of a process group this runner created.
                unsafe {
                    libc::kill(-pid, libc::SIGTERM);
                }
            }
        }
    }
}

fn redactions(tmp: &Path) -> snapbox::Redactions {
    let mut redactions = snapbox::Redactions::new();
    let rules: [(&'static str, &str); 2] = [
        ("[HASH]", r"\b[0-9a-f]{40}\b"),
        (
            "[TIME]",
            r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)",
        ),
    ];
    for (placeholder, pattern) in rules {
        let regex = regex::Regex::new(pattern).expect("placeholder pattern");
        redactions
            .insert(placeholder, regex)
            .expect("placeholder name");
    }
    redactions
        .insert("[TMP]", tmp.display().to_string())
        .expect("placeholder name");
    redactions
}

/// Blocks marked `norun` today: the count may go down, never up (lower it with it).
const MAX_UNRUN: usize = 19;

/// Every page's blocks, by page name; a page that does not parse fails the test.
fn parse_pages(root: &Path) -> Vec<(String, Vec<Block>)> {
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for page in pages(root) {
        let text = std::fs::read_to_string(&page).expect("reading a page");
        let name = page
            .strip_prefix(root)
            .unwrap_or(&page)
            .display()
            .to_string();
        match parse(&text) {
            Ok(blocks) => parsed.push((name, blocks)),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    parsed
}

/// `<target>/artefacts`, where the suite leaves what `scripts/test.sh` reports.
fn artefacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("artefacts");
    std::fs::create_dir_all(&dir).expect("artefact directory");
    dir
}

#[test]
fn unrun_blocks_are_counted_reported_and_do_not_grow() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (mut run, mut unrun) = (0, Vec::new());
    for (name, blocks) in parse_pages(&root) {
        for block in blocks {
            match block.mark {
                Mark::Run => run += 1,
                Mark::NoRun => unrun.push(format!("{name}:{}", block.line)),
            }
        }
    }
    let report = format!(
        "documentation shell blocks: {run} run, {} not run (at most {MAX_UNRUN}):\n{}\n",
        unrun.len(),
        unrun
            .iter()
            .map(|at| format!("  {at}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let path = artefacts().join("docs-blocks.txt");
    std::fs::write(&path, &report).expect("writing the block report");
    assert!(
        unrun.len() <= MAX_UNRUN,
        "{report}more unrun blocks than the {MAX_UNRUN} allowed: make the new one run against `dev`"
    );
}

#[test]
fn documented_commands_run_and_print_what_the_docs_show() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let parsed = parse_pages(&root);
    let kubectl = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        kubectl,
        "the documentation test needs kubectl on PATH (Debian: apt-get install kubernetes-client; scripts/build-deps.sh installs it)"
    );

    let tmp = tempfile::Builder::new()
        .prefix("streamspace-docs-")
        .tempdir()
        .expect("tempdir");
    // Canonical, so the `[TMP]` placeholder matches what commands print.
    let tmp_path = tmp.path().canonicalize().expect("tempdir path");
    let bin = tmp_path.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_streamspace-controller"),
        bin.join("streamspace-controller"),
    )
    .expect("linking the binary");
    let state = tmp_path.join("env.sh");
    std::fs::write(&state, "").expect("state file");

    let dev = Dev::start(&tmp_path, free_port());
    // Without --log-file, the logs go to streamspace-dev.log in the temp directory.
    assert_eq!(dev.log, tmp_path.join("streamspace-dev.log"));
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut env: Vec<(String, String)> =
        ["KUBECONFIG", "STREAMSPACE_API", "ADMIN_TOKEN", "USER_TOKEN"]
            .into_iter()
            .map(|name| (name.to_string(), dev.export(name).to_string()))
            .collect();
    let mut runner = Runner {
        root: root.clone(),
        tmp: tmp_path.clone(),
        state,
        env: vec![
            ("TMPDIR".into(), tmp_path.display().to_string()),
            ("PATH".into(), path),
            ("RUST_LOG".into(), "warn".into()),
            // Errors as a reader sees them, without a backtrace.
            ("RUST_BACKTRACE".into(), "0".into()),
            // `git commit` in the examples needs an identity; a reader has their own.
            ("GIT_AUTHOR_NAME".into(), "docs test".into()),
            ("GIT_AUTHOR_EMAIL".into(), "docs@streamspace.invalid".into()),
            ("GIT_COMMITTER_NAME".into(), "docs test".into()),
            (
                "GIT_COMMITTER_EMAIL".into(),
                "docs@streamspace.invalid".into(),
            ),
        ],
        groups: Vec::new(),
        counter: 0,
    };
    runner.env.append(&mut env);
    let assert = snapbox::Assert::new().redact_with(redactions(&tmp_path));

    let (mut run, mut unrun) = (0, Vec::new());
    let mut failures = String::new();
    'pages: for (name, blocks) in &parsed {
        for block in blocks {
            let at = format!("{name}:{}", block.line);
            if block.mark == Mark::NoRun {
                unrun.push(at);
                continue;
            }
            run += 1;
            eprintln!("docs: running {at}");
            match runner.run(&block.script) {
                Ok(output) => {
                    if let Some(expected) = &block.expected {
                        let checked = assert.try_eq(
                            Some(&at as &dyn std::fmt::Display),
                            snapbox::Data::text(output),
                            snapbox::Data::text(expected.clone()),
                        );
                        if let Err(e) = checked {
                            let _ = writeln!(failures, "{at}: output differs from the doc:\n{e}");
                        }
                    }
                }
                Err(e) => {
                    let _ = writeln!(failures, "{at}: {e}");
                    // Later blocks of the page build on this one.
                    continue 'pages;
                }
            }
        }
    }
    drop(runner);
    // The logs went to the file only, and the session table (not a terminal) has no escapes.
    let logged = std::fs::read_to_string(&dev.log).unwrap_or_default();
    let printed = std::fs::read_to_string(&dev.stdout).unwrap_or_default();
    let errors = dev.errors();
    drop(dev);
    assert!(
        logged.contains(LOG_LINE),
        "log lines in {}",
        tmp_path.display()
    );
    assert!(
        !errors.contains(LOG_LINE),
        "without -v no log line on standard error:\n{errors}"
    );
    assert!(
        printed.contains("NAMESPACE") && !printed.contains("\x1b["),
        "a plain session table on a pipe:\n{printed:?}"
    );
    eprintln!(
        "docs: {run} shell blocks run, {} not run: {}",
        unrun.len(),
        unrun.join(", ")
    );
    assert!(failures.is_empty(), "{failures}");
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn run_blocks_take_the_text_block_after_them_as_expected_output() {
        let text = "# t\n\n```sh run\necho hi\n```\n\n```text\nhi\n```\n\n```sh norun\nhelm install x\n```\n\n```yaml\na: 1\n```\n";
        let blocks = parse(text).expect("parses");
        assert_eq!(
            blocks,
            vec![
                Block {
                    line: 3,
                    mark: Mark::Run,
                    script: "echo hi\n".into(),
                    expected: Some("hi\n".into()),
                },
                Block {
                    line: 11,
                    mark: Mark::NoRun,
                    script: "helm install x\n".into(),
                    expected: None,
                },
            ]
        );
    }

    #[test]
    fn a_text_block_after_prose_is_not_expected_output() {
        let text = "```sh run\ntrue\n```\nsome prose\n```text\nx\n```\n";
        let blocks = parse(text).expect("parses");
        assert_eq!(blocks[0].expected, None);
    }

    #[test]
    fn an_unlabelled_block_starting_with_a_prompt_needs_a_marker() {
        let error = parse("x\n\n```\n$ helm install x\nError: bad\n```\n").expect_err("prompt");
        assert!(
            error.contains("line 3") && error.contains("console norun"),
            "{error}"
        );
        assert_eq!(
            parse("```\nError: bad\n```\n").expect("output only"),
            vec![]
        );
        let marked = parse("```console norun\n$ helm install x\n```\n").expect("marked");
        assert_eq!(marked[0].mark, Mark::NoRun);
    }

    #[test]
    fn the_block_dev_prints_gives_its_exports_and_log_file() {
        let rendered = block::Block {
            kubeconfig: Some(Path::new("/tmp/cp/kubeconfig")),
            api_url: "http://127.0.0.1:41000",
            admin: ("streamspace-admin", "a1"),
            user: Some(("alice", "u1")),
            tokens_file: None,
            gitops_repo: None,
            log_file: Some(Path::new("/tmp/x/streamspace-dev.log")),
            template: "firefox-browser",
            program: "streamspace-controller",
        }
        .render();
        let head = &rendered[..rendered.len() / 2];
        assert_eq!(
            parse_dev_block(&format!("starting...\n{head}")),
            None,
            "incomplete"
        );
        let (exports, log) = parse_dev_block(&format!("starting...\n{rendered}\nNAMESPACE ...\n"))
            .expect("complete");
        assert_eq!(log, Path::new("/tmp/x/streamspace-dev.log"));
        let names: Vec<(&str, &str)> = exports
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("KUBECONFIG", "/tmp/cp/kubeconfig"),
                ("STREAMSPACE_API", "http://127.0.0.1:41000"),
                ("ADMIN_TOKEN", "a1"),
                ("USER_TOKEN", "u1"),
            ]
        );
    }

    #[test]
    fn unmarked_shell_blocks_and_unclosed_fences_are_errors() {
        assert!(
            parse("x\n```sh\nls\n```\n")
                .expect_err("unmarked")
                .contains("line 2")
        );
        assert!(parse("```bash\n").is_err());
        let indented = "- item\n  ```sh norun\n  ls\n  ```\n";
        assert_eq!(parse(indented).expect("parses")[0].script, "ls\n");
    }
}
