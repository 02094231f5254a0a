//! What a cgroup v2 path says about a process: its systemd unit and, when it runs in one, its
//! container. Pure string work on paths like `/system.slice/nginx.service` or
//! `/kubepods.slice/…/cri-containerd-<id>.scope`.
use crate::facts::{Container, ContainerRuntime};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupFacts {
    pub unit: Option<String>,
    pub container: Option<Container>,
}

const UNIT_SUFFIXES: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];

fn is_container_id(s: &str) -> bool {
    s.len() >= 12 && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `prefix<id>.scope` → id.
fn scoped_id<'a>(component: &'a str, prefix: &str) -> Option<&'a str> {
    let id = component.strip_prefix(prefix)?.strip_suffix(".scope")?;
    is_container_id(id).then_some(id)
}

/// The container a path names: the innermost one (what the process itself runs in), or with
/// `outermost` the first from the root (the one its runtime placed; anything inside it, a nested
/// name included, was named by whoever runs in that container).
fn container(components: &[&str], outermost: bool) -> Option<Container> {
    let order: Box<dyn Iterator<Item = (usize, &&str)>> = if outermost {
        Box::new(components.iter().enumerate())
    } else {
        Box::new(components.iter().enumerate().rev())
    };
    for (i, c) in order {
        let found = if let Some(id) = scoped_id(c, "docker-") {
            Some((id, ContainerRuntime::Docker))
        } else if let Some(id) = scoped_id(c, "cri-containerd-") {
            Some((id, ContainerRuntime::Containerd))
        } else if let Some(id) = scoped_id(c, "crio-") {
            Some((id, ContainerRuntime::CriO))
        } else if let Some(id) = scoped_id(c, "libpod-") {
            Some((id, ContainerRuntime::Podman))
        } else if let Some(name) = c.strip_prefix("lxc.payload.") {
            Some((name, ContainerRuntime::Lxc))
        } else if is_container_id(c) && i > 0 {
            // cgroupfs drivers: /docker/<id>, /kubepods/<qos>/pod<uid>/<id>, /libpod_parent/…
            // (for the one the runtime placed, its parent is at the root: one further down was
            // named by whoever was given that subtree).
            let parents = if outermost {
                &components[..1]
            } else {
                &components[..i]
            };
            parents
                .iter()
                .find_map(|p| match *p {
                    "docker" => Some(ContainerRuntime::Docker),
                    p if p.starts_with("kubepods") => Some(ContainerRuntime::Cri),
                    p if p.starts_with("libpod") || p.starts_with("machine.slice") => {
                        Some(ContainerRuntime::Podman)
                    }
                    _ => None,
                })
                .map(|runtime| (*c, runtime))
        } else {
            None
        };
        // A container below a unit was named by that unit's processes (a service with
        // Delegate=yes creates what cgroups it likes): not one a runtime placed.
        if outermost && found.is_none() && is_unit(c) {
            return None;
        }
        if let Some((id, runtime)) = found {
            return Some(Container {
                id: id.to_string(),
                runtime,
            });
        }
    }
    None
}

fn is_unit(c: &str) -> bool {
    UNIT_SUFFIXES.iter().any(|s| c.ends_with(s)) && c.len() > 6
}

fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty()).collect()
}

/// The unit and container a path names, as the event log shows them: the innermost unit (under a
/// user's service manager, `user@1000.service/…`, the user unit) and the innermost container.
pub fn parse(path: &str) -> CgroupFacts {
    let c = components(path);
    CgroupFacts {
        unit: c.iter().rev().find(|c| is_unit(c)).map(|c| c.to_string()),
        container: container(&c, false),
    }
}

/// What of the path only the system manager and the container runtimes could have named, for
/// policy rules: the outermost unit (the system manager places every process in exactly one of
/// its units; whatever lies below it — a user manager's units, a container's own systemd — was
/// named by someone else), and the outermost container, unless the path lies in a user's own
/// manager (a delegated subtree: every name there is the user's).
pub fn trusted(path: &str) -> CgroupFacts {
    let c = components(path);
    CgroupFacts {
        unit: c.iter().find(|c| is_unit(c)).map(|c| c.to_string()),
        container: (!under_user_manager(path))
            .then(|| container(&c, true))
            .flatten(),
    }
}

/// The path lies inside a user's own service manager (`…/user@UID.service/…`), a subtree
/// delegated to that user, who names its cgroups as they like.
pub fn under_user_manager(path: &str) -> bool {
    path.split('/')
        .any(|c| c.starts_with("user@") && c.ends_with(".service"))
}

/// The cgroup v2 path from the contents of /proc/PID/cgroup (its `0::` line).
pub fn v2_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f8a2b1c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    fn c(id: &str, runtime: &str) -> Option<Container> {
        Some(Container {
            id: id.into(),
            runtime: ContainerRuntime::parse(runtime).unwrap(),
        })
    }

    #[test]
    fn system_service_and_scopes() {
        let f = parse("/system.slice/nginx.service");
        assert_eq!(f.unit.as_deref(), Some("nginx.service"));
        assert_eq!(f.container, None);
        assert_eq!(
            parse("/user.slice/user-1000.slice/session-3.scope")
                .unit
                .as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(parse("/init.scope").unit.as_deref(), Some("init.scope"));
        assert_eq!(parse("/"), CgroupFacts::default());
        assert_eq!(parse("/system.slice").unit, None);
    }

    #[test]
    fn only_what_the_manager_and_runtimes_named_is_trusted() {
        let nested = format!("/system.slice/docker-{ID}.scope/system.slice/nginx.service");
        assert_eq!(parse(&nested).unit.as_deref(), Some("nginx.service"));
        let t = trusted(&nested);
        assert_eq!(t.unit, Some(format!("docker-{ID}.scope")));
        assert_eq!(t.container.map(|c| c.id), Some(ID.to_string()));
        let other = "0123456789ab0123456789ab";
        let inner = format!("/system.slice/docker-{ID}.scope/docker-{other}.scope");
        assert_eq!(
            trusted(&inner).container.map(|c| c.id),
            Some(ID.to_string())
        );
        let user =
            format!("/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope");
        assert_eq!(trusted(&user).unit.as_deref(), Some("user@1000.service"));
        assert_eq!(trusted(&user).container, None);
        // A service given its own subtree (Delegate=yes) names what lies below it.
        for delegated in [
            format!("/system.slice/ci.service/docker-{ID}.scope"),
            format!("/system.slice/ci.service/docker/{ID}"),
            format!("/mine/docker/{ID}"),
        ] {
            assert_eq!(trusted(&delegated).container, None, "{delegated}");
            assert!(parse(&delegated).container.is_some(), "{delegated}");
        }
        assert_eq!(
            trusted(&format!("/docker/{ID}")).container.map(|c| c.id),
            Some(ID.to_string())
        );
        assert_eq!(
            trusted("/system.slice/nginx.service").unit.as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            trusted("/user.slice/user-1000.slice/session-3.scope")
                .unit
                .as_deref(),
            Some("session-3.scope")
        );
    }

    #[test]
    fn a_users_own_manager_is_told_apart() {
        assert!(under_user_manager(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service"
        ));
        assert!(!under_user_manager("/system.slice/nginx.service"));
        assert!(!under_user_manager(
            "/user.slice/user-1000.slice/session-3.scope"
        ));
    }

    #[test]
    fn user_units_under_the_user_manager() {
        let f = parse("/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo@1.service");
        assert_eq!(f.unit.as_deref(), Some("app-foo@1.service"));
        let f = parse("/user.slice/user-1000.slice/user@1000.service/init.scope");
        assert_eq!(f.unit.as_deref(), Some("init.scope"));
    }

    #[test]
    fn docker_systemd_and_cgroupfs_drivers() {
        let f = parse(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(f.container, c(ID, "docker"));
        assert_eq!(f.unit, Some(format!("docker-{ID}.scope")));
        assert_eq!(parse(&format!("/docker/{ID}")).container, c(ID, "docker"));
    }

    #[test]
    fn kubernetes_containerd_and_crio() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parse(&p).container, c(ID, "containerd"));
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice/crio-{ID}.scope"
        );
        assert_eq!(parse(&p).container, c(ID, "cri-o"));
        let p = format!("/kubepods/burstable/pod1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809/{ID}");
        assert_eq!(parse(&p).container, c(ID, "cri"));
    }

    #[test]
    fn podman_rootful_and_rootless() {
        assert_eq!(
            parse(&format!("/machine.slice/libpod-{ID}.scope")).container,
            c(ID, "podman")
        );
        let p = format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
        );
        assert_eq!(parse(&p).container, c(ID, "podman"));
        assert_eq!(
            parse(&format!("/libpod_parent/{ID}")).container,
            c(ID, "podman")
        );
    }

    #[test]
    fn lxc_and_look_alikes() {
        assert_eq!(
            parse("/lxc.payload.web1/system.slice/sshd.service").container,
            c("web1", "lxc")
        );
        // A hex-looking directory outside any container hierarchy is not a container.
        assert_eq!(parse(&format!("/system.slice/{ID}")).container, None);
        assert_eq!(parse("/system.slice/docker-nothex.scope").container, None);
    }

    #[test]
    fn v2_line_from_proc() {
        assert_eq!(
            v2_path("12:pids:/x\n0::/system.slice/a.service\n").as_deref(),
            Some("/system.slice/a.service")
        );
        assert_eq!(v2_path("4:memory:/x\n"), None);
    }
}
