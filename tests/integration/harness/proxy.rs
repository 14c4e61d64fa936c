//! A fault-injecting TCP proxy between walsink and a real server, for the faults a real
//! server cannot produce on demand: a connection cut at an exact byte offset (inside a
//! message header or a payload) and a peer that goes silent without closing the
//! connection, at once or after an exact number of bytes.
//!
//! Every accepted connection gets two pump threads (client→server, server→client). The
//! pumps check the shared state between reads, so a stall or a cut takes effect within
//! [`POLL`].

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How often pumps look at the shared state.
const POLL: Duration = Duration::from_millis(20);

#[derive(Default)]
struct State {
    /// Forward nothing in either direction while set; connections stay open.
    stalled: AtomicBool,
    /// Server→client bytes still allowed on the current connections before they are cut;
    /// `u64::MAX` for no limit.
    cut_budget: AtomicU64,
    /// Server→client bytes still forwarded before a stall begins; `u64::MAX` for no limit.
    stall_budget: AtomicU64,
    /// Bumped to ask every pump of every current connection to close it.
    generation: AtomicU64,
    /// Connections accepted so far.
    accepted: AtomicUsize,
    /// Connections closed by a cut.
    cuts: AtomicUsize,
    /// Server→client bytes forwarded in total.
    down_bytes: AtomicU64,
    stop: AtomicBool,
}

/// A proxy listening on a free loopback port and forwarding to `127.0.0.1:upstream`.
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl FaultProxy {
    /// Starts the proxy.
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(State {
            cut_budget: AtomicU64::new(u64::MAX),
            stall_budget: AtomicU64::new(u64::MAX),
            ..Default::default()
        });
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (st, cs) = (state.clone(), conns.clone());
        thread::spawn(move || {
            while !st.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue; // upstream down: the client sees the connection close
                        };
                        st.accepted.fetch_add(1, Ordering::Relaxed);
                        let generation = st.generation.load(Ordering::Relaxed);
                        for s in [&client, &server] {
                            s.set_read_timeout(Some(POLL)).unwrap();
                            s.set_nodelay(true).unwrap();
                        }
                        cs.lock()
                            .unwrap()
                            .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        let (st1, st2) = (st.clone(), st.clone());
                        thread::spawn(move || pump(client, server, st1, generation, false));
                        thread::spawn(move || pump(s2, c2, st2, generation, true));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
                    Err(_) => thread::sleep(POLL),
                }
            }
        });
        FaultProxy { port, state, conns }
    }

    /// The port to point walsink at.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops forwarding in both directions without closing anything: a silent peer.
    pub fn stall(&self) {
        self.state.stalled.store(true, Ordering::SeqCst);
    }

    /// Forwards again.
    pub fn resume(&self) {
        self.state.stall_budget.store(u64::MAX, Ordering::SeqCst);
        self.state.stalled.store(false, Ordering::SeqCst);
    }

    /// Forwards again, but only `n` more server→client bytes: then stalls (as
    /// [`stall`](Self::stall)) in the middle of whatever message they end in. For a client that
    /// has heard of the server's new WAL (the first messages) but not received all of it.
    pub fn stall_after(&self, n: u64) {
        self.state.stall_budget.store(n, Ordering::SeqCst);
        self.state.stalled.store(false, Ordering::SeqCst);
    }

    /// Cuts the current connections after `n` more server→client bytes.
    pub fn cut_after(&self, n: u64) {
        self.state.cut_budget.store(n, Ordering::SeqCst);
    }

    /// Closes every current connection at once.
    pub fn cut_now(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections cut by [`cut_after`](Self::cut_after) so far.
    pub fn cuts(&self) -> usize {
        self.state.cuts.load(Ordering::SeqCst)
    }

    /// Server→client bytes forwarded so far.
    pub fn down_bytes(&self) -> u64 {
        self.state.down_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.cut_now();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, st: Arc<State>, generation: u64, downstream: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    let close = |a: &TcpStream, b: &TcpStream| {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    };
    loop {
        if st.stop.load(Ordering::Relaxed) || st.generation.load(Ordering::Relaxed) != generation {
            return close(&from, &to);
        }
        if st.stalled.load(Ordering::Relaxed) {
            thread::sleep(POLL);
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => return close(&from, &to),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return close(&from, &to),
        };
        let mut chunk = &buf[..n];
        if downstream {
            // The part of the chunk within the stall budget goes through; the stall begins
            // after it.
            let budget = st.stall_budget.load(Ordering::SeqCst);
            if budget != u64::MAX {
                let allowed = budget.min(chunk.len() as u64) as usize;
                st.stall_budget
                    .store(budget - allowed as u64, Ordering::SeqCst);
                if allowed < chunk.len() {
                    if to.write_all(&chunk[..allowed]).is_err() {
                        return close(&from, &to);
                    }
                    st.down_bytes.fetch_add(allowed as u64, Ordering::SeqCst);
                    chunk = &chunk[allowed..];
                    st.stall_budget.store(u64::MAX, Ordering::SeqCst);
                    st.stalled.store(true, Ordering::SeqCst);
                }
            }
        }
        // Hold data that arrived just as a stall began.
        while st.stalled.load(Ordering::Relaxed) && !st.stop.load(Ordering::Relaxed) {
            thread::sleep(POLL);
        }
        if downstream {
            let budget = st.cut_budget.load(Ordering::SeqCst);
            if budget != u64::MAX {
                let allowed = budget.min(chunk.len() as u64) as usize;
                if allowed < chunk.len() {
                    let _ = to.write_all(&chunk[..allowed]);
                    st.down_bytes.fetch_add(allowed as u64, Ordering::SeqCst);
                    st.cut_budget.store(u64::MAX, Ordering::SeqCst);
                    st.cuts.fetch_add(1, Ordering::SeqCst);
                    st.generation.fetch_add(1, Ordering::SeqCst);
                    return close(&from, &to);
                }
                st.cut_budget.fetch_sub(allowed as u64, Ordering::SeqCst);
            }
            st.down_bytes
                .fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        while !chunk.is_empty() {
            match to.write(chunk) {
                Ok(0) => return close(&from, &to),
                Ok(k) => chunk = &chunk[k..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return close(&from, &to),
            }
        }
    }
}
