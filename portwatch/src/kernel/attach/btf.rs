//! Kernel struct member offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//! aya-ebpf has no CO-RE, so the programs read these from the `KernelOffsets` global set at load
//! time.
use std::path::Path;

use btf_rs::{Backend, Btf, Type};

use portwatch_common::{KernelOffsets, UNKNOWN_OFFSET};

use super::AttachError;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The struct member offsets of `KernelOffsets`, read from a BTF file.
///
/// Maps the file rather than parsing all of it where the kernel allows mapping vmlinux BTF
/// (6.18 here does): the few dozen lookups here do not need the whole type graph in memory,
/// which took ~39 MB and was the daemon's start-up peak (docs/benchmarks.md). Where the
/// mapping is refused, the file is parsed as before.
pub fn struct_offsets_from_file(path: &Path) -> Result<KernelOffsets, AttachError> {
    read(path).map(|k| k.offsets)
}

/// What the loader learns from the kernel's BTF.
pub struct KernelBtf {
    pub offsets: KernelOffsets,
    /// The verifier warns when a kprobe or tracepoint program uses a map allocated at run
    /// time: before 6.1, which brought the BPF memory allocator (`struct bpf_mem_alloc`) and
    /// dropped that warning with it.
    pub warns_on_runtime_allocated_maps: bool,
}

/// Reads the kernel's BTF once; see `struct_offsets_from_file`.
pub fn read(path: &Path) -> Result<KernelBtf, AttachError> {
    let btf = Btf::from_file_with_backend(path, Backend::Mmap)
        .or_else(|_| Btf::from_file(path))
        .map_err(|source| AttachError::Btf {
            path: path.display().to_string(),
            source,
        })?;
    Ok(KernelBtf {
        offsets: struct_offsets(&btf)?,
        warns_on_runtime_allocated_maps: !has_struct(&btf, "bpf_mem_alloc"),
    })
}

fn has_struct(btf: &Btf, name: &str) -> bool {
    btf.resolve_types_by_name(name)
        .unwrap_or_default()
        .iter()
        .any(|t| matches!(t, Type::Struct(_)))
}

/// The struct member offsets of `KernelOffsets`; the tracepoint fields (`tp_*`) are left unknown
/// for `KernelLayout::discover` to fill in from tracefs.
pub fn struct_offsets(btf: &Btf) -> Result<KernelOffsets, AttachError> {
    // Reading the arguments back takes `bpf_task_pt_regs` (5.15) and `bpf_get_current_task_btf`
    // (5.11). Without them the offsets stay unknown: the programs then never reach those calls,
    // which the verifier (seeing the frozen global) does not check, and park every bind instead.
    let (regs_arg0, regs_arg1) = syscall_arg_offsets(btf)
        .filter(|_| has_helper(btf, "task_pt_regs") && has_helper(btf, "get_current_task_btf"))
        .unwrap_or((UNKNOWN_OFFSET, UNKNOWN_OFFSET));
    Ok(KernelOffsets {
        sock_num: member_offset(btf, "sock", &["__sk_common", "skc_num"])?,
        sock_family: member_offset(btf, "sock", &["__sk_common", "skc_family"])?,
        sock_state: member_offset(btf, "sock", &["__sk_common", "skc_state"])?,
        sock_protocol: member_offset(btf, "sock", &["sk_protocol"])?,
        sock_daddr: member_offset(btf, "sock", &["__sk_common", "skc_daddr"])?,
        sock_dport: member_offset(btf, "sock", &["__sk_common", "skc_dport"])?,
        sock_v6_daddr: member_offset(btf, "sock", &["__sk_common", "skc_v6_daddr"])?,
        sock_rcv_saddr: member_offset(btf, "sock", &["__sk_common", "skc_rcv_saddr"])?,
        sock_v6_rcv_saddr: member_offset(btf, "sock", &["__sk_common", "skc_v6_rcv_saddr"])?,
        sock_net: member_offset(btf, "sock", &["__sk_common", "skc_net"])?,
        sock_cookie: member_offset(btf, "sock", &["__sk_common", "skc_cookie"])?,
        sock_err: member_offset(btf, "sock", &["sk_err"])?,
        sock_socket: member_offset(btf, "sock", &["sk_socket"])?,
        sock_sndtimeo: member_offset(btf, "sock", &["sk_sndtimeo"])?,
        socket_state: member_offset(btf, "socket", &["state"])?,
        file_flags: member_offset(btf, "file", &["f_flags"])?,
        inet_sport: member_offset(btf, "inet_sock", &["inet_sport"])?,
        socket_sk: member_offset(btf, "socket", &["sk"])?,
        socket_file: member_offset(btf, "socket", &["file"])?,
        net_ns_inum: member_offset(btf, "net", &["ns", "inum"])?,
        task_real_parent: member_offset(btf, "task_struct", &["real_parent"])?,
        task_tgid: member_offset(btf, "task_struct", &["tgid"])?,
        task_mm: member_offset(btf, "task_struct", &["mm"])?,
        task_comm: member_offset(btf, "task_struct", &["comm"])?,
        task_files: member_offset(btf, "task_struct", &["files"])?,
        mm_arg_start: member_offset(btf, "mm_struct", &["arg_start"])?,
        mm_arg_end: member_offset(btf, "mm_struct", &["arg_end"])?,
        files_fdt: member_offset(btf, "files_struct", &["fdt"])?,
        fdtable_max_fds: member_offset(btf, "fdtable", &["max_fds"])?,
        fdtable_fd: member_offset(btf, "fdtable", &["fd"])?,
        file_private_data: member_offset(btf, "file", &["private_data"])?,
        task_pid: member_offset(btf, "task_struct", &["pid"])?,
        task_cred: member_offset(btf, "task_struct", &["cred"])?,
        cred_uid: member_offset(btf, "cred", &["uid"])?,
        cred_gid: member_offset(btf, "cred", &["gid"])?,
        task_cgroups: member_offset(btf, "task_struct", &["cgroups"])?,
        css_set_dfl_cgrp: member_offset(btf, "css_set", &["dfl_cgrp"])?,
        cgroup_kn: member_offset(btf, "cgroup", &["kn"])?,
        kernfs_node_id: member_offset(btf, "kernfs_node", &["id"])?,
        regs_arg0,
        regs_arg1,
        ..KernelOffsets::UNKNOWN
    })
}

/// Whether the kernel has the BPF helper `name`: `BPF_FUNC_<name>` in its `enum bpf_func_id`.
pub fn has_helper(btf: &Btf, name: &str) -> bool {
    let want = format!("BPF_FUNC_{name}");
    btf.resolve_types_by_name("bpf_func_id")
        .unwrap_or_default()
        .iter()
        .any(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .any(|m| btf.resolve_name(m).is_ok_and(|n| n == want)),
            _ => false,
        })
}

/// Offsets in `struct pt_regs` of a syscall's first two arguments as they stand at its exit.
/// x86_64 keeps them in `di` and `si`; arm64 overwrites x0 with the return value and keeps the
/// first argument in `orig_x0`.
fn syscall_arg_offsets(btf: &Btf) -> Option<(u32, u32)> {
    if cfg!(target_arch = "x86_64") {
        Some((
            member_offset(btf, "pt_regs", &["di"]).ok()?,
            member_offset(btf, "pt_regs", &["si"]).ok()?,
        ))
    } else if cfg!(target_arch = "aarch64") {
        Some((
            member_offset(btf, "pt_regs", &["orig_x0"]).ok()?,
            member_offset(btf, "pt_regs", &["regs"]).ok()? + 8,
        ))
    } else {
        None
    }
}

/// Byte offset of `root.path[0].path[1]...`, looking through anonymous structs and unions the
/// way C does (members of an anonymous member belong to the enclosing struct).
pub fn member_offset(btf: &Btf, root: &str, path: &[&str]) -> Result<u32, AttachError> {
    let missing = || AttachError::BtfMember {
        member: format!("{root}.{}", path.join(".")),
    };
    let mut ty = btf
        .resolve_types_by_name(root)
        .map_err(|_| missing())?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(missing)?;
    let mut total_bits = 0u32;
    for name in path {
        let bits = find_member(btf, &ty, name, 0).ok_or_else(missing)?;
        total_bits += bits.0;
        ty = bits.1;
    }
    if !total_bits.is_multiple_of(8) {
        return Err(missing());
    }
    Ok(total_bits / 8)
}

/// Returns the bit offset of `name` inside `ty` and the member's own (typedef-resolved) type.
fn find_member(btf: &Btf, ty: &Type, name: &str, depth: u32) -> Option<(u32, Type)> {
    if depth > 8 {
        return None;
    }
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return None,
    };
    for m in members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        let mty = resolve_aggregate(btf, btf.resolve_chained_type(m).ok()?);
        if mname == name {
            return Some((m.bit_offset(), mty));
        }
        if mname.is_empty()
            && let Some((inner, t)) = find_member(btf, &mty, name, depth + 1)
        {
            return Some((m.bit_offset() + inner, t));
        }
    }
    None
}

/// Follows typedefs and qualifiers down to the underlying type.
fn resolve_aggregate(btf: &Btf, mut ty: Type) -> Type {
    for _ in 0..16 {
        let next = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t).ok(),
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                btf.resolve_chained_type(t).ok()
            }
            Type::TypeTag(t) => btf.resolve_chained_type(t).ok(),
            _ => None,
        };
        match next {
            Some(n) => ty = n,
            None => break,
        }
    }
    ty
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the running kernel's BTF: every offset the programs need must resolve.
    #[test]
    fn running_kernel_offsets_resolve() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            panic!("{VMLINUX_BTF} is missing: portwatch needs a kernel with CONFIG_DEBUG_INFO_BTF");
        }
        let offs = struct_offsets_from_file(path).expect("offsets");
        // skc_num follows skc_dport inside the port pair: they are two bytes apart.
        assert!(offs.sock_num > 0);
        assert_ne!(offs.sock_rcv_saddr, offs.sock_v6_rcv_saddr);
        assert!(offs.task_comm > 0);
        #[cfg(target_arch = "x86_64")]
        assert_ne!(
            offs.regs_arg0, UNKNOWN_OFFSET,
            "pt_regs.di must resolve on x86_64"
        );
    }

    #[test]
    fn tracepoint_fields_are_left_unknown_and_the_default_is_all_unknown() {
        let offs = struct_offsets_from_file(Path::new(VMLINUX_BTF)).expect("offsets");
        assert_eq!(offs.tp_listen_fd, UNKNOWN_OFFSET);
        assert_eq!(offs.tp_fork_child_pid, UNKNOWN_OFFSET);
        let unknown = KernelOffsets::UNKNOWN;
        assert_eq!(
            (unknown.sock_num, unknown.tp_fork_child_pid),
            (UNKNOWN_OFFSET, UNKNOWN_OFFSET)
        );
    }

    /// This kernel (6.18) has both helpers the argument read-back needs, and no made-up one.
    #[test]
    fn helpers_are_found_by_name_in_the_kernels_enum() {
        let btf = Btf::from_file(VMLINUX_BTF).expect("btf");
        assert!(has_helper(&btf, "task_pt_regs"));
        assert!(has_helper(&btf, "get_current_task_btf"));
        assert!(has_helper(&btf, "map_lookup_elem"));
        assert!(!has_helper(&btf, "no_such_helper"));
        assert!(!has_helper(&btf, "task_pt_reg"));
        // 6.18 has the BPF memory allocator, so run-time allocated maps draw no warning.
        assert!(
            !read(Path::new(VMLINUX_BTF))
                .expect("btf")
                .warns_on_runtime_allocated_maps
        );
    }

    #[test]
    fn unknown_member_is_an_error_naming_it() {
        let btf = Btf::from_file(VMLINUX_BTF).expect("btf");
        let err = member_offset(&btf, "sock", &["__sk_common", "no_such_member"]).unwrap_err();
        assert!(
            err.to_string().contains("sock.__sk_common.no_such_member"),
            "{err}"
        );
    }
}
