//! `herald serve`: wire configuration, keys, hub and HTTP together, run
//! until SIGINT/SIGTERM, then shut down cleanly.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;

use crate::auth::{mint_hs256, Verifier};
use crate::cluster::{Cluster, ClusterConfig};
use crate::config::{Config, DurabilityMode, HistoryBackend, KeySource};
use crate::history::{DiskHistory, Durability, HistoryStore, MemoryHistory, Retention};
use crate::http::conn::{
    detect_vanished_peer, refuse, serve_connection, ConnLimiter, Edge, Timeouts, STATS,
};
use crate::http::tls::Certificates;
use crate::http::{router, AppState, HUB_PATH};
use crate::hub::{Hub, HubConfig};
use crate::log::Log;

/// How long shutdown waits for open connections to finish after every
/// stream has been ended.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Accept errors (out of file descriptors, mostly) come in storms: one log
/// line per this interval, with the number left unlogged.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

async fn verifier(source: &Option<KeySource>) -> anyhow::Result<Option<Verifier>> {
    Ok(match source {
        None => None,
        Some(KeySource::Secret(s)) => Some(Verifier::hmac(s)?),
        Some(KeySource::PublicKeyFile(p)) => Some(Verifier::public_key_file(&p.to_string_lossy())?),
        Some(KeySource::Jwks(url)) => {
            Some(Verifier::jwks(crate::auth::jwks::Jwks::start(url).await?))
        }
    })
}

pub async fn run(mut config: Config) -> anyhow::Result<()> {
    // Zero setup: with no key at all, make a development key and show how
    // to use it.
    let mut dev_key = None;
    if config.publisher_key.is_none() && config.subscriber_key.is_none() {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        config.publisher_key = Some(KeySource::Secret(key.clone()));
        config.subscriber_key = Some(KeySource::Secret(key.clone()));
        dev_key = Some(key);
    }
    crate::topic::set_pattern_budget(config.max_distinct_patterns);
    let limits = |v: Verifier| v.with_limits(config.jwt_leeway, config.max_token_len);
    // One key set for both roles when both name the same JWKS.
    let publisher = verifier(&config.publisher_key)
        .await
        .context("publisher key")?
        .map(limits);
    let subscriber = if config.subscriber_key == config.publisher_key {
        publisher.clone()
    } else {
        verifier(&config.subscriber_key)
            .await
            .context("subscriber key")?
            .map(limits)
    };

    let hub_config = HubConfig {
        queue_capacity: config.queue_capacity,
        queue_bytes: config.queue_bytes,
        subscription_events: config.subscriptions,
        max_subscribers: crate::config::effective_max_subscribers(
            config.max_subscribers,
            config.max_connections,
        ),
    };
    let (hub, cluster) = match &config.transport {
        None => (Hub::new(hub_config, open_history(&config)?), None),
        Some(url) => {
            // The shared log in Redis is the record; each node keeps an
            // in-memory replica of it (back-filled from the log at start).
            let replica = Arc::new(MemoryHistory::replica(Retention {
                max_len: config.history_size,
                max_age: config.history_max_age,
            })) as Arc<dyn HistoryStore>;
            let node_id = config.node_id.clone().unwrap_or_else(default_node_id);
            let cluster = Cluster::connect(
                ClusterConfig {
                    urls: ClusterConfig::urls_of(url),
                    partitions: config.redis_partitions,
                    node_id: node_id.clone(),
                    max_len: config.history_size,
                    id_ttl: config.history_max_age,
                    replicas: config.redis_replicas,
                    replica_timeout: config.redis_replica_timeout,
                    tls_ca: config.redis_tls_ca.as_ref().map(std::path::PathBuf::from),
                    nat_map: ClusterConfig::nat_map_of(config.redis_nat_map.as_deref())
                        .context("--redis-nat-map")?,
                },
                replica.clone(),
            )
            .await
            .context("--transport")?;
            // Publishes go to the shared log, and only its tail delivers.
            let hub = Hub::with_log(hub_config, replica, |applier| {
                cluster.start_tail(applier);
                cluster.clone() as Arc<dyn Log>
            });
            cluster.start_heartbeat();
            if config.subscriptions {
                cluster.start_presence();
            }
            tracing::info!(node = %node_id, transport = %url, "cluster mode: publishing to and tailing the shared log");
            (hub, Some(cluster))
        }
    };

    // TLS: the pair is read (and checked) before anything listens.
    let certificates = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Certificates::load(
            std::path::Path::new(cert),
            std::path::Path::new(key),
        )?),
        _ => None,
    };
    let scheme = if certificates.is_some() {
        "https"
    } else {
        "http"
    };
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another server using it? try --listen 127.0.0.1:0)",
                config.listen
            )
        })?;
    let addr = listener.local_addr()?;

    // What a person starting the hub reads. Written as one block, and a
    // stdout that cannot take it (a full disk, a closed pipe) is logged
    // and ignored: the hub serves all the same.
    let mut out = String::new();
    let _ = writeln!(out, "listening on {scheme}://{addr}");
    if let Some(key) = &dev_key {
        let token = mint_hs256(key, &["*".into()], &["*".into()], None, None)?;
        let _ = writeln!(
            out,
            "no JWT key configured: generated a development key (tokens die with this process)"
        );
        let _ = writeln!(out, "  key:   {key}");
        let _ = writeln!(out, "  token (publish+subscribe to every topic): {token}");
        let _ = writeln!(
            out,
            "  try:   curl -N '{scheme}://{addr}{HUB_PATH}?match=https://example.com/hello' &"
        );
        let _ = writeln!(
            out,
            "         curl -H 'Authorization: Bearer {token}' -d topic=https://example.com/hello -d data=hi {scheme}://{addr}{HUB_PATH}"
        );
        let _ = writeln!(
            out,
            "  status page (open from this machine): {scheme}://{addr}/ui/"
        );
        let _ = writeln!(out, "  set --jwt-key (or HERALD_JWT_KEY) for a stable key");
    }
    if let Err(e) = say(&out) {
        tracing::warn!(error = %e, "could not write the startup lines to stdout; serving anyway");
    }

    // Age retention and relaxed fsyncs run on the committer, between
    // batches, once a second.
    every(&hub, Duration::from_secs(1), Hub::maintain);
    if !config.heartbeat.is_zero() {
        every(&hub, config.heartbeat, Hub::heartbeat);
    }

    let timeouts = Timeouts {
        header: config.header_timeout,
        write: config.write_timeout,
    };
    let limiter = ConnLimiter::new(config.max_connections, config.max_connections_per_ip);
    let proxies = Arc::new(
        crate::http::proxies::TrustedProxies::parse(&config.trusted_proxies)
            .context("--trusted-proxies")?,
    );
    let peer_timeout = config.peer_timeout;
    let edge = Arc::new(Edge {
        tls: match &certificates {
            Some(c) => Some(tokio_rustls::TlsAcceptor::from(c.server_config()?)),
            None => None,
        },
        h2_max_streams: config.h2_max_streams.min(u32::MAX as usize) as u32,
        peer_timeout,
        h2_stall_after: if config.heartbeat.is_zero() || config.write_timeout.is_zero() {
            Duration::ZERO
        } else {
            config.write_timeout + config.heartbeat
        },
        proxies: proxies.clone(),
    });
    // Always: SIGHUP's default action would end the process (a
    // `systemctl reload` of a hub without TLS).
    reload_on_sighup(certificates.clone());
    let redirect = match &config.redirect_http {
        Some(at) => Some(
            tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("--redirect-http: cannot listen on {at}"))?,
        ),
        None => None,
    };
    let proxied_streams = crate::http::proxies::ProxiedStreams::new(config.max_connections_per_ip);
    let auth_app = crate::http::auth_app(&config)?;
    let state = AppState {
        proxies: proxies.clone(),
        proxied_streams,
        auth_app,
        hub: hub.clone(),
        config: Arc::new(config),
        publisher: publisher.map(Arc::new),
        subscriber: subscriber.map(Arc::new),
        cluster,
    };
    crate::http::status::start(&state);
    let app = router(state);
    let (stop_connections, connections_stopped) = tokio::sync::watch::channel(false);
    if let Some(redirect) = redirect {
        let plain = Arc::new(Edge {
            tls: None,
            ..(*edge).clone()
        });
        let to = redirect_app(addr.port());
        let limiter = limiter.clone();
        let proxies = proxies.clone();
        let mut stopped = connections_stopped.clone();
        tracing::info!(listen = %redirect.local_addr()?, "redirecting http to https");
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = redirect.accept() => accepted,
                    _ = stopped.wait_for(|stop| *stop) => break,
                };
                let Ok((tcp, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                match limiter.try_acquire(peer.ip(), proxies.contains(peer.ip())) {
                    Ok(slot) => {
                        detect_vanished_peer(&tcp, peer_timeout);
                        tokio::spawn(serve_connection(
                            tcp,
                            to.clone(),
                            stopped.clone(),
                            timeouts,
                            plain.clone(),
                            slot,
                        ));
                    }
                    Err(why) => refuse(tcp, why),
                }
            }
        });
    }
    let mut signal = std::pin::pin!(shutdown_signal());
    let mut accept_errors = AcceptErrorLog::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match limiter.try_acquire(peer.ip(), proxies.contains(peer.ip())) {
                    Ok(slot) => {
                        let _ = tcp.set_nodelay(true);
                        detect_vanished_peer(&tcp, peer_timeout);
                        tokio::spawn(serve_connection(
                            tcp,
                            app.clone(),
                            connections_stopped.clone(),
                            timeouts,
                            edge.clone(),
                            slot,
                        ));
                    }
                    Err(why) => refuse(tcp, why),
                },
                // Out of file descriptors and the like: the listener is
                // fine, wait a moment for connections to close.
                Err(e) => {
                    STATS.accept_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    accept_errors.failed(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut signal => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: ending streams");
    // close() waits for the committer to store and deliver what it accepted.
    let closing_hub = hub.clone();
    let _ = tokio::task::spawn_blocking(move || closing_hub.close()).await;
    let _ = stop_connections.send(true);
    drop(connections_stopped);
    // Every connection task holds a receiver: all dropped means all done.
    tokio::select! {
        _ = stop_connections.closed() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway")
        }
    }
    let _ = say("herald stopped\n");
    Ok(())
}

/// Read the certificate and key again on each SIGHUP; a pair that fails
/// is logged and the one in use stays.
fn reload_on_sighup(certificates: Option<Arc<Certificates>>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: the certificate will not be reloaded");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(certificates) = &certificates else {
                tracing::info!("SIGHUP: nothing to reload (no --tls-cert)");
                continue;
            };
            match certificates.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                Err(e) => tracing::error!(
                    error = %format!("{e:#}"),
                    "SIGHUP: TLS certificate not reloaded; the one in use stays"
                ),
            }
        }
    });
}

/// `--redirect-http`: every request answered 308 to the same host and
/// path over https, on the TLS listener's port.
fn redirect_app(https_port: u16) -> axum::Router {
    use axum::http::{header, HeaderMap, StatusCode, Uri};
    use axum::response::IntoResponse;
    axum::Router::new().fallback(move |headers: HeaderMap, uri: Uri| async move {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<axum::http::uri::Authority>().ok());
        let Some(host) = host else {
            return (
                StatusCode::BAD_REQUEST,
                "a request to be redirected to https needs a valid Host header\n",
            )
                .into_response();
        };
        let port = if https_port == 443 {
            String::new()
        } else {
            format!(":{https_port}")
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{}{port}{path}", host.host());
        (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
            "use https\n",
        )
            .into_response()
    })
}

/// Write to stdout, reporting (not panicking on) a stdout that cannot take
/// it: a full disk or a closed pipe must never stop the hub.
fn say(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Logs accept errors at most once per [`ACCEPT_ERROR_LOG_INTERVAL`].
#[derive(Default)]
struct AcceptErrorLog {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl AcceptErrorLog {
    fn failed(&mut self, e: &std::io::Error) {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < ACCEPT_ERROR_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            error = %e,
            suppressed = self.suppressed,
            "accept failed (out of file descriptors? see --max-connections); retrying shortly"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Run `task` on the hub every `period` (first after one period) until the
/// hub closes.
fn every(hub: &Arc<Hub>, period: Duration, task: fn(&Hub)) {
    let hub = hub.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if hub.is_closed() {
                break;
            }
            task(&hub);
        }
    });
}

/// `hostname-pid`: unique among the nodes of one machine too.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald".into());
    format!("{host}-{}", std::process::id())
}

/// The history store the configuration asks for.
fn open_history(config: &Config) -> anyhow::Result<Arc<dyn HistoryStore>> {
    let retention = Retention {
        max_len: config.history_size,
        max_age: config.history_max_age,
    };
    Ok(match config.history {
        HistoryBackend::Memory => Arc::new(MemoryHistory::with_retention(retention)),
        HistoryBackend::Disk => {
            let durability = match config.durability {
                DurabilityMode::Sync => Durability::Sync,
                DurabilityMode::Relaxed => Durability::Relaxed {
                    interval: Duration::from_secs(1),
                },
            };
            let history = DiskHistory::open(&config.data_dir, retention, durability)?;
            tracing::info!(
                path = %history.path().display(),
                updates = history.len(),
                "history opened"
            );
            Arc::new(history)
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
