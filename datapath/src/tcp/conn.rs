//! What a [`crate::Stream`] on the TCP mode does: the blocking and
//! non-blocking calls, over the shared [`TcpCore`](super::core::TcpCore).

use std::{
    net::SocketAddrV4,
    sync::Arc,
    time::{Duration, Instant},
};

use smoltcp::iface::SocketHandle;

use super::core::ReadOutcome;
use crate::{Error, Runtime};

/// Lets go of the connection when the last stream handle on it drops: it
/// then closes gracefully in the background.
pub(crate) struct TcpConnHandle {
    pub rt: Runtime,
    pub h: SocketHandle,
}

impl Drop for TcpConnHandle {
    fn drop(&mut self) {
        if let Some(tcp) = self.rt.tcp() {
            tcp.lock().release(self.h);
            self.rt.kick_tcp();
        }
    }
}

/// A connection on the TCP mode, as a stream holds it.
#[derive(Clone)]
pub(crate) struct TcpConn {
    pub h: SocketHandle,
    pub handle: Arc<TcpConnHandle>,
}

impl TcpConn {
    pub fn new(rt: &Runtime, h: SocketHandle) -> TcpConn {
        TcpConn { h, handle: Arc::new(TcpConnHandle { rt: rt.clone(), h }) }
    }

    fn rt(&self) -> &Runtime {
        &self.handle.rt
    }
}

/// Connects over the TCP mode, waiting up to `deadline`.
pub(crate) fn connect(rt: &Runtime, addr: SocketAddrV4, deadline: Instant) -> Result<TcpConn, Error> {
    let tcp = rt.tcp().ok_or_else(|| {
        Error::Config(
            "the TCP mode is unavailable: it needs an interface driven with AF_XDP (see the log for why it is not)"
                .into(),
        )
    })?;
    // Make sure the kernel knows the next hop before the SYN goes, so the
    // first segment is not lost to a neighbour lookup.
    let hop = tcp.lock().next_hop(*addr.ip()).ok_or_else(|| {
        Error::Config(format!("no route to {addr}: it is off our subnet and the interface has no default gateway"))
    })?;
    let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(3));
    let known = tcp.lock().arp.source().resolve_blocking(hop, wait);
    if known.is_none() {
        return Err(Error::TimedOut(format!(
            "{hop} does not answer ARP on this interface{}: is the peer up and on this link?",
            if hop == *addr.ip() { String::new() } else { format!(" (the gateway to {addr})") }
        )));
    }
    let h = tcp.lock().connect(Instant::now(), addr)?;
    let conn = TcpConn::new(rt, h);
    rt.kick_tcp();
    let r = rt.wait_until(Some(deadline), || {
        let mut core = tcp.lock();
        if core.is_established(h) {
            return Ok(Some(()));
        }
        match core.failure(h, addr) {
            Some(e) => Err(e),
            None => Ok(None),
        }
    });
    match r {
        Ok(Some(())) => Ok(conn),
        Ok(None) => {
            tcp.lock().abort(h);
            Err(Error::TimedOut(format!("no TCP handshake with {addr} before the connect timeout")))
        }
        Err(e) => Err(e),
    }
}

impl TcpConn {
    /// Writes what fits now.
    pub fn try_write(&self, peer: SocketAddrV4, data: &[u8]) -> Result<usize, Error> {
        let tcp = self.rt().tcp().expect("a TCP stream needs the TCP mode");
        let n = tcp.lock().send(self.h, peer, data)?;
        if n > 0 {
            self.rt().kick_tcp();
        }
        Ok(n)
    }

    /// Writes all of `data`, waiting for room.
    pub fn write_all(&self, peer: SocketAddrV4, mut data: &[u8]) -> Result<(), Error> {
        let rt = self.rt();
        let tcp = rt.tcp().expect("a TCP stream needs the TCP mode");
        while !data.is_empty() {
            let n = self.try_write(peer, data)?;
            data = &data[n..];
            if data.is_empty() {
                break;
            }
            rt.wait_until(None, || {
                let mut core = tcp.lock();
                if let Some(e) = core.failure(self.h, peer) {
                    return Err(e);
                }
                Ok((core.send_space(self.h) > 0).then_some(()))
            })?;
        }
        Ok(())
    }

    /// Reads what is there: `Ok(None)` if nothing yet.
    pub fn try_read(&self, peer: SocketAddrV4, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        let tcp = self.rt().tcp().expect("a TCP stream needs the TCP mode");
        let r = tcp.lock().recv(self.h, peer, buf)?;
        Ok(match r {
            ReadOutcome::Data(n) => {
                self.rt().kick_tcp(); // a window update may be due
                Some(n)
            }
            ReadOutcome::End => Some(0),
            ReadOutcome::Empty => None,
        })
    }

    /// Reads at least one byte (0 = the peer finished).
    pub fn read(&self, peer: SocketAddrV4, buf: &mut [u8]) -> Result<usize, Error> {
        let rt = self.rt();
        Ok(rt.wait_until(None, || self.try_read(peer, buf))?.expect("no deadline"))
    }

    pub fn shutdown(&self) {
        self.rt().tcp().expect("TCP mode").lock().shutdown(self.h);
        self.rt().kick_tcp();
    }

    pub fn abort(&self) {
        self.rt().tcp().expect("TCP mode").lock().abort(self.h);
        self.rt().kick_tcp();
    }

    /// Waits until the peer has acknowledged everything, FIN included.
    pub fn wait_sent(&self, peer: SocketAddrV4, timeout: Duration) -> Result<(), Error> {
        let rt = self.rt();
        let tcp = rt.tcp().expect("TCP mode");
        let done = rt.wait_until(Some(Instant::now() + timeout), || {
            let mut core = tcp.lock();
            if core.send_finished(self.h) {
                return Ok(Some(()));
            }
            match core.failure(self.h, peer) {
                Some(e) => Err(e),
                None => Ok(None),
            }
        })?;
        done.ok_or_else(|| Error::TimedOut(format!("{peer} did not acknowledge the end of the stream")))
    }

    pub fn stats(&self) -> super::core::TcpStats {
        self.rt().tcp().expect("TCP mode").lock().stats(self.h)
    }

    pub fn endpoints(&self) -> (SocketAddrV4, SocketAddrV4) {
        self.rt().tcp().expect("TCP mode").lock().endpoints(self.h)
    }
}
