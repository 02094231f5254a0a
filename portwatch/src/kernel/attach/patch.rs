//! Edits to the embedded eBPF object before it is loaded, for what aya's loader has no setting.
//!
//! Before 6.1 the verifier warns (a kernel `WARNING` with a stack trace, fatal on a host with
//! `panic_on_warn`) when a kprobe or tracepoint program uses a hash map allocated at run time
//! (`BPF_F_NO_PREALLOC`). On such kernels the per-socket table is preallocated instead: its
//! memory for its whole capacity is taken at load.
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// `BPF_F_NO_PREALLOC`.
const NO_PREALLOC: u32 = 1;
/// `BPF_MAP_TYPE_HASH`.
const MAP_TYPE_HASH: u32 = 1;
/// Offsets in a legacy `struct bpf_map_def` (type, key_size, value_size, max_entries, map_flags).
const DEF_TYPE: usize = 0;
const DEF_FLAGS: usize = 16;
const DEF_SIZE: usize = 28;

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("parsing the eBPF object: {0}")]
    Parse(#[from] object::Error),
    #[error("the eBPF object has no map {0}")]
    NoMap(String),
    #[error("map {name} in the eBPF object is not the hash map expected ({reason})")]
    Unexpected { name: String, reason: String },
}

/// A copy of the object `obj` in which the hash map `name` is preallocated.
pub fn preallocate(obj: &[u8], name: &str) -> Result<Vec<u8>, ObjectError> {
    let file = object::File::parse(obj)?;
    let unexpected = |reason: String| ObjectError::Unexpected {
        name: name.to_string(),
        reason,
    };
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .ok_or_else(|| ObjectError::NoMap(name.to_string()))?;
    let section = symbol
        .section_index()
        .map(|i| file.section_by_index(i))
        .transpose()?
        .ok_or_else(|| unexpected("not in a section".into()))?;
    let (section_start, section_len) = section
        .file_range()
        .ok_or_else(|| unexpected("its section has no data".into()))?;
    // In a relocatable object a symbol's value is its offset in its section.
    let at = symbol.address();
    if at + DEF_SIZE as u64 > section_len {
        return Err(unexpected("its definition runs past its section".into()));
    }
    let def = usize::try_from(section_start + at)
        .map_err(|_| unexpected("offset out of range".into()))?;
    let word = |off: usize| {
        u32::from_le_bytes([
            obj[def + off],
            obj[def + off + 1],
            obj[def + off + 2],
            obj[def + off + 3],
        ])
    };
    if word(DEF_TYPE) != MAP_TYPE_HASH {
        return Err(unexpected(format!("map type {}", word(DEF_TYPE))));
    }
    let flags = word(DEF_FLAGS) & !NO_PREALLOC;
    let mut out = obj.to_vec();
    out[def + DEF_FLAGS..def + DEF_FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real object: SOCKETS is a run-time allocated hash; the copy is preallocated, and
    /// nothing else in the object changed.
    #[test]
    fn the_socket_table_is_preallocated_in_the_copy() {
        let obj = super::super::EBPF_OBJECT;
        let copy = preallocate(obj, "SOCKETS").expect("patched");
        assert_eq!(copy.len(), obj.len());
        let changed: Vec<usize> = (0..obj.len()).filter(|&i| obj[i] != copy[i]).collect();
        assert_eq!(changed.len(), 1, "one byte: the flag's");
        assert_eq!(obj[changed[0]] & 1, 1);
        assert_eq!(copy[changed[0]] & 1, 0);
        // Patching again changes nothing more.
        assert_eq!(preallocate(&copy, "SOCKETS").expect("again"), copy);
        assert!(matches!(
            preallocate(obj, "NO_SUCH_MAP"),
            Err(ObjectError::NoMap(_))
        ));
        // A map that is not a hash is refused rather than patched.
        let e = preallocate(obj, "COUNTERS").unwrap_err().to_string();
        assert!(e.contains("not the hash map expected"), "{e}");
    }
}
