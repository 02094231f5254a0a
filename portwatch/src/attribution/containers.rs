//! A container's name, for policy rules that name containers: the cgroup path carries only the
//! id, so the name is looked up in the runtime's own state files (docker's
//! `containers/<id>/config.v2.json`, podman's `containers.json`; an lxc container's id already
//! is its name). Runtimes without such a file (containerd, CRI-O under Kubernetes) give none.
use std::{fs, path::Path};

use crate::facts::{Container, ContainerRuntime};

/// Where runtimes keep their state; a test points it at a fixture tree.
pub struct Roots<'a> {
    /// `/var/lib/docker`
    pub docker: &'a Path,
    /// `/var/lib/containers/storage` (rootful podman)
    pub podman: &'a Path,
    /// The home directory of the container's user, for rootless podman
    /// (`~/.local/share/containers/storage`).
    pub home: Option<&'a Path>,
}

impl Roots<'static> {
    pub fn system() -> Self {
        Roots {
            docker: Path::new("/var/lib/docker"),
            podman: Path::new("/var/lib/containers/storage"),
            home: None,
        }
    }
}

pub fn name(c: &Container, roots: &Roots<'_>) -> Option<String> {
    match c.runtime {
        ContainerRuntime::Lxc => Some(c.id.clone()),
        ContainerRuntime::Docker => docker(&c.id, roots.docker),
        ContainerRuntime::Podman => podman(&c.id, roots.podman).or_else(|| {
            roots
                .home
                .and_then(|h| podman(&c.id, &h.join(".local/share/containers/storage")))
        }),
        _ => None,
    }
}

fn docker(id: &str, root: &Path) -> Option<String> {
    let text = fs::read(root.join("containers").join(id).join("config.v2.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let name = v["Name"].as_str()?.trim_start_matches('/');
    (!name.is_empty()).then(|| name.to_string())
}

fn podman(id: &str, storage: &Path) -> Option<String> {
    let text = fs::read(storage.join("overlay-containers/containers.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v.as_array()?.iter().find(|c| c["id"] == id)?["names"]
        .as_array()?
        .first()?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1e2d3c4b5a69788796a5b4c3d2e1f04f1e2d3c4b5a69788796a5b4c3d2e1f0";

    #[test]
    fn names_from_docker_and_podman_state_files() {
        let root = tempfile::tempdir().unwrap();
        let docker = root.path().join("docker");
        fs::create_dir_all(docker.join("containers").join(ID)).unwrap();
        fs::write(
            docker.join("containers").join(ID).join("config.v2.json"),
            format!(r#"{{"ID":"{ID}","Name":"/web","State":{{"Running":true}}}}"#),
        )
        .unwrap();
        let podman = root.path().join("podman");
        fs::create_dir_all(podman.join("overlay-containers")).unwrap();
        fs::write(
            podman.join("overlay-containers/containers.json"),
            format!(r#"[{{"id":"0000","names":["other"]}},{{"id":"{ID}","names":["db","db-alias"],"image":"x"}}]"#),
        )
        .unwrap();
        let home = root.path().join("home");
        let roots = Roots {
            docker: &docker,
            podman: &home,
            home: None,
        };
        let c = |runtime: &str| Container {
            id: ID.into(),
            runtime: ContainerRuntime::parse(runtime).unwrap(),
        };
        assert_eq!(name(&c("docker"), &roots).as_deref(), Some("web"));
        assert_eq!(name(&c("podman"), &roots), None, "not in the rootful store");
        let rootless_home = root.path().join("u");
        fs::create_dir_all(rootless_home.join(".local/share/containers")).unwrap();
        std::os::unix::fs::symlink(
            &podman,
            rootless_home.join(".local/share/containers/storage"),
        )
        .unwrap();
        let roots = Roots {
            docker: &docker,
            podman: &home,
            home: Some(&rootless_home),
        };
        assert_eq!(name(&c("podman"), &roots).as_deref(), Some("db"));
        assert_eq!(name(&c("containerd"), &roots), None);
        assert_eq!(
            name(
                &Container {
                    id: "mybox".into(),
                    runtime: ContainerRuntime::Lxc
                },
                &roots
            )
            .as_deref(),
            Some("mybox")
        );
        // A corrupt state file is no name, not an error.
        fs::write(
            docker.join("containers").join(ID).join("config.v2.json"),
            "{",
        )
        .unwrap();
        assert_eq!(name(&c("docker"), &roots), None);
    }
}
