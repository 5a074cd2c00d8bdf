use std::time::Duration;

/// Tunables of the protocol. [`Config::default`] gives the values documented
/// in `docs/membership.md` (1 s probe period, k = 3, suspicion multiplier 4,
/// retransmit multiplier 4, push-pull every 30 s scaled with N, LHM max 8).
#[derive(Clone, Debug)]
pub struct Config {
    /// Base protocol period: one probe is started every `probe_interval × LHM`.
    pub probe_interval: Duration,
    /// Time to wait for a direct ack before asking `indirect_checks` members
    /// to probe on our behalf (scaled by the local health multiplier).
    pub probe_timeout: Duration,
    /// Number of members asked to probe indirectly (SWIM `k`).
    pub indirect_checks: usize,
    /// Suspicion timeout minimum is `suspicion_mult × log10(N) × probe_interval`.
    pub suspicion_mult: u32,
    /// Suspicion timeout maximum is `suspicion_max_mult ×` the minimum.
    pub suspicion_max_mult: u32,
    /// Independent confirmations needed to shrink a suspicion to its minimum.
    pub suspicion_confirmations: usize,
    /// An update is sent `ceil(retransmit_mult × (log10(N + 1) + 1))` times
    /// by every member that learns it.
    pub retransmit_mult: u32,
    /// Period of dedicated gossip messages (only sent while updates are queued).
    pub gossip_interval: Duration,
    /// Members sent a gossip message each gossip period.
    pub gossip_fanout: usize,
    /// Dead members still receive gossip for this long, so that a falsely
    /// declared member hears about it and refutes.
    pub gossip_to_the_dead: Duration,
    /// Base period of full-state push-pull, scaled up above 32 members.
    pub push_pull_interval: Duration,
    /// Maximum local health multiplier (the score ranges over `0..max_lhm`).
    pub max_lhm: u32,
    /// First join retry delay; doubled on every retry.
    pub join_retry_initial: Duration,
    /// Upper bound of the join retry delay.
    pub join_retry_max: Duration,
    /// A dead member is forgotten (reaped into a tombstone) after this long.
    pub dead_reap_after: Duration,
    /// A member that left is reaped after this long.
    pub left_reap_after: Duration,
    /// Reaped identities are remembered (to refuse stale gossip) this long.
    pub tombstone_ttl: Duration,
    /// Upper bound of remembered tombstones (oldest evicted first).
    pub max_tombstones: usize,
    /// Period of reconnect probes to dead members (heals partitions).
    pub reconnect_interval: Duration,
    /// Size budget for every unreliable message (bytes, including header).
    pub max_datagram: usize,
    /// Largest message (reliable push-pull included) accepted by the decoder.
    pub max_message_size: usize,
    /// If timers fire later than this, the node assumes it was stalled
    /// (GC pause, VM freeze…) and does not trust probe results of that batch.
    pub stall_threshold: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            suspicion_mult: 4,
            suspicion_max_mult: 6,
            suspicion_confirmations: 2,
            retransmit_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            gossip_to_the_dead: Duration::from_secs(30),
            push_pull_interval: Duration::from_secs(30),
            max_lhm: 8,
            join_retry_initial: Duration::from_secs(1),
            join_retry_max: Duration::from_secs(32),
            dead_reap_after: Duration::from_secs(120),
            left_reap_after: Duration::from_secs(30),
            tombstone_ttl: Duration::from_secs(600),
            max_tombstones: 10_000,
            reconnect_interval: Duration::from_secs(5),
            max_datagram: 1200,
            max_message_size: 8 << 20,
            stall_threshold: Duration::from_millis(500),
        }
    }
}

impl Config {
    /// Minimum suspicion timeout for a cluster of `n` members.
    pub fn suspicion_min(&self, n: usize) -> Duration {
        let scale = (n.max(1) as f64).log10().max(1.0);
        self.probe_interval
            .mul_f64(f64::from(self.suspicion_mult) * scale)
    }

    /// Maximum suspicion timeout for a cluster of `n` members.
    pub fn suspicion_max(&self, n: usize) -> Duration {
        self.suspicion_min(n) * self.suspicion_max_mult
    }

    /// How many times an update is sent by each member in a cluster of `n`
    /// members: `ceil(mult × (log10(n + 1) + 1))`. Unlike the classic
    /// `mult × ceil(log10(n + 1))` it has no cliff (that one drops from 12 to
    /// 8 when a 100-node cluster loses one member, which multiplies the odds
    /// that some member misses an update by ~50).
    pub fn retransmit_limit(&self, n: usize) -> u32 {
        let m = f64::from(self.retransmit_mult);
        (m * (((n + 1) as f64).log10() + 1.0)).ceil() as u32
    }

    /// Push-pull period for `n` members: the base period up to 32 members,
    /// then one more base period per doubling.
    pub fn push_pull_period(&self, n: usize) -> Duration {
        if n <= 32 {
            return self.push_pull_interval;
        }
        let extra = ((n as f64).log2() - 5.0).ceil().max(0.0) as u32;
        self.push_pull_interval * (extra + 1)
    }
}
