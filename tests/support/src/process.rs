//! Child processes that announce themselves with one stdout line: `cloudkey-node` prints
//! `LISTENING <addr>` once it serves (it binds port 0 in tests, so the line is how a test learns
//! the port), `cloudkey-chip-emulator` prints `PTY <path>`.
//!
//! A [`Process`] appends the child's stdout and stderr to files (one file for both, or two;
//! by default in a temporary directory of its own) and reads the announcement from there, so a
//! restart finds the new line after the old ones and the whole log survives the process. It is
//! killed (SIGKILL) and reaped on drop; when the test is failing, the log's tail is printed
//! first. [`NodeProcess`] is a node: a [`Process`] whose announcement is its address.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::wait::{wait_for, wait_for_blocking};

/// Lines of the log a failing test shows.
const TAIL_LINES: usize = 40;

/// How to start a [`Process`].
#[derive(Clone, Debug)]
pub struct Launch {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    env_removes: Vec<OsString>,
    name: String,
    announce: String,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
    show_log_on_panic: bool,
}

impl Launch {
    /// Runs `program`, which announces itself with a stdout line starting with `announce`.
    pub fn new(program: impl Into<PathBuf>, announce: &str) -> Self {
        let program = program.into();
        let name = program
            .file_name()
            .map_or_else(|| "process".into(), |n| n.to_string_lossy().into_owned());
        Self {
            program,
            args: Vec::new(),
            envs: Vec::new(),
            env_removes: Vec::new(),
            name,
            announce: announce.into(),
            stdout: None,
            stderr: None,
            show_log_on_panic: true,
        }
    }

    /// One more argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// More arguments.
    #[must_use]
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// One more environment variable for the child.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// An environment variable of this process that the child does not inherit.
    #[must_use]
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env_removes.push(key.into());
        self
    }

    /// The name messages use (default: the program's file name).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Appends stdout and stderr to this one file.
    #[must_use]
    pub fn log_to(mut self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        self.stdout = Some(path.clone());
        self.stderr = Some(path);
        self
    }

    /// Appends stdout to `stdout` and stderr to `stderr`.
    #[must_use]
    pub fn logs_to(mut self, stdout: impl Into<PathBuf>, stderr: impl Into<PathBuf>) -> Self {
        self.stdout = Some(stdout.into());
        self.stderr = Some(stderr.into());
        self
    }

    /// Whether a failing test shows the log's tail when the process is dropped (default yes).
    #[must_use]
    pub fn show_log_on_panic(mut self, show: bool) -> Self {
        self.show_log_on_panic = show;
        self
    }
}

/// A process that did not start, or not as it should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartError(String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A child process (see the [module docs](self)).
pub struct Process {
    launch: Launch,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Holds the log files when the launch named none.
    _logs: Option<TempDir>,
    child: Option<Child>,
    /// Length of the stdout file before the current run: where its announcement is looked for.
    offset: u64,
    announced: Option<String>,
}

impl Process {
    /// Starts `launch` (without waiting for its announcement).
    ///
    /// # Errors
    /// If the log files cannot be opened or the program cannot be started.
    pub fn spawn(launch: Launch) -> Result<Self, StartError> {
        let (logs, stdout, stderr) = match (&launch.stdout, &launch.stderr) {
            (Some(o), Some(e)) => (None, o.clone(), e.clone()),
            _ => {
                let dir = tempfile::Builder::new()
                    .prefix("cloudkey-test-process-")
                    .tempdir()
                    .map_err(|e| StartError(format!("a log directory: {e}")))?;
                let (o, e) = (dir.path().join("stdout"), dir.path().join("stderr"));
                (Some(dir), o, e)
            }
        };
        let mut p = Self {
            launch,
            stdout,
            stderr,
            _logs: logs,
            child: None,
            offset: 0,
            announced: None,
        };
        p.start_child()?;
        Ok(p)
    }

    /// [`Process::spawn`], then [`Process::wait_announced`].
    ///
    /// # Errors
    /// As those two.
    pub fn start(launch: Launch, timeout: Duration) -> Result<Self, StartError> {
        let mut p = Self::spawn(launch)?;
        p.wait_announced(timeout)?;
        Ok(p)
    }

    fn start_child(&mut self) -> Result<(), StartError> {
        let open = |path: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| StartError(format!("opening {}: {e}", path.display())))
        };
        let out = open(&self.stdout)?;
        self.offset = out.metadata().map_or(0, |m| m.len());
        let err = if self.stderr == self.stdout {
            out.try_clone()
                .map_err(|e| StartError(format!("{}: {e}", self.stdout.display())))?
        } else {
            open(&self.stderr)?
        };
        let l = &self.launch;
        let mut command = Command::new(&l.program);
        for key in &l.env_removes {
            command.env_remove(key);
        }
        let child = command
            .args(&l.args)
            .envs(l.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| StartError(format!("starting {}: {e}", l.program.display())))?;
        self.child = Some(child);
        self.announced = None;
        Ok(())
    }

    /// The announcement if it is there; an error if the process ended without one.
    fn poll_announced(&mut self) -> Result<Option<String>, StartError> {
        let text = read_from(&self.stdout, self.offset);
        let prefix = self.launch.announce.as_str();
        // Only a whole line: the rest of it may not be written yet.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        if let Some(rest) = whole.lines().find_map(|l| l.strip_prefix(prefix)) {
            let value = rest.trim().to_owned();
            self.announced = Some(value.clone());
            return Ok(Some(value));
        }
        let name = &self.launch.name;
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| StartError(format!("{name} is not running")))?;
        match child.try_wait() {
            Ok(None) => Ok(None),
            Ok(Some(status)) => Err(StartError(format!(
                "{name} exited ({status}) before printing {prefix:?}; its log says:\n{}",
                self.log_tail()
            ))),
            Err(e) => Err(StartError(format!("waiting for {name}: {e}"))),
        }
    }

    fn timed_out(&self, timeout: Duration) -> StartError {
        StartError(format!(
            "{} did not print {:?} within {timeout:?}; its log says:\n{}",
            self.launch.name,
            self.launch.announce,
            self.log_tail()
        ))
    }

    /// Waits (blocking) for the announcement and returns what follows the prefix.
    ///
    /// # Errors
    /// If the process exits first or `timeout` passes.
    pub fn wait_announced(&mut self, timeout: Duration) -> Result<String, StartError> {
        let what = format!("{}'s announcement", self.launch.name);
        match wait_for_blocking(&what, timeout, || self.poll_announced().transpose()) {
            Ok(r) => r,
            Err(_) => Err(self.timed_out(timeout)),
        }
    }

    /// [`Process::wait_announced`] in an async test.
    ///
    /// # Errors
    /// If the process exits first or `timeout` passes.
    pub async fn wait_announced_async(&mut self, timeout: Duration) -> Result<String, StartError> {
        let what = format!("{}'s announcement", self.launch.name);
        let waited = wait_for(&what, timeout, || {
            let r = self.poll_announced().transpose();
            async move { r }
        })
        .await;
        match waited {
            Ok(r) => r,
            Err(_) => Err(self.timed_out(timeout)),
        }
    }

    /// What the current run announced (after the prefix), once it has.
    #[must_use]
    pub fn announced(&self) -> Option<&str> {
        self.announced.as_deref()
    }

    /// The process id, while started.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process was started and not since killed, stopped or seen to exit here.
    #[must_use]
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process is alive (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none() && self.child.is_some()
    }

    /// The exit status if the process has exited (it is then reaped and no longer started).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// Sends `signal` (`TERM`, `STOP`, `CONT`, ...); whether it was delivered.
    pub fn signal(&self, signal: &str) -> bool {
        self.pid().is_some_and(|pid| send_signal(pid, signal))
    }

    /// SIGKILL, and reaps it. Nothing happens if it is not started.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop_begin(&mut self) -> Result<(), StartError> {
        if self.signal("TERM") {
            Ok(())
        } else {
            self.kill();
            Err(StartError(format!(
                "could not send SIGTERM to {}",
                self.launch.name
            )))
        }
    }

    fn stop_timed_out(&mut self, timeout: Duration) -> StartError {
        self.kill();
        StartError(format!(
            "{} did not exit within {timeout:?} of SIGTERM (killed); its log says:\n{}",
            self.launch.name,
            self.log_tail()
        ))
    }

    /// SIGTERM, then waits (blocking) for the exit; SIGKILL after `timeout`.
    ///
    /// # Errors
    /// If the signal cannot be sent, or the process outlives `timeout`.
    pub fn stop_blocking(&mut self, timeout: Duration) -> Result<ExitStatus, StartError> {
        self.stop_begin()?;
        let what = format!("{} to exit", self.launch.name);
        match wait_for_blocking(&what, timeout, || self.try_exit()) {
            Ok(status) => Ok(status),
            Err(_) => Err(self.stop_timed_out(timeout)),
        }
    }

    /// [`Process::stop_blocking`] in an async test.
    ///
    /// # Errors
    /// If the signal cannot be sent, or the process outlives `timeout`.
    pub async fn stop(&mut self, timeout: Duration) -> Result<ExitStatus, StartError> {
        self.stop_begin()?;
        let what = format!("{} to exit", self.launch.name);
        let waited = wait_for(&what, timeout, || {
            let r = self.try_exit();
            async move { r }
        })
        .await;
        match waited {
            Ok(status) => Ok(status),
            Err(_) => Err(self.stop_timed_out(timeout)),
        }
    }

    /// Starts the program again with the same launch and logs (without waiting for its
    /// announcement).
    ///
    /// # Errors
    /// As [`Process::spawn`].
    ///
    /// # Panics
    /// If it is still started.
    pub fn restart(&mut self) -> Result<(), StartError> {
        assert!(
            self.child.is_none(),
            "{} is still running",
            self.launch.name
        );
        self.start_child()
    }

    /// The stdout lines of the current run after its announcement (complete once it exited).
    #[must_use]
    pub fn stdout_after_announcement(&self) -> Vec<String> {
        let text = read_from(&self.stdout, self.offset);
        let prefix = self.launch.announce.as_str();
        text.lines()
            .skip_while(|l| !l.starts_with(prefix))
            .skip(1)
            .map(str::to_owned)
            .collect()
    }

    /// The whole log (stderr, and stdout when they share a file), every run.
    #[must_use]
    pub fn log(&self) -> String {
        read_from(&self.stderr, 0)
    }

    /// The last lines of [`Process::log`].
    #[must_use]
    pub fn log_tail(&self) -> String {
        tail(&self.log(), TAIL_LINES)
    }

    /// The name given at launch.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.launch.name
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() && self.launch.show_log_on_panic {
            eprintln!(
                "---- {} log tail ----\n{}",
                self.launch.name,
                self.log_tail()
            );
        }
    }
}

/// A `cloudkey-node` process; it announces `LISTENING <addr>`.
pub struct NodeProcess {
    process: Process,
    addr: Option<SocketAddr>,
}

impl NodeProcess {
    /// The launch of `bin --config <config>`.
    pub fn launch(bin: impl Into<PathBuf>, config: &Path) -> Launch {
        Launch::new(bin, "LISTENING ").arg("--config").arg(config)
    }

    /// Starts `launch` (see [`NodeProcess::listening`]).
    ///
    /// # Errors
    /// As [`Process::spawn`].
    pub fn spawn(launch: Launch) -> Result<Self, StartError> {
        Ok(Self {
            process: Process::spawn(launch)?,
            addr: None,
        })
    }

    fn parse(&mut self, line: &str) -> Result<SocketAddr, StartError> {
        let addr = line.parse().map_err(|_| {
            StartError(format!(
                "{}: bad LISTENING line {line:?}",
                self.process.name()
            ))
        })?;
        self.addr = Some(addr);
        Ok(addr)
    }

    /// Waits until the node serves; its address.
    ///
    /// # Errors
    /// As [`Process::wait_announced`], or on a line that is no address.
    pub async fn listening(&mut self, timeout: Duration) -> Result<SocketAddr, StartError> {
        let line = self.process.wait_announced_async(timeout).await?;
        self.parse(&line)
    }

    /// [`NodeProcess::listening`] in a blocking test.
    ///
    /// # Errors
    /// As [`NodeProcess::listening`].
    pub fn listening_blocking(&mut self, timeout: Duration) -> Result<SocketAddr, StartError> {
        let line = self.process.wait_announced(timeout)?;
        self.parse(&line)
    }

    /// The address it last announced.
    #[must_use]
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }
}

impl Deref for NodeProcess {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for NodeProcess {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// Sends `signal` (`TERM`, `KILL`, `STOP`, ...) to `pid` with the `kill` utility (the test
/// crates have no unsafe code for kill(2)); whether it was delivered.
#[must_use]
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `n` lines of `text`.
#[must_use]
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Launch {
        Launch::new("sh", "READY ").args(["-c", script]).name("sh")
    }

    #[test]
    fn the_announcement_is_read_and_a_restart_finds_the_new_one() {
        let mut p = Process::start(
            sh("echo starting >&2; echo READY one; echo extra; exec sleep 30"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(p.announced(), Some("one"));
        assert!(p.is_running());
        let stopped = p.stop_blocking(Duration::from_secs(10)).unwrap();
        assert!(!stopped.success(), "ended by SIGTERM");
        assert_eq!(p.stdout_after_announcement(), ["extra"]);
        assert!(p.log().contains("starting"));
        p.restart().unwrap();
        assert_eq!(p.wait_announced(Duration::from_secs(10)).unwrap(), "one");
        p.kill();
        assert!(!p.is_started());
    }

    #[test]
    fn an_exit_before_the_announcement_fails_with_the_log() {
        let mut p = Process::spawn(sh("echo broken config >&2; exit 64")).unwrap();
        let e = p.wait_announced(Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("broken config"), "{e}");
        let mut p = Process::spawn(sh("exec sleep 30")).unwrap();
        let e = p.wait_announced(Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("within"), "{e}");
    }

    #[tokio::test]
    async fn a_node_announces_its_address() {
        let dir = tempfile::tempdir().unwrap();
        let launch = Launch::new("sh", "LISTENING ")
            .args(["-c", "echo LISTENING 127.0.0.1:4242; exec sleep 30"])
            .log_to(dir.path().join("node.log"));
        let mut n = NodeProcess::spawn(launch).unwrap();
        let addr = n.listening(Duration::from_secs(10)).await.unwrap();
        assert_eq!(addr, "127.0.0.1:4242".parse().unwrap());
        assert_eq!(n.addr(), Some(addr));
        assert!(n.stop(Duration::from_secs(10)).await.is_ok());
        assert!(n.log().contains("LISTENING"), "one file for both");
    }
}
