//! `cloudkey dev up`, `cloudkey status`, `cloudkey dev down` end to end, with the real binaries,
//! in a temporary directory: the cluster comes up and prints what to export, the CLI reports
//! it, a second `up` sees it running, `down` stops every process, `up` again restarts it with
//! its data, and `down --purge` removes it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use cloudkey_node::dev::{self, NodeFiles};

/// Kills whatever the pid file of `dir` lists when dropped (a failed test leaves no process).
pub(crate) struct Reaper(pub(crate) PathBuf);

impl Reaper {
    pub(crate) fn pids(&self) -> Vec<(u64, u32)> {
        std::fs::read_to_string(self.0.join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for (id, pid) in self.pids() {
            if dev::pid_alive(pid, &NodeFiles::new(&self.0, id).config) {
                let _ = dev::send_signal(pid, "KILL");
            }
        }
    }
}

pub(crate) async fn cloudkey(args: &[&str], cwd: &Path) -> Result<Output> {
    cloudkey_env(args, cwd, &[]).await
}

/// Runs the `cloudkey` CLI in `cwd` with extra environment variables.
pub(crate) async fn cloudkey_env(
    args: &[&str],
    cwd: &Path,
    env: &[(&str, &str)],
) -> Result<Output> {
    let bin = cloudkey_tests::cli_binary()?;
    let node = cloudkey_tests::node_binary()?;
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let cwd = cwd.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&bin)
            .args(&args)
            .current_dir(&cwd)
            .env(dev::NODE_BIN_ENV, &node)
            .env_remove("CLOUDKEY_CONFIG")
            .env_remove("CLOUDKEY_OFFICER_PIN")
            .envs(env)
            .output()
    })
    .await??;
    Ok(out)
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_up_status_and_down_end_to_end() -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("cloudkey-dev-").tempdir()?;
    // The default directory, relative to the working directory: `dev up`, `status` and
    // `dev down` run without --dir or --config, as a developer would type them.
    let dir = tmp.path().join(dev::DEFAULT_DIR);
    let reaper = Reaper(dir.clone());
    let dir_arg = dir.to_str().context("utf-8 path")?;

    let up = cloudkey(
        &["dev", "up", "--nodes", "3", "--chips-per-node", "1"],
        tmp.path(),
    )
    .await?;
    ensure!(up.status.success(), "dev up failed: {}", text(&up));
    let out = String::from_utf8_lossy(&up.stdout).into_owned();
    let pkcs11 = dir.canonicalize()?.join("pkcs11.toml");
    ensure!(
        out.contains(&format!(
            "export CLOUDKEY_PKCS11_CONFIG={}",
            pkcs11.display()
        )),
        "the export line: {out}"
    );
    ensure!(
        out.contains("pkcs11-tool --module "),
        "the pkcs11-tool line: {out}"
    );
    ensure!(
        out.contains("user PIN 1234") && out.contains("SO PIN 12345678"),
        "the PINs: {out}"
    );
    ensure!(pkcs11.is_file(), "pkcs11.toml written");
    let pids = reaper.pids();
    ensure!(pids.len() == 3, "three nodes recorded: {pids:?}");
    // Issue 11, item 7: each node's directory holds the key that unseals its soft chips (next
    // to data/, which the node accepts), and `dev up` says so.
    let keys_line = format!(
        "{} each node's NVRAM key is a plain file next to its data ({})",
        dev::DEV_KEYS_NOTICE,
        dir.canonicalize()?
            .join("node-<i>")
            .join("nvram.key")
            .display()
    );
    ensure!(
        out.lines().filter(|l| l.starts_with(&keys_line)).count() == 1,
        "one line {keys_line:?}: {out}"
    );
    ensure!(
        out.contains("production nodes take it from outside the node's directory"),
        "the development-keys line points at production: {out}"
    );
    for (id, _) in &pids {
        let files = NodeFiles::new(&dir, *id);
        ensure!(
            files.nvram_key.is_file() && files.nvram_key.parent() == files.data_dir.parent(),
            "node {id}'s key is a file next to its data: {}",
            files.nvram_key.display()
        );
    }

    let operator = dir.join("operator.toml");
    let op = operator.to_str().context("utf-8 path")?;
    let status = cloudkey(&["status"], tmp.path()).await?;
    let st = String::from_utf8_lossy(&status.stdout).into_owned();
    ensure!(status.status.success(), "status failed: {}", text(&status));
    ensure!(
        st.contains("3/3 node(s) reachable") && st.contains("leader node"),
        "status: {st}"
    );
    ensure!(
        !st.contains("UNREACHABLE") && st.matches("domain yes").count() == 3,
        "status: {st}"
    );
    let tokens = cloudkey(&["--config", op, "token", "list"], tmp.path()).await?;
    ensure!(
        tokens.status.success() && String::from_utf8_lossy(&tokens.stdout).contains(" dev "),
        "token list: {}",
        text(&tokens)
    );

    let again = cloudkey(&["dev", "up", "--dir", dir_arg], tmp.path()).await?;
    let again_out = String::from_utf8_lossy(&again.stdout).into_owned();
    ensure!(
        again.status.success() && again_out.contains("already up"),
        "second dev up: {}",
        text(&again)
    );
    ensure!(
        again_out.contains(&keys_line),
        "a running cluster's summary names its development keys too: {again_out}"
    );

    let down = cloudkey(&["dev", "down"], tmp.path()).await?;
    ensure!(down.status.success(), "dev down failed: {}", text(&down));
    for (id, pid) in &pids {
        ensure!(
            !dev::pid_alive(*pid, &NodeFiles::new(&dir, *id).config),
            "node {id} (pid {pid}) still runs after dev down"
        );
    }
    ensure!(!dir.join("pids").exists(), "the pid file is removed");
    let status = cloudkey(&["--config", op, "status"], tmp.path()).await?;
    ensure!(
        !status.status.success(),
        "status with every node down fails: {}",
        text(&status)
    );

    // Up again: the same cluster, restarted from its data (the token is still there).
    let up = cloudkey(&["dev", "up", "--dir", dir_arg], tmp.path()).await?;
    ensure!(up.status.success(), "dev up after down: {}", text(&up));
    let tokens = cloudkey(&["--config", op, "token", "list"], tmp.path()).await?;
    let listed = String::from_utf8_lossy(&tokens.stdout).into_owned();
    ensure!(
        listed.matches(" dev ").count() == 1,
        "one dev token after the restart: {listed}"
    );

    let down = cloudkey(&["dev", "down", "--dir", dir_arg, "--purge"], tmp.path()).await?;
    ensure!(down.status.success(), "dev down --purge: {}", text(&down));
    ensure!(!dir.exists(), "--purge removes the directory");
    drop(reaper);
    Ok(())
}
