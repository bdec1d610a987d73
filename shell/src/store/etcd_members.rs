//! One client connection per etcd member, tried in turn: a request goes to
//! the member that answered last and, when that one is unreachable or has
//! lost its raft leader, to the next. (The client library's own balancing
//! keeps sending a share of requests to a dead member and lets the first
//! one wait out its whole timeout.)
//!
//! A failure is *definite* when etcd never took the request (no connection,
//! or a member without a leader refused it) and *ambiguous* when the request
//! may have been applied with its answer lost (a timeout, a connection cut
//! mid-request): a write that failed ambiguously is not known to have failed.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::Client;

use super::etcd::EtcdSettings;

/// How long one member is given for one request (a raft election among
/// the etcd members takes a second or two).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why no member carried out a request.
#[derive(Debug)]
pub struct CallError {
    /// The request may have been applied (see the module docs).
    pub ambiguous: bool,
    /// What each member said.
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CallError {}

/// The clients of a cluster's members (cheap to clone).
#[derive(Clone)]
pub struct Members {
    clients: Arc<Vec<(String, Client)>>,
    current: Arc<AtomicUsize>,
}

/// What a failed attempt means.
enum Failed {
    /// Not taken: try the next member.
    Definite,
    /// Maybe taken: try the next member (a read), or stop (a write).
    Ambiguous,
    /// A refusal that another member would repeat (a bad request).
    Final,
}

fn classify(e: &etcd_client::Error, write: bool) -> Failed {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            // No connection, or a member without a leader (with
            // require-leader set): nothing was applied. Other answers of
            // the kind (a member stopping, a keep-alive ping lost) may
            // come after a write was proposed.
            Code::Unavailable
                if !write
                    || s.message().contains("no leader")
                    || s.message().contains("tcp connect error") =>
            {
                Failed::Definite
            }
            Code::Unavailable => Failed::Ambiguous,
            Code::Cancelled | Code::DeadlineExceeded | Code::Unknown | Code::Internal => {
                Failed::Ambiguous
            }
            _ => Failed::Final,
        },
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => Failed::Ambiguous,
        _ => Failed::Final,
    }
}

impl Members {
    /// A client per member of `settings` (connections are made lazily).
    pub async fn connect(settings: &EtcdSettings) -> Result<Self> {
        settings.check()?;
        let mut clients = Vec::new();
        for url in &settings.etcd_endpoints {
            let one = EtcdSettings {
                etcd_endpoints: vec![url.clone()],
                ..settings.clone()
            };
            clients.push((url.clone(), one.connect().await?));
        }
        Ok(Self {
            clients: Arc::new(clients),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Runs `request` on the member that answered last, then on the next
    /// ones as long as failures allow; `write` stops at an ambiguous one.
    pub async fn run<T, F>(
        &self,
        write: bool,
        request: impl Fn(Client) -> F,
    ) -> Result<T, CallError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut said = Vec::new();
        let mut ambiguous = false;
        for k in 0..n {
            let i = (start + k) % n;
            let (url, client) = &self.clients[i];
            let failed = match tokio::time::timeout(ATTEMPT_TIMEOUT, request(client.clone())).await
            {
                Ok(Ok(v)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(e)) => {
                    said.push(format!("{url}: {e}"));
                    classify(&e, write)
                }
                Err(_) => {
                    said.push(format!(
                        "{url}: no answer within {}s",
                        ATTEMPT_TIMEOUT.as_secs()
                    ));
                    Failed::Ambiguous
                }
            };
            match failed {
                Failed::Definite => {}
                Failed::Ambiguous => {
                    ambiguous = true;
                    if write {
                        break;
                    }
                }
                Failed::Final => {
                    return Err(CallError {
                        ambiguous,
                        message: said.join("; "),
                    })
                }
            }
            // The next request starts with the next member.
            self.current.store((i + 1) % n, Ordering::Relaxed);
        }
        Err(CallError {
            ambiguous: ambiguous && write,
            message: format!(
                "no etcd member answers (unreachable, or without quorum): {}",
                said.join("; ")
            ),
        })
    }

    /// The member requests go to first.
    pub fn current(&self) -> Result<Client> {
        let i = self.current.load(Ordering::Relaxed);
        self.clients
            .get(i % self.clients.len().max(1))
            .map(|(_, c)| c.clone())
            .context("no etcd member configured")
    }

    /// Moves on to the next member (after a failure seen elsewhere, such
    /// as a lease keep-alive stream).
    pub fn skip(&self) {
        let n = self.clients.len().max(1);
        let i = self.current.load(Ordering::Relaxed);
        self.current.store((i + 1) % n, Ordering::Relaxed);
    }
}
