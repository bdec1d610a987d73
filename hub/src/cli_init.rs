//! `tasuki-hub init`: a new hub (on sled, or the first of a cluster on
//! etcd), or another member of a cluster on etcd (`--join`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tasuki_core::keys::{SecretKey, StaticKey};
use tasuki_core::registry::HubSettings;

use crate::state::engine::{self, ClusterFile, EngineName};
use crate::state::{self, KEY_FILE};

/// The arguments of `init`.
#[derive(clap::Args)]
pub(crate) struct InitArgs {
    /// State directory (created 0700; holds hub.key and the store).
    #[arg(long, default_value = "/var/lib/tasuki-hub")]
    state_dir: PathBuf,
    /// Public HOST:PORT that spokes reach (TCP control and UDP data on the
    /// same port). On a cluster: this machine's own.
    #[arg(long)]
    endpoint: String,
    /// Tunnel network, once per family (an IPv4 one, and an IPv6 prefix
    /// such as fd77:1::/64); the hub takes its first address, spokes
    /// the others. With no IPv6 prefix, a random ULA /64 (RFC 4193).
    #[arg(long = "tunnel-net", required_unless_present = "join")]
    tunnel_nets: Vec<ipnet::IpNet>,
    /// A subnet routed behind the hub (company LAN), IPv4 or IPv6;
    /// repeat for several.
    #[arg(long = "route")]
    routes: Vec<ipnet::IpNet>,
    /// No IPv6 inside the tunnels (no random ULA prefix either).
    #[arg(long)]
    no_ipv6: bool,
    /// WireGuard persistent keepalive for spokes, seconds (0 = off).
    #[arg(long, default_value_t = 25)]
    keepalive: u16,
    /// Where the state lives: `sled` (embedded in the state directory) or
    /// `etcd` (a replicated cluster several hub machines share).
    #[arg(long, value_enum, default_value = "sled")]
    store: StoreArg,
    /// etcd client URLs, comma-separated (http://10.0.0.1:2379,...).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// The key prefix of this cluster's records in etcd.
    #[arg(long, default_value = "/tasuki/")]
    etcd_prefix: String,
    /// TLS to etcd: the CA of its server certificates (PEM).
    #[arg(long)]
    etcd_ca: Option<PathBuf>,
    /// TLS to etcd: a client certificate (PEM).
    #[arg(long, requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// TLS to etcd: the client certificate's key (PEM).
    #[arg(long, requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Become another member of the cluster already in etcd: same identity,
    /// same state (needs --store etcd and --cluster-key).
    #[arg(long, requires = "cluster_key")]
    join: bool,
    /// The cluster key file copied from the cluster's first hub (with --join).
    #[arg(long)]
    cluster_key: Option<PathBuf>,
}

/// `--store`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum StoreArg {
    Sled,
    Etcd,
}

/// Where the hub's identity is kept in etcd (sealed like every value).
const IDENTITY_TREE: &str = "identity";

/// `tasuki-hub init`.
pub(crate) fn init(args: InitArgs) -> Result<()> {
    check_endpoint(&args.endpoint)?;
    let dir = args.state_dir.clone();
    let key_path = dir.join(KEY_FILE);
    if key_path.exists() {
        bail!(
            "{} already holds a hub (found {}); refusing to overwrite its identity",
            dir.display(),
            key_path.display()
        );
    }
    let cluster = match args.store {
        StoreArg::Sled if args.join || !args.etcd_endpoints.is_empty() => {
            bail!("--join and --etcd-endpoints need --store etcd")
        }
        StoreArg::Sled => None,
        StoreArg::Etcd => {
            let file = ClusterFile {
                store: EngineName::Etcd,
                endpoint: args.endpoint.clone(),
                etcd_endpoints: args.etcd_endpoints.clone(),
                etcd_prefix: args.etcd_prefix.clone(),
                etcd_ca: args.etcd_ca.clone(),
                etcd_cert: args.etcd_cert.clone(),
                etcd_key: args.etcd_key.clone(),
            };
            file.etcd().check()?;
            Some(file)
        }
    };
    if args.join {
        let Some(cluster) = cluster else {
            bail!("--join needs --store etcd");
        };
        return join(&dir, cluster, args.cluster_key.as_deref());
    }
    let (settings, plan) = new_settings(&args)?;
    // Everything is checked before anything is written; the key file,
    // which marks a hub as made, is written last.
    tasuki_shell::files::ensure_private_dir(&dir)?;
    let key = StaticKey::generate(&mut rand_core::OsRng);
    match &cluster {
        None => {
            let opened = engine::open(&dir)?;
            state::write_settings(&opened.store, &settings, plan.as_ref(), vec![])?;
        }
        Some(file) => {
            let storage_key = SecretKey::generate(&mut rand_core::OsRng);
            let opened = engine::open_etcd(file, storage_key.clone())?;
            if opened.store.etcd().is_some_and(|e| e.holds_records()) {
                bail!(
                    "{} already holds a hub cluster: join it (tasuki-hub init --store etcd \
                     --join --cluster-key FILE ...) or choose another --etcd-prefix",
                    file.etcd().describe()
                );
            }
            // The key first: no record is ever sealed under a key that was
            // not kept.
            engine::write_cluster_key(&dir.join(engine::CLUSTER_KEY_FILE), &storage_key)?;
            file.write(&dir)?;
            let identity = tasuki_shell::store::Write::Put {
                tree: IDENTITY_TREE,
                key: b"hub".to_vec(),
                value: key.to_base64().as_bytes().to_vec(),
            };
            state::write_settings(&opened.store, &settings, plan.as_ref(), vec![identity])?;
            if let Some(etcd) = opened.store.etcd() {
                etcd.add_member(&file.endpoint)?;
            }
        }
    }
    tasuki_shell::files::write_secret_file(&key_path, key.to_base64().as_bytes())?;
    println!("initialised hub in {}", dir.display());
    print_identity(&key, &settings);
    if let Some(p) = &plan {
        println!("  tunnel net:  {} (hub {})", p.tunnel_net, p.hub_addr);
    }
    if let Some(file) = &cluster {
        println!("  store:       {}", file.etcd().describe());
        println!(
            "  cluster key: {} (copy it to each further member, 0600, and pass it to \
             `init --store etcd --join --cluster-key FILE`)",
            dir.join(engine::CLUSTER_KEY_FILE).display()
        );
    }
    Ok(())
}

fn print_identity(key: &StaticKey, settings: &HubSettings) {
    println!("  public key:  {}", key.public());
    println!("  fingerprint: {}", key.public().fingerprint());
    println!("  endpoint:    {}", settings.endpoint);
    println!(
        "  tunnel net:  {} (hub {})",
        settings.tunnel_net,
        settings.hub_addr()
    );
}

/// Another member: the cluster's identity and state from etcd, this
/// machine's endpoint and the cluster key in its state directory.
fn join(dir: &Path, cluster: ClusterFile, key_file: Option<&Path>) -> Result<()> {
    let key_file = key_file.context("--join needs --cluster-key FILE")?;
    let storage_key = engine::read_cluster_key(key_file)?;
    let opened = engine::open_etcd(&cluster, storage_key.clone())?;
    let describe = cluster.etcd().describe();
    let identity = opened
        .store
        .get_raw(IDENTITY_TREE, b"hub")?
        .with_context(|| {
            format!("{describe} holds no hub cluster: initialise the first hub without --join")
        })?;
    let text = std::str::from_utf8(&identity).context("the stored hub identity is damaged")?;
    let key = StaticKey::from_base64(text).context("the stored hub identity is damaged")?;
    let settings: HubSettings = opened
        .store
        .get(state::SETTINGS_TREE, b"hub")?
        .with_context(|| format!("{describe} has a hub identity but no settings"))?;
    if let Some(etcd) = opened.store.etcd() {
        etcd.add_member(&cluster.endpoint)?;
    }
    tasuki_shell::files::ensure_private_dir(dir)?;
    engine::write_cluster_key(&dir.join(engine::CLUSTER_KEY_FILE), &storage_key)?;
    let endpoint = cluster.endpoint.clone();
    cluster.write(dir)?;
    tasuki_shell::files::write_secret_file(&dir.join(KEY_FILE), key.to_base64().as_bytes())?;
    println!(
        "joined the hub cluster in {describe} as {endpoint}; state in {}",
        dir.display()
    );
    print_identity(&key, &settings);
    Ok(())
}

fn check_endpoint(endpoint: &str) -> Result<()> {
    if endpoint.contains(',') {
        bail!("--endpoint is one HOST:PORT (a cluster's members each give their own), got {endpoint:?}");
    }
    let port_ok = endpoint
        .rsplit_once(':')
        .and_then(|(host, port)| {
            (!host.is_empty())
                .then(|| port.parse::<u16>().ok())
                .flatten()
        })
        .is_some_and(|p| p != 0);
    if !port_ok {
        bail!("--endpoint must be HOST:PORT with a non-zero port, got {endpoint:?}");
    }
    Ok(())
}

/// The settings of a new hub (or cluster), checked.
fn new_settings(
    args: &InitArgs,
) -> Result<(HubSettings, Option<tasuki_core::address_plan::Ipv6Plan>)> {
    let (tunnel_net, tunnel_net6) = crate::cli_ipv6::split_tunnel_nets(&args.tunnel_nets)?;
    let (routes, routes6) = crate::cli_ipv6::split_routes(args.routes.clone());
    if tunnel_net.prefix_len() > 30 {
        bail!("--tunnel-net {tunnel_net} is too small: use a /30 or larger");
    }
    if tunnel_net.trunc() != tunnel_net {
        bail!(
            "--tunnel-net {tunnel_net} has host bits set; did you mean {}?",
            tunnel_net.trunc()
        );
    }
    let plan = crate::cli_ipv6::init_plan(tunnel_net, tunnel_net6, routes6, args.no_ipv6)?;
    let settings = HubSettings {
        endpoint: args.endpoint.clone(),
        tunnel_net,
        routes,
        keepalive_secs: args.keepalive,
    };
    Ok((settings, plan))
}
