//! A wrapper that records every frame a device receives and transmits in a
//! pcap file (link type Ethernet), for reading with tcpdump or Wireshark.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    os::fd::BorrowedFd,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::device::{DeviceInfo, DeviceStats, FrameDevice, FrameSink, RxFrame, TxError};

struct PcapFile {
    out: BufWriter<File>,
}

impl PcapFile {
    fn create(path: &Path, snaplen: u32) -> io::Result<Self> {
        let mut out = BufWriter::new(File::create(path)?);
        // Global header: magic, version 2.4, thiszone, sigfigs, snaplen, LINKTYPE_ETHERNET.
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&0i32.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        out.write_all(&snaplen.to_le_bytes())?;
        out.write_all(&1u32.to_le_bytes())?;
        Ok(Self { out })
    }

    fn record<'a>(&mut self, len: usize, parts: impl Iterator<Item = &'a [u8]>) {
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let write = || -> io::Result<()> {
            self.out.write_all(&(ts.as_secs() as u32).to_le_bytes())?;
            self.out.write_all(&ts.subsec_micros().to_le_bytes())?;
            self.out.write_all(&(len as u32).to_le_bytes())?;
            self.out.write_all(&(len as u32).to_le_bytes())?;
            for p in parts {
                self.out.write_all(p)?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            log::warn!("pcap write failed: {e}");
        }
    }
}

/// Records the frames of the wrapped device to a pcap file.
pub struct PcapWriter<D> {
    inner: D,
    file: PcapFile,
}

impl<D: FrameDevice> PcapWriter<D> {
    /// Wraps `inner`, writing to a new file at `path`.
    pub fn new(inner: D, path: &Path) -> io::Result<Self> {
        let snaplen = inner.info().max_frame as u32;
        Ok(Self { inner, file: PcapFile::create(path, snaplen)? })
    }

    /// Flushes buffered records to the file.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.out.flush()
    }
}

struct Tap<'a> {
    file: &'a mut PcapFile,
    inner: &'a mut dyn FrameSink,
}

fn tap_transmit(
    file: &mut PcapFile,
    inner: &mut dyn FrameSink,
    max_len: usize,
    fill: &mut dyn FnMut(&mut [u8]) -> usize,
) -> Result<usize, TxError> {
    inner.transmit_with(max_len, &mut |buf| {
        let len = fill(buf).min(buf.len());
        if len > 0 {
            file.record(len, std::iter::once(&buf[..len]));
        }
        len
    })
}

impl FrameSink for Tap<'_> {
    fn transmit_with(&mut self, max_len: usize, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<usize, TxError> {
        tap_transmit(self.file, self.inner, max_len, fill)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
    fn tx_space(&self) -> usize {
        self.inner.tx_space()
    }
}

impl<D: FrameDevice> FrameSink for PcapWriter<D> {
    fn transmit_with(&mut self, max_len: usize, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<usize, TxError> {
        tap_transmit(&mut self.file, self.inner.sink(), max_len, fill)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.sink().flush()?;
        self.file.out.flush()
    }
    fn tx_space(&self) -> usize {
        1
    }
}

impl<D: FrameDevice> FrameDevice for PcapWriter<D> {
    fn ipv4_filter(&self) -> Option<std::sync::Arc<crate::xdp::XdpFilter>> {
        self.inner.ipv4_filter()
    }

    fn receive(
        &mut self,
        budget: usize,
        on_frame: &mut dyn FnMut(RxFrame<'_>, &mut dyn FrameSink),
    ) -> io::Result<usize> {
        let file = &mut self.file;
        self.inner.receive(budget, &mut |frame, sink| {
            file.record(frame.len(), frame.segments());
            on_frame(frame, &mut Tap { file: &mut *file, inner: sink });
        })
    }
    fn sink(&mut self) -> &mut dyn FrameSink {
        self
    }
    fn readiness_fd(&self) -> BorrowedFd<'_> {
        self.inner.readiness_fd()
    }
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let _ = self.file.out.flush();
        self.inner.wait(timeout)
    }
    fn info(&self) -> &DeviceInfo {
        self.inner.info()
    }
    fn stats(&self) -> DeviceStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{MemConfig, MemDevice};

    #[test]
    fn records_both_directions_in_pcap_format() {
        let dir = std::env::temp_dir().join(format!("xsock-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcap");
        let (a, mut b) = MemDevice::pair(&MemConfig::default()).unwrap();
        let mut a = PcapWriter::new(a, &path).unwrap();
        a.transmit(60, &mut |f| f[0] = 0xaa).unwrap();
        b.sink().transmit(70, &mut |f| f[0] = 0xbb).unwrap();
        a.receive(8, &mut |_, _| {}).unwrap();
        a.sync().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], &0xa1b2_c3d4u32.to_le_bytes());
        // 24-byte header + two records of 16-byte header + data.
        assert_eq!(bytes.len(), 24 + 16 + 60 + 16 + 70);
        assert_eq!(bytes[24 + 16], 0xaa);
        assert_eq!(bytes[24 + 16 + 60 + 16], 0xbb);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
