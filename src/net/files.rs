//! The open-files limit: every client connection is a file descriptor, so a node cannot hold more sockets than
//! the limit allows, less what it needs besides (Redis connections, listeners, logs). Read once at start-up,
//! with the soft limit raised as far as the hard one lets it.

use rlimit::Resource;

/// Descriptors kept for everything but client connections.
pub const RESERVED: u64 = 256;
/// `MAX_SOCKETS` when it is not set, if the limit allows that many.
pub const DEFAULT_MAX_SOCKETS: u64 = 20_000;

/// The socket cap: `wanted` (`MAX_SOCKETS`) when the open-files limit allows it, else a clear refusal; unset,
/// [`DEFAULT_MAX_SOCKETS`] or what the limit allows, whichever is smaller.
pub fn socket_cap(wanted: Option<u64>) -> Result<u64, String> {
    let Ok((soft, hard)) = rlimit::getrlimit(Resource::NOFILE) else {
        // Not knowable here: trust the setting.
        return Ok(wanted.unwrap_or(DEFAULT_MAX_SOCKETS));
    };
    let need = wanted
        .unwrap_or(DEFAULT_MAX_SOCKETS)
        .saturating_add(RESERVED);
    let soft = match need > soft {
        true => {
            let raised = need.min(hard);
            match rlimit::setrlimit(Resource::NOFILE, raised, hard) {
                Ok(()) => raised,
                Err(_) => soft,
            }
        }
        false => soft,
    };
    let allowed = soft.saturating_sub(RESERVED).max(1);
    cap(wanted, allowed, soft)
}

/// The rule, apart from the system calls.
fn cap(wanted: Option<u64>, allowed: u64, limit: u64) -> Result<u64, String> {
    match wanted {
        Some(n) if n > allowed => Err(format!(
            "MAX_SOCKETS={n} is above what the open-files limit allows: {limit} files, {RESERVED} of them kept for \
             Redis, listeners and logs, so at most {allowed} sockets. Raise the limit (systemd LimitNOFILE=, \
             ulimit -n) or lower MAX_SOCKETS"
        )),
        Some(n) => Ok(n),
        None => Ok(DEFAULT_MAX_SOCKETS.min(allowed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_above_the_limit_is_refused_and_the_default_fits_under_it() {
        assert_eq!(cap(Some(100), 1000, 1256), Ok(100));
        assert_eq!(cap(Some(1000), 1000, 1256), Ok(1000));
        let e = cap(Some(1001), 1000, 1256).unwrap_err();
        assert!(
            e.starts_with("MAX_SOCKETS=1001 is above what the open-files limit allows: 1256 files"),
            "{e}"
        );
        assert!(e.contains("at most 1000 sockets"), "{e}");
        assert_eq!(cap(None, 768, 1024), Ok(768));
        assert_eq!(cap(None, 1_000_000, 1_000_256), Ok(DEFAULT_MAX_SOCKETS));
    }

    #[test]
    fn this_process_gets_a_cap() {
        let cap = socket_cap(None).unwrap();
        assert!((1..=DEFAULT_MAX_SOCKETS).contains(&cap));
        assert!(
            socket_cap(Some(u64::MAX / 2)).is_err(),
            "no system allows that many"
        );
    }
}
