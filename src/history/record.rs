//! The on-disk form of one update: a small, versioned binary record.
//!
//! Why not JSON or bincode: the record is read back on every deep resume
//! (100,000 of them must replay in well under a second) and stored once per
//! update, so it is kept compact and cheap to decode, with every length
//! checked so that a damaged record is reported, never trusted.
//!
//! Layout (integers little-endian, `str` = u32 length + UTF-8 bytes):
//! `u8 version=1 | u64 published_at_ms | u8 flags (1 private, 2 type,
//! 4 retry) | [u64 retry] | str id | [str type] | u32 topic count |
//! str topic... | str data`

use crate::update::Update;

const VERSION: u8 = 1;
const PRIVATE: u8 = 1;
const HAS_TYPE: u8 = 2;
const HAS_RETRY: u8 = 4;

/// Encode an update with its publication time.
pub fn encode(update: &Update, at_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        32 + update.id.len()
            + update.data.len()
            + update.topics.iter().map(|t| t.len() + 4).sum::<usize>(),
    );
    out.push(VERSION);
    out.extend_from_slice(&at_ms.to_le_bytes());
    let mut flags = 0;
    if update.private {
        flags |= PRIVATE;
    }
    if update.event_type.is_some() {
        flags |= HAS_TYPE;
    }
    if update.retry.is_some() {
        flags |= HAS_RETRY;
    }
    out.push(flags);
    if let Some(r) = update.retry {
        out.extend_from_slice(&r.to_le_bytes());
    }
    put_str(&mut out, &update.id);
    if let Some(t) = &update.event_type {
        put_str(&mut out, t);
    }
    out.extend_from_slice(&(update.topics.len() as u32).to_le_bytes());
    for t in &update.topics {
        put_str(&mut out, t);
    }
    put_str(&mut out, &update.data);
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Decode a record into the update (its SSE frame rebuilt) and its
/// publication time.
pub fn decode(bytes: &[u8]) -> Result<(Update, u64), String> {
    let mut r = Reader { bytes, pos: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(format!(
            "unknown record version {version} (written by a newer Herald?)"
        ));
    }
    let at_ms = r.u64()?;
    let flags = r.u8()?;
    let retry = if flags & HAS_RETRY != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    let id = r.string()?;
    let event_type = if flags & HAS_TYPE != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let count = r.u32()? as usize;
    // Each topic takes at least 4 bytes: a count beyond that is damage, not
    // a reason to allocate.
    if count > r.remaining() / 4 {
        return Err(format!("topic count {count} exceeds the record"));
    }
    let mut topics = Vec::with_capacity(count);
    for _ in 0..count {
        topics.push(r.string()?);
    }
    let data = r.string()?;
    if r.remaining() != 0 {
        return Err(format!("{} trailing bytes", r.remaining()));
    }
    let update = Update::new(id, topics, flags & PRIVATE != 0, event_type, retry, data);
    Ok((update, at_ms))
}

/// The id and publication time alone, for retention (no frame is built).
pub fn decode_id_and_time(bytes: &[u8]) -> Result<(String, u64), String> {
    let mut r = Reader { bytes, pos: 0 };
    r.u8()?;
    let at_ms = r.u64()?;
    let flags = r.u8()?;
    if flags & HAS_RETRY != 0 {
        r.u64()?;
    }
    Ok((r.string()?, at_ms))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.remaining() < n {
            return Err(format!(
                "truncated: needs {n} bytes at offset {}, {} left",
                self.pos,
                self.remaining()
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        for u in [
            Update::new(
                "urn:uuid:1".into(),
                vec!["https://ex.net/a".into(), "b".into()],
                true,
                Some("ping".into()),
                Some(1500),
                "line1\nline2\r\nline3".into(),
            ),
            Update::new("x".into(), vec!["t".into()], false, None, None, "".into()),
        ] {
            let bytes = encode(&u, 1234);
            let (back, at) = decode(&bytes).unwrap();
            assert_eq!(back, u);
            assert_eq!(at, 1234);
            assert_eq!(decode_id_and_time(&bytes).unwrap(), (u.id.clone(), 1234u64));
        }
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let u = Update::new(
            "id".into(),
            vec!["t".into()],
            false,
            Some("e".into()),
            Some(3),
            "data".into(),
        );
        let bytes = encode(&u, 1);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        let mut version = bytes.clone();
        version[0] = 9;
        assert!(decode(&version).unwrap_err().contains("version"));
        // A huge topic count must not allocate.
        let mut count = encode(
            &Update::new("i".into(), vec![], false, None, None, "".into()),
            0,
        );
        let at = count.len() - 8;
        count[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&count).is_err());
    }
}
