//! A process's resident memory, read from `/proc/<pid>/status` (Linux).

/// Resident memory now and its high-water mark, in MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Resident {
    pub(crate) now_mb: u64,
    pub(crate) peak_mb: u64,
}

/// The process's resident memory, or `None` when it has gone or this is not Linux.
pub(crate) fn resident(pid: u32) -> Option<Resident> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status(&status)
}

/// Reads `VmRSS` and `VmHWM` (in kB) from a `/proc/<pid>/status` text.
pub(crate) fn parse_status(status: &str) -> Option<Resident> {
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok());
    let now_kb = field("VmRSS:")?;
    let peak_kb = field("VmHWM:").unwrap_or(now_kb).max(now_kb);
    Some(Resident { now_mb: now_kb.div_ceil(1024), peak_mb: peak_kb.div_ceil(1024) })
}
