//! What every datagram transport counts and reports under the same names, and
//! the one way a frame's slices become a contiguous datagram.

use bytes::BufMut;
use strata_stack::Stats;

/// Datagrams and bytes in and out, and sends dropped because the receiving
/// queue or the socket buffer was full.
#[derive(Default, Debug, Clone)]
pub(crate) struct DatagramCounters {
    datagrams_sent: u64,
    bytes_sent: u64,
    datagrams_received: u64,
    bytes_received: u64,
    send_drops: u64,
}

impl DatagramCounters {
    pub(crate) fn sent(&mut self, bytes: usize) {
        self.datagrams_sent += 1;
        self.bytes_sent += bytes as u64;
    }

    pub(crate) fn received(&mut self, bytes: usize) {
        self.datagrams_received += 1;
        self.bytes_received += bytes as u64;
    }

    pub(crate) fn send_dropped(&mut self) {
        self.send_drops += 1;
    }

    pub(crate) fn report(&self, out: &mut Stats) {
        out.add("datagrams_sent", self.datagrams_sent)
            .add("bytes_sent", self.bytes_sent)
            .add("datagrams_received", self.datagrams_received)
            .add("bytes_received", self.bytes_received)
            .add("send_drops", self.send_drops);
    }
}

/// The length of a frame given as slices.
pub(crate) fn frame_len(frame: &[&[u8]]) -> usize {
    frame.iter().map(|s| s.len()).sum()
}

/// Appends a frame's slices to `out`, in order.
pub(crate) fn join_frame(frame: &[&[u8]], out: &mut impl BufMut) {
    for s in frame {
        out.put_slice(s);
    }
}
