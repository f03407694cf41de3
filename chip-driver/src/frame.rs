//! The serial frame layer: how requests and responses are delimited and checked on the line.
//!
//! A frame is a 12-byte header, a payload of at most [`MAX_PAYLOAD`] bytes and a 2-byte payload
//! CRC (all multi-byte fields big-endian):
//!
//! ```text
//! offset  size  field
//!      0     2  SOF     A5 5A
//!      2     1  VER     01
//!      3     1  FLAGS   bit 0: response; bits 1..7 reserved, 0
//!      4     2  SEQ     request sequence number, echoed by the response
//!      6     1  CMD     command code (see wire::cmd), echoed by the response
//!      7     1  STATUS  0 in requests; 0 (ok) or a status code in responses
//!      8     2  LEN     payload length, 0..=16384
//!     10     2  HCRC    CRC-16/CCITT-FALSE of bytes 0..10
//!     12   LEN  PAYLOAD
//! 12+LEN     2  PCRC    CRC-16/CCITT-FALSE of the payload only
//! ```
//!
//! [`encode`] writes a frame; [`Decoder`] finds frames in a byte stream that may contain line
//! noise, truncated frames and corrupted bytes, and resynchronises by the rules documented on
//! [`Decoder`] and in `PROTOCOL.md`, "Resynchronisation".

use std::fmt;

use crc::{Crc, CRC_16_IBM_3740};
use zeroize::Zeroize;

use crate::{ChipError, Result};

/// Start of frame: the first two bytes of every frame.
pub const SOF: [u8; 2] = [0xA5, 0x5A];
/// The protocol version this crate speaks (the VER byte).
pub const VERSION: u8 = 1;
/// Length of a frame header: SOF(2) VER(1) FLAGS(1) SEQ(2, BE) CMD(1) STATUS(1) LEN(2, BE)
/// HCRC(2, BE). HCRC covers header bytes `0..10`.
pub const HEADER_LEN: usize = 12;
/// Length of the frame trailer: PCRC(2, BE), CRC-16/CCITT-FALSE over the payload only.
pub const TRAILER_LEN: usize = 2;
/// The largest payload a frame carries.
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// The largest frame on the line: header, [`MAX_PAYLOAD`] and trailer.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_PAYLOAD + TRAILER_LEN;
/// The most bytes a [`Decoder`] ever buffers: one maximal frame plus one read chunk of up to
/// [`MAX_FRAME_LEN`] bytes.
pub const BUFFER_CAPACITY: usize = 2 * MAX_FRAME_LEN;
/// FLAGS bit 0: the frame is a response (chip to host). All other FLAGS bits are reserved and
/// must be 0; a header with a reserved bit set is not a frame.
pub const FLAG_RESPONSE: u8 = 0x01;

/// CRC-16/CCITT-FALSE (CRC-16/IBM-3740): poly 0x1021, init 0xFFFF, no reflection, no final XOR;
/// check value `0x29B1` for `"123456789"`.
const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);

/// The protocol's CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, not reflected, xorout 0) of
/// `bytes`; used for both HCRC and PCRC. The CRC of no bytes is `0xFFFF`.
#[must_use]
pub fn crc16(bytes: &[u8]) -> u16 {
    CRC16.checksum(bytes)
}

/// One frame, request or response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// True for a response (chip to host): FLAGS bit 0.
    pub response: bool,
    /// Sequence number: chosen by the host for a request, echoed by the chip in its response.
    pub seq: u16,
    /// Command code (see [`crate::wire::cmd`]), echoed by the chip in its response.
    pub cmd: u8,
    /// 0 in requests; in responses [`crate::wire::STATUS_OK`] or a status code.
    pub status: u8,
    /// At most [`MAX_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
}

/// The bytes of `frame` on the line: header, payload, payload CRC.
///
/// # Errors
/// [`ChipError::DataLenRange`] when the payload is longer than [`MAX_PAYLOAD`].
pub fn encode(frame: &Frame) -> Result<Vec<u8>> {
    let len = frame.payload.len();
    if len > MAX_PAYLOAD {
        return Err(ChipError::DataLenRange(format!(
            "a frame payload of {len} bytes exceeds the maximum of {MAX_PAYLOAD}"
        )));
    }
    // len <= MAX_PAYLOAD < 65536, so this cannot fail.
    let len16 = u16::try_from(len)
        .map_err(|_| ChipError::DataLenRange(format!("payload of {len} bytes")))?;
    let mut out = Vec::with_capacity(HEADER_LEN + len + TRAILER_LEN);
    out.extend_from_slice(&SOF);
    out.push(VERSION);
    out.push(if frame.response { FLAG_RESPONSE } else { 0 });
    out.extend_from_slice(&frame.seq.to_be_bytes());
    out.push(frame.cmd);
    out.push(frame.status);
    out.extend_from_slice(&len16.to_be_bytes());
    let hcrc = crc16(&out[..HEADER_LEN - 2]);
    out.extend_from_slice(&hcrc.to_be_bytes());
    out.extend_from_slice(&frame.payload);
    out.extend_from_slice(&crc16(&frame.payload).to_be_bytes());
    Ok(out)
}

/// What the [`Decoder`] found in the byte stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete frame whose header and payload CRCs are good.
    Frame(Frame),
    /// A frame whose header was good (so its addressing can be trusted) but whose payload CRC
    /// was not: the chip answers it with a NAK ([`crate::wire::STATUS_BAD_FRAME`]), the host may
    /// retransmit at once instead of waiting for its timeout.
    Corrupt {
        /// FLAGS bit 0 of the corrupt frame.
        response: bool,
        /// Its sequence number.
        seq: u16,
        /// Its command code.
        cmd: u8,
    },
}

/// Outcome of examining the candidate header at the start of the live buffer.
enum Header {
    /// Not a valid header: skip one byte and rescan.
    Invalid,
    /// A valid header announcing a frame of this many bytes in total.
    Valid(usize),
}

/// Finds frames in a byte stream.
///
/// Feed it whatever the line delivered with [`push`](Self::push), then call
/// [`next_event`](Self::next_event) until it returns `None`.
///
/// # Resynchronisation
///
/// 1. Scan for SOF (`A5 5A`); bytes before it are noise and are discarded.
/// 2. Once 12 bytes from the SOF are buffered, check the candidate header: VER must be 1, the
///    reserved FLAGS bits 0, LEN at most [`MAX_PAYLOAD`] and HCRC good. If any check fails, the
///    SOF was noise: skip **one** byte (the `A5`) and go back to 1.
/// 3. Wait for the whole frame (`12 + LEN + 2` bytes from the SOF). If PCRC is good, the frame is
///    consumed and returned. If PCRC is bad, return [`Event::Corrupt`] with the header's
///    addressing, skip **one** byte past the SOF and go back to 1: the bytes that were taken as
///    that frame's payload are rescanned, so a truncated frame followed by a complete frame still
///    yields the complete frame once all its bytes arrived.
///
/// 4. A truncated frame makes the decoder wait for bytes that belong to the next frames. The
///    decoder has no clock: its owner [clears](Self::clear) it when the line has been idle with
///    bytes pending (the host when its response deadline passes, before it retransmits; a chip
///    after a 100 ms frame gap).
///
/// # Memory bound
///
/// The decoder never buffers more than [`BUFFER_CAPACITY`] bytes. When
/// [`next_event`](Self::next_event) has returned `None`, fewer than [`MAX_FRAME_LEN`] bytes are
/// pending; so a caller that drains the events after each push of at most [`MAX_FRAME_LEN`]
/// bytes never loses data. Bytes beyond the capacity push out the oldest buffered bytes, which
/// are counted as [discarded](Self::discarded).
///
/// # Secrets
///
/// Frames carry key material (import requests) and plaintext (decrypt responses). The decoder
/// overwrites bytes with zeros once they are consumed or dropped, and when it is dropped; its
/// `Debug` output shows counts only.
pub struct Decoder {
    /// Buffered bytes; `buf[start..]` is live, `buf[..start]` already consumed or skipped.
    buf: Vec<u8>,
    start: usize,
    discarded: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("pending", &self.pending())
            .field("discarded", &self.discarded)
            .finish()
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        self.buf.as_mut_slice().zeroize();
    }
}

impl Decoder {
    /// An empty decoder.
    #[must_use]
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(BUFFER_CAPACITY),
            start: 0,
            discarded: 0,
        }
    }

    /// Appends bytes received from the line. Never buffers more than [`BUFFER_CAPACITY`] bytes:
    /// see "Memory bound" on [`Decoder`].
    pub fn push(&mut self, mut bytes: &[u8]) {
        if bytes.len() >= BUFFER_CAPACITY {
            // Everything buffered and the head of `bytes` would be pushed out: keep the tail.
            let drop_new = bytes.len() - BUFFER_CAPACITY;
            self.discarded = self
                .discarded
                .saturating_add(self.pending() as u64)
                .saturating_add(drop_new as u64);
            self.wipe();
            bytes = &bytes[drop_new..];
        } else {
            let total = self.pending() + bytes.len();
            if total > BUFFER_CAPACITY {
                self.skip(total - BUFFER_CAPACITY);
            }
        }
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The next frame or corrupt frame in the buffered bytes, or `None` when more bytes are
    /// needed. Never panics, whatever the bytes.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let live = &self.buf[self.start..];
            let Some(at) = live.windows(SOF.len()).position(|w| w == SOF) else {
                // No SOF: all noise, except a final A5 that may be the first half of one.
                let keep = usize::from(live.last() == Some(&SOF[0]));
                self.skip(live.len() - keep);
                self.compact_if_empty();
                return None;
            };
            self.skip(at);
            let live = &self.buf[self.start..];
            if live.len() < HEADER_LEN {
                return None;
            }
            let total = match check_header(live) {
                Header::Invalid => {
                    self.skip(1);
                    continue;
                }
                Header::Valid(total) => total,
            };
            if live.len() < total {
                return None;
            }
            let response = live[3] & FLAG_RESPONSE != 0;
            let seq = u16::from_be_bytes([live[4], live[5]]);
            let cmd = live[6];
            let status = live[7];
            let payload = &live[HEADER_LEN..total - TRAILER_LEN];
            let pcrc = u16::from_be_bytes([live[total - 2], live[total - 1]]);
            if crc16(payload) != pcrc {
                self.skip(1);
                return Some(Event::Corrupt { response, seq, cmd });
            }
            let payload = payload.to_vec();
            self.start += total;
            self.compact_if_empty();
            return Some(Event::Frame(Frame {
                response,
                seq,
                cmd,
                status,
                payload,
            }));
        }
    }

    /// Bytes skipped as noise so far (including the bytes dropped by [`clear`](Self::clear) and
    /// by an overflow of the buffer).
    #[must_use]
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Bytes buffered but not yet returned as a frame.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Drops all buffered bytes (counted as discarded). The host calls it after a timeout, before
    /// it retransmits, so that a truncated frame cannot swallow the next answer.
    pub fn clear(&mut self) {
        self.discarded = self.discarded.saturating_add(self.pending() as u64);
        self.wipe();
    }

    /// Skips `n` live bytes as noise.
    fn skip(&mut self, n: usize) {
        let n = n.min(self.pending());
        self.start += n;
        self.discarded = self.discarded.saturating_add(n as u64);
    }

    /// Resets the buffer cheaply once everything in it was consumed.
    fn compact_if_empty(&mut self) {
        if self.start == self.buf.len() {
            self.wipe();
        }
    }

    /// Moves the live bytes to the front of the buffer, zeroing what they leave behind. (Bytes
    /// beyond `buf.len()` are always zero or never written, so no copy of line data lingers in
    /// the spare capacity.)
    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        let live = self.pending();
        self.buf.copy_within(self.start.., 0);
        self.buf[live..].zeroize();
        self.buf.truncate(live);
        self.start = 0;
    }

    /// Zeroes and empties the buffer.
    fn wipe(&mut self) {
        self.buf.as_mut_slice().zeroize();
        self.buf.clear();
        self.start = 0;
    }
}

/// Checks the candidate header at the start of `b` (which starts with SOF and holds at least
/// [`HEADER_LEN`] bytes).
fn check_header(b: &[u8]) -> Header {
    let Some(h) = b.get(..HEADER_LEN) else {
        return Header::Invalid;
    };
    let len = usize::from(u16::from_be_bytes([h[8], h[9]]));
    let hcrc = u16::from_be_bytes([h[10], h[11]]);
    if h[..2] != SOF
        || h[2] != VERSION
        || h[3] & !FLAG_RESPONSE != 0
        || len > MAX_PAYLOAD
        || crc16(&h[..HEADER_LEN - 2]) != hcrc
    {
        return Header::Invalid;
    }
    Header::Valid(HEADER_LEN + len + TRAILER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request seq 1, cmd 0x30 (RANDOM), payload `00 00 00 10` (16 bytes wanted).
    #[rustfmt::skip]
    const RANDOM_16: [u8; 18] = [
        0xA5, 0x5A, // SOF
        0x01,       // VER
        0x00,       // FLAGS: request
        0x00, 0x01, // SEQ 1
        0x30,       // CMD RANDOM
        0x00,       // STATUS
        0x00, 0x04, // LEN 4
        0x9C, 0x20, // HCRC over the 10 bytes above
        0x00, 0x00, 0x00, 0x10, // payload: u32 16
        0x96, 0xF1, // PCRC over the payload
    ];

    /// Response seq 0x1234, cmd 0x02 (SELF_TEST), status 0, empty payload.
    #[rustfmt::skip]
    const SELF_TEST_OK: [u8; 14] = [
        0xA5, 0x5A, // SOF
        0x01,       // VER
        0x01,       // FLAGS: response
        0x12, 0x34, // SEQ
        0x02,       // CMD SELF_TEST
        0x00,       // STATUS OK
        0x00, 0x00, // LEN 0
        0x1B, 0x39, // HCRC
        0xFF, 0xFF, // PCRC of no bytes = the CRC's init value
    ];

    fn random_16() -> Frame {
        Frame {
            response: false,
            seq: 1,
            cmd: 0x30,
            status: 0,
            payload: vec![0, 0, 0, 16],
        }
    }

    fn self_test_ok() -> Frame {
        Frame {
            response: true,
            seq: 0x1234,
            cmd: 0x02,
            status: 0,
            payload: vec![],
        }
    }

    fn drain(d: &mut Decoder) -> Vec<Event> {
        std::iter::from_fn(|| d.next_event()).collect()
    }

    #[test]
    fn crc_parameters() {
        assert_eq!(crc16(b"123456789"), 0x29B1);
        assert_eq!(crc16(&[]), 0xFFFF);
    }

    #[test]
    fn encodes_the_annotated_bytes() {
        assert_eq!(encode(&random_16()).unwrap(), RANDOM_16);
        assert_eq!(encode(&self_test_ok()).unwrap(), SELF_TEST_OK);
    }

    #[test]
    fn round_trip() {
        let mut d = Decoder::new();
        d.push(&RANDOM_16);
        assert_eq!(d.next_event(), Some(Event::Frame(random_16())));
        assert_eq!(d.next_event(), None);
        d.push(&SELF_TEST_OK);
        assert_eq!(d.next_event(), Some(Event::Frame(self_test_ok())));
        assert_eq!(d.next_event(), None);
        assert_eq!(d.discarded(), 0);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn garbage_before_and_between_frames() {
        let mut d = Decoder::new();
        // noise, including a lone A5, an A5 5A with a wrong version and a lone 5A
        d.push(&[0x00, 0xA5, 0x13, 0xA5, 0x5A, 0x02, 0x5A]);
        d.push(&RANDOM_16);
        d.push(&[0xFF, 0xA5]);
        d.push(&SELF_TEST_OK);
        assert_eq!(
            drain(&mut d),
            vec![Event::Frame(random_16()), Event::Frame(self_test_ok())]
        );
        assert_eq!(d.discarded(), 7 + 2);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn split_byte_by_byte() {
        let mut d = Decoder::new();
        let mut events = Vec::new();
        for &b in RANDOM_16.iter().chain(&SELF_TEST_OK) {
            d.push(&[b]);
            events.extend(drain(&mut d));
        }
        assert_eq!(
            events,
            vec![Event::Frame(random_16()), Event::Frame(self_test_ok())]
        );
        assert_eq!(d.discarded(), 0);
    }

    #[test]
    fn split_at_every_point() {
        let both: Vec<u8> = RANDOM_16.iter().chain(&SELF_TEST_OK).copied().collect();
        for cut in 0..=both.len() {
            let mut d = Decoder::new();
            d.push(&both[..cut]);
            let mut events = drain(&mut d);
            d.push(&both[cut..]);
            events.extend(drain(&mut d));
            assert_eq!(
                events,
                vec![Event::Frame(random_16()), Event::Frame(self_test_ok())]
            );
        }
    }

    #[test]
    fn corrupted_header_crc_is_skipped() {
        let mut bad = RANDOM_16;
        bad[11] ^= 0x01; // HCRC low byte
        let mut d = Decoder::new();
        d.push(&bad);
        d.push(&SELF_TEST_OK);
        assert_eq!(drain(&mut d), vec![Event::Frame(self_test_ok())]);
        assert_eq!(d.discarded(), bad.len() as u64);
    }

    #[test]
    fn corrupted_header_field_is_skipped() {
        let mut bad = RANDOM_16;
        bad[5] = 0x02; // SEQ changed, HCRC no longer matches
        let mut d = Decoder::new();
        d.push(&bad);
        assert_eq!(drain(&mut d), vec![]);
        d.push(&RANDOM_16);
        assert_eq!(drain(&mut d), vec![Event::Frame(random_16())]);
    }

    #[test]
    fn corrupted_payload_crc_gives_corrupt_then_the_next_frame() {
        let mut bad = RANDOM_16;
        bad[15] = 0x20; // payload byte: 32 instead of 16
        let mut d = Decoder::new();
        d.push(&bad);
        d.push(&SELF_TEST_OK);
        assert_eq!(
            drain(&mut d),
            vec![
                Event::Corrupt {
                    response: false,
                    seq: 1,
                    cmd: 0x30
                },
                Event::Frame(self_test_ok()),
            ]
        );
        assert_eq!(d.discarded(), bad.len() as u64);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn reserved_flag_bits_and_wrong_version_are_not_frames() {
        let mut flags = self_test_ok();
        flags.payload.clear();
        let mut bytes = encode(&flags).unwrap();
        bytes[3] = 0x03; // reserved bit 1
        let hcrc = crc16(&bytes[..10]);
        bytes[10..12].copy_from_slice(&hcrc.to_be_bytes());
        let mut version = encode(&flags).unwrap();
        version[2] = 0x02;
        let hcrc = crc16(&version[..10]);
        version[10..12].copy_from_slice(&hcrc.to_be_bytes());
        let mut d = Decoder::new();
        d.push(&bytes);
        d.push(&version);
        assert_eq!(drain(&mut d), vec![]);
        assert_eq!(d.discarded(), 28);
    }

    #[test]
    fn truncated_frame_followed_by_a_complete_frame() {
        // The first 13 bytes of RANDOM_16 (header and one payload byte), then a complete frame:
        // the truncated header asks for 4 + 2 more bytes, which come from the next frame.
        let mut d = Decoder::new();
        d.push(&RANDOM_16[..13]);
        assert_eq!(d.next_event(), None);
        d.push(&SELF_TEST_OK);
        assert_eq!(
            drain(&mut d),
            vec![
                Event::Corrupt {
                    response: false,
                    seq: 1,
                    cmd: 0x30
                },
                Event::Frame(self_test_ok()),
            ]
        );
        assert_eq!(d.discarded(), 13);
    }

    #[test]
    fn truncated_frame_then_quiet_line_then_clear() {
        let mut d = Decoder::new();
        d.push(&RANDOM_16[..15]);
        assert_eq!(d.next_event(), None);
        assert_eq!(d.pending(), 15);
        d.clear(); // the host's timeout
        assert_eq!(d.pending(), 0);
        assert_eq!(d.discarded(), 15);
        d.push(&RANDOM_16);
        assert_eq!(drain(&mut d), vec![Event::Frame(random_16())]);
    }

    #[test]
    fn oversized_len_is_not_a_frame() {
        #[rustfmt::skip]
        let mut bytes = vec![
            0xA5, 0x5A, 0x01, 0x00, 0x00, 0x01, 0x30, 0x00,
            0x40, 0x01, // LEN 16385 = MAX_PAYLOAD + 1
            0x00, 0x00, // HCRC, filled in below
        ];
        let hcrc = crc16(&bytes[..10]);
        bytes[10..12].copy_from_slice(&hcrc.to_be_bytes());
        let mut d = Decoder::new();
        d.push(&bytes);
        // The decoder does not wait for 16 KiB: the header is rejected at once.
        assert_eq!(d.next_event(), None);
        assert_eq!(d.pending(), 0);
        d.push(&RANDOM_16);
        assert_eq!(drain(&mut d), vec![Event::Frame(random_16())]);

        let too_big = Frame {
            payload: vec![0; MAX_PAYLOAD + 1],
            ..random_16()
        };
        assert!(matches!(encode(&too_big), Err(ChipError::DataLenRange(_))));
    }

    #[test]
    fn debug_shows_counts_only_and_compaction_keeps_live_bytes() {
        let mut d = Decoder::new();
        d.push(&[0x00, 0x01]);
        d.push(&RANDOM_16);
        assert_eq!(format!("{d:?}"), "Decoder { pending: 20, discarded: 0 }");
        assert!(d.next_event().is_some());
        assert_eq!(d.pending(), 0);
        assert!(d.buf.is_empty());
        d.push(&RANDOM_16[..3]);
        d.push(&RANDOM_16[3..]);
        d.push(&[0xEE; 5]);
        assert_eq!(d.next_event(), Some(Event::Frame(random_16())));
        // the five noise bytes are pending; compaction moves them to the front
        d.push(&[]);
        assert_eq!(d.buf, [0xEE; 5]);
        assert_eq!(d.start, 0);
        assert_eq!(d.buf.capacity(), BUFFER_CAPACITY, "never reallocated");
    }

    #[test]
    fn max_size_payload() {
        let frame = Frame {
            response: true,
            seq: u16::MAX,
            cmd: 0xFF,
            status: 0x41,
            payload: (0..MAX_PAYLOAD).map(|i| (i % 251) as u8).collect(),
        };
        let bytes = encode(&frame).unwrap();
        assert_eq!(bytes.len(), MAX_FRAME_LEN);
        assert_eq!(&bytes[8..10], &[0x40, 0x00]);
        let mut d = Decoder::new();
        for chunk in bytes.chunks(1000) {
            d.push(chunk);
            if d.pending() < bytes.len() {
                assert_eq!(d.next_event(), None);
            }
        }
        assert_eq!(d.next_event(), Some(Event::Frame(frame)));
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn buffer_bound_under_endless_garbage() {
        let mut d = Decoder::new();
        // A5 5A followed by noise: every candidate header is rejected; no SOF-free tail is kept.
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| [0xA5, 0x5A, 0x01, (i % 7) as u8][i as usize % 4])
            .collect();
        for _ in 0..100 {
            d.push(&noise);
            assert!(d.pending() <= BUFFER_CAPACITY);
            while d.next_event().is_some() {}
            assert!(d.pending() < MAX_FRAME_LEN);
        }
        // Without draining the bound still holds: the oldest bytes are pushed out.
        let mut d = Decoder::new();
        for _ in 0..100 {
            d.push(&noise);
            assert!(d.pending() <= BUFFER_CAPACITY);
        }
        d.push(&vec![0u8; 3 * BUFFER_CAPACITY]);
        assert_eq!(d.pending(), BUFFER_CAPACITY);
        assert_eq!(
            d.discarded() + d.pending() as u64,
            100 * 4096 + 3 * BUFFER_CAPACITY as u64
        );
        // and it still finds a frame afterwards
        d.push(&RANDOM_16);
        assert_eq!(drain(&mut d), vec![Event::Frame(random_16())]);
    }

    #[test]
    fn a_header_waiting_for_its_payload_keeps_pending_below_a_frame() {
        // A valid header announcing the maximum payload, then silence: pending stays below one
        // frame however many times the caller asks.
        let frame = Frame {
            payload: vec![7; MAX_PAYLOAD],
            ..random_16()
        };
        let bytes = encode(&frame).unwrap();
        let mut d = Decoder::new();
        d.push(&bytes[..MAX_FRAME_LEN - 1]);
        assert_eq!(d.next_event(), None);
        assert_eq!(d.pending(), MAX_FRAME_LEN - 1);
        d.push(&bytes[MAX_FRAME_LEN - 1..]);
        assert_eq!(d.next_event(), Some(Event::Frame(frame)));
    }
}
