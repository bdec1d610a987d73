//! The store interface's contract, run against both engines: sled always,
//! etcd where an `etcd` binary is installed (a real server on loopback,
//! started and removed by each test); then what only the etcd engine does
//! (sealing, fencing, an unreachable cluster).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tasuki_core::keys::SecretKey;

use super::*;

/// A single-member etcd on loopback, killed and its data removed on drop.
pub(crate) struct EtcdServer {
    child: Child,
    dir: PathBuf,
    /// Its client URL.
    pub(crate) url: String,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl EtcdServer {
    /// Starts one, or `None` (the test says SKIPPED) where etcd is absent.
    pub(crate) fn start(name: &str) -> Option<Self> {
        if Command::new("etcd").arg("--version").output().is_err() {
            eprintln!("SKIPPED: no etcd binary (apt install etcd-server)");
            return None;
        }
        Some(Self::spawn(name, "http", &[]))
    }

    /// Starts `etcd` on free loopback ports, clients on `scheme`, with
    /// `extra` arguments, and waits until it takes connections.
    fn spawn(name: &str, scheme: &str, extra: &[String]) -> Self {
        let dir = std::env::temp_dir().join(format!("tasuki-etcd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (client, peer) = (free_port(), free_port());
        let url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg("--name=t")
            .arg(format!("--data-dir={}", dir.display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=t={peer_url}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, dir, url }
    }

    /// One that speaks TLS only and asks clients for a certificate signed
    /// by its CA; returns it and the directory of `ca.pem`, `client.pem`
    /// and `client.key`.
    pub(crate) fn start_tls(name: &str) -> Option<(Self, PathBuf)> {
        if Command::new("etcd").arg("--version").output().is_err()
            || Command::new("openssl").arg("version").output().is_err()
        {
            eprintln!("SKIPPED: no etcd or openssl binary");
            return None;
        }
        let pki = std::env::temp_dir().join(format!("tasuki-pki-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pki);
        std::fs::create_dir_all(&pki).unwrap();
        let ssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&pki)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        ssl(&[
            &[
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=tasuki test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ][..],
            &ec[..],
            &[
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        ]
        .concat());
        for (who, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
            ),
            ("client", "extendedKeyUsage=clientAuth"),
        ] {
            let (key, csr, pem, extfile) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.pem"),
                format!("{who}.ext"),
            );
            std::fs::write(pki.join(&extfile), ext).unwrap();
            ssl(&[
                &[
                    "req",
                    "-new",
                    "-subj",
                    &format!("/CN={who}"),
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                ][..],
                &ec[..],
            ]
            .concat());
            ssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &pem,
            ]);
        }
        for f in ["client.key", "server.key", "ca.key"] {
            std::fs::set_permissions(
                pki.join(f),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
        }
        let file = |f: &str| pki.join(f).display().to_string();
        let tls = [
            format!("--cert-file={}", file("server.pem")),
            format!("--key-file={}", file("server.key")),
            format!("--trusted-ca-file={}", file("ca.pem")),
            "--client-cert-auth".to_owned(),
        ];
        let server = Self::spawn(name, "https", &tls);
        Some((server, pki))
    }

    fn settings(&self, prefix: &str) -> EtcdSettings {
        EtcdSettings {
            etcd_prefix: prefix.into(),
            ..EtcdSettings::new(vec![self.url.clone()])
        }
    }

    /// Every file of its data directory, read whole.
    fn data_bytes(&self) -> Vec<u8> {
        fn walk(p: &Path, out: &mut Vec<u8>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if let Ok(b) = std::fs::read(&path) {
                    out.extend_from_slice(&b);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir, &mut out);
        out
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn key(byte: u8) -> SecretKey {
    SecretKey::from_bytes([byte; 32])
}

/// One engine under test: how to open it again (a restart).
enum Under {
    Sled(PathBuf),
    Etcd(EtcdServer),
}

impl Under {
    fn open(&self) -> Store {
        match self {
            Under::Sled(path) => {
                // sled's flusher may hold the lock a moment after a drop.
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    match Store::open(path) {
                        Ok(s) => return s,
                        Err(e)
                            if Instant::now() < deadline
                                && format!("{e:#}").contains("acquire lock") =>
                        {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        Err(e) => panic!("{e:#}"),
                    }
                }
            }
            Under::Etcd(server) => Store::open_etcd(&server.settings("/t/"), key(9)).unwrap(),
        }
    }
}

impl Drop for Under {
    fn drop(&mut self) {
        if let Under::Sled(path) = self {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// The engines present here, each fresh.
fn engines(name: &str) -> Vec<Under> {
    let sled = std::env::temp_dir().join(format!("tasuki-contract-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&sled);
    let mut out = vec![Under::Sled(sled)];
    out.extend(EtcdServer::start(name).map(Under::Etcd));
    out
}

#[test]
fn commits_read_back_across_a_restart() {
    for under in engines("readback") {
        {
            let s = under.open();
            s.commit(&[
                Write::put("a", *b"k1", &1u32).unwrap(),
                Write::put("a", *b"k2", &2u32).unwrap(),
                Write::put("ab", *b"k1", &9u32).unwrap(),
                Write::put("b", *b"x", &"hi".to_string()).unwrap(),
            ])
            .unwrap();
            s.commit(&[Write::remove("a", *b"k1")]).unwrap();
            // Of several writes to one record in a commit, the last counts.
            s.commit(&[
                Write::put("c", *b"k", &1u32).unwrap(),
                Write::put("c", *b"k", &2u32).unwrap(),
                Write::put("c", *b"gone", &3u32).unwrap(),
                Write::remove("c", *b"gone"),
            ])
            .unwrap();
        }
        let s = under.open();
        let what = s.describe();
        assert_eq!(s.all::<u32>("a").unwrap(), vec![2], "{what}");
        assert_eq!(
            s.all::<u32>("ab").unwrap(),
            vec![9],
            "{what}: trees kept apart"
        );
        assert_eq!(s.get::<String>("b", b"x").unwrap().as_deref(), Some("hi"));
        assert!(s.get::<u32>("b", b"y").unwrap().is_none());
        assert_eq!(s.all::<u32>("c").unwrap(), vec![2], "{what}");
        // A record of the wrong shape is an error that names the tree.
        let err = s.get::<u64>("b", b"x").map(|_| ()).unwrap_err();
        assert!(format!("{err:#}").contains("damaged"), "{what}: {err:#}");
        assert_eq!(
            s.scan_raw("a").unwrap(),
            vec![(b"k2".to_vec(), tasuki_core::codec::to_bytes(&2u32).unwrap())]
        );
    }
}

/// Records written before a field was added are read through their old
/// layout; new ones as they are; damage is still refused.
#[test]
fn old_records_are_read_through_their_old_layout() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Old(u32);
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct New(u32, bool);
    impl From<Old> for New {
        fn from(o: Old) -> New {
            New(o.0, false)
        }
    }
    for under in engines("upgrade") {
        let s = under.open();
        s.commit(&[
            Write::put("t", *b"1", &Old(7)).unwrap(),
            Write::put("t", *b"2", &New(8, true)).unwrap(),
        ])
        .unwrap();
        let all: Vec<New> = s.all_upgrading::<New, Old>("t").unwrap();
        assert_eq!(all, vec![New(7, false), New(8, true)]);
        assert_eq!(
            s.get_upgrading::<New, Old>("t", b"1").unwrap(),
            Some(New(7, false))
        );
        s.commit(&[Write::put("t", *b"3", &(1u8, 2u8, 3u8, 4u8, 5u8, 6u8)).unwrap()])
            .unwrap();
        assert!(s.all_upgrading::<New, Old>("t").is_err());
    }
}

/// A tree larger than one read of etcd comes back whole and in order.
#[test]
fn a_large_tree_reads_back_whole_and_in_order() {
    for under in engines("large") {
        let s = under.open();
        for chunk in (0u32..1700).collect::<Vec<_>>().chunks(100) {
            let writes: Vec<Write<'_>> = chunk
                .iter()
                .map(|i| Write::put("big", i.to_be_bytes(), i).unwrap())
                .collect();
            s.commit(&writes).unwrap();
        }
        s.commit(&[Write::put("bigger", *b"x", &0u32).unwrap()])
            .unwrap();
        let all = s.all::<u32>("big").unwrap();
        assert_eq!(all, (0u32..1700).collect::<Vec<_>>(), "{}", s.describe());
    }
}

/// Nothing reaches etcd in plaintext; a damaged value or another cluster's
/// key is a clear error, never a silent reset.
#[test]
fn etcd_values_are_sealed_and_checked() {
    let Some(server) = EtcdServer::start("sealed") else {
        return;
    };
    let secret = [0xc3u8; 32];
    let s = Store::open_etcd(&server.settings("/s/"), key(1)).unwrap();
    s.commit(&[Write::put("vault", *b"1-1", &secret).unwrap()])
        .unwrap();
    let on_disk = server.data_bytes();
    assert!(!on_disk.is_empty());
    assert!(
        !on_disk.windows(16).any(|w| w == &secret[..16]),
        "a key's bytes are in etcd's data directory"
    );
    // Another cluster's key.
    let other = Store::open_etcd(&server.settings("/s/"), key(2)).unwrap();
    let err = format!("{:#}", other.get::<[u8; 32]>("vault", b"1-1").unwrap_err());
    assert!(
        err.contains("does not open") && err.contains("cluster key"),
        "{err}"
    );
    // A value damaged in etcd (written there by hand).
    let settings = server.settings("/s/");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = settings.connect().await.unwrap();
        c.put(b"/s/d/vault\x001-1".to_vec(), b"garbage".to_vec(), None)
            .await
            .unwrap();
    });
    let err = format!("{:#}", s.get::<[u8; 32]>("vault", b"1-1").unwrap_err());
    assert!(
        err.contains("vault/1-1") && err.contains("not a sealed record"),
        "{err}"
    );
}

/// Two processes on one cluster: a commit based on a state the other has
/// changed since is refused by etcd, and so is every later one; one that
/// no longer holds the leader record commits nothing.
#[test]
fn etcd_commits_are_fenced() {
    let Some(server) = EtcdServer::start("fenced") else {
        return;
    };
    let settings = server.settings("/f/");
    let a = Store::open_etcd(&settings, key(1)).unwrap();
    let b = Store::open_etcd(&settings, key(1)).unwrap();
    a.commit(&[Write::put("t", *b"k", &1u32).unwrap()]).unwrap();
    let err = format!(
        "{:#}",
        b.commit(&[Write::put("t", *b"k", &2u32).unwrap()])
            .unwrap_err()
    );
    assert!(err.contains("changed by another hub"), "{err}");
    assert!(b.etcd().unwrap().fenced().is_some());
    assert_eq!(a.get::<u32>("t", b"k").unwrap(), Some(1), "no lost update");
    // Once fenced, never again (its memory is stale).
    assert!(b.commit(&[Write::put("t", *b"j", &3u32).unwrap()]).is_err());
    a.commit(&[Write::put("t", *b"k", &4u32).unwrap()]).unwrap();

    // Leading: commits compare the leader record.
    let leader = a.etcd().unwrap().leader_key();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let put_leader = |token: &'static [u8]| {
        let (settings, leader) = (settings.clone(), leader.clone());
        rt.block_on(async move {
            let mut c = settings.connect().await.unwrap();
            c.put(leader, token.to_vec(), None).await.unwrap();
        })
    };
    put_leader(b"hub-a");
    a.etcd().unwrap().lead_with(b"hub-a".to_vec()).unwrap();
    a.commit(&[Write::put("t", *b"k", &5u32).unwrap()]).unwrap();
    put_leader(b"hub-c");
    let err = format!(
        "{:#}",
        a.commit(&[Write::put("t", *b"k", &6u32).unwrap()])
            .unwrap_err()
    );
    assert!(err.contains("no longer holds the leader record"), "{err}");
    let c = Store::open_etcd(&settings, key(1)).unwrap();
    assert_eq!(c.get::<u32>("t", b"k").unwrap(), Some(5));
}

/// An etcd that does not answer is a clear error within the call timeout.
#[test]
fn an_unreachable_etcd_is_a_clear_error() {
    let settings = EtcdSettings::new(vec![format!("http://127.0.0.1:{}", free_port())]);
    let err = match Store::open_etcd(&settings, key(1)) {
        Ok(_) => panic!("opened a store on a closed port"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("127.0.0.1"), "{err}");
    let bad = EtcdSettings::new(vec!["127.0.0.1:2379".into()]);
    let err = match Store::open_etcd(&bad, key(1)) {
        Ok(_) => panic!("accepted an endpoint without a scheme"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("http://"), "{err}");
}

/// A hub on etcd keeps its throw-away keys in the store: put, read, listed,
/// erased; never in plaintext in etcd's files.
#[test]
fn a_vault_in_etcd_keeps_keys_sealed() {
    let Some(server) = EtcdServer::start("vault") else {
        return;
    };
    let store = Store::open_etcd(&server.settings("/v/"), key(3)).unwrap();
    let vault = crate::vault::KeyVault::in_store(store.clone());
    let k = SecretKey::from_bytes([0x6d; 32]);
    vault.put("4-2", &k).unwrap();
    vault.put("4-3", &SecretKey::from_bytes([1; 32])).unwrap();
    assert_eq!(vault.get("4-2").unwrap(), Some(k.clone()));
    assert_eq!(vault.names().unwrap(), vec!["4-2", "4-3"]);
    vault.erase("4-2").unwrap();
    vault.erase("4-2").unwrap();
    assert_eq!(vault.get("4-2").unwrap(), None);
    assert_eq!(vault.names().unwrap(), vec!["4-3"]);
    assert!(vault.put("../x", &k).is_err());
    assert!(!server.data_bytes().windows(32).any(|w| w == k.expose()));
    // Read all at once while loading: the same answers, puts and erasures
    // seen.
    vault.preload().unwrap();
    assert_eq!(vault.names().unwrap(), vec!["4-3"]);
    vault.put("4-4", &k).unwrap();
    assert_eq!(vault.get("4-4").unwrap(), Some(k.clone()));
    vault.erase("4-3").unwrap();
    assert_eq!(vault.get("4-3").unwrap(), None);
    assert_eq!(vault.names().unwrap(), vec!["4-4"]);
    vault.end_preload();
    assert_eq!(vault.names().unwrap(), vec!["4-4"]);
    assert_eq!(vault.get("4-4").unwrap(), Some(k));
}

/// TLS to etcd with a client certificate: the store works over it; without
/// the certificate, or with another CA, it is a clear error.
#[test]
fn etcd_over_tls_with_a_client_certificate() {
    let Some((server, pki)) = EtcdServer::start_tls("tls") else {
        return;
    };
    let with_cert = EtcdSettings {
        etcd_ca: Some(pki.join("ca.pem")),
        etcd_cert: Some(pki.join("client.pem")),
        etcd_key: Some(pki.join("client.key")),
        ..server.settings("/tls/")
    };
    let s = Store::open_etcd(&with_cert, key(4)).unwrap();
    s.commit(&[Write::put("t", *b"k", &7u32).unwrap()]).unwrap();
    assert_eq!(s.get::<u32>("t", b"k").unwrap(), Some(7));
    drop(s);
    let no_cert = EtcdSettings {
        etcd_ca: Some(pki.join("ca.pem")),
        ..server.settings("/tls/")
    };
    assert!(
        Store::open_etcd(&no_cert, key(4)).is_err(),
        "etcd took a client without a certificate"
    );
    let wrong_ca = EtcdSettings {
        etcd_ca: Some(pki.join("client.pem")),
        ..with_cert.clone()
    };
    assert!(
        Store::open_etcd(&wrong_ca, key(4)).is_err(),
        "a server signed by another CA was trusted"
    );
    let _ = std::fs::remove_dir_all(&pki);
}
