//! herald-loadgen: SSE load generator for Herald, nchan and Pushpin.
//! See README.md for the workloads, options and sharding.

mod conn;
mod h2sub;
mod http;
mod publish;
mod report;
/// Herald's own SSE parser, the very file (`herald::sse` in the hub).
#[path = "../../../src/sse.rs"]
#[allow(dead_code)]
mod sse;
mod stats;
mod sub;
mod sys;
mod target;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

use publish::{Plan, PubConfig, PubCounters, PubResult};
use report::{derive, round2, Obj};
use stats::{now_ns, HistSnapshot};
use sub::{Ctx, Slot};
use target::{Kind, Target};

const DEFAULT_PUB_CONCURRENCY: usize = 8;

const EXAMPLES: &str = "\
Examples:
  herald-loadgen fanout --target herald --url http://127.0.0.1:8080 --token $JWT --subscribers 1000 --updates 2000
  herald-loadgen many-topics --target nchan --url http://127.0.0.1:8081 --subscribers 5000
  herald-loadgen publish-batch --token $JWT --subscribers 10000 --updates 100000 --batch-size 1000 --server-pid 123
  herald-loadgen idle --target pushpin --url http://127.0.0.1:7999 --connections 10000 --hold 10 --server-pid 123 --server-pid 124
  herald-loadgen churn --target herald --url http://127.0.0.1:8080 --token $JWT --connections 200 --duration 10 --publish-rate 50
  herald-loadgen slow-readers --target herald --url http://127.0.0.1:8080 --connections 300 --duration 60 --topics 10
  herald-loadgen merge shard0.json shard1.json --plot merged.svg";

#[derive(Parser)]
#[command(name = "herald-loadgen", version, about = "SSE push-server load generator (Herald / nchan / Pushpin)", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N subscribers on one topic, M updates published to it: throughput and latency.
    Fanout {
        #[arg(long)]
        subscribers: u64,
        #[arg(long)]
        updates: u64,
        /// Publish rate limit (updates/s); unlimited when absent.
        #[arg(long)]
        rate: Option<f64>,
        #[command(flatten)]
        common: Common,
    },
    /// N subscribers each on its own topic, one update per topic: exact routing.
    ManyTopics {
        #[arg(long)]
        subscribers: u64,
        /// Updates per topic (round-robin over the topics): more publishes per run.
        #[arg(long, default_value_t = 1)]
        rounds: u64,
        /// Publish rate limit (updates/s); unlimited when absent.
        #[arg(long)]
        rate: Option<f64>,
        #[command(flatten)]
        common: Common,
    },
    /// Herald only: N subscribers each on its own topic, U updates published through
    /// the batch endpoint (update i to topic i % N), B per request.
    PublishBatch {
        #[arg(long)]
        subscribers: u64,
        /// Updates in all (update i goes to topic i % N, its seq per topic is i / N).
        #[arg(long)]
        updates: u64,
        /// Updates per batch request (Herald's default limit is 10,000).
        #[arg(long)]
        batch_size: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Open N streams and hold them: server memory per connection.
    Idle {
        #[arg(long)]
        connections: u64,
        /// Seconds to hold the connections once all are open.
        #[arg(long, default_value_t = 10)]
        hold: u64,
        /// Spread the connections over this many topics (connection i -> topic i % T).
        #[arg(long, default_value_t = 1)]
        topics: u64,
        #[command(flatten)]
        common: Common,
    },
    /// N connections that close and reopen as fast as possible while updates are published.
    Churn {
        #[arg(long)]
        connections: u64,
        /// Seconds to churn.
        #[arg(long)]
        duration: u64,
        /// Updates per second published during the churn (0: none).
        #[arg(long, default_value_t = 10.0)]
        publish_rate: f64,
        /// Topics (connection i subscribes to topic i % T; updates round-robin).
        #[arg(long, default_value_t = 1)]
        topics: u64,
        /// Keep each connection open this long (reading events) before closing it.
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
        #[command(flatten)]
        common: Common,
    },
    /// N clients that read far too slowly or stop reading, reconnecting each time the
    /// server ends their stream: exercises slow-subscriber cut-off and write deadlines.
    SlowReaders {
        #[arg(long)]
        connections: u64,
        /// Seconds to run.
        #[arg(long)]
        duration: u64,
        /// Topics (connection i subscribes to topic i % T). Publish to them from another
        /// process (e.g. churn --publish-rate with the same --run-id).
        #[arg(long, default_value_t = 1)]
        topics: u64,
        /// Herald: each connection subscribes to this many consecutive topics
        /// (i % T, i+1 % T, ...), so it receives more than one topic's rate.
        #[arg(long, default_value_t = 1)]
        topics_per_conn: u64,
        /// Share of the connections that stop reading entirely; the others trickle.
        #[arg(long, default_value_t = 0.5)]
        stalled_fraction: f64,
        /// A trickling reader reads at most this many bytes per read...
        #[arg(long, default_value_t = 64)]
        read_bytes: usize,
        /// ...every this many ms.
        #[arg(long, default_value_t = 1000)]
        read_interval_ms: u64,
        /// A trickling reader trickles for this many seconds, then drains.
        #[arg(long, default_value_t = 60)]
        max_life: u64,
        /// A stalled reader reads nothing for this many seconds...
        #[arg(long, default_value_t = 45)]
        stall: u64,
        /// After its stall or trickle a reader drains for up to this many seconds: the
        /// server ended the stream (`cut_off`) or it is still being served (`survived`).
        #[arg(long, default_value_t = 10)]
        drain: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Merge per-shard JSON files written with --json-out into one report.
    Merge {
        files: Vec<PathBuf>,
        #[arg(long)]
        plot: Option<PathBuf>,
        #[arg(long)]
        json_out: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Server under test.
    #[arg(long, value_enum, default_value = "herald")]
    target: Kind,
    /// Subscribe base URL (default: herald :8080, nchan :8081, pushpin :7999 on 127.0.0.1).
    #[arg(long)]
    url: Option<String>,
    /// Publish base URL (default: --url; pushpin: http://127.0.0.1:5561).
    #[arg(long)]
    publish_url: Option<String>,
    /// Herald publisher JWT.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// JWT sent by subscribers (Authorization: Bearer); none by default.
    #[arg(long)]
    sub_token: Option<String>,
    /// Spread subscriber connections over N loopback source addresses from 127.0.0.1 on
    /// (default: one per 2,000 connections, at least 1 (4 for churn), at most 250).
    #[arg(long)]
    source_ips: Option<u32>,
    /// Maximum connection attempts in flight.
    #[arg(long, default_value_t = 500)]
    connect_concurrency: usize,
    /// Per-attempt timeout (TCP connect + response head), ms.
    #[arg(long, default_value_t = 10_000)]
    connect_timeout_ms: u64,
    /// Retries after a failed subscribe attempt before counting it as failed.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Upper bound for the whole connect phase, seconds.
    #[arg(long, default_value_t = 180)]
    connect_phase_timeout: u64,
    /// Pause after all subscribers are connected, before publishing / measuring, ms.
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Upper bound for waiting for deliveries after publishing starts, seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Stop waiting once publishing is done and nothing arrived for this long, ms.
    #[arg(long, default_value_t = 5_000)]
    quiet_ms: u64,
    /// Publisher keep-alive connections (each one request at a time)
    /// [default: 8; publish-batch: 1].
    #[arg(long)]
    pub_concurrency: Option<usize>,
    /// Stop starting new publishes this many seconds after the first (the run still
    /// waits for the deliveries of the accepted ones); no limit when absent.
    #[arg(long)]
    publish_for: Option<f64>,
    /// Pad each update's data to this many bytes (0: ~40 bytes, no padding).
    #[arg(long, default_value_t = 0)]
    payload_bytes: usize,
    /// Topic names are bench-<run-id>-<n>; give the same id to all shards of a run.
    #[arg(long)]
    run_id: Option<String>,
    /// Handle only subscribers i with i % K == I; only shard 0 publishes.
    #[arg(long, default_value = "0/1", value_parser = parse_shard)]
    shard: (u64, u64),
    /// Do not publish (extra subscriber-only process).
    #[arg(long)]
    no_publish: bool,
    /// Barrier: publishing (or, for receive-only shards, the measurement) starts at this unix time in ms.
    #[arg(long)]
    start_at: Option<u64>,
    /// Server PID(s) whose VmRSS is read before and after (repeatable; summed).
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Write a latency CDF (and throughput) SVG here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write the full JSON result (with histogram and series, for `merge`) here.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// No progress display (it is also off when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
    /// Runtime worker threads (default: number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Read buffer per connection, bytes.
    #[arg(long, default_value_t = 4096)]
    read_buf: usize,
    /// Close subscriber sockets with RST (SO_LINGER 0) instead of FIN.
    #[arg(long)]
    linger0: bool,
    /// Per-request publish timeout, ms.
    #[arg(long, default_value_t = 10_000)]
    publish_timeout_ms: u64,
    /// Subscribers over HTTP/2, this many streams per connection (0: HTTP/1.1,
    /// one connection each). TLS with ALPN h2 for https://, h2c (prior
    /// knowledge) for http://. Publishers stay on HTTP/1.1. fanout,
    /// many-topics, publish-batch and idle only.
    #[arg(long, default_value_t = 0)]
    h2_streams: u64,
    /// SO_RCVBUF of subscriber sockets, bytes (0: kernel default; slow-readers: 4096).
    #[arg(long, default_value_t = 0)]
    rcvbuf: u32,
    /// TCP_MAXSEG of subscriber sockets, bytes (0: kernel default; slow-readers: 1024).
    #[arg(long, default_value_t = 0)]
    mss: u32,
}

fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (i, k) = s.split_once('/').ok_or("expected I/K, e.g. 0/2")?;
    let i: u64 = i.parse().map_err(|_| "bad shard index")?;
    let k: u64 = k.parse().map_err(|_| "bad shard count")?;
    if k == 0 || i >= k {
        return Err("need 0 <= I < K".into());
    }
    Ok((i, k))
}

fn main() {
    let cli = Cli::parse();
    let threads = match &cli.cmd {
        Cmd::Fanout { common, .. }
        | Cmd::ManyTopics { common, .. }
        | Cmd::PublishBatch { common, .. }
        | Cmd::Idle { common, .. }
        | Cmd::Churn { common, .. }
        | Cmd::SlowReaders { common, .. } => common.threads,
        Cmd::Merge { .. } => Some(1),
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(t) = threads {
        rt.worker_threads(t.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = rt.block_on(async move {
        match run(cli.cmd).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

async fn run(cmd: Cmd) -> Result<(), String> {
    let (result, hist, series, common) = match cmd {
        Cmd::Fanout {
            subscribers,
            updates,
            rate,
            common,
        } => {
            let spec = Delivery {
                workload: "fanout",
                subscribers,
                topic_of: |_| 0,
                plan: Plan::OneTopic,
                total_updates: updates,
                per_sub: updates,
                rate,
                batch: None,
                params: json!({"subscribers": subscribers, "updates": updates, "rate": rate}),
            };
            let (r, h, s) = run_delivery(&common, spec).await?;
            (r, Some(h), s, common)
        }
        Cmd::ManyTopics {
            subscribers,
            rounds,
            rate,
            common,
        } => {
            let rounds = rounds.max(1);
            let spec = Delivery {
                workload: "many-topics",
                subscribers,
                topic_of: |i| i,
                plan: if rounds == 1 {
                    Plan::TopicPerUpdate
                } else {
                    Plan::RoundRobin(subscribers)
                },
                total_updates: subscribers * rounds,
                per_sub: rounds,
                rate,
                batch: None,
                params: json!({"subscribers": subscribers, "rounds": rounds, "rate": rate}),
            };
            let (r, h, s) = run_delivery(&common, spec).await?;
            (r, Some(h), s, common)
        }
        Cmd::PublishBatch {
            subscribers,
            updates,
            batch_size,
            common,
        } => {
            if common.target != Kind::Herald {
                return Err(format!(
                    "publish-batch needs --target herald: {} has no batch publish endpoint \
                     (Herald's is POST /.well-known/mercure/batch)",
                    common.target.name()
                ));
            }
            if subscribers == 0 || batch_size == 0 {
                return Err(
                    "publish-batch needs --subscribers and --batch-size of at least 1".into(),
                );
            }
            let spec = Delivery {
                workload: "publish-batch",
                subscribers,
                topic_of: |i| i,
                plan: Plan::RoundRobin(subscribers),
                total_updates: updates,
                per_sub: updates.div_ceil(subscribers),
                rate: None,
                batch: Some(batch_size),
                params: json!({"subscribers": subscribers, "updates": updates, "batch_size": batch_size}),
            };
            let (r, h, s) = run_delivery(&common, spec).await?;
            (r, Some(h), s, common)
        }
        Cmd::Idle {
            connections,
            hold,
            topics,
            common,
        } => {
            let r = run_idle(&common, connections, hold, topics.max(1)).await?;
            (r, None, Vec::new(), common)
        }
        Cmd::Churn {
            connections,
            duration,
            publish_rate,
            topics,
            hold_ms,
            common,
        } => {
            let (r, h, s) = run_churn(
                &common,
                connections,
                duration,
                publish_rate,
                topics.max(1),
                hold_ms,
            )
            .await?;
            (r, Some(h), s, common)
        }
        Cmd::SlowReaders {
            connections,
            duration,
            topics,
            topics_per_conn,
            stalled_fraction,
            read_bytes,
            read_interval_ms,
            max_life,
            stall,
            drain,
            mut common,
        } => {
            if common.rcvbuf == 0 {
                common.rcvbuf = 4096;
            }
            if common.mss == 0 {
                common.mss = 1024;
            }
            let topics = topics.max(1);
            let per_conn = topics_per_conn.clamp(1, topics);
            let params = json!({"connections": connections, "duration": duration, "topics": topics,
                "topics_per_conn": per_conn, "mss": common.mss,
                "stalled_fraction": stalled_fraction, "read_bytes": read_bytes,
                "read_interval_ms": read_interval_ms, "max_life": max_life, "stall": stall,
                "drain": drain, "rcvbuf": common.rcvbuf});
            let stalled = (connections as f64 * stalled_fraction.clamp(0.0, 1.0)).round() as u64;
            let plan = |deadline| SlowSpec {
                trickle: sub::Slowness::Trickle {
                    bytes: read_bytes,
                    every: Duration::from_millis(read_interval_ms),
                },
                stall: sub::Slowness::Stall {
                    stall: Duration::from_secs(stall),
                },
                max_life: Duration::from_secs(max_life),
                drain: Duration::from_secs(drain),
                deadline,
            };
            let r = run_slow(
                &common,
                connections,
                stalled,
                duration,
                (topics, per_conn),
                plan,
                params,
            )
            .await?;
            (r, None, Vec::new(), common)
        }
        Cmd::Merge {
            files,
            plot,
            json_out,
        } => return run_merge(files, plot, json_out),
    };
    emit(result, hist, series, common.plot, common.json_out)
}

fn emit(
    mut result: Obj,
    hist: Option<HistSnapshot>,
    series: Vec<u64>,
    plot: Option<PathBuf>,
    json_out: Option<PathBuf>,
) -> Result<(), String> {
    report::print_table(&result);
    report::print_result(&result);
    if let Some(h) = &hist {
        result.insert("hist".into(), h.to_json());
        result.insert("series".into(), json!(series));
    }
    if let Some(p) = json_out {
        std::fs::write(&p, format!("{}\n", Value::Object(result.clone())))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = plot {
        let title = format!(
            "{} / {} {}",
            result.get("target").and_then(Value::as_str).unwrap_or("?"),
            result
                .get("workload")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            result
                .get("params")
                .map(|v| v.to_string())
                .unwrap_or_default()
        );
        let svg = report::svg(&title, &hist.unwrap_or_else(HistSnapshot::empty), &series);
        std::fs::write(&p, svg).map_err(|e| format!("{}: {e}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn run_merge(
    files: Vec<PathBuf>,
    plot: Option<PathBuf>,
    json_out: Option<PathBuf>,
) -> Result<(), String> {
    let mut parts = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for line in text.lines() {
            let line = line.trim();
            let line = line.strip_prefix("RESULT ").unwrap_or(line);
            if !line.starts_with('{') {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(o)) => parts.push(o),
                _ => return Err(format!("{}: not a JSON result line", f.display())),
            }
        }
    }
    let (r, h, s) = report::merge(parts)?;
    emit(r, Some(h), s, plot, json_out)
}

/// Everything a workload run needs.
struct Env {
    ctx: Arc<Ctx>,
    /// Global subscriber indices handled by this process.
    mine: Vec<u64>,
    progress: bool,
    publishes: bool,
}

fn env(c: &Common, total: u64, min_ips: u32, needs_publish: bool) -> Result<Env, String> {
    let nofile = sys::raise_nofile();
    let (si, sk) = c.shard;
    if sk > 1 && c.run_id.is_none() {
        return Err("--shard needs --run-id (the same for every shard)".into());
    }
    let mine: Vec<u64> = (si..total).step_by(sk as usize).collect();
    let default_url = match c.target {
        Kind::Herald => "http://127.0.0.1:8080",
        Kind::Nchan => "http://127.0.0.1:8081",
        Kind::Pushpin => "http://127.0.0.1:7999",
    };
    let url = c.url.clone().unwrap_or_else(|| default_url.into());
    let sub_url = http::HttpUrl::parse(&url)?;
    let pub_url = match (&c.publish_url, c.target) {
        (Some(u), _) => http::HttpUrl::parse(u)?,
        (None, Kind::Pushpin) => http::HttpUrl::parse("http://127.0.0.1:5561")?,
        (None, _) => sub_url.clone(),
    };
    let publishes = needs_publish && si == 0 && !c.no_publish;
    if c.target == Kind::Herald && c.token.is_none() && publishes {
        eprintln!("warning: no --token: Herald will refuse to publish");
    }
    let want = mine.len() as u64 + 64;
    if nofile < want {
        eprintln!("warning: open-file limit {nofile} < {want} needed; use --shard to split the load over processes");
    }
    // The kernel's ephemeral-port search gets slow as one source address fills
    // up (connect cost grows with the ports in use), so keep ~2,000 per address.
    let nips = c
        .source_ips
        .unwrap_or_else(|| {
            (mine.len() as u64)
                .div_ceil(2_000)
                .clamp(min_ips as u64, 250) as u32
        })
        .max(1);
    let run_id = c
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{:x}", (now_ns() / 1_000_000) & 0xff_ffff_ffff));
    let target = Target {
        kind: c.target,
        sub: sub_url,
        publ: pub_url,
        token: c.token.clone(),
        sub_token: c.sub_token.clone(),
        run_id,
    };
    let ctx = Ctx {
        target,
        stats: stats::Stats::new(),
        src_ips: sys::source_ips(1 + si as u32 * nips, nips),
        connect_sem: Semaphore::new(c.connect_concurrency.max(1)),
        connect_timeout: Duration::from_millis(c.connect_timeout_ms),
        retries: c.retries,
        read_buf: c.read_buf.max(256),
        linger0: c.linger0,
        rcvbuf: c.rcvbuf,
        mss: c.mss,
        slots: (0..mine.len()).map(|_| Slot::default()).collect(),
    };
    Ok(Env {
        ctx: Arc::new(ctx),
        mine,
        progress: !c.no_progress && sys::stderr_is_tty(),
        publishes,
    })
}

/// A periodically redrawn status line on stderr.
struct Progress {
    done: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    label: String,
    started: Instant,
}

impl Progress {
    fn start<F>(enabled: bool, label: &str, total: u64, f: F) -> Progress
    where
        F: Fn() -> (u64, String) + Send + 'static,
    {
        let done = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        eprintln!("[{label}] ...");
        let handle = enabled.then(|| {
            let done = done.clone();
            let label = label.to_string();
            tokio::spawn(async move {
                while !done.load(Relaxed) {
                    let (cur, extra) = f();
                    let width = 30usize;
                    let filled = if total > 0 {
                        ((cur.min(total) as f64 / total as f64) * width as f64) as usize
                    } else {
                        0
                    };
                    let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
                    eprint!(
                        "\r\x1b[2K[{label}] [{bar}] {cur}/{total} {extra} {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                    sleep(Duration::from_millis(200)).await;
                }
            })
        });
        Progress {
            done,
            handle,
            label: label.to_string(),
            started,
        }
    }

    async fn finish(self, summary: String) {
        self.done.store(true, Relaxed);
        if let Some(h) = self.handle {
            let _ = h.await;
            eprint!("\r\x1b[2K");
        }
        eprintln!(
            "[{}] {summary} ({:.2}s)",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// Wait until every subscriber of this process connected or failed.
async fn connect_phase(e: &Env, c: &Common) -> f64 {
    let ctx = e.ctx.clone();
    let n = e.mine.len() as u64;
    let t = Instant::now();
    let p = {
        let ctx = ctx.clone();
        Progress::start(e.progress, "connect", n, move || {
            let s = &ctx.stats;
            let failed = s.connect_failed.load(Relaxed);
            let errs = s.connect_errors.load(Relaxed)
                + s.connect_timeouts.load(Relaxed)
                + s.status_errors.load(Relaxed)
                + s.protocol_errors.load(Relaxed);
            (
                s.connected.load(Relaxed),
                format!("failed {failed} errors {errs}"),
            )
        })
    };
    let deadline = t + Duration::from_secs(c.connect_phase_timeout);
    loop {
        let s = &ctx.stats;
        if s.connected.load(Relaxed) + s.connect_failed.load(Relaxed) >= n {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("warning: connect phase timed out");
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let s = &ctx.stats;
    p.finish(format!(
        "{} connected, {} failed",
        s.connected.load(Relaxed),
        s.connect_failed.load(Relaxed)
    ))
    .await;
    secs
}

fn sleep_until_unix_ms(ms: u64) -> Option<Duration> {
    let now = now_ns() / 1_000_000;
    (ms > now).then(|| Duration::from_millis(ms - now))
}

async fn stop_and_join(stop: watch::Sender<bool>, handles: Vec<JoinHandle<()>>) {
    let _ = stop.send(true);
    let deadline = Instant::now() + Duration::from_secs(15);
    for h in handles {
        let abort = h.abort_handle();
        if tokio::time::timeout_at(deadline, h).await.is_err() {
            abort.abort();
        }
    }
}

/// Server-side and kernel figures at one moment.
struct Snapshot {
    rss: Option<u64>,
    sock: Option<sys::SockStat>,
    cpu: Option<f64>,
    self_cpu: f64,
}

fn snapshot(c: &Common) -> Snapshot {
    Snapshot {
        rss: sys::rss_sum(&c.server_pid),
        sock: sys::sockstat(),
        cpu: sys::cpu_seconds_sum(&c.server_pid),
        self_cpu: sys::self_cpu_seconds(),
    }
}

/// CPU used by the server(s) and by the load generator between two snapshots.
fn cpu_figures(r: &mut Obj, a: &Snapshot, b: &Snapshot) {
    if let (Some(x), Some(y)) = (a.cpu, b.cpu) {
        r.insert("server_cpu_s".into(), json!(report::round_to(y - x, 2)));
    }
    r.insert(
        "loadgen_cpu_s".into(),
        json!(report::round_to(b.self_cpu - a.self_cpu, 2)),
    );
}

fn base_result(c: &Common, e: &Env, workload: &str, params: Value) -> Obj {
    let mut r = Obj::new();
    r.insert("target".into(), json!(c.target.name()));
    r.insert("workload".into(), json!(workload));
    r.insert("params".into(), params);
    r.insert("run_id".into(), json!(e.ctx.target.run_id));
    r.insert(
        "shard".into(),
        json!(format!("{}/{}", c.shard.0, c.shard.1)),
    );
    r.insert("source_ips".into(), json!(e.ctx.src_ips.len()));
    r.insert("subscribers".into(), json!(e.mine.len()));
    r
}

fn conn_figures(r: &mut Obj, s: &stats::Stats) {
    r.insert("connected".into(), json!(s.connected.load(Relaxed)));
    r.insert(
        "connect_failed".into(),
        json!(s.connect_failed.load(Relaxed)),
    );
    r.insert(
        "connect_attempts".into(),
        json!(s.connect_attempts.load(Relaxed)),
    );
    r.insert(
        "connect_errors".into(),
        json!(s.connect_errors.load(Relaxed)),
    );
    r.insert(
        "connect_timeouts".into(),
        json!(s.connect_timeouts.load(Relaxed)),
    );
    r.insert("status_errors".into(), json!(s.status_errors.load(Relaxed)));
    let bad = s.last_bad_status.load(Relaxed);
    if bad > 0 {
        r.insert("last_bad_status".into(), json!(bad));
    }
    r.insert(
        "protocol_errors".into(),
        json!(s.protocol_errors.load(Relaxed)),
    );
    r.insert("dropped".into(), json!(s.dropped.load(Relaxed)));
}

fn delivery_figures(r: &mut Obj, s: &stats::Stats) {
    r.insert("received".into(), json!(s.received.load(Relaxed)));
    r.insert("unique".into(), json!(s.unique.load(Relaxed)));
    r.insert("duplicates".into(), json!(s.duplicates.load(Relaxed)));
    r.insert("out_of_order".into(), json!(s.out_of_order.load(Relaxed)));
    r.insert("wrong_topic".into(), json!(s.wrong_topic.load(Relaxed)));
    r.insert(
        "foreign_events".into(),
        json!(s.foreign_events.load(Relaxed)),
    );
    r.insert("comments".into(), json!(s.comments.load(Relaxed)));
    let reads = s.reads.load(Relaxed);
    r.insert("socket_reads".into(), json!(reads));
    let received = s.received.load(Relaxed);
    if received > 0 {
        r.insert(
            "deliveries_per_read".into(),
            json!(report::round_to(received as f64 / reads.max(1) as f64, 2)),
        );
    }
    let last = s.last_recv_ns.load(Relaxed);
    if last > 0 {
        r.insert(
            "first_delivery_ns".into(),
            json!(s.first_recv_ns.load(Relaxed)),
        );
        r.insert("last_delivery_ns".into(), json!(last));
    }
    r.insert("series_start_ns".into(), json!(s.series_start()));
}

fn publish_figures(r: &mut Obj, p: &PubResult) {
    r.insert("published".into(), json!(p.accepted));
    r.insert("publish_rejected".into(), json!(p.rejected));
    r.insert("publish_errors".into(), json!(p.errors));
    if let Some(b) = p.batches {
        r.insert("batches".into(), json!(b));
    }
    if p.first_ns > 0 {
        r.insert("first_publish_ns".into(), json!(p.first_ns));
    }
    if p.last_ns > p.first_ns && p.first_ns > 0 {
        let secs = (p.last_ns - p.first_ns) as f64 / 1e9;
        r.insert(
            "publish_duration_s".into(),
            json!(report::round_to(secs, 3)),
        );
        r.insert(
            "publish_rate".into(),
            json!(round2((p.accepted + p.rejected) as f64 / secs)),
        );
    }
    r.insert(
        "publish_latency_ms".into(),
        report::latency_json(&p.latency),
    );
    if let Some(f) = &p.first_failure {
        r.insert("first_failure".into(), json!(f));
    }
}

struct Delivery {
    workload: &'static str,
    subscribers: u64,
    topic_of: fn(u64) -> u64,
    plan: Plan,
    total_updates: u64,
    /// Updates each subscriber should get when every publish is accepted.
    per_sub: u64,
    rate: Option<f64>,
    /// Herald batch requests of this many updates instead of single publishes.
    batch: Option<u64>,
    params: Value,
}

/// Start this process's long-lived subscribers: one task each over HTTP/1.1,
/// or one task per connection of `--h2-streams` streams over HTTP/2.
fn spawn_subscribers(
    e: &Env,
    c: &Common,
    topic_of: impl Fn(u64) -> u64,
    expected_updates: u64,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    if c.h2_streams == 0 {
        return e
            .mine
            .iter()
            .enumerate()
            .map(|(local, &i)| {
                tokio::spawn(sub::subscriber(
                    e.ctx.clone(),
                    i,
                    local,
                    topic_of(i),
                    expected_updates,
                    stop.clone(),
                ))
            })
            .collect();
    }
    let per = c.h2_streams as usize;
    let mut handles = Vec::new();
    for (n, chunk) in e.mine.chunks(per).enumerate() {
        let members = chunk
            .iter()
            .enumerate()
            .map(|(k, &i)| h2sub::Member {
                local: n * per + k,
                topic: topic_of(i),
            })
            .collect();
        handles.push(tokio::spawn(h2sub::connection(
            e.ctx.clone(),
            n as u64,
            members,
            expected_updates,
            stop.clone(),
        )));
    }
    handles
}

/// fanout, many-topics and publish-batch: connect, settle, publish, wait for deliveries.
async fn run_delivery(c: &Common, d: Delivery) -> Result<(Obj, HistSnapshot, Vec<u64>), String> {
    let e = env(c, d.subscribers, 1, true)?;
    let ctx = e.ctx.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let before = snapshot(c);
    let handles = spawn_subscribers(&e, c, d.topic_of, d.per_sub, &stop_rx);
    let connect_s = connect_phase(&e, c).await;
    let after = snapshot(c);
    sleep(Duration::from_millis(c.settle_ms)).await;
    if let Some(ms) = c.start_at {
        match sleep_until_unix_ms(ms) {
            Some(wait) => {
                eprintln!(
                    "[barrier] waiting {:.1}s for --start-at",
                    wait.as_secs_f64()
                );
                sleep(wait).await;
            }
            None => eprintln!("warning: --start-at is already past"),
        }
    }
    let start_ns = now_ns();
    ctx.stats.set_series_start(start_ns);
    let at_start = snapshot(c);
    let deadline = Instant::now() + Duration::from_secs(c.timeout);
    let publish_until = match c.publish_for {
        Some(s) => deadline.min(Instant::now() + Duration::from_secs_f64(s.max(0.0))),
        None => deadline,
    };
    let counters = Arc::new(PubCounters::default());
    let concurrency = c.pub_concurrency.unwrap_or(if d.batch.is_some() {
        1
    } else {
        DEFAULT_PUB_CONCURRENCY
    });
    let publisher = e.publishes.then(|| {
        let cfg = PubConfig {
            plan: d.plan,
            total: d.total_updates,
            rate: d.rate,
            concurrency,
            pad_to: c.payload_bytes,
            batch: d.batch,
            deadline: publish_until,
            request_timeout: Duration::from_millis(c.publish_timeout_ms),
        };
        tokio::spawn(publish::run(ctx.clone(), cfg, counters.clone()))
    });
    let connected_at_start = ctx.stats.connected.load(Relaxed);
    // Rough live target for the progress display.
    let live_expected = {
        let counters = counters.clone();
        let publishes = e.publishes;
        let per_sub = d.per_sub;
        // Does each update go to one subscriber (a topic each) or to all?
        let one_each = !matches!(d.plan, Plan::OneTopic);
        let share = if one_each {
            e.mine.len() as f64 / d.subscribers.max(1) as f64
        } else {
            1.0
        };
        move || -> u64 {
            if !publishes {
                return connected_at_start * per_sub;
            }
            let acc = counters.accepted.load(Relaxed);
            if one_each {
                (acc as f64 * share) as u64
            } else {
                connected_at_start * acc
            }
        }
    };
    let total_target = if e.publishes && !matches!(d.plan, Plan::OneTopic) {
        e.mine
            .iter()
            .map(|&i| d.plan.updates_for((d.topic_of)(i), d.total_updates))
            .sum()
    } else {
        connected_at_start * d.per_sub
    };
    let p = {
        let ctx = ctx.clone();
        let counters = counters.clone();
        Progress::start(e.progress, "deliver", total_target, move || {
            let s = &ctx.stats;
            (
                s.unique.load(Relaxed),
                format!(
                    "published {} dup {}",
                    counters.accepted.load(Relaxed),
                    s.duplicates.load(Relaxed)
                ),
            )
        })
    };
    let quiet = Duration::from_millis(c.quiet_ms);
    let mut last_seen = (u64::MAX, Instant::now());
    let mut timed_out = false;
    loop {
        let pub_done = publisher.as_ref().is_none_or(|h| h.is_finished());
        let got = ctx.stats.unique.load(Relaxed);
        let exp = live_expected();
        if pub_done && got >= exp && (exp > 0 || e.publishes) {
            break;
        }
        let recv = ctx.stats.received.load(Relaxed);
        if recv != last_seen.0 {
            last_seen = (recv, Instant::now());
        }
        if pub_done && (e.publishes || recv > 0) && last_seen.1.elapsed() >= quiet {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    let got = ctx.stats.unique.load(Relaxed);
    p.finish(format!(
        "{got} deliveries{}",
        if timed_out { " (timed out)" } else { "" }
    ))
    .await;
    let pres = match publisher {
        Some(h) => h.await.ok(),
        None => None,
    };
    let end = snapshot(c);
    stop_and_join(stop_tx, handles).await;

    // Per-subscriber expectations.
    let accepted_for = |topic: u64| -> u64 {
        match &pres {
            Some(p) => match d.plan {
                Plan::OneTopic => p.accepted_per_topic[0],
                _ => p
                    .accepted_per_topic
                    .get(topic as usize)
                    .copied()
                    .unwrap_or(0),
            },
            None => d.plan.updates_for(topic, d.total_updates),
        }
    };
    let (mut expected, mut lost, mut late, mut missing) = (0u64, 0u64, 0u64, 0u64);
    let mut orders = std::collections::HashSet::new();
    for (local, &i) in e.mine.iter().enumerate() {
        let slot = &ctx.slots[local];
        let at = slot.connected_at.load(Relaxed);
        if at == 0 {
            continue;
        }
        if at >= start_ns {
            late += 1;
            continue;
        }
        let exp = accepted_for((d.topic_of)(i));
        let got = slot.distinct.load(Relaxed).min(exp);
        expected += exp;
        lost += exp - got;
        if exp > 0 && got == 0 {
            missing += 1;
        }
        if exp > 1 && got == exp {
            orders.insert(slot.order_hash.load(Relaxed));
        }
    }
    let s = &ctx.stats;
    let mut r = base_result(c, &e, d.workload, d.params);
    conn_figures(&mut r, s);
    r.insert("late_subscribers".into(), json!(late));
    r.insert("connect_phase_s".into(), json!(round2(connect_s)));
    if let Some(p) = &pres {
        r.insert("pub_concurrency".into(), json!(concurrency));
        publish_figures(&mut r, p);
    }
    r.insert("expected".into(), json!(expected));
    delivery_figures(&mut r, s);
    r.insert("lost".into(), json!(lost));
    if d.per_sub == 1 {
        r.insert("missing_topics".into(), json!(missing));
    } else {
        // Among subscribers that got every update: how many different orders (1 = all identical).
        r.insert("order_variants".into(), json!(orders.len()));
    }
    cpu_figures(&mut r, &at_start, &end);
    r.insert("timed_out".into(), json!(timed_out));
    if pres.is_none() {
        // Receive-only shard: the barrier time stands in for the first publish.
        r.insert("first_publish_ns".into(), json!(start_ns));
    }
    rss_figures(
        &mut r,
        &before,
        &after,
        Some(&end),
        s.connected.load(Relaxed),
    );
    let hist = s.latency.snapshot();
    derive(&mut r, &hist);
    Ok((r, hist, s.series()))
}

fn rss_figures(
    r: &mut Obj,
    before: &Snapshot,
    after: &Snapshot,
    end: Option<&Snapshot>,
    conns: u64,
) {
    let page = sys::page_size();
    if let (Some(a), Some(b)) = (before.rss, after.rss) {
        r.insert("server_rss_before".into(), json!(a));
        r.insert("server_rss_after".into(), json!(b));
        if conns > 0 {
            r.insert(
                "rss_per_conn_bytes".into(),
                json!(((b as f64 - a as f64) / conns as f64).round()),
            );
        }
    }
    if let Some(rss) = end.and_then(|e| e.rss) {
        r.insert("server_rss_end".into(), json!(rss));
    }
    if let (Some(a), Some(b)) = (before.sock, after.sock) {
        r.insert("sock_mem_before".into(), json!(a.mem_pages * page));
        r.insert("sock_mem_after".into(), json!(b.mem_pages * page));
        r.insert("tcp_inuse_before".into(), json!(a.inuse));
        r.insert("tcp_inuse_after".into(), json!(b.inuse));
        if conns > 0 {
            r.insert(
                "sock_mem_per_conn_bytes".into(),
                json!(
                    (((b.mem_pages as f64 - a.mem_pages as f64) * page as f64) / conns as f64)
                        .round()
                ),
            );
        }
    }
    if let Some(me) = sys::self_rss() {
        r.insert("loadgen_rss".into(), json!(me));
    }
}

async fn run_idle(c: &Common, n: u64, hold: u64, topics: u64) -> Result<Obj, String> {
    let e = env(c, n, 1, false)?;
    let ctx = e.ctx.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let before = snapshot(c);
    let handles = spawn_subscribers(&e, c, |i| i % topics, 1, &stop_rx);
    let connect_s = connect_phase(&e, c).await;
    sleep(Duration::from_millis(c.settle_ms)).await;
    if let Some(wait) = c.start_at.and_then(sleep_until_unix_ms) {
        // Sharded: measure once every shard has had time to connect.
        eprintln!(
            "[barrier] waiting {:.1}s for --start-at",
            wait.as_secs_f64()
        );
        sleep(wait).await;
    }
    let after = snapshot(c);
    let dropped_before = ctx.stats.dropped.load(Relaxed);
    let p = {
        let ctx = ctx.clone();
        Progress::start(e.progress, "hold", hold, move || {
            let s = &ctx.stats;
            (
                0,
                format!(
                    "open {}",
                    s.connected.load(Relaxed) - s.dropped.load(Relaxed)
                ),
            )
        })
    };
    let t = Instant::now();
    sleep(Duration::from_secs(hold)).await;
    let s = &ctx.stats;
    let dropped_hold = s.dropped.load(Relaxed) - dropped_before;
    p.finish(format!(
        "held {} connections, {} dropped",
        s.connected.load(Relaxed) - s.dropped.load(Relaxed),
        dropped_hold
    ))
    .await;
    let end = snapshot(c);
    let held = t.elapsed().as_secs_f64();
    let mut r = base_result(
        c,
        &e,
        "idle",
        json!({"connections": n, "hold": hold, "topics": topics}),
    );
    conn_figures(&mut r, s);
    r.insert("connect_phase_s".into(), json!(round2(connect_s)));
    if connect_s > 0.0 {
        r.insert(
            "connects_per_sec".into(),
            json!(round2(s.connected.load(Relaxed) as f64 / connect_s)),
        );
    }
    r.insert("hold_s".into(), json!(round2(held)));
    r.insert("dropped_during_hold".into(), json!(dropped_hold));
    r.insert("comments".into(), json!(s.comments.load(Relaxed)));
    r.insert("received".into(), json!(s.received.load(Relaxed)));
    rss_figures(
        &mut r,
        &before,
        &after,
        Some(&end),
        s.connected.load(Relaxed),
    );
    cpu_figures(&mut r, &before, &end);
    r.insert("latency_ms".into(), Value::Null);
    stop_and_join(stop_tx, handles).await;
    Ok(r)
}

async fn run_churn(
    c: &Common,
    n: u64,
    duration: u64,
    rate: f64,
    topics: u64,
    hold_ms: u64,
) -> Result<(Obj, HistSnapshot, Vec<u64>), String> {
    let e = env(c, n, 4, rate > 0.0)?;
    let ctx = e.ctx.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(ms) = c.start_at {
        if let Some(wait) = sleep_until_unix_ms(ms) {
            sleep(wait).await;
        }
    }
    let start_ns = now_ns();
    ctx.stats.set_series_start(start_ns);
    let before = snapshot(c);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(duration);
    let mut handles = Vec::with_capacity(e.mine.len());
    for &i in &e.mine {
        handles.push(tokio::spawn(sub::churner(
            ctx.clone(),
            i,
            i % topics,
            Duration::from_millis(hold_ms),
            deadline,
            stop_rx.clone(),
        )));
    }
    let counters = Arc::new(PubCounters::default());
    let publisher = (e.publishes && rate > 0.0).then(|| {
        let cfg = PubConfig {
            plan: Plan::RoundRobin(topics),
            total: (rate * duration as f64).ceil() as u64,
            rate: Some(rate),
            concurrency: c.pub_concurrency.unwrap_or(DEFAULT_PUB_CONCURRENCY),
            pad_to: c.payload_bytes,
            batch: None,
            deadline,
            request_timeout: Duration::from_millis(c.publish_timeout_ms),
        };
        tokio::spawn(publish::run(ctx.clone(), cfg, counters.clone()))
    });
    let p = {
        let ctx = ctx.clone();
        let counters = counters.clone();
        Progress::start(e.progress, "churn", duration, move || {
            let s = &ctx.stats;
            let errs = s.connect_errors.load(Relaxed)
                + s.connect_timeouts.load(Relaxed)
                + s.status_errors.load(Relaxed)
                + s.protocol_errors.load(Relaxed);
            (
                t0.elapsed().as_secs(),
                format!(
                    "s | connects {} errors {} published {} delivered {}",
                    s.connected.load(Relaxed),
                    errs,
                    counters.accepted.load(Relaxed),
                    s.received.load(Relaxed)
                ),
            )
        })
    };
    tokio::time::sleep_until(deadline).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let s = &ctx.stats;
    p.finish(format!("{} connects", s.connected.load(Relaxed)))
        .await;
    let pres = match publisher {
        Some(h) => h.await.ok(),
        None => None,
    };
    let end = snapshot(c);
    stop_and_join(stop_tx, handles).await;
    let mut r = base_result(
        c,
        &e,
        "churn",
        json!({"connections": n, "duration": duration, "publish_rate": rate, "topics": topics, "hold_ms": hold_ms}),
    );
    let connects = s.connected.load(Relaxed);
    let disconnects = s.disconnects.load(Relaxed);
    let errors = s.connect_errors.load(Relaxed)
        + s.connect_timeouts.load(Relaxed)
        + s.status_errors.load(Relaxed)
        + s.protocol_errors.load(Relaxed);
    conn_figures(&mut r, s);
    r.insert("duration_s".into(), json!(round2(elapsed)));
    r.insert("connects".into(), json!(connects));
    r.insert("disconnects".into(), json!(disconnects));
    r.insert(
        "connects_per_sec".into(),
        json!(round2(connects as f64 / elapsed)),
    );
    r.insert(
        "disconnects_per_sec".into(),
        json!(round2(disconnects as f64 / elapsed)),
    );
    r.insert("errors".into(), json!(errors));
    if let Some(p) = &pres {
        publish_figures(&mut r, p);
    }
    delivery_figures(&mut r, s);
    cpu_figures(&mut r, &before, &end);
    if let Some(rss) = end.rss {
        r.insert("server_rss_end".into(), json!(rss));
    }
    if let Some(me) = sys::self_rss() {
        r.insert("loadgen_rss".into(), json!(me));
    }
    let hist = s.latency.snapshot();
    derive(&mut r, &hist);
    Ok((r, hist, s.series()))
}

/// What slow-readers needs, given the run's deadline.
struct SlowSpec {
    trickle: sub::Slowness,
    stall: sub::Slowness,
    max_life: Duration,
    drain: Duration,
    deadline: Instant,
}

async fn run_slow(
    c: &Common,
    n: u64,
    stalled: u64,
    duration: u64,
    (topics, per_conn): (u64, u64),
    spec: impl Fn(Instant) -> SlowSpec,
    params: Value,
) -> Result<Obj, String> {
    let e = env(c, n, 1, false)?;
    let ctx = e.ctx.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(wait) = c.start_at.and_then(sleep_until_unix_ms) {
        sleep(wait).await;
    }
    let before = snapshot(c);
    let t0 = Instant::now();
    let spec = spec(t0 + Duration::from_secs(duration));
    let counters = Arc::new(sub::SlowCounters::default());
    let mut handles = Vec::with_capacity(e.mine.len());
    let mut n_stalled = 0u64;
    for &i in &e.mine {
        // Stalled and trickling readers interleave, so every topic gets both kinds.
        let stalls = stalled > 0 && (i * stalled) % n < stalled;
        n_stalled += stalls as u64;
        let plan = sub::SlowPlan {
            mode: if stalls { spec.stall } else { spec.trickle },
            max_life: spec.max_life,
            drain: spec.drain,
            deadline: spec.deadline,
        };
        handles.push(tokio::spawn(sub::slow_reader(
            ctx.clone(),
            i,
            (0..per_conn).map(|k| (i + k) % topics).collect(),
            plan,
            counters.clone(),
            stop_rx.clone(),
        )));
    }
    let p = {
        let ctx = ctx.clone();
        let counters = counters.clone();
        Progress::start(e.progress, "slow-readers", duration, move || {
            let cut = counters.cut_off_clean.load(Relaxed) + counters.cut_off_abort.load(Relaxed);
            (
                t0.elapsed().as_secs(),
                format!(
                    "s | sessions {} cut off {} survived {} open {}",
                    counters.sessions.load(Relaxed),
                    cut,
                    counters.survived.load(Relaxed),
                    ctx.stats.connected.load(Relaxed) - ctx.stats.disconnects.load(Relaxed)
                ),
            )
        })
    };
    tokio::time::sleep_until(spec.deadline).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let end = snapshot(c);
    stop_and_join(stop_tx, handles).await;
    let k = &counters;
    let cut = k.cut_off_clean.load(Relaxed) + k.cut_off_abort.load(Relaxed);
    p.finish(format!(
        "{} sessions, {cut} cut off by the server",
        k.sessions.load(Relaxed)
    ))
    .await;
    let s = &ctx.stats;
    let mut r = base_result(c, &e, "slow-readers", params);
    conn_figures(&mut r, s);
    r.insert("stalled_readers".into(), json!(n_stalled));
    r.insert("duration_s".into(), json!(round2(elapsed)));
    r.insert("sessions".into(), json!(k.sessions.load(Relaxed)));
    r.insert("cut_off".into(), json!(cut));
    r.insert("cut_off_clean".into(), json!(k.cut_off_clean.load(Relaxed)));
    r.insert("cut_off_abort".into(), json!(k.cut_off_abort.load(Relaxed)));
    r.insert("survived".into(), json!(k.survived.load(Relaxed)));
    r.insert("open_at_end".into(), json!(k.at_deadline.load(Relaxed)));
    if cut > 0 {
        r.insert(
            "cut_off_after_s_mean".into(),
            json!(round2(
                k.cut_off_life_ms.load(Relaxed) as f64 / cut as f64 / 1000.0
            )),
        );
    }
    r.insert("bytes_read".into(), json!(k.bytes.load(Relaxed)));
    r.insert("events_read".into(), json!(k.events.load(Relaxed)));
    cpu_figures(&mut r, &before, &end);
    if let Some(rss) = end.rss {
        r.insert("server_rss_end".into(), json!(rss));
    }
    r.insert("latency_ms".into(), Value::Null);
    Ok(r)
}
