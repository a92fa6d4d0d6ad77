//! Keeps stdout for the protocol alone.
//!
//! [`protocol_stdout`] duplicates file descriptor 1 for the MCP transport and
//! then points descriptor 1 at stderr, so a stray `println!` anywhere in the
//! process (ours or a dependency's) lands in the log, never in the JSON-RPC
//! stream.

use std::os::fd::FromRawFd;

/// Takes over stdout for the protocol; afterwards fd 1 is a copy of stderr.
///
/// Fails when the descriptors cannot be duplicated (a closed stdout).
pub fn protocol_stdout() -> std::io::Result<tokio::fs::File> {
    use std::io::Write;
    std::io::stdout().flush()?;
    // SAFETY: dup/dup2 on the process's own standard descriptors; the new
    // descriptor is owned by the File created from it and nowhere else.
    unsafe {
        let proto = libc::dup(1);
        if proto < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::dup2(2, 1) < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(proto);
            return Err(e);
        }
        Ok(tokio::fs::File::from_std(std::fs::File::from_raw_fd(proto)))
    }
}
