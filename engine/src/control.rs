//! The engine's side of the control sockets: admitting processes (the
//! kernel's word on who they are, checked against the policy), and their
//! requests: connect, listen, status.

use std::os::fd::AsFd;

use xsock::{ConnectOptions, Error, Interest, ListenOptions, Listener, Mode, Stream, Transport};
use xsock_attach::{EndKind, Msg, TransportKind, VERSION, policy::groups_from_status};
use xsock_nic::unix::{self, FdPassError};

use crate::{Client, Connecting, Engine, Listen, bridge::End, kind, token};

/// What a connect asks for: where, on which transport, bytes or
/// messages, and its bound in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Want {
    addr: std::net::SocketAddrV4,
    transport: TransportKind,
    mode: Mode,
    ms: u32,
}

fn mode(messages: bool) -> Mode {
    if messages { Mode::Message } else { Mode::Stream }
}

impl Engine {
    /// Takes every process waiting on the engine's socket.
    pub(crate) fn accept_clients(&mut self) {
        loop {
            let fd = match unix::accept(self.listen_sock.as_fd()) {
                Ok(Some(fd)) => fd,
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and friends: say so and let the loop come back.
                    log::warn!("engine: accepting a client: {e} (raise the engine's open-file limit: ulimit -n)");
                    return;
                }
            };
            let cred = match unix::peer_cred(fd.as_fd()) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("engine: a client without credentials ({e}); closed");
                    continue;
                }
            };
            let groups = std::fs::read_to_string(format!("/proc/{}/status", cred.pid))
                .map(|s| groups_from_status(&s))
                .unwrap_or_else(|_| vec![cred.gid]);
            let refusal = match self.policy.admit(cred.uid, &groups) {
                Err(r) => Some(r.0),
                Ok(()) if self.clients.len() >= self.cfg.max_clients => Some(format!(
                    "the engine serves {} processes, its cap (xsock engine --max-clients)",
                    self.cfg.max_clients
                )),
                Ok(()) => None,
            };
            if let Some(reason) = refusal {
                self.totals.refused += 1;
                log::warn!("engine: refused pid {} (uid {}): {reason}", cred.pid, cred.uid);
                let _ = unix::send_with_fds(fd.as_fd(), &Msg::Refused { reason: &reason }.emit(), &[]);
                continue;
            }
            let id = self.new_id();
            self.watch_fd(token(id, kind::CTL), fd.as_fd(), Some(Interest::READABLE));
            self.clients.insert(
                id,
                Client {
                    ctl: fd,
                    outq: Default::default(),
                    pid: cred.pid,
                    uid: cred.uid,
                    hello: false,
                    rings: false,
                    ends: true,
                    streams: Default::default(),
                    listens: Default::default(),
                },
            );
        }
    }

    /// Reads and serves every message waiting from client `id`.
    pub(crate) fn serve_client(&mut self, id: u32) {
        loop {
            let Some(c) = self.clients.get(&id) else { return };
            let mut buf = std::mem::take(&mut self.buf);
            let r = unix::recv_with_fds(c.ctl.as_fd(), &mut buf, 1);
            let outcome = match r {
                Ok((0, _)) => Err("its socket closed".to_owned()),
                Ok((n, fds)) => match Msg::parse(&buf[..n]) {
                    Ok(m) if fds.len() != m.fds() => {
                        Err(format!("it sent {} descriptors with a message that takes {}", fds.len(), m.fds()))
                    }
                    Ok(m) => self.serve(id, m, fds.into_iter().next()),
                    Err(e) => Err(format!("it sent {e}")),
                },
                Err(FdPassError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.buf = buf;
                    return;
                }
                Err(FdPassError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
                Err(e) => Err(e.to_string()),
            };
            self.buf = buf;
            if let Err(why) = outcome {
                self.client_gone(id, &why);
                return;
            }
        }
    }

    /// `fd`: the descriptor that came with `m` (as many as [`Msg::fds`]).
    fn serve(&mut self, id: u32, m: Msg<'_>, fd: Option<std::os::fd::OwnedFd>) -> Result<(), String> {
        let hello = self.clients.get(&id).is_some_and(|c| c.hello);
        match m {
            Msg::Hello { version, rings, ends } if !hello => {
                if version != VERSION {
                    let reason = format!(
                        "this engine speaks protocol version {VERSION}, the process {version}: run the same xsock \
                         version for both"
                    );
                    self.send_to(id, &Msg::Refused { reason: &reason }, None);
                    return Err(reason);
                }
                let addr = self.rt.local_subnets().first().copied();
                let (ip, prefix) = addr.unwrap_or((std::net::Ipv4Addr::UNSPECIFIED, 0));
                let iface = self.cfg.iface.clone();
                let pid = std::process::id();
                let (vaddr, (vnet, vnet_prefix)) = match &self.overlay {
                    Some(o) => (o.vaddr(), o.node.vnet()),
                    None => (std::net::Ipv4Addr::UNSPECIFIED, (std::net::Ipv4Addr::UNSPECIFIED, 0)),
                };
                let welcome = Msg::Welcome {
                    version: VERSION,
                    engine_pid: pid,
                    iface: &iface,
                    addr: ip,
                    prefix,
                    vaddr,
                    vnet,
                    vnet_prefix,
                };
                self.send_to(id, &welcome, None);
                if let Some(c) = self.clients.get_mut(&id) {
                    c.hello = true;
                    c.rings = rings;
                    c.ends = ends;
                    self.totals.attached += 1;
                    log::debug!("engine: attached pid {} (uid {})", c.pid, c.uid);
                }
                Ok(())
            }
            _ if !hello => Err("it sent a request before hello".into()),
            Msg::Connect { req, addr, transport, messages, timeout_ms } => {
                self.connect(id, req, Want { addr, transport, mode: mode(messages), ms: timeout_ms });
                Ok(())
            }
            Msg::Dial { req, addr, transport, timeout_ms, filler } => {
                let pair = std::os::unix::net::UnixStream::from(fd.expect("counted above"));
                if !unix::is_unix_stream(pair.as_fd()) {
                    return Err("it sent a Dial whose descriptor is not a stream socketpair".into());
                }
                if self.dials.insert((id, req), crate::Dial { pair, filler }).is_some() {
                    return Err(format!("it sent a second Dial numbered {req} before the first was answered"));
                }
                self.connect(id, req, Want { addr, transport, mode: Mode::Stream, ms: timeout_ms });
                Ok(())
            }
            Msg::Listen { req, addr, messages } => {
                self.listen(id, req, addr, mode(messages));
                Ok(())
            }
            Msg::Unlisten { listen } => {
                if self.listens.get(&listen).is_some_and(|l| l.client == id) {
                    self.unwatch(token(listen, kind::LISTEN));
                    self.listens.remove(&listen);
                    if let Some(c) = self.clients.get_mut(&id) {
                        c.listens.remove(&listen);
                    }
                }
                Ok(())
            }
            Msg::Close { stream } => {
                // From the client that made the stream, or another
                // connection of the same process (the preload attaches once
                // per connect and lets go of its streams on another).
                let pid = self.clients.get(&id).map(|c| c.pid);
                if let Some(c) = self.carried.get_mut(&stream)
                    && (c.bridge.client == id || Some(c.pid) == pid)
                {
                    c.released = true;
                }
                if let Some(d) = self.direct.get(&stream)
                    && (d.client == id || Some(d.pid) == pid)
                {
                    d.end.set_released();
                }
                Ok(())
            }
            Msg::Sync { req } => {
                self.send_to(id, &Msg::Synced { req }, None);
                Ok(())
            }
            Msg::Lookup { req, name } => {
                let started = match &mut self.overlay {
                    Some(o) => {
                        o.lookup(id, req, name.to_owned()).map_err(|e| format!("the engine could not look it up: {e}"))
                    }
                    None => Err("this host's engine joined no overlay (xsock engine --boot ... --name ...)".to_owned()),
                };
                if let Err(text) = started {
                    self.send_to(id, &Msg::Failed { req, kind: EndKind::Config, text: &text }, None);
                }
                Ok(())
            }
            Msg::HowEnded { req, stream } => {
                self.prune_direct();
                let pid = self.clients.get(&id).map(|c| c.pid);
                // A handed-over VC whose session is still letting go of it.
                if let Some(d) = self.direct.get(&stream)
                    && Some(d.pid) == pid
                    && let Some(e) = d.end.end_of()
                {
                    let end = End::of(&e);
                    self.send_to(id, &Msg::Failed { req, kind: end.kind, text: &end.text }, None);
                    return Ok(());
                }
                match self.ended.get(&stream) {
                    Some((owner, _)) if Some(*owner) == pid => {
                        let (_, end) = self.ended.remove(&stream).expect("there");
                        self.send_to(id, &Msg::Failed { req, kind: end.kind, text: &end.text }, None);
                    }
                    _ => {
                        self.send_to(id, &Msg::Synced { req }, None);
                    }
                }
                Ok(())
            }
            Msg::Status { req } => {
                self.prune_direct();
                let json = self.status_json().to_string();
                self.send_to(id, &Msg::StatusReply { req, json: &json }, None);
                Ok(())
            }
            other => Err(format!("it sent {other:?}, which only an engine sends")),
        }
    }

    fn connect(&mut self, id: u32, req: u32, want: Want) {
        let Want { addr, mode, ms, .. } = want;
        let full = self.clients.get(&id).is_none_or(|c| c.streams.len() >= self.cfg.max_streams_per_client);
        if full {
            let text = format!(
                "this process holds {} streams through the engine, its cap (xsock engine --max-streams)",
                self.cfg.max_streams_per_client
            );
            self.connect_failed(id, req, EndKind::Overloaded, &text);
            return;
        }
        if let Some(o) = &mut self.overlay
            && o.is_virtual(*addr.ip())
        {
            let refusal = if *addr.ip() == o.vaddr() {
                Some(format!("{} is this host's own virtual address: connect to 127.0.0.1 instead", addr.ip()))
            } else if mode == Mode::Message {
                Some("a virtual connection carries a byte stream, not messages".to_owned())
            } else {
                o.open(id, req, addr, ms).err().map(|e| format!("the engine could not start the open: {e}"))
            };
            if let Some(text) = refusal {
                self.totals.failed_connects += 1;
                self.connect_failed(id, req, EndKind::Config, &text);
            }
            return;
        }
        self.connect_to(id, req, want, None);
    }

    /// Starts a connect; `shown` is the virtual address the process asked
    /// for, when `want.addr` is that node's LAN address.
    pub(crate) fn connect_to(&mut self, id: u32, req: u32, want: Want, shown: Option<std::net::SocketAddrV4>) {
        let Want { addr, transport, mode, ms } = want;
        let transport = match transport {
            TransportKind::Auto => Transport::Auto,
            TransportKind::Link => Transport::Link,
            TransportKind::Kernel => Transport::Kernel,
            TransportKind::Tcp => Transport::Tcp,
        };
        let opts = ConnectOptions { transport, mode, timeout: std::time::Duration::from_millis(u64::from(ms.max(1))) };
        match Stream::connect_start(&self.rt, addr, opts) {
            Ok(s) => {
                let sid = self.new_id();
                self.watch_stream(token(sid, kind::STREAM), &s, Some(Interest::WRITABLE));
                if let Some(c) = self.clients.get_mut(&id) {
                    c.streams.insert(sid);
                }
                self.connecting.insert(sid, Connecting { client: id, req, stream: s, shown });
                self.advance_connect(sid);
            }
            Err(e) => {
                self.totals.failed_connects += 1;
                let end = End::of(&e);
                self.connect_failed(id, req, end.kind, &end.text);
            }
        }
    }

    fn listen(&mut self, id: u32, req: u32, addr: std::net::SocketAddrV4, mode: Mode) {
        match Listener::bind_with(&self.rt, addr, ListenOptions { mode, ..ListenOptions::default() }) {
            Ok(l) => {
                let lid = self.new_id();
                let local = l.local_addr();
                if let Err(e) = self.poller.register_listener(&l, token(lid, kind::LISTEN)) {
                    let end = End::of(&e);
                    self.send_to(id, &Msg::Failed { req, kind: end.kind, text: &end.text }, None);
                    return;
                }
                self.watched.insert(token(lid, kind::LISTEN).0, Interest::READABLE);
                // An overlay engine's listeners take their port's virtual
                // connections too.
                let served = match &self.overlay {
                    Some(o) => match o.node.serve(&l) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            log::warn!("engine: port {} on the overlay: {e}", local.port());
                            None
                        }
                    },
                    None => None,
                };
                self.listens.insert(lid, Listen { client: id, listener: l, _served: served });
                if let Some(c) = self.clients.get_mut(&id) {
                    c.listens.insert(lid);
                }
                self.send_to(id, &Msg::Listening { req, listen: lid, local }, None);
                self.accept_streams(lid);
            }
            Err(e) => {
                let end = match &e {
                    Error::AddrInUse(a) => End {
                        kind: EndKind::Config,
                        text: format!("{a} is in use (another process listens there, through the engine or not)"),
                    },
                    e => End::of(e),
                };
                self.send_to(id, &Msg::Failed { req, kind: end.kind, text: &end.text }, None);
            }
        }
    }

    /// Acts on the overlay's finished opens: a VC is handed over, a node
    /// of this LAN connected to at its LAN address, a failure answered.
    pub(crate) fn overlay_opened(&mut self) {
        let Some(o) = &mut self.overlay else { return };
        let vaddr = o.vaddr();
        for done in o.finished() {
            let crate::overlay::Opened { client, req, dest, route, timeout_ms, lookup } = done;
            if !self.clients.contains_key(&client) {
                continue; // gone: a VC drops (closes) here
            }
            match route {
                Ok(crate::overlay::Route::Direct(lan)) => {
                    let want = Want { addr: lan, transport: TransportKind::Link, mode: Mode::Stream, ms: timeout_ms };
                    self.connect_to(client, req, want, Some(dest));
                }
                Ok(crate::overlay::Route::Found(addr)) => {
                    self.send_to(client, &Msg::Found { req, addr }, None);
                }
                Ok(crate::overlay::Route::Vc(s)) => {
                    let make = move |stream, path, ring| {
                        let local = std::net::SocketAddrV4::new(vaddr, crate::vc_port(stream));
                        Msg::Connected { req, stream, path, local, peer: dest, ring }
                    };
                    self.hand_over(client, s, make, Some(req));
                }
                Err(e) => {
                    if !lookup {
                        self.totals.failed_connects += 1;
                    }
                    let mut end = End::of(&e);
                    if matches!(e, xsock::Error::Overlay(_)) {
                        // No such node, no server to ask, no route: as
                        // Linux says of a host it cannot reach.
                        end.kind = EndKind::Unreachable;
                    }
                    self.connect_failed(client, req, end.kind, &end.text);
                }
            }
        }
    }

    /// Client `id` detached (its socket closed: exit, kill, or a protocol
    /// error): its listeners and connects go; its carried streams stay
    /// until their own descriptors hang up (a child may hold them).
    pub(crate) fn client_gone(&mut self, id: u32, why: &str) {
        self.unwatch(token(id, kind::CTL));
        let Some(c) = self.clients.remove(&id) else { return };
        log::debug!("engine: pid {} detached: {why}", c.pid);
        for l in c.listens {
            self.unwatch(token(l, kind::LISTEN));
            self.listens.remove(&l);
        }
        self.dials.retain(|(client, _), _| *client != id);
        for s in c.streams {
            if let Some(p) = self.connecting.remove(&s) {
                self.unwatch(token(s, kind::STREAM));
                p.stream.abort();
            }
        }
    }
}
