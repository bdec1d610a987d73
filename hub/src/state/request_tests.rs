//! Access requests at the hub: policies checked against the groups and
//! stored, decisions stored before they count, and a restart between
//! any two of them.

use tasuki_core::requests::{Approver, ApproverSel, Grant, RequestPolicy, RequestState};

use super::test_hub::{load, new_hub, spoke, TempDir};
use super::*;
use tasuki_core::control::UserReply;

/// `user` (added when new) logged in on a new spoke `name` (stored, as a
/// login is); its session's queue.
fn log_in(st: &mut HubState, user: &str, name: &str) -> (SpokeId, mpsc::Receiver<HubMessage>) {
    if !st.user_exists(user) {
        st.add_user(user, user, &format!("{user}@example.com"), 1)
            .unwrap();
    }
    let (id, rx) = spoke(st, name, 1);
    st.logins.entry(id).or_default().insert(user.into());
    st.commit_logins_again(id).unwrap();
    (id, rx)
}

/// The last approvals notice for `user` in a session's queue.
fn last_notice(rx: &mut mpsc::Receiver<HubMessage>, user: &str) -> Option<Vec<u64>> {
    let mut last = None;
    while let Ok(msg) = rx.try_recv() {
        if let HubMessage::ApprovalsWaiting(w) = msg {
            if w.user == user {
                last = Some(w.requests.iter().map(|r| r.id).collect());
            }
        }
    }
    last
}

fn policy(required: u32) -> RequestPolicy {
    RequestPolicy {
        name: "prod-db".into(),
        grant: Grant::Group("prod".into()),
        approvers: vec![
            ApproverSel::User("bob".into()),
            ApproverSel::User("carol".into()),
        ],
        required,
        max_duration_secs: 3600,
        decide_within_secs: 600,
        requesters: None,
    }
}

#[test]
fn policies_name_groups_that_exist_and_requests_survive_a_restart() {
    let dir = TempDir::new("requests");
    let (mut st, key) = new_hub(&dir);
    // alice stays logged in on her laptop across the restarts.
    log_in(&mut st, "alice", "laptop");
    let refused = st.set_request_policy(policy(2), 1);
    assert!(
        matches!(refused, Err(StateError::NotFound(_))),
        "no group prod yet: {refused:?}"
    );
    st.edit_access(1, |p| p.add_group("prod").map(|_| "prod".into()))
        .unwrap();
    st.set_request_policy(policy(2), 1).unwrap();
    let asked = st
        .requests
        .ask("prod-db", ("alice", "laptop", &[]), 1800, "hotfix", 10)
        .unwrap();
    st.commit_outcomes(std::slice::from_ref(&asked)).unwrap();
    let id = asked.request.id;
    // One approval from an admin, then a restart: it is still counted.
    st.admin_decide_request(id, true, 20).unwrap();
    drop(st);
    let mut st = load(&dir, &key);
    assert_eq!(st.request_policies().len(), 1);
    let r = &st.access_requests()[0];
    assert_eq!(r.approvals.len(), 1);
    assert_eq!(r.state, RequestState::Waiting);
    assert!(
        st.admin_decide_request(id, true, 21).is_err(),
        "the admins count once"
    );
    let user = Approver::User {
        id: "bob".into(),
        spoke: "bob-laptop".into(),
    };
    let out = st.requests.approve(id, &user, &[], 22).unwrap();
    st.commit_outcomes(std::slice::from_ref(&out)).unwrap();
    assert!(out.grants_changed);
    drop(st);
    let mut st = load(&dir, &key);
    assert_eq!(
        st.requests.grants().count(),
        1,
        "granted across the restart"
    );
    assert!(
        st.remove_request_policy("prod-db", 23).is_err(),
        "a granted request holds its policy"
    );
    // Its time ends it, stored.
    st.requests_tick(22 + 1800);
    drop(st);
    let mut st = load(&dir, &key);
    assert_eq!(st.access_requests()[0].state, RequestState::Over);
    st.remove_request_policy("prod-db", 30).unwrap();
    let audit = st.audit_since(0).unwrap();
    let lines: Vec<&str> = audit.iter().map(|a| a.detail.as_str()).collect();
    assert!(
        lines.iter().any(|l| l.contains("waiting by an admin")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("over by time")),
        "{lines:?}"
    );
}

#[test]
fn a_grant_is_in_force_from_the_last_approval_until_it_ends() {
    use tasuki_core::access::{Member, Selector};
    use tasuki_core::requests::GrantRule;
    let dir = TempDir::new("requests-grant");
    let (mut st, _) = new_hub(&dir);
    st.edit_access(1, |p| p.add_group("prod").map(|_| "prod".into()))
        .unwrap();
    let rules = RequestPolicy {
        name: "db".into(),
        grant: Grant::Rules(vec![GrantRule {
            to: "192.168.50.10".parse().unwrap(),
            services: vec!["tcp/5432".parse().unwrap()],
        }]),
        ..policy(1)
    };
    st.set_request_policy(rules, 1).unwrap();
    st.set_request_policy(policy(1), 1).unwrap();
    let ask = |st: &mut HubState, p: &str, now| {
        let out = st
            .requests
            .ask(p, ("alice", "laptop", &[]), 600, "on call", now)
            .unwrap();
        st.commit_outcomes(std::slice::from_ref(&out)).unwrap();
        out.request.id
    };
    let a = ask(&mut st, "db", 10);
    let b = ask(&mut st, "prod-db", 10);
    assert_eq!(
        st.access_in_force().rules.len(),
        0,
        "nothing before the approval"
    );
    st.admin_decide_request(a, true, 11).unwrap();
    st.admin_decide_request(b, true, 11).unwrap();
    let p = st.access_in_force().into_owned();
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].from, Selector::User("alice".into()));
    assert!(p.groups["prod"].contains(&Member::User("alice".into())));
    assert!(
        st.access.rules.is_empty(),
        "the stored policy is not changed"
    );
    // Revoked: the rule goes at once; the group grant ends with its time.
    st.revoke_request(a, 12).unwrap();
    assert!(st.access_in_force().rules.is_empty());
    st.requests_tick(11 + 600);
    assert!(!st.access_in_force().groups["prod"].contains(&Member::User("alice".into())));
    // A grant whose group is gone is refused, and nothing is granted.
    let c = ask(&mut st, "prod-db", 700);
    st.edit_access(701, |p| p.remove_group("prod").map(|_| "gone".into()))
        .unwrap();
    let refused = st.admin_decide_request(c, true, 702);
    assert!(
        matches!(refused, Err(StateError::NotFound(_))),
        "{refused:?}"
    );
    assert_eq!(
        st.access_requests().last().unwrap().state,
        RequestState::Waiting
    );
}

#[test]
fn approvers_hear_what_waits_and_leavers_end_or_withdraw() {
    let dir = TempDir::new("requests-notices");
    let (mut st, key) = new_hub(&dir);
    st.edit_access(1, |p| p.add_group("prod").map(|_| "prod".into()))
        .unwrap();
    st.set_request_policy(policy(2), 1).unwrap();
    let (alice, mut alice_rx) = log_in(&mut st, "alice", "alice-laptop");
    let (_, mut bob) = log_in(&mut st, "bob", "bob-laptop");
    let (_, mut carol) = log_in(&mut st, "carol", "carol-laptop");
    let asked = st.ask_access(alice, "alice", "prod-db", 600, "deploy", 10);
    let UserReply::AccessRequest(r) = asked.unwrap() else {
        panic!("not a request")
    };
    assert_eq!(
        last_notice(&mut bob, "bob"),
        Some(vec![r.id]),
        "bob hears of it"
    );
    assert_eq!(last_notice(&mut carol, "carol"), Some(vec![r.id]));
    assert!(
        last_notice(&mut alice_rx, "alice")
            .unwrap_or_default()
            .is_empty(),
        "the requester is not asked to approve her own request"
    );
    st.announce_approvals();
    assert_eq!(
        last_notice(&mut bob, "bob"),
        None,
        "nothing changed, nothing sent again"
    );
    // carol approves; then she is removed: her yes counts no more.
    let carol_spoke = st.registry.spoke_by_name("carol-laptop").unwrap().id;
    st.decide_access(carol_spoke, "carol", r.id, true, 11)
        .unwrap();
    assert_eq!(
        last_notice(&mut carol, "carol"),
        Some(vec![]),
        "decided: cleared"
    );
    assert_eq!(st.access_requests()[0].approvals.len(), 1);
    st.remove_user("carol", 12).unwrap();
    assert!(st.access_requests()[0].approvals.is_empty(), "withdrawn");
    assert_eq!(st.access_requests()[0].state, RequestState::Waiting);
    // alice's laptop is revoked: she is logged in nowhere, her request ends.
    st.revoke("alice-laptop", 13).unwrap();
    assert_eq!(st.access_requests()[0].state, RequestState::RequesterGone);
    assert_eq!(
        last_notice(&mut bob, "bob"),
        Some(vec![]),
        "nothing waits now"
    );
    // A request whose requester logged out before a crash ended it ends at start.
    let (alice2, _) = log_in(&mut st, "alice", "alice-desk");
    st.ask_access(alice2, "alice", "prod-db", 600, "again", 20)
        .unwrap();
    st.logins.remove(&alice2);
    st.commit_logins_again(alice2).unwrap();
    drop(st);
    let st = load(&dir, &key);
    let last = st.access_requests().pop().unwrap();
    assert_eq!(last.state, RequestState::RequesterGone);
}

#[test]
fn a_policy_change_withdraws_approvals_and_endings_outlive_a_restart() {
    let dir = TempDir::new("requests-policy-change");
    let (mut st, key) = new_hub(&dir);
    st.edit_access(1, |p| p.add_group("prod").map(|_| "prod".into()))
        .unwrap();
    st.set_request_policy(policy(2), 1).unwrap();
    let (alice, _) = log_in(&mut st, "alice", "alice-laptop");
    let (_, mut bob) = log_in(&mut st, "bob", "bob-laptop");
    let (carol_spoke, _) = log_in(&mut st, "carol", "carol-laptop");
    let ask = |st: &mut HubState, why: &str, now| match st
        .ask_access(alice, "alice", "prod-db", 600, why, now)
        .unwrap()
    {
        UserReply::AccessRequest(r) => r.id,
        other => panic!("not a request: {other:?}"),
    };
    let first = ask(&mut st, "deploy", 10);
    st.decide_access(carol_spoke, "carol", first, true, 11)
        .unwrap();
    assert_eq!(st.access_requests()[0].approvals.len(), 1);
    // carol approves no more under the new policy: her yes is withdrawn.
    let mut changed = policy(2);
    changed.approvers = vec![
        ApproverSel::User("bob".into()),
        ApproverSel::User("dave".into()),
    ];
    st.set_request_policy(changed, 12).unwrap();
    assert!(st.access_requests()[0].approvals.is_empty(), "withdrawn");
    assert_eq!(last_notice(&mut bob, "bob"), Some(vec![first]));
    drop(st);
    let mut st = load(&dir, &key);
    assert!(
        st.access_requests()[0].approvals.is_empty(),
        "stored withdrawn"
    );
    // An ending held in memory only (its write was refused) is written by
    // the retry and stays ended across a restart.
    let second = ask(&mut st, "again", 20);
    let out = st.requests.revoke(second, 21).unwrap();
    assert!(!out.request.state.is_open());
    st.unsaved.insert(Unsaved::Request(second));
    st.store_unsaved_requests().unwrap();
    assert!(!st.unsaved.contains(&Unsaved::Request(second)), "written");
    drop(st);
    let mut st = load(&dir, &key);
    let stored = st.access_requests().into_iter().find(|r| r.id == second);
    assert!(!stored.unwrap().state.is_open(), "the ending was stored");
    // A user removed while the hub was down (the store holds their login
    // still): their login is dropped at start and their requests end.
    let third = ask(&mut st, "last", 30);
    st.store
        .commit(&[Write::remove(USERS_TREE, "alice".as_bytes())])
        .unwrap();
    drop(st);
    let st = load(&dir, &key);
    assert!(st.logins.values().all(|u| !u.contains("alice")));
    let stored = st.access_requests().into_iter().find(|r| r.id == third);
    assert_eq!(stored.unwrap().state, RequestState::RequesterGone);
}
