//! mTLS on `gpuaas/1`: no certificate, a foreign CA, a deleted node, a certificate that claims
//! another node, and certificate renewal.

use std::time::{Duration, SystemTime};

use gpuaas_agent::identity::{cert_facts, csr};
use gpuaas_agent::session::SessionError;
use gpuaas_coordinator::fleet::registry::NodeStatus;
use gpuaas_proto::NodeId;
use gpuaas_proto::messages::{
    ALPN_CONTROL, AgentMessage, CoordinatorMessage, RefusalCode, close_code,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use reqwest::{Method, StatusCode};
use rustls::AlertDescription;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::support::{
    Coord, assert_app_close, assert_tls_alert, auth_of, frame, hello, now_ms, refused_handshake,
    wait_for, within,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_connection_without_certificate_is_closed_certificate_required() {
    let coord = Coord::start().await;
    // The TLS layer lets certificate-less peers in (for enrolment); the control protocol then
    // closes at once, possibly before the client could even open a stream, so a Hello is only
    // tried.
    let reason = match coord.connect(ALPN_CONTROL, None).await {
        Err(e) => e,
        Ok(conn) => {
            let attempt = async {
                let (mut tx, _rx) = conn.open_bi().await?;
                tx.write_all(&frame(&AgentMessage::Hello(hello(NodeId::from_raw(1)))))
                    .await?;
                Ok::<_, anyhow::Error>(())
            };
            let _ = within("the Hello attempt", attempt).await;
            within("the connection to close", conn.closed()).await
        }
    };
    assert_app_close(&reason, close_code::CERTIFICATE_REQUIRED);
    assert!(coord.nodes().await.is_empty());
    assert_eq!(coord.status(NodeId::from_raw(1)), NodeStatus::NotReady);
    coord.shutdown().await;
}

/// A CA of nobody's cluster and a client certificate from it for `cn`.
fn foreign_client_cert(cn: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "evil CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name.push(DnType::CommonName, cn);
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).expect("leaf signed");
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_ca_fails_the_handshake() {
    let coord = Coord::start().await;
    // Make the claimed node real, so only the CA check can refuse it.
    let real = coord.enroll_new("real").await;
    let cn = real.node_id.to_string();
    let auth = foreign_client_cert(&cn);

    let reason = refused_handshake(&coord, auth, real.node_id).await;
    assert_tls_alert(&reason, AlertDescription::UnknownCA);
    assert_eq!(coord.status(real.node_id), NodeStatus::NotReady);
    let record = coord.node(real.node_id).await.expect("node row");
    assert_eq!(record.last_seen_at_ms, None, "no Hello was recorded");

    // The fixed id of the brief, which is not enrolled at all.
    let reason = refused_handshake(
        &coord,
        foreign_client_cert("node-0000000000000001"),
        NodeId::from_raw(1),
    )
    .await;
    assert_tls_alert(&reason, AlertDescription::UnknownCA);
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_node_is_disconnected_and_refused_at_the_handshake() {
    let coord = Coord::start().await;
    let identity = coord.enroll_new("doomed").await;
    let node = identity.node_id;
    let auth = auth_of(&identity);
    let agent = coord.spawn_agent(identity, None);
    coord.wait_status(node, NodeStatus::Ready).await;

    let admin = coord.admin_token();
    let (status, body) = coord
        .api(
            Method::DELETE,
            &format!("/v1/nodes/{node}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    // The live agent learns it was revoked and stops for good.
    let stopped = within("the agent of the deleted node to stop", agent)
        .await
        .expect("agent task");
    assert!(
        matches!(stopped, SessionError::Revoked(_)),
        "the agent must stop as revoked, got: {stopped:?}"
    );
    assert_eq!(coord.status(node), NodeStatus::NotReady);

    // Its certificate no longer opens a session.
    let reason = refused_handshake(&coord, auth, node).await;
    assert_tls_alert(&reason, AlertDescription::CertificateRevoked);

    // And the API no longer shows it.
    let (status, body) = coord
        .api(
            Method::GET,
            &format!("/v1/nodes/{node}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(coord.nodes().await.is_empty());
    let record = coord
        .node(node)
        .await
        .expect("the row stays for revocation");
    assert!(record.deleted_at_ms.is_some());
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_of_a_node_deleted_while_offline_stops_as_revoked() {
    let coord = Coord::start().await;
    let identity = coord.enroll_new("offline").await;
    let node = identity.node_id;
    let admin = coord.admin_token();
    let (status, body) = coord
        .api(
            Method::DELETE,
            &format!("/v1/nodes/{node}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    // The node comes back online after its deletion: the handshake is refused with
    // certificate_revoked, and the agent must recognise that as final.
    let agent = coord.spawn_agent(identity, None);
    let stopped = tokio::time::timeout(Duration::from_secs(20), agent).await;
    match stopped {
        Ok(Ok(SessionError::Revoked(_))) => {}
        Ok(other) => panic!("the agent must stop as revoked, got: {other:?}"),
        Err(_) => panic!(
            "the agent of a deleted node kept reconnecting for 20 s instead of stopping \
             with SessionError::Revoked"
        ),
    }
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_claiming_another_node_is_refused_identity_mismatch() {
    let coord = Coord::start().await;
    let x = coord.enroll_new("node-x").await;
    let y = coord.enroll_new("node-y").await;

    let mut stream = coord.raw_session(auth_of(&x)).await;
    stream.send(&AgentMessage::Hello(hello(y.node_id))).await;
    let answer = stream.recv().await;
    match &answer.message {
        CoordinatorMessage::Refused(refusal) => {
            assert_eq!(refusal.code, RefusalCode::IdentityMismatch, "{refusal:?}");
        }
        other => panic!("expected an IdentityMismatch refusal, got {other:?}"),
    }
    assert_eq!(answer.term, coord.fleet().settings.term);
    let reason = stream.closed().await;
    assert_app_close(&reason, close_code::REFUSED);

    for node in [x.node_id, y.node_id] {
        assert_eq!(coord.status(node), NodeStatus::NotReady, "{node}");
        let record = coord.node(node).await.expect("node row");
        assert_eq!(record.last_seen_at_ms, None, "{node}: no Hello recorded");
        assert_eq!(record.inventory, None, "{node}: no inventory recorded");
    }
    // ... and logged as a security event naming both identities.
    let logs = crate::support::captured_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("security_event=\"identity_mismatch\"")
                && l.contains(&x.node_id.to_string())
                && l.contains(&y.node_id.to_string())),
        "no identity_mismatch security event for {} claiming {} in:\n{}",
        x.node_id,
        y.node_id,
        &logs[logs.len().saturating_sub(3000)..]
    );
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_renews_its_certificate_at_two_thirds_of_its_life() {
    let coord = Coord::start().await;
    let mut identity = coord.enroll_new("renewer").await;
    let node = identity.node_id;
    let enrolled = coord.node(node).await.expect("node row");

    // A certificate two thirds through its life (issued 3000 s ago for 3600 s).
    let request = csr(&identity.key).expect("csr");
    let aged = coord
        .fleet()
        .ca
        .issue_node(
            &request,
            node,
            SystemTime::now() - Duration::from_secs(3000),
            Duration::from_secs(3600),
        )
        .expect("aged certificate");
    identity.cert = aged.der.clone();
    let state_dir = coord.dir.path().join("agent");
    identity.save(&state_dir).expect("identity saved");
    let cert_path = state_dir.join("node.crt");
    let before = std::fs::read(&cert_path).expect("node.crt");
    let key = identity.private_key();

    let agent = coord.spawn_agent(identity, Some(state_dir.clone()));
    wait_for("the agent to save a renewed node.crt", || async {
        std::fs::read(&cert_path).is_ok_and(|now| now != before)
    })
    .await;
    assert!(!agent.is_finished(), "the agent keeps running");

    let renewed = CertificateDer::from_pem_file(&cert_path).expect("renewed node.crt is PEM");
    let (_, not_after_ms, cn) = cert_facts(&renewed).expect("renewed certificate parses");
    assert_eq!(
        cn,
        node.to_string(),
        "the renewed certificate names the node"
    );
    let ttl_ms = i64::try_from(coord.fleet().settings.node_cert_ttl.as_millis()).expect("ttl");
    let expected = now_ms() + ttl_ms;
    assert!(
        (expected - 60_000..=expected + 1000).contains(&not_after_ms),
        "notAfter {not_after_ms} should be about now + node_cert_ttl ({expected})"
    );
    let (_, parsed) = x509_parser::parse_x509_certificate(&renewed).expect("x509");
    let serial = parsed.raw_serial().to_vec();

    let record = coord.node(node).await.expect("node row");
    assert_eq!(
        record.cert_serial, serial,
        "the store records the renewed serial"
    );
    assert_ne!(record.cert_serial, enrolled.cert_serial);
    assert!(
        (record.cert_not_after_ms - not_after_ms).abs() < 1000,
        "store notAfter {} matches the certificate's {not_after_ms}",
        record.cert_not_after_ms
    );

    // The renewed certificate opens a session.
    let mut stream = coord.raw_session((renewed, key)).await;
    stream.send(&AgentMessage::Hello(hello(node))).await;
    let answer = stream.recv().await;
    assert!(
        matches!(answer.message, CoordinatorMessage::Welcome(_)),
        "{answer:?}"
    );
    stream.conn.close(close_code::DONE.into(), b"done");
    agent.abort();
    coord.shutdown().await;
}
