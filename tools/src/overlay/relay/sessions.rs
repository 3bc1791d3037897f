//! Attached endpoints' sessions at the relay: one stream per endpoint of
//! the LAN, carrying all of its virtual connections with the relay links'
//! messages (the core treats each session like a link that routes
//! nothing). The streams are driven without blocking in the core loop.

use std::{collections::HashMap, time::Duration};

use xsock::{Error, Stream};
use xsock_overlay::{
    NodeId,
    linkq::SendBuf,
    relay::{LinkId, RelayCore},
    wire::{FrameReader, SESSION_READ},
};

/// One endpoint's session.
pub struct Session {
    s: Stream,
    out: SendBuf,
    rd: FrameReader,
    pub name: String,
    pub node: NodeId,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Every session, by the link id the core knows it as.
#[derive(Default)]
pub struct Sessions {
    map: HashMap<LinkId, Session>,
}

impl Sessions {
    /// A session on `s` (its attach preamble done) for `node`, proven `name`.
    pub fn insert(&mut self, link: LinkId, s: Stream, name: String, node: NodeId) {
        let session =
            Session { s, out: SendBuf::default(), rd: FrameReader::default(), name, node, bytes_in: 0, bytes_out: 0 };
        self.map.insert(link, session);
    }

    /// Takes what the core has for each session, while it holds under
    /// `high` bytes.
    pub fn pull(&mut self, core: &mut RelayCore, high: usize) {
        for (&link, s) in self.map.iter_mut() {
            while s.out.len() < high {
                let Some(bytes) = core.poll_transmit_link(link, high) else { break };
                s.out.push(bytes);
            }
        }
    }

    /// Ends session `link` (its stream is reset).
    pub fn remove(&mut self, link: LinkId) -> Option<Session> {
        let s = self.map.remove(&link)?;
        Some(s)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&LinkId, &Session)> {
        self.map.iter()
    }

    /// Hands what every session has sent to the core; returns whether any
    /// moved, and the sessions that ended (broken, closed, or breaking the
    /// protocol), each with why.
    pub fn read(&mut self, core: &mut RelayCore, now: Duration) -> (bool, Vec<(LinkId, String)>) {
        let (mut any, mut gone) = (false, Vec::new());
        'sessions: for (&link, s) in self.map.iter_mut() {
            loop {
                // Straight from the stream into the frame reader.
                match s.rd.read_with(SESSION_READ, |room| s.s.try_recv(room)) {
                    Ok(0) => {
                        gone.push((link, "it closed the session".to_owned()));
                        break;
                    }
                    Ok(n) => {
                        any = true;
                        s.bytes_in += n as u64;
                        loop {
                            match s.rd.next_frame() {
                                Ok(Some(f)) => {
                                    if let Err(e) = core.handle_link_frame(now, link, f) {
                                        gone.push((link, format!("it broke the protocol ({e})")));
                                        continue 'sessions;
                                    }
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    gone.push((link, e.to_string()));
                                    continue 'sessions;
                                }
                            }
                        }
                    }
                    Err(Error::WouldBlock) => break,
                    Err(e) => {
                        gone.push((link, e.to_string()));
                        break;
                    }
                }
            }
        }
        (any, gone)
    }

    /// Writes what waits; returns whether any went, and the sessions whose
    /// stream broke.
    pub fn write(&mut self) -> (bool, Vec<(LinkId, String)>) {
        let (mut any, mut gone) = (false, Vec::new());
        for (&link, s) in self.map.iter_mut() {
            while !s.out.is_empty() {
                match s.s.try_send(s.out.pending()) {
                    Ok(0) => break,
                    Ok(n) => {
                        any = true;
                        s.bytes_out += n as u64;
                        s.out.advance(n);
                    }
                    Err(Error::WouldBlock) => break,
                    Err(e) => {
                        gone.push((link, e.to_string()));
                        break;
                    }
                }
            }
        }
        (any, gone)
    }
}
