//! Dropping Linux capabilities once setup is done.
//!
//! Capabilities belong to each thread, and a new thread copies them from
//! the thread that creates it. [`drop_capabilities`] therefore runs on the
//! main thread before any other thread exists, so that no thread of keyd
//! ever has one.

use caps::CapSet;

/// Empties the bounding set, then the effective, permitted, inheritable and
/// ambient sets of the calling thread, and checks that all five are empty.
///
/// The bounding set goes first: dropping from it needs CAP_SETPCAP in the
/// effective set, which clearing the effective set removes. With an empty
/// bounding set no later execve or setuid to 0 can give a capability back.
/// Returns how many capabilities the bounding set held.
pub fn drop_capabilities() -> Result<usize, String> {
    let mut dropped = 0;
    for cap in caps::all() {
        // A capability the running kernel does not know reads as absent.
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|err| format!("failed to drop {cap} from the bounding set: {err}"))?;
            dropped += 1;
        }
    }
    for (set, name) in CLEARED_SETS {
        caps::clear(None, set)
            .map_err(|err| format!("failed to clear the {name} capability set: {err}"))?;
    }
    for (set, name) in ALL_SETS {
        let left = caps::read(None, set)
            .map_err(|err| format!("failed to read the {name} capability set: {err}"))?;
        if !left.is_empty() {
            let mut names: Vec<String> = left.iter().map(ToString::to_string).collect();
            names.sort();
            return Err(format!(
                "the {name} capability set still contains {}",
                names.join(", ")
            ));
        }
    }
    Ok(dropped)
}

/// The sets emptied by `caps::clear`, in order. The kernel already removes
/// ambient capabilities with the permitted or inheritable ones, so clearing
/// the ambient set only makes that explicit.
const CLEARED_SETS: [(CapSet, &str); 4] = [
    (CapSet::Effective, "effective"),
    (CapSet::Permitted, "permitted"),
    (CapSet::Inheritable, "inheritable"),
    (CapSet::Ambient, "ambient"),
];

const ALL_SETS: [(CapSet, &str); 5] = [
    (CapSet::Bounding, "bounding"),
    (CapSet::Effective, "effective"),
    (CapSet::Permitted, "permitted"),
    (CapSet::Inheritable, "inheritable"),
    (CapSet::Ambient, "ambient"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a `Cap*` line of this thread from /proc.
    fn thread_status_line(field: &str) -> String {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .unwrap()
            .trim()
            .to_owned()
    }

    // Capabilities are per thread, so the drop runs on a thread of its own
    // and leaves the other tests of this process as they were.
    #[test]
    fn every_set_is_empty_after_the_drop() {
        let fields = std::thread::spawn(|| {
            drop_capabilities().unwrap();
            ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"].map(thread_status_line)
        })
        .join()
        .unwrap();
        for line in fields {
            assert_eq!(line, "0000000000000000");
        }
    }
}
