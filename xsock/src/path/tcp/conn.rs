//! What a [`crate::Stream`] on the TCP mode does: the blocking and
//! non-blocking calls, over the shared [`TcpCore`](super::core::TcpCore).

use std::{
    net::SocketAddrV4,
    sync::Arc,
    time::{Duration, Instant},
};

use smoltcp::iface::SocketHandle;

use super::core::ReadOutcome;
use crate::{Error, Runtime, notify::Notifier};

/// Lets go of the connection when the last stream handle on it drops: it
/// then closes gracefully in the background. Holds the connection's
/// notifier (registered with the TCP mode while the handle lives).
pub(crate) struct TcpConnHandle {
    pub rt: Runtime,
    pub h: SocketHandle,
    pub signal: Arc<Notifier>,
}

impl Drop for TcpConnHandle {
    fn drop(&mut self) {
        if let Some(tcp) = self.rt.tcp() {
            tcp.unregister(self.h);
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
    /// Takes hold of `h`, waking `signal` on its changes.
    pub fn new(rt: &Runtime, h: SocketHandle, signal: Arc<Notifier>) -> TcpConn {
        if let Some(tcp) = rt.tcp() {
            tcp.register(h, &signal);
        }
        TcpConn { h, handle: Arc::new(TcpConnHandle { rt: rt.clone(), h, signal }) }
    }

    fn rt(&self) -> &Runtime {
        &self.handle.rt
    }

    fn signal(&self) -> &Arc<Notifier> {
        &self.handle.signal
    }

    /// Whether the handshake completed; the failure if the connect failed.
    pub fn established(&self, peer: SocketAddrV4) -> Result<bool, Error> {
        let tcp = self.rt().tcp().expect("a TCP stream needs the TCP mode");
        let mut core = tcp.lock();
        if core.is_established(self.h) {
            return Ok(true);
        }
        match core.failure(self.h, peer) {
            Some(e) => Err(e),
            None => Ok(false),
        }
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
            rt.wait_on(self.signal(), None, || {
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
        Ok(rt.wait_on(self.signal(), None, || self.try_read(peer, buf))?.expect("no deadline"))
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
        let done = rt.wait_on(self.signal(), Some(Instant::now() + timeout), || {
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
