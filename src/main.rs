//! The `herald` command: `serve`, `token`, `publish`, `subscribe`.

use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context};

use clap::{Parser, Subcommand};

use herald::config::{parse_duration, Config, ServeArgs};

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "A real-time push hub: Mercure over Server-Sent Events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines: `text` (readable on a terminal) or `json` (one object per
    /// line, for a log collector). The level comes from HERALD_LOG (e.g.
    /// `herald=debug`; default `herald=info`).
    #[arg(
        long,
        global = true,
        env = "HERALD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

const DEFAULT_HUB: &str = "http://127.0.0.1:8080/.well-known/mercure";

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    // Boxed: ServeArgs is far larger than the other variants.
    Serve(Box<ServeArgs>),
    /// Mint a JWT for development (HS256).
    Token {
        /// HS256 secret, the same the hub was started with.
        #[arg(long, env = "HERALD_JWT_KEY", hide_env_values = true)]
        jwt_key: String,
        /// Topic selector the token may publish to (repeatable; `*` for all).
        #[arg(long)]
        publish: Vec<String>,
        /// Topic selector whose private updates the token may read (repeatable).
        #[arg(long)]
        subscribe: Vec<String>,
        /// JSON payload shown in the subscriptions API.
        #[arg(long)]
        payload: Option<String>,
        /// Lifetime (e.g. 1h, 30m); 0 for no expiry.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: std::time::Duration,
        /// Let the token open the status page (/ui/) from any address: adds
        /// the claim {"herald": {"status": true}}.
        #[arg(long)]
        status: bool,
    },
    /// Publish one update.
    Publish {
        #[arg(long, env = "HERALD_HUB_URL", default_value = DEFAULT_HUB)]
        hub: String,
        /// Publisher token (or give --jwt-key to mint one on the fly).
        #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long, env = "HERALD_JWT_KEY", hide_env_values = true)]
        jwt_key: Option<String>,
        /// Topic (repeatable: the first is canonical, others alternates).
        #[arg(long, required = true)]
        topic: Vec<String>,
        /// The data; `-` reads standard input.
        #[arg(long, default_value = "")]
        data: String,
        #[arg(long)]
        id: Option<String>,
        /// SSE event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Reconnection delay for clients, in milliseconds.
        #[arg(long)]
        retry: Option<u64>,
        /// Only subscribers allowed to read one of the topics receive it.
        #[arg(long)]
        private: bool,
    },
    /// Work on a durable history file offline.
    History {
        #[command(subcommand)]
        command: HistoryCommand,
    },
    /// Print events as they arrive; resumes with Last-Event-ID after a drop.
    Subscribe {
        #[arg(long, env = "HERALD_HUB_URL", default_value = DEFAULT_HUB)]
        hub: String,
        #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Exact topic or `*` (repeatable).
        #[arg(long = "match")]
        matches: Vec<String>,
        /// URL Pattern (repeatable).
        #[arg(long)]
        match_urlpattern: Vec<String>,
        /// URI template, deployed Mercure dialect (repeatable).
        #[arg(long)]
        topic: Vec<String>,
        /// Resume after this event id (`earliest` for all history).
        #[arg(long)]
        last_event_id: Option<String>,
        /// Exit after this many events.
        #[arg(long)]
        max_events: Option<u64>,
        /// Print each event as a JSON line instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum HistoryCommand {
    /// Read every record of history.redb and report what it holds, or the
    /// first damage found (exit code 1). Run it while herald is stopped.
    Check {
        /// The data dir herald serve uses.
        #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
        data_dir: std::path::PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
                .unwrap_or_else(|_| "herald=info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| LogWriter);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli.command)) {
        let _ = writeln!(std::io::stderr(), "error: {e:#}");
        std::process::exit(1);
    }
}

/// Where log lines go: stderr, and a line that cannot be written there (a
/// full disk, a closed pipe) is dropped. Logging must never stop the hub.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => herald::server::run(Config::load(&args)?).await,
        Command::History {
            command: HistoryCommand::Check { data_dir },
        } => {
            let report = herald::history::DiskHistory::check(&data_dir)?;
            println!("{report}");
            Ok(())
        }
        Command::Token {
            jwt_key,
            publish,
            subscribe,
            payload,
            ttl,
            status,
        } => {
            let payload = payload
                .map(|p| serde_json::from_str(&p))
                .transpose()
                .context("--payload is not valid JSON")?;
            let ttl = (!ttl.is_zero()).then_some(ttl.as_secs());
            let herald_claim = status.then(|| serde_json::json!({ "status": true }));
            println!(
                "{}",
                herald::auth::mint_hs256_with(
                    &jwt_key,
                    &publish,
                    &subscribe,
                    payload,
                    ttl,
                    herald_claim
                )?
            );
            Ok(())
        }
        Command::Publish {
            hub,
            token,
            jwt_key,
            topic,
            data,
            id,
            event_type,
            retry,
            private,
        } => {
            let token = match (token, jwt_key) {
                (Some(t), _) => t,
                (None, Some(k)) => herald::auth::mint_hs256(&k, &topic, &[], None, Some(60))?,
                (None, None) => bail!("give --token (or HERALD_TOKEN), or --jwt-key to mint one"),
            };
            let data = if data == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading data from standard input")?;
                s
            } else {
                data
            };
            let retry = retry.map(|r| r.to_string());
            let mut fields: Vec<(&str, &str)> =
                topic.iter().map(|t| ("topic", t.as_str())).collect();
            fields.push(("data", &data));
            if let Some(id) = &id {
                fields.push(("id", id));
            }
            if let Some(t) = &event_type {
                fields.push(("type", t));
            }
            if let Some(r) = &retry {
                fields.push(("retry", r));
            }
            if private {
                fields.push(("private", "on"));
            }
            println!("{}", herald::client::publish(&hub, &token, &fields).await?);
            Ok(())
        }
        Command::Subscribe {
            hub,
            token,
            matches,
            match_urlpattern,
            topic,
            last_event_id,
            max_events,
            json,
        } => {
            let mut selectors: Vec<(String, String)> =
                matches.into_iter().map(|m| ("match".into(), m)).collect();
            selectors.extend(
                match_urlpattern
                    .into_iter()
                    .map(|m| ("match_urlpattern".into(), m)),
            );
            selectors.extend(topic.into_iter().map(|m| ("topic".into(), m)));
            if selectors.is_empty() {
                bail!("give at least one --match, --match-urlpattern or --topic");
            }
            let opts = herald::client::SubscribeOptions {
                hub_url: hub,
                token,
                selectors,
                last_event_id,
                max_events,
                max_retries: 10,
            };
            herald::client::subscribe(opts, |ev| {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"id": ev.id, "type": ev.event_type, "data": ev.data})
                    );
                } else {
                    println!(
                        "id: {}\nevent: {}\ndata: {}\n",
                        ev.id, ev.event_type, ev.data
                    );
                }
            })
            .await
        }
    }
}
