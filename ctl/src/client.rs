//! The coordinator's admin HTTP API: the client and the request and response types.
//!
//! Contract: every request carries `Authorization: Bearer <admin token>`; a non-2xx answer
//! carries `{"error": {"code": "<snake_case>", "message": "<text>"}}`, surfaced as [`ApiError`].
//!
//! | call                          | request                      | success                   |
//! |-------------------------------|------------------------------|---------------------------|
//! | [`AdminClient::create_token`] | `POST /v1/enrollment-tokens` | 201 [`TokenCreated`]      |
//! | [`AdminClient::list_nodes`]   | `GET /v1/nodes`              | 200 [`NodeList`]          |
//! | [`AdminClient::get_node`]     | `GET /v1/nodes/{id}`         | 200 [`Node`]              |
//! | [`AdminClient::delete_node`]  | `DELETE /v1/nodes/{id}`      | 204 (the node is revoked) |
//!
//! # Design
//! Responses are decoded into typed structs that ignore unknown fields, so the server can add
//! fields without breaking this client; the body is kept too, so `-o json` prints exactly what
//! the server sent. Timestamps stay strings: they are only displayed.
//! TLS is rustls; with a CA file the client trusts that CA only (the cluster CA), otherwise the
//! platform's trust store. Redirects are not followed (the API has none, and the token must
//! not travel anywhere else): a 3xx is reported like any other unexpected status. Text from the
//! server that ends up in an error message has its control characters replaced by `?`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gpuaas_proto::NodeId;
use reqwest::{Certificate, Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How long to wait for a TCP + TLS connection.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take in all.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of a non-JSON error body quoted in an error message.
const BODY_EXCERPT_LEN: usize = 200;

/// An error answer of the API, as the server described it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code}, HTTP {status})")]
pub(crate) struct ApiError {
    /// The HTTP status code.
    pub(crate) status: u16,
    /// The machine-readable code (`not_found`, `unauthorized`, ...).
    pub(crate) code: String,
    /// The server's explanation.
    pub(crate) message: String,
}

/// A request that did not produce the expected answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The CA certificate file could not be read.
    #[error("cannot read cluster CA certificate {}", path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA certificate file holds no usable PEM certificate.
    #[error("no PEM certificate in cluster CA file {}", path.display())]
    NoCaCert {
        /// The file.
        path: PathBuf,
        /// The parse error, if there was one rather than no certificate at all.
        source: Option<reqwest::Error>,
    },
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client")]
    Build(#[source] reqwest::Error),
    /// The request could not be sent or its answer not received.
    #[error("{target} failed")]
    Transport {
        /// The request.
        target: Box<Target>,
        /// The transport error (connection, TLS, timeout).
        source: reqwest::Error,
    },
    /// The server answered with an error in the API's error format.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The server answered with an error status and a body that is not the API's error format
    /// (a proxy, or not the coordinator at all).
    #[error("{target} answered HTTP {status}: {excerpt}")]
    Status {
        /// The request.
        target: Box<Target>,
        /// The status.
        status: StatusCode,
        /// The start of the body, as text.
        excerpt: String,
    },
    /// The server answered 2xx with a body that does not match the contract.
    #[error("unexpected answer to {target} (HTTP {status})")]
    Body {
        /// The request.
        target: Box<Target>,
        /// The status.
        status: StatusCode,
        /// Why the body does not parse.
        source: serde_json::Error,
    },
}

/// A request as error messages name it: `GET https://coordinator:8443/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The method.
    pub(crate) method: Method,
    /// The URL.
    pub(crate) url: Url,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.url)
    }
}

/// Body of `POST /v1/enrollment-tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct CreateToken {
    /// Lifetime in seconds; the server's default (one hour) when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ttl_seconds: Option<u64>,
    /// Free text for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<String>,
}

/// A newly created enrolment token. The token string is shown only this once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct TokenCreated {
    /// `tok-<16 hex>`.
    pub(crate) id: String,
    /// The whole token string (`gpuaas1.…`), secret included.
    pub(crate) token: String,
    /// RFC 3339.
    pub(crate) expires_at: String,
    /// Free text, when one was given.
    #[serde(default)]
    pub(crate) description: Option<String>,
}

/// Answer of `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct NodeList {
    /// The enrolled nodes.
    pub(crate) nodes: Vec<Node>,
}

/// An enrolled node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Node {
    /// `node-<16 hex>`.
    pub(crate) id: String,
    /// Host name reported at enrolment.
    pub(crate) hostname: String,
    /// `ready` or `not_ready` (shown as sent, so new states display too).
    pub(crate) status: String,
    /// The agent's version string.
    pub(crate) agent_version: String,
    /// RFC 3339.
    pub(crate) enrolled_at: String,
    /// RFC 3339; `None` if the node never connected after enrolling.
    #[serde(default)]
    pub(crate) last_seen_at: Option<String>,
    /// The node's clock minus the coordinator's, in milliseconds, when known.
    #[serde(default)]
    pub(crate) clock_skew_ms: Option<i64>,
    /// RFC 3339 expiry of the node certificate.
    pub(crate) cert_not_after: String,
    /// Hardware, as last reported; `None` if the server has none yet.
    #[serde(default)]
    pub(crate) inventory: Option<Inventory>,
}

/// What a node reported about its hardware.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Inventory {
    /// The host's name as the agent sees it.
    pub(crate) hostname: String,
    /// Online CPUs.
    pub(crate) cpu_cores: u32,
    /// Physical memory in MiB.
    pub(crate) memory_mib: u64,
    /// The GPUs, in NVML index order.
    #[serde(default)]
    pub(crate) gpus: Vec<Gpu>,
}

/// One physical GPU.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Gpu {
    /// NVML index.
    pub(crate) index: u32,
    /// `GPU-…` UUID.
    pub(crate) uuid: String,
    /// Canonical model (`H100-80GB`).
    pub(crate) model: String,
    /// The name NVML reports.
    pub(crate) nvml_name: String,
    /// Memory in MiB.
    pub(crate) memory_mib: u64,
    /// PCI bus id.
    pub(crate) pci_bus_id: String,
    /// Device minor (`/dev/nvidiaN`).
    pub(crate) minor: u32,
    /// NUMA node, when known.
    #[serde(default)]
    pub(crate) numa_node: Option<u32>,
    /// MIG mode.
    pub(crate) mig: Mig,
}

/// MIG mode of a GPU: `Unsupported`, `Disabled` or `Enabled` (shown as sent).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Mig {
    /// The mode in force.
    pub(crate) current: String,
    /// The mode after the next GPU reset.
    pub(crate) pending: String,
}

/// A decoded answer together with the body it came from (for `-o json`).
#[derive(Debug, Clone)]
pub(crate) struct Fetched<T> {
    /// The body exactly as the server sent it (valid JSON).
    pub(crate) raw: Vec<u8>,
    /// The body as the contract's type.
    pub(crate) value: T,
}

/// Client of the admin API.
#[derive(Debug, Clone)]
pub(crate) struct AdminClient {
    http: reqwest::Client,
    endpoint: Url,
    token: String,
}

impl AdminClient {
    /// A client for the API at `endpoint` (an https base URL), authenticating with `token`, and
    /// trusting only the CA in the PEM file `ca_cert` when one is given.
    pub(crate) fn new(
        endpoint: Url,
        token: String,
        ca_cert: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("gpuaasctl/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_cert {
            builder = builder.tls_certs_only(read_ca(path)?);
        }
        Ok(Self {
            http: builder.build().map_err(ClientError::Build)?,
            endpoint,
            token,
        })
    }

    /// `POST /v1/enrollment-tokens`.
    pub(crate) async fn create_token(
        &self,
        request: &CreateToken,
    ) -> Result<Fetched<TokenCreated>, ClientError> {
        let url = self.url(&["v1", "enrollment-tokens"]);
        let body = self.send(Method::POST, url, Some(request)).await?;
        body.decode()
    }

    /// `GET /v1/nodes`.
    pub(crate) async fn list_nodes(&self) -> Result<Fetched<NodeList>, ClientError> {
        let url = self.url(&["v1", "nodes"]);
        self.send(Method::GET, url, None::<&()>).await?.decode()
    }

    /// `GET /v1/nodes/{id}`.
    pub(crate) async fn get_node(&self, id: NodeId) -> Result<Fetched<Node>, ClientError> {
        let url = self.url(&["v1", "nodes", &id.to_string()]);
        self.send(Method::GET, url, None::<&()>).await?.decode()
    }

    /// `DELETE /v1/nodes/{id}`: revokes the node.
    pub(crate) async fn delete_node(&self, id: NodeId) -> Result<(), ClientError> {
        let url = self.url(&["v1", "nodes", &id.to_string()]);
        self.send(Method::DELETE, url, None::<&()>).await?;
        Ok(())
    }

    fn url(&self, segments: &[&str]) -> Url {
        api_url(&self.endpoint, segments)
    }

    /// Sends one request and returns the body of a 2xx answer; maps anything else to an error.
    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<Answer, ClientError> {
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let target = Box::new(Target { method, url });
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                return Err(ClientError::Transport {
                    target,
                    source: e.without_url(),
                });
            }
        };
        let status = response.status();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => {
                return Err(ClientError::Transport {
                    target,
                    source: e.without_url(),
                });
            }
        };
        if !status.is_success() {
            return Err(match parse_error_body(status.as_u16(), &bytes) {
                Some(api) => ClientError::Api(api),
                None => ClientError::Status {
                    target,
                    status,
                    excerpt: excerpt(&bytes),
                },
            });
        }
        Ok(Answer {
            target,
            status,
            bytes: bytes.to_vec(),
        })
    }
}

/// A 2xx answer, not yet decoded.
struct Answer {
    target: Box<Target>,
    status: StatusCode,
    bytes: Vec<u8>,
}

impl Answer {
    fn decode<T: DeserializeOwned>(self) -> Result<Fetched<T>, ClientError> {
        decode_body(&self.bytes).map_err(|source| ClientError::Body {
            target: self.target,
            status: self.status,
            source,
        })
    }
}

/// Reads a body as `T` (unknown fields ignored), keeping the bytes.
fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<Fetched<T>, serde_json::Error> {
    Ok(Fetched {
        value: serde_json::from_slice(bytes)?,
        raw: bytes.to_vec(),
    })
}

/// `endpoint` with `segments` appended as path segments (escaped), keeping any path prefix.
fn api_url(endpoint: &Url, segments: &[&str]) -> Url {
    let mut url = endpoint.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// The API error in a non-2xx body, if the body has the contract's shape.
pub(crate) fn parse_error_body(status: u16, body: &[u8]) -> Option<ApiError> {
    #[derive(Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        code: String,
        message: String,
    }
    let Envelope {
        error: Inner { code, message },
    } = serde_json::from_slice(body).ok()?;
    Some(ApiError {
        status,
        code: printable(&code),
        message: printable(&message),
    })
}

/// The start of a body as one line of text, for error messages.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line = printable(&text.split_whitespace().collect::<Vec<_>>().join(" "));
    if one_line.is_empty() {
        return "(empty body)".to_owned();
    }
    match one_line.char_indices().nth(BODY_EXCERPT_LEN) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// `s` with control characters (terminal escapes, line breaks) replaced by `?`.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Reads the PEM file of the cluster CA.
fn read_ca(path: &Path) -> Result<Vec<Certificate>, ClientError> {
    let pem = std::fs::read(path).map_err(|source| ClientError::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    match Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(ClientError::NoCaCert {
            path: path.to_owned(),
            source: None,
        }),
        Err(source) => Err(ClientError::NoCaCert {
            path: path.to_owned(),
            source: Some(source),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node as the contract describes it, plus a field this client does not know.
    const NODE_JSON: &str = r#"{
        "id": "node-3f9a1c2b4d5e6f70",
        "hostname": "gpu-01",
        "status": "ready",
        "agent_version": "0.1.0",
        "enrolled_at": "2025-01-01T00:00:00Z",
        "last_seen_at": "2025-01-02T03:04:05Z",
        "clock_skew_ms": -12,
        "cert_not_after": "2025-04-01T00:00:00Z",
        "labels": {"rack": "r12"},
        "inventory": {
            "hostname": "gpu-01",
            "cpu_cores": 64,
            "memory_mib": 1048576,
            "gpus": [{
                "index": 0,
                "uuid": "GPU-00000000-0000-0000-0000-000000000000",
                "model": "H100-80GB",
                "nvml_name": "NVIDIA H100 80GB HBM3",
                "memory_mib": 81559,
                "pci_bus_id": "0000:3b:00.0",
                "minor": 0,
                "numa_node": null,
                "mig": {"current": "Disabled", "pending": "Enabled"},
                "temperature_c": 41
            }]
        }
    }"#;

    #[test]
    fn error_body_is_parsed() {
        let body =
            br#"{"error": {"code": "not_found", "message": "no node node-00000000000000ff"}}"#;
        let err = parse_error_body(404, body).unwrap();
        assert_eq!(
            err.to_string(),
            "no node node-00000000000000ff (not_found, HTTP 404)"
        );
        let wrapped = ClientError::from(err);
        assert_eq!(
            wrapped.to_string(),
            "no node node-00000000000000ff (not_found, HTTP 404)"
        );
    }

    #[test]
    fn error_body_tolerates_extra_fields() {
        let body = br#"{"error": {"code": "unauthorized", "message": "bad token", "hint": "x"},
                        "request_id": "r1"}"#;
        let err = parse_error_body(401, body).unwrap();
        assert_eq!(err.code, "unauthorized");
        assert_eq!(err.status, 401);
        let body = br#"{"error": {"code": "bad_request", "message": "host \u001b[31mx\n"}}"#;
        let err = parse_error_body(400, body).unwrap();
        assert_eq!(err.message, "host ?[31mx?");
    }

    #[test]
    fn other_errors_name_the_request() {
        let err = ClientError::Status {
            target: Box::new(Target {
                method: Method::GET,
                url: Url::parse("https://c:8443/v1/nodes").unwrap(),
            }),
            status: StatusCode::BAD_GATEWAY,
            excerpt: excerpt(b"<html>upstream down</html>"),
        };
        assert_eq!(
            err.to_string(),
            "GET https://c:8443/v1/nodes answered HTTP 502 Bad Gateway: <html>upstream down</html>"
        );
    }

    #[test]
    fn other_error_bodies_are_not_api_errors() {
        for body in [
            &b"<html>502 Bad Gateway</html>"[..],
            b"",
            br#"{"error": "flat string"}"#,
            br#"{"error": {"code": 5, "message": "x"}}"#,
            br#"{"message": "x"}"#,
        ] {
            assert_eq!(parse_error_body(502, body), None, "{body:?}");
        }
    }

    #[test]
    fn excerpt_is_one_short_line() {
        assert_eq!(excerpt(b""), "(empty body)");
        assert_eq!(
            excerpt(b"<h1>Bad\n  Gateway</h1>\x1b[2J"),
            "<h1>Bad Gateway</h1>?[2J"
        );
        let long = "x".repeat(500);
        let cut = excerpt(long.as_bytes());
        assert_eq!(cut.chars().count(), BODY_EXCERPT_LEN + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn node_decodes_leniently() {
        let fetched: Fetched<Node> = decode_body(NODE_JSON.as_bytes()).unwrap();
        let node = fetched.value;
        assert_eq!(node.id, "node-3f9a1c2b4d5e6f70");
        assert_eq!(node.clock_skew_ms, Some(-12));
        let inventory = node.inventory.unwrap();
        assert_eq!(inventory.gpus[0].numa_node, None);
        assert_eq!(inventory.gpus[0].mig.pending, "Enabled");
        // The raw body keeps what the typed view drops.
        assert_eq!(fetched.raw, NODE_JSON.as_bytes());
    }

    #[test]
    fn nullable_fields_may_be_null_or_absent() {
        let json = r#"{"nodes": [{
            "id": "node-0000000000000001", "hostname": "h", "status": "not_ready",
            "agent_version": "0.1.0", "enrolled_at": "2025-01-01T00:00:00Z",
            "last_seen_at": null, "cert_not_after": "2025-04-01T00:00:00Z",
            "inventory": null
        }]}"#;
        let list: Fetched<NodeList> = decode_body(json.as_bytes()).unwrap();
        let node = &list.value.nodes[0];
        assert_eq!(node.last_seen_at, None);
        assert_eq!(node.clock_skew_ms, None);
        assert_eq!(node.inventory, None);
    }

    #[test]
    fn missing_contract_fields_are_errors() {
        let err = decode_body::<Node>(br#"{"id": "node-0000000000000001"}"#).unwrap_err();
        assert!(err.to_string().contains("missing field"), "{err}");
        assert!(decode_body::<NodeList>(b"not json").is_err());
    }

    #[test]
    fn token_answer_decodes() {
        let json =
            br#"{"id": "tok-0000000000000007", "token": "gpuaas1.ab.tok-0000000000000007.cd",
                        "expires_at": "2025-01-01T01:00:00Z", "description": null}"#;
        let t: Fetched<TokenCreated> = decode_body(json).unwrap();
        assert_eq!(t.value.description, None);
        assert_eq!(t.value.id, "tok-0000000000000007");
    }

    #[test]
    fn create_body_omits_unset_fields() {
        let body = serde_json::to_string(&CreateToken::default()).unwrap();
        assert_eq!(body, "{}");
        let body = serde_json::to_string(&CreateToken {
            ttl_seconds: Some(7200),
            description: Some("rack 12".into()),
        })
        .unwrap();
        assert_eq!(body, r#"{"ttl_seconds":7200,"description":"rack 12"}"#);
    }

    #[test]
    fn urls_keep_the_endpoint_path() {
        let id = NodeId::from_raw(0xff).to_string();
        for (endpoint, expected) in [
            (
                "https://c:8443",
                "https://c:8443/v1/nodes/node-00000000000000ff",
            ),
            (
                "https://c:8443/",
                "https://c:8443/v1/nodes/node-00000000000000ff",
            ),
            (
                "https://c/admin",
                "https://c/admin/v1/nodes/node-00000000000000ff",
            ),
            (
                "https://c/admin/",
                "https://c/admin/v1/nodes/node-00000000000000ff",
            ),
        ] {
            let url = api_url(&Url::parse(endpoint).unwrap(), &["v1", "nodes", &id]);
            assert_eq!(url.as_str(), expected, "{endpoint}");
        }
    }

    #[test]
    fn client_trusts_a_pem_ca() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["coordinator".to_owned()]).unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert.pem()).unwrap();
        assert_eq!(read_ca(&path).unwrap().len(), 1);
        let endpoint = Url::parse("https://coordinator:8443").unwrap();
        AdminClient::new(endpoint, "t".to_owned(), Some(&path)).unwrap();
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = read_ca(&missing).unwrap_err();
        assert!(matches!(err, ClientError::ReadCa { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = read_ca(&empty).unwrap_err();
        assert!(matches!(err, ClientError::NoCaCert { .. }), "{err}");
    }
}
