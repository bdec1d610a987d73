//! The words of the access policy: its mode, the selectors and services a
//! rule names, rules and group members, each read from and printed as the
//! text an admin types.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::Flow;

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
    /// An address range of either family: a LAN behind the hub, or
    /// tunnel addresses (`192.168.10.0/24`, `10.77.0.5`, `fd50:10::/64`).
    Net(IpNet),
    /// A child hub's whole branch (`hub:NAME`, claim 6): as a sender,
    /// everything that comes through its link; as a receiver, the subnets
    /// routed to it and its own tunnel address.
    Branch(String),
}

/// An address range (`192.168.10.0/24`, `fd50::/64`, host bits cleared)
/// or one address.
fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
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
            Selector::Branch(n) => write!(f, "hub:{n}"),
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
        // Before `kind:`, which an IPv6 address looks like.
        if let Some(net) = parse_net(s) {
            return Ok(Selector::Net(net));
        }
        if let Some((kind, name)) = s.split_once(':') {
            return match kind {
                "spoke" => Ok(Selector::Spoke(named(name)?)),
                "user" => Ok(Selector::User(named(name)?)),
                "group" => Ok(Selector::Group(named(name)?)),
                "hub" => Ok(Selector::Branch(named(name)?)),
                "net" => parse_net(name)
                    .map(Selector::Net)
                    .ok_or_else(|| bad("net: takes an address or CIDR")),
                _ => Err(bad(
                    "expected *, hub, spoke:NAME, user:ID, group:NAME, hub:NAME or an address/CIDR",
                )),
            };
        }
        Err(bad(
            "expected *, hub, spoke:NAME, user:ID, group:NAME, hub:NAME or an address/CIDR",
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
    /// ICMP, and ICMPv6 for IPv6 flows.
    Icmp,
}

impl Proto {
    pub(super) fn number(self) -> Option<u8> {
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
    pub(super) fn covers(&self, flow: &Flow) -> bool {
        let proto_ok = match self.proto {
            Proto::Any => true,
            Proto::Icmp => flow.proto == super::gate::ICMP || flow.proto == super::gate::ICMPV6,
            p => p.number() == Some(flow.proto),
        };
        if !proto_ok {
            return false;
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
