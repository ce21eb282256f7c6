//! Compressed event streams (`Accept-Encoding: gzip`, `--compression`).
//!
//! A gzip stream is a header, DEFLATE blocks, and a trailer (CRC-32 and
//! length of what was compressed). Each chunk a stream sends (one event,
//! mostly) is compressed on its own: a fresh compressor state, ended with a
//! sync flush, so the chunk's blocks refer to nothing before them and end
//! on a byte boundary. Such a piece can follow any other in any stream.
//! That makes one compression per event serve every subscriber it goes to:
//! the hub hands the same `Bytes` of an event to each subscriber's queue,
//! and the last compressed events are kept by identity ([`Shared`]), so a
//! 1,000-subscriber fanout compresses each event once, not 1,000 times.
//! Each stream keeps only its running CRC-32 and length (combined from
//! each piece's), about 40 bytes: no window, no dictionary.
//!
//! A security property too: no event's compression depends on another's,
//! so what one publisher puts in an event cannot be used to guess, from
//! compressed lengths, what another event held (the cross-message form of
//! BREACH/CRIME).
//!
//! The price: no back-references across events, so small events gain less
//! than with one compressor per stream (figures in bench/RESULTS.md).
//! Chunks under `min_size` bytes are sent as stored blocks (5 bytes more,
//! no compression work).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, FlushCompress};
use futures_util::Stream;
use parking_lot::Mutex;

/// The gzip header: deflate, no name, no time, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// A final, empty block with fixed codes: BFINAL=1, BTYPE=01, end of block.
const LAST_BLOCK: [u8; 2] = [0x03, 0x00];
/// How many recently compressed chunks are kept for the next streams.
const SHARED: usize = 256;
/// Chunks longer than this are compressed for their stream alone, never
/// kept: several events coalesced for one slow stream are that stream's
/// only, and the cache stays within 256 x 16 KiB (plus their compressed
/// copies).
const SHARED_MAX_CHUNK: usize = 16 * 1024;

/// One chunk, compressed.
struct Piece {
    /// The chunk it was made from: kept so that its address cannot be
    /// reused by another chunk while this entry lives.
    key: Bytes,
    deflated: Bytes,
    crc: crc32fast::Hasher,
}

/// The last chunks compressed, by identity (address and length of their
/// `Bytes`): the same event handed to many subscribers.
#[derive(Default)]
struct Shared {
    pieces: Mutex<VecDeque<Arc<Piece>>>,
}

static CACHE: std::sync::LazyLock<Shared> = std::sync::LazyLock::new(Shared::default);

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Compress> =
        std::cell::RefCell::new(Compress::new(Compression::new(6), false));
}

fn same(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

impl Shared {
    fn piece(&self, chunk: &Bytes, min_size: usize) -> Arc<Piece> {
        if chunk.len() > SHARED_MAX_CHUNK {
            let mut crc = crc32fast::Hasher::new();
            crc.update(chunk);
            return Arc::new(Piece {
                key: Bytes::new(),
                deflated: deflate(chunk, min_size),
                crc,
            });
        }
        if let Some(p) = self.pieces.lock().iter().find(|p| same(&p.key, chunk)) {
            return p.clone();
        }
        let piece = Arc::new(Piece {
            key: chunk.clone(),
            deflated: deflate(chunk, min_size),
            crc: {
                let mut h = crc32fast::Hasher::new();
                h.update(chunk);
                h
            },
        });
        let mut pieces = self.pieces.lock();
        if pieces.len() == SHARED {
            pieces.pop_front();
        }
        pieces.push_back(piece.clone());
        piece
    }
}

/// `chunk` as self-contained, byte-aligned, non-final DEFLATE blocks.
pub fn deflate(chunk: &[u8], min_size: usize) -> Bytes {
    if chunk.len() < min_size {
        return stored(chunk);
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        let start = c.total_in();
        let mut out: Vec<u8> = Vec::with_capacity(chunk.len() / 2 + 64);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let done = (c.total_in() - start) as usize;
            if c.compress_vec(&chunk[done..], &mut out, FlushCompress::Sync)
                .is_err()
            {
                // Cannot happen with a valid state; send it stored.
                return stored(chunk);
            }
            let done = (c.total_in() - start) as usize;
            // A sync flush is complete once it stops with room to spare.
            if done == chunk.len() && out.len() < out.capacity() {
                break;
            }
        }
        Bytes::from(out)
    })
}

/// `chunk` as stored (uncompressed) blocks.
fn stored(chunk: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(chunk.len() + 5 * (chunk.len() / 65_535 + 1));
    for part in chunk.chunks(65_535) {
        out.put_u8(0);
        out.put_u16_le(part.len() as u16);
        out.put_u16_le(!(part.len() as u16));
        out.put_slice(part);
    }
    if chunk.is_empty() {
        out.put_slice(&[0, 0, 0, 0xff, 0xff]);
    }
    out.freeze()
}

/// Whether the request accepts gzip (`Accept-Encoding`, `q=0` refuses).
pub fn accepts_gzip(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| {
            let mut params = part.split(';');
            let coding = params.next().unwrap_or("").trim();
            let q_zero = params.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            !q_zero && (coding.eq_ignore_ascii_case("gzip") || coding == "*")
        })
}

/// An event stream, gzip-compressed chunk by chunk (see the module doc).
pub struct GzipStream<S> {
    inner: S,
    min_size: usize,
    started: bool,
    finished: bool,
    crc: crc32fast::Hasher,
    /// Bytes compressed so far (the trailer keeps them modulo 2^32).
    len: u64,
}

impl<S> GzipStream<S> {
    pub fn new(inner: S, min_size: usize) -> GzipStream<S> {
        GzipStream {
            inner,
            min_size,
            started: false,
            finished: false,
            crc: crc32fast::Hasher::new(),
            len: 0,
        }
    }
}

impl<S> Stream for GzipStream<S>
where
    S: Stream<Item = Result<Bytes, Infallible>> + Unpin,
{
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if !this.started {
            // The header goes out at once: the response starts like any
            // other stream, before the first event.
            this.started = true;
            return Poll::Ready(Some(Ok(Bytes::from_static(&HEADER))));
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                if chunk.is_empty() {
                    return Poll::Ready(Some(Ok(chunk)));
                }
                let piece = CACHE.piece(&chunk, this.min_size);
                this.crc.combine(&piece.crc);
                this.len += chunk.len() as u64;
                Poll::Ready(Some(Ok(piece.deflated.clone())))
            }
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Ready(None) => {
                // The stream ended: the last block and the trailer.
                this.finished = true;
                let crc = std::mem::take(&mut this.crc);
                let mut end = BytesMut::with_capacity(10);
                end.put_slice(&LAST_BLOCK);
                end.put_u32_le(crc.finalize());
                end.put_u32_le(this.len as u32);
                Poll::Ready(Some(Ok(end.freeze())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .expect("a valid gzip stream");
        out
    }

    #[tokio::test]
    async fn pieces_shared_by_streams_make_valid_gzip_streams() {
        let a = Bytes::from("id: 1\ndata: {\"cpu\": 0.51, \"mem\": 1234}\n\n".repeat(4));
        let b = Bytes::from_static(b":\n\n");
        let c = Bytes::from(vec![b'x'; 200_000]);
        let chunks = vec![a.clone(), b.clone(), c.clone(), a.clone(), Bytes::new()];
        let mut plain = Vec::new();
        for ch in &chunks {
            plain.extend_from_slice(ch);
        }
        for min_size in [0, 64, usize::MAX] {
            // Two streams over the same chunks: the second reuses pieces.
            for _ in 0..2 {
                let inner = futures_util::stream::iter(chunks.clone().into_iter().map(Ok));
                let out: Vec<Bytes> = GzipStream::new(inner, min_size)
                    .map(|r| r.unwrap())
                    .collect()
                    .await;
                let bytes: Vec<u8> = out.iter().flat_map(|b| b.to_vec()).collect();
                assert_eq!(gunzip(&bytes), plain, "min_size {min_size}");
            }
        }
        // A stream cut after any piece decodes what came before it (each
        // piece is flushed: a reader gets every event at once).
        let inner = futures_util::stream::iter(chunks.clone().into_iter().map(Ok));
        let out: Vec<Bytes> = GzipStream::new(inner, 0)
            .map(|r| r.unwrap())
            .collect()
            .await;
        let mut so_far = Vec::new();
        let mut expected = Vec::new();
        for (i, piece) in out.iter().enumerate().take(out.len() - 1) {
            so_far.extend_from_slice(piece);
            if i > 0 {
                expected.extend_from_slice(&chunks[i - 1]);
            }
            let mut got = Vec::new();
            let mut d = flate2::read::GzDecoder::new(&so_far[..]);
            let _ = d.read_to_end(&mut got);
            assert_eq!(got, expected, "after piece {i}");
        }
        // The large chunk compressed well.
        assert!(deflate(&c, 0).len() < 2_000);
    }

    #[test]
    fn accept_encoding_is_read_with_q_values() {
        let h = |v: &str| {
            let mut m = axum::http::HeaderMap::new();
            m.insert(axum::http::header::ACCEPT_ENCODING, v.parse().unwrap());
            accepts_gzip(&m)
        };
        assert!(h("gzip, deflate, br"));
        assert!(h("br;q=1.0, GZIP;q=0.5"));
        assert!(h("*"));
        assert!(!h("gzip;q=0"));
        assert!(!h("br, zstd"));
        assert!(!h("identity"));
        assert!(!accepts_gzip(&axum::http::HeaderMap::new()));
    }
}
