//! One configuration, from three sources: a TOML file (lowest), `HERALD_*`
//! environment variables, then command-line flags (highest).
//!
//! clap reads flags and environment together (a flag beats its variable);
//! every field is optional there, so whatever neither gave is then taken from
//! the file, and whatever the file does not give either falls back to the
//! defaults in [`Config::default`].
//!
//! Each setting is declared once, in the [`settings!`] invocation below: its
//! help text, name, type, default, environment variable and clap attributes.
//! From that list the macro generates the flags ([`ServeArgs`], [`EdgeArgs`]),
//! the file's keys (`FileConfig`), the resolved [`Config`], its `Default` and
//! the merge of the three sources. The JWT key settings are only declared
//! there as flags and file keys: how they combine into [`KeySource`]s is
//! written by hand in [`Config::load`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

/// Declares every setting of `herald serve` once; see the invocation below.
///
/// Input, in `--help` order:
///
/// - `resolved { pub field: Type, ... }`: fields of [`Config`] that are not a
///   setting of their own (filled in by hand after the merge).
/// - items, each ending in `;`, one of:
///   - `name: Type = default, env "VAR" [, arg(clap attrs)] [, then f [=> CfgType]];`
///     a setting: an `Option<Type>` flag in [`ServeArgs`], a key in the file
///     (written as `<Type as FileValue>::Repr`), and a `Config` field of
///     `Type` (or `CfgType`: the merged value goes through `f` first);
///   - `key name: Type, env "VAR" [, arg(clap attrs)];` a flag and file key
///     with no `Config` field of its own;
///   - `edge name: ...` (as a setting): the same, its flag in [`EdgeArgs`].
///
/// The doc comments of an item are its `--help` text and document its
/// `Config` field.
macro_rules! settings {
    // Entry: sort the items into accumulators, in order.
    (resolved { $($extra:tt)* } $($items:tt)*) => {
        settings!(@munch { $($extra)* } [] [] [] [] [] $($items)*);
    };

    // A key: a flag and a file key only.
    (@munch $extra:tt [$($args:tt)*] $edge:tt [$($file:tt)*] $cfg:tt $cfg_edge:tt
        $(#[doc = $doc:literal])*
        key $name:ident : $ty:ty, env $env:literal $(, arg($($arg:tt)*))?;
        $($rest:tt)*
    ) => {
        settings!(@munch $extra
            [$($args)*
                $(#[doc = $doc])*
                #[arg(long, env = $env $(, $($arg)*)?)]
                pub $name: Option<$ty>,
            ]
            $edge
            [$($file)* $name: $ty,]
            $cfg $cfg_edge
            $($rest)*);
    };

    // A setting whose flag is in `EdgeArgs`.
    (@munch $extra:tt $args:tt [$($edge:tt)*] [$($file:tt)*] $cfg:tt [$($cfg_edge:tt)*]
        $(#[doc = $doc:literal])*
        edge $name:ident : $ty:ty = $default:expr, env $env:literal
            $(, arg($($arg:tt)*))? $(, then $then:path $(=> $cty:ty)?)?;
        $($rest:tt)*
    ) => {
        settings!(@munch $extra $args
            [$($edge)*
                $(#[doc = $doc])*
                #[arg(long, env = $env $(, $($arg)*)?)]
                pub $name: Option<$ty>,
            ]
            [$($file)* $name: $ty,]
            $cfg
            [$($cfg_edge)* { $(#[doc = $doc])* $name: $ty $($(=> $cty)?)? = $default $(; $then)? }]
            $($rest)*);
    };

    // A setting whose flag is in `ServeArgs`.
    (@munch $extra:tt [$($args:tt)*] $edge:tt [$($file:tt)*] [$($cfg:tt)*] $cfg_edge:tt
        $(#[doc = $doc:literal])*
        $name:ident : $ty:ty = $default:expr, env $env:literal
            $(, arg($($arg:tt)*))? $(, then $then:path $(=> $cty:ty)?)?;
        $($rest:tt)*
    ) => {
        settings!(@munch $extra
            [$($args)*
                $(#[doc = $doc])*
                #[arg(long, env = $env $(, $($arg)*)?)]
                pub $name: Option<$ty>,
            ]
            $edge
            [$($file)* $name: $ty,]
            [$($cfg)* { $(#[doc = $doc])* $name: $ty $($(=> $cty)?)? = $default $(; $then)? }]
            $cfg_edge
            $($rest)*);
    };

    // All items sorted: generate.
    (@munch
        { $($(#[$xmeta:meta])* pub $xname:ident : $xty:ty),* $(,)? }
        [$($args:tt)*]
        [$($edge:tt)*]
        [$($fname:ident : $fty:ty,)*]
        [$({ $(#[doc = $doc:literal])* $name:ident : $ty:ty $(=> $cty:ty)? = $default:expr $(; $then:path)? })*]
        [$({ $(#[doc = $edoc:literal])* $ename:ident : $ety:ty $(=> $ecty:ty)? = $edefault:expr $(; $ethen:path)? })*]
    ) => {
        /// Flags of `herald serve`. Each also reads `HERALD_<NAME>` from the
        /// environment and `<name>` (with underscores) from the config file.
        #[derive(Debug, Clone, Default, Args)]
        pub struct ServeArgs {
            /// TOML configuration file (keys as the flags, with underscores).
            #[arg(long, env = "HERALD_CONFIG")]
            pub config: Option<PathBuf>,
            $($args)*
            /// Limits and deadlines of the HTTP edge. Boxed: `ServeArgs` is a
            /// variant of the CLI's command enum, which should stay small.
            #[command(flatten)]
            pub edge: Box<EdgeArgs>,
        }

        /// Flags of `herald serve` that protect the HTTP edge from slow, stalled
        /// or too many clients.
        #[derive(Debug, Clone, Default, Args)]
        pub struct EdgeArgs {
            $($edge)*
        }

        /// The same settings, as read from the TOML file.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileConfig {
            $($fname: Option<<$fty as FileValue>::Repr>,)*
        }

        /// The resolved configuration.
        #[derive(Debug, Clone)]
        pub struct Config {
            $($(#[$xmeta])* pub $xname: $xty,)*
            $($(#[doc = $doc])* pub $name: first_ty!($($cty,)? $ty),)*
            $($(#[doc = $edoc])* pub $ename: first_ty!($($ecty,)? $ety),)*
        }

        impl Default for Config {
            fn default() -> Self {
                Config {
                    $($xname: Default::default(),)*
                    $($name: {
                        let v: $ty = $default;
                        $(let v = $then(v);)?
                        v
                    },)*
                    $($ename: {
                        let v: $ety = $edefault;
                        $(let v = $ethen(v);)?
                        v
                    },)*
                }
            }
        }

        impl Config {
            /// Each setting from its flag/env value, else the file, else
            /// the default. The `resolved` fields are left at their
            /// defaults.
            fn merge(args: ServeArgs, file: FileConfig) -> anyhow::Result<Config> {
                let edge = *args.edge;
                Ok(Config {
                    $($xname: Default::default(),)*
                    $($name: {
                        let v: $ty = pick(stringify!($name), args.$name, file.$name, $default)?;
                        $(let v = $then(v);)?
                        v
                    },)*
                    $($ename: {
                        let v: $ety = pick(stringify!($ename), edge.$ename, file.$ename, $edefault)?;
                        $(let v = $ethen(v);)?
                        v
                    },)*
                })
            }
        }
    };
}

/// The first of one or two types (a setting's `Config` type if it has one,
/// else its flag type).
macro_rules! first_ty {
    ($t:ty $(, $rest:ty)*) => {
        $t
    };
}

settings! {
    resolved {
        /// From the `*jwt_key` and `*jwt_public_key_file` settings; see
        /// [`Config::load`].
        pub publisher_key: Option<KeySource>,
        /// Likewise, for subscriber tokens.
        pub subscriber_key: Option<KeySource>,
    }

    /// Address to listen on; port 0 picks a free port. [default: 127.0.0.1:8080]
    listen: String = "127.0.0.1:8080".into(), env "HERALD_LISTEN";
    /// HS256 secret for publisher and subscriber tokens.
    key jwt_key: String, env "HERALD_JWT_KEY", arg(hide_env_values = true);
    /// HS256 secret for publisher tokens (overrides --jwt-key for publishers).
    key publisher_jwt_key: String, env "HERALD_PUBLISHER_JWT_KEY", arg(hide_env_values = true);
    /// HS256 secret for subscriber tokens (overrides --jwt-key for subscribers).
    key subscriber_jwt_key: String, env "HERALD_SUBSCRIBER_JWT_KEY", arg(hide_env_values = true);
    /// PEM public key (RSA or EC: RS256/PS256/ES256...) for both roles.
    key jwt_public_key_file: PathBuf, env "HERALD_JWT_PUBLIC_KEY_FILE";
    /// PEM public key for publisher tokens.
    key publisher_jwt_public_key_file: PathBuf, env "HERALD_PUBLISHER_JWT_PUBLIC_KEY_FILE";
    /// PEM public key for subscriber tokens.
    key subscriber_jwt_public_key_file: PathBuf, env "HERALD_SUBSCRIBER_JWT_PUBLIC_KEY_FILE";
    /// An identity provider's key set (JWKS, e.g.
    /// https://idp.example/.well-known/jwks.json) for both roles: keys by
    /// `kid`, RS/PS/ES/EdDSA; fetched again on expiry and on an unknown kid.
    key jwks_url: String, env "HERALD_JWKS_URL";
    /// JWKS for publisher tokens.
    key publisher_jwks_url: String, env "HERALD_PUBLISHER_JWKS_URL";
    /// JWKS for subscriber tokens.
    key subscriber_jwks_url: String, env "HERALD_SUBSCRIBER_JWKS_URL";
    /// Let subscribers without a token receive public updates. [default: true]
    allow_anonymous: bool = true, env "HERALD_ALLOW_ANONYMOUS",
        arg(num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new());
    /// Origins allowed to make credentialed cross-origin requests (comma
    /// list, e.g. https://app.example.com). `*` allows any origin without
    /// credentials (cookies are then not sent by browsers).
    cors_origins: Vec<String> = Vec::new(), env "HERALD_CORS_ORIGINS",
        arg(value_delimiter = ','), then normalize_origins;
    /// Keep-alive comment interval (e.g. 15s, 500ms, 1m; 0 disables). [default: 15s]
    heartbeat: Duration = Duration::from_secs(15), env "HERALD_HEARTBEAT",
        arg(value_parser = parse_duration);
    /// Directory for durable data. [default: ./herald-data]
    data_dir: PathBuf = PathBuf::from("./herald-data"), env "HERALD_DATA_DIR";
    /// Updates kept for resume (Last-Event-ID). [default: 100000]
    history_size: usize = 100_000, env "HERALD_HISTORY_SIZE";
    /// Where history lives: `disk` (durable, a file under --data-dir) or
    /// `memory` (lost on restart). [default: disk]
    history: HistoryBackend = HistoryBackend::Disk, env "HERALD_HISTORY";
    /// Drop updates older than this from history (e.g. 24h, 7d; 0 keeps
    /// them until --history-size pushes them out). [default: 0]
    history_max_age: Duration = Duration::ZERO, env "HERALD_HISTORY_MAX_AGE",
        arg(value_parser = parse_duration), then zero_is_none => Option<Duration>;
    /// `sync`: a 200 answer to a publish means the update is on disk
    /// (one fsync per batch of concurrent publishes). `relaxed`: fsync at
    /// most once a second; a crash may lose that last second.
    /// [default: sync]
    durability: DurabilityMode = DurabilityMode::Sync, env "HERALD_DURABILITY";
    /// Largest accepted publish body in bytes. [default: 1048576]
    max_body: usize = 1024 * 1024, env "HERALD_MAX_BODY";
    /// Largest batch publish body (POST /.well-known/mercure/batch) in
    /// bytes. [default: 16777216]
    max_batch_bytes: usize = 16 * 1024 * 1024, env "HERALD_MAX_BATCH_BYTES";
    /// Most records in one batch publish. [default: 10000]
    max_batch_records: usize = 10_000, env "HERALD_MAX_BATCH_RECORDS";
    /// Events queued per subscriber before it is cut off as too slow (it
    /// then resumes from history). [default: 1024]
    queue_capacity: usize = 1024, env "HERALD_QUEUE_CAPACITY";
    /// Bytes of events queued per subscriber before it is cut off as too
    /// slow (it then resumes from history): a subscriber that never reads
    /// holds at most this much. [default: 4194304]
    queue_bytes: usize = crate::hub::DEFAULT_QUEUE_BYTES, env "HERALD_QUEUE_BYTES";
    /// Publish subscription events and serve the subscriptions API. [default: false]
    subscriptions: bool = false, env "HERALD_SUBSCRIPTIONS",
        arg(num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new());
    /// Most topic selectors in one subscribe request. [default: 100]
    max_selectors: usize = 100, env "HERALD_MAX_SELECTORS";
    /// Longest topic selector or topic, in bytes. [default: 2048]
    max_selector_len: usize = 2048, env "HERALD_MAX_SELECTOR_LEN";
    /// Most pattern selectors (URL Patterns, URI templates) in one
    /// subscribe request; each is evaluated on every publish. Exact topics
    /// and `*` count only toward --max-selectors. [default: 20]
    max_patterns: usize = 20, env "HERALD_MAX_PATTERNS";
    /// Most distinct compiled topic patterns alive in the hub at once, all
    /// subscribers together (each costs memory and is evaluated on every
    /// publish); a subscribe that needs a new one beyond it gets 503. Equal
    /// patterns are shared and count once. 0: no limit. [default: 20000]
    max_distinct_patterns: usize = crate::topic::DEFAULT_MAX_DISTINCT_PATTERNS, env "HERALD_MAX_DISTINCT_PATTERNS";
    /// Clock skew tolerated when checking a token's exp and nbf (e.g. 5s,
    /// 500ms, 0). [default: 5s]
    jwt_leeway: Duration = crate::auth::DEFAULT_LEEWAY, env "HERALD_JWT_LEEWAY",
        arg(value_parser = parse_duration);
    /// Longest accepted JWT in bytes; a longer one is refused (401) unparsed. [default: 16384]
    max_token_len: usize = crate::auth::DEFAULT_MAX_TOKEN_LEN, env "HERALD_MAX_TOKEN_LEN";
    /// The application's own session check: a subscriber without a token
    /// is asked about here (its --auth-headers forwarded, e.g. its session
    /// cookie); the answer lists the topics it may subscribe to
    /// (docs/deploy.md, "The app's own sessions"). Unset: tokens only.
    auth_url: String = String::new(), env "HERALD_AUTH_URL", then empty_is_none => Option<String>;
    /// Request headers forwarded to --auth-url (comma list). [default: cookie]
    auth_headers: Vec<String> = vec!["cookie".to_string()], env "HERALD_AUTH_HEADERS",
        arg(value_delimiter = ',');
    /// How long an --auth-url answer is used for the same forwarded
    /// headers (0: ask every time). [default: 30s]
    auth_cache_ttl: Duration = Duration::from_secs(30), env "HERALD_AUTH_CACHE_TTL",
        arg(value_parser = parse_duration);
    /// An --auth-url that does not answer within this is a 503. [default: 2s]
    auth_timeout: Duration = Duration::from_secs(2), env "HERALD_AUTH_TIMEOUT",
        arg(value_parser = parse_duration);
    /// Cluster mode: the Redis that holds the shared log
    /// (redis://[user:password@]host:port[/db]), or several, comma-separated,
    /// to spread --redis-partitions over. Through Redis Sentinel, following
    /// failovers: redis+sentinel://[user:password@]host:port[,host:port...]/<master-name>[/<db>]. Every node given the same ones acts
    /// as one hub: publish on any, receive on every, resume on any. Unset
    /// (the default): a single node with its own history.
    transport: String = String::new(), env "HERALD_TRANSPORT", then empty_is_none => Option<String>;
    /// Cluster mode: how many logs the updates are spread over, by a hash of
    /// their first topic (1 to 256; at least one per --transport Redis).
    /// Every node must use the same value. [default: 1]
    redis_partitions: usize = 1, env "HERALD_REDIS_PARTITIONS";
    /// Cluster mode: a publish answers 200 only once this many replicas of
    /// each Redis it wrote to have the update (Redis WAIT, one round for
    /// all publishes in flight); 0 does not ask. [default: 0]
    redis_replicas: usize = 0, env "HERALD_REDIS_REPLICAS";
    /// Cluster mode: how long a publish waits for --redis-replicas before it
    /// answers 503 (e.g. 1s, 500ms). [default: 1s]
    redis_replica_timeout: Duration = Duration::from_secs(1), env "HERALD_REDIS_REPLICA_TIMEOUT",
        arg(value_parser = parse_duration);
    /// Cluster mode, rediss:// (TLS): a PEM file of the certificates the
    /// Redis servers' must chain to (a private CA). Unset: the system's
    /// trust store.
    redis_tls_ca: String = String::new(), env "HERALD_REDIS_TLS_CA", then empty_is_none => Option<String>;
    /// Cluster mode, through Redis Sentinel: addresses the sentinels give
    /// out that this node must dial at another address (NAT, containers,
    /// port forwarding), as FROM=TO pairs, comma-separated, each host:port
    /// (e.g. 10.0.0.5:6379=203.0.113.7:16379). Unset: dial what the
    /// sentinels say.
    redis_nat_map: String = String::new(), env "HERALD_REDIS_NAT_MAP", then empty_is_none => Option<String>;
    /// This node's name in cluster logs and /readyz (default: the host
    /// name and the process id).
    node_id: String = String::new(), env "HERALD_NODE_ID", then empty_is_none => Option<String>;
    /// Serve the demo page at /. [default: true]
    demo: bool = true, env "HERALD_DEMO",
        arg(num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new());

    /// A client must send a whole request head within this time, or the
    /// connection is closed (408 if it had started one). [default: 10s]
    edge header_timeout: Duration = Duration::from_secs(10), env "HERALD_HEADER_TIMEOUT",
        arg(value_parser = parse_duration);
    /// A publish body must arrive whole within this time (408). [default: 30s]
    edge body_timeout: Duration = Duration::from_secs(30), env "HERALD_BODY_TIMEOUT",
        arg(value_parser = parse_duration);
    /// A write to a client that makes no progress for this long closes the
    /// connection (a client that stopped reading); an HTTP/2 stream that
    /// takes nothing for this plus one heartbeat is reset. [default: 30s]
    edge write_timeout: Duration = Duration::from_secs(30), env "HERALD_WRITE_TIMEOUT",
        arg(value_parser = parse_duration);
    /// Most client connections open at once; more are answered 503 and
    /// closed (0: no limit). Default: the open-files limit (raised to its
    /// hard limit at start) less 5%, at least 1,024 fewer (18,976 at 20,000).
    edge max_connections: usize = default_max_connections(), env "HERALD_MAX_CONNECTIONS";
    /// Most client connections open at once from one IP address; more are
    /// answered 429 and closed (0: no limit). [default: 4096]
    edge max_connections_per_ip: usize = 4096, env "HERALD_MAX_CONNECTIONS_PER_IP";
    /// Proxies whose Forwarded / X-Forwarded-For headers are believed
    /// (CIDRs, comma-separated): their connections are not counted per
    /// address; each stream through them is, by the client's address.
    /// Empty: none. [default: 127.0.0.0/8,::1]
    edge trusted_proxies: String = "127.0.0.0/8,::1".into(), env "HERALD_TRUSTED_PROXIES";
    /// Most event streams open at once, hub-wide; more get 503. Kept below
    /// --max-connections so a full hub still takes publishes and the
    /// operator's requests (0: --max-connections minus 5%, at least 100
    /// fewer). [default: 0]
    edge max_subscribers: usize = 0, env "HERALD_MAX_SUBSCRIBERS";
    /// Event streams are gzip-compressed for clients that send
    /// Accept-Encoding: gzip (each event compressed once for every
    /// subscriber it goes to). [default: true]
    edge compression: bool = true, env "HERALD_COMPRESSION",
        arg(num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new());
    /// Events shorter than this many bytes are sent in a compressed stream
    /// without compressing them (a stored block). [default: 64]
    edge compression_min_size: usize = 64, env "HERALD_COMPRESSION_MIN_SIZE";
    /// A PEM certificate chain (leaf first): serve HTTPS (TLS 1.2 and 1.3,
    /// HTTP/2 and HTTP/1.1) instead of clear text. Needs --tls-key; both
    /// are read again on SIGHUP. Unset: clear text (HTTP/1.1, and HTTP/2
    /// with prior knowledge).
    edge tls_cert: String = String::new(), env "HERALD_TLS_CERT", then empty_is_none => Option<String>;
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    edge tls_key: String = String::new(), env "HERALD_TLS_KEY", then empty_is_none => Option<String>;
    /// With TLS: also listen here in clear text and answer every request
    /// with a 308 redirect to the same URL over https (e.g. 0.0.0.0:80).
    /// Unset: no such listener.
    edge redirect_http: String = String::new(), env "HERALD_REDIRECT_HTTP", then empty_is_none => Option<String>;
    /// Most concurrent streams (requests, event streams) on one HTTP/2
    /// connection (SETTINGS_MAX_CONCURRENT_STREAMS). [default: 256]
    edge h2_max_streams: usize = 256, env "HERALD_H2_MAX_STREAMS";
    /// A peer whose network vanished (no FIN, no RST) is dropped within
    /// about this time: TCP keepalive probes and TCP_USER_TIMEOUT on every
    /// connection, HTTP/2 PINGs (0: off). [default: 60s]
    edge peer_timeout: Duration = Duration::from_secs(60), env "HERALD_PEER_TIMEOUT",
        arg(value_parser = parse_duration);
}

/// `--max-connections` by default: what the open-files limit leaves after
/// a reserve for history, Redis, logs and refused sockets (5%, at least
/// 1,024), raising the soft limit to the hard one first, as servers do.
pub fn default_max_connections() -> usize {
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    let limit = unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 15_000;
        }
        if l.rlim_cur < l.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                l.rlim_cur = l.rlim_max;
            }
        }
        l.rlim_cur
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(4_000_000);
    let reserve = (limit / 20).max(1024);
    limit.saturating_sub(reserve).max(64)
}

/// `--max-subscribers` as given (0: derived): event streams kept below
/// `max_connections` by 5%, at least 100 (at most half), so a hub full of
/// subscribers still takes publishes and the operator's requests.
pub fn effective_max_subscribers(max_subscribers: usize, max_connections: usize) -> usize {
    if max_subscribers != 0 {
        return max_subscribers;
    }
    if max_connections == 0 {
        return 0;
    }
    let reserve = (max_connections / 20).max(100).min(max_connections / 2);
    max_connections.saturating_sub(reserve).max(1)
}

/// How a setting's value is written in the TOML file, and how it is read
/// from there.
trait FileValue: Sized {
    type Repr: for<'de> Deserialize<'de>;
    fn from_file(repr: Self::Repr) -> Result<Self, String>;
}

/// Types written in the file as themselves.
macro_rules! file_value_as_is {
    ($($t:ty),*) => {$(
        impl FileValue for $t {
            type Repr = $t;
            fn from_file(repr: $t) -> Result<$t, String> {
                Ok(repr)
            }
        }
    )*};
}

file_value_as_is!(
    String,
    PathBuf,
    bool,
    usize,
    Vec<String>,
    HistoryBackend,
    DurabilityMode
);

/// Durations are strings in the file: `"15s"`, `"500ms"`, `"7d"`.
impl FileValue for Duration {
    type Repr = String;
    fn from_file(repr: String) -> Result<Duration, String> {
        parse_duration(&repr)
    }
}

/// A setting from its flag/env value, else the file, else the default.
fn pick<T: FileValue>(
    name: &str,
    arg: Option<T>,
    file: Option<T::Repr>,
    default: T,
) -> anyhow::Result<T> {
    match (arg, file) {
        (Some(v), _) => Ok(v),
        (None, Some(repr)) => {
            T::from_file(repr).map_err(|e| anyhow::anyhow!("config file: {name}: {e}"))
        }
        (None, None) => Ok(default),
    }
}

/// Origins without surrounding blanks or a trailing slash; empty ones dropped.
fn normalize_origins(origins: Vec<String>) -> Vec<String> {
    origins
        .into_iter()
        .map(|o| o.trim().trim_end_matches('/').to_string())
        .filter(|o| !o.is_empty())
        .collect()
}

/// A zero duration means "off".
fn empty_is_none(s: String) -> Option<String> {
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn zero_is_none(d: Duration) -> Option<Duration> {
    Some(d).filter(|d| !d.is_zero())
}

/// Where history lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HistoryBackend {
    /// Embedded durable store under --data-dir.
    Disk,
    /// In memory only: lost on restart.
    Memory,
}

/// When a publish is acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// 200 means on disk.
    Sync,
    /// fsync at most once a second.
    Relaxed,
}

/// Where a JWT verification key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Secret(String),
    PublicKeyFile(PathBuf),
    /// A JWKS URL.
    Jwks(String),
}

impl Config {
    /// Resolve flags/env over the file over defaults.
    pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        // A role's key: its own (flag/env, else file), else the shared one
        // (flag/env, else file). At each step a public key file beats a
        // secret given at the same step, and a JWKS URL beats both.
        let key = |secret: &Option<String>,
                   pem: &Option<PathBuf>,
                   jwks: &Option<String>|
         -> Option<KeySource> {
            jwks.clone()
                .map(KeySource::Jwks)
                .or_else(|| pem.clone().map(KeySource::PublicKeyFile))
                .or_else(|| secret.clone().map(KeySource::Secret))
        };
        let shared = key(&args.jwt_key, &args.jwt_public_key_file, &args.jwks_url)
            .or_else(|| key(&file.jwt_key, &file.jwt_public_key_file, &file.jwks_url));
        let publisher_key = key(
            &args.publisher_jwt_key,
            &args.publisher_jwt_public_key_file,
            &args.publisher_jwks_url,
        )
        .or_else(|| {
            key(
                &file.publisher_jwt_key,
                &file.publisher_jwt_public_key_file,
                &file.publisher_jwks_url,
            )
        })
        .or_else(|| shared.clone());
        let subscriber_key = key(
            &args.subscriber_jwt_key,
            &args.subscriber_jwt_public_key_file,
            &args.subscriber_jwks_url,
        )
        .or_else(|| {
            key(
                &file.subscriber_jwt_key,
                &file.subscriber_jwt_public_key_file,
                &file.subscriber_jwks_url,
            )
        })
        .or(shared);
        let mut cfg = Config::merge(args.clone(), file)?;
        cfg.publisher_key = publisher_key;
        cfg.subscriber_key = subscriber_key;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        // Zero is refused: a timeout that fires at once would refuse every
        // client.
        for (name, value) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("write_timeout", self.write_timeout),
            ("auth_timeout", self.auth_timeout),
        ] {
            if value.is_zero() {
                bail!("{name} must be longer than 0 (e.g. 10s)");
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("tls_cert and tls_key go together: give both (a PEM certificate chain and its private key) or neither");
        }
        if self.redirect_http.is_some() && self.tls_cert.is_none() {
            bail!("redirect_http redirects to https: it needs tls_cert and tls_key");
        }
        if self.h2_max_streams == 0 {
            bail!("h2_max_streams must be at least 1 (e.g. 256)");
        }
        if self.queue_capacity == 0 {
            bail!("queue_capacity must be at least 1");
        }
        if self.queue_bytes < 1024 {
            bail!("queue_bytes must be at least 1024 (e.g. 4194304)");
        }
        if self.max_selectors == 0 || self.max_selector_len == 0 {
            bail!("max_selectors and max_selector_len must be at least 1");
        }
        if self.max_batch_records == 0 || self.max_batch_bytes < 64 {
            bail!("max_batch_records must be at least 1 and max_batch_bytes at least 64");
        }
        if self.max_body < 64 {
            bail!("max_body must be at least 64 bytes");
        }
        for o in &self.cors_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                bail!("CORS origin {o:?} must be '*' or start with http:// or https:// (e.g. https://app.example.com)");
            }
        }
        Ok(())
    }
}

/// Parse `15s`, `500ms`, `2m`, `1h`, `7d` or plain seconds (`15`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 15s, 500ms, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?}: use ms, s, m, h or d"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn precedence_flag_over_file_over_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nheartbeat = \"3s\"\njwt_key = \"file\"\nhistory_size = 5\n").unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            history_size: Some(7),
            ..Default::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000");
        assert_eq!(c.heartbeat, Duration::from_secs(3));
        assert_eq!(c.history_size, 7);
        assert_eq!(c.publisher_key, Some(KeySource::Secret("file".into())));
        assert!(c.allow_anonymous);
        let args = ServeArgs {
            config: Some(path),
            publisher_jwt_key: Some("pub".into()),
            ..Default::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.publisher_key, Some(KeySource::Secret("pub".into())));
        assert_eq!(c.subscriber_key, Some(KeySource::Secret("file".into())));
    }

    #[test]
    fn bad_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "listn = 1\n").unwrap();
        let err = Config::load(&ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("listn"), "{err:#}");
        let err = Config::load(&ServeArgs {
            cors_origins: Some(vec!["example.com".into()]),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("http://"));
    }

    /// `ServeArgs` as the binary parses it (flags, and env: none set here).
    fn parse(flags: &[&str]) -> ServeArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let argv = std::iter::once("herald").chain(flags.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{flags:?}: {e}"))
            .serve
    }

    /// Every flag of `herald serve` but --config (and clap's own).
    fn settings() -> Vec<clap::Arg> {
        ServeArgs::augment_args(clap::Command::new("herald"))
            .get_arguments()
            .filter(|a| !matches!(a.get_long(), Some("config" | "help" | "version")))
            .cloned()
            .collect()
    }

    fn write(dir: &tempfile::TempDir, toml: &str) -> PathBuf {
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }

    #[test]
    fn every_setting_has_its_env_variable_and_file_key() {
        for arg in settings() {
            let long = arg.get_long().unwrap();
            let env = format!("HERALD_{}", long.replace('-', "_").to_uppercase());
            assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(&env)), "--{long}");
        }
        // Names the file would refuse: every flag is also a file key.
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "not_a_setting = 1\n");
        let err = Config::load(&ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        let err = format!("{err:#}");
        for arg in settings() {
            let key = arg.get_long().unwrap().replace('-', "_");
            assert!(
                err.contains(&format!("`{key}`")),
                "{key} not a file key: {err}"
            );
        }
    }

    /// A file with every key set parses, and each value beats the default.
    #[test]
    fn a_file_with_every_key_parses() {
        let toml = r#"
            listen = "0.0.0.0:9"
            jwt_key = "shared"
            publisher_jwt_key = "pub"
            subscriber_jwt_key = "sub"
            jwt_public_key_file = "shared.pem"
            publisher_jwt_public_key_file = "pub.pem"
            subscriber_jwt_public_key_file = "sub.pem"
            jwks_url = "https://idp.example/jwks.json"
            publisher_jwks_url = "https://idp.example/pub.json"
            subscriber_jwks_url = "https://idp.example/sub.json"
            allow_anonymous = false
            cors_origins = ["https://a.example/", " http://b.example "]
            heartbeat = "2s"
            data_dir = "/var/lib/herald"
            history_size = 11
            history = "memory"
            history_max_age = "7d"
            durability = "relaxed"
            max_body = 4096
            max_batch_bytes = 8192
            max_batch_records = 7
            queue_capacity = 12
            queue_bytes = 2048
            subscriptions = true
            max_selectors = 13
            max_selector_len = 14
            max_patterns = 15
            max_distinct_patterns = 17
            jwt_leeway = "500ms"
            max_token_len = 16
            auth_url = "http://127.0.0.1:3000/herald/session"
            auth_headers = ["cookie", "x-tenant"]
            auth_cache_ttl = "45s"
            auth_timeout = "750ms"
            demo = false
            header_timeout = "3s"
            body_timeout = "4s"
            write_timeout = "5m"
            max_connections = 17
            max_connections_per_ip = 18
            transport = "redis://127.0.0.1:6390/2"
            redis_partitions = 4
            redis_replicas = 1
            redis_replica_timeout = "250ms"
            redis_tls_ca = "/etc/herald/redis-ca.pem"
            redis_nat_map = "10.0.0.5:6379=127.0.0.1:16379"
            node_id = " node-a "
            tls_cert = "/etc/herald/cert.pem"
            tls_key = "/etc/herald/key.pem"
            redirect_http = "0.0.0.0:80"
            h2_max_streams = 19
            peer_timeout = "20s"
            trusted_proxies = "10.0.0.0/8"
            max_subscribers = 21
            compression = false
            compression_min_size = 22
        "#;
        let keys: std::collections::BTreeSet<String> = toml
            .lines()
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, _)| k.trim().to_string())
            .collect();
        let flags: std::collections::BTreeSet<String> = settings()
            .iter()
            .map(|a| a.get_long().unwrap().replace('-', "_"))
            .collect();
        assert_eq!(keys, flags, "this test must set every setting");

        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&ServeArgs {
            config: Some(write(&dir, toml)),
            ..Default::default()
        })
        .unwrap();
        // A JWKS beats a public key file, which beats a secret.
        let jwks = |u: &str| Some(KeySource::Jwks(format!("https://idp.example/{u}")));
        assert_eq!(c.listen, "0.0.0.0:9");
        assert_eq!(c.publisher_key, jwks("pub.json"));
        assert_eq!(c.subscriber_key, jwks("sub.json"));
        assert!(!c.allow_anonymous);
        assert_eq!(c.cors_origins, ["https://a.example", "http://b.example"]);
        assert_eq!(c.heartbeat, Duration::from_secs(2));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/herald"));
        assert_eq!(c.history_size, 11);
        assert_eq!(c.history, HistoryBackend::Memory);
        assert_eq!(c.history_max_age, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(c.durability, DurabilityMode::Relaxed);
        assert_eq!(c.max_body, 4096);
        assert_eq!(c.max_batch_bytes, 8192);
        assert_eq!(c.max_batch_records, 7);
        assert_eq!(c.queue_capacity, 12);
        assert_eq!(c.queue_bytes, 2048);
        assert!(c.subscriptions);
        assert_eq!(c.max_selectors, 13);
        assert_eq!(c.max_selector_len, 14);
        assert_eq!(c.max_patterns, 15);
        assert_eq!(c.max_distinct_patterns, 17);
        assert_eq!(c.jwt_leeway, Duration::from_millis(500));
        assert_eq!(c.max_token_len, 16);
        assert_eq!(
            c.auth_url.as_deref(),
            Some("http://127.0.0.1:3000/herald/session")
        );
        assert_eq!(c.auth_headers, ["cookie", "x-tenant"]);
        assert_eq!(c.auth_cache_ttl, Duration::from_secs(45));
        assert_eq!(c.auth_timeout, Duration::from_millis(750));
        assert!(!c.demo);
        assert_eq!(c.header_timeout, Duration::from_secs(3));
        assert_eq!(c.body_timeout, Duration::from_secs(4));
        assert_eq!(c.write_timeout, Duration::from_secs(300));
        assert_eq!(c.max_connections, 17);
        assert_eq!(c.max_connections_per_ip, 18);
        assert_eq!(c.transport.as_deref(), Some("redis://127.0.0.1:6390/2"));
        assert_eq!(c.redis_partitions, 4);
        assert_eq!(c.redis_replicas, 1);
        assert_eq!(c.redis_replica_timeout, Duration::from_millis(250));
        assert_eq!(c.redis_tls_ca.as_deref(), Some("/etc/herald/redis-ca.pem"));
        assert_eq!(
            c.redis_nat_map.as_deref(),
            Some("10.0.0.5:6379=127.0.0.1:16379")
        );
        assert_eq!(c.tls_cert.as_deref(), Some("/etc/herald/cert.pem"));
        assert_eq!(c.tls_key.as_deref(), Some("/etc/herald/key.pem"));
        assert_eq!(c.redirect_http.as_deref(), Some("0.0.0.0:80"));
        assert_eq!(c.h2_max_streams, 19);
        assert_eq!(c.peer_timeout, Duration::from_secs(20));
        assert_eq!(c.trusted_proxies, "10.0.0.0/8");
        assert_eq!(c.max_subscribers, 21);
        assert!(!c.compression);
        assert_eq!(c.compression_min_size, 22);
        assert_eq!(c.node_id.as_deref(), Some("node-a"));
    }

    /// For settings of each kind: the default, else the file, else the flag.
    #[test]
    fn flag_beats_file_beats_default_for_each_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            r#"
            listen = "127.0.0.1:1"
            data_dir = "from-file"
            history_size = 1
            max_connections = 1
            allow_anonymous = false
            subscriptions = true
            heartbeat = "1s"
            header_timeout = "1s"
            history_max_age = "1h"
            cors_origins = ["https://file.example"]
            history = "memory"
            durability = "relaxed"
            "#,
        );
        let path = path.to_str().unwrap();
        let none = Config::load(&parse(&[])).unwrap();
        let file = Config::load(&parse(&["--config", path])).unwrap();
        let flag = Config::load(&parse(&[
            "--config",
            path,
            "--listen=127.0.0.1:2",
            "--data-dir=from-flag",
            "--history-size=2",
            "--max-connections=2",
            "--allow-anonymous",
            "--subscriptions=false",
            "--heartbeat=2s",
            "--header-timeout=2s",
            "--history-max-age=0",
            "--cors-origins=https://a.example,https://b.example",
            "--history=disk",
            "--durability=sync",
        ]))
        .unwrap();
        let d = Config::default();

        assert_eq!(none.listen, d.listen);
        assert_eq!(file.listen, "127.0.0.1:1");
        assert_eq!(flag.listen, "127.0.0.1:2");

        assert_eq!(none.data_dir, d.data_dir);
        assert_eq!(file.data_dir, PathBuf::from("from-file"));
        assert_eq!(flag.data_dir, PathBuf::from("from-flag"));

        assert_eq!(none.history_size, d.history_size);
        assert_eq!(file.history_size, 1);
        assert_eq!(flag.history_size, 2);
        assert_eq!(none.max_connections, d.max_connections);
        assert_eq!(file.max_connections, 1);
        assert_eq!(flag.max_connections, 2);

        assert!(none.allow_anonymous);
        assert!(!file.allow_anonymous);
        assert!(flag.allow_anonymous, "a bare boolean flag means true");
        assert!(!none.subscriptions);
        assert!(file.subscriptions);
        assert!(!flag.subscriptions);

        assert_eq!(none.heartbeat, d.heartbeat);
        assert_eq!(file.heartbeat, Duration::from_secs(1));
        assert_eq!(flag.heartbeat, Duration::from_secs(2));
        assert_eq!(none.header_timeout, d.header_timeout);
        assert_eq!(file.header_timeout, Duration::from_secs(1));
        assert_eq!(flag.header_timeout, Duration::from_secs(2));
        assert_eq!(none.history_max_age, None);
        assert_eq!(file.history_max_age, Some(Duration::from_secs(3600)));
        assert_eq!(flag.history_max_age, None, "0 on the flag beats the file");

        assert!(none.cors_origins.is_empty());
        assert_eq!(file.cors_origins, ["https://file.example"]);
        assert_eq!(
            flag.cors_origins,
            ["https://a.example", "https://b.example"]
        );

        assert_eq!(none.history, HistoryBackend::Disk);
        assert_eq!(file.history, HistoryBackend::Memory);
        assert_eq!(flag.history, HistoryBackend::Disk);
        assert_eq!(none.durability, DurabilityMode::Sync);
        assert_eq!(file.durability, DurabilityMode::Relaxed);
        assert_eq!(flag.durability, DurabilityMode::Sync);
    }

    /// The `[default: X]` in each flag's help is what an unset setting gets.
    #[test]
    fn documented_defaults_are_the_defaults() {
        let default = format!("{:?}", Config::load(&parse(&[])).unwrap());
        assert_eq!(default, format!("{:?}", Config::default()));
        let mut documented = 0;
        for arg in settings() {
            let long = arg.get_long().unwrap();
            let help = arg.get_long_help().or(arg.get_help()).unwrap().to_string();
            let Some((_, rest)) = help.split_once("[default: ") else {
                continue;
            };
            let value = &rest[..rest.find(']').unwrap()];
            let flag = format!("--{long}={value}");
            let c = Config::load(&parse(&[&flag])).unwrap();
            assert_eq!(format!("{c:?}"), default, "{flag}");
            documented += 1;
        }
        assert!(documented >= 20, "only {documented} documented defaults");
    }

    #[test]
    fn bad_values_in_the_file_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let load = |toml: &str| {
            let err = Config::load(&ServeArgs {
                config: Some(write(&dir, toml)),
                ..Default::default()
            })
            .unwrap_err();
            format!("{err:#}")
        };
        let err = load("write_timeout = \"soon\"\n");
        assert!(err.contains("config file: write_timeout"), "{err}");
        let err = load("body_timeout = \"0s\"\n");
        assert!(err.contains("body_timeout must be longer than 0"), "{err}");
        let err = load("history = \"tape\"\n");
        assert!(err.contains("history"), "{err}");
    }
}
