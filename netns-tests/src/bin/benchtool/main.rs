//! `tasuki-benchtool`: simulated control-plane clients for `scripts/bench`.
//!
//! `enrol` makes many spokes enrol with a running hub, the way real spokes
//! do: each invitation comes from the hub's admin socket (the same JSON
//! request `tasuki-hub spoke invite --pre-approved --service` sends), and each
//! enrolment is the real Noise handshake keyed by the invitation secret, with
//! the hub key pinned, an enrolment request, the hub's welcome and first key,
//! and the receipt report. Nothing is stored on the client side: the point is
//! the hub's state (memory) with that many enrolled spokes.
//!
//! Prints one JSON line: how many were asked for, how many enrolled, how many
//! failed, the time taken and the first error seen.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tasuki_core::admin_api::{Envelope, InvitationView, Reply};
use tasuki_core::admin_calls as calls;
use tasuki_core::channel::{Channel, Initiator};
use tasuki_core::codec::{encode_frame, FrameDecoder};
use tasuki_core::control::{Hello, HubMessage, Purpose, SpokeMessage};
use tasuki_core::invitation::Invitation;
use tasuki_core::keys::StaticKey;

mod keys;

const USAGE: &str = "\
usage: tasuki-benchtool enrol --admin-socket PATH --count N [--concurrency C]
                              [--prefix NAME] [--seconds LIMIT]
       tasuki-benchtool key-messages --members N

  key-messages
          the key messages (epoch deliveries, switches) one rotation costs the
          hub for N members keyed as one group, and with a pair epoch for each
          of their N(N-1)/2 pairs, run on the hub's own schedules. Prints
          {\"members\":N,\"group\":{..},\"pairs\":{..}}.

  enrol   create N invitations (pre-approved service spokes) through the hub's
          admin socket and enrol each with the real Noise enrolment, C at a
          time (default 8); stop early after LIMIT seconds (default 600).
          Spoke names are PREFIX-0, PREFIX-1, ... (default prefix: sim).
          Prints {\"requested\":N,\"enrolled\":N,\"failed\":N,\"seconds\":S,
          \"stopped_early\":B,\"first_error\":E}.";

/// Per-step network timeout.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The parsed `enrol` arguments.
struct EnrolArgs {
    admin_socket: PathBuf,
    count: u64,
    concurrency: u64,
    prefix: String,
    seconds: u64,
}

fn parse(args: &[String]) -> Result<EnrolArgs, String> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err("no command".into());
    };
    if cmd != "enrol" {
        return Err(format!("unknown command {cmd:?}"));
    }
    let mut admin_socket = None;
    let mut count = None;
    let mut concurrency = 8;
    let mut prefix = "sim".to_string();
    let mut seconds = 600;
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .clone();
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v:?}"))
        };
        match flag.as_str() {
            "--admin-socket" => admin_socket = Some(PathBuf::from(value)),
            "--count" => count = Some(number(&value)?),
            "--concurrency" => concurrency = number(&value)?.max(1),
            "--prefix" => prefix = value,
            "--seconds" => seconds = number(&value)?,
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(EnrolArgs {
        admin_socket: admin_socket.ok_or("--admin-socket is required")?,
        count: count.ok_or("--count is required")?,
        concurrency,
        prefix,
        seconds,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.first().map(String::as_str) == Some("key-messages") {
        let members = match args.as_slice() {
            [_, flag, n] if flag == "--members" => n.parse::<u32>().ok().filter(|n| *n >= 2),
            _ => None,
        };
        let Some(n) = members else {
            eprintln!("tasuki-benchtool: key-messages --members N (N ≥ 2)\n\n{USAGE}");
            return ExitCode::from(2);
        };
        return finish(keys::key_messages(n));
    }
    let parsed = match parse(&args) {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("tasuki-benchtool: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    finish(enrol_many(&parsed))
}

/// Prints a command's summary line, or its error (exit status 1).
fn finish(result: Result<String>) -> ExitCode {
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tasuki-benchtool: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the workers and returns the summary line.
fn enrol_many(args: &EnrolArgs) -> Result<String> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let next = Arc::new(AtomicU64::new(0));
    let enrolled = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stopped_early = Arc::new(AtomicBool::new(false));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let workers: Vec<_> = (0..args.concurrency.min(args.count.max(1)))
        .map(|_| {
            let (next, enrolled, failed, stopped_early, first_error) = (
                next.clone(),
                enrolled.clone(),
                failed.clone(),
                stopped_early.clone(),
                first_error.clone(),
            );
            let socket = args.admin_socket.clone();
            let prefix = args.prefix.clone();
            let count = args.count;
            std::thread::spawn(move || loop {
                if Instant::now() >= deadline {
                    stopped_early.store(true, Ordering::Relaxed);
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                match enrol_one(&socket, &format!("{prefix}-{i}")) {
                    Ok(()) => {
                        enrolled.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // Many failures in a row mean the hub is gone: give up.
                        if failed.fetch_add(1, Ordering::Relaxed) > 100 {
                            stopped_early.store(true, Ordering::Relaxed);
                            return;
                        }
                        let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        if w.join().is_err() {
            bail!("a worker thread panicked");
        }
    }
    let first = first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(json!({
        "requested": args.count,
        "enrolled": enrolled.load(Ordering::Relaxed),
        "failed": failed.load(Ordering::Relaxed),
        "seconds": start.elapsed().as_secs_f64(),
        "stopped_early": stopped_early.load(Ordering::Relaxed),
        "first_error": first,
    })
    .to_string())
}

/// One request on the hub's admin socket (one JSON line each way).
fn admin_invite(socket: &Path, name: &str) -> Result<InvitationView> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot reach the hub at {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(&Envelope {
        version: tasuki_core::PROTOCOL_VERSION,
        request: calls::HubRequest::from(calls::Invite {
            name: name.to_string(),
            pre_approved: true,
            service: true,
            valid_secs: 3600,
        }),
    })?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    match serde_json::from_str::<Reply<InvitationView>>(&answer)
        .with_context(|| format!("unreadable admin answer {answer:?}"))?
    {
        Reply::Ok(v) => Ok(v),
        Reply::Error(e) => bail!("invite {name}: {e}"),
    }
}

/// A blocking framed control connection.
struct Conn {
    stream: TcpStream,
    decoder: FrameDecoder,
}

impl Conn {
    fn send(&mut self, body: &[u8]) -> Result<()> {
        self.stream.write_all(&encode_frame(body)?)?;
        Ok(())
    }

    fn recv(&mut self) -> Result<Vec<u8>> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(frame);
            }
            let n = self.stream.read(&mut buf).context("control read")?;
            if n == 0 {
                bail!("the hub closed the connection");
            }
            self.decoder.extend(&buf[..n]);
        }
    }

    fn send_msg(&mut self, ch: &mut Channel, msg: &SpokeMessage) -> Result<()> {
        let body = ch.seal(msg)?;
        self.send(&body)
    }
}

/// Invites and enrols one spoke, as `tasuki-spoke enrol` does.
fn enrol_one(socket: &Path, name: &str) -> Result<()> {
    let view = admin_invite(socket, name)?;
    let invitation = Invitation::decode(&view.invitation)?;
    let key = StaticKey::generate(&mut rand_core::OsRng);
    let addr = invitation.hub_endpoint.clone();
    let stream = TcpStream::connect(&addr).with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut conn = Conn {
        stream,
        decoder: FrameDecoder::new(),
    };
    let hello = Hello {
        version: tasuki_core::PROTOCOL_VERSION,
        invitation: Some(invitation.id),
    };
    let (init, first) = Initiator::start(
        Purpose::Enrol,
        &key,
        &invitation.hub_key,
        Some(&invitation.secret),
        &hello,
    )?;
    conn.send(&first)?;
    let reply = conn.recv()?;
    let mut ch = init.finish(&reply)?;
    conn.send_msg(
        &mut ch,
        &SpokeMessage::EnrolRequest {
            hostname: "benchtool".into(),
            as_user: None,
        },
    )?;
    let mut spoke_id = None;
    loop {
        let body = conn.recv()?;
        match ch.open::<HubMessage>("hub message", &body)? {
            HubMessage::Welcome(c) => spoke_id = Some(c.spoke_id),
            HubMessage::KeyDistribution(d) => {
                let id = spoke_id.context("a key before the configuration")?;
                let epoch = tasuki_core::rotation::open_delivery(id, &d, &[])?;
                conn.send_msg(
                    &mut ch,
                    &SpokeMessage::KeyReceipt {
                        epoch: epoch.number,
                    },
                )?;
                // Wait for the hub to close: it has then recorded the receipt.
                let mut rest = [0u8; 64];
                let _ = conn.stream.read(&mut rest);
                return Ok(());
            }
            HubMessage::Refused(r) => bail!("{name}: the hub refused: {}", r.detail),
            _ => {}
        }
    }
}
