//! Operating-system helpers: file limits, /proc readings, source-address
//! spreading and socket setup.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use tokio::net::{TcpSocket, TcpStream};

/// Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

pub fn stderr_is_tty() -> bool {
    unsafe { libc::isatty(2) == 1 }
}

/// VmRSS of a process in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sum of VmRSS over several processes (None if any is unreadable).
pub fn rss_sum(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| rss_bytes(p)).sum()
}

pub fn self_rss() -> Option<u64> {
    rss_bytes(std::process::id())
}

/// TCP figures from /proc/net/sockstat: (inuse, tw, alloc, mem pages).
#[derive(Clone, Copy, Debug, Default)]
pub struct SockStat {
    pub inuse: u64,
    pub tw: u64,
    pub alloc: u64,
    pub mem_pages: u64,
}

pub fn sockstat() -> Option<SockStat> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut st = SockStat::default();
    let toks: Vec<&str> = line.split_whitespace().collect();
    for w in toks.windows(2) {
        let v = w[1].parse().unwrap_or(0);
        match w[0] {
            "inuse" => st.inuse = v,
            "tw" => st.tw = v,
            "alloc" => st.alloc = v,
            "mem" => st.mem_pages = v,
            _ => {}
        }
    }
    Some(st)
}

pub fn page_size() -> u64 {
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Source addresses 127.0.0.(first) .. spread over the loopback /8.
pub fn source_ips(first: u32, count: u32) -> Vec<Ipv4Addr> {
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 0));
    let mut out = Vec::with_capacity(count as usize);
    let mut host = first.max(1);
    while out.len() < count as usize {
        let a = base + host;
        host += 1;
        let last = a & 0xff;
        if last == 0 || last == 255 {
            continue;
        }
        out.push(Ipv4Addr::from(a));
    }
    out
}

/// Connect to `dst` from `src`:0. IP_BIND_ADDRESS_NO_PORT lets the kernel
/// pick the port at connect time per 4-tuple (so ports are not reserved by
/// the bind and loopback TIME_WAIT reuse applies). `rcvbuf` > 0 sets
/// SO_RCVBUF and `mss` > 0 sets TCP_MAXSEG before connecting: a small
/// window and a small segment size keep the server's send buffer small
/// (on loopback the MSS is ~64 KiB and the kernel sizes the send buffer
/// from it), so a reader that stops reading backs the server up quickly.
pub async fn connect_from(
    src: Ipv4Addr,
    dst: SocketAddr,
    rcvbuf: u32,
    mss: u32,
) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if rcvbuf > 0 {
        sock.set_recv_buffer_size(rcvbuf)?;
    }
    if mss > 0 {
        let v = mss as libc::c_int;
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_MAXSEG,
                &v as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    unsafe {
        let one: libc::c_int = 1;
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))?;
    let stream = sock.connect(dst).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Close a stream with an RST instead of a FIN (no TIME_WAIT left behind).
pub fn set_linger_zero(stream: &TcpStream) {
    unsafe {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / if hz > 0 { hz as f64 } else { 100.0 })
}

pub fn cpu_seconds_sum(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| cpu_seconds(p)).sum()
}

/// CPU time (user + system) used by this process so far, seconds.
pub fn self_cpu_seconds() -> f64 {
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}
