//! What a container runtime's own state says about a container the cgroup path claims. A cgroup
//! name is only a claim — a user can name a cgroup of their delegated subtree `docker-<id>.scope`
//! or `lxc.payload.web`, and ids are readable in any `/proc/PID/cgroup` — so policy rules trust a
//! container only when the runtime's root-owned state confirms it, and take its name from there
//! (docker's `containers/<id>/config.v2.json`, podman's `containers.json`; an lxc container's id
//! is its name). Users' home directories (rootless runtimes) are never read: the daemon runs as
//! root, and a user controls what lies there (a FIFO would block the read).
use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use crate::facts::{Container, ContainerRuntime};

/// Where runtimes keep their state; a test points it at a fixture tree.
pub struct Roots<'a> {
    /// `/var/lib/docker`
    pub docker: &'a Path,
    /// `/var/lib/containers/storage` (rootful podman, CRI-O)
    pub podman: &'a Path,
    /// `/run/containerd/io.containerd.runtime.v2.task` (containerd: `<namespace>/<id>`)
    pub containerd: &'a Path,
    /// `/var/lib/lxc`, and LXD's container directories.
    pub lxc: [&'a Path; 3],
}

impl Roots<'static> {
    pub fn system() -> Self {
        Roots {
            docker: Path::new("/var/lib/docker"),
            podman: Path::new("/var/lib/containers/storage"),
            containerd: Path::new("/run/containerd/io.containerd.runtime.v2.task"),
            lxc: [
                Path::new("/var/lib/lxc"),
                Path::new("/var/lib/lxd/containers"),
                Path::new("/var/snap/lxd/common/lxd/containers"),
            ],
        }
    }
}

/// A directory root owns: only root (the runtime) can have made it.
fn root_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == 0)
}

/// Does the runtime's own state know this container?
pub fn confirmed(c: &Container, roots: &Roots<'_>) -> bool {
    // An id is a path component here: nothing but what the cgroup parser accepted may reach it.
    if c.id.is_empty() || c.id.contains('/') || c.id.starts_with('.') {
        return false;
    }
    let containerd = || {
        fs::read_dir(roots.containerd)
            .into_iter()
            .flatten()
            .flatten()
            .any(|ns| root_dir(&ns.path().join(&c.id)))
    };
    let storage = || root_dir(&roots.podman.join("overlay-containers").join(&c.id));
    match c.runtime {
        ContainerRuntime::Docker => {
            root_dir(&roots.docker.join("containers").join(&c.id)) || containerd()
        }
        ContainerRuntime::Podman | ContainerRuntime::CriO => storage(),
        ContainerRuntime::Containerd => containerd(),
        ContainerRuntime::Cri => containerd() || storage(),
        ContainerRuntime::Lxc => roots.lxc.iter().any(|r| root_dir(&r.join(&c.id))),
    }
}

/// The container's name, for rules that name containers; only for a confirmed container.
pub fn name(c: &Container, roots: &Roots<'_>) -> Option<String> {
    match c.runtime {
        ContainerRuntime::Lxc => Some(c.id.clone()),
        ContainerRuntime::Docker => docker(&c.id, roots.docker),
        ContainerRuntime::Podman => podman(&c.id, roots.podman),
        _ => None,
    }
}

fn docker(id: &str, root: &Path) -> Option<String> {
    let text = read_small(&root.join("containers").join(id).join("config.v2.json"))?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let name = v["Name"].as_str()?.trim_start_matches('/');
    (!name.is_empty()).then(|| name.to_string())
}

fn podman(id: &str, storage: &Path) -> Option<String> {
    let text = read_small(&storage.join("overlay-containers/containers.json"))?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v.as_array()?.iter().find(|c| c["id"] == id)?["names"]
        .as_array()?
        .first()?
        .as_str()
        .map(str::to_string)
}

/// A runtime state file, if it is a regular file of root's and of a sane size.
fn read_small(p: &Path) -> Option<Vec<u8>> {
    const MAX: u64 = 16 << 20;
    let m = fs::symlink_metadata(p).ok()?;
    if !m.is_file() || m.uid() != 0 || m.len() > MAX {
        return None;
    }
    fs::read(p).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1e2d3c4b5a69788796a5b4c3d2e1f04f1e2d3c4b5a69788796a5b4c3d2e1f0";

    fn c(id: &str, runtime: ContainerRuntime) -> Container {
        Container {
            id: id.into(),
            runtime,
        }
    }

    #[test]
    fn names_and_confirmation_come_from_the_runtimes_own_state() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path();
        let docker = p.join("docker");
        fs::create_dir_all(docker.join("containers").join(ID)).unwrap();
        fs::write(
            docker.join("containers").join(ID).join("config.v2.json"),
            format!(r#"{{"ID":"{ID}","Name":"/web","State":{{"Running":true}}}}"#),
        )
        .unwrap();
        let podman = p.join("podman");
        fs::create_dir_all(podman.join("overlay-containers").join(ID)).unwrap();
        fs::write(
            podman.join("overlay-containers/containers.json"),
            format!(r#"[{{"id":"0000","names":["other"]}},{{"id":"{ID}","names":["db","db-alias"],"image":"x"}}]"#),
        )
        .unwrap();
        let containerd = p.join("containerd");
        fs::create_dir_all(containerd.join("k8s.io").join("abc123abc123")).unwrap();
        let lxc = p.join("lxc");
        fs::create_dir_all(lxc.join("mybox")).unwrap();
        let roots = Roots {
            docker: &docker,
            podman: &podman,
            containerd: &containerd,
            lxc: [&lxc, &lxc, &lxc],
        };
        assert_eq!(
            name(&c(ID, ContainerRuntime::Docker), &roots).as_deref(),
            Some("web")
        );
        assert_eq!(
            name(&c(ID, ContainerRuntime::Podman), &roots).as_deref(),
            Some("db")
        );
        assert_eq!(name(&c(ID, ContainerRuntime::Containerd), &roots), None);
        assert!(confirmed(&c(ID, ContainerRuntime::Docker), &roots));
        assert!(confirmed(&c(ID, ContainerRuntime::Podman), &roots));
        assert!(confirmed(&c("abc123abc123", ContainerRuntime::Cri), &roots));
        assert!(confirmed(&c("mybox", ContainerRuntime::Lxc), &roots));
        // Claims no runtime state backs: a forged cgroup name.
        let forged = "0123456789ab";
        assert!(!confirmed(&c(forged, ContainerRuntime::Docker), &roots));
        assert!(!confirmed(&c("web", ContainerRuntime::Lxc), &roots));
        assert!(!confirmed(&c("../docker", ContainerRuntime::Lxc), &roots));
        // A corrupt state file is no name, not an error.
        fs::write(
            docker.join("containers").join(ID).join("config.v2.json"),
            "{",
        )
        .unwrap();
        assert_eq!(name(&c(ID, ContainerRuntime::Docker), &roots), None);
    }
}
