//! Batches of outgoing datagrams laid out for one UDP GSO send.
//!
//! The kernel sends a buffer of equal-sized datagrams to one destination in
//! a single system call when told the segment size (`UDP_SEGMENT`); only the
//! last datagram may be shorter. [`Outbox`] collects the encrypted datagrams
//! of one pass of the data plane into such batches, so that a 64 KB TCP
//! super-packet read from the TUN leaves as one `sendmsg`, whatever mix of
//! destinations and sizes a pass produces. It never allocates once its
//! batches exist, and it does no I/O: the shell sends what it hands out.

/// Largest number of datagrams in one batch (the kernel's `UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = 64;

/// Largest total size of one batch: one UDP payload, with room for headers.
pub const MAX_BATCH_BYTES: usize = 65_000;

/// Room after the end of a batch for writing the next datagram in place:
/// any datagram a TUN can hand over (64 KiB) plus WireGuard's 32 bytes.
const SPARE: usize = 65_536 + 64;

/// Equal-sized datagrams (the last may be shorter) for one destination.
#[derive(Debug)]
pub struct Batch<D> {
    buf: Vec<u8>,
    len: usize,
    segment: usize,
    count: usize,
    dest: Option<D>,
    /// A shorter datagram ended the batch: nothing more may join.
    closed: bool,
}

impl<D: Copy + PartialEq> Batch<D> {
    fn new() -> Self {
        Self {
            buf: vec![0; MAX_BATCH_BYTES + SPARE],
            len: 0,
            segment: 0,
            count: 0,
            dest: None,
            closed: false,
        }
    }

    /// Where the datagrams go (`None` while empty).
    pub fn destination(&self) -> Option<D> {
        self.dest
    }

    /// The datagrams, back to back.
    pub fn contents(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Size of every datagram but the last.
    pub fn segment_size(&self) -> usize {
        self.segment
    }

    /// Number of datagrams.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The datagrams one by one (for sockets without GSO).
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.contents().chunks(self.segment.max(1))
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether a datagram of `len` bytes to `dest` may join.
    fn accepts(&self, dest: D, len: usize) -> bool {
        if self.is_empty() {
            return true;
        }
        !self.closed
            && self.dest == Some(dest)
            && self.count < MAX_SEGMENTS
            && len <= self.segment
            && self.len + len <= MAX_BATCH_BYTES
    }

    fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Takes the `len` bytes written at the spare area as the next datagram.
    fn commit(&mut self, dest: D, len: usize) {
        if self.is_empty() {
            self.segment = len;
            self.dest = Some(dest);
        } else if len < self.segment {
            self.closed = true;
        }
        self.len += len;
        self.count += 1;
    }

    fn clear(&mut self) {
        self.len = 0;
        self.count = 0;
        self.segment = 0;
        self.dest = None;
        self.closed = false;
    }
}

/// The datagrams one pass of the data plane will send, grouped into batches.
///
/// Use: write a datagram into [`Outbox::spare`], then [`Outbox::commit`] it
/// with its destination; after the pass, send every batch of
/// [`Outbox::batches`] and [`Outbox::clear`].
#[derive(Debug)]
pub struct Outbox<D> {
    batches: Vec<Batch<D>>,
    /// Batches in use this pass; the last one is open.
    used: usize,
}

impl<D: Copy + PartialEq> Default for Outbox<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Copy + PartialEq> Outbox<D> {
    /// An empty outbox with one batch ready.
    pub fn new() -> Self {
        Self {
            batches: vec![Batch::new()],
            used: 1,
        }
    }

    /// Room to write the next datagram into (at least 64 KiB).
    pub fn spare(&mut self) -> &mut [u8] {
        self.batches[self.used - 1].spare()
    }

    /// Adds the `len` bytes just written to [`Outbox::spare`] as a datagram
    /// to `dest`. Returns false (and drops it) when `len` is larger than a
    /// batch may be.
    pub fn commit(&mut self, dest: D, len: usize) -> bool {
        if len == 0 || len > MAX_BATCH_BYTES {
            return false;
        }
        let open = self.used - 1;
        if self.batches[open].accepts(dest, len) {
            self.batches[open].commit(dest, len);
            return true;
        }
        // Start the next batch and move the datagram there.
        if self.used == self.batches.len() {
            self.batches.push(Batch::new());
        }
        let (done, rest) = self.batches.split_at_mut(self.used);
        let from = &done[open];
        let next = &mut rest[0];
        next.clear();
        next.buf[..len].copy_from_slice(&from.buf[from.len..from.len + len]);
        next.commit(dest, len);
        self.used += 1;
        true
    }

    /// Copies `datagram` in and commits it (for packets made elsewhere).
    pub fn push(&mut self, dest: D, datagram: &[u8]) -> bool {
        let spare = self.spare();
        let Some(slot) = spare.get_mut(..datagram.len()) else {
            return false;
        };
        slot.copy_from_slice(datagram);
        self.commit(dest, datagram.len())
    }

    /// The batches with something to send.
    pub fn batches(&self) -> impl Iterator<Item = &Batch<D>> {
        self.batches[..self.used].iter().filter(|b| !b.is_empty())
    }

    /// Number of datagrams waiting.
    pub fn len(&self) -> usize {
        self.batches().map(Batch::count).sum()
    }

    /// True when nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.batches().next().is_none()
    }

    /// Every datagram with its destination, oldest first, and the outbox
    /// emptied: for a driver that is not a socket (tests, the simulator).
    pub fn take_all(&mut self) -> Vec<(D, Vec<u8>)> {
        let all = self
            .batches()
            .flat_map(|b| {
                let to = b.destination();
                b.datagrams()
                    .filter_map(move |d| to.map(|to| (to, d.to_vec())))
                    .collect::<Vec<_>>()
            })
            .collect();
        self.clear();
        all
    }

    /// Forgets everything sent; keeps the buffers.
    pub fn clear(&mut self) {
        for b in &mut self.batches[..self.used] {
            b.clear();
        }
        self.used = 1;
    }
}

/// The datagrams of one received buffer: the kernel's GRO hands over several
/// datagrams of `stride` bytes back to back (the last may be shorter).
pub fn split_received(buf: &[u8], stride: usize) -> impl Iterator<Item = &[u8]> {
    buf.chunks(if stride == 0 {
        buf.len().max(1)
    } else {
        stride
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(outbox: &mut Outbox<u8>, dest: u8, len: usize, fill: u8) -> bool {
        let spare = outbox.spare();
        spare[..len].fill(fill);
        outbox.commit(dest, len)
    }

    fn shape(outbox: &Outbox<u8>) -> Vec<(u8, usize, usize, usize)> {
        outbox
            .batches()
            .map(|b| {
                (
                    b.destination().unwrap(),
                    b.segment_size(),
                    b.count(),
                    b.contents().len(),
                )
            })
            .collect()
    }

    #[test]
    fn equal_datagrams_to_one_destination_share_a_batch() {
        let mut o = Outbox::new();
        for i in 0..10 {
            assert!(put(&mut o, 1, 1452, i));
        }
        assert_eq!(shape(&o), vec![(1, 1452, 10, 14520)]);
        let b = o.batches().next().unwrap();
        let parts: Vec<_> = b.datagrams().collect();
        assert_eq!(parts.len(), 10);
        for (i, p) in parts.iter().enumerate() {
            assert!(p.iter().all(|x| *x == i as u8), "datagram {i} intact");
        }
    }

    #[test]
    fn a_shorter_datagram_ends_the_batch() {
        let mut o = Outbox::new();
        put(&mut o, 1, 1000, 1);
        put(&mut o, 1, 1000, 2);
        put(&mut o, 1, 600, 3);
        put(&mut o, 1, 1000, 4);
        assert_eq!(shape(&o), vec![(1, 1000, 3, 2600), (1, 1000, 1, 1000)]);
        let first: Vec<_> = o.batches().next().unwrap().datagrams().collect();
        assert_eq!(first[2].len(), 600);
        assert!(first[2].iter().all(|x| *x == 3));
        let second = o.batches().nth(1).unwrap().contents();
        assert!(second.iter().all(|x| *x == 4), "moved intact");
    }

    #[test]
    fn a_longer_datagram_or_another_destination_starts_a_batch() {
        let mut o = Outbox::new();
        put(&mut o, 1, 100, 1);
        put(&mut o, 1, 200, 2);
        put(&mut o, 2, 200, 3);
        put(&mut o, 1, 200, 4);
        assert_eq!(
            shape(&o),
            vec![
                (1, 100, 1, 100),
                (1, 200, 1, 200),
                (2, 200, 1, 200),
                (1, 200, 1, 200)
            ]
        );
    }

    #[test]
    fn segment_and_byte_limits_hold() {
        let mut o = Outbox::new();
        for _ in 0..(MAX_SEGMENTS + 5) {
            put(&mut o, 7, 100, 0);
        }
        let counts: Vec<_> = o.batches().map(|b| b.count()).collect();
        assert_eq!(counts, vec![MAX_SEGMENTS, 5]);
        o.clear();
        assert!(o.is_empty());
        for _ in 0..50 {
            put(&mut o, 7, 1452, 0);
        }
        for b in o.batches() {
            assert!(b.contents().len() <= MAX_BATCH_BYTES);
            assert!(b.count() <= MAX_SEGMENTS);
        }
        assert_eq!(o.batches().map(|b| b.count()).sum::<usize>(), 50);
        assert_eq!(o.len(), 50);
    }

    #[test]
    fn buffers_are_reused_after_clear() {
        let mut o = Outbox::new();
        for d in 0..20u8 {
            put(&mut o, d, 64, d);
        }
        assert_eq!(o.batches().count(), 20);
        o.clear();
        assert!(o.is_empty());
        put(&mut o, 3, 64, 9);
        assert_eq!(shape(&o), vec![(3, 64, 1, 64)]);
        assert_eq!(o.batches.len(), 20, "no new buffers");
    }

    #[test]
    fn oversized_or_empty_datagrams_are_refused() {
        let mut o = Outbox::new();
        assert!(!o.commit(1, 0));
        assert!(!o.commit(1, MAX_BATCH_BYTES + 1));
        assert!(o.push(1, &[1, 2, 3]));
        assert!(!o.push(1, &vec![0; 200_000]));
        assert_eq!(shape(&o), vec![(1, 3, 1, 3)]);
    }

    #[test]
    fn received_buffers_split_by_stride() {
        let buf: Vec<u8> = (0..25).collect();
        let parts: Vec<_> = split_received(&buf, 10).collect();
        assert_eq!(parts, vec![&buf[..10], &buf[10..20], &buf[20..]]);
        assert_eq!(split_received(&buf, 0).count(), 1);
        assert_eq!(split_received(&[], 10).count(), 0);
    }
}
