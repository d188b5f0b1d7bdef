//! Talking to worker processes by pid: liveness, pause (SIGUSR1), cancel (SIGTERM). Unix only;
//! elsewhere a cancel kills the process and pause is not offered.

/// Whether a process with this pid exists.
#[cfg(unix)]
pub fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    pid > 0 && unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
}

#[cfg(not(unix))]
pub fn alive(_pid: u32) -> bool {
    false
}

/// Whether the process is a worker writing to `output_dir` (guards against a reused pid).
pub fn is_worker_for(pid: u32, output_dir: &str) -> bool {
    if !alive(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(raw) => raw.split(|b| *b == 0).any(|arg| arg == output_dir.as_bytes()),
        // No /proc (macOS): trust the pid.
        Err(_) => cfg!(not(target_os = "linux")),
    }
}

#[cfg(unix)]
fn send(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: sending a signal to a pid we started; failure is reported by the return value.
    pid > 0 && unsafe { libc::kill(pid as libc::pid_t, sig) } == 0
}

/// Asks the worker to finish its step, write a checkpoint and exit.
#[cfg(unix)]
pub fn pause(pid: u32) -> bool {
    send(pid, libc::SIGUSR1)
}

/// Asks the worker to stop at the next step boundary without a new checkpoint.
#[cfg(unix)]
pub fn terminate(pid: u32) -> bool {
    send(pid, libc::SIGTERM)
}

#[cfg(unix)]
pub fn kill(pid: u32) -> bool {
    send(pid, libc::SIGKILL)
}

#[cfg(not(unix))]
pub fn pause(_pid: u32) -> bool {
    false
}

#[cfg(not(unix))]
pub fn terminate(_pid: u32) -> bool {
    false
}

#[cfg(not(unix))]
pub fn kill(_pid: u32) -> bool {
    false
}

pub const PAUSE_SUPPORTED: bool = cfg!(unix);
