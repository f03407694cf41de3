//! Framing of messages on QUIC streams: `u32 big-endian length | postcard(T)`.
//!
//! One bidirectional stream carries exactly one request frame and one response frame. The
//! length is read and compared with the bound *before* anything is allocated for the body, so a
//! hostile peer cannot make us reserve memory by announcing a large frame. Encoding is bounded
//! too: [`encode`] stops as soon as the serialized form would exceed [`MAX_FRAME`].
//!
//! Protocol violations are signalled to the peer with the application codes of [`reset`]
//! (`SendStream::reset` / `RecvStream::stop`); [`read_frame`] does this itself for an oversized
//! or undecodable frame.

use std::fmt;

use postcard::ser_flavors::Flavor;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest frame body (the postcard bytes, without the 4-byte length prefix).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Length of the big-endian `u32` length prefix.
pub const LEN_PREFIX: usize = 4;

/// Capacity reserved for a frame body before its bytes arrive; the buffer grows with them.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

/// Application error codes used with `SendStream::reset` and `RecvStream::stop`.
///
/// A node that refuses a stream because it is overloaded uses [`reset::OVERLOADED`] *before*
/// acting on the request: the client then knows the request was not processed and may retry it
/// elsewhere, even a write.
pub mod reset {
    /// The peer announced a frame longer than the bound.
    pub const FRAME_TOO_LARGE: u32 = 1;
    /// The peer sent bytes that do not decode as the expected message.
    pub const MALFORMED: u32 = 2;
    /// The node is overloaded and did not process the request (safe to retry elsewhere).
    pub const OVERLOADED: u32 = 3;
}

/// Why a frame could not be encoded, read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame body is longer than the bound (the announced or encoded length).
    #[error("frame of {0} bytes exceeds the bound")]
    TooLarge(usize),
    /// The body is not a valid postcard encoding of the expected message.
    #[error("malformed frame: {0}")]
    Decode(String),
    /// The message could not be serialized.
    #[error("cannot encode frame: {0}")]
    Encode(String),
    /// Reading or writing the stream failed: reset or stopped by the peer, connection lost, or
    /// the stream ended inside a frame.
    #[error("stream i/o: {0}")]
    Io(String),
    /// The stream ended cleanly before the first byte of a frame.
    #[error("stream closed before a frame")]
    Closed,
}

/// A postcard flavor that appends to a `Vec` and refuses to grow it past a bound, so that
/// encoding an oversized message fails without allocating its whole encoding.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
}

impl Flavor for Bounded {
    type Output = Vec<u8>;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        if self.buf.len() >= self.limit {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.buf.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.buf)
    }
}

/// Encodes `msg` as one frame: the 4-byte big-endian length prefix followed by its postcard
/// encoding.
///
/// # Errors
/// [`FrameError::TooLarge`] if the encoding is longer than [`MAX_FRAME`] (the reported size is
/// a lower bound: encoding stops at the bound), [`FrameError::Encode`] if serde fails.
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let flavor = Bounded {
        buf: vec![0; LEN_PREFIX],
        limit: LEN_PREFIX + MAX_FRAME,
    };
    let mut out = match postcard::serialize_with_flavor(msg, flavor) {
        Ok(out) => out,
        Err(postcard::Error::SerializeBufferFull) => {
            return Err(FrameError::TooLarge(MAX_FRAME + 1))
        }
        Err(e) => return Err(FrameError::Encode(e.to_string())),
    };
    let body = out.len() - LEN_PREFIX;
    // Cannot fail: body <= MAX_FRAME < u32::MAX.
    let len = u32::try_from(body).map_err(|_| FrameError::TooLarge(body))?;
    out[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Decodes a frame body (without its length prefix). The whole body must be consumed: trailing
/// bytes are an error, so every accepted body re-encodes to itself.
///
/// # Errors
/// [`FrameError::TooLarge`] if `body` is longer than [`MAX_FRAME`]; [`FrameError::Decode`] if it
/// is not exactly one postcard-encoded `T` (truncated, unknown enum variant, trailing bytes...).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    match postcard::take_from_bytes::<T>(body) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(FrameError::Decode(format!(
            "{} trailing bytes after the message",
            rest.len()
        ))),
        Err(e) => Err(FrameError::Decode(e.to_string())),
    }
}

/// Reads the body length from a length prefix and checks it against `max` (and [`MAX_FRAME`]).
///
/// # Errors
/// [`FrameError::TooLarge`] if the announced length exceeds the bound.
pub fn body_len(prefix: [u8; LEN_PREFIX], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix);
    // u32 always fits in usize on the 32- and 64-bit targets we build for; saturate otherwise.
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max.min(MAX_FRAME) {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes the first frame of a byte buffer (length prefix included), for buffered input such
/// as fuzzers and tests.
///
/// Returns `Ok(None)` while the buffer holds less than a whole frame, else the message and the
/// number of bytes the frame used. An oversized length is refused as soon as the prefix is
/// complete, whatever follows.
///
/// # Errors
/// [`FrameError::TooLarge`] for a length above `max` or [`MAX_FRAME`], [`FrameError::Decode`]
/// for a body that is not exactly one `T`.
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = body_len(*prefix, max)?;
    let Some(body) = rest.get(..len) else {
        return Ok(None);
    };
    Ok(Some((decode(body)?, LEN_PREFIX + len)))
}

/// How a stream operation failed, with the detail the client needs to decide on a retry.
/// [`FrameError`] is the public, flattened form.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// Encoding or decoding failed, or the frame is too large.
    Frame(FrameError),
    /// `write_all` failed: not every byte of the frame was handed to QUIC.
    Write(quinn::WriteError),
    /// Reading failed.
    Read(quinn::ReadError),
    /// The stream ended `n` bytes into a frame (0: before the frame).
    FinishedEarly(usize),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Frame(e) => e.fmt(f),
            Self::Write(e) => write!(f, "write: {e}"),
            Self::Read(e) => write!(f, "read: {e}"),
            Self::FinishedEarly(0) => f.write_str("stream finished before a frame"),
            Self::FinishedEarly(n) => write!(f, "stream finished {n} bytes into a frame"),
        }
    }
}

impl From<StreamError> for FrameError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Frame(e) => e,
            StreamError::FinishedEarly(0) => FrameError::Closed,
            other => FrameError::Io(other.to_string()),
        }
    }
}

/// Writes already-encoded frame bytes.
pub(crate) async fn write_raw(
    send: &mut quinn::SendStream,
    bytes: &[u8],
) -> Result<(), StreamError> {
    send.write_all(bytes).await.map_err(StreamError::Write)
}

/// Reads one frame; see [`read_frame`].
pub(crate) async fn read_raw<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<T, StreamError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(n)) => return Err(StreamError::FinishedEarly(n)),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(StreamError::Read(e)),
    }
    let len = match body_len(prefix, max) {
        Ok(len) => len,
        Err(e) => {
            // Tell the peer to stop sending the rest; it may already be gone.
            let _ = recv.stop(quinn::VarInt::from_u32(reset::FRAME_TOO_LARGE));
            return Err(StreamError::Frame(e));
        }
    };
    // Grow the buffer as bytes arrive rather than reserving the announced length up front: a
    // peer that announces many large frames and sends nothing costs nothing, and what it does
    // send is bounded by the connection's flow-control window.
    let mut body = Vec::with_capacity(len.min(INITIAL_BODY_CAPACITY));
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(StreamError::FinishedEarly(LEN_PREFIX + body.len())),
            Err(e) => return Err(StreamError::Read(e)),
        }
    }
    decode(&body).map_err(|e| {
        let _ = recv.stop(quinn::VarInt::from_u32(reset::MALFORMED));
        StreamError::Frame(e)
    })
}

/// Encodes `msg` and writes it as one frame. Does not `finish()` the stream: a requester
/// finishes after its one request, a responder after its one response.
///
/// # Errors
/// [`FrameError::TooLarge`] / [`FrameError::Encode`] from [`encode`]; [`FrameError::Io`] if the
/// stream was stopped by the peer or the connection was lost.
pub async fn write_frame<T: Serialize + ?Sized>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), FrameError> {
    let bytes = encode(msg)?;
    write_raw(send, &bytes).await.map_err(FrameError::from)
}

/// Reads one frame and decodes it: reads the 4-byte length, checks it against `max` (capped at
/// [`MAX_FRAME`]) before allocating, then reads exactly that many bytes into a buffer that grows
/// as they arrive (at most 64 KiB is reserved before any body byte is there).
///
/// An oversized frame makes this `stop()` the stream with [`reset::FRAME_TOO_LARGE`], an
/// undecodable one with [`reset::MALFORMED`]. No timeout is applied: wrap the call in one.
///
/// # Errors
/// [`FrameError::Closed`] if the stream finished before the first byte; [`FrameError::Io`] if
/// it finished inside the frame, was reset, or the connection was lost;
/// [`FrameError::TooLarge`] and [`FrameError::Decode`] as above.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<T, FrameError> {
    read_raw(recv, max).await.map_err(FrameError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorCode, WireError};
    use crate::msg::{ClientRequest, ClientResponse, Request, Response};

    fn status_request() -> ClientRequest {
        ClientRequest {
            version: crate::PROTOCOL_VERSION,
            min_applied: 7,
            request: Request::Status,
        }
    }

    #[test]
    fn encode_prefixes_the_big_endian_length() {
        let bytes = encode(&status_request()).unwrap();
        // version 1 (varint 01), min_applied 7 (07), Request::Status is variant 0 (00).
        assert_eq!(bytes, [0, 0, 0, 3, 0x01, 0x07, 0x00]);
        let (back, used) = decode_frame::<ClientRequest>(&bytes, MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(back, status_request());
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn partial_length_prefix_waits_for_more() {
        for cut in 0..LEN_PREFIX {
            let partial = &[0u8, 0, 0, 3][..cut];
            assert!(decode_frame::<ClientRequest>(partial, MAX_FRAME)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn partial_body_waits_for_more() {
        let bytes = encode(&status_request()).unwrap();
        for cut in LEN_PREFIX..bytes.len() {
            assert!(decode_frame::<ClientRequest>(&bytes[..cut], MAX_FRAME)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn oversize_length_is_refused_from_the_prefix_alone() {
        // 0xFFFF_FFFF announced, nothing follows: refused without waiting for or allocating
        // the body.
        let e = decode_frame::<ClientRequest>(&[0xff, 0xff, 0xff, 0xff], MAX_FRAME).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge(0xffff_ffff)), "{e:?}");
        // One past the bound.
        let over = u32::try_from(MAX_FRAME + 1).unwrap().to_be_bytes();
        let e = decode_frame::<ClientRequest>(&over, MAX_FRAME).unwrap_err();
        assert!(
            matches!(e, FrameError::TooLarge(n) if n == MAX_FRAME + 1),
            "{e:?}"
        );
        // A caller's smaller bound applies.
        let e = decode_frame::<ClientRequest>(&[0, 0, 0, 17], 16).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge(17)), "{e:?}");
        // A caller's larger bound is capped at MAX_FRAME.
        assert!(matches!(
            body_len(over, usize::MAX),
            Err(FrameError::TooLarge(_))
        ));
        assert_eq!(body_len([0, 0, 0, 16], 16).unwrap(), 16);
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        // Request variant 0xff (varint 0xff 0x01 = 255) does not exist.
        let e = decode::<ClientRequest>(&[0x01, 0x00, 0xff, 0x01]).unwrap_err();
        assert!(matches!(e, FrameError::Decode(_)), "{e:?}");
        // A varint that never ends.
        let e = decode::<ClientRequest>(&[0xff; 16]).unwrap_err();
        assert!(matches!(e, FrameError::Decode(_)), "{e:?}");
        // Empty body.
        let e = decode::<ClientRequest>(&[]).unwrap_err();
        assert!(matches!(e, FrameError::Decode(_)), "{e:?}");
    }

    #[test]
    fn unknown_enum_variant_is_a_decode_error() {
        // Response::Done is variant 0 of Response; Result::Ok is variant 0. Variant 99 of
        // Response is unknown.
        let ok = ClientResponse {
            applied: 1,
            node: 2,
            result: Ok(Response::Done),
        };
        let mut bytes = encode(&ok).unwrap();
        assert_eq!(&bytes[LEN_PREFIX..], [0x01, 0x02, 0x00, 0x00]);
        bytes[LEN_PREFIX + 3] = 99;
        let e = decode_frame::<ClientResponse>(&bytes, MAX_FRAME).unwrap_err();
        assert!(matches!(e, FrameError::Decode(_)), "{e:?}");
        // Result variant 2 does not exist.
        bytes[LEN_PREFIX + 2] = 2;
        let e = decode_frame::<ClientResponse>(&bytes, MAX_FRAME).unwrap_err();
        assert!(matches!(e, FrameError::Decode(_)), "{e:?}");
    }

    #[test]
    fn unknown_error_code_decodes_as_general_error() {
        let err = ClientResponse {
            applied: 0,
            node: 0,
            result: Err(WireError::new(ErrorCode::PinLocked, "x")),
        };
        let mut bytes = encode(&err).unwrap();
        // applied, node, Err (1), code varint: 0xA4 = a4 01.
        assert_eq!(&bytes[LEN_PREFIX..LEN_PREFIX + 5], [0, 0, 1, 0xa4, 0x01]);
        bytes[LEN_PREFIX + 3] = 0xa5;
        let (back, _) = decode_frame::<ClientResponse>(&bytes, MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(back.result.unwrap_err().code, ErrorCode::GeneralError);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&status_request()).unwrap();
        bytes.push(0);
        bytes[3] += 1;
        let e = decode_frame::<ClientRequest>(&bytes, MAX_FRAME).unwrap_err();
        assert!(matches!(e, FrameError::Decode(_)), "{e:?}");
    }

    #[test]
    fn oversized_message_is_refused_when_encoding() {
        let big = ClientResponse {
            applied: 0,
            node: 0,
            result: Ok(Response::Bytes(vec![0; MAX_FRAME])),
        };
        assert!(matches!(encode(&big), Err(FrameError::TooLarge(_))));
        // Exactly at the bound fits: applied, node, Ok, Bytes variant, 4-byte varint length.
        let at_bound = |n: usize| ClientResponse {
            applied: 0,
            node: 0,
            result: Ok(Response::Bytes(vec![0; n])),
        };
        let bytes = encode(&at_bound(MAX_FRAME - 8)).unwrap();
        assert_eq!(bytes.len(), LEN_PREFIX + MAX_FRAME);
        assert_eq!(
            body_len(bytes[..4].try_into().unwrap(), MAX_FRAME).unwrap(),
            MAX_FRAME
        );
        assert!(matches!(
            encode(&at_bound(MAX_FRAME - 7)),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn frame_error_from_stream_error() {
        assert!(matches!(
            FrameError::from(StreamError::FinishedEarly(0)),
            FrameError::Closed
        ));
        assert!(matches!(
            FrameError::from(StreamError::FinishedEarly(2)),
            FrameError::Io(_)
        ));
    }
}
