//! Access policy at the hub: who may reach what (DESIGN.md, "Policy"), in
//! terms of users, groups, spokes, subnets and ports, enforced where the hub
//! decrypts packets.
//!
//! The policy is an allow list. In [`Mode::Open`] (the default of a new hub)
//! every packet the routing rules accept passes and the rules only wait. In
//! [`Mode::Enforce`] a packet passes only when a [`Rule`] allows it, or when
//! it answers a flow that a rule allowed (a reply: the [`FlowTable`] tracks
//! allowed flows the way a stateful firewall does).
//!
//! A packet from a spoke counts as coming from the spoke itself, from every
//! user logged in on it (the hub cannot tell which of them sent it) and from
//! every group that holds any of those. A rule that names a user or a group
//! as its target reaches the spokes those users are logged in on, and the
//! group's member spokes. [`AccessPolicy::compile`] resolves all of this
//! once, whenever logins, spokes, groups or rules change; [`AccessGate`]
//! then decides per packet without looking anything up by name.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;

use etherparse::{Icmpv4Slice, Icmpv4Type, IpNumber, LaxIpv4Slice};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::routing::SpokeId;

/// Most rules a policy holds.
pub const MAX_RULES: usize = 1024;
/// Most groups a policy holds.
pub const MAX_GROUPS: usize = 1024;
/// Most members one group holds.
pub const MAX_MEMBERS: usize = 10_000;
/// Most services one rule lists.
pub const MAX_SERVICES: usize = 64;
/// Most flows the hub tracks at once; past that, the oldest idle ones go.
pub const MAX_FLOWS: usize = 131_072;

/// Stored and sent as the text an admin types (`user:alice`, `tcp/22`), so
/// that `--json` output and the store read the same way.
macro_rules! text_form {
    ($ty:ty) => {
        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.to_string()
            }
        }

        impl TryFrom<String> for $ty {
            type Error = AccessError;
            fn try_from(text: String) -> Result<Self, AccessError> {
                text.parse()
            }
        }
    };
}

/// Whether the rules decide or only wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every routable packet passes (a new hub; rules are kept but unused).
    #[default]
    Open,
    /// Only what a rule allows, and replies to it, passes.
    Enforce,
}

impl Mode {
    /// `open` or `enforce`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Enforce => "enforce",
        }
    }
}

impl FromStr for Mode {
    type Err = AccessError;
    fn from_str(s: &str) -> Result<Self, AccessError> {
        match s {
            "open" => Ok(Mode::Open),
            "enforce" => Ok(Mode::Enforce),
            other => Err(AccessError::Syntax(format!(
                "mode {other:?}: expected `open` or `enforce`"
            ))),
        }
    }
}

/// Why a policy change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AccessError {
    /// A selector, service or mode that does not parse.
    #[error("{0}")]
    Syntax(String),
    /// A rule names a group that does not exist.
    #[error("no group named {0:?}; create it first with `tasuki-hub group add {0}`")]
    NoSuchGroup(String),
    /// The group exists already.
    #[error("group {0:?} already exists")]
    GroupExists(String),
    /// A group still used by rules cannot be removed.
    #[error("group {name:?} is used by rule(s) {rules:?}; remove those rules first")]
    GroupInUse {
        /// The group.
        name: String,
        /// Numbers of the rules that name it (1-based, as `access show` prints).
        rules: Vec<usize>,
    },
    /// No rule with that number.
    #[error("no rule number {0}; `tasuki-hub access show` lists them")]
    NoSuchRule(usize),
    /// The member is not in the group.
    #[error("{member} is not a member of group {group:?}")]
    NotAMember {
        /// The group.
        group: String,
        /// The member, as written.
        member: String,
    },
    /// Over one of the limits above.
    #[error("too many {what} (at most {max})")]
    TooMany {
        /// Rules, groups, members or services.
        what: &'static str,
        /// The limit.
        max: usize,
    },
}

/// Who or what a rule's end names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Selector {
    /// Anything (`*`).
    Any,
    /// The hub's own tunnel address (`hub`).
    Hub,
    /// One spoke, by name (`spoke:NAME`).
    Spoke(String),
    /// The spokes a user is logged in on (`user:ID`).
    User(String),
    /// A group's member spokes and the spokes its member users are logged
    /// in on (`group:NAME`).
    Group(String),
    /// An address range: a LAN behind the hub, or tunnel addresses
    /// (`192.168.10.0/24`, `10.77.0.5`).
    Net(Ipv4Net),
}

/// An address range (`192.168.10.0/24`, host bits cleared) or one address.
fn parse_net(s: &str) -> Option<Ipv4Net> {
    s.parse::<Ipv4Net>()
        .map(|n| n.trunc())
        .ok()
        .or_else(|| s.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("*"),
            Selector::Hub => f.write_str("hub"),
            Selector::Spoke(n) => write!(f, "spoke:{n}"),
            Selector::User(n) => write!(f, "user:{n}"),
            Selector::Group(n) => write!(f, "group:{n}"),
            Selector::Net(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for Selector {
    type Err = AccessError;
    fn from_str(s: &str) -> Result<Self, AccessError> {
        let bad = |why: &str| AccessError::Syntax(format!("{s:?}: {why}"));
        let named = |name: &str| -> Result<String, AccessError> {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
            {
                return Err(bad("a name is 1-64 letters, digits, '.', '-', '_' or '@'"));
            }
            Ok(name.to_owned())
        };
        if s == "*" || s == "any" {
            return Ok(Selector::Any);
        }
        if s == "hub" {
            return Ok(Selector::Hub);
        }
        if let Some((kind, name)) = s.split_once(':') {
            return match kind {
                "spoke" => Ok(Selector::Spoke(named(name)?)),
                "user" => Ok(Selector::User(named(name)?)),
                "group" => Ok(Selector::Group(named(name)?)),
                "net" => parse_net(name)
                    .map(Selector::Net)
                    .ok_or_else(|| bad("net: takes an address or CIDR")),
                _ => Err(bad(
                    "expected *, hub, spoke:NAME, user:ID, group:NAME or an address/CIDR",
                )),
            };
        }
        if let Some(net) = parse_net(s) {
            return Ok(Selector::Net(net));
        }
        Err(bad(
            "expected *, hub, spoke:NAME, user:ID, group:NAME or an address/CIDR",
        ))
    }
}

text_form!(Selector);

/// The IP protocol a service names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// Any protocol.
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP.
    Icmp,
}

impl Proto {
    fn number(self) -> Option<u8> {
        match self {
            Proto::Any => None,
            Proto::Tcp => Some(6),
            Proto::Udp => Some(17),
            Proto::Icmp => Some(1),
        }
    }
}

/// What a rule lets through: a protocol and, for TCP and UDP, a range of
/// destination ports (`any`, `icmp`, `tcp`, `udp/53`, `tcp/8000-8100`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Service {
    /// The protocol.
    pub proto: Proto,
    /// First and last destination port (TCP and UDP only).
    pub ports: Option<(u16, u16)>,
}

impl Service {
    /// Every protocol and port.
    pub const ANY: Service = Service {
        proto: Proto::Any,
        ports: None,
    };

    /// Whether a flow falls under this service.
    fn covers(&self, flow: &Flow) -> bool {
        if let Some(p) = self.proto.number() {
            if p != flow.proto {
                return false;
            }
        }
        match self.ports {
            None => true,
            Some((lo, hi)) => flow.ports.is_some_and(|(_, d)| (lo..=hi).contains(&d)),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        };
        match self.ports {
            None => f.write_str(proto),
            Some((lo, hi)) if lo == hi => write!(f, "{proto}/{lo}"),
            Some((lo, hi)) => write!(f, "{proto}/{lo}-{hi}"),
        }
    }
}

impl FromStr for Service {
    type Err = AccessError;
    fn from_str(s: &str) -> Result<Self, AccessError> {
        let bad = |why: &str| AccessError::Syntax(format!("service {s:?}: {why}"));
        let (proto, ports) = match s.split_once('/') {
            Some((p, ports)) => (p, Some(ports)),
            None => (s, None),
        };
        let proto = match proto {
            "any" | "*" => Proto::Any,
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            _ => return Err(bad("expected any, icmp, tcp[/PORTS] or udp[/PORTS]")),
        };
        let Some(ports) = ports else {
            return Ok(Service { proto, ports: None });
        };
        if !matches!(proto, Proto::Tcp | Proto::Udp) {
            return Err(bad("only tcp and udp take ports"));
        }
        let port = |p: &str| -> Result<u16, AccessError> {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad("a port is a number from 1 to 65535")),
            }
        };
        let (lo, hi) = match ports.split_once('-') {
            Some((lo, hi)) => (port(lo)?, port(hi)?),
            None => {
                let p = port(ports)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(bad("the first port of a range must not be above the last"));
        }
        Ok(Service {
            proto,
            ports: Some((lo, hi)),
        })
    }
}

text_form!(Service);

/// One allow rule: packets from `from` to `to` that fall under one of
/// `services` pass (and so do the replies to them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The sender.
    pub from: Selector,
    /// The receiver.
    pub to: Selector,
    /// What may be sent; never empty.
    pub services: Vec<Service>,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let services: Vec<String> = self.services.iter().map(ToString::to_string).collect();
        write!(f, "{} -> {} {}", self.from, self.to, services.join(","))
    }
}

/// A member of a group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Member {
    /// A user (`user:ID`).
    User(String),
    /// A spoke (`spoke:NAME`).
    Spoke(String),
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::User(u) => write!(f, "user:{u}"),
            Member::Spoke(s) => write!(f, "spoke:{s}"),
        }
    }
}

impl FromStr for Member {
    type Err = AccessError;
    fn from_str(s: &str) -> Result<Self, AccessError> {
        match s.parse::<Selector>() {
            Ok(Selector::User(u)) => Ok(Member::User(u)),
            Ok(Selector::Spoke(n)) => Ok(Member::Spoke(n)),
            Ok(_) => Err(AccessError::Syntax(format!(
                "{s:?}: a group member is user:ID or spoke:NAME"
            ))),
            Err(e) => Err(e),
        }
    }
}

text_form!(Member);

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

    /// Resolves names into addresses for the data plane, given the spokes
    /// that can carry traffic now and who is logged in on them.
    pub fn compile(&self, hub_addr: Ipv4Addr, spokes: &[SpokeFacts]) -> CompiledAccess {
        let mut compiled = CompiledAccess {
            enforce: self.mode == Mode::Enforce,
            rules: Vec::with_capacity(self.rules.len()),
            from_spoke: HashMap::new(),
            from_local: Vec::new(),
        };
        if !compiled.enforce {
            return compiled;
        }
        // Each spoke's groups, worked out once: by the spoke's own
        // membership and by its logged-in users'.
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
        let spoke_groups: Vec<HashSet<&str>> = spokes
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
            .collect();
        // Whether `sel` names spoke number `i` (as a sender, or as a receiver).
        let names = |sel: &Selector, i: usize| {
            let spoke = &spokes[i];
            match sel {
                Selector::Any => true,
                Selector::Hub => false,
                Selector::Spoke(n) => *n == spoke.name,
                Selector::User(u) => spoke.users.iter().any(|x| x == u),
                Selector::Group(g) => spoke_groups[i].contains(g.as_str()),
                Selector::Net(net) => net.contains(&spoke.addr),
            }
        };
        for (index, rule) in self.rules.iter().enumerate() {
            let to = match &rule.to {
                Selector::Any => Destination::Nets(vec![Ipv4Net::default()]),
                Selector::Hub => Destination::Nets(vec![Ipv4Net::from(hub_addr)]),
                Selector::Net(n) => Destination::Nets(vec![*n]),
                named => Destination::Addrs(
                    (0..spokes.len())
                        .filter(|&i| names(named, i))
                        .map(|i| spokes[i].addr)
                        .collect(),
                ),
            };
            compiled.rules.push(CompiledRule {
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
                Selector::Any => Some(Ipv4Net::default()),
                Selector::Hub => Some(Ipv4Net::from(hub_addr)),
                Selector::Net(n) => Some(*n),
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
    /// Users logged in on it now.
    pub users: Vec<String>,
}

#[derive(Clone, Debug)]
enum Destination {
    Nets(Vec<Ipv4Net>),
    Addrs(HashSet<Ipv4Addr>),
}

#[derive(Clone, Debug)]
struct CompiledRule {
    to: Destination,
    services: Vec<Service>,
}

impl CompiledRule {
    fn allows(&self, flow: &Flow) -> bool {
        let reaches = match &self.to {
            Destination::Nets(nets) => nets.iter().any(|n| n.contains(&flow.dst)),
            Destination::Addrs(addrs) => addrs.contains(&flow.dst),
        };
        reaches && self.services.iter().any(|s| s.covers(flow))
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
    from_local: Vec<(Ipv4Net, usize)>,
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
                .any(|(net, i)| net.contains(&flow.src) && consider(*i)),
        }
    }
}

/// Where the hub got a packet from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Decrypted from this spoke's tunnel.
    Spoke(SpokeId),
    /// Read from the hub's TUN: the hub itself or a host behind it.
    Local,
}

/// The facts of an inner packet that rules and flow tracking look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// IP protocol number.
    pub proto: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source and destination port (TCP, UDP); for ICMP echo, the
    /// identifier and the request's type (in that order for a request, the
    /// other way for a reply); `None` when the packet has none (a later
    /// fragment, other ICMP messages, other protocols).
    pub ports: Option<(u16, u16)>,
}

/// ICMP's echo request type, the second half of an echo request's key.
const ECHO_REQUEST: u16 = 8;

/// What [`Flow::parse`] found besides the flow itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// An ordinary packet.
    Plain,
    /// An ICMP error (unreachable, time exceeded, parameter problem) about
    /// the packet of this flow, which the receiver of the error sent.
    IcmpError(Flow),
    /// The first fragment of the IP datagram with this identification.
    FirstFragment(u16),
    /// A later fragment (no ports of its own): it passes when its first
    /// fragment passed.
    LaterFragment(u16),
}

impl Flow {
    /// Reads an IPv4 packet's flow; `None` when it is not one (the routing
    /// rules drop those before the policy sees them).
    pub fn parse(packet: &[u8]) -> Option<(Flow, PacketKind)> {
        // Lax: the packet inside an ICMP error is cut short by design.
        let (ip, _) = LaxIpv4Slice::from_slice(packet).ok()?;
        let header = ip.header();
        let proto = header.protocol();
        let mut flow = Flow {
            proto: proto.0,
            src: header.source_addr(),
            dst: header.destination_addr(),
            ports: None,
        };
        if ip.is_payload_fragmented() {
            let id = header.identification();
            if header.fragments_offset().value() != 0 {
                return Some((flow, PacketKind::LaterFragment(id)));
            }
            // A first fragment: its ports decide, for its later fragments too.
            let payload = ip.payload().payload;
            if matches!(proto, IpNumber::TCP | IpNumber::UDP) && payload.len() >= 4 {
                flow.ports = Some((
                    u16::from_be_bytes([payload[0], payload[1]]),
                    u16::from_be_bytes([payload[2], payload[3]]),
                ));
            }
            return Some((flow, PacketKind::FirstFragment(id)));
        }
        let payload = ip.payload().payload;
        match proto {
            IpNumber::TCP | IpNumber::UDP if payload.len() >= 4 => {
                let sport = u16::from_be_bytes([payload[0], payload[1]]);
                let dport = u16::from_be_bytes([payload[2], payload[3]]);
                flow.ports = Some((sport, dport));
            }
            IpNumber::ICMP => {
                let Ok(icmp) = Icmpv4Slice::from_slice(payload) else {
                    return Some((flow, PacketKind::Plain));
                };
                match icmp.icmp_type() {
                    // The identifier and the direction: a reply answers the
                    // request (see [`Flow::reversed`]); a request the other
                    // way is a flow of its own.
                    Icmpv4Type::EchoRequest(e) => flow.ports = Some((e.id, ECHO_REQUEST)),
                    Icmpv4Type::EchoReply(e) => flow.ports = Some((ECHO_REQUEST, e.id)),
                    Icmpv4Type::DestinationUnreachable(_)
                    | Icmpv4Type::TimeExceeded(_)
                    | Icmpv4Type::ParameterProblem(_) => {
                        if let Some((inner, _)) = Flow::parse(icmp.payload()) {
                            if inner.proto != 1 {
                                return Some((flow, PacketKind::IcmpError(inner)));
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Some((flow, PacketKind::Plain))
    }

    /// The first packet of a flow that `service` names, for an admin's
    /// "would this pass?" (`None` for `any`, which names no protocol).
    pub fn probe(src: Ipv4Addr, dst: Ipv4Addr, service: &Service) -> Option<Flow> {
        Some(Flow {
            proto: service.proto.number()?,
            src,
            dst,
            ports: match service.proto {
                Proto::Icmp => Some((0, ECHO_REQUEST)),
                _ => Some((49152, service.ports.map_or(0, |(lo, _)| lo))),
            },
        })
    }

    fn reversed(&self) -> Flow {
        Flow {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            ports: self.ports.map(|(s, d)| (d, s)),
        }
    }

    /// How long a tracked flow lives without a packet, in milliseconds.
    fn idle_ms(&self) -> u64 {
        match self.proto {
            6 => 15 * 60 * 1000,
            17 => 2 * 60 * 1000,
            _ => 30 * 1000,
        }
    }
}

struct Tracked {
    origin: Origin,
    expires_ms: u64,
    /// The policy generation this flow was last found allowed under.
    generation: u64,
}

/// Flows a rule allowed, so that their replies pass: keyed in the allowed
/// direction, refreshed by every packet, forgotten after an idle time (TCP
/// 15 min, UDP 2 min, other 30 s). One origin tracks at most
/// [`MAX_FLOWS_PER_ORIGIN`]; past that its new flows pass but their replies
/// do not, so one busy spoke cannot push the others' flows out.
#[derive(Default)]
pub struct FlowTable {
    flows: HashMap<Flow, Tracked>,
    per_origin: HashMap<Origin, usize>,
}

/// Most flows one origin (a spoke, or the hub's side) tracks at once.
pub const MAX_FLOWS_PER_ORIGIN: usize = MAX_FLOWS / 8;

impl FlowTable {
    /// Flows tracked now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    fn note(&mut self, origin: Origin, flow: Flow, now_ms: u64, generation: u64) {
        let expires_ms = now_ms.saturating_add(flow.idle_ms());
        if let Some(t) = self.flows.get_mut(&flow) {
            t.expires_ms = expires_ms;
            t.generation = generation;
            return;
        }
        if self.per_origin.get(&origin).copied().unwrap_or(0) >= MAX_FLOWS_PER_ORIGIN {
            return;
        }
        if self.flows.len() >= MAX_FLOWS {
            self.prune(now_ms);
            if self.flows.len() >= MAX_FLOWS - MAX_FLOWS / 16 {
                // Still (nearly) full of live flows from many origins: a
                // sixteenth of them go, in the map's arbitrary order, so
                // that the next many inserts cost no scan.
                let victims: Vec<Flow> = self.flows.keys().take(MAX_FLOWS / 16).copied().collect();
                for f in &victims {
                    self.remove(f);
                }
            }
        }
        self.flows.insert(
            flow,
            Tracked {
                origin,
                expires_ms,
                generation,
            },
        );
        *self.per_origin.entry(origin).or_default() += 1;
    }

    fn remove(&mut self, key: &Flow) {
        if let Some(t) = self.flows.remove(key) {
            if let Some(n) = self.per_origin.get_mut(&t.origin) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_origin.remove(&t.origin);
                }
            }
        }
    }

    /// Forgets every flow that has idled out.
    fn prune(&mut self, now_ms: u64) {
        self.flows.retain(|_, t| t.expires_ms > now_ms);
        self.per_origin.clear();
        for t in self.flows.values() {
            *self.per_origin.entry(t.origin).or_default() += 1;
        }
    }

    fn clear(&mut self) {
        self.flows.clear();
        self.per_origin.clear();
    }
}

/// Most fragmented datagrams whose first fragment passed, tracked at once.
pub const MAX_FRAGMENTED: usize = 8192;
/// How long the later fragments of a datagram may follow its first, ms.
const FRAGMENT_MS: u64 = 10_000;

/// Fragmented datagrams whose first fragment passed: their later fragments,
/// which carry no ports, pass too (and others' do not).
#[derive(Default)]
struct Fragments {
    passed: HashMap<(u8, Ipv4Addr, Ipv4Addr, u16), u64>,
}

impl Fragments {
    fn key(flow: &Flow, id: u16) -> (u8, Ipv4Addr, Ipv4Addr, u16) {
        (flow.proto, flow.src, flow.dst, id)
    }

    fn note(&mut self, flow: &Flow, id: u16, now_ms: u64) {
        if self.passed.len() >= MAX_FRAGMENTED {
            self.prune(now_ms);
            if self.passed.len() >= MAX_FRAGMENTED {
                // Full of live ones: this datagram's later fragments drop.
                return;
            }
        }
        self.passed
            .insert(Self::key(flow, id), now_ms.saturating_add(FRAGMENT_MS));
    }

    fn passes(&self, flow: &Flow, id: u16, now_ms: u64) -> bool {
        self.passed
            .get(&Self::key(flow, id))
            .is_some_and(|until| *until > now_ms)
    }

    fn prune(&mut self, now_ms: u64) {
        self.passed.retain(|_, until| *until > now_ms);
    }
}

/// The per-packet decision: the compiled policy and the flows it allowed.
#[derive(Default)]
pub struct AccessGate {
    policy: Arc<CompiledAccess>,
    flows: FlowTable,
    fragments: Fragments,
    /// Counts policy changes: a tracked flow is checked against the rules
    /// again, once, at its next packet after one.
    generation: u64,
}

impl AccessGate {
    /// A gate that enforces `policy` from its first packet.
    pub fn new(policy: Arc<CompiledAccess>) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// Takes a new compiled policy. Tracked flows it no longer allows are
    /// forgotten at their next packet (so their replies stop too), which
    /// costs this call no scan of the table.
    pub fn replace(&mut self, policy: Arc<CompiledAccess>) {
        if !policy.enforcing() {
            self.flows.clear();
            self.fragments.passed.clear();
        }
        self.policy = policy;
        self.generation += 1;
    }

    /// Whether the rules decide at all: when not, [`AccessGate::check`]
    /// passes everything and need not be called.
    pub fn enforcing(&self) -> bool {
        self.policy.enforcing()
    }

    /// Flows tracked now.
    pub fn tracked(&self) -> usize {
        self.flows.len()
    }

    /// Forgets the flows that have idled out (the data plane calls this
    /// every second or so).
    pub fn prune(&mut self, now_ms: u64) {
        self.flows.prune(now_ms);
        self.fragments.prune(now_ms);
    }

    /// Whether the tracked flow `key` is live and still allowed (checked
    /// against the rules once per policy change); refreshes it if so,
    /// forgets it if not.
    fn still_allowed(&mut self, key: &Flow, from: Option<Origin>, now_ms: u64) -> bool {
        let Some(t) = self.flows.flows.get_mut(key) else {
            return false;
        };
        if from.is_some_and(|o| o != t.origin) {
            return false;
        }
        let ok = t.expires_ms > now_ms
            && (t.generation == self.generation || self.policy.allows(t.origin, key));
        if ok {
            t.expires_ms = now_ms.saturating_add(key.idle_ms());
            t.generation = self.generation;
        } else {
            self.flows.remove(key);
        }
        ok
    }

    /// Whether a packet from `origin` may pass; `now_ms` is a monotonic
    /// clock in milliseconds.
    pub fn check(&mut self, origin: Origin, packet: &[u8], now_ms: u64) -> bool {
        if !self.policy.enforcing() {
            return true;
        }
        let Some((flow, kind)) = Flow::parse(packet) else {
            return false;
        };
        if let PacketKind::LaterFragment(id) = kind {
            return self.fragments.passes(&flow, id, now_ms);
        }
        let pass = self.decide(origin, &flow, kind, now_ms);
        if let (true, PacketKind::FirstFragment(id)) = (pass, kind) {
            self.fragments.note(&flow, id, now_ms);
        }
        pass
    }

    /// The decision on a packet with its own flow (all but later fragments).
    fn decide(&mut self, origin: Origin, flow: &Flow, kind: PacketKind, now_ms: u64) -> bool {
        let flow = *flow;
        // A packet of a flow already allowed, the way it was allowed: one
        // lookup, no rule walk.
        if self.still_allowed(&flow, Some(origin), now_ms) {
            return true;
        }
        // A reply to one.
        if self.still_allowed(&flow.reversed(), None, now_ms) {
            return true;
        }
        if self.policy.allows(origin, &flow) {
            self.flows.note(origin, flow, now_ms, self.generation);
            return true;
        }
        match kind {
            // An error about a packet of a tracked flow (path MTU discovery,
            // a closed port), on its way to that packet's sender.
            PacketKind::IcmpError(about) if about.src == flow.dst => {
                self.still_allowed(&about, None, now_ms)
                    || self.still_allowed(&about.reversed(), None, now_ms)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
