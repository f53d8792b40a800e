//! Free TCP ports on 127.0.0.1.
//!
//! A port is found by binding `127.0.0.1:0` and reading back what the kernel chose. The socket is
//! closed before the service binds, so another process may grab the port in between: the service
//! modules therefore retry their start on a new port when the bind fails. Ports already handed out
//! by this process are never handed out again, so parallel tests in one binary do not collide.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context as _, Result, bail};

/// The address every service of the harness listens on.
pub const LOCALHOST: &str = "127.0.0.1";

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that this process has not
/// handed out before.
pub fn free_port() -> Result<u16> {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = guard.get_or_insert_with(HashSet::new);
    for _ in 0..64 {
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .context("cannot bind 127.0.0.1:0 to find a free port")?;
        let port = listener
            .local_addr()
            .context("cannot read the address of a socket bound to 127.0.0.1:0")?
            .port();
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    bail!("could not find a free TCP port on 127.0.0.1 after 64 tries")
}

/// Starts a service with `attempt`, which picks its ports with [`free_port`]; an attempt whose
/// error contains `port_taken` (the service's "address already in use" message) lost a race for
/// a port and is retried with new ports, up to `attempts` times.
pub fn retry_on_port_race<T>(
    what: &str,
    attempts: usize,
    port_taken: &str,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut last_error = None;
    for _ in 0..attempts {
        match attempt() {
            Ok(started) => return Ok(started),
            Err(e) if format!("{e:#}").contains(port_taken) => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no attempt made"))).context(format!(
        "cannot start {what}: {attempts} attempts, every port taken"
    ))
}

/// True when something accepts TCP connections on `127.0.0.1:port`.
pub fn is_listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into(),
        std::time::Duration::from_millis(200),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_within_the_process() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b);
        assert!(a > 0 && b > 0);
    }
}
