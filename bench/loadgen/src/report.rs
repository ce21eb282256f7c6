//! Results: the readable table, the `RESULT {json}` line, per-shard JSON
//! files, their merge, and a hand-written SVG plot.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::stats::{HistSnapshot, SERIES_STEP_NS};

pub type Obj = Map<String, Value>;

fn ms(us: u64) -> f64 {
    round_to(us as f64 / 1000.0, 3)
}

pub fn latency_json(h: &HistSnapshot) -> Value {
    if h.count == 0 {
        return Value::Null;
    }
    let q = |p: f64| ms(h.quantile(p).unwrap_or(0));
    json!({
        "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "p999": q(0.999),
        "max": ms(h.max), "mean": round_to(h.mean().unwrap_or(0.0) / 1000.0, 3),
        "count": h.count,
    })
}

pub fn round2(x: f64) -> f64 {
    round_to(x, 2)
}

/// Round for display: the shortest f64 near x with `digits` decimals.
pub fn round_to(x: f64, digits: usize) -> f64 {
    format!("{x:.digits$}").parse().unwrap_or(x)
}

/// Fill in the figures that derive from others (after a run or a merge).
pub fn derive(r: &mut Obj, lat: &HistSnapshot) {
    r.insert("latency_ms".into(), latency_json(lat));
    let first = r
        .get("first_publish_ns")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let last = r
        .get("last_delivery_ns")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let received = r.get("received").and_then(Value::as_u64).unwrap_or(0);
    if first > 0 && last > first {
        let secs = (last - first) as f64 / 1e9;
        r.insert("delivery_time_s".into(), json!(round_to(secs, 3)));
        r.insert(
            "deliveries_per_sec".into(),
            json!(round2(received as f64 / secs)),
        );
    }
    let expected = r.get("expected").and_then(Value::as_u64);
    if let (Some(e), Some(l)) = (expected, r.get("lost").and_then(Value::as_u64)) {
        let pct = if e > 0 {
            l as f64 * 100.0 / e as f64
        } else {
            0.0
        };
        r.insert("lost_pct".into(), json!(round_to(pct, 4)));
    }
    // Each update goes to one subscriber: server CPU per published update.
    let one_each = matches!(
        r.get("workload").and_then(Value::as_str),
        Some("many-topics" | "publish-batch")
    );
    let cpu = r.get("server_cpu_s").and_then(Value::as_f64);
    let published = r.get("published").and_then(Value::as_u64).unwrap_or(0);
    if let (true, Some(cpu), true) = (one_each, cpu, published > 0) {
        r.insert(
            "server_cpu_us_per_update".into(),
            json!(round_to(cpu * 1e6 / published as f64, 1)),
        );
    }
}

fn fmt_val(v: &Value) -> String {
    match v {
        Value::Null => "n/a".into(),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                group(u)
            } else if let Some(f) = n.as_f64() {
                if f.abs() >= 1000.0 {
                    group(f.round() as u64)
                } else {
                    format!("{f}")
                }
            } else {
                n.to_string()
            }
        }
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{k}={}", fmt_val(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

fn group(u: u64) -> String {
    let s = u.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('_');
        }
        out.push(c);
    }
    out
}

fn bytes(v: Option<&Value>) -> Option<String> {
    let b = v?.as_f64()?;
    Some(if b.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else if b.abs() >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    })
}

const ORDER: &[(&str, &str)] = &[
    ("target", "target"),
    ("workload", "workload"),
    ("shard", "shard"),
    ("params", "parameters"),
    ("subscribers", "subscribers (this process)"),
    ("connected", "connected"),
    ("connect_failed", "failed to connect"),
    ("connect_errors", "connect errors (all attempts)"),
    ("connect_timeouts", "connect timeouts"),
    ("status_errors", "non-200 answers"),
    ("last_bad_status", "last non-200 status"),
    ("protocol_errors", "protocol errors"),
    ("dropped", "streams dropped by server"),
    ("late_subscribers", "connected after publishing began"),
    ("connect_phase_s", "connect phase (s)"),
    ("connects_per_sec", "connect rate (/s)"),
    ("published", "updates accepted"),
    ("publish_rejected", "updates rejected"),
    ("publish_errors", "publish errors"),
    ("batches", "batch requests accepted"),
    ("pub_concurrency", "concurrent publish requests"),
    ("publish_rate", "publish rate (updates/s)"),
    ("publish_latency_ms", "publish latency per request (ms)"),
    ("expected", "deliveries expected"),
    ("received", "deliveries received"),
    ("lost", "lost"),
    ("lost_pct", "lost (%)"),
    ("duplicates", "duplicates"),
    ("out_of_order", "out of order (vs send order)"),
    ("order_variants", "distinct delivery orders seen"),
    ("wrong_topic", "wrong topic"),
    ("missing_topics", "subscribers missing their update"),
    ("foreign_events", "non-loadgen events"),
    ("delivery_time_s", "first publish -> last delivery (s)"),
    ("deliveries_per_sec", "deliveries/s"),
    ("latency_ms", "latency (ms)"),
    ("deliveries_per_read", "deliveries per socket read"),
    ("duration_s", "duration (s)"),
    ("connects", "connects"),
    ("disconnects", "disconnects"),
    ("disconnects_per_sec", "disconnects/s"),
    ("errors", "errors"),
    ("hold_s", "held (s)"),
    ("server_cpu_s", "server CPU time during run (s)"),
    ("server_cpu_us_per_update", "server CPU per update (us)"),
    ("loadgen_cpu_s", "loadgen CPU time (s)"),
    ("dropped_during_hold", "dropped during hold"),
];

const BYTE_KEYS: &[(&str, &str)] = &[
    ("server_rss_before", "server RSS before"),
    ("server_rss_after", "server RSS after connect"),
    ("server_rss_end", "server RSS at end"),
    ("rss_per_conn_bytes", "server RSS per connection"),
    ("sock_mem_before", "kernel TCP mem before"),
    ("sock_mem_after", "kernel TCP mem after"),
    (
        "sock_mem_per_conn_bytes",
        "kernel TCP mem per connection (both ends)",
    ),
    ("loadgen_rss", "loadgen RSS"),
];

pub fn print_table(r: &Obj) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "------------------------------------------------------------"
    );
    for (k, label) in ORDER {
        if let Some(v) = r.get(*k) {
            if v.is_null() && *k != "latency_ms" {
                continue;
            }
            let _ = writeln!(out, "{label:<42} {}", fmt_val(v));
        }
    }
    for (k, label) in BYTE_KEYS {
        if let Some(s) = bytes(r.get(*k)) {
            let _ = writeln!(out, "{label:<42} {s}");
        }
    }
    if let Some(Value::String(f)) = r.get("first_failure") {
        let _ = writeln!(out, "{:<42} {f}", "first failure");
    }
    let _ = writeln!(
        out,
        "------------------------------------------------------------"
    );
    print!("{out}");
}

/// Print the `RESULT` line (summary only, no histogram or series).
pub fn print_result(r: &Obj) {
    let mut s = r.clone();
    s.remove("hist");
    s.remove("series");
    println!("RESULT {}", Value::Object(s));
}

/// Merge per-shard JSON results (from `--json-out`).
pub fn merge(parts: Vec<Obj>) -> Result<(Obj, HistSnapshot, Vec<u64>), String> {
    if parts.is_empty() {
        return Err("nothing to merge".into());
    }
    let workload = parts[0].get("workload").cloned();
    if parts.iter().any(|p| p.get("workload") != workload.as_ref()) {
        return Err("results are from different workloads".into());
    }
    let mut out = parts[0].clone();
    out.insert("shard".into(), json!(format!("merged {}", parts.len())));
    const SUM: &[&str] = &[
        "subscribers",
        "connected",
        "connect_failed",
        "connect_attempts",
        "connect_errors",
        "connect_timeouts",
        "status_errors",
        "protocol_errors",
        "dropped",
        "late_subscribers",
        "published",
        "publish_rejected",
        "publish_errors",
        "batches",
        "expected",
        "received",
        "unique",
        "lost",
        "duplicates",
        "out_of_order",
        "wrong_topic",
        "missing_topics",
        "foreign_events",
        "socket_reads",
        "connects",
        "disconnects",
        "errors",
        "dropped_during_hold",
        "server_rss_before",
        "server_rss_after",
        "loadgen_rss",
    ];
    for k in SUM {
        let vals: Vec<u64> = parts
            .iter()
            .filter_map(|p| p.get(*k).and_then(Value::as_u64))
            .collect();
        if !vals.is_empty() {
            out.insert((*k).into(), json!(vals.iter().sum::<u64>()));
        }
    }
    // Server-side figures are the same process for every shard: keep the widest span.
    let min_of = |k: &str| {
        parts
            .iter()
            .filter_map(|p| p.get(k).and_then(Value::as_u64))
            .filter(|&v| v > 0)
            .min()
    };
    let max_of = |k: &str| {
        parts
            .iter()
            .filter_map(|p| p.get(k).and_then(Value::as_u64))
            .max()
    };
    for k in ["server_rss_before", "sock_mem_before"] {
        if let Some(v) = min_of(k) {
            out.insert(k.into(), json!(v));
        }
    }
    for k in ["server_rss_after", "server_rss_end", "sock_mem_after"] {
        if let Some(v) = max_of(k) {
            out.insert(k.into(), json!(v));
        }
    }
    let fsum = parts
        .iter()
        .filter_map(|p| p.get("loadgen_cpu_s").and_then(Value::as_f64))
        .sum::<f64>();
    out.insert("loadgen_cpu_s".into(), json!(round2(fsum)));
    for k in ["connect_phase_s", "duration_s", "server_cpu_s", "hold_s"] {
        let vals: Vec<f64> = parts
            .iter()
            .filter_map(|p| p.get(k).and_then(Value::as_f64))
            .collect();
        if !vals.is_empty() {
            out.insert(k.into(), json!(vals.iter().copied().fold(0.0, f64::max)));
        }
    }
    // The publishing shard's publish figures.
    if let Some(p) = parts
        .iter()
        .find(|p| p.get("published").and_then(Value::as_u64).unwrap_or(0) > 0)
    {
        for k in [
            "publish_rate",
            "publish_latency_ms",
            "first_failure",
            "pub_concurrency",
        ] {
            if let Some(v) = p.get(k) {
                out.insert(k.into(), v.clone());
            }
        }
    }
    if let Some(v) = min_of("first_publish_ns") {
        out.insert("first_publish_ns".into(), json!(v));
    }
    if let Some(v) = max_of("last_delivery_ns") {
        out.insert("last_delivery_ns".into(), json!(v));
    }
    let conns = out.get("connected").and_then(Value::as_u64).unwrap_or(0);
    if let (Some(a), Some(b)) = (
        out.get("server_rss_before").and_then(Value::as_u64),
        out.get("server_rss_after").and_then(Value::as_u64),
    ) {
        if conns > 0 {
            out.insert(
                "rss_per_conn_bytes".into(),
                json!((b as f64 - a as f64) / conns as f64),
            );
        }
    }
    if let (Some(a), Some(b)) = (
        out.get("sock_mem_before").and_then(Value::as_u64),
        out.get("sock_mem_after").and_then(Value::as_u64),
    ) {
        if conns > 0 {
            out.insert(
                "sock_mem_per_conn_bytes".into(),
                json!((b as f64 - a as f64) / conns as f64),
            );
        }
    }
    if let Some(d) = out
        .get("duration_s")
        .and_then(Value::as_f64)
        .filter(|&d| d > 0.0)
    {
        for (k, per) in [
            ("connects", "connects_per_sec"),
            ("disconnects", "disconnects_per_sec"),
        ] {
            if let Some(n) = out.get(k).and_then(Value::as_u64) {
                out.insert(per.into(), json!(round2(n as f64 / d)));
            }
        }
    }
    let mut hist = HistSnapshot::empty();
    for p in &parts {
        if let Some(h) = p.get("hist").and_then(HistSnapshot::from_json) {
            hist.merge(&h);
        }
    }
    // Align series on the earliest start.
    let t0 = min_of("series_start_ns").unwrap_or(0);
    let mut series: Vec<u64> = Vec::new();
    for p in &parts {
        let start = p
            .get("series_start_ns")
            .and_then(Value::as_u64)
            .unwrap_or(t0);
        let off = (start.saturating_sub(t0) / SERIES_STEP_NS) as usize;
        if let Some(arr) = p.get("series").and_then(Value::as_array) {
            for (i, v) in arr.iter().enumerate() {
                let j = i + off;
                if series.len() <= j {
                    series.resize(j + 1, 0);
                }
                series[j] += v.as_u64().unwrap_or(0);
            }
        }
    }
    out.insert("series_start_ns".into(), json!(t0));
    derive(&mut out, &hist);
    Ok((out, hist, series))
}

/// Latency CDF (log x axis) and, when given, deliveries per 100 ms over time.
pub fn svg(title: &str, hist: &HistSnapshot, series: &[u64]) -> String {
    let w = 900.0;
    let ph = 340.0; // panel height
    let panels = if series.is_empty() { 1.0 } else { 2.0 };
    let h = ph * panels + 40.0;
    let (ml, mr, mt, mb) = (70.0, 30.0, 50.0, 50.0);
    let pw = w - ml - mr;
    let inner_h = ph - mt - mb;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        w / 2.0,
        xml(title)
    );

    // Panel 1: latency CDF.
    let pts = hist.cdf_points();
    let top = 10.0;
    let y0 = top + mt;
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">End-to-end latency CDF</text>"#,
        ml + pw / 2.0,
        y0 - 12.0
    );
    if pts.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">no deliveries</text>"#,
            ml + 20.0,
            y0 + 40.0
        );
    } else {
        let lo = pts.first().unwrap().0.max(0.001);
        let hi = pts.last().unwrap().0.max(lo * 10.0);
        let dlo = lo.log10().floor();
        let dhi = hi.log10().ceil().max(dlo + 1.0);
        let xs = |v: f64| ml + (v.max(10f64.powf(dlo)).log10() - dlo) / (dhi - dlo) * pw;
        let ys = |f: f64| y0 + inner_h - f * inner_h;
        axes(&mut s, ml, y0, pw, inner_h);
        let mut d = dlo;
        while d <= dhi + 1e-9 {
            let x = ml + (d - dlo) / (dhi - dlo) * pw;
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="#ddd"/>"##,
                y0 + inner_h
            );
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                y0 + inner_h + 16.0,
                fmt_ms(10f64.powf(d))
            );
            d += 1.0;
        }
        for f in [0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0] {
            let y = ys(f);
            let _ = writeln!(
                s,
                r##"<line x1="{ml}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/>"##,
                ml + pw
            );
            if f != 0.99 {
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{:.1}" text-anchor="end">{}%</text>"#,
                    ml - 6.0,
                    y + 4.0,
                    f * 100.0
                );
            }
        }
        let mut path = String::new();
        let mut prev_f = 0.0;
        for (i, &(v, f)) in pts.iter().enumerate() {
            let x = xs(v);
            if i == 0 {
                let _ = write!(path, "M{x:.1},{:.1} ", ys(0.0));
            }
            let _ = write!(path, "L{x:.1},{:.1} L{x:.1},{:.1} ", ys(prev_f), ys(f));
            prev_f = f;
        }
        let _ = writeln!(
            s,
            r##"<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##
        );
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            if let Some(v) = hist.quantile(q) {
                let v = v as f64 / 1000.0;
                let x = xs(v);
                let _ = writeln!(
                    s,
                    r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="#d62728" stroke-dasharray="4,3"/>"##,
                    y0 + inner_h
                );
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{}" fill="#d62728">{label} {}</text>"##,
                    x + 4.0,
                    ys(q) - 4.0,
                    fmt_ms(v)
                );
            }
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">latency (ms, log scale)</text>"#,
            ml + pw / 2.0,
            y0 + inner_h + 34.0
        );
    }

    // Panel 2: throughput over time.
    if !series.is_empty() {
        let y0 = top + ph + mt;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">Deliveries per second (100 ms buckets) since first publish</text>"#,
            ml + pw / 2.0,
            y0 - 12.0
        );
        axes(&mut s, ml, y0, pw, inner_h);
        let max = series.iter().copied().max().unwrap_or(1).max(1) as f64 * 10.0;
        let ymax = nice_ceil(max);
        let n = series.len() as f64;
        let xs = |i: f64| ml + i / n * pw;
        let ys = |v: f64| y0 + inner_h - v / ymax * inner_h;
        for k in 0..=4 {
            let v = ymax * k as f64 / 4.0;
            let y = ys(v);
            let _ = writeln!(
                s,
                r##"<line x1="{ml}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/>"##,
                ml + pw
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                ml - 6.0,
                y + 4.0,
                short(v)
            );
        }
        let secs = n / 10.0;
        let step = nice_ceil(secs / 8.0).max(0.1);
        let mut t = 0.0;
        while t <= secs + 1e-9 {
            let x = xs(t * 10.0);
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                y0 + inner_h + 16.0,
                (t * 10.0).round() / 10.0
            );
            t += step;
        }
        let mut path = String::new();
        for (i, &c) in series.iter().enumerate() {
            let v = c as f64 * 10.0;
            let _ = write!(
                path,
                "{}{:.1},{:.1} L{:.1},{:.1} ",
                if i == 0 { "M" } else { "L" },
                xs(i as f64),
                ys(v),
                xs(i as f64 + 1.0),
                ys(v)
            );
        }
        let _ = writeln!(
            s,
            r##"<path d="{path}" fill="none" stroke="#2ca02c" stroke-width="1.5"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">time (s)</text>"#,
            ml + pw / 2.0,
            y0 + inner_h + 34.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn axes(s: &mut String, x: f64, y: f64, w: f64, h: f64) {
    let _ = writeln!(
        s,
        r##"<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="#888"/>"##
    );
}

fn nice_ceil(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * e >= v {
            return m * e;
        }
    }
    10.0 * e
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn fmt_ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1}s", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.0}ms")
    } else {
        format!("{v}ms")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Histogram;

    #[test]
    fn svg_renders() {
        let h = Histogram::new();
        for v in [100, 2000, 30000, 500000] {
            h.record(v);
        }
        let s = svg("t <x>", &h.snapshot(), &[1, 5, 3]);
        assert!(s.starts_with("<svg"));
        assert!(s.contains("t &lt;x&gt;"));
        assert!(s.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn merge_sums() {
        let h = Histogram::new();
        h.record(1000);
        let hj = h.snapshot().to_json();
        let mk = |conn: u64, recv: u64, publ: u64| {
            let mut o = Obj::new();
            o.insert("workload".into(), json!("fanout"));
            o.insert("connected".into(), json!(conn));
            o.insert("received".into(), json!(recv));
            o.insert("expected".into(), json!(recv));
            o.insert("lost".into(), json!(0));
            o.insert("published".into(), json!(publ));
            o.insert("first_publish_ns".into(), json!(1_000_000_000u64));
            o.insert("last_delivery_ns".into(), json!(2_000_000_000u64));
            o.insert("hist".into(), hj.clone());
            o.insert("series".into(), json!([recv]));
            o.insert("series_start_ns".into(), json!(1_000_000_000u64));
            o
        };
        let (m, hist, series) = merge(vec![mk(10, 100, 10), mk(5, 50, 0)]).unwrap();
        assert_eq!(m["connected"], json!(15));
        assert_eq!(m["received"], json!(150));
        assert_eq!(m["deliveries_per_sec"], json!(150.0));
        assert_eq!(hist.count, 2);
        assert_eq!(series, vec![150]);
    }

    #[test]
    fn cpu_per_update_only_where_each_update_has_one_subscriber() {
        let mk = |workload: &str| {
            let mut o = Obj::new();
            o.insert("workload".into(), json!(workload));
            o.insert("published".into(), json!(50_000));
            o.insert("server_cpu_s".into(), json!(2.5));
            o
        };
        let empty = HistSnapshot::empty();
        for w in ["many-topics", "publish-batch"] {
            let mut r = mk(w);
            derive(&mut r, &empty);
            assert_eq!(r["server_cpu_us_per_update"], json!(50.0), "{w}");
        }
        let mut r = mk("fanout");
        derive(&mut r, &empty);
        assert!(r.get("server_cpu_us_per_update").is_none());
        let mut r = mk("many-topics");
        r.insert("published".into(), json!(0));
        derive(&mut r, &empty);
        assert!(r.get("server_cpu_us_per_update").is_none());
    }
}
