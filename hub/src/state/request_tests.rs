//! Access requests at the hub: policies checked against the groups and
//! stored, decisions stored before they count, and a restart between
//! any two of them.

use tasuki_core::requests::{Approver, ApproverSel, Grant, RequestPolicy, RequestState};

use super::test_hub::{load, new_hub, TempDir};
use super::*;

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
