//! `skiff-bench delay-line`: a link with a delay and a rate, as a TCP relay, for kernels without
//! netem. It listens on each `--forward LISTEN=TARGET` and relays every connection to its
//! target; each direction is one link shared by every connection, a FIFO that sends at
//! `--rate` and delivers each piece `--delay-ms` / 2 after it was sent. `coldstart --delay`
//! runs it in the bench's namespace, between the clients and the registry.
//!
//! The delay is the application's: the relay's own TCP legs are loopback-fast, so a sender's
//! congestion window never sees the delay, as it would through netem. What a client sees (a
//! request answered after a round trip, bytes at the link's rate, in order) is the same.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Round-trip time added, in milliseconds (half in each direction).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Each direction's rate (tc units: 100mbit, 1gbit); none leaves it unlimited.
    #[arg(long, value_parser = crate::coldstart::parse_rate)]
    rate: Option<u64>,
    /// LISTEN=TARGET, both HOST:PORT; repeat for more.
    #[arg(long = "forward", value_parser = parse_forward, required = true)]
    forwards: Vec<(SocketAddr, SocketAddr)>,
}

/// `LISTEN=TARGET`, both socket addresses.
fn parse_forward(input: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (listen, target) = input.split_once('=').ok_or(format!("{input:?}: expected LISTEN=TARGET"))?;
    let addr = |s: &str| s.parse::<SocketAddr>().map_err(|e| format!("{s:?} in {input:?}: {e}"));
    Ok((addr(listen)?, addr(target)?))
}

/// Relays until killed: binds every listener first, so that once one listens all do.
pub fn run(args: Args) -> anyhow::Result<()> {
    let line = Line::new(Duration::from_micros(args.delay_ms * 500), args.rate);
    let listeners = args
        .forwards
        .iter()
        .map(|&(listen, target)| {
            Ok((TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?, target))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|(listener, target)| {
            let line = line.clone();
            std::thread::spawn(move || relay_all(&listener, target, &line))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Both directions of a link: one-way delay, and when each is next free to send.
#[derive(Clone)]
pub struct Line {
    one_way: Duration,
    /// Seconds a byte takes to send; zero for no limit.
    per_byte: f64,
    up: Arc<Mutex<Instant>>,
    down: Arc<Mutex<Instant>>,
}

impl Line {
    pub fn new(one_way: Duration, rate_bits_per_s: Option<u64>) -> Line {
        let per_byte = rate_bits_per_s.map_or(0.0, |r| 8.0 / r as f64);
        Line {
            one_way,
            per_byte,
            up: Arc::new(Mutex::new(Instant::now())),
            down: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// When `bytes` read at `now` are delivered through `direction`: sent once the link is
    /// free, at its rate, then the delay.
    fn due(&self, direction: &Mutex<Instant>, bytes: usize, now: Instant) -> Instant {
        let mut free = direction.lock().unwrap();
        let sent = (*free).max(now) + Duration::from_secs_f64(bytes as f64 * self.per_byte);
        *free = sent;
        sent + self.one_way
    }
}

/// Accepts on `listener` until it fails, relaying each connection to `target`.
fn relay_all(listener: &TcpListener, target: SocketAddr, line: &Line) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let line = line.clone();
        std::thread::spawn(move || {
            if let Err(e) = relay(client, target, &line) {
                eprintln!("delay-line: relaying to {target}: {e:#}");
            }
        });
    }
}

/// Relays one connection both ways until both have ended.
fn relay(client: TcpStream, target: SocketAddr, line: &Line) -> anyhow::Result<()> {
    let server = TcpStream::connect(target).with_context(|| format!("connecting to {target}"))?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
    }
    let (client_in, server_in) = (client.try_clone()?, server.try_clone()?);
    let up = {
        let line = line.clone();
        std::thread::spawn(move || carry(client_in, server, &line, &line.up))
    };
    carry(server_in, client, line, &line.down);
    let _ = up.join();
    Ok(())
}

/// Most bytes read and not yet delivered, per connection and direction (in reads of
/// `PIECE`): what a socket buffer and a router's queue would hold; the sender waits beyond.
const QUEUED_PIECES: usize = 256;
const PIECE: usize = 16 << 10;

/// Reads `from` to its end, delivering each piece to `to` when `line` says, then ends `to`'s
/// writing side.
fn carry(mut from: TcpStream, to: TcpStream, line: &Line, direction: &Mutex<Instant>) {
    let (queue, queued) = sync_channel::<(Instant, Vec<u8>)>(QUEUED_PIECES);
    let writer = std::thread::spawn(move || deliver(queued, to));
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = from.read(&mut buf).unwrap_or(0);
        let due = line.due(direction, n, Instant::now());
        // An empty piece is the end; a writer gone means the far side went away.
        if queue.send((due, buf[..n].to_vec())).is_err() || n == 0 {
            break;
        }
    }
    drop(queue);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Read);
}

fn deliver(queued: Receiver<(Instant, Vec<u8>)>, mut to: TcpStream) {
    for (due, piece) in queued {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if piece.is_empty() || to.write_all(&piece).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// A server on a free loopback port that answers each connection's bytes, upper-cased,
    /// once the client has finished writing.
    fn shouting_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut c in listener.incoming().flatten() {
                let mut all = Vec::new();
                c.read_to_end(&mut all).unwrap();
                c.write_all(&all.to_ascii_uppercase()).unwrap();
            }
        });
        addr
    }

    fn relay_to(target: SocketAddr, line: Line) -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || relay_all(&listener, target, &line));
        addr
    }

    #[test]
    fn bytes_cross_both_ways_in_order_and_a_half_close_crosses_too() {
        let relay = relay_to(shouting_server(), Line::new(Duration::ZERO, None));
        let mut c = TcpStream::connect(relay).unwrap();
        let sent: Vec<u8> = (0..300_000u32).map(|i| b"abcdefghij"[(i % 10) as usize]).collect();
        c.write_all(&sent).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, sent.to_ascii_uppercase());
    }

    #[test]
    fn a_round_trip_takes_at_least_the_delay_and_a_transfer_at_least_its_time_at_the_rate() {
        // 20 ms, 8 Mbit/s: 100 kB take 100 ms each way.
        let relay = relay_to(shouting_server(), Line::new(Duration::from_millis(10), Some(8_000_000)));
        let started = Instant::now();
        let mut c = TcpStream::connect(relay).unwrap();
        c.write_all(&[b'x'; 100_000]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 100_000);
        assert!(started.elapsed() >= Duration::from_millis(220), "took {:?}", started.elapsed());
    }

    #[test]
    fn the_link_is_shared_first_come_first_served() {
        let line = Line::new(Duration::from_millis(5), Some(8_000_000));
        let t0 = Instant::now();
        // 1000 bytes take 1 ms at 8 Mbit/s; the second piece waits for the first.
        assert_eq!(line.due(&line.down, 1000, t0), t0 + Duration::from_millis(6));
        assert_eq!(line.due(&line.down, 1000, t0), t0 + Duration::from_millis(7));
        // The other direction is a link of its own; a link idle since is free at once.
        assert_eq!(line.due(&line.up, 1000, t0), t0 + Duration::from_millis(6));
        let later = t0 + Duration::from_secs(1);
        assert_eq!(line.due(&line.down, 0, later), later + Duration::from_millis(5));
    }

    #[test]
    fn forwards_are_two_socket_addresses() {
        let (l, t) = parse_forward("127.0.0.1:5000=127.0.0.2:5000").unwrap();
        assert_eq!((l.port(), t.to_string()), (5000, "127.0.0.2:5000".to_string()));
        assert!(parse_forward("127.0.0.1:5000").unwrap_err().contains("LISTEN=TARGET"));
        assert!(parse_forward("localhost:1=127.0.0.1:2").is_err());
    }
}
