//! The requests' rules case by case, and approvals arriving in every order
//! with restarts (a restore from what was stored) between any two steps.

use super::*;
use crate::access::Service;

fn policy(required: u32) -> RequestPolicy {
    RequestPolicy {
        name: "prod-db".into(),
        grant: Grant::Rules(vec![GrantRule {
            to: "192.168.50.10".parse().unwrap(),
            services: vec!["tcp/5432".parse::<Service>().unwrap()],
        }]),
        approvers: vec![
            ApproverSel::User("bob".into()),
            ApproverSel::User("carol".into()),
            ApproverSel::Group("leads".into()),
        ],
        required,
        max_duration_secs: 8 * 3600,
        decide_within_secs: 3600,
        requesters: Some(vec![ApproverSel::Group("devs".into())]),
    }
}

fn user(id: &str) -> Approver {
    Approver::User {
        id: id.into(),
        spoke: format!("{id}-laptop"),
    }
}

fn with_policy(required: u32) -> Requests {
    let mut r = Requests::default();
    r.set_policy(policy(required)).unwrap();
    r
}

fn devs() -> Vec<String> {
    vec!["devs".into()]
}

fn ask(r: &mut Requests, who: &str, now: u64) -> Result<Outcome, RequestError> {
    r.ask(
        "prod-db",
        (who, "laptop", &devs()),
        3600,
        "fix the migration",
        now,
    )
}

#[test]
fn the_grant_begins_with_the_last_approval_needed_and_not_before() {
    let mut r = with_policy(2);
    let id = ask(&mut r, "alice", 100).unwrap().request.id;
    assert_eq!(r.grants().count(), 0);
    let first = r.approve(id, &user("bob"), &[], 110).unwrap();
    assert!(!first.grants_changed);
    assert_eq!(first.request.state, RequestState::Waiting);
    assert_eq!(r.grants().count(), 0, "one of two approvals grants nothing");
    let second = r.approve(id, &Approver::Admin, &[], 120).unwrap();
    assert!(second.grants_changed);
    assert_eq!(
        second.request.state,
        RequestState::Granted { until: 120 + 3600 }
    );
    assert_eq!(r.grants().count(), 1);
    // Its time ends it.
    assert!(r.tick(120 + 3599).is_empty());
    let over = r.tick(120 + 3600);
    assert_eq!(over.len(), 1);
    assert!(over[0].grants_changed);
    assert_eq!(over[0].request.state, RequestState::Over);
    assert_eq!(r.grants().count(), 0);
}

#[test]
fn self_approval_a_second_yes_and_outsiders_do_not_count() {
    let mut r = with_policy(2);
    let id = ask(&mut r, "alice", 100).unwrap().request.id;
    let own = r.approve(id, &user("alice"), &["leads".into()], 101);
    assert!(matches!(own, Err(RequestError::Denied(_))), "{own:?}");
    r.approve(id, &user("bob"), &[], 102).unwrap();
    let twice = r.approve(
        id,
        &Approver::User {
            id: "bob".into(),
            spoke: "other".into(),
        },
        &[],
        103,
    );
    assert!(
        matches!(twice, Err(RequestError::WrongState(_))),
        "{twice:?}"
    );
    let outsider = r.approve(id, &user("mallory"), &["devs".into()], 104);
    assert!(
        matches!(outsider, Err(RequestError::Denied(_))),
        "{outsider:?}"
    );
    assert_eq!(r.request(id).unwrap().approvals.len(), 1);
    assert_eq!(r.grants().count(), 0);
    // A lead (by group) is an approver.
    assert!(
        r.approve(id, &user("dave"), &["leads".into()], 105)
            .unwrap()
            .grants_changed
    );
    let late = r.approve(id, &user("carol"), &[], 106);
    assert!(
        matches!(late, Err(RequestError::WrongState(_))),
        "granted already"
    );
}

#[test]
fn a_denial_ends_it_and_an_unapproved_request_expires() {
    let mut r = with_policy(2);
    let a = ask(&mut r, "alice", 100).unwrap().request.id;
    r.approve(a, &user("bob"), &[], 101).unwrap();
    let no = r.deny(a, &user("carol"), &[], 102).unwrap();
    assert_eq!(
        no.request.state,
        RequestState::Denied {
            by: "user:carol".into()
        }
    );
    assert!(
        r.approve(a, &Approver::Admin, &[], 103).is_err(),
        "denied stays denied"
    );
    let b = ask(&mut r, "alice", 200).unwrap().request.id;
    r.approve(b, &user("bob"), &[], 201).unwrap();
    assert!(
        matches!(
            r.approve(b, &user("carol"), &[], 200 + 3600),
            Err(RequestError::WrongState(_))
        ),
        "an approval after the time to decide is refused"
    );
    let expired = r.tick(200 + 3600);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].request.state, RequestState::Expired);
    assert_eq!(r.grants().count(), 0);
}

#[test]
fn asking_is_bounded_and_checked() {
    let mut r = with_policy(1);
    let nodev = r.ask("prod-db", ("eve", "laptop", &[]), 3600, "x", 1);
    assert!(
        matches!(nodev, Err(RequestError::Denied(_))),
        "not a requester"
    );
    let long = r.ask("prod-db", ("alice", "laptop", &devs()), 9 * 3600, "x", 1);
    assert!(
        matches!(long, Err(RequestError::Invalid(_))),
        "longer than the policy allows"
    );
    let silent = r.ask("prod-db", ("alice", "laptop", &devs()), 60, "  ", 1);
    assert!(matches!(silent, Err(RequestError::Invalid(_))), "no reason");
    assert!(matches!(
        r.ask("nope", ("alice", "laptop", &devs()), 60, "x", 1),
        Err(RequestError::NotFound(_))
    ));
    for _ in 0..MAX_OPEN_PER_USER {
        ask(&mut r, "alice", 1).unwrap();
    }
    assert!(matches!(
        ask(&mut r, "alice", 1),
        Err(RequestError::TooMany(_))
    ));
    ask(&mut r, "bob", 1).expect("another user may still ask");
    // Policies refuse what cannot work.
    let mut bad = policy(5);
    bad.approvers = vec![ApproverSel::User("bob".into())];
    assert!(
        r.set_policy(bad).is_err(),
        "5 approvals from one named approver"
    );
    assert!(r
        .set_policy(RequestPolicy {
            required: 0,
            ..policy(1)
        })
        .is_err());
    assert!(r
        .set_policy(RequestPolicy {
            name: "a b".into(),
            ..policy(1)
        })
        .is_err());
    assert!(
        matches!(r.remove_policy("prod-db"), Err(RequestError::WrongState(_))),
        "open requests"
    );
}

#[test]
fn revocation_and_the_requester_leaving_end_a_grant_at_once() {
    let mut r = with_policy(1);
    let a = ask(&mut r, "alice", 10).unwrap().request.id;
    r.approve(a, &user("bob"), &[], 11).unwrap();
    let b = ask(&mut r, "alice", 12).unwrap().request.id;
    r.approve(b, &user("bob"), &[], 13).unwrap();
    let c = ask(&mut r, "frank", 14).unwrap().request.id;
    let gone = r.revoke(a, 15).unwrap();
    assert!(gone.grants_changed);
    assert_eq!(gone.request.state, RequestState::Revoked);
    assert!(r.revoke(a, 16).is_err(), "revoked once");
    let left = r.requester_gone("alice", 17);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].request.id, b);
    assert_eq!(
        r.request(c).unwrap().state,
        RequestState::Waiting,
        "frank's stays"
    );
    assert_eq!(r.grants().count(), 0);
}

/// Three approvers' answers in every order, with a restart from the
/// stored records before each step: the grant comes with the second yes,
/// whatever the order, exactly once.
#[test]
fn approvals_in_every_order_across_restarts_grant_once() {
    let who = [user("bob"), user("carol"), Approver::Admin];
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let mut r = with_policy(2);
        let mut stored: BTreeMap<u64, Request> = BTreeMap::new();
        let first = ask(&mut r, "alice", 100).unwrap();
        stored.insert(first.request.id, first.request.clone());
        let mut grants = 0;
        for (step, i) in order.iter().enumerate() {
            // A restart: only what was stored comes back.
            r = Requests::restore(vec![policy(2)], stored.values().cloned().collect());
            let now = 101 + step as u64;
            match r.approve(first.request.id, &who[*i], &[], now) {
                Ok(out) => {
                    grants += usize::from(out.grants_changed);
                    stored.insert(out.request.id, out.request);
                }
                Err(RequestError::WrongState(_)) => assert_eq!(step, 2, "refused before the grant"),
                Err(e) => panic!("{order:?}: {e}"),
            }
        }
        assert_eq!(grants, 1, "{order:?}");
        let r = Requests::restore(vec![policy(2)], stored.values().cloned().collect());
        assert_eq!(r.grants().count(), 1, "{order:?}");
        let next = ask(&mut r.clone(), "alice", 200).unwrap().request.id;
        assert!(next > first.request.id, "numbers go on after a restart");
    }
}

use std::collections::BTreeMap;

#[test]
fn a_policy_changed_later_changes_no_grant_in_force_and_outsiders_learn_nothing() {
    let mut r = with_policy(1);
    let id = ask(&mut r, "alice", 10).unwrap().request.id;
    let outsider = r.approve(id, &user("mallory"), &[], 11).unwrap_err();
    assert!(!outsider.to_string().contains("prod-db"), "{outsider}");
    r.approve(id, &user("bob"), &[], 12).unwrap();
    let wider = RequestPolicy {
        grant: Grant::Group("admins".into()),
        ..policy(1)
    };
    r.set_policy(wider).unwrap();
    let (_, g) = r.grants().next().expect("still granted");
    assert!(
        matches!(g, Grant::Rules(_)),
        "the grant is what was approved: {g:?}"
    );
    let bad = r.ask(
        "prod-db",
        ("alice", "laptop", &devs()),
        60,
        "a\u{1b}[2Jb",
        13,
    );
    assert!(
        matches!(bad, Err(RequestError::Invalid(_))),
        "control characters in a reason"
    );
    let twice = RequestPolicy {
        approvers: vec![
            ApproverSel::User("bob".into()),
            ApproverSel::User("bob".into()),
        ],
        ..policy(3)
    };
    assert!(
        r.set_policy(twice).is_err(),
        "one approver named twice counts once"
    );
}

#[test]
fn an_approver_who_leaves_the_approving_group_counts_no_more() {
    let mut r = with_policy(2);
    let id = ask(&mut r, "alice", 100).unwrap().request.id;
    // dave approves as a lead, then leaves the leads.
    r.approve(id, &user("dave"), &["leads".into()], 110)
        .unwrap();
    let still = |u: &str, p: &RequestPolicy| p.is_approver(u, &[]);
    let withdrawn = r.withdraw_approvals(still, 120);
    assert_eq!(withdrawn.len(), 1);
    assert!(withdrawn[0].request.approvals.is_empty());
    assert!(!withdrawn[0].grants_changed);
    // bob's yes is the first of two again: nothing granted.
    let bob = r.approve(id, &user("bob"), &[], 130).unwrap();
    assert_eq!(bob.request.state, RequestState::Waiting);
    // Nothing more to withdraw; an admin's yes is never withdrawn.
    r.approve(id, &Approver::Admin, &[], 140).unwrap();
    assert!(r.withdraw_approvals(|_, _| false, 150).is_empty());
    assert_eq!(
        r.grants().count(),
        1,
        "a granted request keeps its approvals"
    );
}
