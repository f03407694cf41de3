//! `cloudkey-loadtest`: the command line. See `--help`, and the library's docs for what each
//! part does.
//!
//! ```text
//! cloudkey-loadtest [RUN OPTIONS] <TARGET> [TARGET OPTIONS] [-- <TARGET> [TARGET OPTIONS]]...
//! ```
//!
//! Several targets (separated by `--`) need `--compare`: they then run in alternation,
//! `A B A B ...` for `--rounds` rounds at each worker count, on identical workloads.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use cloudkey_loadtest::driver::{run_step, Progress, StepConfig};
use cloudkey_loadtest::plot;
use cloudkey_loadtest::stats::{Comparison, StepResult};
use cloudkey_loadtest::target::chip::{ChipOptions, ChipTarget};
use cloudkey_loadtest::target::client::{ClientOptions, ClientTarget};
use cloudkey_loadtest::target::pkcs11::{Pkcs11Options, Pkcs11Target};
use cloudkey_loadtest::target::{close_all, Session, Target};
use cloudkey_loadtest::workload::{Alg, Workload};
use serde::Serialize;

const AFTER_HELP: &str = "\
Targets:
  pkcs11 --module PATH [--token LABEL | --slot ID] --pin PIN
      any PKCS#11 module (cloudkey's reads CLOUDKEY_PKCS11_CONFIG as usual)
  client --config FILE --pin PIN [--token LABEL] [--clients N]
      the cluster through the protocol client (FILE: client settings or pkcs11.toml)
  chip [--chips N] [--slots N] [--latency-us N]
      software chips in this process behind a ChipPool: the raw crypto ceiling

Several targets, separated by `--`, need --compare; they run in alternation (A B A B ...)
for --rounds rounds at each worker count, and the first is compared with each other one.

Examples:
  cloudkey-loadtest --workers 1,8,32 --duration 10 chip
  cloudkey-loadtest --alg p256 --workers 32 --compare --rounds 3 --json r.json --plot r.svg \\
      pkcs11 --module target/release/libcloudkey_pkcs11.so --token dev --pin 1234 \\
      -- pkcs11 --module /usr/lib/softhsm/libsofthsm2.so --token bench --pin 1234 -- chip
  cloudkey-loadtest --rate 5000 --workers 64 client --config .cloudkey-dev/pkcs11.toml --pin 1234";

/// Load tests of cloudkey and of any PKCS#11 token.
#[derive(Parser, Debug)]
#[command(
    name = "cloudkey-loadtest",
    version,
    after_help = AFTER_HELP,
    override_usage = "cloudkey-loadtest [OPTIONS] <TARGET> [TARGET OPTIONS] \
                      [-- <TARGET> [TARGET OPTIONS]]..."
)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    target: TargetCmd,
}

/// Only a target (the groups after `--`).
#[derive(Parser, Debug)]
#[command(name = "cloudkey-loadtest --", no_binary_name = true)]
struct TargetOnly {
    #[command(subcommand)]
    target: TargetCmd,
}

#[derive(Args, Debug, Clone, Serialize)]
struct RunArgs {
    /// Operations to issue.
    #[arg(long, value_enum, default_value_t = Workload::Sign)]
    workload: Workload,
    /// Key algorithm (p256, rsa2048, sm2, hmac).
    #[arg(long, value_enum, default_value_t = Alg::P256)]
    alg: Alg,
    /// Share of key generations in the `mix` workload, percent.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
    keygen_percent: u8,
    /// Worker counts, comma-separated (each a step; each worker has its own session).
    #[arg(long, value_delimiter = ',', default_value = "32")]
    workers: Vec<usize>,
    /// Measured seconds per step (with --count: the time bound).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Warm-up seconds before each step's measurement.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    warmup: f64,
    /// Stop each step after this many measured operations.
    #[arg(long)]
    count: Option<u64>,
    /// Open loop: schedule this many requests per second (latency from the intended start).
    #[arg(long, value_name = "OPS_PER_S")]
    rate: Option<f64>,
    /// Verify every signature with the independent verifier (default: a sample).
    #[arg(long)]
    verify: bool,
    /// Verify every N-th signature of each worker (and its first); 0 disables.
    #[arg(long, value_name = "N", default_value_t = 100)]
    verify_every: u64,
    /// Run several targets in alternation and compare the first with each other one.
    #[arg(long)]
    compare: bool,
    /// Rounds of a comparison.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write an SVG plot (throughput vs workers, latency CDF).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Prefix of the signing keys' labels (`<prefix>-<alg>`).
    #[arg(long, default_value = "cloudkey-loadtest")]
    label: String,
    /// Threads of this process's async runtime (client and chip targets).
    #[arg(long, default_value_t = 2)]
    runtime_threads: usize,
    /// No progress line (it is hidden anyway when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

#[derive(Subcommand, Debug, Clone)]
enum TargetCmd {
    /// Any PKCS#11 module.
    Pkcs11 {
        /// The module (.so).
        #[arg(long)]
        module: PathBuf,
        /// The token's label.
        #[arg(long, conflicts_with = "slot")]
        token: Option<String>,
        /// The slot id.
        #[arg(long)]
        slot: Option<u64>,
        /// The user PIN.
        #[arg(long)]
        pin: String,
        /// Name in reports (default: pkcs11:<module file stem>).
        #[arg(long)]
        name: Option<String>,
    },
    /// The cluster through cloudkey's protocol client.
    Client {
        /// Client settings, or the PKCS#11 module's configuration.
        #[arg(long)]
        config: PathBuf,
        /// The token's label (default: the configuration's first slot).
        #[arg(long)]
        token: Option<String>,
        /// The user PIN.
        #[arg(long)]
        pin: String,
        /// Protocol clients (QUIC endpoints), shared round-robin by the workers.
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Keep the keys a key-generation workload made.
        #[arg(long)]
        keep_generated: bool,
        /// Name in reports (default: client).
        #[arg(long)]
        name: Option<String>,
    },
    /// Software chips in this process (the raw crypto ceiling).
    Chip {
        /// Chips in the pool.
        #[arg(long, default_value_t = 2)]
        chips: usize,
        /// Key slots per chip.
        #[arg(long, default_value_t = 64)]
        slots: u32,
        /// Simulated latency of every chip command, microseconds.
        #[arg(long)]
        latency_us: Option<u64>,
        /// Name in reports (default: chip).
        #[arg(long)]
        name: Option<String>,
    },
}

impl TargetCmd {
    fn default_name(&self) -> String {
        match self {
            Self::Pkcs11 { name: Some(n), .. }
            | Self::Client { name: Some(n), .. }
            | Self::Chip { name: Some(n), .. } => n.clone(),
            Self::Pkcs11 { module, .. } => format!(
                "pkcs11:{}",
                module
                    .file_stem()
                    .map_or_else(|| "module".into(), |s| s.to_string_lossy())
            ),
            Self::Client { .. } => "client".into(),
            Self::Chip { .. } => "chip".into(),
        }
    }
}

/// Splits the arguments at each `--` into the main group and the further target groups.
fn split_groups(args: Vec<OsString>) -> (Vec<OsString>, Vec<Vec<OsString>>) {
    let mut groups = args.split(|a| a == "--").map(<[OsString]>::to_vec);
    let first = groups.next().unwrap_or_default();
    (first, groups.collect())
}

/// Parses the command line: the run options and every target.
fn parse(args: Vec<OsString>) -> Result<(RunArgs, Vec<TargetCmd>), clap::Error> {
    let (first, rest) = split_groups(args);
    let cli = Cli::try_parse_from(first)?;
    let mut targets = vec![cli.target];
    for g in rest {
        targets.push(TargetOnly::try_parse_from(g)?.target);
    }
    Ok((cli.run, targets))
}

#[derive(Serialize)]
struct Machine {
    nproc: usize,
    cpu_model: String,
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_model,
    }
}

#[derive(Serialize)]
struct TargetInfo {
    name: String,
    description: String,
}

#[derive(Serialize)]
struct Report<'a> {
    tool: &'static str,
    version: &'static str,
    command: Vec<String>,
    machine: Machine,
    run: &'a RunArgs,
    duration_s: f64,
    targets: Vec<TargetInfo>,
    steps: &'a [StepResult],
    comparisons: &'a [Comparison],
    cleanup_errors: Vec<String>,
}

/// A target set up, with its workers' sessions.
type Prepared = (Arc<dyn Target>, Vec<Box<dyn Session>>);

fn secs(what: &str, v: f64) -> Result<Duration> {
    if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
        bail!("--{what} {v}: give seconds between 0 and 86400");
    }
    Ok(Duration::from_secs_f64(v))
}

fn unique_names(targets: &[TargetCmd]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for t in targets {
        let base = t.default_name();
        let mut name = base.clone();
        let mut n = 2;
        while names.contains(&name) {
            name = format!("{base}#{n}");
            n += 1;
        }
        names.push(name);
    }
    names
}

fn build_target(
    cmd: &TargetCmd,
    name: String,
    run: &RunArgs,
    rt: &tokio::runtime::Handle,
) -> Result<Arc<dyn Target>> {
    Ok(match cmd.clone() {
        TargetCmd::Pkcs11 {
            module,
            token,
            slot,
            pin,
            ..
        } => Arc::new(Pkcs11Target::new(
            &Pkcs11Options {
                module,
                token,
                slot,
                pin,
                label_prefix: run.label.clone(),
                name,
            },
            run.alg,
            run.workload,
        )?),
        TargetCmd::Client {
            config,
            token,
            pin,
            clients,
            keep_generated,
            ..
        } => Arc::new(ClientTarget::new(
            &ClientOptions {
                config,
                token,
                pin,
                label_prefix: run.label.clone(),
                clients,
                keep_generated,
                name,
            },
            run.alg,
            run.workload,
            rt,
        )?),
        TargetCmd::Chip {
            chips,
            slots,
            latency_us,
            ..
        } => Arc::new(ChipTarget::new(
            &ChipOptions {
                chips,
                slots,
                latency: latency_us.map(Duration::from_micros),
                name,
            },
            run.alg,
            run.workload,
            rt,
        )?),
    })
}

fn run(run: &RunArgs, cmds: &[TargetCmd]) -> Result<()> {
    if cmds.len() > 1 && !run.compare {
        bail!("several targets need --compare");
    }
    if run.compare && cmds.len() < 2 {
        bail!("--compare needs at least two targets (separated by `--`)");
    }
    if run.workers.is_empty() || run.workers.iter().any(|&w| w == 0 || w > 4096) {
        bail!("--workers: give counts between 1 and 4096");
    }
    if let Some(r) = run.rate {
        if !r.is_finite() || r <= 0.0 || r > 10_000_000.0 {
            bail!("--rate {r}: give requests per second between 0 and 10000000");
        }
    }
    if run.rounds == 0 || run.rounds > 1000 {
        bail!("--rounds: between 1 and 1000");
    }
    let default_duration = if run.count.is_some() { 600.0 } else { 10.0 };
    let duration = secs("duration", run.duration.unwrap_or(default_duration))?;
    let warmup = secs("warmup", run.warmup)?;
    let rounds = if run.compare { run.rounds } else { 1 };
    let verify_every = if run.verify { 1 } else { run.verify_every };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(run.runtime_threads.clamp(1, 64))
        .thread_name("loadtest-rt")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let rt = runtime.handle().clone();

    let max_workers = run.workers.iter().copied().max().unwrap_or(1);
    let names = unique_names(cmds);
    let mut targets: Vec<Prepared> = Vec::new();
    for (cmd, name) in cmds.iter().zip(names) {
        let target = build_target(cmd, name.clone(), run, &rt)
            .with_context(|| format!("setting up target {name}"))?;
        eprintln!("target {name}: {}", target.describe());
        let sessions = (0..max_workers)
            .map(|w| target.open_session(w))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("opening {max_workers} sessions on {name}"))?;
        targets.push((target, sessions));
    }

    let progress = Progress::new(!run.no_progress);
    let started = std::time::Instant::now();
    let mut steps: Vec<StepResult> = Vec::new();
    for &workers in &run.workers {
        let cfg = StepConfig {
            workers,
            warmup,
            duration,
            count: run.count,
            rate: run.rate,
            workload: run.workload,
            keygen_percent: run.keygen_percent,
            verify_every,
        };
        for round in 1..=rounds {
            for (target, sessions) in &mut targets {
                let r = run_step(
                    target.name(),
                    round,
                    sessions,
                    target.verifier(),
                    &cfg,
                    &progress,
                );
                // Always with the round in a comparison, so the lines parse alike.
                let prefix = if run.compare {
                    format!("[round {round}/{rounds}] ")
                } else {
                    String::new()
                };
                println!("{prefix}{}", r.summary_line());
                steps.push(r);
            }
        }
    }

    let mut comparisons = Vec::new();
    if run.compare {
        println!("\ncomparisons ({rounds} rounds, alternating):");
        let first = targets[0].0.name().to_string();
        for &workers in &run.workers {
            for (other, _) in &targets[1..] {
                let c = Comparison::of(&first, other.name(), workers, &steps);
                println!("  {}", c.summary_line());
                comparisons.push(c);
            }
        }
    }

    let infos: Vec<TargetInfo> = targets
        .iter()
        .map(|(t, _)| TargetInfo {
            name: t.name().to_string(),
            description: t.describe(),
        })
        .collect();
    let title = format!(
        "cloudkey-loadtest: {} {}{}",
        run.workload_name(),
        run.alg,
        run.rate
            .map_or_else(String::new, |r| format!(", open loop {r:.0}/s"))
    );
    if let Some(path) = &run.plot {
        plot::write_svg(path, &title, &steps)?;
        eprintln!("plot written to {}", path.display());
    }
    let elapsed = started.elapsed();

    // Closing may destroy generated keys (one request each): all sessions close in parallel.
    let mut cleanup_errors = Vec::new();
    for (target, sessions) in targets {
        for e in close_all(sessions, max_workers) {
            eprintln!("closing a session of {}: {e}", target.name());
            cleanup_errors.push(format!("{}: {e}", target.name()));
        }
    }

    if let Some(path) = &run.json {
        let report = Report {
            tool: "cloudkey-loadtest",
            version: env!("CARGO_PKG_VERSION"),
            command: std::env::args().collect(),
            machine: machine(),
            run,
            duration_s: elapsed.as_secs_f64(),
            targets: infos,
            steps: &steps,
            comparisons: &comparisons,
            cleanup_errors,
        };
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    drop(runtime);
    Ok(())
}

impl RunArgs {
    fn workload_name(&self) -> &'static str {
        match self.workload {
            Workload::Sign => "sign",
            Workload::Keygen => "keygen",
            Workload::Mix => "mix",
        }
    }
}

fn main() {
    let (run_args, targets) = match parse(std::env::args_os().collect()) {
        Ok(p) => p,
        Err(e) => e.exit(),
    };
    if let Err(e) = run(&run_args, &targets) {
        eprintln!("cloudkey-loadtest: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn targets_are_separated_by_double_dashes() {
        let (run, targets) = parse(args(
            "lt --workers 1,32 --compare --rounds 5 pkcs11 --module a.so --token dev --pin 1234 \
             -- pkcs11 --module /x/libsofthsm2.so --slot 7 --pin 1 -- chip --chips 4",
        ))
        .unwrap();
        assert_eq!(run.workers, vec![1, 32]);
        assert!(run.compare);
        assert_eq!(run.rounds, 5);
        assert_eq!(targets.len(), 3);
        assert!(matches!(
            &targets[1],
            TargetCmd::Pkcs11 { slot: Some(7), .. }
        ));
        assert!(matches!(&targets[2], TargetCmd::Chip { chips: 4, .. }));
        assert_eq!(
            unique_names(&targets),
            vec!["pkcs11:a", "pkcs11:libsofthsm2", "chip"]
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(args("lt")).is_err());
        assert!(parse(args("lt pkcs11 --module a.so")).is_err(), "no pin");
        assert!(parse(args("lt pkcs11 --module a --pin 1 --token t --slot 1")).is_err());
        assert!(parse(args("lt chip -- --workers 3")).is_err());
        assert!(parse(args("lt --alg dsa chip")).is_err());
        let (run, t) = parse(args("lt chip -- chip")).unwrap();
        assert_eq!(unique_names(&t), vec!["chip", "chip#2"]);
        assert!(super::run(&run, &t).is_err(), "two targets need --compare");
    }
}
