//! Judgement: port facts and socket scans in, alerts out. The listener policy and the alert engine
//! (dedup, rate limit, summaries, remembered across restarts), the canary that notices blinding,
//! and the exec hook that alert lines are handed to. `baseline` writes a policy from what listens.
pub mod alert;
pub mod baseline;
pub mod canary;
pub mod hook;
pub mod policy;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use serde_json::json;

use self::{
    alert::{AlertCounters, AlertEngine, ScanSummary},
    canary::{Canary, CanaryFigures},
    hook::{HookCounters, HookFigures},
    policy::{Listener, Policy, Settings, Trusted, is_listener},
};
use crate::{
    attribution::{
        Scan, ScanWindow, cgroup, containers, ephemeral_per_destination, ports::EphemeralRange,
    },
    clock,
    facts::{Alert, AlertBody, AlertKind, KernelEvent, Kind, Origin, PortFacts, Severity, Subject},
};

/// What judgement did, for `status`: null `alerts` when no policy is loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgementCounters {
    pub alerts: Option<AlertFigures>,
    pub canary: CanaryStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertFigures {
    pub policy: PathBuf,
    pub rules: usize,
    pub reloads: u64,
    pub reload_failures: u64,
    pub listeners: usize,
    pub remembered: usize,
    pub counters: AlertCounters,
    pub hook: HookFigures,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryStatus {
    /// Hook families whose events stopped coming back.
    pub blind: Vec<String>,
    pub rounds: CanaryFigures,
}

pub struct Judgement {
    /// The policy and its alert state; None: no policy, no alerts.
    engine: Option<AlertEngine>,
    canary: Canary,
    hook: Arc<HookCounters>,
    /// Where the alert dedup state lives.
    state_dir: PathBuf,
    reloads: u64,
    reload_failures: u64,
}

impl Judgement {
    pub fn new(policy: Option<Policy>, state_dir: &Path) -> Self {
        let engine = policy.map(|p| {
            tracing::info!(path = %p.path.display(), rules = p.rules.len(), "policy loaded");
            AlertEngine::new(p, state_dir)
        });
        Self {
            engine,
            canary: Canary::new(),
            hook: Arc::default(),
            state_dir: state_dir.to_path_buf(),
            reloads: 0,
            reload_failures: 0,
        }
    }

    pub fn has_policy(&self) -> bool {
        self.engine.is_some()
    }

    /// The policy's reconciliation and summary settings (defaults without a policy).
    pub fn settings(&self) -> Settings {
        self.engine
            .as_ref()
            .map(|e| e.policy.settings)
            .unwrap_or_default()
    }

    /// The daemon's own socket events are the canary's: swallowed here, true if it was one.
    pub fn absorb_canary(&mut self, ev: &KernelEvent) -> bool {
        self.canary.absorb(ev)
    }

    /// What one port event means to the policy.
    pub fn judge(&mut self, f: &PortFacts) -> Vec<Alert> {
        const EADDRNOTAVAIL: i32 = 99;
        let Some(engine) = &mut self.engine else {
            return Vec::new();
        };
        let ev = &f.event;
        if ev.kind == Kind::Connect && ev.errno == Some(EADDRNOTAVAIL) {
            let p = &f.process;
            let exe = p.executable.as_deref().unwrap_or(&p.comm);
            let dest = ev.peer.unwrap_or(ev.local);
            return engine
                .connect_exhausted(Subject::of(f), dest, ev.transport, exe, f.wall_ns)
                .into_iter()
                .collect();
        }
        if is_listener(f) {
            return engine.listener(listener(f.clone()), f.origin, f.wall_ns);
        }
        if ev.kind == Kind::Close && ev.errno.is_none() && ev.peer.is_none() {
            return engine.closed(ev.netns(), ev.transport, ev.local, f.wall_ns);
        }
        Vec::new()
    }

    /// Compares the policy with a fresh scan (every `reconcile_interval_seconds`, and after a
    /// policy reload), so a listener whose events were lost still alerts. The scan's facts need
    /// only cover the unconnected sockets (`is_listener` picks from them).
    pub fn reconcile(&mut self, scan: &Scan, ephemeral: &EphemeralRange) -> Vec<Alert> {
        let Some(engine) = &mut self.engine else {
            return Vec::new();
        };
        let summary = ScanSummary {
            window: ScanWindow {
                netns: scan.netns,
                started_ns: scan.started_ns,
            },
            // Unconnected sockets still there: a UDP listener known from its bind event stays
            // known even where a scan alone could not call it one.
            present: scan
                .sockets
                .iter()
                .filter(|s| s.peer.is_none())
                .map(|s| (s.transport, s.local))
                .collect(),
            per_destination: ephemeral_per_destination(&scan.sockets, ephemeral),
            ephemeral_size: ephemeral.size(),
        };
        let listeners = scan
            .facts
            .iter()
            .filter(|f| is_listener(f))
            .map(|f| listener(f.clone()))
            .collect();
        engine.reconcile(&summary, listeners, clock::now_unix_ns())
    }

    /// A failed reconciliation scan: counted, and said.
    pub fn reconcile_failed(&mut self, e: &dyn std::error::Error) {
        if let Some(engine) = &mut self.engine {
            engine.counters.reconcile_failed += 1;
        }
        tracing::error!(error = %e, "reconciliation scan failed; listeners whose events were lost go unnoticed until the next one");
    }

    /// Required listeners missing right after the start-up snapshot.
    pub fn check_required(&mut self) -> Vec<Alert> {
        match &mut self.engine {
            Some(e) => e.required_missing(Origin::Snapshot, clock::now_unix_ns()),
            None => Vec::new(),
        }
    }

    /// Summaries of counted repeats; then the dedup state goes to disk.
    pub fn summarise(&mut self) -> Vec<Alert> {
        let out = match &mut self.engine {
            Some(e) => e.summarise(clock::now_unix_ns()),
            None => Vec::new(),
        };
        self.save();
        out
    }

    /// Hands changed alert state to its writer (at most every few seconds).
    pub fn save(&mut self) {
        if let Some(e) = &mut self.engine {
            e.save(clock::now_unix_ns());
        }
    }

    /// Writes the alert state and waits for it (at shutdown).
    pub fn finish(&mut self) {
        if let Some(e) = &mut self.engine {
            e.finish();
        }
    }

    /// SIGHUP: re-reads the policy file. A file that does not parse leaves the running policy in
    /// place (logged at error level). True when a new policy was installed.
    pub fn reload(&mut self, path: Option<&Path>) -> bool {
        let Some(path) = path else { return false };
        match Policy::load_trusted(path) {
            Ok(p) => {
                tracing::info!(path = %path.display(), rules = p.rules.len(), "policy reloaded");
                match &mut self.engine {
                    Some(engine) => engine.policy = p,
                    None => self.engine = Some(AlertEngine::new(p, &self.state_dir)),
                }
                self.reloads += 1;
                true
            }
            Err(e) => {
                self.reload_failures += 1;
                tracing::error!(error = %e, "policy reload failed; the previous policy stays in force");
                false
            }
        }
    }

    /// Judges the last canary round and sends the next; a family gone blind is an error and a
    /// `monitoring_blind` alert (with or without a policy).
    pub fn canary_round(&mut self, ring_buffer_lost: u64) -> Vec<Alert> {
        let mut out = Vec::new();
        for v in self.canary.round(ring_buffer_lost) {
            match v {
                canary::Verdict::Blind(families) => {
                    tracing::error!(
                        ?families,
                        "hook families delivered no event for the daemon's own test sockets: their programs were detached or their events are filtered; events of these kinds are being missed"
                    );
                    out.push(Alert {
                        body: AlertBody {
                            kind: AlertKind::MonitoringBlind,
                            severity: Severity::High,
                            rule: format!(
                                "no {} event came back for the daemon's own loopback test sockets: the programs were detached or their events are filtered",
                                families.join(", ")
                            ),
                            first_seen: clock::now_rfc3339(),
                            count: 1,
                            summary: false,
                            detail: Some(json!({"families": families})),
                        },
                        subject: Subject::default(),
                        origin: Origin::Canary,
                    });
                }
                canary::Verdict::Recovered(families) => {
                    tracing::info!(?families, "hook families deliver events again");
                }
            }
        }
        out
    }

    /// Hands a written alert line to the exec hook, if the policy has one.
    pub fn hook(&self, line: String) {
        if let Some(h) = self.engine.as_ref().and_then(|e| e.policy.hook.as_ref()) {
            hook::dispatch(h, &self.hook, line);
        }
    }

    pub fn counters(&self) -> JudgementCounters {
        JudgementCounters {
            alerts: self.engine.as_ref().map(|e| AlertFigures {
                policy: e.policy.path.clone(),
                rules: e.policy.rules.len(),
                reloads: self.reloads,
                reload_failures: self.reload_failures,
                listeners: e.listener_count(),
                remembered: e.remembered(),
                counters: e.counters,
                hook: self.hook.figures(),
            }),
            canary: CanaryStatus {
                blind: self
                    .canary
                    .blind_families()
                    .into_iter()
                    .map(String::from)
                    .collect(),
                rounds: self.canary.figures,
            },
        }
    }
}

/// A listener with what of its holder's identity can be trusted (listeners are rare: the runtime
/// state reads are cheap enough).
pub fn listener(facts: PortFacts) -> Listener {
    let roots = containers::Roots::system();
    let claimed = facts
        .process
        .cgroup
        .as_deref()
        .map(cgroup::trusted)
        .unwrap_or_default();
    let unit = claimed.unit;
    let container = claimed
        .container
        .filter(|c| containers::confirmed(c, &roots));
    let container_name = container.as_ref().and_then(|c| containers::name(c, &roots));
    Listener {
        trusted: Trusted {
            unit,
            container,
            container_name,
        },
        facts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{Container, ContainerRuntime, Transport, fixture};

    #[test]
    fn forged_units_and_containers_satisfy_no_rule() {
        let policy = Policy::parse(
            "[[allow]]\nunit = \"nginx.service\"\n[[allow]]\ncontainer = \"any\"\n",
            Path::new("p.toml"),
        )
        .unwrap();
        let ev = fixture::event(Kind::Listen, Transport::Tcp, "0.0.0.0:8080");
        let mut f = fixture::facts(ev, 1);
        // `systemd-run --user --unit=nginx.service`: the name is the user's choice.
        std::sync::Arc::make_mut(&mut f.process).cgroup =
            Some("/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service".into());
        std::sync::Arc::make_mut(&mut f.process).unit = Some("nginx.service".into());
        let l = listener(f.clone());
        assert_eq!(l.trusted.unit.as_deref(), Some("user@1000.service"));
        assert_eq!(policy.judge(&l), policy::Verdict::Unexpected);
        // The system manager's unit of that name is trusted.
        std::sync::Arc::make_mut(&mut f.process).cgroup =
            Some("/system.slice/nginx.service".into());
        assert!(matches!(
            policy.judge(&listener(f.clone())),
            policy::Verdict::Allowed(0)
        ));
        // A cgroup named like a docker scope that no runtime state backs.
        std::sync::Arc::make_mut(&mut f.process).cgroup =
            Some("/system.slice/docker-0123456789abcdef0123.scope".into());
        std::sync::Arc::make_mut(&mut f.process).unit =
            Some("docker-0123456789abcdef0123.scope".into());
        std::sync::Arc::make_mut(&mut f.process).container = Some(Container {
            id: "0123456789abcdef0123".into(),
            runtime: ContainerRuntime::Docker,
        });
        let l = listener(f);
        assert_eq!(l.trusted.container, None);
        assert_eq!(policy.judge(&l), policy::Verdict::Unexpected);
    }
}
