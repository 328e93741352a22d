//! The harness: a real coordinator in-process on loopback, real agents, and raw QUIC clients
//! for protocol abuse.
//!
//! Every test starts its own [`Coord`] in its own temporary directory. Waiting is always a poll
//! with a generous bound ([`BOUND`]), never a fixed long sleep.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gpuaas_agent::config::SessionSettings;
use gpuaas_agent::enroll::{EnrollError, enroll};
use gpuaas_agent::identity::Identity;
use gpuaas_agent::net::client_endpoint;
use gpuaas_agent::session::{NodeAgent, SessionError};
use gpuaas_coordinator::config::Config;
use gpuaas_coordinator::fleet::FleetContext;
use gpuaas_coordinator::fleet::registry::NodeStatus;
use gpuaas_coordinator::server::{Running, start};
use gpuaas_coordinator::store::{NodeRecord, ReadQuery, StoreError, TokenRecord, read};
use gpuaas_isolation::host::HostFacts;
use gpuaas_isolation::sim::{SimBackend, SimSpec};
use gpuaas_proto::codec::{Decoded, FrameDecoder};
use gpuaas_proto::inventory::Inventory;
use gpuaas_proto::messages::{AgentMessage, CoordinatorFrame, Hello};
use gpuaas_proto::token::EnrollmentToken;
use gpuaas_proto::{NodeId, PROTOCOL_VERSION, TokenId, encode_frame};
use quinn::{ConnectionError, VarInt};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// The longest any test waits for one thing to happen.
pub(crate) const BOUND: Duration = Duration::from_secs(20);

/// Installs the process-wide rustls crypto provider (ring) and the log capture, once.
pub(crate) fn init_crypto() {
    // Err only means another test installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = captured_logs();
}

/// Everything logged in this test binary so far (the coordinator runs in-process), as text.
/// Tests look for the events they provoked, which carry ids no other test uses.
pub(crate) fn captured_logs() -> String {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    let logs = LOGS.get_or_init(|| {
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("info,quinn=warn,quinn_proto=warn,rustls=warn")
            .with_writer(move || LogSink(sink.clone()))
            .try_init();
        logs
    });
    String::from_utf8_lossy(&logs.lock().expect("log buffer")).into_owned()
}

struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(d.as_millis()).expect("time fits i64")
}

/// Awaits `fut` for at most [`BOUND`]; panics naming `what` if it takes longer.
pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {BOUND:?} waiting for {what}"),
    }
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after [`BOUND`].
pub(crate) async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {BOUND:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fast session timing for agents under test.
pub(crate) fn session_settings() -> SessionSettings {
    SessionSettings {
        keep_alive: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(6),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
    }
}

/// A client certificate and its key.
pub(crate) type ClientAuth = (CertificateDer<'static>, PrivateKeyDer<'static>);

/// The client certificate of an enrolled identity.
pub(crate) fn auth_of(identity: &Identity) -> ClientAuth {
    (identity.cert.clone(), identity.private_key())
}

/// A running coordinator with its own state directory.
pub(crate) struct Coord {
    pub(crate) running: Running,
    /// Client endpoint for raw connections.
    client: quinn::Endpoint,
    /// Scratch space of the test (agent state directories); dropped last.
    pub(crate) dir: TempDir,
}

impl Coord {
    /// Starts a coordinator on loopback with short timings.
    pub(crate) async fn start() -> Coord {
        init_crypto();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            state_dir: dir.path().join("coordinator"),
            node_listen: "127.0.0.1:0".parse().expect("addr"),
            api_listen: "127.0.0.1:0".parse().expect("addr"),
            heartbeat_interval_secs: 1,
            node_timeout_secs: 3,
            idle_timeout_secs: 6,
            ..Config::default()
        };
        let running = start(&config).await.expect("coordinator starts");
        let client = client_endpoint(running.node_addr, None).expect("client endpoint");
        Coord {
            running,
            client,
            dir,
        }
    }

    /// Stops the coordinator.
    pub(crate) async fn shutdown(self) {
        let Coord {
            running,
            client,
            dir,
        } = self;
        client.close(0u32.into(), b"test done");
        running.shutdown().await;
        drop(dir);
    }

    pub(crate) fn fleet(&self) -> &Arc<FleetContext> {
        &self.running.fleet
    }

    /// `127.0.0.1:<port>` of the node endpoint (the server certificate names 127.0.0.1).
    pub(crate) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.running.node_addr.port())
    }

    /// A fresh enrolment token (ten minutes): its string and its parsed form.
    pub(crate) async fn token(&self) -> (String, EnrollmentToken) {
        let created = gpuaas_coordinator::api::tokens::issue(
            self.fleet(),
            Duration::from_secs(600),
            "e2e".into(),
        )
        .await
        .expect("token issued");
        let parsed = created.token.parse().expect("issued token parses");
        (created.token, parsed)
    }

    /// Enrols with `token` from a fresh client endpoint, like a new host.
    pub(crate) async fn enroll(
        &self,
        token: &str,
        hostname: &str,
    ) -> Result<Identity, EnrollError> {
        let endpoint = client_endpoint(self.running.node_addr, None).expect("client endpoint");
        within(
            "enrolment",
            enroll(&endpoint, &self.address(), token, hostname),
        )
        .await
    }

    /// Enrols a new node with a fresh token; panics on failure.
    pub(crate) async fn enroll_new(&self, hostname: &str) -> Identity {
        let (token, _) = self.token().await;
        self.enroll(&token, hostname)
            .await
            .unwrap_or_else(|e| panic!("enrolment of {hostname} failed: {e}"))
    }

    /// Every node not deleted.
    pub(crate) async fn nodes(&self) -> Vec<NodeRecord> {
        self.fleet()
            .store
            .read(read::list_nodes)
            .await
            .expect("list nodes")
    }

    /// One node, deleted or not.
    pub(crate) async fn node(&self, id: NodeId) -> Option<NodeRecord> {
        self.fleet()
            .store
            .read(move |c| read::get_node(c, id))
            .await
            .expect("get node")
    }

    /// One enrolment token.
    pub(crate) async fn token_record(&self, id: TokenId) -> Option<TokenRecord> {
        self.fleet()
            .store
            .read(move |c| read::get_token(c, id))
            .await
            .expect("get token")
    }

    /// Rows in the enrolment token table.
    pub(crate) async fn token_rows(&self) -> i64 {
        self.fleet()
            .store
            .read(|c| {
                c.query_row("SELECT COUNT(*) FROM enrollment_tokens", [], |row| {
                    row.get::<_, i64>(0)
                })
                .map_err(|source| StoreError::Read {
                    query: ReadQuery::ListNodes,
                    source,
                })
            })
            .await
            .expect("count tokens")
    }

    /// Asserts that the store holds no node at all and that `token` (if any) is still unused.
    pub(crate) async fn assert_nothing_stored(&self, token: Option<TokenId>) {
        let nodes = self.nodes().await;
        assert!(nodes.is_empty(), "no node may be stored, found {nodes:?}");
        if let Some(id) = token {
            let record = self
                .token_record(id)
                .await
                .unwrap_or_else(|| panic!("token {id} must still exist"));
            assert_eq!(
                record.used_at_ms, None,
                "token {id} must be unused: {record:?}"
            );
            assert_eq!(
                record.used_by_node, None,
                "token {id} must be unused: {record:?}"
            );
        }
    }

    /// The live status of `node`.
    pub(crate) fn status(&self, node: NodeId) -> NodeStatus {
        self.fleet().registry.view(node, now_ms()).status
    }

    /// Waits until `node` is Ready.
    pub(crate) async fn wait_status(&self, node: NodeId, status: NodeStatus) {
        wait_for(&format!("{node} to be {status:?}"), || async {
            self.status(node) == status
        })
        .await;
    }

    /// Runs a real agent (simulated GPUs) for `identity`; the task ends with the error that
    /// stopped it (only a revocation stops it).
    pub(crate) fn spawn_agent(
        &self,
        identity: Identity,
        state_dir: Option<PathBuf>,
    ) -> JoinHandle<SessionError> {
        let endpoint = client_endpoint(self.running.node_addr, None).expect("client endpoint");
        let spec = SimSpec::parse("2xH100-80GB").expect("sim spec");
        let host = HostFacts {
            hostname: "e2e-host".into(),
            cpu_cores: 16,
            memory_mib: 64 * 1024,
        };
        let agent = NodeAgent::new(
            identity,
            state_dir,
            self.address(),
            Box::new(SimBackend::new(&spec, 1)),
            host,
            session_settings(),
            endpoint,
        );
        tokio::spawn(agent.run())
    }

    /// Connects a raw QUIC client with `alpn` and an optional client certificate, trusting the
    /// cluster CA, server name `localhost`.
    pub(crate) async fn connect(
        &self,
        alpn: &[u8],
        auth: Option<ClientAuth>,
    ) -> Result<quinn::Connection, ConnectionError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.fleet().ca.cert_der().clone())
            .expect("CA is a valid root");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
        let mut tls = match auth {
            Some((cert, key)) => builder
                .with_client_auth_cert(vec![cert], key)
                .expect("client certificate accepted by rustls"),
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![alpn.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC client config");
        let config = quinn::ClientConfig::new(Arc::new(crypto));
        let connecting = self
            .client
            .connect_with(config, self.running.node_addr, "localhost")
            .expect("connect starts");
        within("QUIC handshake", connecting).await
    }

    /// A raw control session: connected with `auth` and the control stream open.
    pub(crate) async fn raw_session(&self, auth: ClientAuth) -> RawStream {
        let conn = self
            .connect(gpuaas_proto::messages::ALPN_CONTROL, Some(auth))
            .await
            .expect("control handshake succeeds");
        RawStream::open(conn).await
    }

    /// The bootstrap admin token.
    pub(crate) fn admin_token(&self) -> String {
        std::fs::read_to_string(self.running.admin_token_path())
            .expect("admin token file")
            .trim()
            .to_owned()
    }

    /// An HTTPS client trusting only the cluster CA.
    pub(crate) fn http(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_der(self.fleet().ca.cert_der().as_ref())
            .expect("CA certificate");
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(BOUND)
            .build()
            .expect("HTTP client")
    }

    /// `https://127.0.0.1:<port><path>` of the admin API.
    pub(crate) fn api_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.running.api_addr.port())
    }

    /// Sends one admin API request; returns the status and the JSON body (`Null` if empty).
    pub(crate) async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut request = self.http().request(method.clone(), self.api_url(path));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let text = response.text().await.expect("response body");
        let json = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {text}"))
        };
        (status, json)
    }
}

/// A Hello for `node` at the current protocol version.
pub(crate) fn hello(node: NodeId) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        node_id: node,
        agent_version: "e2e-raw".into(),
        inventory: Inventory {
            hostname: "raw-client".into(),
            cpu_cores: 4,
            memory_mib: 4096,
            gpus: vec![],
        },
        wall_clock_ms: now_ms(),
    }
}

/// One frame holding `message`.
pub(crate) fn frame<T: Serialize>(message: &T) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_frame(message, &mut buf).expect("message encodes");
    buf
}

/// A connection with one bidirectional stream opened by the client.
pub(crate) struct RawStream {
    pub(crate) conn: quinn::Connection,
    pub(crate) tx: quinn::SendStream,
    pub(crate) rx: quinn::RecvStream,
    buf: Vec<u8>,
}

impl RawStream {
    /// Opens the stream on `conn`.
    pub(crate) async fn open(conn: quinn::Connection) -> RawStream {
        let (tx, rx) = within("open_bi", conn.open_bi())
            .await
            .expect("stream opens");
        RawStream {
            conn,
            tx,
            rx,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes on the stream.
    pub(crate) async fn send_bytes(&mut self, bytes: &[u8]) {
        within("stream write", self.tx.write_all(bytes))
            .await
            .expect("stream write");
    }

    /// Writes one agent message.
    pub(crate) async fn send(&mut self, message: &AgentMessage) {
        self.send_bytes(&frame(message)).await;
    }

    /// Reads the next frame of type `T`; `Ok(None)` if the stream ended cleanly first.
    pub(crate) async fn recv_as<T: DeserializeOwned>(&mut self) -> anyhow::Result<Option<T>> {
        let decoder = FrameDecoder::default();
        within("a frame", async {
            loop {
                if let Decoded::Frame { message, consumed } = decoder.decode::<T>(&self.buf)? {
                    self.buf.drain(..consumed);
                    return Ok(Some(message));
                }
                let mut chunk = [0u8; 4096];
                match self.rx.read(&mut chunk).await? {
                    Some(n) => self.buf.extend_from_slice(&chunk[..n]),
                    None if self.buf.is_empty() => return Ok(None),
                    None => anyhow::bail!("stream ended inside a frame"),
                }
            }
        })
        .await
    }

    /// Reads the next coordinator frame; panics if there is none.
    pub(crate) async fn recv(&mut self) -> CoordinatorFrame {
        self.recv_as::<CoordinatorFrame>()
            .await
            .expect("a coordinator frame")
            .expect("the coordinator sent a frame before ending the stream")
    }

    /// Waits for the connection to close and returns why.
    pub(crate) async fn closed(&self) -> ConnectionError {
        within("the connection to close", self.conn.closed()).await
    }
}

/// Asserts that `err` is an application close by the coordinator with `code`.
pub(crate) fn assert_app_close(err: &ConnectionError, code: u32) {
    match err {
        ConnectionError::ApplicationClosed(close) if close.error_code == VarInt::from_u32(code) => {
        }
        other => {
            panic!("expected the coordinator to close with application code {code}, got: {other:?}")
        }
    }
}

/// Asserts that `err` is the peer aborting the handshake with the TLS alert `alert`.
pub(crate) fn assert_tls_alert(err: &ConnectionError, alert: rustls::AlertDescription) {
    let expected = quinn::TransportErrorCode::crypto(u8::from(alert));
    match err {
        ConnectionError::ConnectionClosed(close) if close.error_code == expected => {}
        other => panic!("expected the handshake to fail with TLS alert {alert:?}, got: {other:?}"),
    }
}

/// Tries a control session with `auth` that the coordinator must refuse at the TLS handshake:
/// whether the client's side of the handshake finished or not, no Welcome may arrive and the
/// connection must end with a transport (TLS) error. Returns that error.
pub(crate) async fn refused_handshake(
    coord: &Coord,
    auth: ClientAuth,
    claim: NodeId,
) -> ConnectionError {
    let conn = match coord
        .connect(gpuaas_proto::messages::ALPN_CONTROL, Some(auth))
        .await
    {
        Err(e) => return e,
        Ok(conn) => conn,
    };
    // TLS 1.3: the client may finish before the server has verified its certificate.
    let attempt = async {
        let (mut tx, mut rx) = conn.open_bi().await?;
        tx.write_all(&frame(&AgentMessage::Hello(hello(claim))))
            .await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Some(n) = rx.read(&mut chunk).await? {
            buf.extend_from_slice(&chunk[..n]);
            if let Decoded::Frame { message, .. } =
                FrameDecoder::default().decode::<CoordinatorFrame>(&buf)?
            {
                return Ok::<_, anyhow::Error>(Some(message));
            }
        }
        Ok(None)
    };
    if let Ok(Some(frame)) = within("the refused session attempt", attempt).await {
        panic!("a refused certificate got a session: {frame:?}");
    }
    within("the refused connection to close", conn.closed()).await
}
