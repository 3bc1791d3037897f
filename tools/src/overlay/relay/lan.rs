//! The relay's LAN side: endpoints open virtual connections on the serve
//! port (handshake, then `Open`), and the relay opens streams to the
//! endpoints it delivers to. Both block, so each runs on its own thread and
//! hands the ready stream to the core loop.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use xsock::{
    ConnectOptions, Runtime, Stream, Transport,
    overlay::{Key, Role, authenticate, recv_frame, send_msg},
};
use xsock_overlay::{NodeId, relay::LocalId, wire::Msg};

use super::shell::{Event, Notify};

/// Runs the handshake of an endpoint's new stream on a helper thread.
pub fn spawn_admit(s: Stream, key: Key, name: String, tx: Notify) {
    let _ = std::thread::Builder::new().name("lan-hs".into()).spawn(move || admit(s, &key, &name, &tx));
}

fn admit(mut s: Stream, key: &Key, name: &str, tx: &Notify) {
    let from = s.peer_addr();
    let deadline = Instant::now() + Duration::from_secs(3);
    let peer = match authenticate(&mut s, key, Role::Relay, name, deadline) {
        Ok(p) => p,
        Err(e) => return log::warn!("refused an endpoint at {from}: {e}"),
    };
    let frame = match recv_frame(&mut s, deadline) {
        Ok(f) => f,
        Err(e) => return log::warn!("{} at {from}: {e}", peer.name),
    };
    match Msg::parse(&frame) {
        Ok(Msg::Open { src, dst, port, .. }) => {
            tx.send(Event::LocalOpen { stream: s, src, dst, port, name: peer.name })
        }
        _ => log::warn!("{} at {from}: expected Open after the handshake", peer.name),
    }
}

/// Opens a stream to endpoint `dst` at `ip`:`port` for `local`.
#[allow(clippy::too_many_arguments)]
pub fn spawn_connect(
    rt: Runtime,
    key: Key,
    name: String,
    local: LocalId,
    src: NodeId,
    dst: NodeId,
    ip: Ipv4Addr,
    port: u16,
    tx: Notify,
) {
    let _ = std::thread::Builder::new().name("lan-conn".into()).spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(3);
        let r = (|| {
            let opts =
                ConnectOptions { transport: Transport::Link, timeout: Duration::from_secs(3), ..Default::default() };
            let mut s = Stream::connect_with(&rt, SocketAddrV4::new(ip, port), opts)?;
            authenticate(&mut s, &key, Role::Relay, &name, deadline)?;
            send_msg(&mut s, &Msg::Open { vc: 0, src, dst, port, ttl: 0, credit: 0 })?;
            let f = recv_frame(&mut s, deadline)?;
            match Msg::parse(&f) {
                Ok(Msg::Accept { .. }) => Ok(s),
                Ok(Msg::Refuse { reason, .. }) | Ok(Msg::Refused { reason }) => {
                    Err(xsock::Error::Overlay(reason.to_owned()))
                }
                _ => Err(xsock::Error::Protocol("unexpected answer to Open".into())),
            }
        })();
        match r {
            Ok(stream) => tx.send(Event::Connected { local, stream }),
            Err(e) => tx.send(Event::ConnectFailed { local, reason: format!("delivering to {ip}:{port}: {e}") }),
        }
    });
}
