//! Process management for the cluster tests.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Path of a workspace binary in the target directory this test was built into. `cargo test
/// --workspace` does not build other packages' binaries for this package's tests, so the first
/// call builds them with the cargo that runs the tests (same profile, same target directory).
pub(crate) fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(build_binaries);
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing after building",
        path.display()
    );
    path
}

fn build_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory")
        .to_owned();
    let target_dir = profile_dir.parent().expect("target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args([
            "build",
            "--bins",
            "-p",
            "gpuaas-coordinator",
            "-p",
            "gpuaas-agent",
            "-p",
            "gpuaas-ctl",
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build for the binaries");
    assert!(
        status.success(),
        "cargo build of the binaries failed: {status}"
    );
    profile_dir
}

/// Polls `check` every 100 ms until it is true, failing the test after `limit`.
pub(crate) async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> u16 {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    let port = sock.local_addr().expect("addr").port();
    drop(tcp);
    port
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind tcp")
        .local_addr()
        .expect("addr")
        .port()
}

/// An agent config for a simulated host with two H100s.
pub(crate) fn agent_config(state_dir: &Path, coordinator: &str) -> String {
    format!(
        "state_dir = {:?}\ncoordinator = {coordinator:?}\nbackend = \"sim\"\nsim_gpus = \"2xH100-80GB\"\n\
         keep_alive_secs = 1\nidle_timeout_secs = 6\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\n",
        state_dir.display().to_string()
    )
}

/// Admin API client.
pub(crate) struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// `GET /v1/nodes` → the node array.
    pub(crate) async fn nodes(&self) -> Vec<serde_json::Value> {
        let body: serde_json::Value = self
            .client
            .get(format!("{}/v1/nodes", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET /v1/nodes")
            .json()
            .await
            .expect("json");
        body["nodes"].as_array().cloned().unwrap_or_default()
    }

    /// `GET /v1/nodes/{id}`.
    pub(crate) async fn node(&self, id: &str) -> serde_json::Value {
        self.client
            .get(format!("{}/v1/nodes/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET node")
            .json()
            .await
            .expect("json")
    }

    /// `POST /v1/enrollment-tokens` → the token string.
    pub(crate) async fn token(&self) -> String {
        let body: serde_json::Value = self
            .client
            .post(format!("{}/v1/enrollment-tokens", self.base))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"ttl_seconds": 600, "description": "test"}))
            .send()
            .await
            .expect("POST token")
            .json()
            .await
            .expect("json");
        body["token"].as_str().expect("token string").to_owned()
    }
}

/// A coordinator process and agent processes, all killed on drop.
pub(crate) struct Cluster {
    dir: tempfile::TempDir,
    node_port: u16,
    api_port: u16,
    coordinator: Child,
    agents: Vec<Option<Child>>,
}

impl Cluster {
    fn config_path(&self) -> PathBuf {
        self.dir.path().join("coordinator.toml")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("coordinator")
    }

    /// Starts `gpuaas-coordinator serve` and waits until its API answers.
    pub(crate) async fn start() -> Cluster {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let node_port = free_port();
        let api_port = free_tcp_port();
        let config = format!(
            "state_dir = {:?}\nnode_listen = \"127.0.0.1:{node_port}\"\napi_listen = \"127.0.0.1:{api_port}\"\n\
             heartbeat_interval_secs = 1\nnode_timeout_secs = 3\nidle_timeout_secs = 6\n",
            dir.path().join("coordinator").display().to_string()
        );
        std::fs::write(dir.path().join("coordinator.toml"), config).expect("write config");
        let mut cluster = Cluster {
            coordinator: spawn_coordinator(&dir.path().join("coordinator.toml")),
            dir,
            node_port,
            api_port,
            agents: Vec::new(),
        };
        cluster.wait_for_api().await;
        cluster
    }

    async fn wait_for_api(&mut self) {
        let token_file = self.state_dir().join("admin-token");
        wait_for("coordinator API up", Duration::from_secs(30), || {
            let token_file = token_file.clone();
            let port = self.api_port;
            async move {
                token_file.exists()
                    && tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
            }
        })
        .await;
    }

    /// An API client with the bootstrap admin token and the cluster CA.
    pub(crate) fn api(&self) -> Api {
        let ca = std::fs::read(self.state_dir().join("ca.crt")).expect("ca.crt");
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca pem"))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let token = std::fs::read_to_string(self.state_dir().join("admin-token")).expect("token");
        Api {
            client,
            base: format!("https://127.0.0.1:{}", self.api_port),
            token: token.trim().to_owned(),
        }
    }

    /// Enrols agent `i` with `gpuaas-agent enroll`, starts `gpuaas-agent run`, returns its id.
    pub(crate) async fn enrol_and_run_agent(&mut self, i: usize) -> String {
        let token = self.api().token().await;
        let state = self.dir.path().join(format!("agent-{i}"));
        let config = self.dir.path().join(format!("agent-{i}.toml"));
        let coordinator = format!("127.0.0.1:{}", self.node_port);
        std::fs::write(&config, agent_config(&state, &coordinator)).expect("write agent config");
        let out = Command::new(bin("gpuaas-agent"))
            .arg("enroll")
            .args(["--coordinator", &coordinator, "--config"])
            .arg(&config)
            .env("GPUAAS_ENROLL_TOKEN", &token)
            .output()
            .await
            .expect("run gpuaas-agent enroll");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "enroll failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = stdout
            .split_whitespace()
            .find(|w| w.starts_with("node-"))
            .expect("node id in enroll output")
            .to_owned();
        self.run_agent(i);
        id
    }

    /// Runs `gpuaas-agent enroll` again for the enrolled agent `i` with a fresh token; returns
    /// its exit status and stderr.
    pub(crate) async fn enrol_again(&self, i: usize) -> (bool, String) {
        let token = self.api().token().await;
        let config = self.dir.path().join(format!("agent-{i}.toml"));
        let out = Command::new(bin("gpuaas-agent"))
            .arg("enroll")
            .args([
                "--coordinator",
                &format!("127.0.0.1:{}", self.node_port),
                "--config",
            ])
            .arg(&config)
            .env("GPUAAS_ENROLL_TOKEN", &token)
            .output()
            .await
            .expect("run gpuaas-agent enroll");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts (or starts again) `gpuaas-agent run` for the enrolled agent `i`.
    pub(crate) fn run_agent(&mut self, i: usize) {
        let config = self.dir.path().join(format!("agent-{i}.toml"));
        let child = Command::new(bin("gpuaas-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn gpuaas-agent run");
        if self.agents.len() <= i {
            self.agents.resize_with(i + 1, || None);
        }
        self.agents[i] = Some(child);
    }

    /// SIGKILLs agent `i`.
    pub(crate) fn kill_agent(&mut self, i: usize) {
        if let Some(mut child) = self.agents[i].take() {
            child.start_kill().expect("kill agent");
        }
    }

    /// Whether agent `i` exits by itself within `limit`.
    pub(crate) async fn agent_exits_within(&mut self, i: usize, limit: Duration) -> bool {
        let Some(child) = self.agents[i].as_mut() else {
            return true;
        };
        tokio::time::timeout(limit, child.wait()).await.is_ok()
    }

    /// Kills the coordinator and starts it again on the same state and ports.
    pub(crate) async fn restart_coordinator(&mut self) {
        self.coordinator.start_kill().expect("kill coordinator");
        let _ = self.coordinator.wait().await;
        self.coordinator = spawn_coordinator(&self.config_path());
        self.wait_for_api().await;
    }

    fn ctl_command(&self, args: &[&str]) -> Command {
        let token = std::fs::read_to_string(self.state_dir().join("admin-token")).expect("token");
        let mut cmd = Command::new(bin("gpuaasctl"));
        cmd.env(
            "GPUAAS_ENDPOINT",
            format!("https://127.0.0.1:{}", self.api_port),
        )
        .env("GPUAAS_TOKEN", token.trim())
        .env("GPUAAS_CA_CERT", self.state_dir().join("ca.crt"))
        .env_remove("GPUAAS_CONFIG")
        .args(args);
        cmd
    }

    /// Runs gpuaasctl, expecting success; returns stdout.
    pub(crate) async fn ctl(&self, args: &[&str]) -> String {
        let out = self
            .ctl_command(args)
            .output()
            .await
            .expect("run gpuaasctl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "gpuaasctl {args:?} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs gpuaasctl, expecting failure; returns stderr.
    pub(crate) async fn ctl_fails(&self, args: &[&str]) -> String {
        let out = self
            .ctl_command(args)
            .output()
            .await
            .expect("run gpuaasctl");
        assert!(!out.status.success(), "gpuaasctl {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn spawn_coordinator(config: &Path) -> Child {
    Command::new(bin("gpuaas-coordinator"))
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gpuaas-coordinator serve")
}

/// Runs `gpuaas-coordinator dev --nodes n`, checks the printed endpoint shows n Ready nodes,
/// then stops it with SIGINT and expects a clean exit.
pub(crate) async fn dev_mode_round_trip(n: usize) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(bin("gpuaas-coordinator"))
        .args(["dev", "--nodes", &n.to_string(), "--gpus", "4xA100-80GB"])
        .args([
            "--node-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--heartbeat-secs",
            "1",
        ])
        .arg("--state-dir")
        .arg(state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dev");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut endpoint = None;
    let mut token = None;
    let mut ca = None;
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["admin", "API", url] => endpoint = Some((*url).to_owned()),
                ["admin", "token", t] => token = Some((*t).to_owned()),
                ["cluster", "CA", path] => ca = Some(PathBuf::from(path)),
                _ if line.starts_with("Press Ctrl-C") => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("dev mode printed its banner");
    let (endpoint, token, ca) = (
        endpoint.expect("endpoint line"),
        token.expect("token line"),
        ca.expect("CA line"),
    );
    let ca = std::fs::read(ca).expect("read CA");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
        .build()
        .expect("client");
    let body: serde_json::Value = client
        .get(format!("{endpoint}/v1/nodes"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET nodes")
        .json()
        .await
        .expect("json");
    let nodes = body["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), n, "{body}");
    assert!(nodes.iter().all(|n| n["status"] == "ready"), "{body}");
    assert_eq!(
        nodes[0]["inventory"]["gpus"].as_array().map(Vec::len),
        Some(4)
    );

    let pid = i32::try_from(child.id().expect("pid")).expect("pid fits");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("send SIGINT");
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("dev mode exits after Ctrl-C")
        .expect("wait");
    assert!(exit.success(), "dev exited with {exit}");
}
