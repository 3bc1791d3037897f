//! Our XDP filter program (bpf/xsock_filter.bpf.c): loaded with libbpf,
//! attached through a bpf_link, configured at run time through its maps.
//!
//! Attaching through a bpf_link (BPF_LINK_CREATE) rather than netlink ties
//! the attachment to a file descriptor: when the last descriptor closes —
//! the process exits, even by `kill -9` — the kernel detaches the program.
//! Nothing is left on the interface.
//!
//! One filter per (network namespace, interface) per process, shared by all
//! the AF_XDP sockets of that interface: the XSK map is indexed by queue id.

use std::{
    ffi::{CStr, c_char, c_int},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{Arc, Mutex, Weak},
};

use libbpf_sys as bpf;

use crate::{error::NicError, sys};

/// The compiled program, built by build.rs from bpf/xsock_filter.bpf.c.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xsock_filter.bpf.o"));

/// Size of the XSK map; keep in step with XSOCK_MAX_QUEUES in the C source.
pub const MAX_QUEUES: u32 = 64;

/// Key of the IPv4 rule map; layout matches `struct ipv4_rule_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ipv4RuleKey {
    daddr_be: u32,
    dport_be: u16,
    proto: u8,
    pad: u8,
}

/// An IPv4 traffic class the filter steers to xsock instead of the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Rule {
    /// Destination address (ours).
    pub addr: std::net::Ipv4Addr,
    /// IP protocol number (6 = TCP, 17 = UDP).
    pub proto: u8,
    /// Destination port; 0 matches any port.
    pub port: u16,
}

impl Ipv4Rule {
    fn key(&self) -> Ipv4RuleKey {
        Ipv4RuleKey {
            daddr_be: u32::from_ne_bytes(self.addr.octets()),
            dport_be: self.port.to_be(),
            proto: self.proto,
            pad: 0,
        }
    }
}

/// Where the XDP program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Native (driver) mode where the driver has it, else generic — except
    /// on a single-queue veth, where generic is faster (see
    /// [`XdpMode::Generic`]).
    #[default]
    Auto,
    /// In the driver (fails where unsupported).
    Native,
    /// Generic (skb) mode, after the driver has built an skb. On a real NIC
    /// much slower than native; on veth, whose native mode copies every
    /// skb into a fresh page to make XDP headroom, faster (measured:
    /// ~1 µs less per round trip, ~10-25% more frames per second). On veth
    /// it sees every frame on rx queue 0, so it cannot steer by queue.
    Generic,
}

/// Frames the filter has redirected to sockets and passed to the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilterCounters {
    /// Frames matched as ours (redirected, or passed if no socket was bound).
    pub matched: u64,
    /// Frames passed to the kernel as not ours.
    pub passed: u64,
}

/// The filter program, attached to one interface.
#[derive(Debug)]
pub struct XdpFilter {
    iface: String,
    ifindex: u32,
    native: bool,
    frags: Mutex<bool>,
    // Field order matters for Drop: the link goes first (detaching the
    // program), then the object (closing program and map fds).
    link: OwnedFd,
    object: LoadedObject,
}

#[derive(Debug)]
struct LoadedObject {
    ptr: *mut bpf::bpf_object,
    prog_single: RawFd,
    prog_frags: RawFd,
    xsks: RawFd,
    ethertypes: RawFd,
    rules: RawFd,
    counters: RawFd,
}

// SAFETY: after loading, the object is only read through its fds (syscalls,
// which are thread-safe) and closed once, in Drop, which has `&mut self`.
unsafe impl Send for LoadedObject {}
// SAFETY: as above; no method mutates libbpf state through a shared reference.
unsafe impl Sync for LoadedObject {}

impl Drop for LoadedObject {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from bpf_object__open_mem, was loaded, and is
        // closed exactly once, here.
        unsafe { bpf::bpf_object__close(self.ptr) };
    }
}

type RegistryKey = (u64, u64, u32);
static REGISTRY: Mutex<Vec<(RegistryKey, Weak<XdpFilter>)>> = Mutex::new(Vec::new());

impl XdpFilter {
    /// The filter on `iface`, attaching it if this process has not yet.
    /// `frags` asks for the multi-buffer variant (upgrading an attached
    /// single-buffer filter in place through the link).
    pub fn acquire(iface: &str, ifindex: u32, frags: bool, mode: XdpMode) -> Result<Arc<XdpFilter>, NicError> {
        let (dev, ino) = sys::netns_id().map_err(|e| NicError::io("reading /proc/thread-self/ns/net", e))?;
        let key = (dev, ino, ifindex);
        let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        reg.retain(|(_, w)| w.strong_count() > 0);
        if let Some(existing) = reg.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade()) {
            if frags {
                existing.upgrade_to_frags()?;
            }
            return Ok(existing);
        }
        let filter = Arc::new(Self::attach(iface, ifindex, frags, mode)?);
        reg.push((key, Arc::downgrade(&filter)));
        Ok(filter)
    }

    fn attach(iface: &str, ifindex: u32, frags: bool, mode: XdpMode) -> Result<XdpFilter, NicError> {
        let object = load_object()?;
        let prog = if frags { object.prog_frags } else { object.prog_single };
        let (link, native) = attach_link(iface, ifindex, prog, mode)?;
        log::info!(
            "xsock XDP filter attached to {iface} ({} mode{}, bpf_link: detached when this process exits)",
            if native { "native" } else { "generic/skb" },
            if frags { ", multi-buffer" } else { "" }
        );
        Ok(XdpFilter { iface: iface.to_owned(), ifindex, native, frags: Mutex::new(frags), link, object })
    }

    fn upgrade_to_frags(&self) -> Result<(), NicError> {
        let mut frags = self.frags.lock().unwrap_or_else(|p| p.into_inner());
        if *frags {
            return Ok(());
        }
        let opts = bpf::bpf_link_update_opts {
            sz: std::mem::size_of::<bpf::bpf_link_update_opts>() as _,
            ..Default::default()
        };
        // SAFETY: both fds are live (owned by self); opts is a valid,
        // correctly sized struct.
        let rc = unsafe { bpf::bpf_link_update(self.link.as_raw_fd(), self.object.prog_frags, &opts) };
        if rc < 0 {
            return Err(NicError::io(
                format!("switching the XDP filter on {} to its multi-buffer variant", self.iface),
                io::Error::from_raw_os_error(-rc),
            ));
        }
        *frags = true;
        Ok(())
    }

    /// Whether the program runs in native (driver) mode.
    pub fn is_native(&self) -> bool {
        self.native
    }

    /// Interface index the filter is attached to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Directs frames arriving on `queue` to the AF_XDP socket `xsk_fd`.
    pub fn bind_queue(&self, queue: u32, xsk_fd: RawFd) -> Result<(), NicError> {
        let fd = xsk_fd as u32;
        map_update(self.object.xsks, &queue, &fd)
            .map_err(|e| NicError::io(format!("registering queue {queue} of {} in the XSK map", self.iface), e))
    }

    /// Stops directing frames of `queue` to a socket.
    pub fn unbind_queue(&self, queue: u32) {
        let _ = map_delete(self.object.xsks, &queue);
    }

    /// Steers frames of `ethertype` to xsock.
    pub fn add_ethertype(&self, ethertype: u16) -> Result<(), NicError> {
        let key = ethertype.to_be();
        map_update(self.object.ethertypes, &key, &1u8)
            .map_err(|e| NicError::io(format!("adding EtherType {ethertype:#06x} to the filter"), e))
    }

    /// Returns frames of `ethertype` to the kernel.
    pub fn remove_ethertype(&self, ethertype: u16) {
        let _ = map_delete(self.object.ethertypes, &ethertype.to_be());
    }

    /// Steers IPv4 traffic matching `rule` to xsock.
    pub fn add_ipv4_rule(&self, rule: Ipv4Rule) -> Result<(), NicError> {
        map_update(self.object.rules, &rule.key(), &1u8)
            .map_err(|e| NicError::io(format!("adding IPv4 rule {rule:?} to the filter"), e))
    }

    /// Returns IPv4 traffic matching `rule` to the kernel.
    pub fn remove_ipv4_rule(&self, rule: Ipv4Rule) {
        let _ = map_delete(self.object.rules, &rule.key());
    }

    /// Frames matched and passed so far, summed over CPUs.
    pub fn counters(&self) -> FilterCounters {
        // SAFETY: takes no arguments.
        let cpus = unsafe { bpf::libbpf_num_possible_cpus() }.max(1) as usize;
        let read = |slot: u32| -> u64 {
            let mut vals = vec![0u64; cpus];
            // SAFETY: a per-CPU array lookup writes one u64 per possible CPU
            // into `vals`, which has exactly that many.
            let rc = unsafe {
                bpf::bpf_map_lookup_elem(self.object.counters, (&slot as *const u32).cast(), vals.as_mut_ptr().cast())
            };
            if rc < 0 { 0 } else { vals.iter().sum() }
        };
        FilterCounters { matched: read(0), passed: read(1) }
    }
}

fn map_update<K, V>(fd: RawFd, key: &K, value: &V) -> io::Result<()> {
    // SAFETY: key and value point at live values of the map's key and value
    // types (the callers pass the types declared in the C source).
    let rc = unsafe {
        bpf::bpf_map_update_elem(fd, (key as *const K).cast(), (value as *const V).cast(), bpf::BPF_ANY as u64)
    };
    if rc < 0 { Err(io::Error::from_raw_os_error(-rc)) } else { Ok(()) }
}

fn map_delete<K>(fd: RawFd, key: &K) -> io::Result<()> {
    // SAFETY: key points at a live value of the map's key type.
    let rc = unsafe { bpf::bpf_map_delete_elem(fd, (key as *const K).cast()) };
    if rc < 0 { Err(io::Error::from_raw_os_error(-rc)) } else { Ok(()) }
}

/// libbpf prints to stderr by default; xsock reports failures itself (with
/// the verifier log), so libbpf stays quiet unless XSOCK_LIBBPF_LOG is set.
fn quiet_libbpf() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("XSOCK_LIBBPF_LOG").is_none() {
            // SAFETY: a None callback disables libbpf's printing; no pointers.
            unsafe { bpf::libbpf_set_print(None) };
        }
    });
}

fn load_object() -> Result<LoadedObject, NicError> {
    quiet_libbpf();
    let mut log = vec![0u8; 256 * 1024];
    let mut opts = bpf::bpf_object_open_opts {
        sz: std::mem::size_of::<bpf::bpf_object_open_opts>() as _,
        object_name: c"xsock_filter".as_ptr(),
        kernel_log_buf: log.as_mut_ptr().cast::<c_char>(),
        kernel_log_size: log.len() as _,
        ..Default::default()
    };
    opts.kernel_log_level = 0; // the verifier log is requested only on failure

    // SAFETY: OBJECT is a static ELF image; opts is valid and correctly
    // sized; libbpf copies the image.
    let ptr = unsafe { bpf::bpf_object__open_mem(OBJECT.as_ptr().cast(), OBJECT.len() as _, &opts) };
    if ptr.is_null() {
        return Err(NicError::io("parsing the embedded XDP filter object", io::Error::last_os_error()));
    }
    // From here `object` owns ptr and closes it on any early return.
    let mut object =
        LoadedObject { ptr, prog_single: -1, prog_frags: -1, xsks: -1, ethertypes: -1, rules: -1, counters: -1 };
    // SAFETY: ptr is a valid opened object; `log` outlives the call.
    let rc = unsafe { bpf::bpf_object__load(ptr) };
    if rc < 0 {
        let err = io::Error::from_raw_os_error(-rc);
        if matches!(-rc, libc::EPERM | libc::EACCES) {
            return Err(NicError::PermissionDenied {
                what: "loading xsock's XDP filter program",
                missing: vec![sys::Capability::Bpf, sys::Capability::NetAdmin],
            });
        }
        let text = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned();
        let tail: String =
            text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(NicError::io(
            format!("the kernel refused xsock's XDP filter program (verifier log tail:\n{tail}\n)"),
            err,
        ));
    }
    let prog_fd = |name: &CStr| -> Result<RawFd, NicError> {
        // SAFETY: ptr is a loaded object; name is NUL-terminated.
        let prog = unsafe { bpf::bpf_object__find_program_by_name(ptr, name.as_ptr()) };
        let fd = if prog.is_null() {
            -1
        } else {
            // SAFETY: prog is a non-null program of the loaded object.
            unsafe { bpf::bpf_program__fd(prog) }
        };
        if fd < 0 {
            Err(NicError::io(format!("finding program {name:?} in the filter object"), io::Error::other("missing")))
        } else {
            Ok(fd)
        }
    };
    let map_fd = |name: &CStr| -> Result<RawFd, NicError> {
        // SAFETY: ptr is a loaded object; name is NUL-terminated.
        let fd = unsafe { bpf::bpf_object__find_map_fd_by_name(ptr, name.as_ptr()) };
        if fd < 0 {
            Err(NicError::io(format!("finding map {name:?} in the filter object"), io::Error::other("missing")))
        } else {
            Ok(fd)
        }
    };
    object.prog_single = prog_fd(c"xsock_filter")?;
    object.prog_frags = prog_fd(c"xsock_filter_frags")?;
    object.xsks = map_fd(c"xsock_xsks")?;
    object.ethertypes = map_fd(c"xsock_ethertypes")?;
    object.rules = map_fd(c"xsock_ipv4_rules")?;
    object.counters = map_fd(c"xsock_counters")?;
    Ok(object)
}

/// Attaches `prog` to `ifindex` through a bpf_link, native mode first, then
/// generic. Returns the link fd and whether the attachment is native.
fn attach_link(iface: &str, ifindex: u32, prog: RawFd, mode: XdpMode) -> Result<(OwnedFd, bool), NicError> {
    let try_mode = |flags: u32| -> Result<OwnedFd, i32> {
        let opts = bpf::bpf_link_create_opts {
            sz: std::mem::size_of::<bpf::bpf_link_create_opts>() as _,
            flags,
            ..Default::default()
        };
        // SAFETY: prog is a live program fd; opts is valid and correctly sized.
        let fd = unsafe { bpf::bpf_link_create(prog, ifindex as c_int, bpf::BPF_XDP, &opts) };
        if fd < 0 {
            Err(-fd)
        } else {
            // SAFETY: fd was just returned by BPF_LINK_CREATE and is ours alone.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    };
    match mode {
        XdpMode::Generic => {
            return try_mode(bpf::XDP_FLAGS_SKB_MODE).map(|l| (l, false)).map_err(|e| attach_error(iface, ifindex, e));
        }
        XdpMode::Native => {
            return try_mode(bpf::XDP_FLAGS_DRV_MODE).map(|l| (l, true)).map_err(|e| attach_error(iface, ifindex, e));
        }
        XdpMode::Auto => {}
    }
    let single_queue = sys::if_rx_queues(iface).ok().flatten().is_none_or(|q| q == 1);
    if single_queue && sys::if_driver(iface).ok().flatten().as_deref() == Some("veth") {
        // Measured here (perf/RESULTS.md): veth's native mode copies every
        // skb-borne frame into a fresh page to make XDP headroom, and is
        // slower than generic mode for both latency and rate. Generic mode
        // sees every frame on rx queue 0, so only single-queue veths use it.
        log::info!("{iface} is a single-queue veth: using generic XDP, faster there than veth's native mode");
        if let Ok(link) = try_mode(bpf::XDP_FLAGS_SKB_MODE) {
            return Ok((link, false));
        }
    }
    let err = match try_mode(bpf::XDP_FLAGS_DRV_MODE) {
        Ok(link) => return Ok((link, true)),
        Err(e) => e,
    };
    match err {
        libc::EOPNOTSUPP | libc::EINVAL if !occupied(ifindex) => {
            log::warn!("{iface}: the driver has no native XDP; falling back to generic (skb) mode, which is slower");
            match try_mode(bpf::XDP_FLAGS_SKB_MODE) {
                Ok(link) => Ok((link, false)),
                Err(e) => Err(attach_error(iface, ifindex, e)),
            }
        }
        e => Err(attach_error(iface, ifindex, e)),
    }
}

fn occupied(ifindex: u32) -> bool {
    existing_program(ifindex).is_some()
}

/// What to do about a program already on `iface`: a bpf_link held by a
/// process goes only with that process (`ip link set ... xdp off` cannot
/// detach it), so name the process; otherwise detach it.
fn program_fix(iface: &str, ifindex: u32) -> String {
    let owners = sys::xdp_link_owners(ifindex);
    if owners.is_empty() {
        return format!("detach it with `ip link set dev {iface} xdp off`");
    }
    let who: Vec<String> = owners.iter().map(|(pid, cmd)| format!("pid {pid} ({cmd})")).collect();
    let share = if owners.iter().any(|(_, cmd)| cmd.contains("xsock engine")) {
        "that is a host engine: attach to it instead (unset XSOCK_ENGINE=off; RuntimeBuilder::engine(EngineUse::Auto))"
    } else {
        "one process drives an interface; run `xsock engine --iface IFACE` to share it between processes"
    };
    format!(
        "it is held by {}, and goes only when that process exits (`ip link set dev {iface} xdp off` cannot detach \
         a bpf_link); stop it, or share it: {}",
        who.join(", "),
        share.replace("IFACE", iface)
    )
}

fn attach_error(iface: &str, ifindex: u32, errno: i32) -> NicError {
    if let Some(existing) = existing_program(ifindex) {
        return NicError::XdpProgramPresent { iface: iface.to_owned(), existing, fix: program_fix(iface, ifindex) };
    }
    match errno {
        libc::EPERM | libc::EACCES => NicError::PermissionDenied {
            what: "attaching an XDP program",
            missing: vec![sys::Capability::NetAdmin, sys::Capability::Bpf],
        },
        libc::ERANGE => NicError::MtuTooLarge {
            iface: iface.to_owned(),
            mtu: sys::if_mtu(iface).unwrap_or(0),
            frame: 0,
            capacity: 0,
            hint: "the driver refuses a single-buffer XDP program at this MTU (on veth the \
                   peer's MTU counts): enable multi-buffer (--multi-buffer) or lower the MTU"
                .to_owned(),
        },
        libc::EBUSY | libc::EEXIST => NicError::XdpProgramPresent {
            iface: iface.to_owned(),
            existing: "a program or link the kernel did not name".to_owned(),
            fix: program_fix(iface, ifindex),
        },
        e => NicError::io(format!("attaching the XDP filter to {iface}"), io::Error::from_raw_os_error(e)),
    }
}

/// The XDP program attached to `ifindex` in any mode, described as
/// "id N, name NAME", if there is one.
fn existing_program(ifindex: u32) -> Option<String> {
    let mut id: u32 = 0;
    // SAFETY: writes one u32 into `id`.
    let rc = unsafe { bpf::bpf_xdp_query_id(ifindex as c_int, 0, &mut id) };
    if rc < 0 || id == 0 {
        // Several modes at once: ask each.
        for flags in [bpf::XDP_FLAGS_DRV_MODE, bpf::XDP_FLAGS_SKB_MODE] {
            // SAFETY: as above.
            let rc = unsafe { bpf::bpf_xdp_query_id(ifindex as c_int, flags as c_int, &mut id) };
            if rc == 0 && id != 0 {
                break;
            }
        }
    }
    if id == 0 {
        return None;
    }
    // SAFETY: takes an id, returns an fd or negative errno.
    let fd = unsafe { bpf::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return Some(format!("id {id}"));
    }
    // SAFETY: fd was just returned to us and is owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: bpf_prog_info is plain old data; zeroed is valid.
    let mut info: bpf::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<bpf::bpf_prog_info>() as u32;
    // SAFETY: info is a live, writable struct of `len` bytes.
    let rc = unsafe { bpf::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc < 0 {
        return Some(format!("id {id}"));
    }
    // SAFETY: the kernel NUL-terminates the 16-byte name.
    let name = unsafe { CStr::from_ptr(info.name.as_ptr()) }.to_string_lossy().into_owned();
    Some(format!("id {id}, name {name:?}"))
}
