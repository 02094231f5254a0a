//! Tracepoint field offsets from tracefs `format` files, so the programs never assume a layout.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use super::AttachError;

const TRACEFS_CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Finds tracefs, mounting it at /sys/kernel/tracing when nothing has (minimal systems, VMs).
pub fn ensure_tracefs() -> Result<PathBuf, AttachError> {
    for c in TRACEFS_CANDIDATES {
        if Path::new(c).join("events").is_dir() {
            return Ok(PathBuf::from(c));
        }
    }
    let target = TRACEFS_CANDIDATES[0];
    nix::mount::mount(
        Some("tracefs"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| AttachError::TracefsMount { target, source })?;
    Ok(PathBuf::from(target))
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// Parses a tracepoint `format` file into field name → offset and size.
pub fn parse_format(text: &str) -> HashMap<String, Field> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.trim().parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.trim().parse().ok();
            } else if decl.is_none() && !part.is_empty() && !part.contains(':') {
                decl = Some(part);
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            continue;
        };
        // "const void * skaddr", "__u8 saddr[4]": the name is the last word, minus any array suffix.
        let name = decl.rsplit([' ', '*']).next().unwrap_or(decl);
        let name = name.split('[').next().unwrap_or(name);
        fields.insert(name.to_string(), Field { offset, size });
    }
    fields
}

/// Reads one tracepoint's format and returns the offsets of `wanted`, checking each size.
pub fn field_offsets(
    tracefs: &Path,
    category: &str,
    name: &str,
    wanted: &[(&str, u32)],
) -> Result<Vec<u32>, AttachError> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = fs::read_to_string(&path).map_err(|source| AttachError::TracefsRead {
        path: path.clone(),
        source,
    })?;
    let fields = parse_format(&text);
    wanted
        .iter()
        .map(|(field, size)| match fields.get(*field) {
            Some(f) if f.size == *size => Ok(f.offset),
            Some(f) => Err(AttachError::Tracefs {
                reason: format!(
                    "{}: field {field} has size {} where portwatch expects {size}",
                    path.display(),
                    f.size
                ),
            }),
            None => Err(AttachError::Tracefs {
                reason: format!("{}: no field {field}", path.display()),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INET_SOCK_SET_STATE: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;

print fmt: \"family=%s\"";

    #[test]
    fn parses_pointer_scalar_and_array_fields() {
        let f = parse_format(INET_SOCK_SET_STATE);
        assert_eq!(f["skaddr"], Field { offset: 8, size: 8 });
        assert_eq!(
            f["newstate"],
            Field {
                offset: 20,
                size: 4
            }
        );
        assert_eq!(
            f["sport"],
            Field {
                offset: 24,
                size: 2
            }
        );
        assert_eq!(
            f["saddr"],
            Field {
                offset: 32,
                size: 4
            }
        );
        assert_eq!(
            f["saddr_v6"],
            Field {
                offset: 40,
                size: 16
            }
        );
        assert_eq!(f["common_pid"], Field { offset: 4, size: 4 });
    }

    #[test]
    fn ignores_lines_that_are_not_fields() {
        assert!(parse_format("name: x\nprint fmt: \"field:int a;\"\n").is_empty());
    }
}
