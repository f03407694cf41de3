//! `cloudkey-chip-emulator`: serves a [`SoftChip`] over a serial line with the chip protocol
//! of `PROTOCOL.md`, so that the serial driver can be exercised end to end without hardware.
//!
//! * `--pty` (the default without `--device`) creates a pseudo-terminal pair, prints exactly one
//!   line `PTY /dev/pts/N` to stdout and serves the master side; a host opens the printed path.
//!   The emulator keeps a descriptor of the slave side open itself, so a host may close and
//!   reopen the path without the master seeing a hang-up.
//! * `--device PATH [--baud N]` serves a real serial line (raw 8N1, no flow control) instead.
//!
//! Like a real chip it executes one request at a time in the order received (it never answers
//! BUSY), answers a request that arrived corrupted with a NAK, answers undecodable requests with
//! an error status, and ignores response frames and line noise (`PROTOCOL.md`, section 12).
//!
//! It drops a partially received frame once the line has been idle for `--frame-gap-ms`
//! (default 100; 0 disables), the frame-gap rule of `PROTOCOL.md` section 5. Without it the
//! host's next transmissions would still complete and flush a stale candidate, but a header
//! made by noise that passes its CRC and announces a large payload would otherwise swallow up
//! to 16 KiB of the following requests, failing every call until that much had arrived.
//!
//! Logs go to stderr (`RUST_LOG`, default `info`) and never contain key material or payloads.
#![forbid(unsafe_code)]

use std::io::{self, IsTerminal, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use cloudkey_chip::frame::{self, Decoder, Event, Frame};
use cloudkey_chip::soft::{SoftChip, SoftChipConfig};
use cloudkey_chip::wire::{self, Request};
use cloudkey_chip::{Chip, ChipError};
use serialport::{DataBits, FlowControl, Parity, SerialPort, StopBits, TTYPort};
use zeroize::Zeroize;

/// How long one read of the line blocks before housekeeping (the frame-gap check) runs.
const READ_WAIT: Duration = Duration::from_millis(20);
/// How long a response may take to be accepted by the line before it is dropped (the host
/// stopped reading; it will time out and retry).
const WRITE_LIMIT: Duration = Duration::from_secs(5);
/// Consecutive empty reads after which a real device counts as hung up.
const MAX_EMPTY_READS: u32 = 3;

/// Serves a software chip over a pseudo-terminal or a serial device.
#[derive(Parser, Debug)]
#[command(name = "cloudkey-chip-emulator", version)]
struct Args {
    /// Create a pseudo-terminal and print `PTY <path>` on stdout (the default without --device).
    #[arg(long, conflicts_with = "device")]
    pty: bool,
    /// Serve this serial device instead of a pseudo-terminal.
    #[arg(long, value_name = "PATH")]
    device: Option<String>,
    /// Line speed for --device.
    #[arg(long, default_value_t = 115_200, value_name = "N")]
    baud: u32,
    /// Number of key slots of the software chip.
    #[arg(long, value_name = "N")]
    slots: Option<u32>,
    /// Simulated latency added to every operation, in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "N")]
    latency_ms: u64,
    /// Serial number the chip reports.
    #[arg(long, value_name = "S")]
    serial: Option<String>,
    /// Idle time after which a partially received frame is discarded, in milliseconds (0: never).
    #[arg(long, default_value_t = 100, value_name = "N")]
    frame_gap_ms: u64,
    /// Keep the chip's serial, identity key and domain key across restarts in this file, sealed
    /// under the key in --nvram-key-file. Without it the chip forgets everything on exit.
    #[arg(long, value_name = "FILE", requires = "nvram_key_file")]
    nvram: Option<std::path::PathBuf>,
    /// The NVRAM key: a file of 32 raw bytes or 64 hex digits.
    #[arg(long, value_name = "FILE", requires = "nvram")]
    nvram_key_file: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let mut cfg = SoftChipConfig::default();
    if let Some(slots) = args.slots {
        cfg.slots = slots;
    }
    if args.latency_ms > 0 {
        cfg.latency = Some(Duration::from_millis(args.latency_ms));
    }
    if let Some(serial) = &args.serial {
        cfg.serial.clone_from(serial);
    }
    if let (Some(path), Some(key_file)) = (&args.nvram, &args.nvram_key_file) {
        cfg.nvram = Some(
            cloudkey_chip::nvram::SoftNvram::with_key_file(path.clone(), key_file)
                .map_err(|e| e.to_string())?,
        );
    }
    let chip = SoftChip::new(cfg).map_err(|e| format!("cannot start the software chip: {e}"))?;
    let gap = (args.frame_gap_ms > 0).then(|| Duration::from_millis(args.frame_gap_ms));

    match &args.device {
        Some(path) => {
            let mut port = serialport::new(path.as_str(), args.baud)
                .data_bits(DataBits::Eight)
                .parity(Parity::None)
                .stop_bits(StopBits::One)
                .flow_control(FlowControl::None)
                .timeout(READ_WAIT)
                .open()
                .map_err(|e| format!("cannot open {path}: {e}"))?;
            tracing::info!(device = %path, baud = args.baud, "serving");
            serve(&chip, port.as_mut(), gap)
        }
        None => {
            let (mut master, slave) =
                TTYPort::pair().map_err(|e| format!("cannot create a pseudo-terminal: {e}"))?;
            let path = slave.name().ok_or("the pseudo-terminal has no path")?;
            master
                .set_timeout(READ_WAIT)
                .map_err(|e| format!("cannot set the read timeout: {e}"))?;
            {
                let mut out = io::stdout().lock();
                writeln!(out, "PTY {path}")
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("cannot print the pty path: {e}"))?;
            }
            tracing::info!(pty = %path, "serving");
            // `slave` stays open until we return: without it the master reads EIO whenever no
            // host has the path open, e.g. between a host's close and its reopen.
            let result = serve(&chip, &mut master, gap);
            drop(slave);
            result
        }
    }
}

/// Reads requests and answers them until the line fails.
fn serve(chip: &SoftChip, port: &mut dyn SerialPort, gap: Option<Duration>) -> Result<(), String> {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 4096];
    let mut last_rx = Instant::now();
    let mut empty_reads = 0u32;
    loop {
        match port.read(&mut buf) {
            Ok(0) => {
                empty_reads += 1;
                if empty_reads >= MAX_EMPTY_READS {
                    return Err("the line hung up".into());
                }
            }
            Ok(n) => {
                empty_reads = 0;
                last_rx = Instant::now();
                decoder.push(&buf[..n]);
                buf[..n].zeroize();
            }
            Err(e) if is_transient(&e) => {
                if decoder.pending() > 0 && gap.is_some_and(|gap| last_rx.elapsed() >= gap) {
                    tracing::warn!(
                        bytes = decoder.pending(),
                        "line idle inside a frame; discarding the partial frame"
                    );
                    decoder.clear();
                }
            }
            Err(e) => return Err(format!("reading the line failed: {e}")),
        }
        while let Some(event) = decoder.next_event() {
            if let Some(mut reply) = handle(chip, event) {
                let sent = send(port, &reply);
                reply.payload.zeroize();
                sent?;
            }
        }
    }
}

/// The answer to one decoded event, if any.
fn handle(chip: &SoftChip, event: Event) -> Option<Frame> {
    match event {
        Event::Frame(f) if f.response => {
            tracing::debug!(seq = f.seq, cmd = f.cmd, "ignoring a response frame");
            None
        }
        Event::Frame(mut f) => {
            let (status, payload) = execute(chip, f.cmd, &f.payload, f.seq);
            // The request may have carried key material.
            f.payload.zeroize();
            Some(Frame {
                response: true,
                seq: f.seq,
                cmd: f.cmd,
                status,
                payload,
            })
        }
        Event::Corrupt {
            response: false,
            seq,
            cmd,
        } => {
            tracing::debug!(seq, cmd, "corrupted request; sending NAK");
            Some(Frame {
                response: true,
                seq,
                cmd,
                status: wire::STATUS_BAD_FRAME,
                payload: Vec::new(),
            })
        }
        Event::Corrupt {
            response: true,
            seq,
            cmd,
        } => {
            tracing::debug!(seq, cmd, "ignoring a corrupted response frame");
            None
        }
    }
}

/// Decodes and executes one request: the status byte and payload of the response.
fn execute(chip: &SoftChip, cmd: u8, payload: &[u8], seq: u16) -> (u8, Vec<u8>) {
    // A chip must survive anything the line delivers: a panic in decoding or executing is
    // reported as an internal error for this request instead of ending the process.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let req = match Request::decode(cmd, payload) {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!(seq, cmd, error = %e, "undecodable request");
                return Err(e);
            }
        };
        let name = req.name();
        let started = Instant::now();
        let result = chip.execute(&req).map(|r| r.encode());
        match &result {
            Ok(_) => tracing::debug!(seq, cmd = name, elapsed = ?started.elapsed(), "ok"),
            Err(e) => tracing::debug!(seq, cmd = name, error = %e, "refused"),
        }
        result
    }));
    match outcome {
        Ok(Ok(payload)) => (wire::STATUS_OK, payload),
        Ok(Err(e)) => wire::encode_error(&e),
        Err(_) => {
            tracing::error!(seq, cmd, "request handler panicked");
            wire::encode_error(&ChipError::Internal("request handler failed".into()))
        }
    }
}

/// Encodes and writes one response frame.
fn send(port: &mut dyn SerialPort, reply: &Frame) -> Result<(), String> {
    let mut bytes = match frame::encode(reply) {
        Ok(bytes) => bytes,
        Err(e) => {
            // A result larger than a frame can carry: PROTOCOL.md, section 4, asks for
            // DATA_LEN_RANGE instead (the encoder's error is exactly that).
            tracing::warn!(seq = reply.seq, cmd = reply.cmd, error = %e, "response too large");
            let (status, payload) = wire::encode_error(&e);
            let fallback = Frame {
                response: true,
                seq: reply.seq,
                cmd: reply.cmd,
                status,
                payload,
            };
            frame::encode(&fallback).map_err(|e| format!("cannot encode an error response: {e}"))?
        }
    };
    let result = write_all(port, &bytes, reply.seq);
    bytes.zeroize();
    result
}

/// Writes `bytes`, giving up on this frame (not on the line) after [`WRITE_LIMIT`].
fn write_all(port: &mut dyn SerialPort, bytes: &[u8], seq: u16) -> Result<(), String> {
    let limit = Instant::now() + WRITE_LIMIT;
    let mut written = 0;
    while written < bytes.len() {
        match port.write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(format!("writing the line failed: {e}")),
        }
        if written < bytes.len() && Instant::now() >= limit {
            tracing::warn!(
                seq,
                written,
                total = bytes.len(),
                "host is not reading; response dropped"
            );
            return Ok(());
        }
    }
    Ok(())
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
