//! Several hub processes, one key station: the etcd election that makes one
//! of them active, and the lease it keeps while it serves.
//!
//! A hub on etcd campaigns before it loads anything: it asks for a lease and
//! puts the `leader` record (its token, bound to the lease) only if there is
//! none. A standby tries again every [`CAMPAIGN_EVERY`]; the record vanishes
//! with the active hub's lease, [`LEASE_TTL`] after its last renewal. The
//! active hub renews its lease as [`tasuki_core::leadership`] decides, and
//! stops (to come back as a standby) once it has lost the lease for good or
//! the store has fenced a commit of its.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tasuki_core::leadership::{Health, Leadership, StepDown};
use tasuki_shell::store::etcd_members::Members;
use tasuki_shell::store::Store;

use crate::state::engine::ClusterFile;

/// The election lease: how long a dead active hub blocks a take-over.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(5);

/// How often a standby tries to become active.
const CAMPAIGN_EVERY: Duration = Duration::from_millis(500);

/// How often the active hub reads the cluster's members (one that joined
/// is told to the spokes within this).
const MEMBERS_EVERY: Duration = Duration::from_secs(5);

/// How often the active hub compacts etcd's history.
const COMPACT_EVERY: Duration = Duration::from_secs(60);

/// How often the active hub's lease keeper wakes.
const KEEPER_TICK: Duration = Duration::from_millis(200);

/// The election state of this process, shared with `status`.
#[derive(Clone)]
pub(crate) struct Election {
    leadership: Arc<Mutex<Leadership>>,
}

impl Election {
    /// What this hub can do now.
    pub(crate) fn health(&self) -> Health {
        self.leadership
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .health(Instant::now())
    }

    /// Why a commit must not be sent now, if so.
    pub(crate) fn refusal(&self) -> Option<String> {
        match self.health() {
            Health::Active => None,
            Health::Degraded => Some(
                "etcd has not renewed this hub's lease in time (no quorum, or unreachable): \
                 changes are refused until it does; traffic goes on with the keys in force"
                    .into(),
            ),
            Health::Orphaned | Health::Standby | Health::SteppedDown(_) => {
                Some("this hub is not the active one of its cluster".into())
            }
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Leadership) -> R) -> R {
        f(&mut self
            .leadership
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }
}

/// A new token for this process: its endpoint (for people reading etcd)
/// and 16 random bytes (two runs of one machine never share one).
fn new_token(endpoint: &str) -> String {
    use rand_core::RngCore;
    let mut nonce = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut nonce);
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    format!("{endpoint} {hex}")
}

/// Waits until this process holds the leader record, then fences `store`
/// with it. Waits through an etcd that is unreachable (logged).
pub(crate) async fn campaign(file: &ClusterFile, store: &Store) -> Result<(Election, Members)> {
    let etcd = store
        .etcd()
        .context("a hub on etcd without an etcd store")?;
    let members = Members::connect(&file.etcd()).await?;
    let leader_key = etcd.leader_key();
    let presence = etcd.presence_key(&file.endpoint);
    let token = new_token(&file.endpoint);
    let mut told = None::<String>;
    loop {
        match try_once(&members, (&leader_key, &presence), &token).await {
            Ok(Ok((lease, asked, answered))) => {
                etcd.lead_with(token.clone().into_bytes())?;
                let mut leadership = Leadership::new(LEASE_TTL);
                leadership.elected(lease, asked, answered, LEASE_TTL);
                tracing::info!(%token, "elected: this hub is the active one");
                return Ok((
                    Election {
                        leadership: Arc::new(Mutex::new(leadership)),
                    },
                    members,
                ));
            }
            Ok(Err(holder)) => {
                if told.as_deref() != Some(holder.as_str()) {
                    tracing::info!(active = %holder, "standby: another hub is active");
                    tasuki_shell::service::ready(&format!("standby; active: {holder}"));
                    told = Some(holder);
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                if told.as_deref() != Some(e.as_str()) {
                    tracing::warn!(error = %e, "standby: cannot reach etcd; trying again");
                    tasuki_shell::service::ready("standby; etcd does not answer");
                    told = Some(e);
                }
            }
        }
        tokio::time::sleep(CAMPAIGN_EVERY).await;
    }
}

/// One attempt: the lease and when it was asked for and granted on a win,
/// the holder's token otherwise. Either way this process's presence record
/// is put with the attempt's lease (a standby's lapses unless it tries
/// again).
async fn try_once(
    members: &Members,
    (leader_key, presence): (&[u8], &[u8]),
    token: &str,
) -> Result<Result<(i64, Instant, Instant), String>> {
    let asked = Instant::now();
    let ttl = LEASE_TTL.as_secs() as i64;
    // A lease granted with its answer lost lapses by itself.
    let lease = members
        .run(false, |mut c| async move { c.lease_grant(ttl, None).await })
        .await
        .context("cannot get a lease from etcd")?
        .id();
    let txn = Txn::new()
        .when([Compare::create_revision(
            leader_key.to_vec(),
            CompareOp::Equal,
            0,
        )])
        .and_then([
            TxnOp::put(
                leader_key.to_vec(),
                token.as_bytes().to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            ),
            TxnOp::put(
                presence.to_vec(),
                token.as_bytes().to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            ),
        ])
        .or_else([
            TxnOp::get(leader_key.to_vec(), None),
            TxnOp::put(
                presence.to_vec(),
                token.as_bytes().to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            ),
        ]);
    // Tried again on another member only where the first never took it: a
    // campaign won with its answer lost is seen as "the holder is us".
    let resp = members
        .run(true, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
        .context("cannot campaign in etcd")?;
    if resp.succeeded() {
        return Ok(Ok((lease, asked, Instant::now())));
    }
    let holder = resp.op_responses().into_iter().find_map(|r| match r {
        etcd_client::TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
        _ => None,
    });
    // An earlier attempt of ours that won with its answer lost shows as
    // our own token: not taken up (when its lease was granted is unknown,
    // so how long it lives is too); it lapses and the next attempt wins.
    Ok(Err(holder.unwrap_or_else(|| "(gone meanwhile)".into())))
}

/// Keeps the lease of an active hub alive; returns why it stepped down.
/// Meanwhile an unrenewed lease makes the hub refuse changes (its data
/// plane carries on), and says so once in the log; `on_change` hears each
/// change of health.
pub(crate) async fn keep(
    election: Election,
    members: Members,
    store: Store,
    mut on_change: impl FnMut(Health),
) -> StepDown {
    let lease = match election.with(|l| l.role()) {
        tasuki_core::leadership::Role::Active { lease, .. } => lease,
        _ => return StepDown::Replaced,
    };
    let mut stream = None;
    let mut was = Health::Active;
    let mut tick = tokio::time::interval(KEEPER_TICK);
    loop {
        tick.tick().await;
        let now = Instant::now();
        if store.etcd().and_then(|e| e.fenced()).is_some() {
            election.with(|l| l.replaced());
        }
        if election.with(|l| l.poll_renewal(now)) {
            let answer = renew(&members, &mut stream, lease).await;
            let answered = Instant::now();
            election.with(|l| match answer {
                Ok(ttl) => l.renewed(now, answered, ttl),
                Err(_) => l.renewal_failed(now),
            });
            if let Err(e) = answer {
                tracing::debug!(error = %format!("{e:#}"), "lease renewal failed");
                // The next one opens a stream to the next etcd member.
                stream = None;
                members.skip();
            }
        }
        let health = election.health();
        if health != was {
            match health {
                Health::Degraded => tracing::error!(
                    "etcd does not answer: this hub keeps relaying with the keys it holds and \
                     refuses changes until it does"
                ),
                Health::Orphaned => tracing::error!(
                    "this hub's lease has lapsed unless etcd kept it: another hub may be active; \
                     spokes are turned away to find it, traffic goes on with the keys in force"
                ),
                Health::Active => tracing::info!("etcd answers again: changes go ahead"),
                _ => {}
            }
            was = health;
            on_change(health);
        }
        if let Health::SteppedDown(why) = health {
            return why;
        }
    }
}

type KeepAlive = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

/// One renewal: the TTL the servers answered with (zero: the lease is gone).
async fn renew(members: &Members, stream: &mut Option<KeepAlive>, lease: i64) -> Result<Duration> {
    let wait = LEASE_TTL / 3;
    let renewal = async {
        if stream.is_none() {
            // Opening the stream renews the lease once (to its full TTL).
            return match members.current()?.lease_keep_alive(lease).await {
                Ok(s) => {
                    *stream = Some(s);
                    Ok(LEASE_TTL)
                }
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                    Ok(Duration::ZERO)
                }
                Err(e) => Err(e.into()),
            };
        }
        let (keeper, answers) = stream.as_mut().context("no keep-alive stream")?;
        keeper.keep_alive().await?;
        let answer = answers
            .message()
            .await?
            .context("etcd closed the keep-alive stream")?;
        Ok::<_, anyhow::Error>(Duration::from_secs(answer.ttl().max(0) as u64))
    };
    tokio::time::timeout(wait, renewal)
        .await
        .context("etcd did not answer a lease renewal in time")?
}

/// Follows the cluster's members for as long as the hub runs; and every
/// [`COMPACT_EVERY`] compacts etcd's history up to the last commit seen one
/// round earlier (recent history stays for whoever reads it).
pub(crate) async fn follow_members(store: Store, state: crate::state::SharedState) {
    let mut tick = tokio::time::interval(MEMBERS_EVERY);
    let mut rounds = 0u32;
    let mut seen = None::<i64>;
    loop {
        tick.tick().await;
        rounds = rounds.wrapping_add(1);
        if rounds.is_multiple_of((COMPACT_EVERY.as_secs() / MEMBERS_EVERY.as_secs()) as u32) {
            let s = store.clone();
            let last = seen;
            let compacted = tokio::task::spawn_blocking(move || {
                let etcd = s.etcd()?;
                if let Some(rev) = last.filter(|r| *r > 0) {
                    if let Err(e) = etcd.compact(rev) {
                        tracing::debug!(error = %format!("{e:#}"), "etcd history not compacted");
                    }
                }
                etcd.last_revision().ok()
            })
            .await;
            seen = compacted.ok().flatten().or(seen);
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.etcd().map(|e| e.members())).await {
            Ok(Some(Ok(members))) => state.with(|st| st.set_cluster_endpoints(members)),
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %format!("{e:#}"), "cannot read the cluster's members")
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// The active hub's lease, kept from the moment it was won, on a thread
/// and runtime of its own with its own etcd clients: a commit that waits on
/// etcd, or tasks waiting for the state, never hold up a renewal. Also the
/// store's gate, the health the state follows, and the step-down.
pub(crate) struct Keeper {
    /// The current health (changes only).
    pub(crate) health: tokio::sync::watch::Receiver<Health>,
    /// Resolves with why the hub stepped down (until taken by who waits).
    pub(crate) stepped_down: Option<tokio::sync::oneshot::Receiver<StepDown>>,
    /// Dropped to stop the keeper's thread.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    members: Members,
    lease: Option<i64>,
}

impl Keeper {
    /// Starts keeping the lease of `election` (right after it was won, so
    /// that loading the state does not outlast the lease), and gates the
    /// store's commits on it. `members` (the campaign's clients) gives the
    /// lease back at a planned stop.
    pub(crate) fn start(
        election: Election,
        members: Members,
        settings: tasuki_shell::store::EtcdSettings,
        store: Store,
    ) -> Result<Self> {
        let gate = election.clone();
        if let Some(etcd) = store.etcd() {
            etcd.gate_with(Arc::new(move || gate.refusal()));
        }
        let lease = match election.with(|l| l.role()) {
            tasuki_core::leadership::Role::Active { lease, .. } => Some(lease),
            _ => None,
        };
        let (tx, health) = tokio::sync::watch::channel(Health::Active);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let watching = election.clone();
        std::thread::Builder::new()
            .name("tasuki-lease".into())
            .spawn(move || {
                // Whatever ends the keeper other than a stop (a panic, a
                // runtime or etcd client that cannot start) ends the lease
                // as far as this hub knows.
                let kept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "no runtime for the lease keeper");
                            return Some(StepDown::LeaseExpired);
                        }
                    };
                    runtime.block_on(async move {
                        let keeping = match Members::connect(&settings).await {
                            Ok(m) => m,
                            Err(e) => {
                                tracing::error!(error = %format!("{e:#}"), "the lease keeper cannot reach etcd");
                                return Some(StepDown::LeaseExpired);
                            }
                        };
                        let keeping = keep(election, keeping, store, move |h| {
                            tx.send_replace(h);
                        });
                        tokio::select! {
                            why = keeping => Some(why),
                            _ = stop_rx => None,
                        }
                    })
                }));
                let why = match kept {
                    Ok(why) => why,
                    Err(_) => Some(StepDown::LeaseExpired),
                };
                if let Some(why) = why {
                    watching.with(|l| l.replaced());
                    if done_tx.send(why).is_err() {
                        tracing::debug!("stepped down while the daemon was stopping");
                    }
                }
            })
            .context("cannot start the lease keeper's thread")?;
        Ok(Self {
            health,
            stepped_down: Some(done_rx),
            stop: Some(stop_tx),
            members,
            lease,
        })
    }

    /// A planned stop: the lease is given back, so a standby takes over at
    /// once rather than when it would have lapsed.
    pub(crate) async fn resign(mut self) {
        // The keeper's thread ends with its sender.
        drop(self.stop.take());
        let Some(lease) = self.lease else { return };
        let revoked = self
            .members
            .run(true, |mut c| async move { c.lease_revoke(lease).await })
            .await;
        match revoked {
            Ok(_) => tracing::info!("lease given back: a standby takes over now"),
            Err(e) => tracing::warn!(error = %e, "lease not given back; it lapses by itself"),
        }
    }
}
