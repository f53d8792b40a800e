//! One way to take a lock, for every agent: a poisoned mutex is used as it is.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking its data even when a thread panicked while holding it.
///
/// Why poisoning is ignored, everywhere: the release binaries abort on panic (`panic =
/// "abort"`), so a poisoned lock exists only in debug builds and tests; and the agents' mutexes
/// guard counters, caches and bookkeeping that each critical section leaves consistent at
/// every step, so the data after a panic is still the best there is. Refusing it would turn one
/// failed thread into failures of everything that takes the lock afterwards (every scrape,
/// every send) instead of the one panic being reported.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let held = m.clone();
        let _ = std::thread::spawn(move || {
            let mut g = held.lock().unwrap();
            *g = 2;
            panic!("poisons the lock");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 2);
    }
}
