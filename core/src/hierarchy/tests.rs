use super::*;

fn nets(v4: &[&str], v6: &[&str]) -> ServedNets {
    ServedNets {
        v4: v4.iter().map(|n| n.parse().unwrap()).collect(),
        v6: v6.iter().map(|n| n.parse().unwrap()).collect(),
    }
}

fn own() -> ServedNets {
    nets(&["10.0.0.0/24", "192.168.1.0/24"], &["fd00:0:0:1::/64"])
}

/// A parent with child `a` joined as spoke 2 and approved, and `b`
/// joined as spoke 3 and not approved yet.
fn parent() -> Hierarchy {
    let mut h = Hierarchy::default();
    for name in ["a", "b"] {
        let child = h.invite(name, 100).unwrap();
        h.put(child);
    }
    let a = h
        .announced("a", 2, nets(&["10.1.0.0/24", "192.168.11.0/24"], &[]))
        .unwrap();
    h.put(a);
    let a = h.approval("a", &own()).unwrap();
    h.put(a);
    let b = h
        .announced("b", 3, nets(&["10.2.0.0/24"], &["fd00:0:0:2::/64"]))
        .unwrap();
    h.put(b);
    h
}

#[test]
fn an_announcement_is_checked_on_its_own() {
    let bad = [
        nets(&["0.0.0.0/0"], &[]),
        nets(&["10.0.0.0/7"], &[]),
        nets(&["127.0.0.0/8"], &[]),
        nets(&["224.0.0.0/8"], &[]),
        nets(&["169.254.0.0/16"], &[]),
        nets(&[], &["fe80::/64"]),
        nets(&[], &["ff02::/16"]),
        nets(&[], &["::ffff:10.0.0.0/104"]),
        nets(&["10.1.0.0/16", "10.1.2.0/24"], &[]),
    ];
    for n in bad {
        assert!(n.check().is_err(), "{n:?} must be refused");
    }
    let many = ServedNets {
        v4: (0..=MAX_SERVED as u32)
            .map(|i| Ipv4Net::new(std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap())
            .collect(),
        v6: vec![],
    };
    assert!(matches!(many.check(), Err(HierarchyError::TooMany { .. })));
    assert!(own().check().is_ok());
}

#[test]
fn only_an_invited_child_announces() {
    let h = Hierarchy::default();
    assert_eq!(
        h.announced("x", 5, nets(&["10.9.0.0/24"], &[])),
        Err(HierarchyError::NoSuchChild("x".into()))
    );
    let mut h = parent();
    assert_eq!(
        h.invite("a", 1).unwrap_err(),
        HierarchyError::NameTaken("a".into())
    );
    let c = h.invite("c", 1).unwrap();
    h.put(c);
    assert_eq!(
        h.approval("c", &own()),
        Err(HierarchyError::NotJoined("c".into()))
    );
}

#[test]
fn nothing_is_routed_to_a_child_before_its_approval() {
    let h = parent();
    let routes = h.child_routes();
    assert_eq!(routes.len(), 1, "only a is approved: {routes:?}");
    assert_eq!(routes[0].0, 2);
    assert!(h.child("b").unwrap().routed().is_empty());
    assert_eq!(h.child("b").unwrap().unapproved().v4.len(), 1);
}

#[test]
fn an_overlap_is_refused_naming_both() {
    let mut h = parent();
    // b announces a subnet inside a's branch.
    let b = h.announced("b", 3, nets(&["10.1.0.128/25"], &[])).unwrap();
    h.put(b);
    let err = h.approval("b", &own()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "10.1.0.128/25 overlaps 10.1.0.0/24, which child hub \"a\" serves"
    );
    // b announces the parent's own LAN.
    let b = h.announced("b", 3, nets(&["192.168.1.0/25"], &[])).unwrap();
    h.put(b);
    assert!(matches!(
        h.approval("b", &own()),
        Err(HierarchyError::Overlap { owner, .. }) if owner == "this hub"
    ));
}

#[test]
fn a_hub_that_joins_its_own_descendant_is_refused() {
    // The child c hears from its parent p what the rest of the tree serves
    // (p's own networks among them); p then asks to join c as a child.
    let mut c = Hierarchy::default();
    let c_own = nets(&["10.3.0.0/24"], &[]);
    let dropped = c.set_upstream(&nets(&["10.0.0.0/24", "10.3.0.0/24"], &[]), &c_own);
    assert_eq!(
        dropped,
        nets(&["10.3.0.0/24"], &[]),
        "its own net never comes from above"
    );
    let p = c.invite("p", 1).unwrap();
    c.put(p);
    let p = c.announced("p", 9, nets(&["10.0.0.0/24"], &[])).unwrap();
    c.put(p);
    let err = c.approval("p", &c_own).unwrap_err();
    assert!(
        matches!(&err, HierarchyError::Overlap { owner, .. } if owner.contains("rest of the tree")),
        "{err}"
    );
}

#[test]
fn routes_flow_up_and_down() {
    let mut h = parent();
    let b = h.approval("b", &own()).unwrap();
    h.put(b);
    h.set_upstream(&nets(&["10.100.0.0/24"], &[]), &own());
    // Up: the parent's own networks and both branches.
    let up = h.announcement(&own());
    for n in [
        "10.0.0.0/24",
        "10.1.0.0/24",
        "10.2.0.0/24",
        "192.168.11.0/24",
    ] {
        assert!(up.v4.contains(&n.parse().unwrap()), "{n} announced up");
    }
    assert!(
        !up.v4.contains(&"10.100.0.0/24".parse().unwrap()),
        "what came from above does not go back up"
    );
    // Down: a is told of b's branch and the rest of the tree, not of its own.
    let to_a = h.routes_for(2);
    assert!(to_a.v4.contains(&"10.2.0.0/24".parse().unwrap()));
    assert!(to_a.v6.contains(&"fd00:0:0:2::/64".parse().unwrap()));
    assert!(to_a.v4.contains(&"10.100.0.0/24".parse().unwrap()));
    assert!(!to_a.v4.contains(&"10.1.0.0/24".parse().unwrap()));
    // A plain spoke hears of every branch.
    let to_spoke = h.routes_for(7);
    assert!(to_spoke.v4.contains(&"10.1.0.0/24".parse().unwrap()));
    assert!(to_spoke.v4.contains(&"10.2.0.0/24".parse().unwrap()));
}

#[test]
fn a_removed_child_takes_its_routes_along() {
    let mut h = parent();
    assert!(h.remove("a").is_some());
    assert!(h.child_routes().is_empty());
    assert!(h.routes_for(7).is_empty());
}

#[test]
fn what_a_child_was_approved_for_stays_its_own_while_it_announces_less() {
    let mut h = parent();
    // a shrinks its announcement to its tunnel network alone.
    let a = h.announced("a", 2, nets(&["10.1.0.0/24"], &[])).unwrap();
    h.put(a);
    // b asks for the LAN a was approved for: refused.
    let b = h
        .announced("b", 3, nets(&["192.168.11.0/24"], &[]))
        .unwrap();
    h.put(b);
    let err = h.approval("b", &own()).unwrap_err();
    assert!(
        matches!(&err, HierarchyError::Overlap { owner, .. } if owner.contains("\"a\"")),
        "{err}"
    );
}
