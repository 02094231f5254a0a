//! The process filters `who`, `tail` and `top` share: `--pid`, `--exe`, `--user`, `--unit`,
//! `--container`. A filter names something about the holder; a holder nobody knows (a kernel
//! socket, a process out of sight) never matches one.
use serde_json::Value;

/// What a filter can see of a holder, from a `who` row or an event line's `process` object.
#[derive(Debug, Default, Clone, Copy)]
pub struct Subject<'a> {
    pub pid: Option<u32>,
    pub executable: Option<&'a str>,
    /// The command line's first word (an interpreter's `python3` where /proc/PID/exe names
    /// `python3.11`).
    pub argv0: Option<&'a str>,
    pub uid: Option<u32>,
    pub user: Option<&'a str>,
    pub unit: Option<&'a str>,
    pub container: Option<&'a str>,
}

impl<'a> Subject<'a> {
    /// From an event line's `process` object (`pid` 0 is "no process").
    pub fn of_event(process: &'a Value) -> Self {
        let s = |k: &str| process.get(k).and_then(Value::as_str);
        Subject {
            pid: process
                .get("pid")
                .and_then(Value::as_u64)
                .filter(|p| *p != 0)
                .and_then(|p| u32::try_from(p).ok()),
            executable: s("executable"),
            argv0: process.pointer("/command_line/0").and_then(Value::as_str),
            uid: process
                .pointer("/user/id")
                .and_then(Value::as_u64)
                .and_then(|u| u32::try_from(u).ok()),
            user: process.pointer("/user/name").and_then(Value::as_str),
            unit: s("unit"),
            container: process.pointer("/container/id").and_then(Value::as_str),
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcessFilter {
    pub pid: Option<u32>,
    /// A path (contains `/`): the whole executable path; else its base name, or that of the
    /// command line's first word.
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
            let base = |p: &str| p.rsplit('/').next() == Some(want);
            if want.contains('/') {
                s.executable == Some(want)
            } else {
                s.executable.is_some_and(base) || s.argv0.is_some_and(base)
            }
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
                .is_some_and(|u| u == want || u.strip_suffix(".service") == Some(want))
        });
        let container = self.container.as_deref().is_none_or(|want| {
            !want.is_empty()
                && s.container.is_some_and(|c| {
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
        let ev = serde_json::json!({"pid": 42, "executable": "/usr/sbin/nginx",
            "user": {"id": 33, "name": "www-data"}, "unit": "nginx.service",
            "container": {"id": "0123456789abcdef", "runtime": "docker"}});
        let s = Subject::of_event(&ev);
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
        let py = serde_json::json!({"pid": 7, "executable": "/usr/bin/python3.11",
            "command_line": ["python3", "-m", "http.server"]});
        for exe in ["python3", "python3.11", "/usr/bin/python3.11"] {
            let f = ProcessFilter {
                exe: Some(exe.into()),
                ..Default::default()
            };
            assert!(f.matches(&Subject::of_event(&py)), "{exe}");
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
        assert!(f(ProcessFilter {
            container: Some("0123456789AB".into()),
            ..Default::default()
        }));
        assert!(!f(ProcessFilter {
            container: Some("1".into()),
            ..Default::default()
        }));
        assert!(!f(ProcessFilter {
            container: Some(String::new()),
            ..Default::default()
        }));
        // A holder nobody knows matches no process filter.
        let none = serde_json::json!({"pid": 0, "user": {"id": 0, "name": "root"}});
        let s = Subject::of_event(&none);
        assert!(
            !ProcessFilter {
                pid: Some(0),
                ..Default::default()
            }
            .matches(&s)
        );
        assert!(
            !ProcessFilter {
                exe: Some("x".into()),
                ..Default::default()
            }
            .matches(&s)
        );
    }
}
