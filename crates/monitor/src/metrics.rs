//! The Prometheus text of a set of sources: one family per value, each sample labelled
//! with its `source`, encoded by prometheus-client (OpenMetrics text) from snapshots
//! taken at the scrape.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `walsink_up` | gauge | 1 while streaming |
//! | `walsink_received_lsn` | gauge | end of the WAL received (bytes) |
//! | `walsink_flushed_lsn` | gauge | end of the WAL made durable: the flush position reported to the server |
//! | `walsink_server_wal_end_lsn` | gauge | the server's WAL end from its last keepalive or WAL message |
//! | `walsink_lag_bytes` | gauge | server WAL end minus flushed |
//! | `walsink_last_message_age_seconds` | gauge | time since the server last sent anything (absent before) |
//! | `walsink_bytes_received_total` | counter | WAL bytes received |
//! | `walsink_segments_completed_total` | counter | segments completed (synced and renamed) |
//! | `walsink_reconnects_total` | counter | connection attempts after a failure |
//! | `walsink_fsync_duration_seconds` | histogram | `fdatasync` of segment files |
//! | `walsink_disk_free_bytes` | gauge | free space of the archive's file system (absent if it did not answer in time) |
//! | `walsink_healthy` | gauge | 1 when `/health` counts the source as healthy |

use std::collections::HashMap;
use std::path::PathBuf;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use walsink_receiver::observe::{FSYNC_BUCKETS, Snapshot};

/// Content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of [`classic_text`]'s output.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The classic Prometheus text format (0.0.4) of [`encode`]'s OpenMetrics text, for
/// clients that do not ask for OpenMetrics (`curl`, `promtool check metrics`): a
/// counter family is named with its `_total` suffix, as its samples are, and there is
/// no `# EOF` (nor `# UNIT`) line. Everything else is the same in both formats.
pub fn classic_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for l in openmetrics.lines() {
        if let Some(name) = l
            .strip_prefix("# TYPE ")
            .and_then(|r| r.strip_suffix(" counter"))
        {
            counters.insert(name);
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for l in openmetrics.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = l.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(r) => out.push_str(&r),
            None => out.push_str(l),
        }
        out.push('\n');
    }
    out
}

/// One source at the scrape.
#[derive(Clone, Debug)]
pub struct Row {
    /// The source's name (the `source` label).
    pub name: String,
    /// Its values.
    pub snap: Snapshot,
    /// Free bytes of its archive's file system, if measured.
    pub disk_free: Option<u64>,
}

/// Rows from the sources, with the free space measured for their directories.
pub fn rows(
    sources: &[(String, walsink_receiver::SourceState)],
    disk: &HashMap<PathBuf, u64>,
) -> Vec<Row> {
    sources
        .iter()
        .map(|(name, s)| Row {
            name: name.clone(),
            snap: s.snapshot(),
            disk_free: s.directory().and_then(|d| disk.get(d).copied()),
        })
        .collect()
}

/// The OpenMetrics text of `rows`.
pub fn encode(rows: Vec<Row>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Rows(rows)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[derive(Debug)]
struct Rows(Vec<Row>);

impl Rows {
    fn gauge(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(&Row) -> Option<u64>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for r in &self.0 {
            if let Some(v) = value(r) {
                let labels = [("source", r.name.as_str())];
                ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn counter(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(&Row) -> u64,
    ) -> Result<(), std::fmt::Error> {
        let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for r in &self.0 {
            let labels = [("source", r.name.as_str())];
            ConstCounter::new(value(r)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for Rows {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut enc;
        self.gauge(e, "walsink_up", "1 while the source is streaming", |r| {
            Some(u64::from(
                r.snap.phase == walsink_receiver::Phase::Streaming,
            ))
        })?;
        self.gauge(
            e,
            "walsink_healthy",
            "1 when the health check counts the source as healthy",
            |r| Some(u64::from(r.snap.health.is_ok())),
        )?;
        self.gauge(
            e,
            "walsink_received_lsn",
            "End of the WAL received from the server (LSN as a byte position)",
            |r| Some(r.snap.received.0),
        )?;
        self.gauge(
            e,
            "walsink_flushed_lsn",
            "End of the WAL made durable (fdatasync'ed, completed segments renamed): the flush position reported to the server",
            |r| Some(r.snap.flushed.0),
        )?;
        self.gauge(
            e,
            "walsink_server_wal_end_lsn",
            "The server's WAL end from its last keepalive or WAL message",
            |r| Some(r.snap.server_wal_end.0),
        )?;
        self.gauge(
            e,
            "walsink_lag_bytes",
            "Bytes between the server's WAL end and the durable position",
            |r| Some(r.snap.lag_bytes()),
        )?;
        {
            let mut family = e.encode_descriptor(
                "walsink_last_message_age_seconds",
                "Seconds since the server last sent anything",
                None,
                MetricType::Gauge,
            )?;
            for r in &self.0 {
                if let Some(age) = r.snap.last_message_age {
                    let labels = [("source", r.name.as_str())];
                    ConstGauge::new(age.as_secs_f64()).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        self.counter(e, "walsink_bytes_received", "WAL bytes received", |r| {
            r.snap.bytes_received
        })?;
        self.counter(
            e,
            "walsink_segments_completed",
            "WAL segments completed (synced and renamed to their final name)",
            |r| r.snap.segments_completed,
        )?;
        self.counter(
            e,
            "walsink_reconnects",
            "Connection attempts after a failure",
            |r| r.snap.reconnects,
        )?;
        {
            let mut family = e.encode_descriptor(
                "walsink_fsync_duration_seconds",
                "Duration of fdatasync of WAL segment files",
                None,
                MetricType::Histogram,
            )?;
            for r in &self.0 {
                let labels = [("source", r.name.as_str())];
                let buckets: Vec<(f64, u64)> = FSYNC_BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(r.snap.fsync_buckets)
                    .collect();
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        r.snap.fsync_sum.as_secs_f64(),
                        r.snap.fsync_count(),
                        &buckets,
                        None,
                    )?;
            }
        }
        self.gauge(
            e,
            "walsink_disk_free_bytes",
            "Free bytes (for unprivileged users) on the archive directory's file system",
            |r| r.disk_free,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walsink_receiver::SourceState;

    #[test]
    fn every_metric_is_labelled_with_its_source() {
        let a = SourceState::new();
        a.set_phase(walsink_receiver::Phase::Streaming, None);
        a.set_flushed(walsink_wal::Lsn(0x3000_0000));
        let w = a.write_observer();
        w.synced(std::time::Duration::from_millis(2));
        let rows = rows(
            &[("db1".into(), a), ("db2".into(), SourceState::new())],
            &HashMap::new(),
        );
        let text = encode(rows);
        assert!(
            text.contains("walsink_flushed_lsn{source=\"db1\"} 805306368\n"),
            "{text}"
        );
        assert!(text.contains("walsink_up{source=\"db1\"} 1\n"), "{text}");
        assert!(text.contains("walsink_up{source=\"db2\"} 0\n"), "{text}");
        assert!(
            text.contains("walsink_bytes_received_total{source=\"db2\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "walsink_fsync_duration_seconds_bucket{le=\"0.0025\",source=\"db1\"} 1\n"
            ) || text.contains(
                "walsink_fsync_duration_seconds_bucket{source=\"db1\",le=\"0.0025\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        let classic = classic_text(&text);
        assert!(
            classic.contains(
                "# HELP walsink_bytes_received_total WAL bytes received\n# TYPE walsink_bytes_received_total counter\nwalsink_bytes_received_total{source=\"db1\"} 0\n"
            ),
            "{classic}"
        );
        assert!(classic.contains("# TYPE walsink_flushed_lsn gauge\n"));
        assert!(!classic.contains("# EOF"));
    }
}
