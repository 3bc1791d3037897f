//! `xsock recv DIR`: receives files sent by `xsock send` over parallel
//! streams, chunks written straight from the transport into a map of the
//! file, each chunk checked against the sender's SHA-256 before it counts,
//! the whole file checked at the end, and a resume state kept beside it so
//! that an interrupted transfer continues where it stopped.
//!
//! In DIR, while a transfer runs: `.xsock-NAME.part` (the data) and
//! `.xsock-NAME.state` (the chunks held). At the end the part file is
//! renamed to NAME and the state removed; nothing else is ever written.

use std::{
    collections::HashMap,
    fs::{self, File},
    net::SocketAddrV4,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use sha2::{Digest, Sha256};
use xsock::{Driving, Error, Stream};
use xsock_nic::filemap::{self, ReadMap, WriteMap};

use super::{
    default_transport,
    hasher::{Hasher, Job},
    hex, human,
    state::ResumeState,
    wire::{self, Hello, Msg},
};
use crate::{
    args::{Poll, RuntimeArgs},
    fail::Fail,
    overlay::{Accepting, JoinArgs},
};

/// Flags of `xsock recv`.
#[derive(Debug, Args)]
pub struct Recv {
    #[command(flatten)]
    rt: RuntimeArgs,
    /// Address to receive on (the interface's IPv4 address; on the overlay,
    /// with --boot, senders name this node and the port).
    #[arg(long)]
    listen: SocketAddrV4,
    #[command(flatten)]
    join: JoinArgs,
    /// Directory the files go to.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Exit after the first file that completes.
    #[arg(long)]
    once: bool,
    /// Replace a file of the same name (else such a transfer is refused).
    #[arg(long)]
    overwrite: bool,
    /// Busy-poll, or sleep (default) while waiting.
    #[arg(long, value_enum, default_value = "sleep")]
    poll: Poll,
}

/// How often a transfer's resume state is written.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How long a data stream may wait for its transfer's stream 0.
const ATTACH_WAIT: Duration = Duration::from_secs(10);

/// The whole-file SHA-256, computed once every chunk is in.
enum WholeHash {
    NotAsked,
    Asked,
    Done([u8; 32]),
}

/// A file being received.
struct Transfer {
    id: u64,
    file_id: u64,
    name: String,
    /// A read-only map of the part file, for the hashing thread.
    read: Arc<ReadMap>,
    /// Chunks in, waiting for their SHA-256 check, with the sender's digest.
    pending: HashMap<u32, [u8; 32]>,
    whole: WholeHash,
    part: PathBuf,
    state_path: PathBuf,
    final_path: PathBuf,
    file: File,
    map: WriteMap,
    state: ResumeState,
    dirty: bool,
    last_save: Instant,
    started: Instant,
    bytes: u64,
    resumed: usize,
    finished: bool,
}

/// A chunk arriving on a stream.
struct Incoming {
    index: u32,
    at: usize,
    digest: [u8; 32],
}

/// One accepted stream.
struct Conn {
    s: Stream,
    inbuf: Vec<u8>,
    transfer: Option<u64>,
    waiting: Option<(Hello, Instant)>,
    data: Option<Incoming>,
    out: Vec<u8>,
    closing: bool,
    /// The sender's `End` (its file's SHA-256), held until the data
    /// streams have delivered everything.
    end: Option<[u8; 32]>,
}

impl Recv {
    /// Runs the receiver until killed (or one file completes, with `--once`).
    pub fn run(self) -> Result<(), Fail> {
        let meta = fs::metadata(&self.dir)
            .map_err(|e| Fail::msg(format!("{}: {e}; create the directory first", self.dir.display())))?;
        if !meta.is_dir() {
            return Err(Fail::msg(format!("{} is not a directory", self.dir.display())));
        }
        let rt_args = default_transport(&self.rt, self.join.wanted());
        let rt = rt_args.build(Driving::Inline, self.poll.into())?;
        let node = if self.join.wanted() { Some(self.join.join(&rt)?) } else { None };
        let l = Accepting::bind(&rt, self.listen, rt_args.transport(), node.as_ref())?;
        xsock_nic::sys::catch_interrupts()?;
        log::info!("receiving files into {} on {l}", self.dir.display());
        let mut conns: Vec<Conn> = Vec::new();
        let mut transfers: HashMap<u64, Transfer> = HashMap::new();
        let mut buf = vec![0u8; 64 << 10];
        let hasher = Hasher::new()?;
        while !xsock_nic::sys::interrupted() {
            let mut work = rt.poll()?;
            match l.try_accept() {
                Ok(s) => {
                    work += 1;
                    conns.push(Conn {
                        s,
                        inbuf: Vec::new(),
                        transfer: None,
                        waiting: None,
                        data: None,
                        out: Vec::new(),
                        closing: false,
                        end: None,
                    });
                }
                Err(Error::WouldBlock) => {}
                Err(e) => log::warn!("accept: {e}"),
            }
            let mut completed = false;
            while let Some(((id, index), digest)) = hasher.try_result() {
                work += 1;
                if let Some(t) = transfers.get_mut(&id) {
                    t.checked(index, digest);
                }
            }
            conns.retain_mut(|c| match self.drive(c, &mut transfers, &mut buf, &mut work, &hasher) {
                Ok(true) => true,
                Ok(false) => false,
                Err(e) => {
                    log::warn!("stream from {}: {e}", c.s.peer_addr());
                    false
                }
            });
            // An `End` is answered once the transfer's other streams have
            // all ended (the sender half-closes them after its last chunk):
            // only then is everything that was sent in.
            for i in 0..conns.len() {
                let (Some(sha), Some(id)) = (conns[i].end, conns[i].transfer) else { continue };
                if conns.iter().enumerate().any(|(j, o)| j != i && o.transfer == Some(id)) {
                    continue;
                }
                let Some(t) = transfers.get_mut(&id) else { continue };
                let whole = match t.whole {
                    _ if !t.pending.is_empty() => continue,
                    WholeHash::NotAsked => {
                        hasher.submit(Job { tag: (id, None), map: t.read.clone(), range: 0..t.read.bytes().len() });
                        t.whole = WholeHash::Asked;
                        continue;
                    }
                    WholeHash::Asked => continue,
                    WholeHash::Done(d) => d,
                };
                let done = t.finish(sha, whole);
                let c = &mut conns[i];
                wire::emit(&done, &mut c.out);
                c.end = None;
                c.closing = true;
                work += 1;
            }
            let now = Instant::now();
            transfers.retain(|id, t| {
                let attached = conns.iter().any(|c| c.transfer == Some(*id));
                if t.finished {
                    completed = true;
                    return attached;
                }
                if !attached {
                    t.persist();
                    log::warn!(
                        "{}: interrupted with {} of {} chunks held; run the same `xsock send` again to resume",
                        t.name,
                        t.state.held_count(),
                        t.state.held.len()
                    );
                    return false;
                }
                if t.dirty && now.duration_since(t.last_save) >= SAVE_EVERY {
                    t.save_async();
                }
                true
            });
            if completed {
                for q in rt.queue_stats() {
                    log::debug!("datapath queue {}: {q:?}", q.queue);
                }
            }
            if completed && self.once && conns.is_empty() {
                return Ok(());
            }
            if work == 0 {
                rt.idle(Some(Duration::from_millis(100)))?;
            }
        }
        for t in transfers.values_mut().filter(|t| !t.finished) {
            t.persist();
            log::warn!("{}: stopped with {} of {} chunks held", t.name, t.state.held_count(), t.state.held.len());
        }
        Ok(())
    }

    /// Moves one stream along; `Ok(false)` when it is over.
    fn drive(
        &self,
        c: &mut Conn,
        transfers: &mut HashMap<u64, Transfer>,
        buf: &mut [u8],
        work: &mut usize,
        hasher: &Hasher,
    ) -> Result<bool, Fail> {
        if !c.out.is_empty() {
            match c.s.try_send(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                    *work += 1;
                }
                Err(Error::WouldBlock) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if c.closing {
            if c.out.is_empty() {
                c.s.shutdown_write()?;
                return Ok(false);
            }
            return Ok(true);
        }
        if let Some(id) = c.transfer
            && !transfers.contains_key(&id)
        {
            // A newer run of the same sender took the transfer over.
            return Ok(false);
        }
        if c.end.is_some() {
            return Ok(true);
        }
        if let Some((h, since)) = &c.waiting {
            if transfers.contains_key(&h.transfer) {
                c.transfer = Some(h.transfer);
                c.waiting = None;
            } else if since.elapsed() > ATTACH_WAIT {
                return Err(Fail::msg("a data stream's transfer never opened (its stream 0 did not arrive)"));
            } else {
                return Ok(true);
            }
        }
        loop {
            // Chunk bytes go straight into the file's map.
            if let Some(inc) = &mut c.data {
                let t = transfers.get_mut(&c.transfer.expect("a chunk needs a transfer")).expect("attached");
                let range = t.state.range(inc.index as usize);
                let n = match c.s.try_recv(t.map.slice_mut(range.start + inc.at..range.end)) {
                    Ok(0) => return Ok(false),
                    Ok(n) => n,
                    Err(Error::WouldBlock) => return Ok(true),
                    Err(e) => return Err(e.into()),
                };
                *work += 1;
                inc.at += n;
                t.bytes += n as u64;
                if range.start + inc.at == range.end {
                    t.chunk_arrived(inc.index, inc.digest, hasher);
                    c.data = None;
                }
                continue;
            }
            match wire::parse(&c.inbuf).map_err(|e| Fail::msg(e.to_string()))? {
                Some((msg, used)) => {
                    c.inbuf.drain(..used);
                    self.handle(c, msg, transfers)?;
                    if c.closing || c.waiting.is_some() {
                        return Ok(true);
                    }
                    self.spill_into_chunk(c, transfers, hasher);
                }
                None => {
                    let n = match c.s.try_recv(buf) {
                        Ok(0) => return Ok(false),
                        Ok(n) => n,
                        Err(Error::WouldBlock) => return Ok(true),
                        Err(e) => return Err(e.into()),
                    };
                    *work += 1;
                    c.inbuf.extend_from_slice(&buf[..n]);
                }
            }
        }
    }

    /// Bytes read past a chunk header belong to the chunk.
    fn spill_into_chunk(&self, c: &mut Conn, transfers: &mut HashMap<u64, Transfer>, hasher: &Hasher) {
        let (Some(inc), Some(id)) = (&mut c.data, c.transfer) else { return };
        let t = transfers.get_mut(&id).expect("attached");
        let range = t.state.range(inc.index as usize);
        let take = c.inbuf.len().min(range.len() - inc.at);
        if take == 0 {
            return;
        }
        t.map.slice_mut(range.start + inc.at..range.start + inc.at + take).copy_from_slice(&c.inbuf[..take]);
        c.inbuf.drain(..take);
        inc.at += take;
        t.bytes += take as u64;
        if inc.at == range.len() {
            t.chunk_arrived(inc.index, inc.digest, hasher);
            c.data = None;
        }
    }

    fn handle(&self, c: &mut Conn, msg: Msg, transfers: &mut HashMap<u64, Transfer>) -> Result<(), Fail> {
        match msg {
            Msg::Hello(h) if c.transfer.is_none() && c.waiting.is_none() => {
                if h.stream > 0 {
                    c.waiting = Some((h, Instant::now()));
                    return Ok(());
                }
                let busy =
                    transfers.iter().find(|(_, t)| t.name == h.name && !t.finished).map(|(&id, t)| (id, t.file_id));
                match busy {
                    // The same source sent again: its earlier run is gone
                    // (killed, or its link is), even if its streams have not
                    // timed out here yet. Keep what it delivered, take over.
                    Some((id, file_id)) if file_id == h.file_id => {
                        let mut old = transfers.remove(&id).expect("found");
                        old.persist();
                        log::info!("{}: a new run of the same sender takes over the transfer", h.name);
                    }
                    Some(_) => {
                        return refuse(c, format!("{} is being received from another sender right now", h.name));
                    }
                    None => {}
                }
                match Transfer::open(&self.dir, &h, self.overwrite) {
                    Ok(t) => {
                        wire::emit(&Msg::Ready { held: t.state.bitmap() }, &mut c.out);
                        c.transfer = Some(h.transfer);
                        transfers.insert(h.transfer, t);
                        Ok(())
                    }
                    Err(why) => {
                        log::warn!("refused {} from {}: {why}", h.name, c.s.peer_addr());
                        refuse(c, why)
                    }
                }
            }
            Msg::Chunk { index, len, digest } if c.transfer.is_some() => {
                let t = transfers.get(&c.transfer.expect("checked")).expect("attached");
                if index as usize >= t.state.held.len() || t.state.range(index as usize).len() != len as usize {
                    return refuse(c, format!("chunk {index} of {len} bytes does not fit {}", t.name));
                }
                c.data = Some(Incoming { index, at: 0, digest });
                Ok(())
            }
            Msg::End { sha256 } if c.transfer.is_some() => {
                // Answered once the data streams have ended (see `run`).
                c.end = Some(sha256);
                Ok(())
            }
            other => refuse(c, format!("unexpected message {other:?}")),
        }
    }
}

fn refuse(c: &mut Conn, why: String) -> Result<(), Fail> {
    wire::emit(&Msg::Refuse(why), &mut c.out);
    c.closing = true;
    Ok(())
}

impl Transfer {
    /// Opens (or resumes) the file `h` names in `dir`: a clear refusal for
    /// a name that exists, a disk too small, or a directory we cannot write.
    fn open(dir: &Path, h: &Hello, overwrite: bool) -> Result<Transfer, String> {
        let final_path = dir.join(&h.name);
        if final_path.exists() && !overwrite {
            return Err(format!(
                "{} already exists on the receiver; remove it there, or start `xsock recv` with --overwrite",
                final_path.display()
            ));
        }
        let part = dir.join(format!(".xsock-{}.part", h.name));
        let state_path = dir.join(format!(".xsock-{}.state", h.name));
        let previous = ResumeState::load(&state_path)
            .filter(|s| s.file_id == h.file_id && s.size == h.size && s.chunk_size == h.chunk_size);
        let resuming = previous.is_some() && part.exists();
        let allocated = if resuming { fs::metadata(&part).map_or(0, |m| m.len()) } else { 0 };
        let free = filemap::free_space(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let need = h.size.saturating_sub(allocated);
        if need > free {
            return Err(format!(
                "the receiver's disk is too small: {} has {} free and {} needs {} more; free space there or receive into another directory",
                dir.display(),
                human(free),
                h.name,
                human(need)
            ));
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!resuming)
            .open(&part)
            .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        filemap::allocate(&file, h.size).map_err(|e| match e.kind() {
            std::io::ErrorKind::StorageFull => format!(
                "the receiver's disk is full: {} cannot hold {} ({}); free space there or receive into another directory",
                dir.display(),
                h.name,
                human(h.size)
            ),
            _ => format!("cannot allocate {} for {}: {e}", human(h.size), part.display()),
        })?;
        let map = WriteMap::new(&file).map_err(|e| format!("cannot map {}: {e}", part.display()))?;
        let read = File::open(&part)
            .and_then(|f| ReadMap::new(&f))
            .map_err(|e| format!("cannot map {} for reading: {e}", part.display()))?;
        let mut state = previous.unwrap_or_else(|| ResumeState::new(h.file_id, h.size, h.chunk_size));
        // Held chunks are checked again: a crash may have lost pages the
        // state already counted.
        for i in 0..state.held.len() {
            if let Some(d) = state.held[i]
                && Sha256::digest(&map.bytes()[state.range(i)]).as_slice() != d
            {
                state.held[i] = None;
            }
        }
        let resumed = state.held_count();
        log::info!(
            "receiving {} ({}, {} chunks{}) into {}",
            h.name,
            human(h.size),
            state.held.len(),
            if resumed > 0 { format!(", resuming with {resumed} held") } else { String::new() },
            dir.display()
        );
        Ok(Transfer {
            id: h.transfer,
            file_id: h.file_id,
            name: h.name.clone(),
            read: Arc::new(read),
            pending: HashMap::new(),
            whole: WholeHash::NotAsked,
            part,
            state_path,
            final_path,
            file,
            map,
            state,
            dirty: false,
            last_save: Instant::now(),
            started: Instant::now(),
            bytes: 0,
            resumed,
            finished: false,
        })
    }

    /// A chunk is in: its check runs on the hashing thread.
    fn chunk_arrived(&mut self, index: u32, digest: [u8; 32], hasher: &Hasher) {
        let range = self.state.range(index as usize);
        self.pending.insert(index, digest);
        hasher.submit(Job { tag: (self.id, Some(index)), map: self.read.clone(), range });
    }

    /// A digest from the hashing thread: a chunk's (held if it matches the
    /// sender's), or the whole file's.
    fn checked(&mut self, index: Option<u32>, digest: [u8; 32]) {
        let Some(index) = index else {
            self.whole = WholeHash::Done(digest);
            return;
        };
        match self.pending.remove(&index) {
            Some(want) if want == digest => {
                self.state.held[index as usize] = Some(digest);
                self.dirty = true;
            }
            Some(_) => log::warn!("{}: chunk {index} failed its SHA-256 check; it stays missing", self.name),
            None => {}
        }
    }

    /// The sender says it sent everything and every check is done:
    /// complete the file, or say why not.
    fn finish(&mut self, sender_sha: [u8; 32], sha: [u8; 32]) -> Msg {
        self.whole = WholeHash::NotAsked;
        let missing = self.state.held.len() - self.state.held_count();
        let failure = if missing > 0 {
            Some(format!("{missing} chunks missing or failed their check; run the same send again to resume"))
        } else if sha != sender_sha {
            Some(format!("the file's SHA-256 {} differs from the sender's {}", hex(&sha), hex(&sender_sha)))
        } else {
            None
        };
        if let Some(why) = failure {
            self.persist();
            log::warn!("{}: {why}", self.name);
            return Msg::Done { ok: false, sha256: sha, message: why };
        }
        let done = self
            .map
            .flush()
            .and_then(|()| self.file.sync_all())
            .and_then(|()| fs::rename(&self.part, &self.final_path));
        if let Err(e) = done {
            let why = format!("could not complete {}: {e}", self.final_path.display());
            self.persist();
            return Msg::Done { ok: false, sha256: sha, message: why };
        }
        let _ = fs::remove_file(&self.state_path);
        self.finished = true;
        let secs = self.started.elapsed().as_secs_f64();
        log::info!(
            "{}: complete, SHA-256 {} ({} this run in {secs:.1} s, {:.3} Gbit/s; {} chunks resumed)",
            self.final_path.display(),
            hex(&sha),
            human(self.bytes),
            self.bytes as f64 * 8.0 / secs.max(1e-9) / 1e9,
            self.resumed
        );
        Msg::Done { ok: true, sha256: sha, message: String::new() }
    }

    /// Writes the resume state after scheduling the data's write-back (the
    /// pages are in the page cache already: a killed process loses none).
    fn save_async(&mut self) {
        if let Err(e) = self.state.save(&self.state_path) {
            log::warn!("{}: resume state not saved: {e}", self.state_path.display());
        }
        self.dirty = false;
        self.last_save = Instant::now();
    }

    /// Flushes the data to disk, then saves the state: what it claims is on disk.
    fn persist(&mut self) {
        if let Err(e) = self.map.flush() {
            log::warn!("{}: {e}", self.part.display());
        }
        self.save_async();
    }
}
