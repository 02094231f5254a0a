//! Load the eBPF object and attach one strategy per hook family, following the attach ladder in
//! DESIGN.md: fentry/fexit, then kprobe/kretprobe, then tracepoint + cgroup. `auto` takes the
//! best rung that loads and attaches for each family; a forced strategy that fails is an error
//! naming the hook and the kernel's reason.
pub mod btf;
mod patch;
pub mod tracefs;

use std::{fmt, fs::File, path::PathBuf};

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, FEntry, FExit, KProbe, Program, ProgramError,
        SockOps, TracePoint,
    },
};
use portwatch_common::{KernelOffsets, globals};
use serde::Serialize;

/// The eBPF object built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portwatch"));

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("reading kernel BTF from {path}: {source}")]
    Btf {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no member {member}; this kernel's layout is not supported")]
    BtfMember { member: String },
    #[error("tracefs: tracefs is not mounted and mounting it at {target} failed: {source}")]
    TracefsMount {
        target: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("tracefs: cannot read {}: {source}", .path.display())]
    TracefsRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tracepoint's format is not what the programs expect.
    #[error("tracefs: {reason}")]
    Tracefs { reason: String },
    #[error("cgroup v2: cannot read /proc/self/mounts: {0}")]
    CgroupMounts(#[source] std::io::Error),
    #[error("cgroup v2: no cgroup2 file system is mounted (see /proc/self/mounts)")]
    NoCgroup2,
    #[error("cgroup v2: cannot open {}: {source}", .path.display())]
    CgroupOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error(transparent)]
    Object(#[from] patch::ObjectError),
    /// The Display text carries the whole chain of `source`, which is where aya puts the kernel's
    /// reason.
    #[error("{strategy} strategy, hook {hook}: {}", error_chain(.source))]
    Hook {
        strategy: Strategy,
        hook: String,
        #[source]
        source: HookError,
    },
    #[error("{strategy} strategy for {family}: {reason}")]
    Unavailable {
        strategy: Strategy,
        family: Family,
        reason: String,
    },
    #[error("no attach strategy worked for {family}: {tried}")]
    Exhausted { family: Family, tried: String },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {0}: {1}")]
    Map(&'static str, #[source] aya::maps::MapError),
}

/// Why one hook could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(String),
    #[error("the kernel exposes no BTF (/sys/kernel/btf/vmlinux)")]
    NoBtf,
    /// ENOTSUPP (524) when attaching a trampoline: the kernel has BTF and loads the program,
    /// but cannot patch a call into the function.
    #[error(
        "this kernel cannot attach fentry/fexit programs to kernel functions (ENOTSUPP): they \
         need BPF trampolines with ftrace direct calls, which x86_64 has since 5.5 and arm64 \
         since 6.4; use the kprobe strategy ({})",
        error_chain(.0)
    )]
    NoTrampoline(ProgramError),
    #[error(transparent)]
    Program(#[from] ProgramError),
}

/// The kernel's ENOTSUPP, which the kernel returns but libc does not name.
const ENOTSUPP: i32 = 524;

/// The first OS error code in `e`'s chain of sources.
fn os_errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(code) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return Some(code);
        }
        cur = err.source();
    }
    None
}

/// A trampoline's attach error, named for what it means when the kernel cannot patch the call.
fn trampoline_error(e: ProgramError) -> HookError {
    if os_errno(&e) == Some(ENOTSUPP) {
        HookError::NoTrampoline(e)
    } else {
        HookError::Program(e)
    }
}

/// One rung of the attach ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Fentry => "fentry",
            Strategy::Kprobe => "kprobe",
            Strategy::Tracepoint => "tracepoint",
        })
    }
}

/// `--attach`: the ladder, or one strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

impl AttachMode {
    fn ladder(self) -> &'static [Strategy] {
        match self {
            AttachMode::Auto => &[Strategy::Fentry, Strategy::Kprobe, Strategy::Tracepoint],
            AttachMode::Fentry => &[Strategy::Fentry],
            AttachMode::Kprobe => &[Strategy::Kprobe],
            AttachMode::Tracepoint => &[Strategy::Tracepoint],
        }
    }
}

/// The hook families of the design card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Bind,
    Listen,
    Connect,
    Release,
    /// exec/fork/exit: only ever tracepoints, whatever `--attach` says.
    Lineage,
    /// `cgroup:sock_ops`, whatever `--attach` says: the end of a non-blocking connect's
    /// handshake, and which sockets were accepted (their release is not reported).
    Handshake,
    /// `cgroup:sendmsg4/6`, whatever `--attach` says: the port a UDP send from an unbound socket
    /// made the kernel pick.
    ImplicitBind,
}

impl Family {
    /// Handshake first: its `sock_ops` program is what the call families' socket hooks rely on.
    const ATTACH_ORDER: [Family; 7] = [
        Family::Handshake,
        Family::Bind,
        Family::Listen,
        Family::Connect,
        Family::Release,
        Family::Lineage,
        Family::ImplicitBind,
    ];

    pub const ALL: [Family; 7] = [
        Family::Bind,
        Family::Listen,
        Family::Connect,
        Family::Release,
        Family::Lineage,
        Family::Handshake,
        Family::ImplicitBind,
    ];

    fn ladder(self, mode: AttachMode) -> &'static [Strategy] {
        match self {
            Family::Lineage | Family::Handshake | Family::ImplicitBind => &[Strategy::Tracepoint],
            _ => mode.ladder(),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Bind => "bind",
            Family::Listen => "listen",
            Family::Connect => "connect",
            Family::Release => "release",
            Family::Lineage => "lineage",
            Family::Handshake => "handshake",
            Family::ImplicitBind => "implicit_bind",
        })
    }
}

/// What one family ended up with, for the `status` event.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyAttachment {
    #[serde(skip)]
    pub family: Family,
    pub strategy: Strategy,
    pub hooks: Vec<String>,
    /// Better strategies that were tried first, with the reason each was passed over.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// For bind, listen and connect: which failed calls the log shows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_calls: Option<FailedCalls>,
}

/// Which failed calls a call family reports (`[kernel] syscall_tracepoints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailedCalls {
    /// Every failure, with its errno.
    All,
    /// A connect's failed handshake (ECONNREFUSED, ETIMEDOUT, ...), not a call that failed
    /// before its SYN (EADDRNOTAVAIL, ENETUNREACH).
    Handshake,
    /// None: a failed bind or listen is not seen.
    None,
}

impl FailedCalls {
    fn of(family: Family, strategy: Strategy, syscall_tracepoints: bool) -> Option<Self> {
        if !matches!(family, Family::Bind | Family::Listen | Family::Connect) {
            return None;
        }
        Some(match (strategy, syscall_tracepoints, family) {
            (Strategy::Tracepoint, false, Family::Connect) => FailedCalls::Handshake,
            (Strategy::Tracepoint, false, _) => FailedCalls::None,
            _ => FailedCalls::All,
        })
    }

    /// The `SOCKET_CALLS` bit of a family the socket hooks report alone.
    fn socket_calls_bit(family: Family) -> u32 {
        match family {
            Family::Bind => portwatch_common::socket_calls::BIND,
            Family::Listen => portwatch_common::socket_calls::LISTEN,
            Family::Connect => portwatch_common::socket_calls::CONNECT,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub strategy: Strategy,
    pub reason: String,
}

/// The loaded object with every program attached. Dropping it detaches everything.
pub struct Attached {
    pub ebpf: Ebpf,
    pub families: Vec<FamilyAttachment>,
    pub ring_buffer_bytes: u32,
}

pub struct AttachOptions {
    pub mode: AttachMode,
    pub ring_buffer_bytes: u32,
    pub tables: crate::ops::config::KernelTables,
}

/// Offsets and paths found once, before anything is loaded.
struct KernelLayout {
    offsets: KernelOffsets,
    cgroup_root: PathBuf,
    /// See `patch`: the per-socket table is preallocated on such kernels.
    warns_on_runtime_allocated_maps: bool,
}

impl KernelLayout {
    /// Struct member offsets from BTF (`btf::struct_offsets`), then the tracepoint fields from
    /// tracefs.
    fn discover() -> Result<Self, AttachError> {
        let kernel_btf = btf::read(std::path::Path::new(btf::VMLINUX_BTF))?;
        let mut offsets = kernel_btf.offsets;
        let tracefs = tracefs::ensure_tracefs()?;
        offsets.tp_listen_fd =
            tracefs::field_offsets(&tracefs, "syscalls", "sys_enter_listen", &[("fd", 8)])?[0];
        let mut ret = None;
        for sys in ["sys_exit_bind", "sys_exit_listen", "sys_exit_connect"] {
            let off = tracefs::field_offsets(&tracefs, "syscalls", sys, &[("ret", 8)])?[0];
            match ret {
                None => ret = Some(off),
                Some(r) if r == off => {}
                Some(r) => {
                    return Err(AttachError::Tracefs {
                        reason: format!("syscalls:{sys} has ret at offset {off}, others at {r}"),
                    });
                }
            }
        }
        offsets.tp_sys_exit_ret = ret.unwrap_or(16);
        offsets.tp_exec_filename =
            tracefs::field_offsets(&tracefs, "sched", "sched_process_exec", &[("filename", 4)])?[0];
        offsets.tp_fork_child_pid =
            tracefs::field_offsets(&tracefs, "sched", "sched_process_fork", &[("child_pid", 4)])?
                [0];
        Ok(Self {
            offsets,
            cgroup_root: cgroup2_mount()?,
            warns_on_runtime_allocated_maps: kernel_btf.warns_on_runtime_allocated_maps,
        })
    }
}

/// Where the unified (v2) cgroup hierarchy is mounted, from /proc/self/mounts.
pub fn cgroup2_mount() -> Result<PathBuf, AttachError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(AttachError::CgroupMounts)?;
    mounts
        .lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            let (_src, dir, fstype) = (parts.next()?, parts.next()?, parts.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .ok_or(AttachError::NoCgroup2)
}

/// Loads the object and walks the ladder for every family.
pub fn attach(opts: &AttachOptions) -> Result<Attached, AttachError> {
    let layout = KernelLayout::discover()?;
    // Wake the reader once a quarter of the ring is queued (it also drains on a timer).
    let wakeup_bytes = opts.ring_buffer_bytes / 4;
    // `EbpfLoader::new` parses the kernel's BTF for CO-RE relocations, which these programs do
    // not use (kernel offsets reach them in a global). Dropping that copy at once, before the one
    // fentry/fexit attach by is parsed below, keeps the two (~20 MB each) from being in memory
    // together: that was the daemon's start-up peak (docs/benchmarks.md).
    let mut loader = EbpfLoader::new();
    loader
        .btf(None)
        .override_global(globals::WAKEUP_BYTES, &wakeup_bytes, true)
        .override_global(globals::KERNEL_OFFSETS, &layout.offsets, true)
        .map_max_entries("EVENTS", opts.ring_buffer_bytes)
        .map_max_entries("PENDING", opts.tables.pending_entries)
        .map_max_entries("SOCKETS", opts.tables.socket_entries);
    let patched;
    let object_bytes = if layout.warns_on_runtime_allocated_maps {
        patched = patch::preallocate(EBPF_OBJECT, "SOCKETS")?;
        tracing::info!(
            entries = opts.tables.socket_entries,
            "this kernel (before 6.1) warns when tracing programs use run-time allocated maps: \
             the per-socket table is preallocated"
        );
        &patched[..]
    } else {
        EBPF_OBJECT
    };
    let mut ebpf = loader.load(object_bytes).map_err(AttachError::Load)?;
    // The loader's copy is freed; hand it back before the next one is parsed.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    let btf = opts
        .mode
        .ladder()
        .contains(&Strategy::Fentry)
        .then(|| Btf::from_sys_fs().ok())
        .flatten();
    let cgroup = File::open(&layout.cgroup_root).map_err(|source| AttachError::CgroupOpen {
        path: layout.cgroup_root.clone(),
        source,
    })?;

    // Only the tracepoint strategy can use it: a forced fentry or kprobe never loads it.
    let socket_calls = !opts.tables.syscall_tracepoints
        && opts.mode.ladder().contains(&Strategy::Tracepoint)
        && sock_ops_calls_load(&mut ebpf);
    // With `SOCKET_CALLS` at 0 the calls variant does what the plain one does: it goes in first,
    // so that it is there before any call family relies on it.
    let choice = HookChoice {
        syscall_tracepoints: !socket_calls,
        sock_ops: if socket_calls {
            "portwatch_sock_ops_calls"
        } else {
            "portwatch_sock_ops"
        },
    };
    let mut calls_bits = 0;
    let mut families: Vec<FamilyAttachment> = Vec::new();
    for family in Family::ATTACH_ORDER {
        let mut skipped = Vec::new();
        let mut attached = None;
        for &strategy in family.ladder(opts.mode) {
            // A call family's socket hooks are told to report its calls before they go in: no
            // call in between is missed, or parked for a syscall return that never comes.
            let bit = if socket_calls && strategy == Strategy::Tracepoint {
                FailedCalls::socket_calls_bit(family)
            } else {
                0
            };
            if bit != 0 {
                set_socket_calls(&mut ebpf, calls_bits | bit)?;
            }
            match attach_family(&mut ebpf, &cgroup, btf.as_ref(), family, strategy, choice) {
                Ok(hooks) => {
                    calls_bits |= bit;
                    attached = Some(FamilyAttachment {
                        family,
                        strategy,
                        hooks,
                        skipped: std::mem::take(&mut skipped),
                        failed_calls: FailedCalls::of(family, strategy, !socket_calls),
                    });
                    break;
                }
                Err(e) if family.ladder(opts.mode).len() == 1 => return Err(e),
                Err(e) => {
                    if bit != 0 {
                        set_socket_calls(&mut ebpf, calls_bits)?;
                    }
                    tracing::info!(%family, %strategy, reason = %e, "attach strategy passed over");
                    skipped.push(Skipped {
                        strategy,
                        reason: e.to_string(),
                    });
                }
            }
        }
        match attached {
            Some(a) => families.push(a),
            None => {
                let tried = skipped
                    .iter()
                    .map(|s| format!("{}: {}", s.strategy, s.reason))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(AttachError::Exhausted { family, tried });
            }
        }
    }
    Ok(Attached {
        ebpf,
        families,
        ring_buffer_bytes: opts.ring_buffer_bytes,
    })
}

/// Whether `portwatch_sock_ops_calls` loads: the socket hooks can report calls only where a
/// `sock_ops` program may read the current task. Where it cannot, the syscall tracepoints stay,
/// and the log says so.
fn sock_ops_calls_load(ebpf: &mut Ebpf) -> bool {
    const NAME: &str = "portwatch_sock_ops_calls";
    let loaded = match ebpf.program_mut(NAME) {
        Some(Program::SockOps(p)) => load_once(p.load()).map_err(|e| error_chain(&e)),
        _ => Err(format!("program {NAME} is missing from the eBPF object")),
    };
    match loaded {
        Ok(()) => true,
        Err(reason) => {
            tracing::warn!(
                %reason,
                "[kernel] syscall_tracepoints = false needs a kernel whose sock_ops programs may \
                 read the current task; this one refuses it, so the syscall tracepoints stay, \
                 and they slow every syscall on the host"
            );
            false
        }
    }
}

/// Tells the programs which families the socket hooks report on their own (`socket_calls::*`
/// bits): those on the tracepoint strategy without its syscall tracepoints.
fn set_socket_calls(ebpf: &mut Ebpf, bits: u32) -> Result<(), AttachError> {
    let map = ebpf
        .map_mut("SOCKET_CALLS")
        .ok_or(AttachError::MissingMap("SOCKET_CALLS"))?;
    let mut array: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(map).map_err(|e| AttachError::Map("SOCKET_CALLS", e))?;
    array
        .set(0, bits, 0)
        .map_err(|e| AttachError::Map("SOCKET_CALLS", e))
}

/// A program and where it goes.
enum Hook {
    CgroupSock(&'static str),
    CgroupSockAddr(&'static str),
    SockOps(&'static str),
    TracePoint(&'static str, &'static str, &'static str),
    KProbe(&'static str, &'static str),
    KRetProbe(&'static str, &'static str),
    FEntry(&'static str, &'static str),
    FExit(&'static str, &'static str),
}

impl Hook {
    fn program(&self) -> &'static str {
        match *self {
            Hook::CgroupSock(p)
            | Hook::CgroupSockAddr(p)
            | Hook::SockOps(p)
            | Hook::TracePoint(p, ..) => p,
            Hook::KProbe(p, _) | Hook::KRetProbe(p, _) | Hook::FEntry(p, _) | Hook::FExit(p, _) => {
                p
            }
        }
    }

    fn is_syscall_tracepoint(&self) -> bool {
        matches!(self, Hook::TracePoint(_, "syscalls", _))
    }

    fn label(&self) -> String {
        match self {
            Hook::CgroupSock(p) | Hook::CgroupSockAddr(p) | Hook::SockOps(p) => {
                format!("cgroup:{}", p.trim_start_matches("portwatch_"))
            }
            Hook::TracePoint(_, cat, name) => format!("tracepoint:{cat}:{name}"),
            Hook::KProbe(_, f) => format!("kprobe:{f}"),
            Hook::KRetProbe(_, f) => format!("kretprobe:{f}"),
            Hook::FEntry(_, f) => format!("fentry:{f}"),
            Hook::FExit(_, f) => format!("fexit:{f}"),
        }
    }
}

/// What the tracepoint strategy's hooks depend on beyond the family.
#[derive(Clone, Copy)]
struct HookChoice {
    /// Whether bind, listen and connect take their syscall tracepoints.
    syscall_tracepoints: bool,
    /// The Handshake family's program.
    sock_ops: &'static str,
}

fn tracepoint_hooks(family: Family, choice: HookChoice) -> Vec<Hook> {
    let mut hooks = match family {
        Family::Bind => vec![
            Hook::CgroupSock("portwatch_post_bind4"),
            Hook::CgroupSock("portwatch_post_bind6"),
            Hook::CgroupSockAddr("portwatch_bind4"),
            Hook::CgroupSockAddr("portwatch_bind6"),
            Hook::TracePoint("portwatch_sys_exit_bind", "syscalls", "sys_exit_bind"),
        ],
        Family::Listen => vec![
            Hook::TracePoint("portwatch_sys_enter_listen", "syscalls", "sys_enter_listen"),
            Hook::TracePoint("portwatch_sys_exit_listen", "syscalls", "sys_exit_listen"),
        ],
        Family::Connect => vec![
            Hook::TracePoint(
                "portwatch_sys_enter_connect",
                "syscalls",
                "sys_enter_connect",
            ),
            Hook::CgroupSockAddr("portwatch_connect4"),
            Hook::CgroupSockAddr("portwatch_connect6"),
            Hook::TracePoint("portwatch_sys_exit_connect", "syscalls", "sys_exit_connect"),
        ],
        Family::Release => vec![Hook::CgroupSock("portwatch_sock_release")],
        Family::Handshake => vec![Hook::SockOps(choice.sock_ops)],
        Family::Lineage | Family::ImplicitBind => fixed_hooks(family),
    };
    hooks.retain(|h| choice.syscall_tracepoints || !h.is_syscall_tracepoint());
    hooks
}

/// The families that take the same hooks whatever the strategy.
fn fixed_hooks(family: Family) -> Vec<Hook> {
    match family {
        Family::Handshake => vec![Hook::SockOps("portwatch_sock_ops")],
        Family::ImplicitBind => vec![
            Hook::CgroupSockAddr("portwatch_sendmsg4"),
            Hook::CgroupSockAddr("portwatch_sendmsg6"),
        ],
        _ => lineage_hooks(),
    }
}

fn lineage_hooks() -> Vec<Hook> {
    vec![
        Hook::TracePoint("portwatch_sched_exec", "sched", "sched_process_exec"),
        Hook::TracePoint("portwatch_sched_fork", "sched", "sched_process_fork"),
        Hook::TracePoint("portwatch_sched_exit", "sched", "sched_process_exit"),
    ]
}

/// The socket-layer functions. Connect hooks `inet_stream_connect`/`inet_dgram_connect` rather
/// than `tcp_connect`: only the socket layer sees UDP connects and the errno of a refused one.
fn kprobe_hooks(family: Family) -> Vec<Hook> {
    match family {
        Family::Bind => vec![
            Hook::KProbe("portwatch_kprobe_inet_bind", "inet_bind"),
            Hook::KRetProbe("portwatch_kretprobe_bind", "inet_bind"),
            Hook::KProbe("portwatch_kprobe_inet6_bind", "inet6_bind"),
            Hook::KRetProbe("portwatch_kretprobe_bind", "inet6_bind"),
        ],
        Family::Listen => vec![
            Hook::KProbe("portwatch_kprobe_inet_listen", "inet_listen"),
            Hook::KRetProbe("portwatch_kretprobe_inet_listen", "inet_listen"),
        ],
        Family::Connect => vec![
            Hook::KProbe(
                "portwatch_kprobe_inet_stream_connect",
                "inet_stream_connect",
            ),
            Hook::KRetProbe("portwatch_kretprobe_connect", "inet_stream_connect"),
            Hook::KProbe("portwatch_kprobe_inet_dgram_connect", "inet_dgram_connect"),
            Hook::KRetProbe("portwatch_kretprobe_connect", "inet_dgram_connect"),
        ],
        Family::Release => vec![Hook::KProbe(
            "portwatch_kprobe_inet_release",
            "inet_release",
        )],
        Family::Lineage | Family::Handshake | Family::ImplicitBind => fixed_hooks(family),
    }
}

fn fentry_hooks(family: Family) -> Vec<Hook> {
    match family {
        Family::Bind => vec![
            Hook::FExit("portwatch_fexit_inet_bind", "inet_bind"),
            Hook::FExit("portwatch_fexit_inet6_bind", "inet6_bind"),
        ],
        Family::Listen => vec![
            Hook::FEntry("portwatch_fentry_inet_listen", "inet_listen"),
            Hook::FExit("portwatch_fexit_inet_listen", "inet_listen"),
        ],
        Family::Connect => vec![
            Hook::FEntry(
                "portwatch_fentry_inet_stream_connect",
                "inet_stream_connect",
            ),
            Hook::FExit("portwatch_fexit_inet_stream_connect", "inet_stream_connect"),
            Hook::FExit("portwatch_fexit_inet_dgram_connect", "inet_dgram_connect"),
        ],
        Family::Release => vec![Hook::FEntry(
            "portwatch_fentry_inet_release",
            "inet_release",
        )],
        Family::Lineage | Family::Handshake | Family::ImplicitBind => fixed_hooks(family),
    }
}

/// Attaches every hook of one family with one strategy. If any hook fails, the ones already
/// attached are removed again, so the next strategy does not produce doubled events.
fn attach_family(
    ebpf: &mut Ebpf,
    cgroup: &File,
    btf: Option<&Btf>,
    family: Family,
    strategy: Strategy,
    choice: HookChoice,
) -> Result<Vec<String>, AttachError> {
    let hooks = match strategy {
        Strategy::Tracepoint => tracepoint_hooks(family, choice),
        Strategy::Kprobe => kprobe_hooks(family),
        Strategy::Fentry => fentry_hooks(family),
    };
    let mut labels = Vec::with_capacity(hooks.len() + 1);
    if strategy == Strategy::Tracepoint
        && !choice.syscall_tracepoints
        && matches!(family, Family::Listen | Family::Connect)
    {
        // Reported by the Handshake family's program, attached after this one.
        labels.push("cgroup:sock_ops_calls".to_string());
    }
    for hook in &hooks {
        if let Err(e) = attach_hook(ebpf, cgroup, btf, hook, strategy) {
            for h in &hooks {
                unload(ebpf, h.program());
            }
            return Err(e);
        }
        labels.push(hook.label());
    }
    Ok(labels)
}

/// Loads a program unless an earlier hook of the same family already did.
fn load_once(r: Result<(), ProgramError>) -> Result<(), ProgramError> {
    match r {
        Err(ProgramError::AlreadyLoaded) => Ok(()),
        other => other,
    }
}

fn attach_hook(
    ebpf: &mut Ebpf,
    cgroup: &File,
    btf: Option<&Btf>,
    hook: &Hook,
    strategy: Strategy,
) -> Result<(), AttachError> {
    let label = hook.label();
    let fail = |source: HookError| AttachError::Hook {
        strategy,
        hook: label.clone(),
        source,
    };
    let chain = |e: ProgramError| fail(e.into());
    match *hook {
        // Attached as bpf_links, which always coexist with other programs on the cgroup
        // (including another portwatch); link creation rejects any mode flag but 0 (Single).
        Hook::CgroupSock(name) => {
            let prog: &mut CgroupSock = program(ebpf, name, &fail)?;
            load_once(prog.load()).map_err(chain)?;
            prog.attach(cgroup, CgroupAttachMode::Single)
                .map_err(chain)?;
        }
        Hook::CgroupSockAddr(name) => {
            let prog: &mut CgroupSockAddr = program(ebpf, name, &fail)?;
            load_once(prog.load()).map_err(chain)?;
            prog.attach(cgroup, CgroupAttachMode::Single)
                .map_err(chain)?;
        }
        Hook::SockOps(name) => {
            let prog: &mut SockOps = program(ebpf, name, &fail)?;
            load_once(prog.load()).map_err(chain)?;
            prog.attach(cgroup, CgroupAttachMode::Single)
                .map_err(chain)?;
        }
        Hook::TracePoint(name, category, tp) => {
            let prog: &mut TracePoint = program(ebpf, name, &fail)?;
            load_once(prog.load()).map_err(chain)?;
            prog.attach(category, tp).map_err(chain)?;
        }
        Hook::KProbe(name, function) | Hook::KRetProbe(name, function) => {
            let prog: &mut KProbe = program(ebpf, name, &fail)?;
            load_once(prog.load()).map_err(chain)?;
            prog.attach(function, 0).map_err(chain)?;
        }
        Hook::FEntry(name, function) => {
            let btf = btf.ok_or_else(|| fail(HookError::NoBtf))?;
            let prog: &mut FEntry = program(ebpf, name, &fail)?;
            load_once(prog.load(function, btf)).map_err(chain)?;
            prog.attach().map_err(|e| fail(trampoline_error(e)))?;
        }
        Hook::FExit(name, function) => {
            let btf = btf.ok_or_else(|| fail(HookError::NoBtf))?;
            let prog: &mut FExit = program(ebpf, name, &fail)?;
            load_once(prog.load(function, btf)).map_err(chain)?;
            prog.attach().map_err(|e| fail(trampoline_error(e)))?;
        }
    }
    Ok(())
}

/// Detaches and unloads a program (a no-op if it was never loaded).
fn unload(ebpf: &mut Ebpf, name: &str) {
    let r = match ebpf.program_mut(name) {
        Some(Program::CgroupSock(p)) => p.unload(),
        Some(Program::CgroupSockAddr(p)) => p.unload(),
        Some(Program::SockOps(p)) => p.unload(),
        Some(Program::TracePoint(p)) => p.unload(),
        Some(Program::KProbe(p)) => p.unload(),
        Some(Program::FEntry(p)) => p.unload(),
        Some(Program::FExit(p)) => p.unload(),
        _ => Ok(()),
    };
    if let Err(e) = r
        && !matches!(e, ProgramError::NotLoaded)
    {
        tracing::warn!(program = name, error = %error_chain(&e), "unloading after a failed attach");
    }
}

fn program<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &str,
    fail: &dyn Fn(HookError) -> AttachError,
) -> Result<&'a mut P, AttachError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| fail(HookError::MissingProgram(name.to_string())))?;
    prog.try_into()
        .map_err(|e: aya::programs::ProgramError| fail(e.into()))
}

/// The error and its causes on one line (aya puts the kernel's reason in the source chain).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn eperm() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EPERM)
    }

    /// arm64 before 6.4 loads fexit programs but refuses to attach them with ENOTSUPP: the error
    /// says why and what to use instead; other errors pass through unchanged.
    #[test]
    fn a_trampoline_the_kernel_cannot_attach_is_named() {
        let attach_error = |code| {
            ProgramError::from(aya::sys::SyscallError {
                call: "bpf_raw_tracepoint_open",
                io_error: std::io::Error::from_raw_os_error(code),
            })
        };
        let e = AttachError::Hook {
            strategy: Strategy::Fentry,
            hook: "fexit:inet_bind".into(),
            source: trampoline_error(attach_error(ENOTSUPP)),
        }
        .to_string();
        assert!(
            e.starts_with(
                "fentry strategy, hook fexit:inet_bind: this kernel cannot attach fentry/fexit"
            ),
            "{e}"
        );
        assert!(
            e.contains("arm64 since 6.4; use the kprobe strategy"),
            "{e}"
        );
        assert!(e.contains("(os error 524)"), "{e}");
        assert!(matches!(
            trampoline_error(attach_error(libc::EPERM)),
            HookError::Program(_)
        ));
    }

    #[test]
    fn hook_errors_keep_their_cause_and_say_the_whole_chain() {
        let e = AttachError::Hook {
            strategy: Strategy::Fentry,
            hook: "fexit:inet_bind".into(),
            source: ProgramError::from(aya::sys::SyscallError {
                call: "bpf_link_create",
                io_error: eperm(),
            })
            .into(),
        };
        assert_eq!(
            e.to_string(),
            "fentry strategy, hook fexit:inet_bind: `bpf_link_create` failed: \
             Operation not permitted (os error 1)"
        );
        let cause = e.source().expect("a source");
        assert!(
            cause
                .source()
                .and_then(|c| c.downcast_ref::<std::io::Error>())
                .is_some()
        );
        let e = AttachError::Hook {
            strategy: Strategy::Tracepoint,
            hook: "cgroup:post_bind4".into(),
            source: HookError::MissingProgram("portwatch_post_bind4".into()),
        };
        assert_eq!(
            e.to_string(),
            "tracepoint strategy, hook cgroup:post_bind4: \
             program portwatch_post_bind4 is missing from the eBPF object"
        );
    }

    #[test]
    fn io_errors_keep_their_cause() {
        let e = AttachError::CgroupOpen {
            path: "/sys/fs/cgroup/unified".into(),
            source: eperm(),
        };
        assert_eq!(
            e.to_string(),
            "cgroup v2: cannot open /sys/fs/cgroup/unified: Operation not permitted (os error 1)"
        );
        assert!(e.source().is_some_and(|s| s.is::<std::io::Error>()));
        let e = AttachError::TracefsRead {
            path: "/sys/kernel/tracing/events/x/y/format".into(),
            source: eperm(),
        };
        assert_eq!(
            e.to_string(),
            "tracefs: cannot read /sys/kernel/tracing/events/x/y/format: \
             Operation not permitted (os error 1)"
        );
        assert!(e.source().is_some_and(|s| s.is::<std::io::Error>()));
    }
}
