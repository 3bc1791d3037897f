//! Thin, checked wrappers over the few syscalls nic/ makes directly.
//!
//! Every raw call goes through `syscall!`, which turns the C convention
//! (-1 and `errno`) into `io::Result`. Everything that is not a ring access
//! or a libbpf call lives here, so the `unsafe` surface is easy to audit.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

/// Calls a libc function and maps a -1 return to `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: the caller of the macro upholds the function's contract;
        // every use site below states why its arguments are valid.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// Linux capability numbers (include/uapi/linux/capability.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// CAP_NET_ADMIN: attach XDP programs, configure interfaces.
    NetAdmin = 12,
    /// CAP_NET_RAW: open AF_XDP and AF_PACKET sockets.
    NetRaw = 13,
    /// CAP_IPC_LOCK: pin UMEM pages beyond RLIMIT_MEMLOCK.
    IpcLock = 14,
    /// CAP_SYS_ADMIN: the pre-5.8 umbrella for BPF.
    SysAdmin = 21,
    /// CAP_SYS_RESOURCE: raise RLIMIT_MEMLOCK.
    SysResource = 24,
    /// CAP_BPF: load BPF programs and create maps.
    Bpf = 39,
}

impl Capability {
    /// The name used by setcap(8) and capabilities(7).
    pub fn name(self) -> &'static str {
        match self {
            Capability::NetAdmin => "CAP_NET_ADMIN",
            Capability::NetRaw => "CAP_NET_RAW",
            Capability::IpcLock => "CAP_IPC_LOCK",
            Capability::SysAdmin => "CAP_SYS_ADMIN",
            Capability::SysResource => "CAP_SYS_RESOURCE",
            Capability::Bpf => "CAP_BPF",
        }
    }
}

/// The effective capability set of this thread, from /proc/thread-self/status.
pub fn effective_capabilities() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| io::Error::other("no CapEff line in /proc/thread-self/status"))
}

/// Whether this thread holds `cap` in its effective set.
pub fn has_capability(cap: Capability) -> bool {
    effective_capabilities().is_ok_and(|set| set & (1u64 << cap as u32) != 0)
}

/// Of `needed`, the capabilities this thread lacks. CAP_BPF also counts as
/// held when CAP_SYS_ADMIN is (kernels before 5.8, and the kernel's own
/// fallback check).
pub fn missing_capabilities(needed: &[Capability]) -> Vec<Capability> {
    let set = effective_capabilities().unwrap_or(0);
    let held = |c: Capability| set & (1u64 << c as u32) != 0;
    needed.iter().copied().filter(|&c| !(held(c) || (c == Capability::Bpf && held(Capability::SysAdmin)))).collect()
}

/// The current RLIMIT_MEMLOCK soft limit in bytes (`None` = unlimited).
pub fn memlock_limit() -> io::Result<Option<u64>> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit.
    syscall!(getrlimit(libc::RLIMIT_MEMLOCK, &mut lim))?;
    Ok((lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur))
}

/// Raises RLIMIT_MEMLOCK to at least `bytes` if the hard limit (or
/// CAP_SYS_RESOURCE) allows. Returns the limit now in force.
pub fn raise_memlock(bytes: u64) -> io::Result<Option<u64>> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit.
    syscall!(getrlimit(libc::RLIMIT_MEMLOCK, &mut lim))?;
    if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= bytes {
        return memlock_limit();
    }
    let want = libc::rlimit { rlim_cur: bytes.max(lim.rlim_cur), rlim_max: lim.rlim_max.max(bytes) };
    // SAFETY: `want` is a valid rlimit; failure leaves the limit unchanged.
    let raised = syscall!(setrlimit(libc::RLIMIT_MEMLOCK, &want));
    if raised.is_err() && lim.rlim_max > lim.rlim_cur {
        let soft = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above; raising the soft limit to the hard limit needs no privilege.
        let _ = syscall!(setrlimit(libc::RLIMIT_MEMLOCK, &soft));
    }
    memlock_limit()
}

/// Raises the soft limit of open descriptors to the hard limit (a stream
/// through the host engine is a descriptor, in the client and in the
/// engine: 10,000 streams need 10,000 of them). Returns the limit now.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit.
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
    if lim.rlim_cur < lim.rlim_max {
        let soft = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `soft` is a valid rlimit; raising the soft limit to the
        // hard one needs no privilege, and failure changes nothing.
        if syscall!(setrlimit(libc::RLIMIT_NOFILE, &soft)).is_ok() {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// Readiness reported by [`poll_fds`] for one descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ready {
    /// Readable (POLLIN).
    pub readable: bool,
    /// Writable (POLLOUT).
    pub writable: bool,
    /// Error or hang-up (POLLERR, POLLHUP, POLLNVAL).
    pub error: bool,
}

/// What to wait for on one descriptor in [`poll_fds`].
#[derive(Debug, Clone, Copy)]
pub struct Interest<'fd> {
    /// The descriptor.
    pub fd: BorrowedFd<'fd>,
    /// Wait for readability.
    pub read: bool,
    /// Wait for writability.
    pub write: bool,
}

/// ppoll(2) over `fds`; `None` waits indefinitely. EINTR counts as a
/// timeout. The timeout has nanosecond resolution (plain poll(2) rounds to
/// milliseconds, far too coarse for pacing); how late the wake-up comes is
/// the thread's timer slack (see [`set_timer_slack`]).
/// Returns one [`Ready`] per interest, in order.
pub fn poll_fds(fds: &[Interest<'_>], timeout: Option<Duration>) -> io::Result<Vec<Ready>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|i| libc::pollfd {
            fd: i.fd.as_raw_fd(),
            events: (if i.read { libc::POLLIN } else { 0 }) | (if i.write { libc::POLLOUT } else { 0 }),
            revents: 0,
        })
        .collect();
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs, every
    // fd in it is borrowed for the duration of the call, `ts_ptr` is null or
    // points at a timespec that outlives the call, and a null signal mask
    // leaves the thread's mask as it is.
    match syscall!(ppoll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ts_ptr, std::ptr::null())) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => return Err(e),
    }
    Ok(pfds
        .iter()
        .map(|p| Ready {
            readable: p.revents & libc::POLLIN != 0,
            writable: p.revents & libc::POLLOUT != 0,
            error: p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0,
        })
        .collect())
}

/// Sets how late the kernel may let this thread's timed sleeps end (the
/// default is 50 µs). A pacer that sleeps between bursts of frames needs
/// it small; the cost is a few more timer interrupts.
pub fn set_timer_slack(slack: Duration) -> io::Result<()> {
    let ns = libc::c_ulong::try_from(slack.as_nanos().max(1)).unwrap_or(libc::c_ulong::MAX);
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no
    // memory of ours; the unused arguments are zero as prctl(2) asks.
    syscall!(prctl(libc::PR_SET_TIMERSLACK, ns, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong))?;
    Ok(())
}

/// A non-blocking eventfd: a pollable doorbell one thread rings for another.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new, unsignalled eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers.
        let fd = syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?;
        // SAFETY: `fd` was just returned by eventfd and is owned by no one else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the fd readable until the next [`EventFd::clear`].
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an fd we own. A full
        // counter (EAGAIN) means it is already signalled, which is the goal.
        let _ = syscall!(write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8));
    }

    /// Resets the fd to unreadable.
    pub fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from an fd we own; EAGAIN
        // (not signalled) is fine.
        let _ = syscall!(read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8));
    }

    /// The fd to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }

    /// An eventfd handed over by another process (SCM_RIGHTS or
    /// inheritance). A descriptor that is not an eventfd makes
    /// [`EventFd::signal`] and [`EventFd::clear`] do nothing.
    pub fn from_owned(fd: OwnedFd) -> Self {
        Self(fd)
    }
}

/// An epoll instance (level-triggered): a set of descriptors to wait on,
/// each tagged with the caller's token, and itself a pollable descriptor
/// (readable when one of them is ready), so it nests in another event loop.
#[derive(Debug)]
pub struct Epoll(OwnedFd);

/// One readiness report of [`Epoll::wait`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpollReady {
    /// The token the descriptor was added with.
    pub token: u64,
    /// What it is ready for.
    pub ready: Ready,
}

impl Epoll {
    /// A new, empty epoll set (close-on-exec).
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by no one else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: i32, fd: RawFd, token: u64, read: bool, write: bool) -> io::Result<()> {
        let events =
            (if read { libc::EPOLLIN | libc::EPOLLRDHUP } else { 0 }) | (if write { libc::EPOLLOUT } else { 0 });
        let mut ev = libc::epoll_event { events: events as u32, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call;
        // the kernel checks `fd` (a closed or foreign fd is an error, not UB).
        syscall!(epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev))?;
        Ok(())
    }

    /// Adds `fd` with `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64, read: bool, write: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd.as_raw_fd(), token, read, write)
    }

    /// Adds descriptor number `fd` (the kernel checks it: a closed one is
    /// an error; the caller keeps it open while it is in the set).
    pub fn add_raw(&self, fd: RawFd, token: u64, read: bool, write: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, read, write)
    }

    /// Changes what descriptor number `fd` is watched for.
    pub fn modify_raw(&self, fd: RawFd, token: u64, read: bool, write: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, read, write)
    }

    /// Removes `fd` (by number: a descriptor already closed is gone from
    /// the set anyway, and that error is ignored).
    pub fn delete(&self, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, false, false);
    }

    /// Waits up to `timeout` (`None`: indefinitely; zero: a look) and fills
    /// `out` with what is ready. EINTR counts as a timeout. Millisecond
    /// resolution (a zero timeout is exact).
    pub fn wait(&self, out: &mut Vec<EpollReady>, timeout: Option<Duration>) -> io::Result<()> {
        out.clear();
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
        let ms = match timeout {
            None => -1,
            Some(d) if d.is_zero() => 0,
            Some(d) => i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
        };
        // SAFETY: `evs` is a valid array of 64 epoll_event structs.
        let n = match syscall!(epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), evs.len() as i32, ms)) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        for e in &evs[..n] {
            let f = e.events as i32;
            out.push(EpollReady {
                token: e.u64,
                ready: Ready {
                    readable: f & libc::EPOLLIN != 0,
                    writable: f & libc::EPOLLOUT != 0,
                    error: f & (libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLRDHUP) != 0,
                },
            });
        }
        Ok(())
    }

    /// The epoll descriptor itself (readable when something in the set is).
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }
}

/// An AF_INET datagram socket, only for interface ioctls in this thread's
/// network namespace.
fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let fd = syscall!(socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0))?;
    // SAFETY: `fd` was just returned by socket and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name (1 to 15 bytes)"),
        ));
    }
    // SAFETY: ifreq is plain old data; all-zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// The index of interface `name` in this thread's network namespace.
pub fn if_index(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 { Err(io::Error::last_os_error()) } else { Ok(idx) }
}

/// The names of all interfaces in this thread's network namespace.
pub fn if_names() -> Vec<String> {
    // SAFETY: if_nameindex takes no arguments; the result is freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Vec::new();
    }
    let mut names = Vec::new();
    for i in 0.. {
        // SAFETY: the array is terminated by an entry with if_index 0, and we
        // stop at it, so entry `i` is in bounds.
        let ptr = unsafe { list.add(i) };
        // SAFETY: `ptr` points at an initialised entry (see above).
        let entry = unsafe { &*ptr };
        if entry.if_index == 0 {
            break;
        }
        // SAFETY: each if_name is a valid C string until if_freenameindex.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.if_name) };
        names.push(name.to_string_lossy().into_owned());
    }
    // SAFETY: `list` came from if_nameindex and is freed exactly once.
    unsafe { libc::if_freenameindex(list) };
    names
}

/// MTU of interface `name`.
pub fn if_mtu(name: &str) -> io::Result<u32> {
    let sock = ioctl_socket()?;
    let mut req = ifreq_for(name)?;
    // SAFETY: SIOCGIFMTU reads ifr_name and writes ifr_mtu of a valid ifreq.
    syscall!(ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req))?;
    // SAFETY: the kernel filled the ifru_mtu member.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// Hardware (MAC) address of interface `name`.
pub fn if_mac(name: &str) -> io::Result<[u8; 6]> {
    let sock = ioctl_socket()?;
    let mut req = ifreq_for(name)?;
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr of a valid ifreq.
    syscall!(ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req))?;
    // SAFETY: the kernel filled the ifru_hwaddr member.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

/// `struct ethtool_channels` (include/uapi/linux/ethtool.h).
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}
const ETHTOOL_GCHANNELS: u32 = 0x3c;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// Number of receive queues of interface `name` (rx + combined channels,
/// per ETHTOOL_GCHANNELS), or `None` if the driver does not say.
pub fn if_rx_queues(name: &str) -> io::Result<Option<u32>> {
    let sock = ioctl_socket()?;
    let mut req = ifreq_for(name)?;
    let mut ch = EthtoolChannels { cmd: ETHTOOL_GCHANNELS, ..Default::default() };
    req.ifr_ifru.ifru_data = (&mut ch as *mut EthtoolChannels).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GCHANNELS writes a struct
    // ethtool_channels through ifru_data, which points at `ch`, alive for the call.
    match syscall!(ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req)) {
        Ok(_) => Ok(Some(ch.rx_count + ch.combined_count).filter(|&n| n > 0)),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `struct ethtool_drvinfo` (include/uapi/linux/ethtool.h).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}
const ETHTOOL_GDRVINFO: u32 = 0x03;

/// The driver behind interface `name` ("veth", "mlx5_core", ...), if it says.
pub fn if_driver(name: &str) -> io::Result<Option<String>> {
    let sock = ioctl_socket()?;
    let mut req = ifreq_for(name)?;
    // SAFETY: EthtoolDrvinfo is plain old data; all-zeroes is a valid value.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    req.ifr_ifru.ifru_data = (&mut info as *mut EthtoolDrvinfo).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO writes a struct
    // ethtool_drvinfo through ifru_data, which points at `info`, alive for the call.
    match syscall!(ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req)) {
        Ok(_) => {
            let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
            Ok(Some(String::from_utf8_lossy(&info.driver[..end]).into_owned()).filter(|d| !d.is_empty()))
        }
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the running kernel's release is at least `major.minor`
/// (false when it cannot be read).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else { return false };
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// The IPv4 addresses of interface `name` with their prefix lengths.
pub fn if_ipv4_addrs(name: &str) -> io::Result<Vec<(std::net::Ipv4Addr, u8)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below.
    syscall!(getifaddrs(&mut head))?;
    let mut out = Vec::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: `p` is a node of the list getifaddrs returned, alive
        // until freeifaddrs.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a valid C string for the list's lifetime.
        let ifname = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null and points at a sockaddr.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if ifname.to_bytes() != name.as_bytes() || i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        let prefix = if ifa.ifa_netmask.is_null() {
            32
        } else {
            // SAFETY: the netmask of an AF_INET address is a sockaddr_in.
            let mask = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
            u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
        };
        out.push((ip, prefix));
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Eight bytes from the kernel's entropy pool (getrandom(2)).
pub fn random_u64() -> io::Result<u64> {
    let mut v = [0u8; 8];
    // SAFETY: writes at most 8 bytes into `v`.
    let n = syscall!(getrandom(v.as_mut_ptr().cast(), v.len(), 0))?;
    if n != 8 {
        return Err(io::Error::other("getrandom returned fewer than 8 bytes"));
    }
    Ok(u64::from_ne_bytes(v))
}

/// Identity (device, inode) of this thread's network namespace, so state
/// keyed by ifindex does not mix interfaces of different namespaces.
pub fn netns_id() -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok((m.dev(), m.ino()))
}

/// Sets an integer socket option.
pub fn set_sockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    syscall!(setsockopt(
        fd,
        level,
        name,
        (&value as *const i32).cast(),
        std::mem::size_of::<i32>() as libc::socklen_t
    ))?;
    Ok(())
}

/// Reads an integer socket option.
pub fn get_sockopt_u32(fd: RawFd, level: i32, name: i32) -> io::Result<u32> {
    let mut v: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: passes a pointer to a live u32 and its exact size.
    syscall!(getsockopt(fd, level, name, (&mut v as *mut u32).cast(), &mut len))?;
    Ok(v)
}

/// Processes holding an XDP bpf_link on interface `ifindex` of this
/// thread's network namespace: (pid, command line). Found by reading
/// /proc/*/fdinfo (a bpf_link's fdinfo names its link type and ifindex);
/// processes this one may not inspect are skipped.
pub fn xdp_link_owners(ifindex: u32) -> Vec<(u32, String)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(ours) = netns_id() else { return Vec::new() };
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let same_ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| (m.dev(), m.ino()) == ours);
        if !same_ns {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let holds = fds.flatten().any(|fd| {
            let link = std::fs::read_link(fd.path()).unwrap_or_default();
            if link.to_str() != Some("anon_inode:bpf_link") {
                return false;
            }
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()))
                .unwrap_or_default();
            let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_owned()));
            field("link_type:").as_deref() == Some("xdp") && field("ifindex:") == Some(ifindex.to_string())
        });
        if holds {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd: Vec<String> = cmd
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            found.push((pid, cmd.join(" ")));
        }
    }
    found
}

/// Raises this process's open-file limit to its hard limit (a process with
/// ten thousand kernel sockets needs more than the usual 1024). Returns
/// the new limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: passes a pointer to a live rlimit.
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: passes a pointer to a live rlimit.
        syscall!(setrlimit(libc::RLIMIT_NOFILE, &lim))?;
    }
    Ok(lim.rlim_cur)
}

/// Gives the allocator's free memory back to the operating system
/// (glibc's malloc_trim: free pages inside the heap are released with
/// MADV_DONTNEED, not only the top). Call after freeing a lot; it costs a
/// walk over the heap.
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes a size and touches only the allocator's own
    // state, which it locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Physical memory of the machine in bytes (MemTotal of /proc/meminfo).
pub fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Makes the next close of a TCP socket reset the connection (SO_LINGER
/// with a zero timeout), so the peer learns at once that it was refused
/// rather than seeing an orderly end.
pub fn reset_on_close(fd: BorrowedFd<'_>) -> io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: passes a pointer to a live `linger` and its exact size.
    syscall!(setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        (&linger as *const libc::linger).cast(),
        std::mem::size_of::<libc::linger>() as libc::socklen_t
    ))?;
    Ok(())
}

/// Starts a TCP connect to `addr` on a new non-blocking socket (close-on-
/// exec). The connect completes in the background: the socket becomes
/// writable, and [`socket_error`] says whether it succeeded.
pub fn tcp_connect_start(addr: std::net::SocketAddrV4) -> io::Result<std::net::TcpStream> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = syscall!(socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0))?;
    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: passes a pointer to a live sockaddr_in and its exact size.
    match syscall!(connect(
        owned.as_raw_fd(),
        (&sa as *const libc::sockaddr_in).cast(),
        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
    )) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(std::net::TcpStream::from(owned))
}

/// The pending error of a socket (SO_ERROR), which reading clears: how a
/// non-blocking connect ended.
pub fn socket_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    let code = get_sockopt_u32(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ERROR)?;
    Ok((code != 0).then(|| io::Error::from_raw_os_error(code as i32)))
}

/// Sets a listening socket's accept queue length (listen(2) again: the
/// kernel caps it at net.core.somaxconn). The standard library listens with
/// 128, which a rank accepting from every other rank at once overflows.
pub fn set_listen_backlog(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: listen on a descriptor we borrow; it only changes the queue.
    syscall!(listen(fd.as_raw_fd(), backlog)).map(drop)
}

/// A kick to the kernel for an AF_XDP socket: sendto(fd, NULL, 0,
/// MSG_DONTWAIT). ENOBUFS, EAGAIN, EBUSY and ENETDOWN mean "try again", as in
/// the kernel's xdpsock sample.
pub fn xsk_kick_tx(fd: RawFd) -> io::Result<()> {
    // SAFETY: a zero-length send with null buffer and address is the
    // documented AF_XDP wake-up call.
    match syscall!(sendto(fd, std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0)) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN | libc::EBUSY | libc::ENETDOWN)) => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A kick to the kernel to refill from the fill ring: recvfrom(fd, NULL, 0,
/// MSG_DONTWAIT).
pub fn xsk_kick_rx(fd: RawFd) -> io::Result<()> {
    // SAFETY: a zero-length receive with null buffer and address is the
    // documented AF_XDP wake-up call for the fill ring.
    match syscall!(recvfrom(
        fd,
        std::ptr::null_mut(),
        0,
        libc::MSG_DONTWAIT,
        std::ptr::null_mut(),
        std::ptr::null_mut()
    )) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY | libc::ENETDOWN)) => Ok(()),
        Err(e) => Err(e),
    }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn note_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag ([`interrupted`]) instead of killing
/// the process, so a program that built namespaces can unwind and remove
/// them. Blocking calls are restarted (SA_RESTART); children in the same
/// process group still receive the signal and end, which returns control.
pub fn catch_interrupts() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction is plain old data; all-zeroes is a valid value.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = note_interrupt as *const () as libc::sighandler_t;
        act.sa_flags = libc::SA_RESTART;
        // SAFETY: `act` is a valid sigaction whose handler only performs an
        // atomic store (async-signal-safe); the old action is not needed.
        syscall!(sigaction(sig, &act, std::ptr::null_mut()))?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// This process's effective user id.
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// How a process stands, as far as its descriptors closing tells: a host
/// engine asks when a client's socket hangs up, to tell a process that
/// closed (or exited) from one that was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Running, not exiting.
    Alive,
    /// Exiting (or a zombie) with this exit status (as waitpid reports it:
    /// the code in bits 8..16).
    Exiting {
        /// The status.
        status: i32,
    },
    /// Exiting (or a zombie) because of this signal.
    Killed {
        /// The signal.
        signal: i32,
    },
    /// No such process any more (already reaped).
    Gone,
}

/// What /proc says of `pid` (see [`ProcessState`]).
pub fn process_state(pid: i32) -> ProcessState {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => parse_proc_stat(&s).unwrap_or(ProcessState::Gone),
        Err(_) => ProcessState::Gone,
    }
}

/// PF_EXITING in the flags field of /proc/PID/stat.
const PF_EXITING: u64 = 0x4;

/// Parses a /proc/PID/stat line (the command name may hold spaces and
/// parentheses: fields are counted from the last ')').
pub fn parse_proc_stat(s: &str) -> Option<ProcessState> {
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state), f[6] field 9 (flags), f[49] field 52
    // (exit_code).
    let state = *f.first()?;
    let flags: u64 = f.get(6)?.parse().ok()?;
    let exiting = flags & PF_EXITING != 0 || state == "Z" || state == "X";
    if !exiting {
        return Some(ProcessState::Alive);
    }
    let code: i32 = f.get(49).and_then(|c| c.parse().ok()).unwrap_or(0);
    Some(match code & 0x7f {
        0 => ProcessState::Exiting { status: code },
        sig => ProcessState::Killed { signal: sig },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_tells_exits_from_kills() {
        let line = |state: &str, flags: u64, code: i32| {
            let mut f = vec!["0".to_string(); 50];
            f[0] = state.into();
            f[6] = flags.to_string();
            f[49] = code.to_string();
            format!("123 (a (weird) name) {}", f.join(" "))
        };
        assert_eq!(parse_proc_stat(&line("S", 0x400000, 0)), Some(ProcessState::Alive));
        assert_eq!(parse_proc_stat(&line("R", 0x400004, 9)), Some(ProcessState::Killed { signal: 9 }));
        assert_eq!(parse_proc_stat(&line("Z", 0, 256)), Some(ProcessState::Exiting { status: 256 }));
        assert_eq!(parse_proc_stat("garbage"), None);
        assert_eq!(process_state(std::process::id() as i32), ProcessState::Alive);
        assert_eq!(process_state(i32::MAX), ProcessState::Gone);
    }

    #[test]
    fn loopback_is_found_with_its_mtu() {
        assert!(if_index("lo").is_ok());
        assert_eq!(if_mtu("lo").unwrap(), 65536);
        assert!(if_names().iter().any(|n| n == "lo"));
    }

    #[test]
    fn loopback_has_its_address_and_entropy_differs() {
        let addrs = if_ipv4_addrs("lo").unwrap();
        assert!(addrs.contains(&(std::net::Ipv4Addr::LOCALHOST, 8)), "{addrs:?}");
        assert!(if_ipv4_addrs("xsock-nope0").unwrap().is_empty());
        assert_ne!(random_u64().unwrap(), random_u64().unwrap());
    }

    #[test]
    fn loopback_driver_is_unnamed_or_loopback() {
        // lo has no ethtool driver info on most kernels; either way, no error.
        let d = if_driver("lo").unwrap();
        assert!(d.is_none() || d.as_deref() == Some("loopback"), "{d:?}");
    }

    #[test]
    fn missing_interface_is_an_error_not_a_panic() {
        assert!(if_index("xsock-nope0").is_err());
        assert!(if_mtu("xsock-nope0").is_err());
        assert!(if_mtu("a-name-that-is-too-long").is_err());
    }

    #[test]
    fn eventfd_signals_and_clears() {
        let ev = EventFd::new().unwrap();
        let i = [Interest { fd: ev.fd(), read: true, write: false }];
        assert!(!poll_fds(&i, Some(Duration::ZERO)).unwrap()[0].readable);
        ev.signal();
        ev.signal();
        assert!(poll_fds(&i, Some(Duration::ZERO)).unwrap()[0].readable);
        ev.clear();
        assert!(!poll_fds(&i, Some(Duration::ZERO)).unwrap()[0].readable);
    }
}
