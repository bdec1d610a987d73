//! The stored policy, the admin's edits of it, and its compiled form with
//! every name resolved against the spokes and logins of the moment.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    AccessError, Flow, Member, Mode, Origin, Rule, Selector, Service, MAX_GROUPS, MAX_MEMBERS,
    MAX_RULES, MAX_SERVICES,
};
use crate::routing::SpokeId;

/// The whole access policy as the hub stores it: mode, rules and groups.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessPolicy {
    /// Whether the rules decide.
    pub mode: Mode,
    /// The allow rules, in the order they were added.
    pub rules: Vec<Rule>,
    /// Groups by name.
    pub groups: BTreeMap<String, BTreeSet<Member>>,
}

impl AccessPolicy {
    /// Appends a rule; its groups must exist.
    pub fn allow(&mut self, rule: Rule) -> Result<usize, AccessError> {
        if self.rules.len() >= MAX_RULES {
            return Err(AccessError::TooMany {
                what: "rules",
                max: MAX_RULES,
            });
        }
        if rule.services.is_empty() || rule.services.len() > MAX_SERVICES {
            return Err(AccessError::TooMany {
                what: "services in one rule (and at least one)",
                max: MAX_SERVICES,
            });
        }
        for end in [&rule.from, &rule.to] {
            if let Selector::Group(g) = end {
                if !self.groups.contains_key(g) {
                    return Err(AccessError::NoSuchGroup(g.clone()));
                }
            }
        }
        if let (Selector::Net(from), Selector::Net(to)) = (&rule.from, &rule.to) {
            if from.addr().is_ipv4() != to.addr().is_ipv4() {
                return Err(AccessError::Syntax(format!(
                    "{from} -> {to} mixes IPv4 and IPv6: no packet goes from one family to the other"
                )));
            }
        }
        self.rules.push(rule);
        Ok(self.rules.len())
    }

    /// Removes rule `number` (1-based) and returns it.
    pub fn remove_rule(&mut self, number: usize) -> Result<Rule, AccessError> {
        if number == 0 || number > self.rules.len() {
            return Err(AccessError::NoSuchRule(number));
        }
        Ok(self.rules.remove(number - 1))
    }

    /// Creates an empty group.
    pub fn add_group(&mut self, name: &str) -> Result<(), AccessError> {
        let Selector::Group(name) = format!("group:{name}").parse()? else {
            return Err(AccessError::Syntax(format!("group name {name:?}")));
        };
        if self.groups.contains_key(&name) {
            return Err(AccessError::GroupExists(name));
        }
        if self.groups.len() >= MAX_GROUPS {
            return Err(AccessError::TooMany {
                what: "groups",
                max: MAX_GROUPS,
            });
        }
        self.groups.insert(name, BTreeSet::new());
        Ok(())
    }

    /// Removes a group that no rule names.
    pub fn remove_group(&mut self, name: &str) -> Result<(), AccessError> {
        if !self.groups.contains_key(name) {
            return Err(AccessError::NoSuchGroup(name.to_owned()));
        }
        let group = Selector::Group(name.to_owned());
        let rules: Vec<usize> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.from == group || r.to == group)
            .map(|(i, _)| i + 1)
            .collect();
        if !rules.is_empty() {
            return Err(AccessError::GroupInUse {
                name: name.to_owned(),
                rules,
            });
        }
        self.groups.remove(name);
        Ok(())
    }

    /// Adds a member to a group (adding one twice is no error).
    pub fn add_member(&mut self, group: &str, member: Member) -> Result<(), AccessError> {
        let members = self
            .groups
            .get_mut(group)
            .ok_or_else(|| AccessError::NoSuchGroup(group.to_owned()))?;
        if !members.contains(&member) && members.len() >= MAX_MEMBERS {
            return Err(AccessError::TooMany {
                what: "members in one group",
                max: MAX_MEMBERS,
            });
        }
        members.insert(member);
        Ok(())
    }

    /// Takes a member out of a group.
    pub fn remove_member(&mut self, group: &str, member: &Member) -> Result<(), AccessError> {
        let members = self
            .groups
            .get_mut(group)
            .ok_or_else(|| AccessError::NoSuchGroup(group.to_owned()))?;
        if !members.remove(member) {
            return Err(AccessError::NotAMember {
                group: group.to_owned(),
                member: member.to_string(),
            });
        }
        Ok(())
    }

    /// Forgets a user who no longer exists: the rules that name them and
    /// their group memberships go, so that whoever gets the id next does
    /// not inherit their access. Returns how many rules and memberships.
    pub fn forget_user(&mut self, id: &str) -> (usize, usize) {
        let who = Selector::User(id.to_owned());
        let before = self.rules.len();
        self.rules.retain(|r| r.from != who && r.to != who);
        let member = Member::User(id.to_owned());
        let left = self
            .groups
            .values_mut()
            .filter_map(|members| members.remove(&member).then_some(()))
            .count();
        (before - self.rules.len(), left)
    }

    /// Whether a rule or a group names this user.
    pub fn names_user(&self, id: &str) -> bool {
        let who = Selector::User(id.to_owned());
        let member = Member::User(id.to_owned());
        self.rules.iter().any(|r| r.from == who || r.to == who)
            || self.groups.values().any(|m| m.contains(&member))
    }

    /// The spokes of `spokes` that are members of `group`: by their own
    /// membership, or a logged-in user's (a keyed group's holders).
    pub fn member_spokes<'a>(
        &self,
        group: &str,
        spokes: impl IntoIterator<Item = &'a SpokeFacts>,
    ) -> Vec<SpokeId> {
        let Some(members) = self.groups.get(group) else {
            return Vec::new();
        };
        spokes
            .into_iter()
            .filter(|s| {
                members.contains(&Member::Spoke(s.name.clone()))
                    || s.users
                        .iter()
                        .any(|u| members.contains(&Member::User(u.clone())))
            })
            .map(|s| s.id)
            .collect()
    }

    /// Each spoke's groups (by its own membership and by its logged-in
    /// users'), in the order of `spokes`.
    fn groups_of<'a>(&'a self, spokes: &[SpokeFacts]) -> Vec<HashSet<&'a str>> {
        let mut groups_of_user: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut groups_of_spoke: HashMap<&str, Vec<&str>> = HashMap::new();
        for (group, members) in &self.groups {
            for m in members {
                match m {
                    Member::User(u) => groups_of_user.entry(u).or_default().push(group),
                    Member::Spoke(n) => groups_of_spoke.entry(n).or_default().push(group),
                }
            }
        }
        spokes
            .iter()
            .map(|spoke| {
                let mut set: HashSet<&str> = HashSet::new();
                set.extend(
                    groups_of_spoke
                        .get(spoke.name.as_str())
                        .into_iter()
                        .flatten(),
                );
                for u in &spoke.users {
                    set.extend(groups_of_user.get(u.as_str()).into_iter().flatten());
                }
                set
            })
            .collect()
    }

    /// Resolves names into addresses for the data plane, given the spokes
    /// that can carry traffic now and who is logged in on them.
    pub fn compile(&self, hub_addr: Ipv4Addr, spokes: &[SpokeFacts]) -> CompiledAccess {
        self.compile_dual(hub_addr, None, spokes)
    }

    /// [`AccessPolicy::compile`] for a hub with an IPv6 address too
    /// (`hub` names both).
    pub fn compile_dual(
        &self,
        hub_addr: Ipv4Addr,
        hub_addr6: Option<Ipv6Addr>,
        spokes: &[SpokeFacts],
    ) -> CompiledAccess {
        let hub = Destination::Addrs(
            std::iter::once(IpAddr::V4(hub_addr))
                .chain(hub_addr6.map(IpAddr::V6))
                .collect(),
        );
        let mut compiled = CompiledAccess {
            enforce: self.mode == Mode::Enforce,
            rules: Vec::with_capacity(self.rules.len()),
            from_spoke: HashMap::new(),
            from_local: Vec::new(),
        };
        if !compiled.enforce {
            return compiled;
        }
        let spoke_groups = self.groups_of(spokes);
        // Whether `sel` names spoke number `i` (as a sender, or as a receiver).
        let names = |sel: &Selector, i: usize| {
            let spoke = &spokes[i];
            match sel {
                Selector::Any => true,
                Selector::Hub => false,
                Selector::Spoke(n) => *n == spoke.name,
                Selector::User(u) => spoke.users.iter().any(|x| x == u),
                Selector::Group(g) => spoke_groups[i].contains(g.as_str()),
                Selector::Net(net) => spoke.addrs().any(|a| net.contains(&a)),
                Selector::Branch(n) => *n == spoke.name && !spoke.branch.is_empty(),
            }
        };
        for (index, rule) in self.rules.iter().enumerate() {
            let to = match &rule.to {
                Selector::Any => Destination::Any,
                Selector::Hub => hub.clone(),
                Selector::Net(n) => Destination::Net(*n),
                Selector::Branch(n) => Destination::Nets(
                    spokes
                        .iter()
                        .filter(|s| s.name == *n && !s.branch.is_empty())
                        .flat_map(|s| s.branch.iter().copied().chain(s.addrs().map(IpNet::from)))
                        .collect(),
                ),
                named => Destination::Addrs(
                    (0..spokes.len())
                        .filter(|&i| names(named, i))
                        .flat_map(|i| spokes[i].addrs())
                        .collect(),
                ),
            };
            compiled.rules.push(CompiledRule {
                from: match rule.from {
                    Selector::Net(n) => Some(n),
                    _ => None,
                },
                to,
                services: rule.services.clone(),
            });
            for i in (0..spokes.len()).filter(|&i| names(&rule.from, i)) {
                compiled
                    .from_spoke
                    .entry(spokes[i].id)
                    .or_default()
                    .push(index);
            }
            let local = match &rule.from {
                Selector::Any => Some(Destination::Any),
                Selector::Hub => Some(hub.clone()),
                Selector::Net(n) => Some(Destination::Net(*n)),
                _ => None,
            };
            if let Some(net) = local {
                compiled.from_local.push((net, index));
            }
        }
        compiled
    }
}

/// What [`AccessPolicy::compile`] needs to know of one spoke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpokeFacts {
    /// The spoke's id.
    pub id: SpokeId,
    /// Its name.
    pub name: String,
    /// Its tunnel address.
    pub addr: Ipv4Addr,
    /// Its IPv6 tunnel address, where the hub has an IPv6 plan.
    pub addr6: Option<Ipv6Addr>,
    /// Users logged in on it now.
    pub users: Vec<String>,
    /// For a child hub: the subnets routed to its branch (`hub:NAME`).
    pub branch: Vec<IpNet>,
}

impl SpokeFacts {
    /// Its tunnel addresses, of both families.
    fn addrs(&self) -> impl Iterator<Item = IpAddr> {
        std::iter::once(IpAddr::V4(self.addr)).chain(self.addr6.map(IpAddr::V6))
    }
}

/// The addresses one end of a compiled rule covers.
#[derive(Clone, Debug)]
enum Destination {
    /// Every address of both families.
    Any,
    Net(IpNet),
    /// A child hub's branch.
    Nets(Vec<IpNet>),
    Addrs(HashSet<IpAddr>),
}

impl Destination {
    fn contains(&self, addr: &IpAddr) -> bool {
        match self {
            Destination::Any => true,
            Destination::Net(net) => net.contains(addr),
            Destination::Nets(nets) => nets.iter().any(|n| n.contains(addr)),
            Destination::Addrs(addrs) => addrs.contains(addr),
        }
    }
}

#[derive(Clone, Debug)]
struct CompiledRule {
    /// The sender's addresses, when the rule names them (`10.77.0.8`,
    /// `fd77:1::/64`): a spoke it selects is allowed from those only, not
    /// from its address of the other family.
    from: Option<IpNet>,
    to: Destination,
    services: Vec<Service>,
}

impl CompiledRule {
    fn allows(&self, flow: &Flow) -> bool {
        self.from.is_none_or(|net| net.contains(&flow.src))
            && self.to.contains(&flow.dst)
            && self.services.iter().any(|s| s.covers(flow))
    }

    /// Whether the rule can allow anything to `to` (its sender's family).
    fn reaches(&self, to: &IpAddr) -> bool {
        self.to.contains(to) && self.from.is_none_or(|n| n.addr().is_ipv4() == to.is_ipv4())
    }
}

/// The policy with every name resolved: what the data plane consults.
#[derive(Clone, Debug, Default)]
pub struct CompiledAccess {
    enforce: bool,
    rules: Vec<CompiledRule>,
    /// Rules (indexes) whose sender matches each spoke.
    from_spoke: HashMap<SpokeId, Vec<usize>>,
    /// Rules (indexes) whose sender is an address range, for packets from
    /// the hub itself or its LAN.
    from_local: Vec<(Destination, usize)>,
}

impl CompiledAccess {
    /// Whether the rules decide (the mode is `enforce`).
    pub fn enforcing(&self) -> bool {
        self.enforce
    }

    /// Whether some rule allows this flow from this origin (replies aside).
    pub fn allows(&self, origin: Origin, flow: &Flow) -> bool {
        !self.enforce || self.each_allowing(origin, flow, |_| true)
    }

    /// The numbers (1-based, as `access show` prints them) of every rule
    /// that allows this flow from this origin: for an admin asking why.
    pub fn allowing_rules(&self, origin: Origin, flow: &Flow) -> Vec<usize> {
        let mut numbers = Vec::new();
        self.each_allowing(origin, flow, |i| {
            numbers.push(i + 1);
            false
        });
        numbers
    }

    /// Calls `stop` with the index of each rule that allows the flow, until
    /// it returns true; returns whether it did.
    fn each_allowing(
        &self,
        origin: Origin,
        flow: &Flow,
        mut stop: impl FnMut(usize) -> bool,
    ) -> bool {
        let mut consider = |i: usize| self.rules[i].allows(flow) && stop(i);
        match origin {
            Origin::Spoke(id) => self
                .from_spoke
                .get(&id)
                .is_some_and(|rules| rules.iter().any(|&i| consider(i))),
            Origin::Local => self
                .from_local
                .iter()
                .any(|(from, i)| from.contains(&flow.src) && consider(*i)),
        }
    }
}

/// The rules that decide the traffic of one pair in direct mode, as the
/// hub compiled them for its two holders: each holder's gate decides what
/// comes straight from its peer with the hub's semantics (rules, replies
/// of allowed flows, fragments), where the hub cannot see.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRules {
    /// Whether the rules decide (the hub's mode is `enforce`).
    pub enforce: bool,
    /// What each holder may send the other.
    pub rules: Vec<PairRule>,
}

/// One rule between the holders of a pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRule {
    /// The sending spoke.
    pub from: SpokeId,
    /// One of the receiving spoke's tunnel addresses (a rule that reaches
    /// both is given once for each).
    pub to: IpAddr,
    /// What may pass.
    pub services: Vec<Service>,
}

impl PairRules {
    /// Whether any traffic at all may go between the holders: a pair
    /// that allows none is never issued.
    pub fn allows_any(&self) -> bool {
        !self.enforce || !self.rules.is_empty()
    }

    /// The gate's form, for a holder's data plane. Bounded like a policy
    /// (a hub never sends more).
    pub fn compile(&self) -> CompiledAccess {
        let mut compiled = CompiledAccess {
            enforce: self.enforce,
            ..CompiledAccess::default()
        };
        for (index, rule) in self.rules.iter().take(MAX_RULES).enumerate() {
            compiled.rules.push(CompiledRule {
                from: None,
                to: Destination::Addrs(HashSet::from([rule.to])),
                services: rule.services.iter().take(MAX_SERVICES).copied().collect(),
            });
            compiled
                .from_spoke
                .entry(rule.from)
                .or_default()
                .push(index);
        }
        compiled
    }

    /// Rules that let nothing through, until the hub's arrive.
    pub fn deny_all() -> Self {
        Self {
            enforce: true,
            rules: Vec::new(),
        }
    }
}

impl CompiledAccess {
    /// The rules of this policy that decide traffic between spokes `a`
    /// and `b` (each an id and its tunnel address).
    pub fn for_pair(&self, a: (SpokeId, Ipv4Addr), b: (SpokeId, Ipv4Addr)) -> PairRules {
        self.for_pair_dual((a.0, a.1, None), (b.0, b.1, None))
    }

    /// [`CompiledAccess::for_pair`] for spokes with IPv6 addresses too.
    pub fn for_pair_dual(
        &self,
        a: (SpokeId, Ipv4Addr, Option<Ipv6Addr>),
        b: (SpokeId, Ipv4Addr, Option<Ipv6Addr>),
    ) -> PairRules {
        let mut rules = Vec::new();
        if self.enforce {
            for ((from, _, _), (_, to4, to6)) in [(a, b), (b, a)] {
                let addrs = std::iter::once(IpAddr::V4(to4)).chain(to6.map(IpAddr::V6));
                for to in addrs {
                    for &i in self.from_spoke.get(&from).into_iter().flatten() {
                        let rule = &self.rules[i];
                        if rule.reaches(&to) {
                            rules.push(PairRule {
                                from,
                                to,
                                services: rule.services.clone(),
                            });
                        }
                    }
                }
            }
        }
        PairRules {
            enforce: self.enforce,
            rules,
        }
    }
}
