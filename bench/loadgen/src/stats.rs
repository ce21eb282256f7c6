//! Shared counters, a lock-free log-linear latency histogram (microseconds,
//! < 0.8 % relative error) and a deliveries-per-100-ms time series.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS; // 128 sub-buckets per power of two
const LINEAR: u64 = 2 * SUB; // values below this are exact
pub const NBUCKETS: usize = (LINEAR + 40 * SUB) as usize;

pub fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let shift = e - SUB_BITS;
    let idx = LINEAR + (shift as u64 - 1) * SUB + ((v >> shift) - SUB);
    (idx as usize).min(NBUCKETS - 1)
}

/// Representative (midpoint) value of a bucket.
pub fn bucket_value(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < LINEAR {
        return idx;
    }
    let shift = (idx - LINEAR) / SUB + 1;
    let m = (idx - LINEAR) % SUB + SUB;
    (m << shift) + (1u64 << shift) / 2
}

pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            buckets: (0..NBUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    pub fn record(&self, us: u64) {
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(us, Relaxed);
        self.max.fetch_max(us, Relaxed);
    }

    pub fn snapshot(&self) -> HistSnapshot {
        HistSnapshot {
            counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            count: self.count.load(Relaxed),
            sum: self.sum.load(Relaxed),
            max: self.max.load(Relaxed),
        }
    }
}

/// A plain copy of a histogram, mergeable across shards.
#[derive(Clone)]
pub struct HistSnapshot {
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: u64,
    pub max: u64,
}

impl HistSnapshot {
    pub fn empty() -> Self {
        HistSnapshot {
            counts: vec![0; NBUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }

    /// Value (µs) at quantile q in [0, 1].
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_value(i).min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    pub fn merge(&mut self, other: &HistSnapshot) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// Sparse `[[bucket, count], ...]` for JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let sparse: Vec<serde_json::Value> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| serde_json::json!([i, c]))
            .collect();
        serde_json::json!({"buckets": sparse, "count": self.count, "sum_us": self.sum, "max_us": self.max})
    }

    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        let mut h = HistSnapshot::empty();
        for pair in v.get("buckets")?.as_array()? {
            let i = pair.get(0)?.as_u64()? as usize;
            let c = pair.get(1)?.as_u64()?;
            if i < NBUCKETS {
                h.counts[i] += c;
            }
        }
        h.count = v.get("count")?.as_u64()?;
        h.sum = v.get("sum_us")?.as_u64()?;
        h.max = v.get("max_us")?.as_u64()?;
        Some(h)
    }

    /// (latency_ms, cumulative fraction) points for a CDF plot.
    pub fn cdf_points(&self) -> Vec<(f64, f64)> {
        let mut pts = Vec::new();
        if self.count == 0 {
            return pts;
        }
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            seen += c;
            pts.push((
                bucket_value(i).min(self.max) as f64 / 1000.0,
                seen as f64 / self.count as f64,
            ));
        }
        pts
    }
}

pub const SERIES_STEP_NS: u64 = 100_000_000; // 100 ms
const SERIES_LEN: usize = 36_000; // one hour

/// Counters shared by all subscriber tasks of one run.
pub struct Stats {
    pub latency: Histogram,
    /// Events whose payload parsed as ours.
    pub received: AtomicU64,
    /// First receipt of a (topic, seq) by a subscriber.
    pub unique: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    pub wrong_topic: AtomicU64,
    /// Events whose data was not a loadgen payload.
    pub foreign_events: AtomicU64,
    pub comments: AtomicU64,
    /// Socket reads that returned data on established streams.
    pub reads: AtomicU64,
    pub first_recv_ns: AtomicU64,
    pub last_recv_ns: AtomicU64,

    pub connected: AtomicU64,
    pub connect_failed: AtomicU64,
    pub connect_attempts: AtomicU64,
    pub connect_errors: AtomicU64,
    pub connect_timeouts: AtomicU64,
    pub status_errors: AtomicU64,
    pub last_bad_status: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Streams that ended (or errored) while we still wanted them.
    pub dropped: AtomicU64,
    pub disconnects: AtomicU64,

    series_t0: AtomicU64,
    series: Vec<AtomicU64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            latency: Histogram::new(),
            received: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            wrong_topic: AtomicU64::new(0),
            foreign_events: AtomicU64::new(0),
            comments: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            first_recv_ns: AtomicU64::new(u64::MAX),
            last_recv_ns: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            connect_failed: AtomicU64::new(0),
            connect_attempts: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            connect_timeouts: AtomicU64::new(0),
            status_errors: AtomicU64::new(0),
            last_bad_status: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            series_t0: AtomicU64::new(0),
            series: (0..SERIES_LEN).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Start of the throughput time series (unix ns).
    pub fn set_series_start(&self, t0: u64) {
        self.series_t0.store(t0, Relaxed);
    }

    pub fn series_start(&self) -> u64 {
        self.series_t0.load(Relaxed)
    }

    /// Account a batch of deliveries received at `now`.
    pub fn add_batch(&self, b: &Batch, now: u64) {
        if b.received == 0 && b.foreign == 0 && b.comments == 0 {
            return;
        }
        if b.received > 0 {
            self.received.fetch_add(b.received, Relaxed);
            self.unique.fetch_add(b.unique, Relaxed);
            self.first_recv_ns.fetch_min(now, Relaxed);
            self.last_recv_ns.fetch_max(now, Relaxed);
            let t0 = self.series_t0.load(Relaxed);
            if t0 > 0 && now >= t0 {
                let i = ((now - t0) / SERIES_STEP_NS) as usize;
                if i < SERIES_LEN {
                    self.series[i].fetch_add(b.received, Relaxed);
                }
            }
        }
        if b.duplicates > 0 {
            self.duplicates.fetch_add(b.duplicates, Relaxed);
        }
        if b.out_of_order > 0 {
            self.out_of_order.fetch_add(b.out_of_order, Relaxed);
        }
        if b.wrong_topic > 0 {
            self.wrong_topic.fetch_add(b.wrong_topic, Relaxed);
        }
        if b.foreign > 0 {
            self.foreign_events.fetch_add(b.foreign, Relaxed);
        }
        if b.comments > 0 {
            self.comments.fetch_add(b.comments, Relaxed);
        }
    }

    /// Deliveries per 100 ms bucket, trimmed of trailing zeros.
    pub fn series(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.series.iter().map(|a| a.load(Relaxed)).collect();
        while v.last() == Some(&0) {
            v.pop();
        }
        v
    }
}

/// Per-read accumulation, flushed into [`Stats`] once per socket read.
#[derive(Default)]
pub struct Batch {
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub wrong_topic: u64,
    pub foreign: u64,
    pub comments: u64,
}

/// Per-subscriber sequence tracking for losses, duplicates and reordering.
pub struct SeqTracker {
    bits: Vec<u64>,
    max_seen: Option<u64>,
    pub distinct: u64,
}

impl SeqTracker {
    pub fn new(n: u64) -> Self {
        SeqTracker {
            bits: vec![0; n.div_ceil(64) as usize],
            max_seen: None,
            distinct: 0,
        }
    }

    /// Returns (is_new, out_of_order).
    pub fn see(&mut self, seq: u64) -> (bool, bool) {
        let ooo = matches!(self.max_seen, Some(m) if seq < m);
        self.max_seen = Some(self.max_seen.map_or(seq, |m| m.max(seq)));
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        let fresh = self.bits[w] & (1 << b) == 0;
        self.bits[w] |= 1 << b;
        if fresh {
            self.distinct += 1;
        }
        (fresh, ooo)
    }
}

/// A loadgen payload: `<seq> <topic> <send unix ns>[ <padding>]`.
pub fn parse_payload(data: &[u8]) -> Option<(u64, u64, u64)> {
    let mut it = data.split(|&b| b == b' ');
    let mut num = || -> Option<u64> {
        let f = it.next()?;
        if f.is_empty() || f.len() > 20 {
            return None;
        }
        let mut v: u64 = 0;
        for &c in f {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
        }
        Some(v)
    };
    Some((num()?, num()?, num()?))
}

pub fn make_payload(seq: u64, topic: u64, pad_to: usize) -> String {
    let mut s = format!("{seq} {topic} {}", now_ns());
    if s.len() + 1 < pad_to {
        s.push(' ');
        s.extend(std::iter::repeat_n('x', pad_to - s.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_monotonic_and_accurate() {
        let mut last = 0;
        for v in (0..5_000_000u64).step_by(7) {
            let b = bucket_of(v);
            assert!(b >= last);
            last = b;
            let rep = bucket_value(b) as f64;
            if v > 0 {
                assert!(
                    (rep - v as f64).abs() / (v as f64) < 0.01,
                    "v={v} rep={rep}"
                );
            }
        }
        assert!(bucket_of(u64::MAX) < NBUCKETS);
    }

    #[test]
    fn quantiles() {
        let h = Histogram::new();
        for v in 1..=1000 {
            h.record(v * 1000);
        }
        let s = h.snapshot();
        let p50 = s.quantile(0.5).unwrap() as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.01);
        assert_eq!(s.quantile(1.0).unwrap(), 1_000_000);
        let j = s.to_json();
        let back = HistSnapshot::from_json(&j).unwrap();
        assert_eq!(back.count, 1000);
        assert_eq!(back.quantile(0.9), s.quantile(0.9));
    }

    #[test]
    fn seq_tracker() {
        let mut t = SeqTracker::new(10);
        assert_eq!(t.see(0), (true, false));
        assert_eq!(t.see(2), (true, false));
        assert_eq!(t.see(1), (true, true));
        assert_eq!(t.see(2), (false, false)); // a duplicate of the maximum is not reordering
        assert_eq!(t.see(70), (true, false));
        assert_eq!(t.distinct, 4);
    }

    #[test]
    fn payload_roundtrip() {
        let p = make_payload(12, 3, 64);
        assert_eq!(p.len(), 64);
        let (s, t, ns) = parse_payload(p.as_bytes()).unwrap();
        assert_eq!((s, t), (12, 3));
        assert!(ns > 0);
        assert!(parse_payload(b"hello world").is_none());
        assert!(parse_payload(b"1 2").is_none());
    }
}
