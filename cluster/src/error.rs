//! The transport's typed error.

use std::fmt;

/// What went wrong with a request, or with starting the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// The peer could not be reached: not configured, connection refused, no handshake.
    Unreachable,
    /// No answer within the request timeout.
    Timeout,
    /// A frame (request or response) over `frame_bytes_max`, on either side.
    TooLarge,
    /// The TLS handshake failed: a certificate not signed by the cluster CA, a wrong node
    /// name, unreadable key or certificate files.
    Tls,
    /// The connection closed under the request, the peer answered nothing, or the
    /// transport is shut down.
    Closed,
    /// Any other I/O failure (binding a socket, starting the QUIC thread).
    Io,
}

/// A failed request or start, with the kind to act on and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    /// What went wrong, to act on.
    pub kind: TransportErrorKind,
    /// What went wrong, for people.
    pub message: String,
}

impl TransportError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn closed(message: impl Into<String>) -> Self {
        Self::new(TransportErrorKind::Closed, message)
    }

    pub(crate) fn too_large(what: &str, bytes: usize, max: usize) -> Self {
        Self::new(
            TransportErrorKind::TooLarge,
            format!("{what} of {bytes} bytes is over frame_bytes_max ({max})"),
        )
    }

    /// Classifies an I/O error from a TLS stream: a rustls error inside is `Tls`.
    pub(crate) fn from_io(context: &str, e: &std::io::Error) -> Self {
        let tls = e
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        let kind = if tls {
            TransportErrorKind::Tls
        } else {
            match e.kind() {
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
                | std::io::ErrorKind::AddrNotAvailable => TransportErrorKind::Unreachable,
                std::io::ErrorKind::TimedOut => TransportErrorKind::Timeout,
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::NotConnected => TransportErrorKind::Closed,
                _ => TransportErrorKind::Io,
            }
        };
        Self::new(kind, format!("{context}: {e}"))
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for TransportError {}
