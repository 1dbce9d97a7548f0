//! Accepts the `:authority` values etcd clients send, which the HTTP/2
//! server below tonic refuses.
//!
//! etcdctl 3.4 dials each endpoint of `endpoint status` with the endpoint as
//! given, so a request from `--endpoints=http://127.0.0.1:2379` carries
//! `:authority: http://127.0.0.1:2379` (captured from etcdctl 3.4.23). That
//! is not a valid authority, and the `h2` crate answers it with
//! `RST_STREAM(PROTOCOL_ERROR)`; etcd's Go server ignores the authority.
//!
//! [`LenientAuthority`] sits between the client connection (TCP or TLS,
//! after the handshake) and the HTTP/2 server. It decodes the connection's
//! first header block (HPACK). A gRPC client sends one authority for all
//! the requests of a connection, so:
//! - if that authority is valid (or absent), the block and everything after
//!   it go through untouched: the server's HPACK table mirrors the client's,
//!   and the connection costs nothing more (decoding every block cost about
//!   a tenth of a member's CPU under load);
//! - otherwise every header block of the connection is decoded with the
//!   client's dynamic table, repaired (`scheme://host:port[/...]` becomes
//!   `host:port`; an authority that still does not parse is dropped, which
//!   HTTP/2 allows) and encoded again as literals without indexing, so the
//!   server's decoding table stays empty and can never disagree with ours.
//!
//! It only rewrites the client-to-server direction and never reads a header
//! block larger than [`MAX_HEADER_BLOCK`]; anything it cannot decode ends
//! the connection, as the server itself would.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Every HTTP/2 peer accepts frames this large (the protocol's minimum
/// SETTINGS_MAX_FRAME_SIZE).
const SAFE_FRAME_SIZE: usize = 16_384;
/// A header block this large is refused (etcd requests carry a few hundred
/// bytes of headers; this bounds what a client can make us buffer).
pub(crate) const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// The dynamic table size HTTP/2 servers start with; the server below
/// never advertises another, so a client may not use more.
const HEADER_TABLE_SIZE: usize = 4096;

/// A client connection whose request headers are repaired on the way in.
pub struct LenientAuthority<S> {
    inner: S,
    /// Bytes read from the client, not yet handled.
    raw: BytesMut,
    /// Bytes ready for the server.
    ready: BytesMut,
    state: State,
    decoder: loona_hpack::Decoder<'static>,
    /// A header block whose CONTINUATION frames are still to come.
    pending: Option<PendingBlock>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Checking the client preface.
    Preface,
    /// HTTP/2 frames, until the first header block is seen.
    First,
    /// HTTP/2 frames whose header blocks are all repaired.
    Frames,
    /// Not HTTP/2 with prior knowledge, or a connection whose first
    /// authority was valid: bytes go through untouched.
    Passthrough,
}

struct PendingBlock {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
    /// The block's frames as they came (kept for the first block only).
    frames: BytesMut,
}

impl<S> LenientAuthority<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            inner,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            state: State::Preface,
            decoder,
            pending: None,
        }
    }

    /// Moves what can be handled from `raw` to `ready`. Returns false when
    /// more input is needed.
    fn process(&mut self) -> io::Result<bool> {
        match self.state {
            State::Passthrough => {
                let all = self.raw.split();
                self.ready.unsplit(all);
                Ok(false)
            }
            State::Preface => {
                let seen = self.raw.len().min(PREFACE.len());
                if self.raw[..seen] != PREFACE[..seen] {
                    self.state = State::Passthrough;
                    return Ok(true);
                }
                if seen < PREFACE.len() {
                    return Ok(false);
                }
                let preface = self.raw.split_to(PREFACE.len());
                self.ready.unsplit(preface);
                self.state = State::First;
                Ok(true)
            }
            State::First | State::Frames => {
                if self.raw.len() < FRAME_HEADER {
                    return Ok(false);
                }
                let length =
                    u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
                if self.raw.len() < FRAME_HEADER + length {
                    self.raw.reserve(FRAME_HEADER + length - self.raw.len());
                    return Ok(false);
                }
                let kind = self.raw[3];
                if kind != HEADERS && kind != CONTINUATION && self.pending.is_none() {
                    let frame = self.raw.split_to(FRAME_HEADER + length);
                    self.ready.unsplit(frame);
                    return Ok(true);
                }
                let frame = self.raw.split_to(FRAME_HEADER + length);
                self.header_frame(frame)?;
                Ok(true)
            }
        }
    }

    /// A HEADERS or CONTINUATION frame (or, illegally, another frame in the
    /// middle of a header block, which ends the connection).
    fn header_frame(&mut self, frame: BytesMut) -> io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        let fragment = match (kind, self.pending.as_mut()) {
            (HEADERS, None) => {
                let (priority, fragment) = split_headers_payload(flags, payload)?;
                self.pending = Some(PendingBlock {
                    stream,
                    flags,
                    priority,
                    block: Vec::new(),
                    frames: BytesMut::new(),
                });
                fragment
            }
            (CONTINUATION, Some(pending)) if pending.stream == stream => payload,
            _ => return Err(protocol_error("a header block was interrupted")),
        };
        let pending = self.pending.as_mut().expect("set above");
        if pending.block.len() + fragment.len() > MAX_HEADER_BLOCK {
            return Err(protocol_error("header block too large"));
        }
        pending.block.extend_from_slice(fragment);
        if self.state == State::First {
            pending.frames.extend_from_slice(&frame);
        }
        if flags & END_HEADERS == 0 {
            return Ok(());
        }
        let pending = self.pending.take().expect("set above");
        let headers = decode(&mut self.decoder, &pending.block)?;
        if self.state == State::First {
            let valid = headers
                .iter()
                .filter(|(name, _)| name == b":authority")
                .all(|(_, value)| is_valid_authority(value));
            if valid {
                self.ready.unsplit(pending.frames);
                self.state = State::Passthrough;
                return Ok(());
            }
            self.state = State::Frames;
        }
        let block = repaired_block(&headers)?;
        write_header_frames(&mut self.ready, &pending, &block);
        Ok(())
    }
}

/// The priority fields and the header block fragment of a HEADERS payload.
fn split_headers_payload(flags: u8, payload: &[u8]) -> io::Result<(Option<[u8; 5]>, &[u8])> {
    let mut payload = payload;
    let mut padding = 0;
    if flags & PADDED != 0 {
        let (&length, rest) = payload
            .split_first()
            .ok_or_else(|| protocol_error("HEADERS frame too short for its padding"))?;
        padding = length as usize;
        payload = rest;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        if payload.len() < 5 {
            return Err(protocol_error("HEADERS frame too short for its priority"));
        }
        let (fields, rest) = payload.split_at(5);
        priority = Some(fields.try_into().expect("five bytes"));
        payload = rest;
    }
    if padding > payload.len() {
        return Err(protocol_error("HEADERS padding longer than the frame"));
    }
    Ok((priority, &payload[..payload.len() - padding]))
}

type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// Decodes a header block with the client's table.
fn decode(decoder: &mut loona_hpack::Decoder<'static>, block: &[u8]) -> io::Result<Headers> {
    let mut headers = Vec::new();
    decoder
        .decode_with_cb(block, |name, value| {
            headers.push((name.into_owned(), value.into_owned()))
        })
        .map_err(|err| protocol_error(&format!("undecodable header block: {err:?}")))?;
    Ok(headers)
}

/// The headers, repaired, as a block of literals that touch no table.
fn repaired_block(headers: &Headers) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(headers.len() * 32);
    for (name, value) in headers {
        if name == b":authority" {
            if let Some(value) = repaired_authority(value) {
                encode_literal(&mut out, name, &value)?;
            }
        } else {
            encode_literal(&mut out, name, value)?;
        }
    }
    Ok(out)
}

fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// `value` as a valid authority: unchanged when it already is one, the
/// `host[:port]` of a URL otherwise, or `None` (drop the header).
pub(crate) fn repaired_authority(value: &[u8]) -> Option<Vec<u8>> {
    if is_valid_authority(value) {
        return Some(value.to_vec());
    }
    let text = std::str::from_utf8(value).ok()?;
    let url = url::Url::parse(text).ok()?;
    let host = url.host_str()?;
    let repaired = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    http::uri::Authority::try_from(repaired.as_str()).ok()?;
    Some(repaired.into_bytes())
}

/// One header as "literal header field without indexing, new name"
/// (RFC 7541, 6.2.2), without Huffman coding.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> io::Result<()> {
    out.push(0x00);
    for string in [name, value] {
        loona_hpack::encoder::encode_integer_into(string.len(), 7, 0, out)?;
        out.extend_from_slice(string);
    }
    Ok(())
}

/// The repaired block as a HEADERS frame and as many CONTINUATION frames as
/// it needs.
fn write_header_frames(out: &mut BytesMut, pending: &PendingBlock, block: &[u8]) {
    let priority: &[u8] = pending.priority.as_ref().map_or(&[], |p| &p[..]);
    let first_room = SAFE_FRAME_SIZE - priority.len();
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut flags = pending.flags & (END_STREAM | PRIORITY);
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    put_frame_header(
        out,
        priority.len() + first.len(),
        HEADERS,
        flags,
        pending.stream,
    );
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(SAFE_FRAME_SIZE));
        let flags = if after.is_empty() { END_HEADERS } else { 0 };
        put_frame_header(out, chunk.len(), CONTINUATION, flags, pending.stream);
        out.extend_from_slice(chunk);
        rest = after;
    }
}

fn put_frame_header(out: &mut BytesMut, length: usize, kind: u8, flags: u8, stream: u32) {
    let length = length as u32;
    out.put_slice(&length.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 from client: {what}"),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for LenientAuthority<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Passthrough && this.raw.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.process()? {
                continue;
            }
            if !this.ready.is_empty() {
                continue;
            }
            this.raw.reserve(8192);
            let before = this.raw.len();
            let read = {
                let spare = this.raw.spare_capacity_mut();
                let mut chunk = ReadBuf::uninit(spare);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
                chunk.filled().len()
            };
            if read == 0 {
                // The client closed: hand over a partial frame as it is and
                // let the server judge it.
                this.state = State::Passthrough;
                let rest = this.raw.split();
                this.ready.unsplit(rest);
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // SAFETY: `poll_read` initialised `read` bytes of the spare
            // capacity.
            unsafe { this.raw.set_len(before + read) };
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LenientAuthority<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for LenientAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    async fn through(input: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut fixed = LenientAuthority::new(&input[..]);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await?;
        Ok(out)
    }

    /// The header blocks in `bytes` (after the preface), decoded.
    fn decoded_headers(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut bytes = &bytes[PREFACE.len()..];
        let mut decoder = loona_hpack::Decoder::new();
        let (mut blocks, mut block) = (Vec::new(), Vec::new());
        while !bytes.is_empty() {
            let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let (kind, flags) = (bytes[3], bytes[4]);
            let payload = &bytes[FRAME_HEADER..FRAME_HEADER + length];
            if kind == HEADERS || kind == CONTINUATION {
                let (_, fragment) = if kind == HEADERS {
                    split_headers_payload(flags, payload).unwrap()
                } else {
                    (None, payload)
                };
                block.extend_from_slice(fragment);
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).unwrap());
                    block.clear();
                }
            }
            bytes = &bytes[FRAME_HEADER + length..];
        }
        blocks
    }

    fn authority_of(block: &[(Vec<u8>, Vec<u8>)]) -> Option<&[u8]> {
        block
            .iter()
            .find(|(name, _)| name == b":authority")
            .map(|(_, value)| &value[..])
    }

    #[test]
    fn authorities_etcd_clients_send_are_repaired() {
        let cases: [(&str, Option<&str>); 8] = [
            ("127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("http://127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("https://127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("http://localhost:2379", Some("localhost:2379")),
            ("http://[::1]:2379", Some("[::1]:2379")),
            ("https://[::1]:2379/", Some("[::1]:2379")),
            ("localhost", Some("localhost")),
            ("not a url at all", None),
        ];
        for (sent, expected) in cases {
            let repaired = repaired_authority(sent.as_bytes());
            assert_eq!(
                repaired.as_deref(),
                expected.map(str::as_bytes),
                "for {sent:?}"
            );
        }
    }

    #[tokio::test]
    async fn header_blocks_are_repaired_across_continuations_and_the_client_table() {
        // A client encoder that indexes, so the second block refers to the
        // first one's entries: the repaired stream must still decode.
        let mut client = loona_hpack::Encoder::new();
        let first: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
            (b":authority", b"http://127.0.0.1:2379"),
            (b"content-type", b"application/grpc"),
        ];
        let block1 = client.encode(first.clone());
        let block2 = client.encode(first.clone());
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                             // Stream 1: padded, with priority, split over a CONTINUATION.
        let (a, b) = block1.split_at(block1.len() / 2);
        let mut payload = vec![3u8];
        payload.extend([0, 0, 0, 0, 16]);
        payload.extend_from_slice(a);
        payload.extend([0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
                                                                // Stream 3: entirely from the client's dynamic table.
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &block2));

        let output = through(input).await.unwrap();
        let blocks = decoded_headers(&output);
        assert_eq!(blocks.len(), 2);
        for block in &blocks {
            assert_eq!(authority_of(block), Some(&b"127.0.0.1:2379"[..]));
            assert_eq!(block.len(), first.len());
            assert_eq!(block[2].1, b"/etcdserverpb.Maintenance/Status");
        }
        // The DATA frame went through untouched.
        assert!(output
            .windows(14)
            .any(|w| w == frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")));
    }

    #[tokio::test]
    async fn a_connection_that_starts_with_a_valid_authority_goes_through_untouched() {
        let mut client = loona_hpack::Encoder::new();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":path", b"/etcdserverpb.KV/Put"),
            (b":authority", b"127.0.0.1:2379"),
        ];
        let block1 = client.encode(headers.clone());
        let block2 = client.encode(headers);
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let (a, b) = block1.split_at(block1.len() / 2);
        input.extend(frame(HEADERS, 0, 1, a));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &block2));
        assert_eq!(through(input.clone()).await.unwrap(), input);
    }

    #[tokio::test]
    async fn not_http2_goes_through_untouched() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(through(input.clone()).await.unwrap(), input);
    }

    #[tokio::test]
    async fn hostile_header_blocks_end_the_connection() {
        let mut input = PREFACE.to_vec();
        // A header block that never ends, beyond the bound.
        input.extend(frame(HEADERS, 0, 1, &vec![0u8; 16_000]));
        for _ in 0..(MAX_HEADER_BLOCK / 16_000 + 1) {
            input.extend(frame(CONTINUATION, 0, 1, &vec![0u8; 16_000]));
        }
        let err = through(input).await.unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");

        // Another stream's frame in the middle of a header block.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        input.extend(frame(0x0, 0, 1, b"x"));
        let err = through(input).await.unwrap_err();
        assert!(err.to_string().contains("interrupted"), "{err}");

        // Padding longer than the frame, and garbage HPACK.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 1]));
        assert!(through(input).await.is_err());
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]));
        assert!(through(input).await.is_err());
    }
}
