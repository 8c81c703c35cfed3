use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use super::*;

/// Echoes one byte per byte read, until the client closes or the server
/// stops (then it writes `bye` and ends).
struct Echo;

impl Protocol for Echo {
    fn serve(
        &self,
        mut stream: TcpStream,
        _peer: SocketAddr,
        mut stopped: watch::Receiver<bool>,
    ) -> ConnectionFuture {
        Box::pin(async move {
            let mut b = [0u8; 1];
            loop {
                tokio::select! {
                    r = stream.read(&mut b) => match r {
                        Ok(1) => { if stream.write_all(&b).await.is_err() { return; } }
                        _ => return,
                    },
                    _ = stopped.changed() => {
                        let _ = stream.write_all(b"bye").await;
                        return;
                    }
                }
            }
        })
    }

    fn refusal(&self, why: Refusal) -> Option<&'static [u8]> {
        Some(match why {
            Refusal::Busy => b"busy",
            Refusal::PerAddress => b"too many",
        })
    }
}

struct Running {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(limits: Limits, protocol: Arc<dyn Protocol>) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(Stats::default());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(serve(
        "test",
        listener,
        limits,
        protocol,
        Arc::clone(&stats),
        stopped,
    ));
    Running {
        addr,
        stats,
        stop,
        task,
    }
}

/// Connects from `from` (a loopback address) to `to`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// Whether `s` echoes a byte (an admitted connection).
async fn echoes(s: &mut TcpStream) -> bool {
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(1))
    ) && b == *b"x"
}

/// What a refused connection is told, to its end.
async fn told(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

async fn wait_open(stats: &Stats, n: u64) {
    for _ in 0..500 {
        if stats.snapshot().open == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("open connections stayed at {:?}, not {n}", stats.snapshot());
}

#[tokio::test]
async fn one_address_over_its_limit_is_refused_and_others_are_not() {
    let limits = Limits {
        max_connections: 10,
        max_per_address: 2,
        drain: Duration::from_secs(1),
    };
    let srv = start(limits, Arc::new(Echo)).await;
    let mut a1 = connect_from("127.0.0.2", srv.addr).await;
    let mut a2 = connect_from("127.0.0.2", srv.addr).await;
    assert!(echoes(&mut a1).await && echoes(&mut a2).await);
    // The third from the same address is told why and closed, even though
    // it sent bytes first (the lingering close lets it read the answer).
    let mut a3 = connect_from("127.0.0.2", srv.addr).await;
    a3.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(told(&mut a3).await, b"too many");
    // Another address is admitted meanwhile.
    let mut b1 = connect_from("127.0.0.3", srv.addr).await;
    assert!(echoes(&mut b1).await);
    // A closed connection frees its address's place.
    drop(a1);
    wait_open(&srv.stats, 2).await;
    let mut a4 = connect_from("127.0.0.2", srv.addr).await;
    assert!(echoes(&mut a4).await);
    let s = srv.stats.snapshot();
    assert_eq!(
        (s.accepted, s.refused_per_address, s.refused_busy),
        (4, 1, 0)
    );
    let _ = srv.stop.send(true);
    srv.task.await.unwrap();
}

#[tokio::test]
async fn a_full_listener_refuses_and_recovers() {
    let limits = Limits {
        max_connections: 3,
        max_per_address: 3,
        drain: Duration::from_secs(1),
    };
    let srv = start(limits, Arc::new(Echo)).await;
    let mut held = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let mut s = connect_from(from, srv.addr).await;
        assert!(echoes(&mut s).await);
        held.push(s);
    }
    let mut over = connect_from("127.0.0.5", srv.addr).await;
    assert_eq!(told(&mut over).await, b"busy");
    held.clear();
    wait_open(&srv.stats, 0).await;
    let mut again = connect_from("127.0.0.5", srv.addr).await;
    assert!(echoes(&mut again).await);
    assert_eq!(srv.stats.snapshot().refused_busy, 1);
    let _ = srv.stop.send(true);
    srv.task.await.unwrap();
}

/// Opens `n` admitted connections to `srv` at once, then closes them all
/// and waits until the listener is empty.
async fn burst(srv: &Running, n: usize) {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        assert!(echoes(&mut s).await);
        held.push(s);
    }
    held.clear();
    wait_open(&srv.stats, 0).await;
}

/// Waits until [`bursts_ended`] reaches `n` (the last connection's slot is
/// freed just after the listener's open count drops).
async fn wait_bursts(n: u64) {
    for _ in 0..500 {
        if bursts_ended() >= n {
            assert_eq!(bursts_ended(), n);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("bursts ended: {}, not {n}", bursts_ended());
}

#[tokio::test]
async fn a_burst_s_end_is_counted_once_the_listener_is_empty() {
    // (No other test in this crate holds TRIM_AFTER connections at once.)
    let limits = Limits {
        max_per_address: 1000,
        ..Limits::default()
    };
    let srv = start(limits, Arc::new(Echo)).await;
    let before = bursts_ended();
    let trim_after = usize::try_from(TRIM_AFTER).unwrap();
    // Fewer than TRIM_AFTER at once is not a burst; TRIM_AFTER is one.
    burst(&srv, trim_after - 1).await;
    burst(&srv, trim_after).await;
    wait_bursts(before + 1).await;
    // Counted once, after the emptying: the peak starts again from there.
    burst(&srv, 2).await;
    burst(&srv, trim_after).await;
    wait_bursts(before + 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(bursts_ended(), before + 2);
    let _ = srv.stop.send(true);
    srv.task.await.unwrap();
}

/// Ignores the stop signal: only the drain's deadline ends it.
struct Stubborn;

impl Protocol for Stubborn {
    fn serve(
        &self,
        mut stream: TcpStream,
        _peer: SocketAddr,
        _stopped: watch::Receiver<bool>,
    ) -> ConnectionFuture {
        Box::pin(async move {
            let mut b = [0u8; 1];
            while let Ok(1) = stream.read(&mut b).await {}
        })
    }

    fn refusal(&self, _why: Refusal) -> Option<&'static [u8]> {
        None
    }
}

#[tokio::test]
async fn the_drain_lets_connections_finish_then_cuts_the_rest() {
    let limits = Limits {
        drain: Duration::from_secs(5),
        ..Limits::default()
    };
    // A connection that stops when told ends the drain at once.
    let srv = start(limits, Arc::new(Echo)).await;
    let mut c = TcpStream::connect(srv.addr).await.unwrap();
    assert!(echoes(&mut c).await);
    let t = tokio::time::Instant::now();
    let _ = srv.stop.send(true);
    srv.task.await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(told(&mut c).await, b"bye");
    assert!(
        TcpStream::connect(srv.addr).await.is_err(),
        "still accepting"
    );

    // One that does not is cut at the drain's deadline.
    let limits = Limits {
        drain: Duration::from_millis(300),
        ..Limits::default()
    };
    let srv = start(limits, Arc::new(Stubborn)).await;
    let mut c = TcpStream::connect(srv.addr).await.unwrap();
    wait_open(&srv.stats, 1).await;
    let t = tokio::time::Instant::now();
    let _ = srv.stop.send(true);
    srv.task.await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(told(&mut c).await.is_empty());
    assert_eq!(srv.stats.snapshot().open, 0);
}

#[test]
fn ipv6_clients_count_by_their_64() {
    let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(address_key(a), address_key(b));
    assert_ne!(address_key(a), address_key(c));
    let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
    assert_eq!(address_key(mapped), "127.0.0.2".parse::<IpAddr>().unwrap());
}

// ----- Guarded ----------------------------------------------------------

const ANSWER: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\r\n";

fn guarded(
    deadlines: Deadlines,
) -> (
    Guarded<tokio::io::DuplexStream>,
    tokio::io::DuplexStream,
    Arc<Activity>,
) {
    let (server, client) = tokio::io::duplex(64);
    let activity = Arc::new(Activity::default());
    let g = Guarded::new(server, deadlines, Arc::clone(&activity), Some(ANSWER));
    (g, client, activity)
}

const D: Deadlines = Deadlines {
    header: Duration::from_secs(10),
    idle: Duration::from_secs(60),
    write: Duration::from_secs(30),
};

#[tokio::test(start_paused = true)]
async fn a_trickled_head_is_cut_at_its_deadline_with_the_answer() {
    let (mut g, mut client, _activity) = guarded(D);
    let t = tokio::time::Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        loop {
            match g.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.kind()),
            }
        }
    });
    // One byte every second: never idle for long, yet the head's deadline
    // does not move.
    for _ in 0..9 {
        client.write_all(b"G").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let r = reader.await.unwrap();
    assert_eq!(r, Err(std::io::ErrorKind::TimedOut));
    assert_eq!(t.elapsed(), Duration::from_secs(10));
    let mut told = vec![0u8; ANSWER.len()];
    client.read_exact(&mut told).await.unwrap();
    assert_eq!(told, ANSWER);
}

#[tokio::test(start_paused = true)]
async fn a_request_has_no_read_deadline_and_idle_ends_quietly() {
    let (mut g, mut client, activity) = guarded(D);
    client.write_all(b"GET").await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(g.read(&mut buf).await.unwrap(), 3);
    // The head is read; a handler works for longer than any deadline.
    activity.start();
    let read = tokio::time::timeout(Duration::from_secs(600), g.read(&mut buf)).await;
    assert!(read.is_err(), "a read in a request timed out: {read:?}");
    activity.finish();
    g.write_all(b"answer").await.unwrap();
    let mut got = [0u8; 6];
    client.read_exact(&mut got).await.unwrap();
    // Idle: closed as at end of file after the idle deadline, no answer.
    let t = tokio::time::Instant::now();
    assert_eq!(g.read(&mut buf).await.unwrap(), 0);
    assert_eq!(t.elapsed(), D.idle);
    drop(g);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_next_head_after_a_response_gets_the_head_deadline() {
    let (mut g, mut client, activity) = guarded(D);
    client.write_all(b"R1").await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(g.read(&mut buf).await.unwrap(), 2);
    activity.start();
    activity.finish();
    tokio::time::sleep(Duration::from_secs(30)).await;
    client.write_all(b"R").await.unwrap();
    let t = tokio::time::Instant::now();
    assert_eq!(g.read(&mut buf).await.unwrap(), 1);
    let e = g.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(t.elapsed(), D.header);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_is_cut() {
    let (mut g, _client, _activity) = guarded(D);
    let t = tokio::time::Instant::now();
    let big = vec![0u8; 1024];
    let e = g.write_all(&big).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(t.elapsed(), D.write);
}
