//! A 100 packets/s ping stream in the background that counts every echo
//! request never answered: for the tests that claim nothing is lost.

use std::thread::JoinHandle;

use super::*;

/// Echo requests whose replies may still be on their way when a stream is
/// stopped (100 ms at 100 packets/s): not counted as lost.
pub const IN_FLIGHT: u32 = 10;

/// A 100 packets/s ping stream running in the background (at most `max`
/// packets, so it ends by itself if a test forgets it).
pub struct Stream {
    child: Option<Child>,
    out: Option<JoinHandle<Vec<u8>>>,
    what: String,
    started: Instant,
}

/// What a stream did: requests sent, and the sequence numbers of those
/// never answered (the last [`IN_FLIGHT`] excepted).
#[derive(Debug)]
pub struct Streamed {
    /// Packets sent a second, on average.
    pub rate: f64,
    /// Echo requests sent.
    pub sent: u32,
    /// Requests answered.
    pub answered: u32,
    /// Sequence numbers never answered.
    pub lost: Vec<u32>,
}

impl Stream {
    /// Starts `ping -i 0.01` from `ns` to `addr`, `max` packets at most.
    pub fn start(t: &Topology, ns: &str, addr: &str, max: u32) -> Self {
        let max = max.to_string();
        let mut child = t
            .command(
                ns,
                &["ping", "-n", "-i", "0.01", "-W", "1", "-c", &max, addr],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ping");
        let mut stdout = child.stdout.take().expect("ping's stdout");
        let out = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stdout.read_to_end(&mut buf);
            buf
        });
        Stream {
            child: Some(child),
            out: Some(out),
            what: format!("ping {addr} from {ns}"),
            started: Instant::now(),
        }
    }

    /// Stops the stream (SIGINT: ping prints its summary) and counts.
    pub fn stop(mut self) -> Streamed {
        let mut child = self.child.take().expect("a running stream");
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        let start = Instant::now();
        while matches!(child.try_wait(), Ok(None)) {
            if start.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
        let out = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&out);
        let sent: u32 = text
            .lines()
            .find_map(|l| l.split_once(" packets transmitted"))
            .and_then(|(n, _)| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no summary in {text:?}", self.what));
        let mut seen = vec![false; sent as usize + 1];
        let mut answered = 0;
        for line in text.lines().filter(|l| l.contains("bytes from")) {
            let seq = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq="))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(slot) = seq.and_then(|s| seen.get_mut(s)) {
                if !*slot {
                    answered += 1;
                }
                *slot = true;
            }
        }
        let lost = (1..=sent.saturating_sub(IN_FLIGHT))
            .filter(|s| !seen[*s as usize])
            .collect();
        Streamed {
            rate: f64::from(sent) / self.started.elapsed().as_secs_f64(),
            sent,
            answered,
            lost,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The loss of a stream as a short text: how many, and the first few.
pub fn loss(s: &Streamed) -> String {
    let first: Vec<u32> = s.lost.iter().take(20).copied().collect();
    format!(
        "{} of {} sent ({:.0}/s) lost ({} answered), first lost icmp_seq {first:?}",
        s.lost.len(),
        s.sent,
        s.rate,
        s.answered
    )
}
