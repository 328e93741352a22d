//! Enrolment over `gpuaas-enroll/1`: refused tokens, the one-token race, a foreign CA
//! fingerprint, garbage instead of a request, and a request of another protocol major.

use gpuaas_agent::enroll::EnrollError;
use gpuaas_agent::identity::{csr, generate_key};
use gpuaas_agent::tls::FINGERPRINT_MISMATCH;
use gpuaas_coordinator::pki::sha256;
use gpuaas_coordinator::store::Command;
use gpuaas_proto::messages::{
    ALPN_ENROLL, AgentMessage, EnrollRequest, EnrollResponse, Heartbeat, RefusalCode, close_code,
};
use gpuaas_proto::token::EnrollmentToken;
use gpuaas_proto::{ProtocolVersion, TokenId};

use crate::support::{Coord, RawStream, assert_app_close, frame, now_ms};

/// Asserts that `result` is a refusal with `code`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, EnrollError>, code: RefusalCode) {
    match result {
        Err(EnrollError::Refused { code: got, message }) => {
            assert_eq!(got, code, "refusal code (message: {message})");
            assert!(!message.is_empty(), "a refusal explains itself");
        }
        other => panic!("expected a {code:?} refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused_and_nothing_is_stored() {
    let coord = Coord::start().await;
    let (_, token) = coord.token().await;
    let forged = EnrollmentToken {
        secret: [0x42; 32],
        ..token.clone()
    };
    assert_ne!(forged.secret, token.secret);

    assert_refused(
        coord.enroll(&forged.to_string(), "forger").await,
        RefusalCode::TokenInvalid,
    );
    coord.assert_nothing_stored(Some(token.id)).await;
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_token_id_is_refused_and_nothing_is_stored() {
    let coord = Coord::start().await;
    let (_, real) = coord.token().await;
    let unknown = EnrollmentToken {
        ca_fingerprint: coord.fleet().ca.fingerprint(),
        id: TokenId::from_raw(real.id.raw() ^ 0xffff),
        secret: real.secret,
    };
    assert!(coord.token_record(unknown.id).await.is_none());

    assert_refused(
        coord.enroll(&unknown.to_string(), "stranger").await,
        RefusalCode::TokenInvalid,
    );
    coord.assert_nothing_stored(Some(real.id)).await;
    assert!(
        coord.token_record(unknown.id).await.is_none(),
        "a refused enrolment must not create a token row"
    );
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused_and_nothing_is_stored() {
    let coord = Coord::start().await;
    let token = EnrollmentToken {
        ca_fingerprint: coord.fleet().ca.fingerprint(),
        id: TokenId::from_raw(0x0e0e_0e0e_0e0e_0e0e),
        secret: [7; 32],
    };
    let now = now_ms();
    coord
        .fleet()
        .store
        .execute(Command::CreateEnrollmentToken {
            id: token.id,
            secret_sha256: sha256(&token.secret),
            description: "expired".into(),
            created_at_ms: now - 60_000,
            expires_at_ms: now - 1000,
        })
        .await
        .expect("token stored");

    assert_refused(
        coord.enroll(&token.to_string(), "late").await,
        RefusalCode::TokenExpired,
    );
    coord.assert_nothing_stored(Some(token.id)).await;
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_token_is_refused_and_only_the_first_node_is_stored() {
    let coord = Coord::start().await;
    let (text, token) = coord.token().await;
    let first = coord
        .enroll(&text, "first")
        .await
        .expect("first enrolment succeeds");

    assert_refused(coord.enroll(&text, "second").await, RefusalCode::TokenUsed);

    let nodes = coord.nodes().await;
    assert_eq!(
        nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![first.node_id],
        "only the first enrolment is stored"
    );
    assert_eq!(nodes[0].hostname, "first");
    let record = coord.token_record(token.id).await.expect("token row");
    assert_eq!(record.used_by_node, Some(first.node_id));
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_racing_with_one_token_enrol_exactly_once() {
    let coord = Coord::start().await;
    let (text, token) = coord.token().await;

    let (a, b) = tokio::join!(
        coord.enroll(&text, "racer-a"),
        coord.enroll(&text, "racer-b")
    );
    let (winner, loser) = match (a, b) {
        (Ok(w), l @ Err(_)) | (l @ Err(_), Ok(w)) => (w, l),
        (a, b) => panic!("exactly one enrolment must succeed: {a:?} / {b:?}"),
    };
    assert_refused(loser, RefusalCode::TokenUsed);

    let nodes = coord.nodes().await;
    assert_eq!(
        nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![winner.node_id],
        "exactly one node is stored, the winner"
    );
    let record = coord.token_record(token.id).await.expect("token row");
    assert_eq!(record.used_by_node, Some(winner.node_id));
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_for_another_ca_is_refused_before_the_secret_is_sent() {
    let coord = Coord::start().await;
    let (_, token) = coord.token().await;
    let foreign = EnrollmentToken {
        ca_fingerprint: [0x55; 32],
        ..token.clone()
    };

    let err = coord
        .enroll(&foreign.to_string(), "misled")
        .await
        .expect_err("a coordinator whose CA is not the token's must not be trusted");
    assert!(
        matches!(err, EnrollError::Connect { .. }),
        "the TLS handshake itself must fail: {err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(FINGERPRINT_MISMATCH),
        "the error must say the CA does not match: {text}"
    );
    coord.assert_nothing_stored(Some(token.id)).await;

    // The secret never reached the coordinator: the genuine token still works.
    let identity = coord
        .enroll(&token.to_string(), "genuine")
        .await
        .expect("the untouched token still enrols");
    let record = coord.token_record(token.id).await.expect("token row");
    assert_eq!(record.used_by_node, Some(identity.node_id));
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_stream_with_anything_but_a_request_is_a_protocol_violation() {
    let coord = Coord::start().await;
    let (text, token) = coord.token().await;
    let heartbeat = frame(&AgentMessage::Heartbeat(Heartbeat {
        seq: 42,
        wall_clock_ms: 1_700_000_000_000,
        gpus_visible: 8,
    }));
    let mut garbage = vec![0, 0, 0, 8];
    garbage.extend_from_slice(b"\xff\xfe\xfd\xfcjunk");
    let oversized = u32::MAX.to_be_bytes().to_vec();
    let cases = [
        ("garbage bytes", garbage),
        ("a heartbeat frame", heartbeat),
        ("an oversized length prefix", oversized),
    ];
    for (what, bytes) in cases {
        let conn = coord
            .connect(ALPN_ENROLL, None)
            .await
            .expect("enrolment handshake needs no certificate");
        let mut stream = RawStream::open(conn).await;
        stream.send_bytes(&bytes).await;
        let _ = stream.tx.finish();
        let reason = stream.closed().await;
        assert_app_close(&reason, close_code::PROTOCOL_VIOLATION);
        eprintln!("{what}: closed with {reason}");
    }
    coord.assert_nothing_stored(Some(token.id)).await;

    // The endpoint still serves well-behaved agents.
    coord
        .enroll(&text, "after-abuse")
        .await
        .expect("enrolment still works");
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrol_request_of_another_major_version_is_refused_naming_both() {
    let coord = Coord::start().await;
    let (text, token) = coord.token().await;
    let key = generate_key().expect("key");
    let request = EnrollRequest {
        protocol: ProtocolVersion { major: 2, minor: 0 },
        token: text,
        csr_der: csr(&key).expect("csr"),
        hostname: "future".into(),
        agent_version: "2.0.0".into(),
    };
    let conn = coord.connect(ALPN_ENROLL, None).await.expect("handshake");
    let mut stream = RawStream::open(conn).await;
    stream.send_bytes(&frame(&request)).await;
    let _ = stream.tx.finish();
    let response = stream
        .recv_as::<EnrollResponse>()
        .await
        .expect("a readable response")
        .expect("a response before the stream ends");
    match response {
        EnrollResponse::Refused(refusal) => {
            assert_eq!(refusal.code, RefusalCode::VersionMismatch, "{refusal:?}");
            assert!(
                refusal.message.contains("1.0") && refusal.message.contains("2.0"),
                "the message names both versions: {}",
                refusal.message
            );
        }
        other @ EnrollResponse::Enrolled { .. } => panic!("must be refused: {other:?}"),
    }
    stream.conn.close(close_code::DONE.into(), b"done");
    coord.assert_nothing_stored(Some(token.id)).await;
    coord.shutdown().await;
}

/// A frame whose payload starts like a v2 message (`prefix`, then version 2.0) and continues in
/// a layout this build cannot decode.
pub(crate) fn future_layout_frame(prefix: &[u8]) -> Vec<u8> {
    let mut payload = prefix.to_vec();
    payload.extend_from_slice(&[2, 0]); // ProtocolVersion { major: 2, minor: 0 } as varints
    payload.extend_from_slice(&[0xff; 12]);
    let mut out = u32::try_from(payload.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrol_request_in_a_future_layout_is_refused_naming_both() {
    let coord = Coord::start().await;
    let (_, token) = coord.token().await;
    let conn = coord.connect(ALPN_ENROLL, None).await.expect("handshake");
    let mut stream = RawStream::open(conn).await;
    stream.send_bytes(&future_layout_frame(&[])).await;
    let _ = stream.tx.finish();
    let response = stream
        .recv_as::<EnrollResponse>()
        .await
        .expect("a readable response")
        .expect("a response before the stream ends");
    match response {
        EnrollResponse::Refused(refusal) => {
            assert_eq!(refusal.code, RefusalCode::VersionMismatch, "{refusal:?}");
            assert!(refusal.message.contains("1.0") && refusal.message.contains("2.0"));
        }
        other @ EnrollResponse::Enrolled { .. } => panic!("must be refused: {other:?}"),
    }
    stream.conn.close(close_code::DONE.into(), b"done");
    coord.assert_nothing_stored(Some(token.id)).await;
    coord.shutdown().await;
}
