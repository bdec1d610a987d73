//! Stock WireGuard apps as spokes (issue 21): a real `wireguard-go` peer
//! behind a NAT router, configured only from what `tasuki-hub spoke invite
//! --wireguard` and `spoke config` print, reaches a tasuki spoke through the
//! relay and the LAN host behind the hub; an admin's rotation stops it until
//! it gets the new configuration; a preshared key with one bit flipped never
//! completes a handshake (and the hub counts the failures); a revoked peer
//! is cut off within a second.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tasuki_netns_tests::{
    output_text, skip_unless_root, Mapping, Nat, Proc, Topology, TwoSpokes, A_TUNNEL, LAN_HOST,
};

/// The WireGuard peer: its namespace, interface, private key and process.
struct Phone {
    nat: Nat,
    iface: String,
    private_key: String,
    public_key: String,
    _process: Proc,
}

/// Starts `wireguard-go` in the host behind a new NAT router, with a key
/// pair drawn there by `wg genkey` (the private key stays in the test, as
/// it would stay on the phone).
fn start_phone(t: &mut TwoSpokes) -> Phone {
    static N: AtomicU32 = AtomicU32::new(0);
    let nat = t.add_nat(0, Mapping::EndpointIndependent);
    // The UAPI socket directory (/var/run/wireguard) is shared by every
    // namespace: the name must be unique on the machine.
    let iface = format!(
        "twg{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    );
    let private_key = t.exec_ok(&nat.host, &["wg", "genkey"]).trim().to_owned();
    let out = t.exec_stdin(
        &nat.host,
        &["wg", "pubkey"],
        &private_key,
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "wg pubkey: {}", output_text(&out));
    let public_key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let log = t.dir().join("wireguard-go.log");
    let process = t.spawn(
        &nat.host,
        &[
            "env",
            "WG_PROCESS_FOREGROUND=1",
            "wireguard-go",
            "-f",
            &iface,
        ],
        &log,
    );
    let socket = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
    t.wait_for(
        "wireguard-go's UAPI socket",
        Duration::from_secs(10),
        || socket.exists(),
    );
    Phone {
        nat,
        iface,
        private_key,
        public_key,
        _process: process,
    }
}

/// What `wg setconf` takes from a printed configuration: the device's own
/// private key put in, the wg-quick-only lines (`Address`, `MTU`) left out
/// (they are applied with `ip`, as wg-quick does).
fn setconf_text(printed: &str, private_key: &str) -> String {
    let mut out = String::new();
    for line in printed.lines() {
        if line.starts_with("Address") || line.starts_with("MTU") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line == "[Interface]" {
            out.push_str(&format!("PrivateKey = {private_key}\n"));
        }
    }
    out
}

/// The value of `KEY = value` in a configuration.
fn field<'a>(config: &'a str, key: &str) -> &'a str {
    config
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in\n{config}"))
}

/// Applies a configuration to the phone's interface (`wg setconf`
/// replaces the peer, so a new preshared key takes a fresh handshake).
fn apply(t: &Topology, phone: &Phone, config: &str, path: &Path) {
    std::fs::write(path, config).unwrap();
    let p = path.to_string_lossy();
    t.exec_ok(&phone.nat.host, &["wg", "setconf", &phone.iface, &p]);
}

/// Gives the phone a printed configuration and waits until it reaches
/// spoke a with it.
fn use_config(t: &Topology, phone: &Phone, printed: &str, path: &Path, what: &str) {
    apply(t, phone, &setconf_text(printed, &phone.private_key), path);
    t.wait_for(what, Duration::from_secs(20), || {
        t.ping(&phone.nat.host, A_TUNNEL, 1)
    });
}

/// `tasuki-hub ARGS`, which must succeed.
fn hub_ok(t: &Topology, args: &[&str]) -> std::process::Output {
    let out = t.hub_cli(args);
    assert!(out.status.success(), "{args:?}: {}", output_text(&out));
    out
}

/// The phone's own rotation interval (`key policy set --spoke phone`).
fn set_interval(t: &Topology, interval: &str) {
    hub_ok(
        t,
        &[
            "key",
            "policy",
            "set",
            "--spoke",
            "phone",
            "--interval",
            interval,
        ],
    );
}

fn config_json(t: &Topology, args: &[&str]) -> Value {
    let out = t.hub_cli(args);
    assert!(out.status.success(), "{args:?}: {}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn a_stock_wireguard_peer_follows_the_hubs_keys() {
    if skip_unless_root("a_stock_wireguard_peer_follows_the_hubs_keys") {
        return;
    }
    let mut t = TwoSpokes::up();
    t.wait_tunnel_up(Duration::from_secs(20));
    let phone = start_phone(&mut t);
    let ns = phone.nat.host.clone();

    // Bad input is refused with a reason, and nothing is added.
    for (args, words) in [
        (
            vec![
                "spoke",
                "invite",
                "phone",
                "--wireguard",
                "--public-key",
                "nonsense",
            ],
            "is not a WireGuard public key",
        ),
        (
            vec!["spoke", "invite", "phone", "--wireguard"],
            "needs --public-key KEY",
        ),
        (vec!["spoke", "config", "a"], "is not a WireGuard peer"),
    ] {
        let out = t.hub_cli(&args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            output_text(&out).contains(words),
            "{args:?}: {}",
            output_text(&out)
        );
    }

    hub_ok(&t, &["user", "add", "alice"]);
    let view = config_json(
        &t,
        &[
            "spoke",
            "invite",
            "phone",
            "--wireguard",
            "--public-key",
            &phone.public_key,
            "--user",
            "alice",
            "--json",
        ],
    );
    let printed = view["config"].as_str().unwrap().to_owned();
    assert_eq!(view["epoch"], 1);
    assert_eq!(view["includes_private_key"], false);
    assert!(!printed.contains(&phone.private_key));
    let addr = field(&printed, "Address").to_owned();
    let conf_path = t.dir().join("phone.conf");
    apply(
        &t,
        &phone,
        &setconf_text(&printed, &phone.private_key),
        &conf_path,
    );
    t.exec_ok(&ns, &["ip", "addr", "add", &addr, "dev", &phone.iface]);
    t.exec_ok(
        &ns,
        &["ip", "link", "set", &phone.iface, "mtu", "1420", "up"],
    );
    for net in field(&printed, "AllowedIPs").split(", ") {
        if !net.starts_with("10.77.") {
            t.exec_ok(&ns, &["ip", "route", "add", net, "dev", &phone.iface]);
        }
    }

    // Through the relay to a tasuki spoke, and to the LAN behind the hub.
    t.wait_for(
        "the WireGuard peer to ping spoke a",
        Duration::from_secs(20),
        || t.ping(&ns, A_TUNNEL, 1),
    );
    assert!(t.ping(&ns, LAN_HOST, 2), "the LAN host is not reachable");
    let list = config_json(&t, &["spoke", "list", "--json"]);
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "phone")
        .cloned()
        .unwrap();
    assert_eq!(entry["kind"], "wireguard");
    assert_eq!(entry["state"], "active");
    assert!(
        entry["epoch_ends_in_secs"].as_u64().unwrap() > 29 * 86_400,
        "{entry}"
    );
    assert!(entry["endpoint"]
        .as_str()
        .unwrap()
        .starts_with(&phone.nat.wan_addr));

    // The access policy treats it like any spoke, with its user's rules.
    for args in [
        vec![
            "access",
            "allow",
            "--from",
            "user:alice",
            "--to",
            "192.168.77.0/24",
            "--service",
            "icmp",
        ],
        vec!["access", "mode", "enforce"],
    ] {
        let out = t.hub_cli(&args);
        assert!(out.status.success(), "{args:?}: {}", output_text(&out));
    }
    assert!(
        t.ping(&ns, LAN_HOST, 2),
        "alice's rule does not let her phone reach the LAN"
    );
    assert!(
        !t.ping(&ns, A_TUNNEL, 2),
        "no rule lets the phone reach spoke a"
    );
    hub_ok(&t, &["access", "mode", "open"]);

    // An admin's rotation: the old configuration stops working…
    hub_ok(&t, &["key", "rotate", "--spoke", "phone"]);
    t.wait_for("the new epoch", Duration::from_secs(10), || {
        config_json(&t, &["spoke", "config", "phone", "--json"])["epoch"] == 2
    });
    assert!(
        !t.ping(&ns, A_TUNNEL, 3),
        "the old preshared key still works"
    );
    // …until the device gets the new one.
    let view = config_json(&t, &["spoke", "config", "phone", "--json"]);
    let rotated = view["config"].as_str().unwrap().to_owned();
    assert_ne!(
        field(&rotated, "PresharedKey"),
        field(&printed, "PresharedKey")
    );
    use_config(
        &t,
        &phone,
        &rotated,
        &conf_path,
        "the peer to ping again with the new key",
    );

    // The plain output is the configuration file itself, and says on
    // standard error that it holds a secret.
    let out = hub_ok(&t, &["spoke", "config", "phone"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), rotated);
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds a secret key"));
    // As a QR code: drawn on standard error, with the word that the apps
    // import one only with its private key in it.
    let out = hub_ok(&t, &["spoke", "config", "phone", "--qr"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), rotated);
    let drawn = String::from_utf8_lossy(&out.stderr);
    assert!(
        drawn.contains('█') || drawn.contains('▀') || drawn.contains('▄'),
        "{drawn}"
    );
    assert!(drawn.contains("--generate-key"), "{drawn}");

    // A short interval of its own ends the epoch by itself, like the
    // 30 days by default.
    let shown = t.hub_cli(&["key", "policy", "show", "--spoke", "phone", "--json"]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["interval_secs"], 30 * 86_400, "{shown}");
    set_interval(&t, "12s");
    // Near its end (the last quarter of so short an interval), status warns.
    t.wait_for(
        "status to warn about the phone's key",
        Duration::from_secs(15),
        || {
            t.hub_status()
                .warnings
                .iter()
                .any(|w| w.contains("\"phone\"") && w.contains("spoke config phone"))
        },
    );
    t.wait_for(
        "the interval to end epoch 2",
        Duration::from_secs(20),
        || config_json(&t, &["spoke", "config", "phone", "--json"])["epoch"] == 3,
    );
    assert!(
        !t.ping(&ns, A_TUNNEL, 3),
        "an ended preshared key still works"
    );
    set_interval(&t, "off");
    let view = config_json(&t, &["spoke", "config", "phone", "--json"]);
    assert_eq!(view["ends_at"], Value::Null);
    let rotated = view["config"].as_str().unwrap().to_owned();
    use_config(
        &t,
        &phone,
        &rotated,
        &conf_path,
        "the peer to ping with epoch 3",
    );

    // One flipped bit in the preshared key: no handshake ever completes,
    // and the hub counts the answers the peer could not use.
    let failures_before = t.hub_status().counters.handshake_failures;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut psk = b64.decode(field(&rotated, "PresharedKey")).unwrap();
    psk[7] ^= 0x10;
    let flipped = rotated.replace(field(&rotated, "PresharedKey"), &b64.encode(&psk));
    apply(
        &t,
        &phone,
        &setconf_text(&flipped, &phone.private_key),
        &conf_path,
    );
    assert!(!t.ping(&ns, A_TUNNEL, 5), "a flipped preshared key works");
    t.wait_for(
        "the hub to count failed handshakes",
        Duration::from_secs(30),
        || {
            assert!(!t.ping(&ns, A_TUNNEL, 1), "a flipped preshared key works");
            t.hub_status().counters.handshake_failures > failures_before
        },
    );
    let shown = t.exec_ok(&ns, &["wg", "show", &phone.iface, "latest-handshakes"]);
    assert!(
        shown.split_whitespace().nth(1) == Some("0"),
        "a handshake completed: {shown}"
    );

    // Back to the right key, then revoked: cut off at once.
    use_config(
        &t,
        &phone,
        &rotated,
        &conf_path,
        "the peer to ping with the right key",
    );
    // A key pair drawn by the hub (for a phone that imports a whole
    // configuration from a QR code): printed once, never stored.
    let tablet = config_json(
        &t,
        &[
            "spoke",
            "invite",
            "tablet",
            "--wireguard",
            "--generate-key",
            "--json",
        ],
    );
    assert_eq!(tablet["includes_private_key"], true);
    let drawn = field(tablet["config"].as_str().unwrap(), "PrivateKey").to_owned();
    let again = config_json(&t, &["spoke", "config", "tablet", "--json"]);
    assert!(!again["config"].as_str().unwrap().contains(&drawn));
    // The audit log tells its story like any spoke's.
    let audit = config_json(&t, &["audit", "--json"]);
    let details: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["spoke"] == "phone")
        .map(|r| r["detail"].as_str().unwrap_or("").to_owned())
        .collect();
    for words in [
        "WireGuard peer, id",
        "configuration printed",
        "the old configuration stops working",
    ] {
        assert!(
            details.iter().any(|d| d.contains(words)),
            "no {words:?} in {details:?}"
        );
    }
    hub_ok(&t, &["spoke", "revoke", "phone"]);
    // One ping that waits one second: the peer is cut off within it.
    assert!(
        !t.ping(&ns, A_TUNNEL, 1),
        "a revoked WireGuard peer still reaches spoke a"
    );
    assert!(
        !t.ping(&ns, LAN_HOST, 2),
        "a revoked WireGuard peer still reaches the LAN"
    );
    let out = t.hub_cli(&["spoke", "config", "phone"]);
    assert!(
        !out.status.success(),
        "a revoked peer still gets a configuration"
    );
}
