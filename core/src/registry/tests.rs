//! The registry's rules, case by case.

use super::*;
use rand::{rngs::StdRng, SeedableRng};

fn registry() -> Registry {
    Registry::new(
        HubSettings {
            endpoint: "192.0.2.1:51820".into(),
            tunnel_net: "10.77.0.0/29".parse().unwrap(),
            routes: vec![],
            keepalive_secs: 25,
        },
        [],
        [],
    )
}

const HUB: PublicKey = PublicKey([1; 32]);

#[test]
fn invite_then_enrol_once() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut r = registry();
    let (_, inv) = r
        .invite("laptop", true, false, None, 60, HUB, 100, &mut rng)
        .unwrap();
    let spoke = PublicKey([2; 32]);
    let secret = r.enrolment_secret(&inv.id, &spoke, 110).unwrap();
    assert_eq!(secret, inv.secret);
    let e = r
        .enrol(&inv.id, spoke, "1.2.3.4:5", "host", None, 110, &mut rng)
        .unwrap();
    assert_eq!(e.spoke.id, 1);
    assert_eq!(
        e.spoke.tunnel_addr,
        "10.77.0.2".parse::<Ipv4Addr>().unwrap()
    );
    assert_eq!(e.spoke.state, SpokeState::Active);
    assert_eq!(e.first_epoch.as_ref().map(|k| k.number), Some(1));
    // Another key cannot reuse it.
    let other = PublicKey([3; 32]);
    assert_eq!(
        r.enrolment_secret(&inv.id, &other, 111).unwrap_err().code,
        RefusalCode::InvitationUsed
    );
    // The same key may retry and gets the same record, no new key.
    let again = r
        .enrol(&inv.id, spoke, "1.2.3.4:5", "host", None, 112, &mut rng)
        .unwrap();
    assert_eq!(again.spoke, e.spoke);
    assert!(again.first_epoch.is_none());
    assert_eq!(r.attach(&spoke).unwrap().id, 1);
}

#[test]
fn expired_and_unknown_invitations_are_refused() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut r = registry();
    let (_, inv) = r
        .invite("a", true, false, None, 10, HUB, 100, &mut rng)
        .unwrap();
    let k = PublicKey([2; 32]);
    assert_eq!(
        r.enrolment_secret(&inv.id, &k, 110).unwrap_err().code,
        RefusalCode::InvitationExpired
    );
    assert_eq!(
        r.enrolment_secret(&InvitationId([0; 16]), &k, 100)
            .unwrap_err()
            .code,
        RefusalCode::UnknownInvitation
    );
    assert!(r.enrol(&inv.id, k, "", "", None, 110, &mut rng).is_err());
    assert!(r.spokes().next().is_none());
    assert_eq!(r.expire_invitations(200, 0), vec![inv.id]);
}

#[test]
fn names_are_checked() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut r = registry();
    assert!(matches!(
        r.invite("", true, false, None, 10, HUB, 0, &mut rng),
        Err(RegistryError::InvalidName(_))
    ));
    assert!(matches!(
        r.invite("a b", true, false, None, 10, HUB, 0, &mut rng),
        Err(RegistryError::InvalidName(_))
    ));
    r.invite("a", true, false, None, 10, HUB, 0, &mut rng)
        .unwrap();
    assert_eq!(
        r.invite("a", true, false, None, 10, HUB, 0, &mut rng)
            .unwrap_err(),
        RegistryError::NameTaken("a".into())
    );
    // Once the first invitation expired, the name is free again.
    assert!(r
        .invite("a", true, false, None, 10, HUB, 20, &mut rng)
        .is_ok());
    assert_eq!(
        r.invite("b", true, false, None, 0, HUB, 0, &mut rng)
            .unwrap_err(),
        RegistryError::ZeroValidity
    );
}

#[test]
fn pending_spokes_get_no_keys_and_cannot_attach() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut r = registry();
    let (_, inv) = r
        .invite("p", false, false, None, 60, HUB, 0, &mut rng)
        .unwrap();
    let k = PublicKey([4; 32]);
    let e = r.enrol(&inv.id, k, "", "", None, 1, &mut rng).unwrap();
    assert_eq!(e.spoke.state, SpokeState::Pending);
    assert!(e.first_epoch.is_none());
    assert_eq!(r.attach(&k).unwrap_err().code, RefusalCode::Pending);
    assert_eq!(
        r.attach(&PublicKey([9; 32])).unwrap_err().code,
        RefusalCode::UnknownSpoke
    );
}

#[test]
fn approve_deny_revoke() {
    let mut rng = StdRng::seed_from_u64(6);
    let mut r = registry();
    let mut enrol = |r: &mut Registry, name: &str, key: u8| {
        let (_, inv) = r
            .invite(name, false, false, None, 60, HUB, 0, &mut rng)
            .unwrap();
        r.enrol(&inv.id, PublicKey([key; 32]), "", "", None, 1, &mut rng)
            .unwrap()
    };
    enrol(&mut r, "p", 1);
    enrol(&mut r, "q", 2);
    assert_eq!(r.approve("p").unwrap().state, SpokeState::Active);
    assert!(matches!(
        r.approve("p"),
        Err(RegistryError::WrongState { .. })
    ));
    assert_eq!(r.attach(&PublicKey([1; 32])).unwrap().name, "p");
    assert_eq!(r.deny("q").unwrap().state, SpokeState::Denied);
    assert_eq!(
        r.attach(&PublicKey([2; 32])).unwrap_err().code,
        RefusalCode::Revoked
    );
    assert_eq!(r.revoke("p").unwrap().state, SpokeState::Revoked);
    assert_eq!(
        r.attach(&PublicKey([1; 32])).unwrap_err().code,
        RefusalCode::Revoked
    );
    assert!(matches!(
        r.revoke("nobody"),
        Err(RegistryError::NoSuchSpoke(_))
    ));
    // The name is free again; the revoked key cannot come back with a new invitation.
    let (_, inv) = r
        .invite("p", true, false, None, 60, HUB, 2, &mut rng)
        .unwrap();
    let err = r
        .enrol(&inv.id, PublicKey([1; 32]), "", "", None, 3, &mut rng)
        .unwrap_err();
    assert_eq!(err.code, RefusalCode::Revoked);
    let fresh = r
        .enrol(&inv.id, PublicKey([9; 32]), "", "", None, 3, &mut rng)
        .unwrap();
    assert_eq!(fresh.spoke.state, SpokeState::Active);
    assert_eq!(r.spoke_by_name("p").unwrap().public_key, PublicKey([9; 32]));
}

#[test]
fn an_unstored_change_is_undone() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut r = registry();
    let (_, kept) = r
        .invite("kept", true, false, None, 60, HUB, 0, &mut rng)
        .unwrap();
    // An invitation the store refused: gone, and its name free again.
    let (_, lost) = r
        .invite("lost", true, false, None, 60, HUB, 0, &mut rng)
        .unwrap();
    r.undo();
    assert!(r.invitations().all(|i| i.id != lost.id));
    r.invite("lost", true, false, None, 60, HUB, 0, &mut rng)
        .unwrap();
    // An enrolment the store refused: the spoke and its key are forgotten,
    // the invitation is unused and the address free.
    let key = PublicKey([4; 32]);
    let e = r.enrol(&kept.id, key, "", "", None, 1, &mut rng).unwrap();
    r.undo();
    assert!(r.spoke(e.spoke.id).is_none());
    assert!(r.spoke_by_key(&key).is_none());
    assert_eq!(r.attach(&key).unwrap_err().code, RefusalCode::UnknownSpoke);
    let again = r
        .enrol(&kept.id, PublicKey([5; 32]), "", "", None, 2, &mut rng)
        .unwrap();
    assert_eq!(again.spoke.tunnel_addr, e.spoke.tunnel_addr);
    assert!(again.first_epoch.is_some());
    // A revocation the store refused: the spoke is active again.
    r.revoke("kept").unwrap();
    r.undo();
    assert_eq!(r.attach(&PublicKey([5; 32])).unwrap().name, "kept");
    // A refused change replaces nothing, so undo after it changes nothing.
    assert!(r.revoke("nobody").is_err());
    r.undo();
    assert_eq!(r.spokes().count(), 1);
    assert_eq!(r.attach(&PublicKey([5; 32])).unwrap().name, "kept");
}

#[test]
fn addresses_run_out_cleanly() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut r = registry();
    // /29: hosts .1-.6, hub takes .1, so five spokes fit.
    for i in 0..5u8 {
        let name = format!("s{i}");
        let (_, inv) = r
            .invite(&name, true, false, None, 60, HUB, 0, &mut rng)
            .unwrap();
        r.enrol(&inv.id, PublicKey([10 + i; 32]), "", "", None, 1, &mut rng)
            .unwrap();
    }
    let (_, inv) = r
        .invite("s5", true, false, None, 60, HUB, 0, &mut rng)
        .unwrap();
    let err = r
        .enrol(&inv.id, PublicKey([99; 32]), "", "", None, 1, &mut rng)
        .unwrap_err();
    assert_eq!(err.code, RefusalCode::Internal);
}

#[test]
fn a_wireguard_peer_is_active_at_once_and_never_attaches() {
    let mut r = registry();
    let key = PublicKey([4; 32]);
    let peer = r.add_wireguard("phone", key, Some("alice"), 100).unwrap();
    assert!(peer.is_wireguard());
    assert_eq!(peer.state, SpokeState::Active);
    assert_eq!(peer.owner.as_deref(), Some("alice"));
    assert_eq!(peer.tunnel_addr, "10.77.0.2".parse::<Ipv4Addr>().unwrap());
    assert_eq!(peer.invitation, InvitationId::NONE);
    // Its key cannot open a control channel, nor be added twice.
    assert_eq!(r.attach(&key).unwrap_err().code, RefusalCode::UnknownSpoke);
    assert_eq!(
        r.add_wireguard("tablet", key, None, 101).unwrap_err(),
        RegistryError::KeyTaken("phone".into())
    );
    assert_eq!(
        r.add_wireguard("phone", PublicKey([5; 32]), None, 101)
            .unwrap_err(),
        RegistryError::NameTaken("phone".into())
    );
    // A change the store refused is undone.
    r.add_wireguard("gone", PublicKey([6; 32]), None, 101)
        .unwrap();
    r.undo();
    assert!(r.spoke_by_name("gone").is_none());
    assert!(r.spoke_by_key(&PublicKey([6; 32])).is_none());
    // The /29 has five addresses for spokes.
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        r.add_wireguard(name, PublicKey([10 + i as u8; 32]), None, 102)
            .unwrap();
    }
    assert!(matches!(
        r.add_wireguard("f", PublicKey([20; 32]), None, 103),
        Err(RegistryError::AddressesExhausted(_))
    ));
}

/// A record stored before spokes had a kind reads back as a tasuki spoke.
#[test]
fn a_record_from_before_wireguard_peers_reads_as_a_tasuki_spoke() {
    let mut rng = StdRng::seed_from_u64(10);
    let mut r = registry();
    let (_, inv) = r
        .invite("old", true, false, None, 60, HUB, 100, &mut rng)
        .unwrap();
    let e = r
        .enrol(
            &inv.id,
            PublicKey([8; 32]),
            "1.2.3.4:5",
            "h",
            None,
            110,
            &mut rng,
        )
        .unwrap();
    let mut bytes = postcard::to_allocvec(&e.spoke).unwrap();
    // The old layout is the new one without its last field (one byte).
    assert_eq!(bytes.pop(), Some(0));
    assert!(postcard::from_bytes::<SpokeRecord>(&bytes).is_err());
    let old: LegacySpokeRecord = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(SpokeRecord::from(old), e.spoke);
}
