//! What the daemon tells about itself: the counters of `portwatch status` and of `status` lines,
//! and the status socket's answer.
use std::{
    collections::{BTreeMap, VecDeque},
    time::Instant,
};

use serde_json::{Value, json};

use super::{KIND_NAMES, Pipeline, kernel_release};
use crate::kernel::attach::Attached;

impl Pipeline {
    /// What the daemon did and could not do, for `portwatch status` and the periodic `status`
    /// event; `ring_buffer_lost` comes from the kernel's loss counters.
    pub fn counters(&self, ring_buffer_lost: u64) -> Value {
        let mut events = serde_json::Map::new();
        for (i, name) in KIND_NAMES.iter().enumerate() {
            events.insert((*name).into(), json!(self.counts[i]));
        }
        events.insert("total".into(), json!(self.counts.iter().sum::<u64>()));
        events.insert("snapshot".into(), json!(self.snapshot_events));
        let (procs, procs_max, users, users_max) = self.enricher.cache_sizes();
        let ev = self.enricher.evictions;
        json!({
            "events": events,
            "lost": {"ring_buffer": ring_buffer_lost, "log_write_failed": self.sink.stats.lines_failed,
                     "undecodable": self.decode_errors},
            "attribution": {"process_gone": self.process_gone(), "from_process_table": self.enricher.from_table},
            "caches": {"processes": {"size": procs, "max": procs_max, "evictions": ev.processes},
                       "users": {"size": users, "max": users_max, "evictions": ev.users},
                       "process_table": {"size": self.processes.len(), "max": self.processes.max(),
                                         "evictions": self.processes.evictions}},
            "log": {"path": self.sink.log_path(), "bytes": self.sink.log_bytes(),
                    "rotations": self.sink.stats.rotations, "lines_written": self.sink.stats.lines_written},
            "store": self.tenancy.as_ref().map(|t| json!({"open_sockets": t.open_count(),
                "writes_dropped": t.store.dropped, "forgotten": t.forgotten, "swept": t.swept})),
            "alerts": self.alerts.as_ref().map(|e| json!({
                "policy": e.policy.path, "rules": e.policy.rules.len(),
                "reloads": self.policy_reloads, "reload_failures": self.policy_reload_failures,
                "listeners": e.listener_count(), "remembered": e.remembered(),
                "counters": e.counters, "hook": self.hook.figures()})),
            "canary": {"blind": self.canary.blind_families(), "rounds": self.canary.figures},
        })
    }
}

/// What `portwatch status` is told.
pub(super) struct StatusView<'a> {
    pub started: Instant,
    pub attached: &'a Attached,
    pub rates: &'a VecDeque<(Instant, [u64; 4])>,
    pub lost: u64,
}

impl StatusView<'_> {
    pub(super) fn render(&self, p: &Pipeline) -> Value {
        let total: u64 = p.counts.iter().sum();
        let mut per_second = serde_json::Map::new();
        let (window, oldest) = match self.rates.front() {
            Some((at, counts)) => (at.elapsed().as_secs_f64(), *counts),
            None => (0.0, p.counts),
        };
        for (i, name) in KIND_NAMES.iter().enumerate() {
            let rate = if window > 0.0 {
                (p.counts[i] - oldest[i]) as f64 / window
            } else {
                0.0
            };
            per_second.insert((*name).into(), json!(rate));
        }
        let oldest_total: u64 = oldest.iter().sum();
        per_second.insert(
            "total".into(),
            json!(if window > 0.0 {
                (total - oldest_total) as f64 / window
            } else {
                0.0
            }),
        );
        let attach: BTreeMap<String, String> = self
            .attached
            .families
            .iter()
            .map(|f| (f.family.to_string(), f.strategy.to_string()))
            .collect();
        let mut v = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "kernel": kernel_release(),
            "attach": attach,
            "events_per_second": per_second,
            "rate_window_seconds": window.round() as u64,
            "ring_buffer_bytes": self.attached.ring_buffer_bytes,
        });
        if let (Some(m), Value::Object(c)) = (v.as_object_mut(), p.counters(self.lost)) {
            m.extend(c);
        }
        v
    }
}
