//! Redis Sentinel: which Redis is the primary of a monitored master right
//! now, asked of the sentinels each time a connection is dialled.
//!
//! `--transport redis+sentinel://[user:password@]host:port[,host:port...]/<master-name>[/<db>]`
//! names the sentinels (not the primary) and the master's name as the
//! sentinels know it (`sentinel monitor <master-name> ...`). The
//! credentials and the database are the primary's; the sentinels are asked
//! without credentials. Several `redis+sentinel://` URLs in `--transport`
//! (comma-separated like plain ones) are several masters, one per group of
//! partitions, exactly like several `redis://` URLs.
//!
//! How a failover is followed (the Redis Sentinel client guidelines): every
//! dial asks the sentinels in turn for the primary's address
//! (`SENTINEL get-master-addr-by-name`), connects there, and checks with
//! `ROLE` that it is a primary; a sentinel that answered goes first next
//! time. Herald drops a connection on any error, so when the primary dies
//! (connection errors), or is demoted and answers `READONLY`, the next
//! command dials again and so finds the new primary. Publishes answer 503
//! with the reason meanwhile; nothing is acknowledged that the log did not
//! take.

use std::time::Duration;

use parking_lot::Mutex;
use redis::AsyncConnectionConfig;

/// How long a sentinel gets to answer (connect, then the question).
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);

/// A `redis+sentinel://` URL, parsed.
#[derive(Debug)]
pub(super) struct Sentinels {
    /// `host:port` of each sentinel, the last one that answered first.
    pub(super) hosts: Mutex<Vec<String>>,
    pub(super) master: String,
    /// `user:password@` (or `:password@`) for the primary, as written.
    credentials: String,
    /// `/db`, as written, or empty.
    db: String,
    /// `--redis-nat-map`: addresses given out that are dialled elsewhere.
    nat: Vec<(String, String)>,
}

pub(super) const SCHEME: &str = "redis+sentinel://";

impl Sentinels {
    /// Parse `redis+sentinel://...`; `None` if `url` is not one.
    pub(super) fn parse(url: &str) -> Option<anyhow::Result<Sentinels>> {
        let rest = url.strip_prefix(SCHEME)?;
        Some(Self::parse_rest(url, rest))
    }

    /// Dial these given addresses elsewhere (`--redis-nat-map`).
    pub(super) fn with_nat_map(mut self, nat: &[(String, String)]) -> Sentinels {
        self.nat = nat.to_vec();
        self
    }

    /// Where to dial the primary the sentinels named at `ip:port`.
    fn dialled(&self, ip: &str, port: u16) -> String {
        let given = format!("{ip}:{port}");
        match self.nat.iter().find(|(from, _)| *from == given) {
            Some((_, to)) => to.clone(),
            None => given,
        }
    }

    fn parse_rest(url: &str, rest: &str) -> anyhow::Result<Sentinels> {
        let usage = "expected redis+sentinel://[user:password@]host:port[,host:port...]/<master-name>[/<db>]";
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("--transport {url}: no master name; {usage}"))?;
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((c, h)) => (format!("{c}@"), h),
            None => (String::new(), authority),
        };
        let hosts: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.contains(':') {
                    h.to_string()
                } else {
                    format!("{h}:26379")
                }
            })
            .collect();
        if hosts.is_empty() {
            anyhow::bail!("--transport {url}: no sentinel named; {usage}");
        }
        for h in &hosts {
            let port = h.rsplit(':').next().unwrap_or("");
            if port.parse::<u16>().is_err() {
                anyhow::bail!("--transport {url}: {h:?} is not host:port; {usage}");
            }
        }
        let (master, db) = match path.split_once('/') {
            Some((m, db)) => (m, db),
            None => (path, ""),
        };
        if master.is_empty() {
            anyhow::bail!("--transport {url}: no master name; {usage}");
        }
        if !db.is_empty() && db.parse::<u32>().is_err() {
            anyhow::bail!("--transport {url}: the database {db:?} is not a number; {usage}");
        }
        Ok(Sentinels {
            hosts: Mutex::new(hosts),
            master: master.to_string(),
            credentials,
            nat: Vec::new(),
            db: if db.is_empty() {
                String::new()
            } else {
                format!("/{db}")
            },
        })
    }

    /// The primary's `redis://` URL, as the first sentinel that knows the
    /// master says.
    pub(super) async fn primary(&self) -> Result<String, String> {
        let hosts = self.hosts.lock().clone();
        let mut errors = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            match self.ask(host).await {
                Ok(Some((ip, port))) => {
                    if i > 0 {
                        // The guidelines: one that answered goes first.
                        let mut list = self.hosts.lock();
                        if let Some(at) = list.iter().position(|h| h == host) {
                            let h = list.remove(at);
                            list.insert(0, h);
                        }
                    }
                    return Ok(format!(
                        "redis://{}{}{}",
                        self.credentials,
                        self.dialled(&ip, port),
                        self.db
                    ));
                }
                Ok(None) => errors.push(format!("{host}: does not know master {:?}", self.master)),
                Err(e) => errors.push(format!("{host}: {e}")),
            }
        }
        Err(format!(
            "no sentinel named the primary of {:?} ({})",
            self.master,
            errors.join("; ")
        ))
    }

    async fn ask(&self, host: &str) -> Result<Option<(String, u16)>, String> {
        let client = redis::Client::open(format!("redis://{host}/")).map_err(|e| e.to_string())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(SENTINEL_TIMEOUT)
            .set_response_timeout(SENTINEL_TIMEOUT);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        let answer: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(answer)
    }
}

/// Whether the Redis behind `conn` is a primary (`ROLE`), for a connection
/// made through the sentinels: during a failover they may still name one
/// that was demoted.
pub(super) async fn is_primary(
    conn: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<bool> {
    let role: redis::Value = redis::cmd("ROLE").query_async(conn).await?;
    let first = match role {
        redis::Value::Array(items) => items.into_iter().next(),
        _ => None,
    };
    Ok(match first {
        Some(redis::Value::BulkString(b)) => b == b"master",
        Some(redis::Value::SimpleString(s)) => s == "master",
        _ => false,
    })
}

/// What `ROLE` says of a Redis: whether it is a primary, and how many
/// replicas are connected to it.
pub(super) fn primary_with_replicas(role: &redis::Value) -> Option<usize> {
    let redis::Value::Array(items) = role else {
        return None;
    };
    let master = match items.first() {
        Some(redis::Value::BulkString(b)) => b == b"master",
        Some(redis::Value::SimpleString(s)) => s == "master",
        _ => false,
    };
    if !master {
        return None;
    }
    match items.get(2) {
        Some(redis::Value::Array(replicas)) => Some(replicas.len()),
        _ => Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_tells_a_primary_and_its_replicas() {
        use redis::Value::{Array, BulkString, Int};
        let replica = Array(vec![
            BulkString(b"127.0.0.1".to_vec()),
            BulkString(b"6380".to_vec()),
            BulkString(b"12".to_vec()),
        ]);
        let primary = |replicas| {
            Array(vec![
                BulkString(b"master".to_vec()),
                Int(12),
                Array(replicas),
            ])
        };
        assert_eq!(primary_with_replicas(&primary(vec![])), Some(0));
        assert_eq!(
            primary_with_replicas(&primary(vec![replica.clone()])),
            Some(1)
        );
        let demoted = Array(vec![
            BulkString(b"slave".to_vec()),
            BulkString(b"127.0.0.1".to_vec()),
            Int(6379),
            BulkString(b"connected".to_vec()),
            Int(12),
        ]);
        assert_eq!(primary_with_replicas(&demoted), None);
        assert_eq!(primary_with_replicas(&Int(1)), None);
    }

    #[test]
    fn urls_are_parsed_by_the_conventions() {
        let s = Sentinels::parse("redis+sentinel://a:26379,b:26380/mymaster")
            .unwrap()
            .unwrap();
        assert_eq!(*s.hosts.lock(), ["a:26379", "b:26380"]);
        assert_eq!(s.master, "mymaster");
        let s = Sentinels::parse("redis+sentinel://u:pw@a,b:1/m/2")
            .unwrap()
            .unwrap();
        assert_eq!(*s.hosts.lock(), ["a:26379", "b:1"]);
        assert_eq!((s.credentials.as_str(), s.db.as_str()), ("u:pw@", "/2"));
        assert!(Sentinels::parse("redis://a").is_none());
        for bad in [
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/",
            "redis+sentinel:///m",
            "redis+sentinel://a:x/m",
            "redis+sentinel://a:1/m/db",
        ] {
            let e = Sentinels::parse(bad).unwrap().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("expected"), "{bad}: {e}");
        }
    }

    #[test]
    fn given_addresses_are_dialled_through_the_nat_map() {
        let map = crate::cluster::ClusterConfig::nat_map_of(Some(
            "10.0.0.5:6379=127.0.0.1:16379, 10.0.0.6:6379=proxy:7000",
        ))
        .unwrap();
        let s = Sentinels::parse("redis+sentinel://a/m")
            .unwrap()
            .unwrap()
            .with_nat_map(&map);
        assert_eq!(s.dialled("10.0.0.5", 6379), "127.0.0.1:16379");
        assert_eq!(s.dialled("10.0.0.6", 6379), "proxy:7000");
        assert_eq!(s.dialled("10.0.0.7", 6379), "10.0.0.7:6379");
        assert!(crate::cluster::ClusterConfig::nat_map_of(None)
            .unwrap()
            .is_empty());
        for bad in ["a=b", "a:1", "a:1=b", "a:1=b:x", ":1=b:2"] {
            let e = crate::cluster::ClusterConfig::nat_map_of(Some(bad)).unwrap_err();
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
    }
}
