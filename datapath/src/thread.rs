//! Driving a datapath from a dedicated thread.
//!
//! The thread owns the [`Datapath`] and runs its poll loop (busy, adaptive
//! or sleeping, per its [`PollMode`](crate::PollMode)). Other threads reach
//! it two ways: [`DatapathThread::call`] runs a closure on the datapath
//! thread and returns its result (register handlers, read state, send), and
//! handlers such as [`crate::ChannelHandler`] move frames over crossbeam
//! channels. Every message is followed by a wake-up, so a sleeping loop
//! answers at once.

use std::{thread::JoinHandle, time::Duration};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::{
    Error,
    counters::Counters,
    poll::{Datapath, Waker},
};

type Command = Box<dyn FnOnce(&mut Datapath) + Send>;

enum Message {
    Run(Command),
    Stop,
}

/// A datapath running on its own thread.
pub struct DatapathThread {
    commands: Sender<Message>,
    waker: Waker,
    counters: Counters,
    join: Option<JoinHandle<Result<Datapath, Error>>>,
}

impl std::fmt::Debug for DatapathThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatapathThread").finish_non_exhaustive()
    }
}

impl Datapath {
    /// Moves the datapath to a new thread named `name` and starts its loop.
    pub fn spawn(self, name: &str) -> Result<DatapathThread, Error> {
        let (tx, rx) = unbounded::<Message>();
        let waker = self.waker();
        let counters = self.counters();
        let join = std::thread::Builder::new().name(name.to_owned()).spawn(move || run(self, rx)).map_err(Error::Io)?;
        Ok(DatapathThread { commands: tx, waker, counters, join: Some(join) })
    }
}

fn run(mut dp: Datapath, commands: Receiver<Message>) -> Result<Datapath, Error> {
    loop {
        let mut work = 0;
        loop {
            match commands.try_recv() {
                Ok(Message::Run(f)) => {
                    f(&mut dp);
                    work += 1;
                }
                Ok(Message::Stop) | Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    return Ok(dp);
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
            }
        }
        work += dp.poll().map_err(Error::Io)?;
        if work == 0 {
            // Commands ring the waker, so an indefinite sleep is safe.
            dp.idle(None).map_err(Error::Io)?;
        }
    }
}

impl DatapathThread {
    /// Runs `f` on the datapath thread and returns its result.
    pub fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut Datapath) -> R + Send + 'static) -> Result<R, Error> {
        self.call_within(None, f)
    }

    /// Like [`DatapathThread::call`], giving up after `timeout`.
    pub fn call_timeout<R: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut Datapath) -> R + Send + 'static,
    ) -> Result<R, Error> {
        self.call_within(Some(timeout), f)
    }

    fn call_within<R: Send + 'static>(
        &self,
        timeout: Option<Duration>,
        f: impl FnOnce(&mut Datapath) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let (tx, rx) = bounded(1);
        self.commands
            .send(Message::Run(Box::new(move |dp| {
                let _ = tx.send(f(dp));
            })))
            .map_err(|_| Error::Stopped)?;
        self.waker.wake();
        match timeout {
            None => rx.recv().map_err(|_| Error::Stopped),
            Some(t) => rx.recv_timeout(t).map_err(|_| Error::Stopped),
        }
    }

    /// A waker for the datapath's sleeps (give it to code that feeds a
    /// handler through a channel).
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// The datapath's counters, readable from this thread.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Stops the loop and returns the datapath (or the error that ended it).
    pub fn stop(mut self) -> Result<Datapath, Error> {
        let _ = self.commands.send(Message::Stop);
        self.waker.wake();
        let join = self.join.take().expect("joined once");
        join.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl Drop for DatapathThread {
    fn drop(&mut self) {
        if let Some(join) = self.join.take() {
            let _ = self.commands.send(Message::Stop);
            self.waker.wake();
            let _ = join.join();
        }
    }
}
