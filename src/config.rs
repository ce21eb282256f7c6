//! One configuration, from three sources: a TOML file (lowest), `HERALD_*`
//! environment variables, then command-line flags (highest).
//!
//! clap reads flags and environment together (a flag beats its variable);
//! every field is optional there, so whatever neither gave is then taken from
//! the file, and whatever the file does not give either falls back to the
//! defaults in [`Config::default`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

/// Flags of `herald serve`. Each also reads `HERALD_<NAME>` from the
/// environment and `<name>` (with underscores) from the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file (keys as the flags, with underscores).
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port. [default: 127.0.0.1:8080]
    #[arg(long, env = "HERALD_LISTEN")]
    pub listen: Option<String>,
    /// HS256 secret for publisher and subscriber tokens.
    #[arg(long, env = "HERALD_JWT_KEY", hide_env_values = true)]
    pub jwt_key: Option<String>,
    /// HS256 secret for publisher tokens (overrides --jwt-key for publishers).
    #[arg(long, env = "HERALD_PUBLISHER_JWT_KEY", hide_env_values = true)]
    pub publisher_jwt_key: Option<String>,
    /// HS256 secret for subscriber tokens (overrides --jwt-key for subscribers).
    #[arg(long, env = "HERALD_SUBSCRIBER_JWT_KEY", hide_env_values = true)]
    pub subscriber_jwt_key: Option<String>,
    /// PEM public key (RSA or EC: RS256/PS256/ES256...) for both roles.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// PEM public key for publisher tokens.
    #[arg(long, env = "HERALD_PUBLISHER_JWT_PUBLIC_KEY_FILE")]
    pub publisher_jwt_public_key_file: Option<PathBuf>,
    /// PEM public key for subscriber tokens.
    #[arg(long, env = "HERALD_SUBSCRIBER_JWT_PUBLIC_KEY_FILE")]
    pub subscriber_jwt_public_key_file: Option<PathBuf>,
    /// Let subscribers without a token receive public updates. [default: true]
    #[arg(long, env = "HERALD_ALLOW_ANONYMOUS", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_anonymous: Option<bool>,
    /// Origins allowed to make credentialed cross-origin requests (comma
    /// list, e.g. https://app.example.com). `*` allows any origin without
    /// credentials (cookies are then not sent by browsers).
    #[arg(long, env = "HERALD_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// Keep-alive comment interval (e.g. 15s, 500ms, 1m; 0 disables). [default: 15s]
    #[arg(long, env = "HERALD_HEARTBEAT", value_parser = parse_duration)]
    pub heartbeat: Option<Duration>,
    /// Directory for durable data. [default: ./herald-data]
    #[arg(long, env = "HERALD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Updates kept for resume (Last-Event-ID). [default: 100000]
    #[arg(long, env = "HERALD_HISTORY_SIZE")]
    pub history_size: Option<usize>,
    /// Where history lives: `disk` (durable, a file under --data-dir) or
    /// `memory` (lost on restart). [default: disk]
    #[arg(long, env = "HERALD_HISTORY")]
    pub history: Option<HistoryBackend>,
    /// Drop updates older than this from history (e.g. 24h, 7d; 0 keeps
    /// them until --history-size pushes them out). [default: 0]
    #[arg(long, env = "HERALD_HISTORY_MAX_AGE", value_parser = parse_duration)]
    pub history_max_age: Option<Duration>,
    /// `sync`: a 200 answer to a publish means the update is on disk
    /// (one fsync per batch of concurrent publishes). `relaxed`: fsync at
    /// most once a second; a crash may lose that last second.
    /// [default: sync]
    #[arg(long, env = "HERALD_DURABILITY")]
    pub durability: Option<DurabilityMode>,
    /// Largest accepted publish body in bytes. [default: 1048576]
    #[arg(long, env = "HERALD_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Events queued per subscriber before it is cut off as too slow (it
    /// then resumes from history). [default: 1024]
    #[arg(long, env = "HERALD_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Publish subscription events and serve the subscriptions API. [default: false]
    #[arg(long, env = "HERALD_SUBSCRIPTIONS", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub subscriptions: Option<bool>,
    /// Most topic selectors in one subscribe request. [default: 100]
    #[arg(long, env = "HERALD_MAX_SELECTORS")]
    pub max_selectors: Option<usize>,
    /// Longest topic selector or topic, in bytes. [default: 2048]
    #[arg(long, env = "HERALD_MAX_SELECTOR_LEN")]
    pub max_selector_len: Option<usize>,
    /// Most pattern selectors (URL Patterns, URI templates) in one
    /// subscribe request; each is evaluated on every publish. Exact topics
    /// and `*` count only toward --max-selectors. [default: 20]
    #[arg(long, env = "HERALD_MAX_PATTERNS")]
    pub max_patterns: Option<usize>,
    /// Clock skew tolerated when checking a token's exp and nbf (e.g. 5s,
    /// 500ms, 0). [default: 5s]
    #[arg(long, env = "HERALD_JWT_LEEWAY", value_parser = parse_duration)]
    pub jwt_leeway: Option<Duration>,
    /// Longest accepted JWT in bytes; a longer one is refused (401) unparsed. [default: 16384]
    #[arg(long, env = "HERALD_MAX_TOKEN_LEN")]
    pub max_token_len: Option<usize>,
    /// Serve the demo pages under /demo/. [default: true]
    #[arg(long, env = "HERALD_DEMO", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub demo: Option<bool>,
    /// Limits and deadlines of the HTTP edge. Boxed: `ServeArgs` is a
    /// variant of the CLI's command enum, which should stay small.
    #[command(flatten)]
    pub edge: Box<EdgeArgs>,
}

/// Flags of `herald serve` that protect the HTTP edge from slow, stalled
/// or too many clients.
#[derive(Debug, Clone, Default, Args)]
pub struct EdgeArgs {
    /// A client must send a whole request head within this time, or the
    /// connection is closed (408 if it had started one). [default: 10s]
    #[arg(long, env = "HERALD_HEADER_TIMEOUT", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
    /// A publish body must arrive whole within this time (408). [default: 30s]
    #[arg(long, env = "HERALD_BODY_TIMEOUT", value_parser = parse_duration)]
    pub body_timeout: Option<Duration>,
    /// A write to a client that makes no progress for this long closes the
    /// connection (a client that stopped reading). [default: 30s]
    #[arg(long, env = "HERALD_WRITE_TIMEOUT", value_parser = parse_duration)]
    pub write_timeout: Option<Duration>,
    /// Most client connections open at once; more are answered 503 and
    /// closed (0: no limit). [default: 15000]
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most client connections open at once from one IP address; more are
    /// answered 429 and closed (0: no limit). [default: 4096]
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
}

/// The same settings, as read from the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    jwt_key: Option<String>,
    publisher_jwt_key: Option<String>,
    subscriber_jwt_key: Option<String>,
    jwt_public_key_file: Option<PathBuf>,
    publisher_jwt_public_key_file: Option<PathBuf>,
    subscriber_jwt_public_key_file: Option<PathBuf>,
    allow_anonymous: Option<bool>,
    cors_origins: Option<Vec<String>>,
    heartbeat: Option<String>,
    data_dir: Option<PathBuf>,
    history_size: Option<usize>,
    history: Option<HistoryBackend>,
    history_max_age: Option<String>,
    durability: Option<DurabilityMode>,
    max_body: Option<usize>,
    queue_capacity: Option<usize>,
    subscriptions: Option<bool>,
    max_selectors: Option<usize>,
    max_selector_len: Option<usize>,
    max_patterns: Option<usize>,
    jwt_leeway: Option<String>,
    max_token_len: Option<usize>,
    demo: Option<bool>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    write_timeout: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
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
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub publisher_key: Option<KeySource>,
    pub subscriber_key: Option<KeySource>,
    pub allow_anonymous: bool,
    pub cors_origins: Vec<String>,
    pub heartbeat: Duration,
    pub data_dir: PathBuf,
    pub history_size: usize,
    pub history: HistoryBackend,
    pub history_max_age: Option<Duration>,
    pub durability: DurabilityMode,
    pub max_body: usize,
    pub queue_capacity: usize,
    pub subscriptions: bool,
    pub max_selectors: usize,
    pub max_selector_len: usize,
    pub max_patterns: usize,
    pub jwt_leeway: Duration,
    pub max_token_len: usize,
    pub demo: bool,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub write_timeout: Duration,
    /// 0: no limit.
    pub max_connections: usize,
    /// 0: no limit.
    pub max_connections_per_ip: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            publisher_key: None,
            subscriber_key: None,
            allow_anonymous: true,
            cors_origins: Vec::new(),
            heartbeat: Duration::from_secs(15),
            data_dir: PathBuf::from("./herald-data"),
            history_size: 100_000,
            history: HistoryBackend::Disk,
            history_max_age: None,
            durability: DurabilityMode::Sync,
            max_body: 1024 * 1024,
            queue_capacity: 1024,
            subscriptions: false,
            max_selectors: 100,
            max_selector_len: 2048,
            max_patterns: 20,
            jwt_leeway: crate::auth::DEFAULT_LEEWAY,
            max_token_len: crate::auth::DEFAULT_MAX_TOKEN_LEN,
            demo: true,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            // Fixed rather than derived from RLIMIT_NOFILE: a predictable
            // number, and with the common 20,000 open-files limit it leaves
            // ~5,000 descriptors for history, logs and refused sockets.
            max_connections: 15_000,
            max_connections_per_ip: 4096,
        }
    }
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
        let d = Config::default();
        let heartbeat = match (args.heartbeat, &file.heartbeat) {
            (Some(h), _) => h,
            (None, Some(s)) => {
                parse_duration(s).map_err(|e| anyhow::anyhow!("config file: heartbeat: {e}"))?
            }
            (None, None) => d.heartbeat,
        };
        let history_max_age = match (args.history_max_age, &file.history_max_age) {
            (Some(a), _) => a,
            (None, Some(s)) => parse_duration(s)
                .map_err(|e| anyhow::anyhow!("config file: history_max_age: {e}"))?,
            (None, None) => Duration::ZERO,
        };
        let jwt_leeway = match (args.jwt_leeway, &file.jwt_leeway) {
            (Some(l), _) => l,
            (None, Some(s)) => {
                parse_duration(s).map_err(|e| anyhow::anyhow!("config file: jwt_leeway: {e}"))?
            }
            (None, None) => d.jwt_leeway,
        };
        let key = |secret: &Option<String>, pem: &Option<PathBuf>| -> Option<KeySource> {
            pem.clone()
                .map(KeySource::PublicKeyFile)
                .or_else(|| secret.clone().map(KeySource::Secret))
        };
        let shared = key(&args.jwt_key, &args.jwt_public_key_file)
            .or_else(|| key(&file.jwt_key, &file.jwt_public_key_file));
        let publisher_key = key(&args.publisher_jwt_key, &args.publisher_jwt_public_key_file)
            .or_else(|| key(&file.publisher_jwt_key, &file.publisher_jwt_public_key_file))
            .or_else(|| shared.clone());
        let subscriber_key = key(
            &args.subscriber_jwt_key,
            &args.subscriber_jwt_public_key_file,
        )
        .or_else(|| {
            key(
                &file.subscriber_jwt_key,
                &file.subscriber_jwt_public_key_file,
            )
        })
        .or(shared);
        let cfg = Config {
            listen: args.listen.clone().or(file.listen).unwrap_or(d.listen),
            publisher_key,
            subscriber_key,
            allow_anonymous: args
                .allow_anonymous
                .or(file.allow_anonymous)
                .unwrap_or(d.allow_anonymous),
            cors_origins: args
                .cors_origins
                .clone()
                .or(file.cors_origins)
                .unwrap_or_default()
                .into_iter()
                .map(|o| o.trim().trim_end_matches('/').to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            heartbeat,
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or(d.data_dir),
            history_size: args
                .history_size
                .or(file.history_size)
                .unwrap_or(d.history_size),
            history: args.history.or(file.history).unwrap_or(d.history),
            history_max_age: Some(history_max_age).filter(|a| !a.is_zero()),
            durability: args.durability.or(file.durability).unwrap_or(d.durability),
            max_body: args.max_body.or(file.max_body).unwrap_or(d.max_body),
            queue_capacity: args
                .queue_capacity
                .or(file.queue_capacity)
                .unwrap_or(d.queue_capacity),
            subscriptions: args
                .subscriptions
                .or(file.subscriptions)
                .unwrap_or(d.subscriptions),
            max_selectors: args
                .max_selectors
                .or(file.max_selectors)
                .unwrap_or(d.max_selectors),
            max_selector_len: args
                .max_selector_len
                .or(file.max_selector_len)
                .unwrap_or(d.max_selector_len),
            max_patterns: args
                .max_patterns
                .or(file.max_patterns)
                .unwrap_or(d.max_patterns),
            jwt_leeway,
            max_token_len: args
                .max_token_len
                .or(file.max_token_len)
                .unwrap_or(d.max_token_len),
            demo: args.demo.or(file.demo).unwrap_or(d.demo),
            header_timeout: timeout(
                args.edge.header_timeout,
                &file.header_timeout,
                "header_timeout",
                d.header_timeout,
            )?,
            body_timeout: timeout(
                args.edge.body_timeout,
                &file.body_timeout,
                "body_timeout",
                d.body_timeout,
            )?,
            write_timeout: timeout(
                args.edge.write_timeout,
                &file.write_timeout,
                "write_timeout",
                d.write_timeout,
            )?,
            max_connections: args
                .edge
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            max_connections_per_ip: args
                .edge
                .max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(d.max_connections_per_ip),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.queue_capacity == 0 {
            bail!("queue_capacity must be at least 1");
        }
        if self.max_selectors == 0 || self.max_selector_len == 0 {
            bail!("max_selectors and max_selector_len must be at least 1");
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

/// A timeout from a flag/env value, else the file, else the default. Zero
/// is refused: a timeout that fires at once would refuse every client.
fn timeout(
    arg: Option<Duration>,
    file: &Option<String>,
    name: &str,
    default: Duration,
) -> anyhow::Result<Duration> {
    let value = match (arg, file) {
        (Some(t), _) => t,
        (None, Some(s)) => {
            parse_duration(s).map_err(|e| anyhow::anyhow!("config file: {name}: {e}"))?
        }
        (None, None) => default,
    };
    if value.is_zero() {
        bail!("{name} must be longer than 0 (e.g. 10s)");
    }
    Ok(value)
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
}
