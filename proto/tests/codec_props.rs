//! Property tests of the frame codec over every message type of both protocols.
//!
//! - every message (arbitrary field values) survives `encode_frame` → `FrameDecoder::decode`
//!   unchanged, and the frame reports exactly its own length as `consumed`;
//! - arbitrary bytes, arbitrary payloads behind an honest prefix, truncated frames and frames
//!   with one corrupted byte never panic the decoder: it answers `Incomplete` (with a `needed`
//!   larger than what it was given) or an error;
//! - a whole frame followed by garbage yields the first message and consumes only that frame.
//!
//! The allocation bound ("never allocates past the limit") needs a counting global allocator
//! and lives in its own test binary, `alloc_limit.rs`.

use std::fmt::Debug;

use gpuaas_proto::codec::LEN_PREFIX;
use gpuaas_proto::inventory::{GpuInfo, Inventory, MigMode, MigState};
use gpuaas_proto::messages::{
    AgentMessage, CoordinatorFrame, CoordinatorMessage, EnrollRequest, EnrollResponse, Heartbeat,
    Hello, Refusal, RefusalCode, Term, Welcome,
};
use gpuaas_proto::{
    CodecError, Decoded, FrameDecoder, MAX_FRAME_LEN, NodeId, ProtocolVersion, encode_frame,
};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

// ---------------------------------------------------------------------------------------------
// Strategies. Strings are arbitrary Unicode (control characters included: the codec does not
// validate, `validate()` does); byte fields are short so every frame stays far below the limit.
// ---------------------------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    any::<String>()
}

fn der() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..96)
}

fn protocol_version() -> impl Strategy<Value = ProtocolVersion> {
    (any::<u16>(), any::<u16>()).prop_map(|(major, minor)| ProtocolVersion { major, minor })
}

fn node_id() -> impl Strategy<Value = NodeId> {
    any::<u64>().prop_map(NodeId::from_raw)
}

fn mig_mode() -> impl Strategy<Value = MigMode> {
    prop_oneof![
        Just(MigMode::Unsupported),
        Just(MigMode::Disabled),
        Just(MigMode::Enabled),
    ]
}

fn gpu_info() -> impl Strategy<Value = GpuInfo> {
    (
        any::<u32>(),
        text(),
        text(),
        text(),
        any::<u64>(),
        text(),
        any::<u32>(),
        any::<Option<u32>>(),
        (mig_mode(), mig_mode()),
    )
        .prop_map(
            |(index, uuid, model, nvml_name, memory_mib, pci_bus_id, minor, numa_node, mig)| {
                GpuInfo {
                    index,
                    uuid,
                    model,
                    nvml_name,
                    memory_mib,
                    pci_bus_id,
                    minor,
                    numa_node,
                    mig: MigState {
                        current: mig.0,
                        pending: mig.1,
                    },
                }
            },
        )
}

fn inventory() -> impl Strategy<Value = Inventory> {
    (text(), any::<u32>(), any::<u64>(), vec(gpu_info(), 0..5)).prop_map(
        |(hostname, cpu_cores, memory_mib, gpus)| Inventory {
            hostname,
            cpu_cores,
            memory_mib,
            gpus,
        },
    )
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        protocol_version(),
        node_id(),
        text(),
        inventory(),
        any::<i64>(),
    )
        .prop_map(
            |(protocol, node_id, agent_version, inventory, wall_clock_ms)| Hello {
                protocol,
                node_id,
                agent_version,
                inventory,
                wall_clock_ms,
            },
        )
}

fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(seq, wall_clock_ms, gpus_visible)| {
        Heartbeat {
            seq,
            wall_clock_ms,
            gpus_visible,
        }
    })
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    prop_oneof![
        hello().prop_map(AgentMessage::Hello),
        heartbeat().prop_map(AgentMessage::Heartbeat),
        der().prop_map(|csr_der| AgentMessage::RenewCertificate { csr_der }),
    ]
}

fn refusal_code() -> impl Strategy<Value = RefusalCode> {
    prop_oneof![
        Just(RefusalCode::VersionMismatch),
        Just(RefusalCode::TokenInvalid),
        Just(RefusalCode::TokenExpired),
        Just(RefusalCode::TokenUsed),
        Just(RefusalCode::BadRequest),
        Just(RefusalCode::IdentityMismatch),
        Just(RefusalCode::NodeRevoked),
        Just(RefusalCode::Internal),
    ]
}

fn refusal() -> impl Strategy<Value = Refusal> {
    (refusal_code(), text()).prop_map(|(code, message)| Refusal { code, message })
}

fn welcome() -> impl Strategy<Value = Welcome> {
    (protocol_version(), node_id(), any::<u64>(), any::<i64>()).prop_map(
        |(protocol, node_id, heartbeat_interval_ms, wall_clock_ms)| Welcome {
            protocol,
            node_id,
            heartbeat_interval_ms,
            wall_clock_ms,
        },
    )
}

fn coordinator_message() -> impl Strategy<Value = CoordinatorMessage> {
    prop_oneof![
        welcome().prop_map(CoordinatorMessage::Welcome),
        refusal().prop_map(CoordinatorMessage::Refused),
        der().prop_map(|cert_der| CoordinatorMessage::CertificateRenewed { cert_der }),
    ]
}

fn coordinator_frame() -> impl Strategy<Value = CoordinatorFrame> {
    (any::<u64>(), coordinator_message()).prop_map(|(term, message)| CoordinatorFrame {
        term: Term(term),
        message,
    })
}

fn enroll_request() -> impl Strategy<Value = EnrollRequest> {
    (protocol_version(), text(), der(), text(), text()).prop_map(
        |(protocol, token, csr_der, hostname, agent_version)| EnrollRequest {
            protocol,
            token,
            csr_der,
            hostname,
            agent_version,
        },
    )
}

fn enroll_response() -> impl Strategy<Value = EnrollResponse> {
    prop_oneof![
        (node_id(), der(), der()).prop_map(|(node_id, cert_der, ca_der)| {
            EnrollResponse::Enrolled {
                node_id,
                cert_der,
                ca_der,
            }
        }),
        refusal().prop_map(EnrollResponse::Refused),
    ]
}

/// Compile-time guard: when a variant is added to one of these enums, this stops compiling
/// until the matching strategy above generates the new variant too.
#[allow(dead_code)]
fn strategies_cover_every_variant(
    a: &AgentMessage,
    c: &CoordinatorMessage,
    e: &EnrollResponse,
    r: RefusalCode,
    m: MigMode,
) {
    match a {
        AgentMessage::Hello(_) | AgentMessage::Heartbeat(_) => {}
        AgentMessage::RenewCertificate { .. } => {}
    }
    match c {
        CoordinatorMessage::Welcome(_) | CoordinatorMessage::Refused(_) => {}
        CoordinatorMessage::CertificateRenewed { .. } => {}
    }
    match e {
        EnrollResponse::Enrolled { .. } | EnrollResponse::Refused(_) => {}
    }
    match r {
        RefusalCode::VersionMismatch
        | RefusalCode::TokenInvalid
        | RefusalCode::TokenExpired
        | RefusalCode::TokenUsed
        | RefusalCode::BadRequest
        | RefusalCode::IdentityMismatch
        | RefusalCode::NodeRevoked
        | RefusalCode::Internal => {}
    }
    match m {
        MigMode::Unsupported | MigMode::Disabled | MigMode::Enabled => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Checks shared by the properties.
// ---------------------------------------------------------------------------------------------

fn frame_of<T: Serialize>(message: &T) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_frame(message, &mut buf).expect("generated messages are far below the limit");
    buf
}

/// The payload length a buffer's prefix declares, if it has a whole prefix.
fn declared_len(buf: &[u8]) -> Option<usize> {
    let prefix = buf.first_chunk::<LEN_PREFIX>()?;
    Some(usize::try_from(u32::from_be_bytes(*prefix)).expect("u32 fits usize"))
}

/// Round trip through a frame and through `decode_payload`, with the prefix checked.
fn check_round_trip<T>(message: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let buf = frame_of(message);
    prop_assert_eq!(declared_len(&buf), Some(buf.len() - LEN_PREFIX));
    let dec = FrameDecoder::default();
    match dec.decode::<T>(&buf) {
        Ok(Decoded::Frame {
            message: decoded,
            consumed,
        }) => {
            prop_assert_eq!(&decoded, message);
            prop_assert_eq!(consumed, buf.len());
        }
        other => prop_assert!(false, "expected a frame, got {:?}", other),
    }
    let payload: T = dec
        .decode_payload(&buf[LEN_PREFIX..])
        .map_err(|e| TestCaseError::fail(format!("decode_payload: {e}")))?;
    prop_assert_eq!(&payload, message);
    Ok(())
}

/// Whatever `buf` holds, decoding it as `T` must not panic and must answer consistently with
/// the prefix: `Incomplete` exactly when the frame is not whole, `TooLarge` exactly when the
/// prefix is over the limit, and a frame consuming exactly prefix + declared length.
fn check_decode_is_total<T>(buf: &[u8]) -> Result<(), TestCaseError>
where
    T: DeserializeOwned + Debug,
{
    let result = FrameDecoder::default().decode::<T>(buf);
    let Some(len) = declared_len(buf) else {
        prop_assert!(
            matches!(result, Ok(Decoded::Incomplete { needed: LEN_PREFIX })),
            "{} bytes: {:?}",
            buf.len(),
            result
        );
        return Ok(());
    };
    let max = usize::try_from(MAX_FRAME_LEN).expect("u32 fits usize");
    let total = LEN_PREFIX + len;
    match result {
        Err(CodecError::TooLarge {
            len: reported,
            max: limit,
        }) => {
            prop_assert!(len > max, "TooLarge for a declared {} bytes", len);
            prop_assert_eq!(reported, u64::try_from(len).expect("usize fits u64"));
            prop_assert_eq!(limit, MAX_FRAME_LEN);
        }
        Err(CodecError::Encode(e)) => prop_assert!(false, "decode returned an encode error: {e}"),
        Err(CodecError::Decode(_) | CodecError::TrailingBytes { .. }) => {
            prop_assert!(
                len <= max && total <= buf.len(),
                "payload error on a partial frame"
            );
        }
        Ok(Decoded::Incomplete { needed }) => {
            prop_assert!(len <= max, "Incomplete for an oversized prefix");
            prop_assert_eq!(needed, total);
            prop_assert!(needed > buf.len(), "needs {} but has {}", needed, buf.len());
        }
        Ok(Decoded::Frame { consumed, .. }) => {
            prop_assert_eq!(consumed, total);
            prop_assert!(consumed <= buf.len());
        }
    }
    Ok(())
}

fn check_all_types_are_total(buf: &[u8]) -> Result<(), TestCaseError> {
    check_decode_is_total::<AgentMessage>(buf)?;
    check_decode_is_total::<CoordinatorFrame>(buf)?;
    check_decode_is_total::<EnrollRequest>(buf)?;
    check_decode_is_total::<EnrollResponse>(buf)
}

/// Every strict prefix of a valid frame is `Incomplete`, never a frame and never an error.
fn check_truncations<T>(message: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + Debug,
{
    let buf = frame_of(message);
    let dec = FrameDecoder::default();
    for cut in 0..buf.len() {
        let expected = if cut < LEN_PREFIX {
            LEN_PREFIX
        } else {
            buf.len()
        };
        match dec.decode::<T>(&buf[..cut]) {
            Ok(Decoded::Incomplete { needed }) => prop_assert_eq!(needed, expected, "cut {}", cut),
            other => prop_assert!(false, "cut {} of {}: {:?}", cut, buf.len(), other),
        }
    }
    Ok(())
}

/// A whole frame followed by arbitrary bytes decodes to the message and consumes only it.
fn check_frame_then_garbage<T>(message: &T, garbage: &[u8]) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut buf = frame_of(message);
    let frame_len = buf.len();
    buf.extend_from_slice(garbage);
    match FrameDecoder::default().decode::<T>(&buf) {
        Ok(Decoded::Frame {
            message: decoded,
            consumed,
        }) => {
            prop_assert_eq!(&decoded, message);
            prop_assert_eq!(consumed, frame_len);
        }
        other => prop_assert!(false, "expected the first frame, got {:?}", other),
    }
    Ok(())
}

/// Overwrites one byte of a valid frame's payload: the decoder may accept or refuse it, but
/// must stay total (this reaches deep into the payload grammar, unlike random bytes).
fn check_corrupted<T>(message: &T, at: prop::sample::Index, byte: u8) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + Debug,
{
    let mut buf = frame_of(message);
    let payload_len = buf.len() - LEN_PREFIX;
    if payload_len > 0 {
        buf[LEN_PREFIX + at.index(payload_len)] = byte;
    }
    check_decode_is_total::<T>(&buf)
}

// ---------------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn agent_message_round_trips(message in agent_message()) {
        check_round_trip(&message)?;
    }

    #[test]
    fn coordinator_frame_round_trips(frame in coordinator_frame()) {
        check_round_trip(&frame)?;
    }

    #[test]
    fn enroll_request_round_trips(request in enroll_request()) {
        check_round_trip(&request)?;
    }

    #[test]
    fn enroll_response_round_trips(response in enroll_response()) {
        check_round_trip(&response)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        check_all_types_are_total(&bytes)?;
    }

    /// Random prefixes are nearly always over the limit; this gives the payload decoder the
    /// arbitrary bytes behind an honest prefix, and behind one that promises more than is there.
    #[test]
    fn arbitrary_payload_never_panics(
        payload in vec(any::<u8>(), 0..512),
        missing in 0u32..64,
    ) {
        let len = u32::try_from(payload.len()).expect("short payload");
        for declared in [len, len + missing] {
            let mut buf = declared.to_be_bytes().to_vec();
            buf.extend_from_slice(&payload);
            check_all_types_are_total(&buf)?;
        }
    }

    #[test]
    fn truncated_agent_frames_are_incomplete(message in agent_message()) {
        check_truncations(&message)?;
    }

    #[test]
    fn truncated_coordinator_frames_are_incomplete(frame in coordinator_frame()) {
        check_truncations(&frame)?;
    }

    #[test]
    fn truncated_enrolment_frames_are_incomplete(
        request in enroll_request(),
        response in enroll_response(),
    ) {
        check_truncations(&request)?;
        check_truncations(&response)?;
    }

    #[test]
    fn frame_then_garbage_consumes_exactly_the_frame(
        agent in agent_message(),
        coordinator in coordinator_frame(),
        request in enroll_request(),
        response in enroll_response(),
        garbage in vec(any::<u8>(), 0..256),
    ) {
        check_frame_then_garbage(&agent, &garbage)?;
        check_frame_then_garbage(&coordinator, &garbage)?;
        check_frame_then_garbage(&request, &garbage)?;
        check_frame_then_garbage(&response, &garbage)?;
    }

    #[test]
    fn corrupted_frames_never_panic(
        agent in agent_message(),
        coordinator in coordinator_frame(),
        request in enroll_request(),
        response in enroll_response(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        check_corrupted(&agent, at, byte)?;
        check_corrupted(&coordinator, at, byte)?;
        check_corrupted(&request, at, byte)?;
        check_corrupted(&response, at, byte)?;
    }

    /// Frames written back to back come out in order, each consuming exactly its own bytes.
    #[test]
    fn back_to_back_frames_decode_in_order(
        messages in vec(agent_message(), 1..6),
    ) {
        let mut buf = Vec::new();
        for message in &messages {
            encode_frame(message, &mut buf).expect("small message");
        }
        let dec = FrameDecoder::default();
        let mut rest = buf.as_slice();
        for message in &messages {
            match dec.decode::<AgentMessage>(rest) {
                Ok(Decoded::Frame { message: decoded, consumed }) => {
                    prop_assert_eq!(&decoded, message);
                    rest = &rest[consumed..];
                }
                other => prop_assert!(false, "expected a frame, got {:?}", other),
            }
        }
        prop_assert!(rest.is_empty());
        prop_assert_eq!(
            dec.decode::<AgentMessage>(rest).ok(),
            Some(Decoded::Incomplete { needed: LEN_PREFIX })
        );
    }
}

/// A decoder built with a smaller limit refuses a frame that the default one accepts, and says
/// so before looking at the payload.
#[test]
fn smaller_limit_refuses_before_reading_the_payload() {
    let message = AgentMessage::RenewCertificate {
        csr_der: vec![7; 300],
    };
    let buf = frame_of(&message);
    let small = FrameDecoder::new(256);
    // Only the prefix is given: the refusal cannot depend on the payload.
    let err = small
        .decode::<AgentMessage>(&buf[..LEN_PREFIX])
        .unwrap_err();
    assert!(
        matches!(err, CodecError::TooLarge { max: 256, .. }),
        "{err}"
    );
    assert!(matches!(
        FrameDecoder::default().decode::<AgentMessage>(&buf),
        Ok(Decoded::Frame { .. })
    ));
}
