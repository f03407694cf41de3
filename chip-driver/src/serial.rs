//! [`SerialChip`]: the host side of the serial chip protocol (`PROTOCOL.md`).
//!
//! A `SerialChip` owns one serial line and implements [`Chip`] by sending each request, whatever
//! its command, as one request frame ([`frame`], [`wire`]) and waiting for the matching response frame.
//!
//! # Threading
//!
//! The I/O runs synchronously on the calling thread. That is deliberate: [`Chip`] is a blocking
//! trait, and the [pool](crate::pool) gives every chip a dedicated OS thread, so a blocking read
//! of the line never lands on an async runtime's worker. A `SerialChip` may still be shared
//! between threads (tests, tools): a mutex serialises the callers, because the protocol allows
//! exactly one outstanding request per line.
//!
//! # Reliability
//!
//! * **Sequence numbers.** Every transmission carries a fresh sequence number (wrapping `u16`).
//!   A response is accepted only if it has the response flag and that number; anything else on
//!   the line (stale replies to abandoned attempts, echoes) is logged and ignored.
//! * **Resynchronisation.** Line noise between frames is skipped by the [`frame::Decoder`], which
//!   hunts for the next start-of-frame and checks both CRCs.
//! * **Retransmission.** Every transmission uses a new sequence number, so late replies to an
//!   earlier attempt are recognised as stale. A NAK from the chip
//!   ([`STATUS_BAD_FRAME`](wire::STATUS_BAD_FRAME): the request arrived corrupted and was *not*
//!   executed) is answered by resending at once, for every command; so is
//!   [`STATUS_BUSY`](wire::STATUS_BUSY) (the chip was still busy with an abandoned request), after
//!   a short pause. A corrupted response, or no response before the per-attempt deadline, is
//!   retried only for [idempotent](Request::is_idempotent) commands, because the chip may
//!   already have executed the request. After a deadline the decoder is cleared, so that a
//!   truncated frame cannot swallow the next one. [`SerialConfig::retries`] bounds the number of
//!   transmissions of a call.
//! * **Timeouts.** Each transmission waits at most the command's
//!   [`Request::timeout_at`] for the configured line speed (its execution budget plus the line
//!   time of the request and of the largest expected response), or [`SerialConfig::timeout`]
//!   when set, counted from the start of the transmission. When the last attempt expires, the
//!   call fails with [`ChipError::Timeout`] carrying the total time waited.
//! * **Device loss.** A read or write error other than a timeout or an interruption (EIO from a
//!   pseudo-terminal whose master was closed, POLLHUP, ENXIO, a broken pipe, a vanished USB
//!   adapter), or a line that keeps reporting end-of-file, marks the chip lost: the port is
//!   closed and this and every later call fail at once with [`ChipError::DeviceLost`].

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serialport::{ClearBuffer, DataBits, FlowControl, Parity, SerialPort, StopBits};
use zeroize::Zeroize;

use crate::frame::{self, Decoder, Event, Frame};
use crate::wire::{self, Request, Response};
use crate::{Chip, ChipError, Result};

/// Default line speed.
pub const DEFAULT_BAUD: u32 = 115_200;
/// Default number of transmissions of an idempotent command.
pub const DEFAULT_RETRIES: u32 = 3;

/// The longest a single read blocks (the poll interval). A read returns as soon as bytes
/// arrive or the line hangs up; this bound makes the loop re-check its deadline at least this
/// often whatever the port's own timer granularity.
const MAX_READ_WAIT: Duration = Duration::from_millis(20);
/// The shortest read timeout handed to the port (a zero timeout would mean "poll once").
const MIN_READ_WAIT: Duration = Duration::from_millis(1);
/// Consecutive reads that return no bytes although the port reported data ready: a hung-up
/// line. (A raw tty read blocks for at least one byte, so an empty read is end-of-file.)
const MAX_EMPTY_READS: u32 = 3;
/// Size of the read buffer.
const READ_CHUNK: usize = 4096;
/// How long to wait before resending after [`STATUS_BUSY`](wire::STATUS_BUSY), unless a reply
/// to the earlier request shows sooner that the chip is free.
const BUSY_PAUSE: Duration = Duration::from_millis(50);

/// How to reach a serial chip.
#[derive(Clone, Debug, PartialEq)]
pub struct SerialConfig {
    /// Device path, e.g. `/dev/ttyUSB0` or a pseudo-terminal's `/dev/pts/N`.
    pub path: String,
    /// Line speed in baud ([`DEFAULT_BAUD`]). The line is always raw 8N1 without flow control.
    /// The per-command deadlines include transmission times at this speed
    /// ([`Request::timeout_at`]); 0 is treated as [`DEFAULT_BAUD`] for them.
    pub baud: u32,
    /// How many times an idempotent command is transmitted in all, the first attempt included
    /// ([`DEFAULT_RETRIES`]); also bounds the resends after NAKs. 0 counts as 1.
    pub retries: u32,
    /// When set, the per-attempt timeout of every command, in place of
    /// [`Request::timeout_at`] (tests use short ones).
    pub timeout: Option<Duration>,
}

impl SerialConfig {
    /// The defaults for the device at `path`.
    #[must_use]
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            baud: DEFAULT_BAUD,
            retries: DEFAULT_RETRIES,
            timeout: None,
        }
    }

    fn attempts(&self) -> u32 {
        self.retries.max(1)
    }
}

/// Counters of what happened on the line, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SerialStats {
    /// Calls made (one per [`Chip::execute`]).
    pub requests: u64,
    /// Request frames written, retransmissions included.
    pub transmissions: u64,
    /// Transmissions beyond the first of a call.
    pub retransmissions: u64,
    /// Attempts whose deadline passed without a response.
    pub timeouts: u64,
    /// NAKs received (the chip saw a corrupted request).
    pub naks: u64,
    /// BUSY answers received (the chip was still executing an abandoned request).
    pub busy: u64,
    /// Responses to the current request that arrived corrupted.
    pub corrupt_responses: u64,
    /// Well-formed frames ignored: requests, or responses to other sequence numbers.
    pub ignored_frames: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    transmissions: AtomicU64,
    retransmissions: AtomicU64,
    timeouts: AtomicU64,
    naks: AtomicU64,
    busy: AtomicU64,
    corrupt_responses: AtomicU64,
    ignored_frames: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> SerialStats {
        SerialStats {
            requests: self.requests.load(Ordering::Relaxed),
            transmissions: self.transmissions.load(Ordering::Relaxed),
            retransmissions: self.retransmissions.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            naks: self.naks.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
            corrupt_responses: self.corrupt_responses.load(Ordering::Relaxed),
            ignored_frames: self.ignored_frames.load(Ordering::Relaxed),
        }
    }
}

/// The line and everything that must change together with it, behind the mutex.
struct Line {
    /// `None` once the device is lost.
    port: Option<Box<dyn SerialPort>>,
    decoder: Decoder,
    next_seq: u16,
    /// Why the device was declared lost.
    lost: Option<String>,
    /// The timeout currently set on the port, to avoid resetting it on every read.
    read_wait: Duration,
    buf: Vec<u8>,
}

/// What one transmission came to.
enum Outcome {
    /// The matching response (status OK or an error status).
    Reply(Frame),
    /// The chip reported our request corrupted and did not execute it.
    Nak,
    /// The chip was still executing an earlier (abandoned) request and did not execute ours.
    Busy,
    /// The response to our request arrived corrupted.
    CorruptResponse,
    /// No response before the deadline (or, for [`Wait::Pause`], the pause is over).
    Deadline,
}

/// What [`SerialChip::read_until`] waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The response to this request.
    Reply { seq: u16, cmd: u8 },
    /// Any response (the end of the chip's earlier work), or the deadline.
    Pause,
}

/// A chip on a serial line; see the [module docs](self).
pub struct SerialChip {
    cfg: SerialConfig,
    line: Mutex<Line>,
    counters: Counters,
    /// Mirrors `Line::lost.is_some()`, readable without waiting for a call in progress.
    lost: AtomicBool,
}

impl SerialChip {
    /// Opens `cfg.path` as a raw 8N1 line without flow control at `cfg.baud`, in exclusive mode,
    /// and discards whatever input was pending.
    ///
    /// # Errors
    /// [`ChipError::DeviceLost`] when the device cannot be opened or configured (absent, busy,
    /// not a tty).
    pub fn open(cfg: SerialConfig) -> Result<Self> {
        let port = serialport::new(cfg.path.as_str(), cfg.baud)
            .data_bits(DataBits::Eight)
            .parity(Parity::None)
            .stop_bits(StopBits::One)
            .flow_control(FlowControl::None)
            .timeout(MAX_READ_WAIT)
            .open()
            .map_err(|e| ChipError::DeviceLost(format!("cannot open {}: {e}", cfg.path)))?;
        // Replies to a previous user of the line must not be taken for ours. (They would be
        // ignored by sequence number anyway; this just saves decoding them.)
        if let Err(e) = port.clear(ClearBuffer::Input) {
            tracing::debug!(path = %cfg.path, error = %e, "could not flush pending input");
        }
        tracing::info!(path = %cfg.path, baud = cfg.baud, "serial chip opened");
        Ok(Self::from_port(port, cfg))
    }

    /// Drives a chip over an already opened port (which the caller has configured). `cfg.path`
    /// is used only in messages and `cfg.baud` only to estimate transmission times.
    #[must_use]
    pub fn from_port(mut port: Box<dyn SerialPort>, cfg: SerialConfig) -> Self {
        let read_wait = match port.set_timeout(MAX_READ_WAIT) {
            Ok(()) => MAX_READ_WAIT,
            Err(_) => port.timeout(),
        };
        Self {
            cfg,
            line: Mutex::new(Line {
                port: Some(port),
                decoder: Decoder::new(),
                next_seq: first_seq(),
                lost: None,
                read_wait,
                buf: vec![0; READ_CHUNK],
            }),
            counters: Counters::default(),
            lost: AtomicBool::new(false),
        }
    }

    /// The configuration this chip was opened with.
    #[must_use]
    pub fn config(&self) -> &SerialConfig {
        &self.cfg
    }

    /// A snapshot of the line counters. Does not wait for a call in progress.
    #[must_use]
    pub fn stats(&self) -> SerialStats {
        self.counters.snapshot()
    }

    /// True once the device has been declared lost; every call then fails at once with
    /// [`ChipError::DeviceLost`]. Does not wait for a call in progress.
    #[must_use]
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// The retransmission loop of [`Chip::execute`].
    fn exchange(&self, line: &mut Line, request: &mut Frame, x: &Exchange) -> Result<Frame> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            request.seq = line.take_seq();
            let mut bytes = frame::encode(request)?;
            // The per-attempt timeout counts from the start of the transmission and includes the
            // line time of both frames (PROTOCOL.md, section 6).
            let deadline = Instant::now() + x.per_attempt;
            let written = self.write_frame(line, &bytes, deadline);
            bytes.zeroize();
            if attempt > 1 {
                Counters::bump(&self.counters.retransmissions);
            }
            Counters::bump(&self.counters.transmissions);
            let outcome = if written? {
                let wanted = Wait::Reply {
                    seq: request.seq,
                    cmd: request.cmd,
                };
                self.read_until(line, wanted, deadline)?
            } else {
                Outcome::Deadline
            };
            let retry_left = attempt < x.attempts;
            let seq = request.seq;
            let give_up = |e: ChipError| {
                tracing::warn!(path = %self.cfg.path, cmd = x.name, attempts = attempt,
                    error = %e, "serial call failed");
                Err(e)
            };
            match outcome {
                Outcome::Reply(frame) => return Ok(frame),
                Outcome::Nak => {
                    Counters::bump(&self.counters.naks);
                    if !retry_left {
                        return give_up(ChipError::Protocol(format!(
                            "the chip received {} corrupted {attempt} times",
                            x.name
                        )));
                    }
                    tracing::debug!(path = %self.cfg.path, cmd = x.name, seq,
                        "the chip NAKed a corrupted request; resending");
                }
                Outcome::Busy => {
                    Counters::bump(&self.counters.busy);
                    if !retry_left {
                        return give_up(wire::decode_error(wire::STATUS_BUSY, &[]));
                    }
                    tracing::debug!(path = %self.cfg.path, cmd = x.name, seq,
                        "the chip is busy with an abandoned request; resending after a pause");
                    let pause = Instant::now() + BUSY_PAUSE.min(x.per_attempt);
                    self.read_until(line, Wait::Pause, pause)?;
                }
                Outcome::CorruptResponse => {
                    Counters::bump(&self.counters.corrupt_responses);
                    if !x.idempotent {
                        return give_up(ChipError::Protocol(format!(
                            "the response to {} arrived corrupted; not retried because the \
                             chip may have executed the command, which is not idempotent",
                            x.name
                        )));
                    }
                    if !retry_left {
                        return give_up(ChipError::Protocol(format!(
                            "the response to {} arrived corrupted {attempt} times",
                            x.name
                        )));
                    }
                    tracing::debug!(path = %self.cfg.path, cmd = x.name, seq,
                        "corrupted response; resending");
                }
                Outcome::Deadline => {
                    Counters::bump(&self.counters.timeouts);
                    // A truncated frame left in the decoder would swallow the start of the next
                    // one (the retransmission's answer, or the next call's).
                    line.decoder.clear();
                    if !(x.idempotent && retry_left) {
                        let after = x.started.elapsed();
                        return give_up(ChipError::Timeout {
                            command: x.name,
                            after,
                        });
                    }
                    tracing::debug!(path = %self.cfg.path, cmd = x.name, seq,
                        "no answer in time; resending");
                }
            }
        }
    }

    /// Writes all of `bytes`. `Ok(false)` when the deadline passed before the line accepted
    /// them (a stalled peer with full buffers).
    fn write_frame(&self, line: &mut Line, bytes: &[u8], deadline: Instant) -> Result<bool> {
        let mut written = 0;
        while written < bytes.len() {
            let Some(port) = line.port.as_mut() else {
                return Err(self.lost_error(line.lost.as_deref().unwrap_or("closed")));
            };
            match port.write(&bytes[written..]) {
                Ok(n) => written += n,
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(self.declare_lost(line, &format!("write failed: {e}"))),
            }
            if written < bytes.len() && Instant::now() >= deadline {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Reads the line until `wait` is satisfied or `deadline` passes.
    fn read_until(&self, line: &mut Line, wait: Wait, deadline: Instant) -> Result<Outcome> {
        let mut empty_reads = 0u32;
        loop {
            while let Some(event) = line.decoder.next_event() {
                if let Some(outcome) = self.classify(event, wait) {
                    return Ok(outcome);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Outcome::Deadline);
            }
            let read_wait = (deadline - now).clamp(MIN_READ_WAIT, MAX_READ_WAIT);
            let Line {
                port,
                buf,
                decoder,
                read_wait: current,
                lost,
                ..
            } = &mut *line;
            let Some(port) = port.as_mut() else {
                return Err(self.lost_error(lost.as_deref().unwrap_or("closed")));
            };
            if *current != read_wait && port.set_timeout(read_wait).is_ok() {
                *current = read_wait;
            }
            match port.read(buf) {
                Ok(0) => {
                    empty_reads += 1;
                    if empty_reads >= MAX_EMPTY_READS {
                        return Err(self.declare_lost(line, "end of file (the line hung up)"));
                    }
                }
                Ok(n) => {
                    empty_reads = 0;
                    decoder.push(&buf[..n]);
                    buf[..n].zeroize();
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(self.declare_lost(line, &format!("read failed: {e}"))),
            }
        }
    }

    /// What a decoded event means while waiting for `wait`; `None` to keep reading.
    fn classify(&self, event: Event, wait: Wait) -> Option<Outcome> {
        let path = &self.cfg.path;
        match (event, wait) {
            (Event::Frame(f), Wait::Reply { seq, cmd })
                if f.response && f.seq == seq && f.cmd == cmd =>
            {
                Some(match f.status {
                    wire::STATUS_BAD_FRAME => Outcome::Nak,
                    wire::STATUS_BUSY => Outcome::Busy,
                    _ => Outcome::Reply(f),
                })
            }
            (Event::Frame(f), wait) => {
                Counters::bump(&self.counters.ignored_frames);
                tracing::debug!(%path, seq = f.seq, cmd = f.cmd, response = f.response,
                    "ignoring a stale or foreign frame");
                // During a pause, any response means the chip finished what kept it busy.
                (f.response && wait == Wait::Pause).then_some(Outcome::Deadline)
            }
            (
                Event::Corrupt {
                    response: true,
                    seq: s,
                    cmd: c,
                },
                Wait::Reply { seq, cmd },
            ) if s == seq && c == cmd => Some(Outcome::CorruptResponse),
            (Event::Corrupt { response, seq, cmd }, _) => {
                tracing::debug!(%path, seq, cmd, response, "ignoring a corrupted foreign frame");
                None
            }
        }
    }

    /// The line speed the deadlines are computed for: [`SerialConfig::baud`], or
    /// [`DEFAULT_BAUD`] when that is 0 (a pseudo-terminal has no speed).
    fn timing_baud(&self) -> u32 {
        if self.cfg.baud == 0 {
            DEFAULT_BAUD
        } else {
            self.cfg.baud
        }
    }

    /// Closes the port and remembers why; the error to return.
    fn declare_lost(&self, line: &mut Line, reason: &str) -> ChipError {
        tracing::error!(path = %self.cfg.path, reason, "serial chip lost");
        line.port = None;
        line.decoder.clear();
        line.lost = Some(reason.to_owned());
        self.lost.store(true, Ordering::Release);
        self.lost_error(reason)
    }

    fn lost_error(&self, reason: &str) -> ChipError {
        ChipError::DeviceLost(format!("{}: {reason}", self.cfg.path))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Line> {
        // A panic in another caller leaves at worst a half-read frame in the decoder, which
        // resynchronisation and sequence matching deal with.
        self.line.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The per-call constants of the retransmission loop.
struct Exchange {
    name: &'static str,
    idempotent: bool,
    per_attempt: Duration,
    attempts: u32,
    started: Instant,
}

impl Line {
    fn take_seq(&mut self) -> u16 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }
}

/// A random first sequence number, so that replies meant for a previous process on the same
/// line are unlikely to match.
fn first_seq() -> u16 {
    let mut b = [0u8; 2];
    match aws_lc_rs::rand::fill(&mut b) {
        Ok(()) => u16::from_be_bytes(b),
        // Sequence numbers need not be unpredictable, only unlikely to repeat.
        Err(_) => 1,
    }
}

/// Errors that mean "nothing happened yet", not a broken device.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl fmt::Debug for SerialChip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SerialChip");
        d.field("path", &self.cfg.path)
            .field("baud", &self.cfg.baud)
            .field("retries", &self.cfg.retries)
            .field("timeout", &self.cfg.timeout);
        // Never block a debug print behind a call in progress.
        match self.line.try_lock() {
            Ok(line) => d
                .field("lost", &line.lost)
                .field("next_seq", &line.next_seq),
            Err(_) => d.field("state", &"busy"),
        };
        // The port and decoder are left out: they hold nothing a reader of logs needs, and the
        // decoder's buffer may hold payload bytes.
        d.field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl Chip for SerialChip {
    /// Sends the request, whatever its command, and waits for its response, with the
    /// retransmission rules of the [module docs](self). Callers are serialised.
    ///
    /// # Errors
    /// The chip's error for the request (decoded from the response status);
    /// [`ChipError::Timeout`] when no attempt was answered in time; [`ChipError::DeviceLost`];
    /// [`ChipError::Protocol`] when the line keeps corrupting frames beyond the retry budget or
    /// the chip answers with a payload that does not decode.
    fn execute(&self, req: &Request) -> Result<Response> {
        let mut line = self.lock();
        Counters::bump(&self.counters.requests);
        if let Some(reason) = &line.lost {
            return Err(self.lost_error(reason));
        }
        let cmd = req.cmd();
        let x = Exchange {
            name: req.name(),
            idempotent: req.is_idempotent(),
            per_attempt: self
                .cfg
                .timeout
                .unwrap_or_else(|| req.timeout_at(self.timing_baud())),
            attempts: self.cfg.attempts(),
            started: Instant::now(),
        };
        let mut request = Frame {
            response: false,
            seq: 0,
            cmd,
            status: wire::STATUS_OK,
            payload: req.encode(),
        };
        // The request may carry key material (import, unwrap); its encoding is zeroized below,
        // the request itself by its owner.
        let result = self.exchange(&mut line, &mut request, &x);
        request.payload.zeroize();
        let mut reply = result?;
        let response = if reply.status == wire::STATUS_OK {
            Response::decode(cmd, &reply.payload)
        } else {
            Err(wire::decode_error(reply.status, &reply.payload))
        };
        // Responses carry plaintext (decrypt) and fresh random bytes.
        reply.payload.zeroize();
        response
    }
}
