//! Framing: property round trips of the client messages, and `read_frame` / `write_frame` on
//! real QUIC streams (partial frames, oversized lengths, garbage, resets).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use cloudkey_protocol::frame::{
    decode, decode_frame, encode, read_frame, reset, write_frame, FrameError, LEN_PREFIX, MAX_FRAME,
};
use cloudkey_protocol::msg::{
    AttrValue, Attribute, Auth, ChipLoad, ClientRequest, ClientResponse, MechParam, Mechanism,
    Member, NodeStatus, ObjectId, ObjectSummary, Request, Response, Secret, SessionGrant,
    SignInput, TokenId, TokenInfo, UserType,
};
use cloudkey_protocol::tls::{client_config, server_config, SERVER_NAME};
use cloudkey_protocol::{ErrorCode, WireError, ALPN_CLIENT};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Strategies for the message types.

fn bytes(max: usize) -> BoxedStrategy<Vec<u8>> {
    vec(any::<u8>(), 0..max).boxed()
}

fn text(max: usize) -> BoxedStrategy<String> {
    proptest::string::string_regex(&format!(".{{0,{max}}}"))
        .expect("regex")
        .boxed()
}

fn secret() -> BoxedStrategy<Secret> {
    bytes(40).prop_map(Secret).boxed()
}

fn object_id() -> BoxedStrategy<ObjectId> {
    any::<[u8; 16]>().prop_map(ObjectId).boxed()
}

fn token() -> BoxedStrategy<TokenId> {
    any::<u64>().prop_map(TokenId).boxed()
}

fn auth() -> BoxedStrategy<Auth> {
    (token(), option::of(bytes(80).prop_map(SessionGrant)))
        .prop_map(|(token, grant)| Auth { token, grant })
        .boxed()
}

fn attribute() -> BoxedStrategy<Attribute> {
    (any::<u64>(), bytes(64))
        .prop_map(|(ty, value)| Attribute { ty, value })
        .boxed()
}

fn template() -> BoxedStrategy<Vec<Attribute>> {
    vec(attribute(), 0..6).boxed()
}

fn mech_param() -> BoxedStrategy<MechParam> {
    prop_oneof![
        Just(MechParam::None),
        bytes(32).prop_map(MechParam::Iv),
        (bytes(16), bytes(32), any::<u32>()).prop_map(|(iv, aad, tag_bits)| MechParam::Gcm {
            iv,
            aad,
            tag_bits
        }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(hash, mgf, salt_len)| {
            MechParam::Pss {
                hash,
                mgf,
                salt_len,
            }
        }),
        (any::<u64>(), any::<u64>(), bytes(16))
            .prop_map(|(hash, mgf, source)| { MechParam::Oaep { hash, mgf, source } }),
        (any::<u64>(), bytes(16), bytes(65)).prop_map(|(kdf, shared_data, public_data)| {
            MechParam::Ecdh1 {
                kdf,
                shared_data,
                public_data,
            }
        }),
        bytes(16).prop_map(MechParam::Sm2Id),
    ]
    .boxed()
}

fn mechanism() -> BoxedStrategy<Mechanism> {
    (any::<u64>(), mech_param())
        .prop_map(|(ckm, param)| Mechanism { ckm, param })
        .boxed()
}

fn sign_input() -> BoxedStrategy<SignInput> {
    prop_oneof![
        bytes(128).prop_map(SignInput::Data),
        bytes(64).prop_map(SignInput::Digest),
    ]
    .boxed()
}

fn member() -> BoxedStrategy<Member> {
    (any::<u64>(), text(24))
        .prop_map(|(id, addr)| Member { id, addr })
        .boxed()
}

fn user() -> BoxedStrategy<UserType> {
    prop_oneof![Just(UserType::So), Just(UserType::User)].boxed()
}

/// Every `Request` variant.
fn request() -> BoxedStrategy<Request> {
    let admin = prop_oneof![
        Just(Request::Status),
        vec(member(), 0..5).prop_map(|members| Request::Init { members }),
        member().prop_map(Request::AddNode),
        any::<u64>().prop_map(|id| Request::RemoveNode { id }),
        (text(32), secret(), option::of(secret())).prop_map(|(label, so_pin, user_pin)| {
            Request::CreateToken {
                label,
                so_pin,
                user_pin,
            }
        }),
        token().prop_map(Request::DeleteToken),
        token().prop_map(Request::UnlockToken),
        Just(Request::ListTokens),
        option::of(token()).prop_map(|token| Request::ListObjects { token }),
        (token(), secret(), text(32)).prop_map(|(token, so_pin, label)| Request::InitToken {
            token,
            so_pin,
            label
        }),
    ]
    .boxed();
    let session = prop_oneof![
        (token(), user(), secret()).prop_map(|(token, user, pin)| Request::Login {
            token,
            user,
            pin
        }),
        (auth(), secret()).prop_map(|(auth, pin)| Request::InitPin { auth, pin }),
        (auth(), secret(), secret()).prop_map(|(auth, old_pin, new_pin)| Request::SetPin {
            auth,
            old_pin,
            new_pin
        }),
        (auth(), template()).prop_map(|(auth, template)| Request::CreateObject { auth, template }),
        (auth(), object_id(), template()).prop_map(|(auth, object, template)| {
            Request::CopyObject {
                auth,
                object,
                template,
            }
        }),
        (auth(), object_id()).prop_map(|(auth, object)| Request::DestroyObject { auth, object }),
        (auth(), object_id(), vec(any::<u64>(), 0..8)).prop_map(|(auth, object, types)| {
            Request::GetAttributes {
                auth,
                object,
                types,
            }
        }),
        (auth(), object_id(), template()).prop_map(|(auth, object, template)| {
            Request::SetAttributes {
                auth,
                object,
                template,
            }
        }),
        (auth(), template()).prop_map(|(auth, template)| Request::FindObjects { auth, template }),
    ]
    .boxed();
    let keys = prop_oneof![
        (auth(), mechanism(), template()).prop_map(|(auth, mechanism, template)| {
            Request::GenerateKey {
                auth,
                mechanism,
                template,
            }
        }),
        (auth(), mechanism(), template(), template()).prop_map(
            |(auth, mechanism, public_template, private_template)| Request::GenerateKeyPair {
                auth,
                mechanism,
                public_template,
                private_template,
            }
        ),
        (auth(), object_id(), mechanism(), sign_input()).prop_map(
            |(auth, key, mechanism, input)| Request::Sign {
                auth,
                key,
                mechanism,
                input,
            }
        ),
        (auth(), object_id(), mechanism(), sign_input(), bytes(128)).prop_map(
            |(auth, key, mechanism, input, signature)| Request::Verify {
                auth,
                key,
                mechanism,
                input,
                signature,
            }
        ),
        (auth(), object_id(), mechanism(), bytes(256)).prop_map(|(auth, key, mechanism, data)| {
            Request::Encrypt {
                auth,
                key,
                mechanism,
                data,
            }
        }),
        (auth(), object_id(), mechanism(), bytes(256)).prop_map(|(auth, key, mechanism, data)| {
            Request::Decrypt {
                auth,
                key,
                mechanism,
                data,
            }
        }),
        (auth(), object_id(), mechanism(), object_id()).prop_map(
            |(auth, wrapping_key, mechanism, key)| Request::WrapKey {
                auth,
                wrapping_key,
                mechanism,
                key,
            }
        ),
        (auth(), object_id(), mechanism(), bytes(128), template()).prop_map(
            |(auth, unwrapping_key, mechanism, wrapped, template)| Request::UnwrapKey {
                auth,
                unwrapping_key,
                mechanism,
                wrapped,
                template,
            }
        ),
        (auth(), object_id(), mechanism(), template()).prop_map(
            |(auth, base_key, mechanism, template)| Request::DeriveKey {
                auth,
                base_key,
                mechanism,
                template,
            }
        ),
        any::<u32>().prop_map(|len| Request::GenerateRandom { len }),
    ]
    .boxed();
    prop_oneof![admin, session, keys].boxed()
}

fn client_request() -> BoxedStrategy<ClientRequest> {
    (any::<u16>(), any::<u64>(), request())
        .prop_map(|(version, min_applied, request)| ClientRequest {
            version,
            min_applied,
            request,
        })
        .boxed()
}

fn token_info() -> BoxedStrategy<TokenInfo> {
    (
        token(),
        text(32),
        any::<bool>(),
        any::<u32>(),
        any::<bool>(),
        any::<u32>(),
        any::<bool>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                id,
                label,
                user_pin_initialized,
                user_failures,
                user_locked,
                so_failures,
                so_locked,
                max_failures,
                objects,
            )| TokenInfo {
                id,
                label,
                user_pin_initialized,
                user_failures,
                user_locked,
                so_failures,
                so_locked,
                max_failures,
                objects,
            },
        )
        .boxed()
}

fn object_summary() -> BoxedStrategy<ObjectSummary> {
    (
        object_id(),
        token(),
        any::<u64>(),
        option::of(any::<u64>()),
        text(32),
        text(40),
    )
        .prop_map(
            |(id, token, class, key_type, label, cka_id_hex)| ObjectSummary {
                id,
                token,
                class,
                key_type,
                label,
                cka_id_hex,
            },
        )
        .boxed()
}

fn chip_load() -> BoxedStrategy<ChipLoad> {
    (
        text(24),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(name, queued, loaded, slots, served, healthy, has_domain)| ChipLoad {
                name,
                queued,
                loaded,
                slots,
                served,
                healthy,
                has_domain,
            },
        )
        .boxed()
}

fn node_status() -> BoxedStrategy<NodeStatus> {
    (
        any::<u64>(),
        text(24),
        any::<bool>(),
        any::<u64>(),
        option::of(any::<u64>()),
        any::<u64>(),
        vec(member(), 0..4),
        vec(chip_load(), 0..4),
        text(16),
    )
        .prop_map(
            |(id, addr, initialized, term, leader, applied, members, chips, domain_kcv)| {
                NodeStatus {
                    id,
                    addr,
                    initialized,
                    term,
                    leader,
                    applied,
                    members,
                    chips,
                    domain_kcv,
                    confirmed_ms_ago: Some(term),
                }
            },
        )
        .boxed()
}

fn attr_value() -> BoxedStrategy<AttrValue> {
    prop_oneof![
        bytes(64).prop_map(AttrValue::Value),
        Just(AttrValue::Sensitive),
        Just(AttrValue::Invalid),
    ]
    .boxed()
}

/// Every `Response` variant.
fn response() -> BoxedStrategy<Response> {
    prop_oneof![
        Just(Response::Done),
        node_status().prop_map(Response::Status),
        token_info().prop_map(Response::Token),
        vec(token_info(), 0..4).prop_map(Response::Tokens),
        vec(object_summary(), 0..4).prop_map(Response::Objects),
        vec(object_id(), 0..8).prop_map(Response::Found),
        (bytes(80), any::<u64>()).prop_map(|(g, expires_unix_ms)| Response::Session {
            grant: SessionGrant(g),
            expires_unix_ms
        }),
        object_id().prop_map(Response::Object),
        (object_id(), object_id())
            .prop_map(|(public, private)| Response::KeyPair { public, private }),
        vec(attr_value(), 0..8).prop_map(Response::Attributes),
        bytes(512).prop_map(Response::Bytes),
    ]
    .boxed()
}

fn wire_error() -> BoxedStrategy<WireError> {
    (
        proptest::sample::select(ErrorCode::ALL),
        text(40),
        option::of(text(24)),
    )
        .prop_map(|(code, detail, leader_hint)| WireError {
            code,
            detail,
            leader_hint,
        })
        .boxed()
}

fn client_response() -> BoxedStrategy<ClientResponse> {
    (
        any::<u64>(),
        any::<u64>(),
        prop_oneof![response().prop_map(Ok), wire_error().prop_map(Err)],
    )
        .prop_map(|(applied, node, result)| ClientResponse {
            applied,
            node,
            result,
        })
        .boxed()
}

/// Encodes, checks the prefix, decodes the body and the whole frame, and checks that every
/// strict prefix of the frame is "incomplete", never an error or a different message.
fn round_trip<T>(msg: &T) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode(msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let len = u32::from_be_bytes(bytes[..LEN_PREFIX].try_into().unwrap()) as usize;
    prop_assert_eq!(len, bytes.len() - LEN_PREFIX);
    let body: T = decode(&bytes[LEN_PREFIX..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&body, msg);
    let (whole, used) = decode_frame::<T>(&bytes, MAX_FRAME)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .expect("a whole frame");
    prop_assert_eq!(&whole, msg);
    prop_assert_eq!(used, bytes.len());
    for cut in [
        0,
        1,
        LEN_PREFIX - 1,
        LEN_PREFIX,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        if cut < bytes.len() {
            prop_assert!(decode_frame::<T>(&bytes[..cut], MAX_FRAME)
                .expect("a prefix is not an error")
                .is_none());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_requests_round_trip(msg in client_request()) {
        round_trip(&msg)?;
    }

    #[test]
    fn client_responses_round_trip(msg in client_response()) {
        round_trip(&msg)?;
    }

    /// Arbitrary bytes never panic the decoders, and whatever decodes re-encodes to itself.
    #[test]
    fn arbitrary_bodies_decode_or_fail_cleanly(body in bytes(256)) {
        if let Ok(req) = decode::<ClientRequest>(&body) {
            prop_assert_eq!(&encode(&req).unwrap()[LEN_PREFIX..], &body[..]);
        }
        if let Ok(resp) = decode::<ClientResponse>(&body) {
            prop_assert_eq!(&encode(&resp).unwrap()[LEN_PREFIX..], &body[..]);
        }
    }

    /// Flipping one byte of a valid frame body gives an error or another valid message, never a
    /// panic.
    #[test]
    fn corrupted_requests_fail_cleanly(msg in client_request(), at in any::<prop::sample::Index>(), x in 1u8..) {
        let mut bytes = encode(&msg).unwrap();
        let i = LEN_PREFIX + at.index(bytes.len() - LEN_PREFIX);
        bytes[i] ^= x;
        let _ = decode_frame::<ClientRequest>(&bytes, MAX_FRAME);
    }
}

// ---------------------------------------------------------------------------------------------
// On real QUIC streams.

/// A connected pair: the client's connection and the server's.
async fn pair() -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::Endpoint,
    quinn::Connection,
) {
    let pki = common::Pki::new("frame CA");
    let server = quinn::Endpoint::server(
        server_config(&pki.node(1), &[ALPN_CLIENT]).unwrap(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )
    .unwrap();
    let mut client = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    client.set_default_client_config(client_config(&pki.client("c"), ALPN_CLIENT).unwrap());
    let addr = server.local_addr().unwrap();
    let (c, s) = tokio::join!(
        async { client.connect(addr, SERVER_NAME).unwrap().await.unwrap() },
        async { server.accept().await.unwrap().await.unwrap() }
    );
    (client, c, server, s)
}

const STEP: Duration = Duration::from_secs(10);

/// Opens a stream from the client, sends `bytes` (then finishes if `finish`), and returns the
/// server's receive half and the client's send half.
async fn send_raw(
    c: &quinn::Connection,
    s: &quinn::Connection,
    bytes: &[u8],
    finish: bool,
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, _recv) = c.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    let (_s_send, recv) = tokio::time::timeout(STEP, s.accept_bi())
        .await
        .unwrap()
        .unwrap();
    (send, recv)
}

#[tokio::test]
async fn frames_cross_a_stream() {
    let (_ce, c, _se, s) = pair().await;
    let req = ClientRequest {
        version: 1,
        min_applied: 5,
        request: Request::GenerateRandom { len: 32 },
    };
    let (mut send, mut recv_c) = c.open_bi().await.unwrap();
    write_frame(&mut send, &req).await.unwrap();
    send.finish().unwrap();
    let (mut send_s, mut recv) = s.accept_bi().await.unwrap();
    let got: ClientRequest = read_frame(&mut recv, MAX_FRAME).await.unwrap();
    assert_eq!(got, req);
    // After the one frame, the stream is finished: a second read is a clean Closed.
    assert!(matches!(
        read_frame::<ClientRequest>(&mut recv, MAX_FRAME).await,
        Err(FrameError::Closed)
    ));
    // A big response (1 MiB) crosses flow-control windows.
    let resp = ClientResponse {
        applied: 9,
        node: 1,
        result: Ok(Response::Bytes(vec![7; 1 << 20])),
    };
    write_frame(&mut send_s, &resp).await.unwrap();
    send_s.finish().unwrap();
    let got: ClientResponse = read_frame(&mut recv_c, MAX_FRAME).await.unwrap();
    assert_eq!(got, resp);
}

#[tokio::test]
async fn stream_finished_inside_the_length_is_an_io_error() {
    let (_ce, c, _se, s) = pair().await;
    let (_send, mut recv) = send_raw(&c, &s, &[0, 0], true).await;
    let e = read_frame::<ClientRequest>(&mut recv, MAX_FRAME)
        .await
        .unwrap_err();
    assert!(
        matches!(e, FrameError::Io(ref m) if m.contains("2 bytes into")),
        "{e:?}"
    );
}

#[tokio::test]
async fn stream_finished_inside_the_body_is_an_io_error() {
    let (_ce, c, _se, s) = pair().await;
    let (_send, mut recv) = send_raw(&c, &s, &[0, 0, 0, 10, 1, 2], true).await;
    let e = read_frame::<ClientRequest>(&mut recv, MAX_FRAME)
        .await
        .unwrap_err();
    assert!(
        matches!(e, FrameError::Io(ref m) if m.contains("6 bytes into")),
        "{e:?}"
    );
}

#[tokio::test]
async fn oversized_length_is_refused_at_once_and_the_sender_is_stopped() {
    let (_ce, c, _se, s) = pair().await;
    // Announce 4 GiB - 1 and send nothing more, without finishing: if the reader waited for the
    // body (or tried to allocate it) this would hang or abort.
    let (send, mut recv) = send_raw(&c, &s, &[0xff, 0xff, 0xff, 0xff], false).await;
    let e = tokio::time::timeout(STEP, read_frame::<ClientRequest>(&mut recv, MAX_FRAME))
        .await
        .expect("refused without waiting for the body")
        .unwrap_err();
    assert!(matches!(e, FrameError::TooLarge(0xffff_ffff)), "{e:?}");
    let code = tokio::time::timeout(STEP, send.stopped())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, Some(quinn::VarInt::from_u32(reset::FRAME_TOO_LARGE)));

    // A caller's own smaller bound.
    let (_send, mut recv) = send_raw(&c, &s, &[0, 0, 1, 0], false).await;
    let e = read_frame::<ClientRequest>(&mut recv, 255)
        .await
        .unwrap_err();
    assert!(matches!(e, FrameError::TooLarge(256)), "{e:?}");
}

#[tokio::test]
async fn garbage_body_is_a_decode_error_and_the_sender_is_stopped() {
    let (_ce, c, _se, s) = pair().await;
    // Version 1, min_applied 0, Request variant 200 (unknown).
    let (send, mut recv) = send_raw(&c, &s, &[0, 0, 0, 4, 1, 0, 0xc8, 0x01], false).await;
    let e = read_frame::<ClientRequest>(&mut recv, MAX_FRAME)
        .await
        .unwrap_err();
    assert!(matches!(e, FrameError::Decode(_)), "{e:?}");
    let code = tokio::time::timeout(STEP, send.stopped())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, Some(quinn::VarInt::from_u32(reset::MALFORMED)));
}

#[tokio::test]
async fn reset_by_the_peer_is_an_io_error() {
    let (_ce, c, _se, s) = pair().await;
    let (mut send, mut recv) = send_raw(&c, &s, &[0, 0], false).await;
    send.reset(quinn::VarInt::from_u32(reset::OVERLOADED))
        .unwrap();
    let e = read_frame::<ClientRequest>(&mut recv, MAX_FRAME)
        .await
        .unwrap_err();
    assert!(
        matches!(e, FrameError::Io(ref m) if m.contains("reset")),
        "{e:?}"
    );
}

#[tokio::test]
async fn writing_an_oversized_frame_fails_before_sending() {
    let (_ce, c, _se, _s) = pair().await;
    let (mut send, _recv) = c.open_bi().await.unwrap();
    let big = ClientResponse {
        applied: 0,
        node: 0,
        result: Ok(Response::Bytes(vec![0; MAX_FRAME])),
    };
    assert!(matches!(
        write_frame(&mut send, &big).await,
        Err(FrameError::TooLarge(_))
    ));
}
