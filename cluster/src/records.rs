//! TLS 1.3 application-data records of a TCP cluster connection, sealed and opened in
//! place, after rustls has done the handshake.
//!
//! rustls does the handshake and the certificate checks; then the connection's traffic
//! keys are taken out of it (`dangerous_extract_secrets`, the same hand-off kernel TLS
//! uses) and this module protects the records itself. Written here rather than left to
//! rustls's stream API because that API puts copies on the replication path: a received
//! byte was copied from the socket buffer into rustls's deframer, decrypted, copied into
//! its plaintext queue and copied out again (the follower's profile: 14 % of its CPU in
//! those copies and in zeroing the buffer they were read into), and a sent byte was copied
//! into a record of its own and sent with one `send` per 16 KiB record. Here a received
//! record is decrypted where the socket read put it and copied once, into the frame it
//! belongs to; a sent byte is copied once, into a 256 KiB run of records sealed in place
//! and sent with one `send`.
//!
//! The records are TLS 1.3's (RFC 8446 section 5.2): a 5-byte header (type 23, version
//! 0x0303, length), the ciphertext of the data and its one-byte inner content type, and
//! the AEAD tag; the nonce is the IV XOR the record's sequence number; the header is the
//! additional data. Cryptography is `ring`'s AEAD, the provider rustls uses here. Nothing
//! but application data is expected after the hand-off (the server sends no session
//! tickets, neither side updates keys): any other record ends the connection, and so does
//! a key's 2^24th record (TLS 1.3's usage limit for AES-GCM is 2^24.5 full records), after
//! which a new connection makes new keys.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite};
use ring::aead::{
    AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey,
};
use rustls::ConnectionTrafficSecrets;

/// Plaintext bytes in a record at most (2^14, the TLS limit).
pub(crate) const PLAINTEXT_MAX: usize = 1 << 14;
const HEADER_BYTES: usize = 5;
const TAG_BYTES: usize = 16;
/// A record's ciphertext, its inner content type and tag included, at most.
const CIPHERTEXT_MAX: usize = PLAINTEXT_MAX + 1 + TAG_BYTES;
const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
/// Records one key protects at most.
const RECORDS_PER_KEY: u64 = 1 << 24;
/// Sealed bytes the writer gathers before sending them.
const SEND_BYTES: usize = 256 << 10;

/// One direction's key and the sequence number of its next record.
pub(crate) struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    /// The keys of one direction, as rustls hands them over.
    pub(crate) fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> io::Result<Self> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err(invalid("a cipher this record layer does not know".into())),
        };
        let key = UnboundKey::new(alg, key.as_ref())
            .map_err(|_| invalid("a traffic key of the wrong length".into()))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| invalid("an IV of the wrong length".into()))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    fn next_nonce(&mut self) -> io::Result<Nonce> {
        if self.seq >= RECORDS_PER_KEY {
            return Err(io::Error::other(
                "the connection's key has protected its limit of records; reconnecting",
            ));
        }
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(n))
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn record_header(ciphertext_len: usize) -> [u8; HEADER_BYTES] {
    let l = (ciphertext_len as u16).to_be_bytes();
    [APPLICATION_DATA, 3, 3, l[0], l[1]]
}

/// The sending half: bytes written are gathered into records, sealed when a record is
/// full or on `flush`, and sent in runs of up to 256 KiB.
pub(crate) struct RecordWriter<W> {
    inner: W,
    keys: Keys,
    /// Sealed records, then the open one (header space and plaintext so far).
    out: Vec<u8>,
    /// Where the open record starts in `out`, if one is open.
    open: Option<usize>,
    /// Bytes of `out` already sent.
    sent: usize,
    /// A sealing or sending error: the stream is unusable after it.
    failed: bool,
}

impl<W: AsyncWrite + Unpin> RecordWriter<W> {
    pub(crate) fn new(inner: W, keys: Keys) -> Self {
        Self {
            inner,
            keys,
            out: Vec::with_capacity(SEND_BYTES + HEADER_BYTES + CIPHERTEXT_MAX),
            open: None,
            sent: 0,
            failed: false,
        }
    }

    /// Seals the open record, if any.
    fn seal(&mut self) -> io::Result<()> {
        let Some(start) = self.open.take() else {
            return Ok(());
        };
        self.out.push(APPLICATION_DATA);
        let header = record_header(self.out.len() - start - HEADER_BYTES + TAG_BYTES);
        let nonce = self.keys.next_nonce()?;
        let tag = self
            .keys
            .key
            .seal_in_place_separate_tag(
                nonce,
                Aad::from(header),
                &mut self.out[start + HEADER_BYTES..],
            )
            .map_err(|_| io::Error::other("sealing a record failed"))?;
        self.out[start..start + HEADER_BYTES].copy_from_slice(&header);
        self.out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Sends every sealed byte.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        debug_assert!(self.open.is_none());
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_seal_and_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.failed {
            return Poll::Ready(Err(io::Error::other("the connection failed before")));
        }
        let r = match self.seal() {
            Ok(()) => ready!(self.poll_send(cx)),
            Err(e) => Err(e),
        };
        self.failed = r.is_err();
        Poll::Ready(r)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for RecordWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.out.len() >= SEND_BYTES {
            ready!(this.poll_seal_and_send(cx))?;
        }
        if this.failed {
            return Poll::Ready(Err(io::Error::other("the connection failed before")));
        }
        let start = *this.open.get_or_insert_with(|| {
            this.out.extend_from_slice(&[0; HEADER_BYTES]);
            this.out.len() - HEADER_BYTES
        });
        let room = PLAINTEXT_MAX - (this.out.len() - start - HEADER_BYTES);
        let n = room.min(buf.len());
        this.out.extend_from_slice(&buf[..n]);
        if n == room
            && let Err(e) = this.seal()
        {
            this.failed = true;
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_seal_and_send(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_seal_and_send(cx))?;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// The receiving half: reads runs of records into one buffer, opens each in place and
/// hands out its plaintext.
pub(crate) struct RecordReader<R> {
    inner: R,
    keys: Keys,
    buf: Box<[u8]>,
    /// Received bytes not yet opened: `buf[start..end]`.
    start: usize,
    end: usize,
    /// Opened plaintext not yet read: `buf[plain.0..plain.1]`.
    plain: (usize, usize),
    failed: bool,
}

impl<R: AsyncRead + Unpin> RecordReader<R> {
    /// `received` is what the handshake read past its end, if anything; `buffer_bytes` the
    /// size of a socket read (at least one whole record).
    pub(crate) fn new(inner: R, keys: Keys, received: &[u8], buffer_bytes: usize) -> Self {
        let mut buf = vec![0u8; buffer_bytes.max(2 * (HEADER_BYTES + CIPHERTEXT_MAX))];
        let len = received.len();
        assert!(len <= buf.len(), "handshake left more than a buffer");
        buf[..len].copy_from_slice(received);
        Self {
            inner,
            keys,
            buf: buf.into_boxed_slice(),
            start: 0,
            end: len,
            plain: (0, 0),
            failed: false,
        }
    }

    /// Makes plaintext available; an empty slice at a clean end of the stream.
    fn poll_plain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        if self.failed {
            return Poll::Ready(Err(io::Error::other("the connection failed before")));
        }
        loop {
            if self.plain.0 < self.plain.1 {
                return Poll::Ready(Ok(&self.buf[self.plain.0..self.plain.1]));
            }
            match self.open_next() {
                Ok(Some(true)) => continue,
                Ok(Some(false)) => return Poll::Ready(Ok(&[])),
                Ok(None) => {}
                Err(e) => {
                    self.failed = true;
                    return Poll::Ready(Err(e));
                }
            }
            // Nothing left, or a partial record: start over at the front when the
            // buffer is empty or the rest of the record would not fit.
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            } else if self.buf.len() - self.start < HEADER_BYTES + CIPHERTEXT_MAX {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = match ready!(Pin::new(&mut self.inner).poll_read(cx, &mut self.buf[self.end..]))
            {
                Ok(n) => n,
                Err(e) => {
                    self.failed = true;
                    return Poll::Ready(Err(e));
                }
            };
            if n == 0 {
                if self.start == self.end {
                    return Poll::Ready(Ok(&[]));
                }
                self.failed = true;
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            self.end += n;
        }
    }

    /// Opens the record at `start` if it is whole: `Some(true)` when it was (its
    /// plaintext, maybe empty, is in `plain`), `Some(false)` at the peer's close_notify,
    /// `None` when more bytes are needed.
    fn open_next(&mut self) -> io::Result<Option<bool>> {
        let avail = self.end - self.start;
        if avail < HEADER_BYTES {
            return Ok(None);
        }
        let at = self.start;
        let header: [u8; HEADER_BYTES] = self.buf[at..at + HEADER_BYTES].try_into().unwrap();
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if header[0] != APPLICATION_DATA || header[1..3] != [3, 3] {
            return Err(invalid(format!(
                "not a TLS 1.3 application data record (header {header:02x?})"
            )));
        }
        if !(TAG_BYTES + 1..=CIPHERTEXT_MAX).contains(&len) {
            return Err(invalid(format!("a TLS record of {len} bytes")));
        }
        if avail < HEADER_BYTES + len {
            return Ok(None);
        }
        let nonce = self.keys.next_nonce()?;
        let body = at + HEADER_BYTES;
        let plain = self
            .keys
            .key
            .open_in_place(nonce, Aad::from(header), &mut self.buf[body..body + len])
            .map_err(|_| invalid("a TLS record failed authentication".into()))?;
        // The inner content type is the last byte that is not zero padding.
        let Some(typ_at) = plain.iter().rposition(|&b| b != 0) else {
            return Err(invalid("a TLS record without a content type".into()));
        };
        let typ = plain[typ_at];
        self.start = body + len;
        match typ {
            APPLICATION_DATA => {
                self.plain = (body, body + typ_at);
                Ok(Some(true))
            }
            // close_notify is a warning-level alert 0; anything else is a failure.
            ALERT if plain[..typ_at] == [1, 0] => Ok(Some(false)),
            ALERT => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("the peer sent TLS alert {:?}", &plain[..typ_at]),
            )),
            t => Err(invalid(format!(
                "an unexpected TLS record of content type {t} after the handshake"
            ))),
        }
    }

    /// Reads exactly `len` bytes into a new buffer, copied once from the opened records.
    pub(crate) async fn read_bytes(&mut self, len: usize) -> io::Result<Bytes> {
        let mut out = BytesMut::with_capacity(len);
        while out.len() < len {
            let want = len - out.len();
            let n = std::future::poll_fn(|cx| -> Poll<io::Result<usize>> {
                let p = ready!(self.poll_plain(cx))?;
                if p.is_empty() {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                let n = p.len().min(want);
                out.extend_from_slice(&p[..n]);
                Poll::Ready(Ok(n))
            })
            .await?;
            self.plain.0 += n;
        }
        Ok(out.freeze())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for RecordReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let p = ready!(this.poll_plain(cx))?;
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        this.plain.0 += n;
        Poll::Ready(Ok(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use futures_lite::io::{AsyncReadExt, AsyncWriteExt, Cursor};
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn keys(seq: u64) -> Keys {
        let key = AeadKey::from([7u8; 32]);
        let iv = Iv::from([9u8; 12]);
        Keys::new((seq, ConnectionTrafficSecrets::Aes256Gcm { key, iv })).unwrap()
    }

    /// What a writer sends for `writes`, flushing after each.
    fn sealed(writes: &[&[u8]]) -> Vec<u8> {
        let mut w = RecordWriter::new(Cursor::new(Vec::new()), keys(0));
        block_on(async {
            for b in writes {
                w.write_all(b).await.unwrap();
                w.flush().await.unwrap();
            }
        });
        w.inner.into_inner()
    }

    #[test]
    fn what_is_written_is_read_across_records_and_reads() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 31) as u8).collect();
        let wire = sealed(&[b"hello", &big, b"", b"!"]);
        // 5 bytes, 13 records of 200,000 bytes, 1 byte: 15 records, each with 22 bytes
        // of header, content type and tag.
        assert_eq!(wire.len(), 5 + 200_000 + 1 + 15 * 22);
        // Read through a buffer smaller than the whole, so records straddle reads.
        let mut r = RecordReader::new(Cursor::new(wire), keys(0), &[], 40_000);
        block_on(async {
            let mut h = [0u8; 5];
            r.read_exact(&mut h).await.unwrap();
            assert_eq!(&h, b"hello");
            assert_eq!(r.read_bytes(200_000).await.unwrap(), big);
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"!");
        });
    }

    #[test]
    fn bytes_read_past_the_handshake_are_kept() {
        let wire = sealed(&[b"abcdef"]);
        let (early, later) = wire.split_at(9);
        let mut r = RecordReader::new(Cursor::new(later.to_vec()), keys(0), early, 0);
        let got = block_on(r.read_bytes(6)).unwrap();
        assert_eq!(&got[..], b"abcdef");
    }

    #[test]
    fn a_changed_byte_a_wrong_sequence_or_a_cut_record_is_an_error() {
        let wire = sealed(&[b"payload"]);
        for i in [1, 7, wire.len() - 1] {
            let mut bad = wire.clone();
            bad[i] ^= 1;
            let mut r = RecordReader::new(Cursor::new(bad), keys(0), &[], 0);
            let e = block_on(r.read_bytes(7)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "byte {i}: {e}");
            // The reader stays failed.
            assert!(block_on(r.read_bytes(1)).is_err());
        }
        let mut r = RecordReader::new(Cursor::new(wire.clone()), keys(1), &[], 0);
        assert!(block_on(r.read_bytes(7)).is_err());
        let cut = wire[..wire.len() - 1].to_vec();
        let mut r = RecordReader::new(Cursor::new(cut), keys(0), &[], 0);
        let e = block_on(r.read_bytes(7)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_key_is_retired_after_its_limit_of_records() {
        let mut w = RecordWriter::new(Cursor::new(Vec::new()), keys(RECORDS_PER_KEY - 1));
        block_on(async {
            w.write_all(b"last").await.unwrap();
            w.flush().await.unwrap();
            w.write_all(b"over").await.unwrap();
            assert!(w.flush().await.is_err());
            assert!(w.write_all(b"after").await.is_err());
        });
    }

    #[test]
    fn the_end_of_the_stream_is_clean_only_between_records() {
        let mut r = RecordReader::new(Cursor::new(Vec::new()), keys(0), &[], 0);
        let mut b = [0u8; 1];
        assert_eq!(block_on(r.read(&mut b)).unwrap(), 0);
    }
}
