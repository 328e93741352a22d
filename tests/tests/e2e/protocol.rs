//! The control protocol on `gpuaas/1`: bad frames close only their own connection, and a
//! Hello of another protocol major is refused.

use gpuaas_coordinator::fleet::registry::NodeStatus;
use gpuaas_proto::messages::{AgentMessage, CoordinatorMessage, RefusalCode, close_code};
use gpuaas_proto::{NodeId, PROTOCOL_VERSION, ProtocolVersion};

use crate::support::{Coord, RawStream, assert_app_close, auth_of, hello};

/// Sends Hello for `node` and asserts the Welcome.
async fn welcome(stream: &mut RawStream, node: NodeId) {
    stream.send(&AgentMessage::Hello(hello(node))).await;
    let answer = stream.recv().await;
    match answer.message {
        CoordinatorMessage::Welcome(w) => {
            assert_eq!(w.node_id, node);
            assert_eq!(w.protocol, PROTOCOL_VERSION);
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_own_connection() {
    let coord = Coord::start().await;
    let good = coord.enroll_new("good").await;
    let good_id = good.node_id;
    let bad = coord.enroll_new("bad").await;
    let bad_id = bad.node_id;
    let agent = coord.spawn_agent(good, None);
    coord.wait_status(good_id, NodeStatus::Ready).await;

    let mut garbage = vec![0, 0, 0, 8];
    garbage.extend_from_slice(b"\xff\xfe\xfd\xfcjunk");
    let oversized = u32::MAX.to_be_bytes().to_vec();
    let cases = [
        ("garbage before Hello", false, garbage.clone()),
        ("garbage after Welcome", true, garbage),
        (
            "u32::MAX length prefix after Welcome",
            true,
            oversized.clone(),
        ),
        ("u32::MAX length prefix before Hello", false, oversized),
    ];
    for (what, after_welcome, bytes) in cases {
        let mut stream = coord.raw_session(auth_of(&bad)).await;
        if after_welcome {
            welcome(&mut stream, bad_id).await;
            assert_eq!(coord.status(bad_id), NodeStatus::Ready, "{what}");
        }
        stream.send_bytes(&bytes).await;
        let reason = stream.closed().await;
        assert_app_close(&reason, close_code::PROTOCOL_VIOLATION);
        eprintln!("{what}: closed with {reason}");
        coord.wait_status(bad_id, NodeStatus::NotReady).await;
        assert_eq!(
            coord.status(good_id),
            NodeStatus::Ready,
            "the well-behaved node stays Ready after {what}"
        );
        assert!(!agent.is_finished(), "the well-behaved agent keeps running");
    }

    // The coordinator still accepts a fresh session of the offender.
    let mut stream = coord.raw_session(auth_of(&bad)).await;
    welcome(&mut stream, bad_id).await;
    assert_eq!(coord.status(bad_id), NodeStatus::Ready);
    assert_eq!(coord.status(good_id), NodeStatus::Ready);
    stream.conn.close(close_code::DONE.into(), b"done");
    agent.abort();
    // Each closed connection was logged with its reason, under the offender's node id.
    let logs = crate::support::captured_logs();
    let logged = logs
        .lines()
        .filter(|l| l.contains(&bad_id.to_string()) && l.contains("bad frame"))
        .count();
    assert!(
        logged >= 2,
        "expected logged bad-frame closes for {bad_id}, found {logged}"
    );
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_of_another_major_version_is_refused_naming_both() {
    let coord = Coord::start().await;
    let identity = coord.enroll_new("future").await;
    let node = identity.node_id;

    let mut stream = coord.raw_session(auth_of(&identity)).await;
    let mut future = hello(node);
    future.protocol = ProtocolVersion { major: 2, minor: 0 };
    stream.send(&AgentMessage::Hello(future)).await;
    let answer = stream.recv().await;
    match &answer.message {
        CoordinatorMessage::Refused(refusal) => {
            assert_eq!(refusal.code, RefusalCode::VersionMismatch, "{refusal:?}");
            assert!(
                refusal.message.contains("1.0") && refusal.message.contains("2.0"),
                "the message names both versions: {}",
                refusal.message
            );
        }
        other => panic!("expected a VersionMismatch refusal, got {other:?}"),
    }
    let reason = stream.closed().await;
    assert_app_close(&reason, close_code::REFUSED);
    assert_eq!(coord.status(node), NodeStatus::NotReady);
    let record = coord.node(node).await.expect("node row");
    assert_eq!(
        record.last_seen_at_ms, None,
        "a refused Hello is not recorded"
    );
    assert_eq!(record.inventory, None);
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_in_a_future_layout_is_refused_naming_both() {
    let coord = Coord::start().await;
    let identity = coord.enroll_new("future-layout").await;
    let node = identity.node_id;
    let mut stream = coord.raw_session(auth_of(&identity)).await;
    // variant 0 (Hello), then version 2.0, then bytes this build cannot decode
    stream
        .send_bytes(&crate::enrolment::future_layout_frame(&[0]))
        .await;
    let answer = stream.recv().await;
    match &answer.message {
        CoordinatorMessage::Refused(refusal) => {
            assert_eq!(refusal.code, RefusalCode::VersionMismatch, "{refusal:?}");
            assert!(refusal.message.contains("1.0") && refusal.message.contains("2.0"));
        }
        other => panic!("expected a VersionMismatch refusal, got {other:?}"),
    }
    assert_app_close(&stream.closed().await, close_code::REFUSED);
    assert_eq!(coord.status(node), NodeStatus::NotReady);
    coord.shutdown().await;
}
