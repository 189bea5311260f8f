//! The signing slot that a blocking thread holds while it computes, and
//! gives up while it waits for the disk.
//!
//! The server bounds the engine operations that compute at once (key
//! generation, signing) with a semaphore sized by `keyd.signing_threads`.
//! A thread that waits for its commit to become durable computes nothing.
//! If it kept its permit, the next request could not sign meanwhile, so
//! concurrent requests would never reach the database writer together and
//! could not share one commit. [`hold`] makes a permit the current
//! thread's slot, and [`release`], which the store calls before it waits for
//! a commit, drops it.
//!
//! NOTE: a slot is not taken again after a commit. An operation that
//! computes more after its first commit (creating a mount commits its data
//! key before it generates the root key) does that work outside the bound.
#![forbid(unsafe_code)]

use std::cell::RefCell;

use tokio::sync::OwnedSemaphorePermit;

thread_local! {
    static SLOT: RefCell<Option<OwnedSemaphorePermit>> = const { RefCell::new(None) };
}

/// Keeps a permit as the current thread's slot until it is released or the
/// guard is dropped.
#[must_use = "the slot is released when the guard is dropped"]
pub struct SlotGuard(());

/// Makes `permit` the current thread's slot.
pub fn hold(permit: OwnedSemaphorePermit) -> SlotGuard {
    SLOT.with(|slot| *slot.borrow_mut() = Some(permit));
    SlotGuard(())
}

/// Releases the current thread's slot, if it holds one.
pub fn release() {
    // `take` ends the borrow before the permit is dropped, so dropping it
    // cannot reenter the cell.
    let permit = SLOT.with(|slot| slot.borrow_mut().take());
    drop(permit);
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        release();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use super::*;

    #[test]
    fn release_returns_the_permit_before_the_guard_drops() {
        let semaphore = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&semaphore).try_acquire_owned().unwrap();
        let guard = hold(permit);
        assert_eq!(semaphore.available_permits(), 0);
        release();
        assert_eq!(semaphore.available_permits(), 1);
        // A second release and the guard's drop find no slot to release.
        release();
        drop(guard);
        assert_eq!(semaphore.available_permits(), 1);
    }

    #[test]
    fn guard_releases_the_slot() {
        let semaphore = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&semaphore).try_acquire_owned().unwrap();
        drop(hold(permit));
        assert_eq!(semaphore.available_permits(), 1);
    }

    #[test]
    fn slot_belongs_to_one_thread() {
        let semaphore = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&semaphore).try_acquire_owned().unwrap();
        let _guard = hold(permit);
        std::thread::spawn(release).join().unwrap();
        assert_eq!(semaphore.available_permits(), 0);
    }
}
