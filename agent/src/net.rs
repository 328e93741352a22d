//! Addresses: `host:port` parsing and resolution, and the QUIC client endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

/// Splits `host:port` (`[v6]:port` too) into the host (brackets removed) and the port.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port))
}

/// Resolving or binding failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Not `host:port`.
    #[error("{0:?} is not host:port")]
    BadAddress(String),
    /// Name resolution failed.
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        /// The address.
        address: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// The UDP socket could not be bound.
    #[error("cannot bind a UDP socket: {0}")]
    Bind(#[source] std::io::Error),
}

/// Resolves `host:port` to its first address and returns it with the TLS server name.
pub async fn resolve(address: &str) -> Result<(SocketAddr, String), NetError> {
    let (host, _) = split_host_port(address).ok_or_else(|| NetError::BadAddress(address.into()))?;
    let addr = tokio::net::lookup_host(address)
        .await
        .map_err(|source| NetError::Resolve {
            address: address.into(),
            source,
        })?
        .next()
        .ok_or_else(|| NetError::Resolve {
            address: address.into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        })?;
    Ok((addr, host.to_owned()))
}

/// A client-only QUIC endpoint on an ephemeral port of the right address family.
/// `socket_buffer` asks the kernel for larger UDP buffers (capped by `net.core.rmem_max`); the
/// fleet simulator multiplexes up to a thousand nodes on one socket and needs room for bursts
/// of handshake replies, a single agent does not.
pub fn client_endpoint(
    for_addr: SocketAddr,
    socket_buffer: Option<usize>,
) -> Result<quinn::Endpoint, NetError> {
    let bind: SocketAddr = if for_addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = std::net::UdpSocket::bind(bind).map_err(NetError::Bind)?;
    if let Some(bytes) = socket_buffer {
        let sock = socket2::SockRef::from(&socket);
        let _ = sock.set_recv_buffer_size(bytes);
        let _ = sock.set_send_buffer_size(bytes);
    }
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(NetError::Bind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("coord:7443"), Some(("coord", 7443)));
        assert_eq!(split_host_port("[::1]:7443"), Some(("::1", 7443)));
        assert_eq!(split_host_port("coord"), None);
        assert_eq!(split_host_port(":7443"), None);
        assert_eq!(split_host_port("coord:99999"), None);
    }
}
