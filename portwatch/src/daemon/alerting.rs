//! The listener policy's side of the pipeline: judging port events, reconciliation scans, alert
//! lines and their other outputs, reloads, and the canary that notices blinding.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::Path,
};

use serde_json::{Value, json};

use super::Pipeline;
use crate::{
    attribution::Attribution,
    clock,
    judgement::alert::{Alert, AlertBody, AlertEngine, ListenerFacts, Subject},
    judgement::canary,
    judgement::hook,
    kernel::decode::{KernelEvent, Kind, Transport},
    kernel::sockets,
    output::schema::{AlertRecord, Network, PortRecord, Process},
};

impl Pipeline {
    /// An `alert` line, a WARN diagnostic (journald priority warning under systemd), and the
    /// exec hook.
    pub fn write_alert(&mut self, a: &Alert) {
        let header = Self::header(&mut self.seq, &self.host, "alert", clock::now_rfc3339());
        let rec = AlertRecord {
            header,
            alert: &a.body,
            network: &a.subject.network,
            port: &a.subject.port,
            process: &a.subject.process,
            origin: a.origin,
        };
        let line = match serde_json::to_string(&rec) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "serializing an alert failed");
                return;
            }
        };
        tracing::warn!(
            kind = a.body.kind,
            severity = a.body.severity,
            count = a.body.count,
            summary = a.body.summary,
            pid = %a.subject.process["pid"],
            executable = %a.subject.process["executable"],
            local = %a.subject.network["local"],
            origin = a.origin,
            "ALERT: {}",
            a.body.rule
        );
        self.sink.push(line.as_bytes());
        if let Some(hook) = self.alerts.as_ref().and_then(|e| e.policy.hook.as_ref()) {
            hook::dispatch(hook, &self.hook, line);
        }
    }
    /// Compares the policy with a fresh scan of the kernel's sockets (every
    /// `reconcile_interval_seconds`, and after a policy reload), so a listener whose events were
    /// lost still alerts.
    pub fn reconcile(&mut self) {
        if self.alerts.is_none() {
            return;
        }
        let found = match sockets::dump_all() {
            Ok(f) => f,
            Err(e) => {
                if let Some(engine) = &mut self.alerts {
                    engine.counters.reconcile_failed += 1;
                }
                tracing::error!(error = %e, "reconciliation scan failed; listeners whose events were lost go unnoticed until the next one");
                return;
            }
        };
        let owners = sockets::owners(Path::new("/proc"));
        let netns = sockets::own_netns();
        let mono = clock::monotonic_now();
        let wall_ns = clock::now_unix_ns();
        let mut listeners = Vec::new();
        let mut per_destination: HashMap<(&'static str, SocketAddr), u64> = HashMap::new();
        // Unconnected sockets still there: a UDP listener known from its bind event stays known
        // even where a scan alone could not call it one.
        let present: HashSet<(&'static str, SocketAddr)> = found
            .iter()
            .filter(|s| s.peer.is_none())
            .map(|s| (s.transport.as_str(), s.local))
            .collect();
        for s in &found {
            let ephemeral = self.ephemeral.info(s.local.port()).ephemeral;
            if let Some(peer) = s.peer {
                if ephemeral {
                    *per_destination
                        .entry((s.transport.as_str(), peer))
                        .or_default() += 1;
                }
                continue;
            }
            if !(s.is_tcp_listener() || (s.transport == Transport::Udp && !ephemeral)) {
                continue;
            }
            let pid = owners.get(&s.inode).copied().unwrap_or(0);
            let ev = sockets::to_event(s, pid, netns, Path::new("/proc"), mono);
            let attr = if pid == 0 {
                Attribution::default()
            } else {
                self.enricher.attribute(&ev, &self.processes)
            };
            let network = Network::of(&ev);
            let process = Process::of(&ev, attr);
            listeners.push(listener_facts(
                s.local,
                &network,
                self.ephemeral.info(s.local.port()),
                &process,
            ));
        }
        let size = self.ephemeral.size();
        let alerts = match &mut self.alerts {
            Some(engine) => {
                engine.reconcile(netns, listeners, &present, &per_destination, size, wall_ns)
            }
            None => Vec::new(),
        };
        for a in alerts {
            self.write_alert(&a);
        }
    }
    /// Summaries of counted repeats; then the dedup state goes to disk.
    pub fn summarise_alerts(&mut self) {
        let now = clock::now_unix_ns();
        let alerts = match &mut self.alerts {
            Some(engine) => engine.summarise(now),
            None => Vec::new(),
        };
        for a in alerts {
            self.write_alert(&a);
        }
        self.save_alerts();
    }
    pub fn save_alerts(&mut self) {
        if let Some(engine) = &mut self.alerts {
            engine.save();
        }
    }
    /// SIGHUP: re-reads the policy file. A file that does not parse leaves the running policy in
    /// place (logged at error level). True when a new policy was installed.
    pub fn reload_policy(&mut self, path: Option<&Path>) -> bool {
        let Some(path) = path else { return false };
        match crate::judgement::policy::Policy::load(path) {
            Ok(p) => {
                tracing::info!(path = %path.display(), rules = p.rules.len(), "policy reloaded");
                match &mut self.alerts {
                    Some(engine) => engine.policy = p,
                    None => self.alerts = Some(AlertEngine::new(p, &self.state_dir)),
                }
                self.policy_reloads += 1;
                true
            }
            Err(e) => {
                self.policy_reload_failures += 1;
                tracing::error!(error = %e, "policy reload failed; the previous policy stays in force");
                false
            }
        }
    }
    /// Judges the last canary round and sends the next; a family gone blind is an error and a
    /// `monitoring_blind` alert line (with or without a policy).
    pub fn canary_round(&mut self, ring_buffer_lost: u64) {
        for v in self.canary.round(ring_buffer_lost) {
            match v {
                canary::Verdict::Blind(families) => {
                    tracing::error!(
                        ?families,
                        "hook families delivered no event for the daemon's own test sockets: their programs were detached or their events are filtered; events of these kinds are being missed"
                    );
                    let now = clock::now_rfc3339();
                    let a = Alert {
                        body: AlertBody {
                            kind: "monitoring_blind".into(),
                            severity: "high".into(),
                            rule: format!(
                                "no {} event came back for the daemon's own loopback test sockets: the programs were detached or their events are filtered",
                                families.join(", ")
                            ),
                            first_seen: now,
                            count: 1,
                            summary: false,
                            detail: Some(json!({"families": families})),
                        },
                        subject: Subject::default(),
                        origin: "canary",
                    };
                    self.write_alert(&a);
                }
                canary::Verdict::Recovered(families) => {
                    tracing::info!(?families, "hook families deliver events again");
                }
            }
        }
    }
    /// Required listeners missing right after the start-up snapshot.
    pub fn check_required(&mut self) {
        let now = clock::now_unix_ns();
        let alerts = match &mut self.alerts {
            Some(engine) => engine.required_missing("snapshot", now),
            None => Vec::new(),
        };
        for a in alerts {
            self.write_alert(&a);
        }
    }
}

/// A listener is a TCP socket in LISTEN, or a UDP socket bound to a port its caller named. A
/// kernel bind event says whether the port was named; a scan does not, so there a UDP socket
/// counts when its port lies outside the ephemeral range, where the kernel never picks one.
fn is_listener(ev: &KernelEvent, port: crate::attribution::ports::PortInfo) -> bool {
    ev.errno.is_none()
        && ev.local.port() != 0
        && match ev.kind {
            Kind::Listen => true,
            Kind::Bind => {
                ev.transport == Transport::Udp && port.requested.unwrap_or(!port.ephemeral)
            }
            _ => false,
        }
}

/// `local` is the socket's address as the kernel gave it (`network` holds it as text).
fn listener_facts(
    local: SocketAddr,
    network: &Network,
    port: crate::attribution::ports::PortInfo,
    process: &Process,
) -> ListenerFacts {
    ListenerFacts {
        netns: network.netns,
        transport: network.transport,
        local,
        executable: process.executable.clone(),
        comm: process.comm.clone(),
        user_id: process.user.id,
        user_name: process.user.name.clone(),
        unit: process.unit.clone(),
        container_id: process.container.as_ref().map(|c| c.id.clone()),
        // Listeners are rare: a state-file read each is cheap enough.
        container_name: process.container.as_ref().and_then(|c| {
            let home = nix::unistd::User::from_uid(process.user.id.into())
                .ok()
                .flatten()
                .map(|u| u.dir);
            let roots = crate::attribution::containers::Roots {
                home: home.as_deref(),
                ..crate::attribution::containers::Roots::system()
            };
            crate::attribution::containers::name(c, &roots)
        }),
        ephemeral_port: port.ephemeral,
        subject: Subject {
            network: serde_json::to_value(network).unwrap_or(Value::Null),
            port: serde_json::to_value(port).unwrap_or(Value::Null),
            process: serde_json::to_value(process).unwrap_or(Value::Null),
        },
    }
}

/// What one port event means to the policy.
pub(super) fn judge_event(
    engine: &mut AlertEngine,
    ev: &KernelEvent,
    rec: &PortRecord<'_>,
    origin: &'static str,
    wall_ns: i64,
) -> Vec<Alert> {
    const EADDRNOTAVAIL: i32 = 99;
    if ev.kind == Kind::Connect && ev.errno == Some(EADDRNOTAVAIL) {
        let subject = Subject {
            network: serde_json::to_value(&rec.network).unwrap_or(Value::Null),
            port: serde_json::to_value(rec.port).unwrap_or(Value::Null),
            process: serde_json::to_value(&rec.process).unwrap_or(Value::Null),
        };
        let exe = rec
            .process
            .executable
            .as_deref()
            .unwrap_or(&rec.process.comm);
        let dest = ev.peer.unwrap_or(ev.local);
        return engine
            .connect_exhausted(subject, dest, ev.transport.as_str(), exe, wall_ns)
            .into_iter()
            .collect();
    }
    if is_listener(ev, rec.port) {
        return engine.listener(
            listener_facts(ev.local, &rec.network, rec.port, &rec.process),
            origin,
            wall_ns,
        );
    }
    if ev.kind == Kind::Close && ev.errno.is_none() && ev.peer.is_none() {
        let netns = (ev.netns != 0).then_some(ev.netns);
        return engine.closed(netns, ev.transport.as_str(), ev.local, wall_ns);
    }
    Vec::new()
}
