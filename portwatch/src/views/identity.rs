//! Who a holder is, as far as the views can vouch for it. A process names its own command line,
//! and a user with a delegated cgroup subtree names its cgroups (`…/user@1000.service/…/
//! nginx.service`, `docker-<any id>.scope`): the views show those claims, but mark them, and the
//! `--unit` and `--container` filters match only what the system manager set (the outermost
//! unit of the cgroup path) or a container runtime's root-owned state confirms — as policy rules
//! do (docs/policy.md).
use std::{cell::RefCell, collections::HashMap};

use crate::{
    attribution::{cgroup, containers},
    facts::Container,
};

/// Container ids whose confirmation is remembered at most (a user can claim many).
const MAX_REMEMBERED: usize = 4096;

/// Looks container claims up in the runtimes' state, remembering the answers.
pub struct Judge {
    roots: containers::Roots<'static>,
    confirmed: RefCell<HashMap<(String, &'static str), bool>>,
}

impl Default for Judge {
    fn default() -> Self {
        Judge {
            roots: containers::Roots::system(),
            confirmed: RefCell::new(HashMap::new()),
        }
    }
}

impl Clone for Judge {
    fn clone(&self) -> Self {
        Judge::default()
    }
}

impl std::fmt::Debug for Judge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Judge")
    }
}

/// A holder's unit and container: what can be trusted, and how a table shows the claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The system manager's unit (the outermost unit of the cgroup path).
    pub unit: Option<String>,
    /// A container its runtime's state confirms.
    pub container: Option<Container>,
    /// The UNIT/CONTAINER column: `nginx.service`; `user@1000.service/nginx.service` (a unit
    /// a user's own manager runs); `docker:0123456789ab`; `?` after a container the runtime does
    /// not confirm, or a unit whose cgroup path is not known.
    pub label: String,
}

impl Judge {
    /// Takes `c` as confirmed, as a runtime's state would (the filters' tests; the runtime
    /// check itself is `containers::confirmed`'s, tested on a fixture tree).
    #[cfg(test)]
    pub fn assume_confirmed(&self, c: &Container) {
        self.confirmed
            .borrow_mut()
            .insert((c.id.clone(), c.runtime.as_str()), true);
    }

    pub fn confirmed(&self, c: &Container) -> bool {
        let key = (c.id.clone(), c.runtime.as_str());
        if let Some(v) = self.confirmed.borrow().get(&key) {
            return *v;
        }
        let v = containers::confirmed(c, &self.roots);
        let mut cache = self.confirmed.borrow_mut();
        if cache.len() >= MAX_REMEMBERED {
            cache.clear();
        }
        cache.insert(key, v);
        v
    }

    /// From the facts an event or a history row carries: the cgroup path (unknown in rows an
    /// older daemon wrote) and the unit and container it claims.
    pub fn identity(
        &self,
        cgroup_path: Option<&str>,
        claimed_unit: Option<&str>,
        claimed_container: Option<&Container>,
    ) -> Identity {
        let trusted = cgroup_path.map(cgroup::trusted).unwrap_or_default();
        let container = claimed_container
            .filter(|c| cgroup_path.is_some() && trusted.container.as_ref() == Some(*c))
            .filter(|c| self.confirmed(c))
            .cloned();
        let label = match (claimed_container, claimed_unit) {
            (Some(c), _) => format!(
                "{}:{}{}",
                c.runtime.as_str(),
                c.id.chars().take(12).collect::<String>(),
                if container.as_ref() == Some(c) {
                    ""
                } else {
                    "?"
                }
            ),
            (None, Some(u)) => match (&trusted.unit, cgroup_path) {
                (Some(t), _) if t == u => u.to_string(),
                (Some(t), _) => format!("{t}/{u}"),
                (None, _) => format!("{u}?"),
            },
            (None, None) => "-".to_string(),
        };
        Identity {
            unit: trusted.unit,
            container,
            label,
        }
    }
}

/// The base name of an executable path, without the ` (deleted)` the kernel appends once the
/// file was replaced (a package upgrade) or removed.
pub fn executable_name(path: &str) -> &str {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    match path.rsplit('/').next() {
        Some(b) if !b.is_empty() => b,
        _ => path,
    }
}

/// Does a command line's first word name this executable? Its base name, exactly, or with a
/// version after it (`python3` runs `python3.11`), or with the `:` of a process title
/// (`nginx: master process`).
fn names(arg0: &str, executable: &str) -> bool {
    // A process title (`nginx: master process …`) is one word of argv with spaces in it.
    let arg0 = arg0.split(' ').next().unwrap_or(arg0);
    let arg0 = executable_name(arg0);
    let arg0 = arg0.strip_suffix(':').unwrap_or(arg0);
    let exe = executable_name(executable);
    !arg0.is_empty()
        && exe
            .strip_prefix(arg0)
            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

/// The command a table shows: the command line (the program's base name alone when `short`),
/// or the executable when there is none. A command line is whatever the process wrote there, so
/// when its first word does not name the executable the kernel ran, that executable's name leads
/// in brackets: `[evil] nginx -g daemon off;`.
pub fn command<S: AsRef<str>>(argv: Option<&[S]>, executable: Option<&str>, short: bool) -> String {
    match argv.filter(|a| !a.is_empty()) {
        Some(a) => {
            let first = a[0].as_ref();
            let program = if short {
                executable_name(first).to_string()
            } else {
                first.to_string()
            };
            let text = std::iter::once(program.as_str())
                .chain(a[1..].iter().map(AsRef::as_ref))
                .collect::<Vec<_>>()
                .join(" ");
            match executable {
                Some(e) if !names(first, e) => format!("[{}] {text}", executable_name(e)),
                _ => text,
            }
        }
        None => match executable {
            Some(e) if short => executable_name(e).to_string(),
            Some(e) => e.to_string(),
            None => "-".to_string(),
        },
    }
}

/// The user of an event line's `process` object: its name, else its uid, else `-`.
pub fn user_of_event(p: &serde_json::Value) -> String {
    use serde_json::Value;
    p.pointer("/user/name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| p.pointer("/user/id").map(|id| id.to_string()))
        .unwrap_or_else(|| "-".into())
}

/// `command` for an event line's `process` object (its comm when it has neither a command line
/// nor an executable).
pub fn command_of_event(p: &serde_json::Value, short: bool) -> String {
    use serde_json::Value;
    let argv: Option<Vec<&str>> = p
        .get("command_line")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|x| x.as_str().unwrap_or("")).collect());
    let exe = p.get("executable").and_then(Value::as_str);
    match (&argv, exe) {
        (None, None) => p
            .get("comm")
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string(),
        _ => command(argv.as_deref(), exe, short),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::ContainerRuntime;

    #[test]
    fn claims_are_shown_marked_and_only_trusted_parts_kept() {
        let j = Judge::default();
        let id =
            |cg: Option<&str>, unit: Option<&str>, c: Option<&Container>| j.identity(cg, unit, c);
        let sys = id(
            Some("/system.slice/nginx.service"),
            Some("nginx.service"),
            None,
        );
        assert_eq!(
            (sys.unit.as_deref(), sys.label.as_str()),
            (Some("nginx.service"), "nginx.service")
        );
        let user = id(
            Some("/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service"),
            Some("nginx.service"),
            None,
        );
        assert_eq!(user.unit.as_deref(), Some("user@1000.service"));
        assert_eq!(user.label, "user@1000.service/nginx.service");
        assert_eq!(
            id(None, Some("nginx.service"), None).label,
            "nginx.service?"
        );
        let forged = Container {
            id: "ab12".repeat(16),
            runtime: ContainerRuntime::Docker,
        };
        let path = format!("/system.slice/docker-{}.scope", forged.id);
        let c = id(
            Some(&path),
            Some(&format!("docker-{}.scope", forged.id)),
            Some(&forged),
        );
        assert_eq!(
            (c.container, c.label.as_str()),
            (None, "docker:ab12ab12ab12?")
        );
    }

    #[test]
    fn commands_name_the_executable_when_argv_does_not() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cmd = |a: &[&str], e: Option<&str>, short| command(Some(&argv(a)), e, short);
        assert_eq!(
            cmd(
                &["/usr/bin/python3", "app.py"],
                Some("/usr/bin/python3.11"),
                true
            ),
            "python3 app.py"
        );
        assert_eq!(
            cmd(
                &["/usr/bin/python3", "app.py"],
                Some("/usr/bin/python3.11"),
                false
            ),
            "/usr/bin/python3 app.py"
        );
        assert_eq!(
            cmd(&["nginx", "-g", "x"], Some("/tmp/evil"), false),
            "[evil] nginx -g x"
        );
        assert_eq!(cmd(&["x"], Some("/tmp/x (deleted)"), false), "x");
        assert_eq!(
            cmd(
                &["nginx: master process nginx"],
                Some("/usr/sbin/nginx"),
                false
            ),
            "nginx: master process nginx"
        );
        // Look-alikes and an empty first word are marked.
        assert_eq!(cmd(&["nginx"], Some("/tmp/n"), false), "[n] nginx");
        assert_eq!(cmd(&["sshd"], Some("/tmp/sshd-x"), false), "[sshd-x] sshd");
        assert_eq!(cmd(&["", "x"], Some("/bin/true"), false), "[true]  x");
        assert_eq!(
            command::<String>(None, Some("/usr/sbin/sshd"), true),
            "sshd"
        );
        assert_eq!(command::<String>(None, None, true), "-");
    }
}
