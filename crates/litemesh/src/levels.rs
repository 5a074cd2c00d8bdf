//! Read and write levels: what a query waits for before it runs here (a
//! token, a bound on staleness), where it goes when this node cannot satisfy
//! it (the nearest peer that can), and how many other nodes must hold a
//! write before its client is answered. The guarantees are stated in
//! docs/consistency.md.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use litemesh_membership::MemberState;
use tokio::task::JoinSet;

use crate::error::Error;
use crate::node::Inner;
use crate::query::{QueryOptions, Rows};
use crate::remote::{self, Refusal, Request, Response};
use crate::sql::Statement;
use crate::token::Token;

/// Peers a query is forwarded to at most, nearest first.
const FORWARD_TRIES: usize = 3;
/// How often a query waiting for staleness to shrink re-checks.
const STALENESS_POLL: Duration = Duration::from_millis(20);
/// Extra time given to a peer's answer beyond the wait it was asked for.
const ANSWER_SLACK: Duration = Duration::from_secs(2);

/// How many other nodes must hold a write before it is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Ack {
    /// On this node's disk (the default).
    #[default]
    Local,
    /// Applied by this many other nodes.
    Nodes(usize),
    /// Applied by another node of this node's region.
    Region,
    /// Applied by a node in every other region of the mesh.
    Regions,
}

impl std::str::FromStr for Ack {
    type Err = String;
    fn from_str(s: &str) -> Result<Ack, String> {
        match s.trim() {
            "" | "local" | "0" => Ok(Ack::Local),
            "region" => Ok(Ack::Region),
            "regions" => Ok(Ack::Regions),
            n => n
                .parse::<usize>()
                .map(Ack::Nodes)
                .map_err(|_| format!("ack {n:?}: use local, a number of nodes, region or regions")),
        }
    }
}

impl std::fmt::Display for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ack::Local => f.write_str("local"),
            Ack::Nodes(n) => write!(f, "{n}"),
            Ack::Region => f.write_str("region"),
            Ack::Regions => f.write_str("regions"),
        }
    }
}

/// Which nodes confirmed a write, for an acknowledgement level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckReport {
    /// The level asked for.
    pub level: Ack,
    /// Whether it was reached within the timeout.
    pub reached: bool,
    /// The nodes that confirmed they hold the write: (name, region).
    pub confirmed: Vec<(String, Option<String>)>,
    /// What was still missing when the answer was given (empty if reached):
    /// e.g. `"2 more nodes"`, `"region eu"`.
    pub missing: Vec<String>,
    /// How long the confirmations took.
    pub waited: Duration,
}

impl Inner {
    /// Waits until this node holds every version `token` names.
    pub(crate) async fn wait_token(&self, token: &Token, wait: Duration) -> Result<(), Error> {
        let mut rx = self.knowledge.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let missing = token.missing_in(&rx.borrow_and_update());
            let Some((actor, version)) = missing else {
                return Ok(());
            };
            let changed = tokio::time::timeout_at(deadline, rx.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return Err(Error::Lagging {
                    missing: format!("actor {actor}: version {version}"),
                    waited: wait,
                });
            }
        }
    }

    /// How stale this node's copy is: the largest replication lag of a
    /// writer it knows, and who that writer is. A writer the membership
    /// holds dead (or gone) counts only while this node lacks versions it
    /// published: what it wrote and never published, no node can vouch for.
    pub(crate) fn staleness(&self) -> (Duration, String) {
        let k = self.knowledge.borrow().clone();
        let now = self.now();
        let core = self.core();
        let members = core.members();
        let mut worst = (Duration::ZERO, String::new());
        for l in core.lag(now, &k) {
            let m = members.iter().find(|m| m.actor == Some(l.actor));
            let gone = m.is_some_and(|m| matches!(m.state, MemberState::Dead | MemberState::Left));
            if gone && l.missing_versions == 0 {
                continue;
            }
            if l.lag > worst.0 {
                let who = m.map_or_else(|| l.actor.to_hex(), |m| m.name.clone());
                worst = (l.lag, who);
            }
        }
        worst
    }

    /// Waits (up to `wait`) until this node satisfies the read level of
    /// `opts`: the token held, and staleness within `max_lag`.
    pub(crate) async fn wait_level(
        &self,
        opts: &QueryOptions,
        wait: Duration,
    ) -> Result<(), Error> {
        let started = tokio::time::Instant::now();
        if let Some(token) = &opts.min_token {
            self.wait_token(token, wait).await?;
        }
        let Some(max) = opts.max_lag else {
            return Ok(());
        };
        let deadline = started + wait;
        loop {
            let (lag, writer) = self.staleness();
            if lag <= max {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::Stale {
                    lag,
                    writer,
                    max,
                    waited: wait,
                });
            }
            tokio::time::sleep_until(deadline.min(now + STALENESS_POLL)).await;
        }
    }

    /// Reachable peers, nearest first (by round-trip time; unmeasured last),
    /// with their regions.
    pub(crate) fn peers_by_distance(&self) -> Vec<(SocketAddr, String, Option<String>)> {
        let mut peers: Vec<_> = self
            .core()
            .members()
            .iter()
            .filter(|m| m.addr != self.advertised && m.state == MemberState::Alive)
            .map(|m| (m.rtt, m.addr, m.name.clone(), m.region.clone()))
            .collect();
        peers.sort_by_key(|(rtt, addr, ..)| (rtt.is_none(), *rtt, *addr));
        peers
            .into_iter()
            .map(|(_, addr, name, claimed)| {
                let region = self.member_region(addr, claimed.as_deref());
                (addr, name, region)
            })
            .collect()
    }

    /// Runs a query on the nearest peers that satisfy its read level, after
    /// this node could not (`local` says why).
    pub(crate) async fn forward_query(
        self: &Arc<Self>,
        statement: Statement,
        opts: &QueryOptions,
        wait: Duration,
        local: Error,
    ) -> Result<Rows, Error> {
        // One budget for every try: each peer gets what is left of `wait`
        // to meet the level, plus the time the query itself may take there.
        let deadline = tokio::time::Instant::now() + wait;
        let query_time = opts.timeout.unwrap_or(self.query_timeout);
        let mut tried = vec![format!("{} (this node): {local}", self.name)];
        for (addr, name, _) in self.peers_by_distance().into_iter().take(FORWARD_TRIES) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let req = Request::Query {
                sql: statement.sql.clone(),
                params: statement.params.clone(),
                min_token: opts.min_token.as_ref().map(|t| t.to_string()),
                max_lag_ms: opts.max_lag.map(|d| d.as_millis() as u64),
                wait_ms: left.as_millis() as u64,
                max_rows: opts.max_rows.unwrap_or(self.max_query_rows),
            };
            // The name its certificate gives, not the one it says.
            let peer = self.transport.peer_name(addr).unwrap_or(name);
            match remote::call(self, addr, &req, left + query_time + ANSWER_SLACK).await {
                Ok(Response::Rows { columns, rows, .. }) => {
                    let peer = self.transport.peer_name(addr).unwrap_or(peer);
                    tracing::debug!(%addr, "query served by {peer}");
                    return Ok(Rows::forwarded(peer, columns, rows));
                }
                // The query's own fault: no other node would do better.
                Ok(Response::Refused {
                    why: Refusal::Query(status),
                    message,
                }) => {
                    return Err(Error::PeerRefused {
                        peer,
                        status,
                        message,
                    });
                }
                Ok(Response::Refused { message, .. }) => tried.push(format!("{peer}: {message}")),
                Ok(Response::Applied { .. } | Response::Accepted) => {
                    tried.push(format!("{peer}: unexpected answer"))
                }
                Err(e) => tried.push(format!("{peer}: {e}")),
            }
        }
        Err(Error::NoReplica(format!(
            "no node could serve the query at its read level: {}",
            tried.join("; ")
        )))
    }

    /// Waits (up to `timeout`) until other nodes hold `token`, as many and
    /// where `level` asks. Never undoes the write: the report says what was
    /// reached.
    pub(crate) async fn acknowledge(
        self: &Arc<Self>,
        token: &Token,
        level: &Ack,
        timeout: Duration,
        written: Option<&BTreeSet<String>>,
    ) -> AckReport {
        let started = tokio::time::Instant::now();
        let peers = self.peers_by_distance();
        let own = self.region.clone();
        // (`ack=region` on a node with no region is refused by the caller,
        // before the write.)
        // Regions other than this node's that must confirm (`regions`): every
        // region a member of the mesh is in, reachable or not.
        let needed_regions: BTreeSet<Option<String>> = match level {
            Ack::Regions => self
                .core()
                .members()
                .iter()
                .filter(|m| m.addr != self.advertised && m.state != MemberState::Left)
                .map(|m| self.member_region(m.addr, m.region.as_deref()))
                // Members with no region are in none: nothing to confirm.
                .filter(|r| r.is_some() && *r != own)
                // Only regions that may hold what was written (placement).
                .filter(|r| {
                    written.is_none_or(|tables| {
                        let ent = litemesh_proto::Entitlement::region(r.clone());
                        tables.iter().any(|t| self.placement.allows(&ent, t))
                    })
                })
                .collect(),
            _ => BTreeSet::new(),
        };
        // With table placement or partial replicas, only a node that may hold
        // everything the transaction wrote confirms it (one holding it
        // without some tables' rows does not count).
        let peers: Vec<_> = match written {
            None => peers,
            Some(tables) => peers
                .into_iter()
                .filter(|(addr, _, region)| {
                    let ent = litemesh_proto::Entitlement {
                        region: region.clone(),
                        carried: self.core().peer_tables(*addr),
                    };
                    tables.iter().all(|t| self.placement.may_hold(&ent, t))
                })
                .collect(),
        };
        let targets: Vec<_> = match level {
            Ack::Local => Vec::new(),
            Ack::Region => peers.into_iter().filter(|p| p.2 == own).collect(),
            Ack::Nodes(_) => peers,
            Ack::Regions => peers.into_iter().filter(|p| p.2 != own).collect(),
        };
        let mut report = AckReport {
            level: level.clone(),
            reached: false,
            confirmed: Vec::new(),
            missing: Vec::new(),
            waited: Duration::ZERO,
        };
        let done = |r: &AckReport| -> Vec<String> {
            match level {
                Ack::Local => Vec::new(),
                Ack::Nodes(n) => match n.saturating_sub(r.confirmed.len()) {
                    0 => Vec::new(),
                    k => vec![format!("{k} more node{}", if k == 1 { "" } else { "s" })],
                },
                Ack::Region => {
                    // Only a confirmation from a node certified in this
                    // region counts.
                    if !r.confirmed.iter().any(|(_, reg)| *reg == own) {
                        vec![format!(
                            "a node of region {}",
                            own.as_deref().unwrap_or("(none)")
                        )]
                    } else {
                        Vec::new()
                    }
                }
                Ack::Regions => needed_regions
                    .iter()
                    .filter(|reg| !r.confirmed.iter().any(|(_, cr)| cr == *reg))
                    .map(|reg| format!("region {}", reg.as_deref().unwrap_or("(none)")))
                    .collect(),
            }
        };
        report.missing = done(&report);
        if report.missing.is_empty() {
            report.reached = true;
            return report;
        }
        let req = Arc::new(Request::Applied {
            token: token.to_string(),
            wait_ms: timeout.as_millis() as u64,
        });
        let mut asks = JoinSet::new();
        for (addr, _, _) in targets {
            let inner = self.clone();
            let req = req.clone();
            asks.spawn(async move {
                let r = remote::call(&inner, addr, &req, timeout + ANSWER_SLACK).await;
                (addr, r)
            });
        }
        let deadline = started + timeout;
        while !report.missing.is_empty() {
            let next = tokio::time::timeout_at(deadline, asks.join_next()).await;
            let Ok(Some(Ok((addr, answer)))) = next else {
                break;
            };
            if let Ok(Response::Applied { node }) = answer {
                let node = self.transport.peer_name(addr).unwrap_or(node);
                // The region that counts is the one the peer's certificate
                // certifies (it answered over a connection just made).
                let claimed = self
                    .core()
                    .members()
                    .iter()
                    .find(|m| m.addr == addr)
                    .and_then(|m| m.region.clone());
                let region = self.member_region(addr, claimed.as_deref());
                report.confirmed.push((node, region));
                report.missing = done(&report);
            }
        }
        asks.abort_all();
        report.reached = report.missing.is_empty();
        report.waited = started.elapsed();
        report
    }
}
