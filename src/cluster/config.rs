//! The engine's settings, from the command line (`--transport`,
//! `--redis-partitions`, `--redis-replicas`, ...), and the checks that
//! refuse a layout that cannot work before anything is dialled.

use std::time::Duration;

/// Most partitions (`--redis-partitions`).
pub const MAX_PARTITIONS: usize = 256;

/// Cluster settings, from the command line.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`, one per Redis instance;
    /// partition `p` lives on `urls[p % urls.len()]`.
    pub urls: Vec<String>,
    /// How many logs the updates are spread over, by topic.
    pub partitions: usize,
    /// This node's name, in logs and `/readyz`.
    pub node_id: String,
    /// Each partition's log keeps about this many entries (`MAXLEN ~`).
    pub max_len: usize,
    /// Ids are remembered this long (for duplicates and cross-node resume).
    pub id_ttl: Option<Duration>,
    /// A publish answers 200 only once this many replicas of each Redis it
    /// wrote to have it (Redis `WAIT`); 0: not asked.
    pub replicas: usize,
    /// How long a publish waits for those replicas (then 503).
    pub replica_timeout: Duration,
    /// PEM certificates that `rediss://` servers must chain to (none: the
    /// system's trust store).
    pub tls_ca: Option<std::path::PathBuf>,
    /// Through Redis Sentinel: `(given, dialled)` addresses, `host:port`
    /// each (`--redis-nat-map`).
    pub nat_map: Vec<(String, String)>,
}

impl ClusterConfig {
    /// Split `--transport` (comma-separated URLs). A
    /// `redis+sentinel://` URL lists its sentinels with commas too: a part
    /// that does not start with a scheme continues the URL before it.
    pub fn urls_of(transport: &str) -> Vec<String> {
        let mut urls: Vec<String> = Vec::new();
        for part in transport.split(',').map(str::trim) {
            if part.is_empty() {
                continue;
            }
            let continues = !part.contains("://")
                && urls
                    .last()
                    .is_some_and(|u| u.starts_with(super::sentinel::SCHEME));
            match urls.last_mut() {
                Some(last) if continues => {
                    last.push(',');
                    last.push_str(part);
                }
                _ => urls.push(part.to_string()),
            }
        }
        urls
    }

    /// Parse `--redis-nat-map`: `FROM=TO` pairs, comma-separated, each
    /// side `host:port`.
    pub fn nat_map_of(map: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
        let usage = "expected FROM=TO pairs, comma-separated, each host:port";
        let host_port = |s: &str| {
            s.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        };
        let mut pairs = Vec::new();
        for pair in map.unwrap_or("").split(',').map(str::trim) {
            if pair.is_empty() {
                continue;
            }
            match pair.split_once('=') {
                Some((from, to)) if host_port(from.trim()) && host_port(to.trim()) => {
                    pairs.push((from.trim().to_string(), to.trim().to_string()))
                }
                _ => anyhow::bail!("{pair:?}: {usage}"),
            }
        }
        Ok(pairs)
    }

    pub(super) fn check(&self) -> anyhow::Result<()> {
        if self.urls.is_empty() {
            anyhow::bail!("--transport names no Redis");
        }
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            anyhow::bail!(
                "--redis-partitions {} is out of range: 1 to {MAX_PARTITIONS}",
                self.partitions
            );
        }
        if self.partitions < self.urls.len() {
            anyhow::bail!(
                "--redis-partitions {} is fewer than the {} Redis instances in --transport: \
                 each instance holds at least one partition",
                self.partitions,
                self.urls.len()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_checked() {
        let c = |urls: &[&str], partitions| ClusterConfig {
            urls: urls.iter().map(|s| s.to_string()).collect(),
            partitions,
            node_id: "n".into(),
            max_len: 10,
            id_ttl: None,
            replicas: 0,
            replica_timeout: Duration::from_secs(1),
            nat_map: Vec::new(),
            tls_ca: None,
        };
        assert!(c(&["redis://a"], 1).check().is_ok());
        assert!(c(&["redis://a", "redis://b"], 4).check().is_ok());
        let e = c(&["redis://a", "redis://b"], 1).check().unwrap_err();
        assert!(e.to_string().contains("fewer than the 2 Redis"), "{e}");
        assert!(c(&["redis://a"], 0).check().is_err());
        assert!(c(&["redis://a"], MAX_PARTITIONS + 1).check().is_err());
        assert_eq!(
            ClusterConfig::urls_of(" redis://a:1 ,redis://b:2,"),
            vec!["redis://a:1", "redis://b:2"]
        );
        assert_eq!(
            ClusterConfig::urls_of(
                "redis+sentinel://a:1,b:2/m1,redis+sentinel://a:1, b:2/m2,redis://c"
            ),
            vec![
                "redis+sentinel://a:1,b:2/m1",
                "redis+sentinel://a:1,b:2/m2",
                "redis://c"
            ]
        );
    }
}
