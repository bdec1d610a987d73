//! A one-name DNS server, so a test can move the hub behind its name.

#[allow(clippy::wildcard_imports)]
use super::*;

/// A DNS server for one name, so a test can move it: answers A queries for
/// `name` with the address written in `file` (TTL 0), other queries with no
/// answer.
pub(crate) fn dns_server(
    name: &str,
    file: &std::path::Path,
    seconds: u64,
    ready: Option<PathBuf>,
) -> Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 53)).context("cannot bind 127.0.0.1:53")?;
    announce(ready)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let wanted: Vec<u8> = name
        .trim_end_matches('.')
        .split('.')
        .flat_map(|label| {
            std::iter::once(label.len() as u8).chain(label.bytes().map(|b| b.to_ascii_lowercase()))
        })
        .chain(std::iter::once(0))
        .collect();
    let mut buf = [0u8; 512];
    let mut answered = 0u64;
    while Instant::now() < deadline {
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let query = &buf[..n];
        // Header (12 bytes), one question: QNAME, QTYPE, QCLASS.
        if n < 12 + wanted.len() + 4 {
            continue;
        }
        let qname = query[12..12 + wanted.len()].to_ascii_lowercase();
        let qtype = &query[12 + wanted.len()..12 + wanted.len() + 2];
        let question = &query[12..12 + wanted.len() + 4];
        let mut reply = Vec::with_capacity(64);
        reply.extend_from_slice(&query[..2]); // ID
        reply.extend_from_slice(&[0x81, 0x80]); // response, recursion available
        reply.extend_from_slice(&[0, 1]); // one question
        let address = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse::<Ipv4Addr>().ok());
        let answer = (qname == wanted && qtype == [0, 1])
            .then_some(address)
            .flatten();
        reply.extend_from_slice(&[0, u8::from(answer.is_some())]);
        reply.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
        reply.extend_from_slice(question);
        if let Some(addr) = answer {
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
            reply.extend_from_slice(&addr.octets());
            answered += 1;
        }
        let _ = socket.send_to(&reply, from);
    }
    emit(json!({"answered": answered}))
}
