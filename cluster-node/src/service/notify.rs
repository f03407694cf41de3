//! Where one-time SMS codes go (`[notifier]` in the node's configuration).
//!
//! Real deployments send a code to the officer's phone through the bank's SMS gateway; the
//! node does not know phone numbers or gateway protocols, so it hands each code to a site
//! program ([`CommandNotifier`]) that does. The development notifier ([`FileNotifier`])
//! appends codes to a file.

use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt as _;

use crate::config::NotifierSpec;

/// Longest part of a failing program's standard error repeated in the error.
const STDERR_SHOWN: usize = 200;

/// Delivers one-time codes to officers.
pub trait Notifier: Send + Sync + fmt::Debug {
    /// Delivers `code` for `terminal` to `officer`.
    ///
    /// # Errors
    /// A one-line reason.
    fn send_code<'a>(
        &'a self,
        officer: &'a str,
        terminal: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The notifier a configuration names.
#[must_use]
pub fn notifier(spec: NotifierSpec) -> Arc<dyn Notifier> {
    match spec {
        NotifierSpec::File(path) => Arc::new(FileNotifier::new(path)),
        NotifierSpec::Command {
            program,
            args,
            timeout,
        } => Arc::new(CommandNotifier {
            program,
            args,
            timeout,
        }),
    }
}

/// The development notifier: one line per code, appended to a file (mode 0600).
#[derive(Debug)]
pub struct FileNotifier {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FileNotifier {
    /// A notifier writing to `path`.
    #[must_use]
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
        }
    }

    fn append(&self, officer: &str, terminal: &str, code: &str) -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let _g = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        writeln!(
            f,
            "{now_ms} officer={officer} terminal={terminal} code={code}"
        )
        .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

impl Notifier for FileNotifier {
    fn send_code<'a>(
        &'a self,
        officer: &'a str,
        terminal: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        // One short append to a local file: not worth a trip to the blocking pool.
        Box::pin(std::future::ready(self.append(officer, terminal, code)))
    }
}

/// Hands each code to a site program, typically the client of the bank's SMS gateway.
///
/// The program is run once per code, without a shell, with the configured arguments and:
/// * `CLOUDKEY_OFFICER` and `CLOUDKEY_TERMINAL` in its environment (the program maps the officer
///   to a phone number from the site's directory);
/// * the code and a newline on its standard input, never in its arguments or environment, where
///   other local users could read it (`ps`, `/proc`).
///
/// Exit status 0 means delivered. Any other status fails the request with the first
/// [`STDERR_SHOWN`] bytes of the program's standard error; a program still running after the
/// timeout is killed and the request fails. The code stays valid (and unused) either way, and
/// the officer may ask for another.
#[derive(Debug)]
pub struct CommandNotifier {
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
}

impl CommandNotifier {
    async fn run(&self, officer: &str, terminal: &str, code: &str) -> Result<(), String> {
        let name = self.program.display();
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .env("CLOUDKEY_OFFICER", officer)
            .env("CLOUDKEY_TERMINAL", terminal)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {name}: {e}"))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| format!("{name}: no standard input"))?;
        let deliver = async move {
            let mut line = zeroize::Zeroizing::new(Vec::with_capacity(code.len() + 1));
            line.extend_from_slice(code.as_bytes());
            line.push(b'\n');
            // A program that exits without reading its input is judged by its status.
            let _ = stdin.write_all(&line).await;
            drop(stdin);
            child.wait_with_output().await
        };
        match tokio::time::timeout(self.timeout, deliver).await {
            // Dropping the future dropped the child: `kill_on_drop` ends it.
            Err(_) => Err(format!(
                "{name} did not finish within {} ms and was stopped",
                self.timeout.as_millis()
            )),
            Ok(Err(e)) => Err(format!("{name}: {e}")),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let first = stderr.lines().next().unwrap_or("").trim();
                let shown: String = first.chars().take(STDERR_SHOWN).collect();
                Err(format!("{name} failed ({}): {shown}", out.status))
            }
        }
    }
}

impl Notifier for CommandNotifier {
    fn send_code<'a>(
        &'a self,
        officer: &'a str,
        terminal: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.run(officer, terminal, code))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;

    use super::*;

    /// A site program written as a shell script into `dir`.
    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("send-sms");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn command(program: PathBuf, args: &[&str], timeout: Duration) -> Arc<dyn Notifier> {
        notifier(NotifierSpec::Command {
            program,
            args: args.iter().map(|a| (*a).to_string()).collect(),
            timeout,
        })
    }

    #[tokio::test]
    async fn the_program_gets_the_code_on_stdin_and_the_names_in_its_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let program = script(
            dir.path(),
            r#"read code; echo "$1 $CLOUDKEY_OFFICER $CLOUDKEY_TERMINAL $code $#" > "$2""#,
        );
        let n = command(
            program,
            &["--route", out.to_str().expect("utf-8")],
            Duration::from_secs(10),
        );
        n.send_code("alice", "atm-0001", "123456")
            .await
            .expect("delivered");
        assert_eq!(
            std::fs::read_to_string(&out).expect("out"),
            "--route alice atm-0001 123456 2\n"
        );
    }

    #[tokio::test]
    async fn a_failing_program_fails_the_delivery_with_its_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let program = script(
            dir.path(),
            "echo 'gateway refused: no phone for bob' >&2; echo second line >&2; exit 3",
        );
        let n = command(program, &[], Duration::from_secs(10));
        let e = n.send_code("bob", "atm-0001", "654321").await.unwrap_err();
        assert!(e.contains("gateway refused: no phone for bob"), "{e}");
        assert!(
            e.contains('3') && !e.contains("second line") && !e.contains("654321"),
            "{e}"
        );
        let e = command(dir.path().join("missing"), &[], Duration::from_secs(1))
            .send_code("bob", "atm-0001", "654321")
            .await
            .unwrap_err();
        assert!(e.contains("cannot run") && e.contains("missing"), "{e}");
    }

    #[tokio::test]
    async fn a_hanging_program_is_stopped_at_the_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        let program = script(
            dir.path(),
            &format!("echo $$ > '{}'; exec sleep 60", pid_file.display()),
        );
        let n = command(program, &[], Duration::from_millis(300));
        let started = std::time::Instant::now();
        let e = n
            .send_code("carol", "atm-0001", "111111")
            .await
            .unwrap_err();
        assert!(e.contains("did not finish within 300 ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(30));
        // The program was killed, not left behind: its pid goes away (it is reaped by tokio's
        // orphan reaper; wait for that, bounded).
        let pid = std::fs::read_to_string(&pid_file).expect("pid");
        let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let gone = std::fs::read_to_string(proc.join("stat"))
                .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"));
            if gone {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the program still runs"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_file_notifier_appends_one_line_per_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sms.log");
        let n = notifier(NotifierSpec::File(path.clone()));
        n.send_code("alice", "atm-1", "000001").await.expect("one");
        n.send_code("bob", "atm-2", "000002").await.expect("two");
        let text = std::fs::read_to_string(&path).expect("log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].ends_with("officer=bob terminal=atm-2 code=000002"));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
