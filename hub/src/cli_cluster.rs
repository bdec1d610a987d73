//! `tasuki-hub cluster status`: a hub cluster as etcd sees it — its members
//! and which is active, the active one's lease, and each etcd member's
//! health and how far it lags. Read from etcd itself (the state directory's
//! `cluster.toml` says where), so it works with no hub running.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_client::{GetOptions, SortOrder, SortTarget};
use serde::Serialize;

use crate::state::engine::ClusterFile;

/// How long one etcd member is given to answer a health check.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// `tasuki-hub cluster …`.
#[derive(clap::Subcommand)]
pub(crate) enum ClusterCommand {
    /// The members, which one is active, its lease, etcd's health and lag.
    Status {
        /// State directory of any member (its cluster.toml names etcd).
        #[arg(long, default_value = "/var/lib/tasuki-hub")]
        state_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take a member out for good (a machine decommissioned): spokes are
    /// no longer told to try it. Run `init --join` there to bring it back.
    Remove {
        /// The member's HOST:PORT, as `cluster status` lists it.
        endpoint: String,
        /// State directory of any member (its cluster.toml names etcd).
        #[arg(long, default_value = "/var/lib/tasuki-hub")]
        state_dir: PathBuf,
    },
}

/// What `cluster status` shows.
#[derive(Serialize)]
struct ClusterView {
    store: String,
    /// The active member's endpoint, if one holds the lease.
    active: Option<String>,
    /// Seconds left on the active member's lease (it renews every third).
    lease_ttl_secs: Option<i64>,
    /// The revision of the last committed change.
    revision: i64,
    members: Vec<MemberView>,
    etcd: Vec<EtcdView>,
}

#[derive(Serialize)]
struct MemberView {
    endpoint: String,
    /// `active`, `standby` (running, waiting for the lease) or `down`.
    role: &'static str,
}

#[derive(Serialize)]
struct EtcdView {
    endpoint: String,
    healthy: bool,
    version: Option<String>,
    /// Whether this member is etcd's raft leader.
    leader: bool,
    raft_index: Option<u64>,
    /// Raft entries behind the most advanced member.
    lag: Option<u64>,
    db_size: Option<i64>,
    error: Option<String>,
}

/// Runs a `cluster` subcommand.
pub(crate) async fn cluster_command(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Status { state_dir, json } => {
            let view = status(&cluster_file(&state_dir)?).await?;
            crate::cli::print_json_or(&view, json, print)
        }
        ClusterCommand::Remove {
            endpoint,
            state_dir,
        } => remove(&cluster_file(&state_dir)?, &endpoint).await,
    }
}

fn cluster_file(state_dir: &std::path::Path) -> Result<ClusterFile> {
    ClusterFile::read(state_dir)?.with_context(|| {
        format!(
            "{} holds a hub on sled (no cluster.toml): it has no cluster",
            state_dir.display()
        )
    })
}

/// `cluster remove`: the member record goes; the active member is refused
/// (stop it first: a standby takes over).
async fn remove(file: &ClusterFile, endpoint: &str) -> Result<()> {
    let view = status(file).await?;
    let Some(member) = view.members.iter().find(|m| m.endpoint == endpoint) else {
        let known: Vec<&str> = view.members.iter().map(|m| m.endpoint.as_str()).collect();
        bail!(
            "no member {endpoint:?} in the cluster (members: {})",
            known.join(", ")
        );
    };
    if member.role != "down" {
        bail!(
            "{endpoint} is {} (the active member, or a standby that could become it): stop it \
             first, then remove it",
            member.role
        );
    }
    if view.members.len() == 1 {
        bail!("{endpoint} is the cluster's only member");
    }
    let settings = file.etcd();
    let mut client = settings.connect().await?;
    client
        .delete(format!("{}members/{endpoint}", settings.etcd_prefix), None)
        .await
        .with_context(|| format!("cannot remove {endpoint} from {}", settings.describe()))?;
    println!(
        "removed {endpoint}: spokes stop trying it within seconds (it was {})",
        member.role
    );
    Ok(())
}

async fn status(file: &ClusterFile) -> Result<ClusterView> {
    let settings = file.etcd();
    let prefix = settings.etcd_prefix.clone();
    let mut client = settings.connect().await?;
    let leader = client
        .get(format!("{prefix}leader"), None)
        .await
        .context("cannot read the leader record")?;
    let (active, lease) = match leader.kvs().first() {
        Some(kv) => (
            Some(token_endpoint(&String::from_utf8_lossy(kv.value()))),
            Some(kv.lease()),
        ),
        None => (None, None),
    };
    let lease_ttl_secs = match lease {
        Some(id) => client
            .lease_time_to_live(id, None)
            .await
            .ok()
            .map(|r| r.ttl()),
        None => None,
    };
    let revision = client
        .get(format!("{prefix}revision"), None)
        .await?
        .kvs()
        .first()
        .map_or(0, |kv| kv.mod_revision());
    let by_creation = || {
        GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
    };
    let members = client
        .get(format!("{prefix}members/"), Some(by_creation()))
        .await?;
    let alive = client
        .get(format!("{prefix}alive/"), Some(by_creation()))
        .await?;
    let alive: Vec<String> = alive
        .kvs()
        .iter()
        .map(|kv| token_endpoint(&String::from_utf8_lossy(kv.value())))
        .collect();
    let members = members
        .kvs()
        .iter()
        .map(|kv| {
            let endpoint = String::from_utf8_lossy(kv.value()).into_owned();
            let role = if active.as_deref() == Some(endpoint.as_str()) {
                "active"
            } else if alive.contains(&endpoint) {
                "standby"
            } else {
                "down"
            };
            MemberView { endpoint, role }
        })
        .collect();
    let mut etcd = Vec::new();
    for url in &settings.etcd_endpoints {
        etcd.push(health(&settings, url).await);
    }
    let most = etcd.iter().filter_map(|e| e.raft_index).max();
    for e in &mut etcd {
        e.lag = e.raft_index.zip(most).map(|(i, m)| m.saturating_sub(i));
    }
    Ok(ClusterView {
        store: settings.describe(),
        active,
        lease_ttl_secs,
        revision,
        members,
        etcd,
    })
}

/// The endpoint part of a hub's election token (`ENDPOINT NONCE`).
fn token_endpoint(token: &str) -> String {
    token.split(' ').next().unwrap_or_default().to_owned()
}

/// One etcd member's status, asked of it alone.
async fn health(settings: &tasuki_shell::store::EtcdSettings, url: &str) -> EtcdView {
    let one = tasuki_shell::store::EtcdSettings {
        etcd_endpoints: vec![url.to_owned()],
        ..settings.clone()
    };
    let asked = async {
        let mut c = one.connect().await?;
        Ok::<_, anyhow::Error>(c.status().await?)
    };
    match tokio::time::timeout(HEALTH_TIMEOUT, asked).await {
        Ok(Ok(s)) => EtcdView {
            endpoint: url.to_owned(),
            healthy: true,
            version: Some(s.version().to_owned()),
            leader: s.header().is_some_and(|h| h.member_id() == s.leader()),
            raft_index: Some(s.raft_index()),
            lag: None,
            db_size: Some(s.db_size()),
            error: None,
        },
        failed => EtcdView {
            endpoint: url.to_owned(),
            healthy: false,
            version: None,
            leader: false,
            raft_index: None,
            lag: None,
            db_size: None,
            error: Some(match failed {
                Ok(Err(e)) => format!("{e:#}"),
                _ => format!("no answer within {}s", HEALTH_TIMEOUT.as_secs()),
            }),
        },
    }
}

fn print(v: &ClusterView) {
    println!("store:    {}", v.store);
    match (&v.active, v.lease_ttl_secs) {
        (Some(a), Some(ttl)) => println!("active:   {a} (lease {ttl}s left)"),
        (Some(a), None) => println!("active:   {a}"),
        (None, _) => println!("active:   none (no member holds the lease)"),
    }
    println!("revision: {}", v.revision);
    println!("members:");
    for m in &v.members {
        println!("  {:<28} {}", m.endpoint, m.role);
    }
    println!("etcd:");
    for e in &v.etcd {
        match &e.error {
            None => println!(
                "  {:<28} healthy{} {} raft {} lag {} db {} KiB",
                e.endpoint,
                if e.leader { " leader" } else { "" },
                e.version.as_deref().unwrap_or("?"),
                e.raft_index.unwrap_or(0),
                e.lag.unwrap_or(0),
                e.db_size.unwrap_or(0) / 1024
            ),
            Some(err) => println!("  {:<28} UNHEALTHY: {err}", e.endpoint),
        }
    }
}
