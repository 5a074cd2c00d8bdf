//! Fault injection under the QUIC stack.
//!
//! [`FaultHandle`] is a cheap-to-clone switchboard; when a transport is bound
//! with one, its UDP socket is wrapped in a [`FaultySocket`] (a
//! [`quinn::AsyncUdpSocket`]) that consults the handle for every packet. The
//! QUIC stack therefore sees genuine packet loss, delay and partitions, and
//! its loss recovery, keep-alives and idle timeouts react as they would on a
//! bad network.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The current fault settings of a [`FaultHandle`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// Probability in `[0, 1]` that a packet (sent or received) is dropped.
    pub drop_probability: f64,
    /// Extra delay applied to every outgoing packet.
    pub delay: Duration,
    /// Peers cut off from this node: packets to and from these addresses are
    /// dropped, in both directions.
    pub blocked: HashSet<SocketAddr>,
}

#[derive(Default)]
struct FaultState {
    config: RwLock<FaultConfig>,
    dropped: AtomicU64,
    delayed: AtomicU64,
}

/// Run-time control of the fault layer. Clone it freely: all clones control
/// the same settings, and several transports may share one handle (e.g. to
/// apply the same loss rate to a whole test mesh).
#[derive(Clone, Default)]
pub struct FaultHandle {
    state: Arc<FaultState>,
}

impl fmt::Debug for FaultHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultHandle")
            .field("config", &self.config())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// What to do with an outgoing packet.
enum Verdict {
    Pass,
    Drop,
    Delay(Duration),
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl FaultHandle {
    /// A handle with no faults configured.
    pub fn new() -> Self {
        Self::default()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, FaultConfig> {
        // A poisoned lock only means a panic elsewhere; the data is plain.
        self.state.config.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, FaultConfig> {
        self.state.config.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Drop each packet (in either direction) with probability `p`
    /// (clamped to `[0, 1]`; NaN means 0).
    pub fn set_drop_probability(&self, p: f64) {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self.write().drop_probability = p;
    }

    /// Delay every outgoing packet by `delay` (zero disables).
    pub fn set_delay(&self, delay: Duration) {
        self.write().delay = delay;
    }

    /// Cut this node off from `peers`: traffic to and from them is dropped.
    /// Adds to any existing partition.
    pub fn partition(&self, peers: impl IntoIterator<Item = SocketAddr>) {
        let mut config = self.write();
        config.blocked.extend(peers.into_iter().map(canonical));
    }

    /// Remove one peer from the partition.
    pub fn heal_peer(&self, peer: SocketAddr) {
        self.write().blocked.remove(&canonical(peer));
    }

    /// Remove all partitions (loss and delay stay as they are).
    pub fn heal(&self) {
        self.write().blocked.clear();
    }

    /// Remove every fault.
    pub fn reset(&self) {
        *self.write() = FaultConfig::default();
    }

    /// Snapshot of the current settings.
    pub fn config(&self) -> FaultConfig {
        self.read().clone()
    }

    /// True if traffic with `peer` is currently blocked.
    pub fn is_blocked(&self, peer: SocketAddr) -> bool {
        self.read().blocked.contains(&canonical(peer))
    }

    /// Number of packets dropped so far (both directions, all causes).
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }

    /// Number of packets delayed so far.
    pub fn delayed(&self) -> u64 {
        self.state.delayed.load(Ordering::Relaxed)
    }

    fn count_drop(&self) {
        self.state.dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn on_send(&self, dest: SocketAddr) -> Verdict {
        let config = self.read();
        if config.blocked.contains(&canonical(dest)) || roll(config.drop_probability) {
            drop(config);
            self.count_drop();
            return Verdict::Drop;
        }
        if config.delay.is_zero() {
            Verdict::Pass
        } else {
            self.state.delayed.fetch_add(1, Ordering::Relaxed);
            Verdict::Delay(config.delay)
        }
    }

    fn keep_received(&self, src: SocketAddr) -> bool {
        let config = self.read();
        if config.blocked.contains(&canonical(src)) || roll(config.drop_probability) {
            drop(config);
            self.count_drop();
            false
        } else {
            true
        }
    }
}

fn roll(p: f64) -> bool {
    p > 0.0 && rand::random::<f64>() < p
}

/// A [`quinn::AsyncUdpSocket`] that applies a [`FaultHandle`]'s faults to a
/// real socket. Built by [`Transport::bind`](crate::Transport::bind).
#[derive(Debug)]
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    faults: FaultHandle,
}

impl FaultySocket {
    /// Wrap `inner` (e.g. from `quinn::TokioRuntime.wrap_udp_socket`).
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, faults: FaultHandle) -> Self {
        Self { inner, faults }
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        match self.faults.on_send(transmit.destination) {
            Verdict::Pass => self.inner.try_send(transmit),
            // Pretend it left: the loss happens "on the wire".
            Verdict::Drop => Ok(()),
            Verdict::Delay(delay) => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return self.inner.try_send(transmit);
                };
                let inner = self.inner.clone();
                let destination = transmit.destination;
                let ecn = transmit.ecn;
                let segment_size = transmit.segment_size;
                let src_ip = transmit.src_ip;
                let contents = transmit.contents.to_vec();
                runtime.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let transmit = Transmit {
                        destination,
                        ecn,
                        contents: &contents,
                        segment_size,
                        src_ip,
                    };
                    // A full socket buffer now is just more loss.
                    let _ = inner.try_send(&transmit);
                });
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            let mut kept = 0;
            for i in 0..n {
                if !self.faults.keep_received(meta[i].addr) {
                    continue;
                }
                if kept != i {
                    let len = meta[i].len;
                    let (head, tail) = bufs.split_at_mut(i);
                    if len > head[kept].len() {
                        continue;
                    }
                    head[kept][..len].copy_from_slice(&tail[0][..len]);
                    meta[kept] = meta[i];
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Everything was dropped: poll again so that the waker is
            // registered if nothing else is pending.
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        // One packet per transmit, so loss is decided per packet.
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::Runtime;
    use std::future::poll_fn;
    use std::net::UdpSocket;
    use std::time::Instant;

    fn faulty(faults: &FaultHandle) -> Arc<FaultySocket> {
        let std = UdpSocket::bind("127.0.0.1:0").unwrap();
        let inner = quinn::TokioRuntime.wrap_udp_socket(std).unwrap();
        Arc::new(FaultySocket::new(inner, faults.clone()))
    }

    /// Receive datagrams (split by GRO stride) until `want` arrived or 1 s
    /// passed.
    async fn receive(sock: &FaultySocket, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        while out.len() < want && Instant::now() < deadline {
            let mut storage = vec![[0u8; 2048]; 8];
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let mut meta = vec![RecvMeta::default(); 8];
            let recv = poll_fn(|cx| sock.poll_recv(cx, &mut bufs, &mut meta));
            let Ok(n) = tokio::time::timeout(Duration::from_millis(200), recv).await else {
                continue;
            };
            for i in 0..n.unwrap() {
                let m = meta[i];
                for datagram in bufs[i][..m.len].chunks(m.stride.max(1)) {
                    out.push((m.addr, datagram.to_vec()));
                }
            }
        }
        out
    }

    #[test]
    fn settings_are_sanitised() {
        let f = FaultHandle::new();
        f.set_drop_probability(7.0);
        assert_eq!(f.config().drop_probability, 1.0);
        f.set_drop_probability(f64::NAN);
        assert_eq!(f.config().drop_probability, 0.0);
        let v6_mapped: SocketAddr = "[::ffff:127.0.0.1]:9".parse().unwrap();
        f.partition([v6_mapped]);
        assert!(f.is_blocked("127.0.0.1:9".parse().unwrap()));
        let clone = f.clone();
        clone.heal();
        assert!(!f.is_blocked(v6_mapped));
    }

    #[tokio::test]
    async fn receive_side_partition_filters_and_compacts() {
        let faults = FaultHandle::new();
        let sock = faulty(&faults);
        let addr = sock.local_addr().unwrap();
        let good = UdpSocket::bind("127.0.0.1:0").unwrap();
        let bad = UdpSocket::bind("127.0.0.1:0").unwrap();
        faults.partition([bad.local_addr().unwrap()]);
        for i in 0..6u8 {
            bad.send_to(&[0xbb, i, 0], addr).unwrap();
            good.send_to(&[0x99, i], addr).unwrap();
        }
        let got = receive(&sock, 6).await;
        assert_eq!(got.len(), 6, "{got:?}");
        for (i, (from, bytes)) in got.iter().enumerate() {
            assert_eq!(*from, good.local_addr().unwrap());
            assert_eq!(bytes, &vec![0x99, i as u8]);
        }
        assert_eq!(faults.dropped(), 6);

        // Healed: everything passes again.
        faults.heal();
        bad.send_to(&[1], addr).unwrap();
        assert_eq!(receive(&sock, 1).await.len(), 1);
    }

    #[tokio::test]
    async fn send_side_drop_partition_and_delay() {
        let faults = FaultHandle::new();
        let sock = faulty(&faults);
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let send = |bytes: &[u8]| {
            sock.try_send(&Transmit {
                destination: peer.local_addr().unwrap(),
                ecn: None,
                contents: bytes,
                segment_size: None,
                src_ip: None,
            })
        };
        let mut buf = [0u8; 16];

        faults.partition([peer.local_addr().unwrap()]);
        send(b"blocked").unwrap();
        assert!(peer.recv_from(&mut buf).is_err());
        faults.heal();

        faults.set_drop_probability(1.0);
        send(b"dropped").unwrap();
        assert!(peer.recv_from(&mut buf).is_err());
        faults.set_drop_probability(0.0);

        faults.set_delay(Duration::from_millis(100));
        let start = Instant::now();
        send(b"late").unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let received = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 16];
            let n = peer.recv(&mut buf).unwrap();
            (buf[..n].to_vec(), start.elapsed(), peer_addr)
        })
        .await
        .unwrap();
        assert_eq!(received.0, b"late");
        assert!(received.1 >= Duration::from_millis(100));
        assert_eq!((faults.dropped(), faults.delayed()), (2, 1));
    }
}
