//! The listener policy (`/etc/portwatch/policy.toml`): allow rules, which alert kinds are on,
//! and the alerting settings. Parse errors name the file, line and column; a listener is judged
//! by `Policy::judge`.
use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;

use crate::{
    bounds::within,
    facts::{Kind, PortFacts, Transport},
};
use serde::{
    Deserialize, Deserializer,
    de::{self, SeqAccess, Visitor},
};

pub const DEFAULT_PATH: &str = "/etc/portwatch/policy.toml";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// One message per problem, each naming the line and column.
    #[error("policy {path}: {}", .problems.join("\n"))]
    Invalid { path: String, problems: Vec<String> },
}

/// Which alert kinds are raised (all on by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSwitches {
    /// A listener no rule allows.
    pub unexpected_listener: bool,
    /// A listener on a wildcard address where its rule allows only loopback.
    pub wildcard_listener: bool,
    /// A listener on a port inside the ephemeral range.
    pub ephemeral_port_listener: bool,
    /// A `required = true` rule that no listener satisfies.
    pub required_listener_missing: bool,
    /// connect() failing with EADDRNOTAVAIL, or one destination holding too much of the range.
    pub ephemeral_port_exhaustion: bool,
}

impl Default for AlertSwitches {
    fn default() -> Self {
        Self {
            unexpected_listener: true,
            wildcard_listener: true,
            ephemeral_port_listener: true,
            required_listener_missing: true,
            ephemeral_port_exhaustion: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Seconds between comparisons of the policy with a fresh socket snapshot (1 to a day).
    #[serde(deserialize_with = "within::<_, _, 1, 86_400>")]
    pub reconcile_interval_seconds: u64,
    /// Connects to one destination holding more than this share of the ephemeral range alert.
    #[serde(deserialize_with = "share")]
    pub exhaustion_share: f64,
    /// Repeats of an alert within this many seconds of its last sighting are counted, not
    /// alerted again (1 s to a year).
    #[serde(deserialize_with = "within::<_, _, 1, 31_536_000>")]
    pub dedup_window_seconds: u64,
    /// How often counted repeats are summarised in an `alert` line with `summary: true` (1 s to
    /// a week).
    #[serde(deserialize_with = "within::<_, _, 1, 604_800>")]
    pub summary_interval_seconds: u64,
    /// At most this many alert lines per minute and user; beyond it they are counted and
    /// summarised (1 to 100000).
    #[serde(deserialize_with = "within::<_, _, 1, 100_000>")]
    pub rate_limit_per_minute: u64,
}

impl Settings {
    /// The dedup window in nanoseconds (the bounds keep it far from overflow).
    pub fn dedup_window_ns(&self) -> i64 {
        i64::try_from(self.dedup_window_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000_000)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            reconcile_interval_seconds: 60,
            exhaustion_share: 0.5,
            dedup_window_seconds: 86_400,
            summary_interval_seconds: 3_600,
            rate_limit_per_minute: 60,
        }
    }
}

/// A program run for every alert: argv (never a shell string), the alert JSON on stdin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    #[serde(deserialize_with = "hook_argv")]
    pub argv: Vec<String>,
    /// Killed, with everything it started, when it runs longer than this (1 s to an hour).
    #[serde(default = "hook_timeout", deserialize_with = "within::<_, _, 1, 3600>")]
    pub timeout_seconds: u64,
    /// Hooks running at once; alerts beyond it skip the hook, counted (1 to 64).
    #[serde(
        default = "hook_max_running",
        deserialize_with = "within::<_, _, 1, 64>"
    )]
    pub max_running: u64,
}

fn hook_timeout() -> u64 {
    10
}

fn hook_max_running() -> u64 {
    4
}

/// Inclusive port ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports(pub Vec<(u16, u16)>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressPattern {
    Loopback,
    Wildcard,
    Net(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses(pub Vec<AddressPattern>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserPattern {
    Id(u32),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerPattern {
    /// In some container.
    Any,
    /// In no container.
    None,
    /// A container whose id starts with this, or whose name is this.
    Id(String),
}

/// One `[[allow]]` entry; every field given must match.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub transport: Option<Transport>,
    pub port: Option<Ports>,
    pub address: Option<Addresses>,
    pub executable: Option<String>,
    pub comm: Option<String>,
    pub user: Option<UserPattern>,
    pub unit: Option<String>,
    pub container: Option<ContainerPattern>,
    pub note: Option<String>,
    #[serde(default)]
    pub required: bool,
    /// Filled in after parsing: where the rule is, for messages.
    #[serde(skip)]
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    pub path: PathBuf,
    pub alerts: AlertSwitches,
    pub settings: Settings,
    pub hook: Option<HookConfig>,
    pub rules: Vec<Rule>,
}

/// A listener, as the policy judges it and the alert engine remembers it: the facts of the event
/// or scan that found it, and what of its holder's identity can be trusted. A process chooses its
/// comm and, inside a delegated cgroup subtree, its cgroup names; rules match units and
/// containers only on the trusted part.
#[derive(Debug, Clone)]
pub struct Listener {
    pub facts: PortFacts,
    pub trusted: Trusted,
}

/// Identities no process can forge for itself.
#[derive(Debug, Clone, Default)]
pub struct Trusted {
    /// A unit of the system manager: never one inside a user's own manager (`user@UID.service`),
    /// whose unit names that user picks.
    pub unit: Option<String>,
    /// A container its runtime's root-owned state confirms.
    pub container: Option<crate::facts::Container>,
    /// That container's name, from the runtime's state.
    pub container_name: Option<String>,
}

impl Listener {
    pub fn address(&self) -> IpAddr {
        self.facts.event.local.ip()
    }

    pub fn port(&self) -> u16 {
        self.facts.event.local.port()
    }

    pub fn transport(&self) -> Transport {
        self.facts.event.transport
    }
}

/// A listener is a TCP socket in LISTEN, or a UDP socket bound to a port its caller named. A
/// kernel bind event says whether the port was named; a scan does not, so there a UDP socket
/// counts when its port lies outside the ephemeral range, where the kernel never picks one.
pub fn is_listener(f: &PortFacts) -> bool {
    let ev = &f.event;
    ev.errno.is_none()
        && ev.local.port() != 0
        && match ev.kind {
            Kind::Listen => true,
            Kind::Bind => {
                ev.transport == Transport::Udp
                    && ev.peer.is_none()
                    && f.port.requested.unwrap_or(!f.port.ephemeral)
            }
            _ => false,
        }
}

/// The policy's verdict on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by this rule (index).
    Allowed(usize),
    /// Everything but the address matches this rule, which allows only loopback, and the
    /// listener is on a wildcard address.
    WildcardWhereLoopback(usize),
    Unexpected,
}

/// Address scope of a listener, as alerts and dedup keys name it.
pub fn scope(ip: IpAddr) -> &'static str {
    let ip = ip.to_canonical();
    if ip.is_unspecified() {
        "wildcard"
    } else if ip.is_loopback() {
        "loopback"
    } else {
        "specific"
    }
}

impl AddressPattern {
    fn matches(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match self {
            AddressPattern::Loopback => ip.is_loopback(),
            AddressPattern::Wildcard => ip.is_unspecified(),
            AddressPattern::Net(n) => n.contains(&ip),
        }
    }
}

impl Rule {
    /// (everything but the address matches, the address matches too).
    fn check(&self, l: &Listener) -> (bool, bool) {
        let p = &l.facts.process;
        let claimed = p.container.is_some();
        let container_id = l.trusted.container.as_ref().map(|c| c.id.as_str());
        let rest = self.transport.is_none_or(|t| t == l.transport())
            && self
                .port
                .as_ref()
                .is_none_or(|ports| ports.0.iter().any(|&(a, b)| (a..=b).contains(&l.port())))
            && self
                .executable
                .as_deref()
                .is_none_or(|e| p.executable.as_deref() == Some(e))
            && self.comm.as_deref().is_none_or(|c| p.comm == c)
            && self.user.as_ref().is_none_or(|u| match u {
                UserPattern::Id(id) => *id == p.user.id,
                UserPattern::Name(n) => p.user.name.as_deref() == Some(n.as_str()),
            })
            && self
                .unit
                .as_deref()
                .is_none_or(|u| l.trusted.unit.as_deref() == Some(u))
            && self.container.as_ref().is_none_or(|c| match c {
                ContainerPattern::Any => container_id.is_some(),
                // Not even a claimed one: a process outside any container claims none.
                ContainerPattern::None => !claimed,
                ContainerPattern::Id(id) => {
                    container_id.is_some_and(|c| c.starts_with(id.as_str()))
                        || l.trusted.container_name.as_deref() == Some(id.as_str())
                }
            });
        let addr = self
            .address
            .as_ref()
            .is_none_or(|a| a.0.iter().any(|p| p.matches(l.address())));
        (rest, rest && addr)
    }

    fn loopback_only(&self) -> bool {
        self.address.as_ref().is_some_and(|a| {
            a.0.iter().all(|p| match p {
                AddressPattern::Loopback => true,
                AddressPattern::Wildcard => false,
                AddressPattern::Net(n) => n.network().to_canonical().is_loopback(),
            })
        })
    }

    /// How alerts name the rule: `allow[2] (line 14) "ssh from anywhere"`.
    pub fn describe(&self, index: usize) -> String {
        match &self.note {
            Some(n) => format!("allow[{index}] (line {}) {n:?}", self.line),
            None => format!("allow[{index}] (line {})", self.line),
        }
    }
}

impl Policy {
    pub fn judge(&self, l: &Listener) -> Verdict {
        let mut partial = None;
        for (i, r) in self.rules.iter().enumerate() {
            match r.check(l) {
                (_, true) => return Verdict::Allowed(i),
                (true, false) if partial.is_none() && r.loopback_only() => partial = Some(i),
                _ => {}
            }
        }
        match partial {
            Some(i) if scope(l.address()) == "wildcard" => Verdict::WildcardWhereLoopback(i),
            _ => Verdict::Unexpected,
        }
    }

    /// Does rule `i` allow this listener?
    pub fn rule_matches(&self, i: usize, l: &Listener) -> bool {
        self.rules.get(i).is_some_and(|r| r.check(l).1)
    }

    /// Parses and checks a policy, reporting every problem it can find at once: all syntax
    /// errors; else every section and every rule that does not deserialize, and every rule that
    /// deserializes but makes no sense.
    pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
        use toml::de::{DeTable, DeValue};
        let invalid = |problems| PolicyError::Invalid {
            path: path.display().to_string(),
            problems,
        };
        let render = |mut e: toml::de::Error| {
            e.set_input(Some(text));
            e.to_string().trim_end().to_string()
        };
        let (doc, syntax) = DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            return Err(invalid(syntax.into_iter().map(render).collect()));
        }
        let mut problems = Vec::new();
        let mut policy = Policy {
            path: path.to_path_buf(),
            ..Policy::default()
        };
        let mut allow = Vec::new();
        for (key, value) in doc.into_inner() {
            let (line, col) = line_col(text, key.span().start);
            match key.get_ref().as_ref() {
                // Each section on its own, so one bad section does not hide the others' problems.
                "alerts" => {
                    if let Some(v) = section(value, text, &mut problems) {
                        policy.alerts = v;
                    }
                }
                "settings" => {
                    if let Some(v) = section(value, text, &mut problems) {
                        policy.settings = v;
                    }
                }
                "hook" => policy.hook = section(value, text, &mut problems),
                "allow" => match value.into_inner() {
                    DeValue::Array(items) => allow.extend(items),
                    _ => problems.push(format!(
                        "line {line}, column {col}: `allow` must be a list of rules, each under [[allow]]"
                    )),
                },
                other => problems.push(format!(
                    "line {line}, column {col}: unknown section `{other}`, expected one of `alerts`, `settings`, `hook`, `allow`"
                )),
            }
        }
        for (i, item) in allow.into_iter().enumerate() {
            let (line, col) = line_col(text, item.span().start);
            let Some(mut r) = section::<Rule>(item, text, &mut problems) else {
                continue;
            };
            r.line = line;
            let empty = r.transport.is_none()
                && r.port.is_none()
                && r.address.is_none()
                && r.executable.is_none()
                && r.comm.is_none()
                && r.user.is_none()
                && r.unit.is_none()
                && r.container.is_none();
            if empty {
                problems.push(format!(
                    "line {line}, column {col}: allow[{i}] matches nothing in particular, so it would allow every listener; give at least one of transport, port, address, executable, comm, user, unit, container"
                ));
            }
            if r.required && r.port.is_none() {
                problems.push(format!(
                    "line {line}, column {col}: allow[{i}] is required but names no port; a required listener needs a port to look for"
                ));
            }
            policy.rules.push(r);
        }
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(invalid(problems))
        }
    }

    /// The daemon's load: the file must be root's (or the daemon user's) in a directory no other
    /// user can write, or another user could write the policy.
    pub fn load_trusted(path: &Path) -> Result<Policy, PolicyError> {
        crate::files::check_trusted(path, "policy").map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Policy::load(path)
    }

    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Policy::parse(&text, path)
    }
}

/// One part of the document deserialized on its own; its error, if any, joins `problems`.
fn section<T: serde::de::DeserializeOwned>(
    value: toml::Spanned<toml::de::DeValue<'_>>,
    text: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    match T::deserialize(toml::de::ValueDeserializer::from(value)) {
        Ok(v) => Some(v),
        Err(mut e) => {
            e.set_input(Some(text));
            problems.push(e.to_string().trim_end().to_string());
            None
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let end = (0..=offset.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

fn share<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(de::Error::custom(format!(
            "{v} is not a share: give a number above 0 and at most 1 (0.5 = half the ephemeral range)"
        )))
    }
}

fn hook_argv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let argv = Vec::<String>::deserialize(d)?;
    match argv.first() {
        None => Err(de::Error::custom(
            "argv is empty: give the program and its arguments",
        )),
        Some(p) if !p.starts_with('/') => Err(de::Error::custom(format!(
            "argv[0] {p:?} is not an absolute path; the hook runs without a shell or PATH lookup"
        ))),
        _ => Ok(argv),
    }
}

/// "8000", "8000-8100" (inclusive).
fn port_range<E: de::Error>(s: &str) -> Result<(u16, u16), E> {
    let bad = || {
        E::custom(format!(
            "{s:?} is not a port or range: use 8080, \"8000-8100\" or a list of them"
        ))
    };
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s.trim(), s.trim()),
    };
    let (a, b): (u16, u16) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a > b {
        return Err(E::custom(format!(
            "port range {s:?} runs backwards: the first port must not be above the last"
        )));
    }
    Ok((a, b))
}

fn port_number<E: de::Error>(v: i64) -> Result<(u16, u16), E> {
    u16::try_from(v)
        .map(|p| (p, p))
        .map_err(|_| E::custom(format!("{v} is not a port number (0-65535)")))
}

/// A setting given as a number or as text (a port or range, an address, a user), each kind
/// saying which it accepts and what is wrong with a value.
trait Scalar: Sized {
    const EXPECTING: &'static str;
    fn number<E: de::Error>(v: i64) -> Result<Self, E> {
        Err(E::invalid_type(de::Unexpected::Signed(v), &Self::EXPECTING))
    }
    fn text<E: de::Error>(v: &str) -> Result<Self, E>;
}

struct ScalarVisitor<T>(std::marker::PhantomData<T>);

impl<T: Scalar> Visitor<'_> for ScalarVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::number(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::text(v)
    }
}

/// One scalar, or a non-empty list of them (`port = 22`, `port = [22, "8000-8100"]`); the
/// `&str` names the list in errors.
struct OneOrMore<T>(std::marker::PhantomData<T>, &'static str);

impl<'de, T: Scalar + Deserialize<'de>> Visitor<'de> for OneOrMore<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}, or a list of them", T::EXPECTING)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<T>, E> {
        Ok(vec![T::number(v)?])
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
        Ok(vec![T::text(v)?])
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<T>()? {
            out.push(item);
        }
        if out.is_empty() {
            return Err(de::Error::custom(format!("the {} list is empty", self.1)));
        }
        Ok(out)
    }
}

/// `Deserialize` for a `Scalar`.
macro_rules! scalar_deserialize {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ScalarVisitor(std::marker::PhantomData))
            }
        }
    };
}

struct PortItem((u16, u16));

impl Scalar for PortItem {
    const EXPECTING: &'static str = "a port (8080) or a range (\"8000-8100\")";
    fn number<E: de::Error>(v: i64) -> Result<Self, E> {
        port_number(v).map(PortItem)
    }
    fn text<E: de::Error>(v: &str) -> Result<Self, E> {
        port_range(v).map(PortItem)
    }
}
scalar_deserialize!(PortItem);

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = d.deserialize_any(OneOrMore::<PortItem>(std::marker::PhantomData, "port"))?;
        Ok(Ports(items.into_iter().map(|p| p.0).collect()))
    }
}

impl Scalar for AddressPattern {
    const EXPECTING: &'static str = "\"loopback\", \"wildcard\", an address or CIDR";
    fn text<E: de::Error>(s: &str) -> Result<Self, E> {
        match s {
            "loopback" => Ok(AddressPattern::Loopback),
            "wildcard" => Ok(AddressPattern::Wildcard),
            _ => {
                if let Ok(net) = s.parse::<IpNet>() {
                    return Ok(AddressPattern::Net(net));
                }
                s.parse::<IpAddr>().map(|ip| AddressPattern::Net(IpNet::from(ip))).map_err(|_| {
                    E::custom(format!(
                        "{s:?} is not an address: use \"loopback\", \"wildcard\", an IP address or a CIDR like \"10.0.0.0/8\""
                    ))
                })
            }
        }
    }
}
scalar_deserialize!(AddressPattern);

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OneOrMore(std::marker::PhantomData, "address"))
            .map(Addresses)
    }
}

impl Scalar for UserPattern {
    const EXPECTING: &'static str = "a user name or a numeric uid";
    fn number<E: de::Error>(v: i64) -> Result<Self, E> {
        u32::try_from(v)
            .map(UserPattern::Id)
            .map_err(|_| E::custom(format!("{v} is not a uid")))
    }
    fn text<E: de::Error>(v: &str) -> Result<Self, E> {
        if v.is_empty() {
            return Err(E::custom("the user name is empty"));
        }
        Ok(UserPattern::Name(v.to_string()))
    }
}
scalar_deserialize!(UserPattern);

impl<'de> Deserialize<'de> for ContainerPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "any" => ContainerPattern::Any,
            "none" => ContainerPattern::None,
            "" => {
                return Err(de::Error::custom(
                    "container is empty: use \"any\", \"none\" or an id",
                ));
            }
            _ => ContainerPattern::Id(s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Policy, String> {
        Policy::parse(s, Path::new("/etc/portwatch/policy.toml")).map_err(|e| e.to_string())
    }

    fn listener(addr: &str, port: u16) -> Listener {
        let ip: IpAddr = addr.parse().unwrap();
        let ev = crate::facts::fixture::event(
            Kind::Listen,
            Transport::Tcp,
            &std::net::SocketAddr::new(ip, port).to_string(),
        );
        let mut facts = crate::facts::fixture::facts(ev, 1);
        std::sync::Arc::make_mut(&mut facts.process).executable = Some("/usr/sbin/sshd".into());
        std::sync::Arc::make_mut(&mut facts.process).comm = "sshd".into();
        std::sync::Arc::make_mut(&mut facts.process).user = crate::facts::User {
            id: 0,
            name: Some("root".into()),
        };
        std::sync::Arc::make_mut(&mut facts.process).unit = Some("ssh.service".into());
        Listener {
            facts,
            trusted: Trusted {
                unit: Some("ssh.service".into()),
                ..Trusted::default()
            },
        }
    }

    fn in_container(id: &str) -> Option<crate::facts::Container> {
        Some(crate::facts::Container {
            id: id.into(),
            runtime: crate::facts::ContainerRuntime::Docker,
        })
    }

    fn policy_with_container(c: &str) -> Policy {
        parse(&format!("[[allow]]\nport = 22\ncontainer = \"{c}\"\n")).unwrap()
    }

    const GOOD: &str = r#"
[settings]
reconcile_interval_seconds = 5

[[allow]]
note = "ssh"
transport = "tcp"
port = 22
executable = "/usr/sbin/sshd"
user = "root"
unit = "ssh.service"
container = "none"
required = true

[[allow]]
port = ["8000-8100", 9000]
address = "loopback"

[[allow]]
address = ["10.0.0.0/8", "::1"]
user = 1000
"#;

    #[test]
    fn rules_match_on_every_field_given() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.settings.reconcile_interval_seconds, 5);
        assert_eq!(p.rules[0].line, 5);
        assert_eq!(p.judge(&listener("0.0.0.0", 22)), Verdict::Allowed(0));
        let mut l = listener("0.0.0.0", 22);
        std::sync::Arc::make_mut(&mut l.facts.process).executable = Some("/tmp/sshd".into());
        assert_eq!(p.judge(&l), Verdict::Unexpected);
        l = listener("0.0.0.0", 22);
        (
            std::sync::Arc::make_mut(&mut l.facts.process).container,
            l.trusted.container,
        ) = (in_container("abc"), in_container("abc"));
        assert_eq!(p.judge(&l), Verdict::Unexpected);
        let named = policy_with_container("web");
        l.trusted.container_name = Some("web".into());
        assert_eq!(named.judge(&l), Verdict::Allowed(0), "by name");
        l.trusted.container_name = None;
        l.trusted.container = in_container("4f1e2d3c4b5a6978");
        assert_eq!(
            policy_with_container("4f1e2d3c").judge(&l),
            Verdict::Allowed(0),
            "by id prefix"
        );
        assert_eq!(named.judge(&l), Verdict::Unexpected);
        assert_eq!(p.judge(&listener("127.0.0.1", 8050)), Verdict::Allowed(1));
        assert_eq!(
            p.judge(&listener("::ffff:127.0.0.1", 9000)),
            Verdict::Allowed(1)
        );
        assert_eq!(
            p.judge(&listener("::", 8050)),
            Verdict::WildcardWhereLoopback(1)
        );
        assert_eq!(p.judge(&listener("192.168.1.1", 8050)), Verdict::Unexpected);
        let mut l = listener("10.1.2.3", 5555);
        assert_eq!(p.judge(&l), Verdict::Unexpected);
        std::sync::Arc::make_mut(&mut l.facts.process).user.id = 1000;
        assert_eq!(p.judge(&l), Verdict::Allowed(2));
        assert_eq!(p.rules[0].describe(0), "allow[0] (line 5) \"ssh\"");
    }

    #[test]
    fn errors_name_line_and_column_and_say_what_is_wrong() {
        let cases = [
            ("[[allow]]\nport = \"9000-8000\"\n", "runs backwards"),
            ("[[allow]]\nport = 70000\n", "not a port number"),
            ("[[allow]]\nport = \"http\"\n", "not a port or range"),
            ("[[allow]]\naddress = \"10.0.0.0/33\"\n", "not an address"),
            ("[[allow]]\naddress = \"localhost\"\n", "not an address"),
            (
                "[[allow]]\ncolour = \"red\"\nport = 22\n",
                "unknown field `colour`",
            ),
            ("[[allow]]\nrequired = \"yes\"\nport = 22\n", "invalid type"),
            ("[settings]\nexhaustion_share = 2.0\n", "not a share"),
            ("[hook]\nargv = [\"notify-send\"]\n", "not an absolute path"),
            ("[alerts]\nunexpected_listener = 1\n", "invalid type"),
            (
                "[settings]\nreconcile_interval_seconds = 9223372036854775807\n",
                "out of range",
            ),
            (
                "[settings]\ndedup_window_seconds = 99999999999\n",
                "out of range",
            ),
            ("[settings]\nrate_limit_per_minute = 0\n", "at least 1"),
            (
                "[hook]\ntimeout_seconds = 86400\nargv = [\"/bin/true\"]\n",
                "out of range",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.contains("line 2"), "{text:?} names the line: {e}");
            assert!(e.contains("column"), "{text:?} names the column: {e}");
        }
    }

    #[test]
    fn problems_in_several_sections_and_rules_are_all_reported() {
        let text = "[settings]\nexhaustion_share = 7\n\n[[allow]]\nport = \"9-1\"\n\n[[allow]]\nport = 22\ncolour = 1\n\n[[allow]]\naddress = \"10.0.0.0/99\"\n\n[surprise]\n";
        let e = parse(text).unwrap_err();
        for (want, line) in [
            ("not a share", "line 2"),
            ("runs backwards", "line 5"),
            ("unknown field `colour`", "line 9"),
            ("not an address", "line 12"),
            ("unknown section `surprise`", "line 14"),
        ] {
            let at = e
                .find(want)
                .unwrap_or_else(|| panic!("{want} missing from:\n{e}"));
            let before = &e[..at];
            let last_line = before.rfind("line ").map(|i| &before[i..]).unwrap_or("");
            assert!(last_line.starts_with(line), "{want} at {line}:\n{e}");
        }
        // Syntax errors are all listed too, before anything is judged.
        let e = parse("[settings\nx = = 1\n[[allow]]\nport = \n").unwrap_err();
        assert!(e.matches("line ").count() >= 2, "{e}");
    }

    #[test]
    fn every_rule_problem_is_reported_at_once() {
        let e =
            parse("[[allow]]\nnote = \"x\"\n\n[[allow]]\nrequired = true\ntransport = \"tcp\"\n")
                .unwrap_err();
        assert!(
            e.contains("line 1, column 1: allow[0] matches nothing"),
            "{e}"
        );
        assert!(
            e.contains("line 4, column 1: allow[1] is required but names no port"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_policy_allows_nothing() {
        let p = parse("").unwrap();
        assert_eq!(p.judge(&listener("127.0.0.1", 22)), Verdict::Unexpected);
        assert!(p.alerts.unexpected_listener && p.hook.is_none());
    }
}
