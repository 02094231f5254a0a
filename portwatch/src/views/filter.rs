//! The process filters `who` and `tail` share: `--pid`, `--exe`, `--user`, `--unit`,
//! `--container`. A filter names something about the holder that the holder cannot choose for
//! itself: the executable the kernel ran (not the command line), the system manager's unit and a
//! confirmed container (views::identity). A holder nobody knows (a kernel socket, a process out
//! of sight) never matches one.
use serde_json::Value;

use crate::{facts::Container, views::identity::Judge};

/// What a filter can see of a holder, from a `who` row or an event line's `process` object.
#[derive(Debug, Default, Clone)]
pub struct Subject<'a> {
    pub pid: Option<u32>,
    pub executable: Option<&'a str>,
    pub uid: Option<u32>,
    pub user: Option<&'a str>,
    /// The system manager's unit.
    pub unit: Option<String>,
    /// A confirmed container's id.
    pub container: Option<String>,
}

impl<'a> Subject<'a> {
    /// From an event line's `process` object. A line without a process, or with pid 0 (no
    /// process holds the socket), is nobody.
    pub fn of_event(process: &'a Value, judge: &Judge) -> Self {
        let s = |k: &str| process.get(k).and_then(Value::as_str);
        let Some(pid) = process
            .get("pid")
            .and_then(Value::as_u64)
            .filter(|p| *p != 0)
            .and_then(|p| u32::try_from(p).ok())
        else {
            return Subject::default();
        };
        let container: Option<Container> = process
            .get("container")
            .and_then(|c| serde_json::from_value(c.clone()).ok());
        let id = judge.identity(s("cgroup"), s("unit"), container.as_ref());
        Subject {
            pid: Some(pid),
            executable: s("executable"),
            uid: process
                .pointer("/user/id")
                .and_then(Value::as_u64)
                .and_then(|u| u32::try_from(u).ok()),
            user: process.pointer("/user/name").and_then(Value::as_str),
            unit: id.unit,
            container: id.container.map(|c| c.id),
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcessFilter {
    pub pid: Option<u32>,
    /// A path (contains `/`): the whole executable path (/proc/PID/exe); else its base name
    /// (`python3.11` where a command line says `python3`).
    pub exe: Option<String>,
    /// A name, or a uid in digits.
    pub user: Option<String>,
    /// A unit name; `nginx` also matches `nginx.service`.
    pub unit: Option<String>,
    /// A prefix of the container id (as `docker ps` shortens it).
    pub container: Option<String>,
}

impl ProcessFilter {
    pub fn is_empty(&self) -> bool {
        *self == ProcessFilter::default()
    }

    pub fn matches(&self, s: &Subject<'_>) -> bool {
        let pid = self.pid.is_none_or(|p| s.pid == Some(p));
        let exe = self.exe.as_deref().is_none_or(|want| {
            s.executable.is_some_and(|e| {
                // A binary replaced while it runs (a package upgrade) is still the one asked for.
                let e = e.strip_suffix(" (deleted)").unwrap_or(e);
                if want.contains('/') {
                    e == want
                } else {
                    crate::views::identity::executable_name(e) == want
                }
            })
        });
        let user = self
            .user
            .as_deref()
            .is_none_or(|want| match want.parse::<u32>() {
                Ok(uid) => s.uid == Some(uid),
                Err(_) => s.user == Some(want),
            });
        let unit = self.unit.as_deref().is_none_or(|want| {
            s.unit
                .as_deref()
                .is_some_and(|u| u == want || u.strip_suffix(".service") == Some(want))
        });
        let container = self.container.as_deref().is_none_or(|want| {
            !want.is_empty()
                && s.container.as_deref().is_some_and(|c| {
                    c.to_ascii_lowercase()
                        .starts_with(&want.to_ascii_lowercase())
                })
        });
        pid && exe && user && unit && container
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_filter_matches_what_it_names_and_nothing_unknown() {
        let judge = Judge::default();
        let ev = serde_json::json!({"pid": 42, "executable": "/usr/sbin/nginx",
            "command_line": ["nginx", "-g", "daemon off;"],
            "user": {"id": 33, "name": "www-data"}, "unit": "nginx.service",
            "cgroup": "/system.slice/nginx.service"});
        let s = Subject::of_event(&ev, &judge);
        let f = |f: ProcessFilter| f.matches(&s);
        assert!(f(ProcessFilter::default()));
        assert!(f(ProcessFilter {
            pid: Some(42),
            ..Default::default()
        }));
        assert!(!f(ProcessFilter {
            pid: Some(43),
            ..Default::default()
        }));
        for exe in ["nginx", "/usr/sbin/nginx"] {
            assert!(
                f(ProcessFilter {
                    exe: Some(exe.into()),
                    ..Default::default()
                }),
                "{exe}"
            );
        }
        let upgraded = serde_json::json!({"pid": 9, "executable": "/usr/sbin/nginx (deleted)"});
        for exe in ["nginx", "/usr/sbin/nginx"] {
            let f = ProcessFilter {
                exe: Some(exe.into()),
                ..Default::default()
            };
            assert!(f.matches(&Subject::of_event(&upgraded, &judge)), "{exe}");
        }
        for exe in ["ngin", "/sbin/nginx", "sbin/nginx"] {
            assert!(
                !f(ProcessFilter {
                    exe: Some(exe.into()),
                    ..Default::default()
                }),
                "{exe}"
            );
        }
        for user in ["33", "www-data"] {
            assert!(f(ProcessFilter {
                user: Some(user.into()),
                ..Default::default()
            }));
        }
        assert!(!f(ProcessFilter {
            user: Some("0".into()),
            ..Default::default()
        }));
        for unit in ["nginx", "nginx.service"] {
            assert!(f(ProcessFilter {
                unit: Some(unit.into()),
                ..Default::default()
            }));
        }
        assert!(!f(ProcessFilter {
            unit: Some("ngin".into()),
            ..Default::default()
        }));
        // The command line names nginx; the executable the kernel ran does not.
        let fake = serde_json::json!({"pid": 7, "executable": "/tmp/evil",
            "command_line": ["nginx"], "user": {"id": 1000},
            "unit": "nginx.service", "container": {"id": "ab12".repeat(16), "runtime": "docker"},
            "cgroup": format!("/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{}.scope/nginx.service", "ab12".repeat(16))});
        let s = Subject::of_event(&fake, &judge);
        for filter in [
            ProcessFilter {
                exe: Some("nginx".into()),
                ..Default::default()
            },
            ProcessFilter {
                unit: Some("nginx".into()),
                ..Default::default()
            },
            ProcessFilter {
                container: Some("ab12".into()),
                ..Default::default()
            },
        ] {
            assert!(!filter.matches(&s), "{filter:?}");
        }
        assert!(
            ProcessFilter {
                unit: Some("user@1000".into()),
                ..Default::default()
            }
            .matches(&s)
        );
        // A container its runtime confirms is matched by an id prefix, in any case.
        let id = "0123456789abcdef".repeat(4);
        let real = serde_json::json!({"pid": 8, "executable": "/usr/sbin/nginx",
            "container": {"id": id, "runtime": "docker"},
            "cgroup": format!("/system.slice/docker-{id}.scope")});
        judge.assume_confirmed(&Container {
            id: id.clone(),
            runtime: crate::facts::ContainerRuntime::Docker,
        });
        let s = Subject::of_event(&real, &judge);
        assert!(
            ProcessFilter {
                container: Some("0123456789AB".into()),
                ..Default::default()
            }
            .matches(&s)
        );
        assert!(
            !ProcessFilter {
                container: Some("1".into()),
                ..Default::default()
            }
            .matches(&s)
        );
        // A holder nobody knows matches no process filter.
        let none = serde_json::json!({"pid": 0, "user": {"id": 0, "name": "root"}});
        let s = Subject::of_event(&none, &judge);
        assert!(
            !ProcessFilter {
                pid: Some(0),
                ..Default::default()
            }
            .matches(&s)
        );
        assert!(
            !ProcessFilter {
                user: Some("root".into()),
                ..Default::default()
            }
            .matches(&s)
        );
    }
}
