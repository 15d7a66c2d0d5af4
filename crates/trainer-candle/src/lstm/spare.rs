//! A free list of the fused layer's large `f32` buffers (saved gates, gate gradients, packed
//! weights), so that one training step reuses the memory of the previous one instead of
//! faulting in fresh zeroed pages from the kernel: without it a step of the owner's model took
//! about 4,700 page faults and a fifth of its time on the 2-core bench machine, with it about 360.

use std::sync::{Mutex, PoisonError};

/// Buffers kept at most: about what one step of a few layers has alive at once.
const KEEP: usize = 24;
/// Values kept at most (256 MiB): larger models fault their buffers in as before.
const KEEP_VALUES: usize = 64 << 20;
/// Smaller buffers are left to the allocator, which serves them well.
const MIN_LEN: usize = 16 * 1024;

static SPARE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A buffer of `len` values whose contents are unspecified: callers overwrite all of it.
pub(crate) fn take(len: usize) -> Vec<f32> {
    if len >= MIN_LEN {
        let mut spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = best_fit(&spare, len) {
            let mut buf = spare.swap_remove(i);
            drop(spare);
            buf.resize(len, 0.0);
            return buf;
        }
    }
    vec![0.0; len]
}

/// The smallest buffer that holds `len` values.
fn best_fit(spare: &[Vec<f32>], len: usize) -> Option<usize> {
    spare.iter().enumerate().filter(|(_, b)| b.capacity() >= len).min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i)
}

/// Hands `buf` back for a later [`take`].
pub(crate) fn give(buf: Vec<f32>) {
    if buf.capacity() < MIN_LEN {
        return;
    }
    let mut spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
    spare.push(buf);
    // Over the count, drop the smallest (the large ones are the expensive ones to fault in
    // again); over the size, the largest.
    while spare.len() > KEEP || spare.iter().map(Vec::capacity).sum::<usize>() > KEEP_VALUES {
        let by_size = spare.iter().enumerate().map(|(i, b)| (b.capacity(), i));
        let victim = if spare.len() > KEEP { by_size.min() } else { by_size.max() };
        match victim {
            Some((_, i)) => drop(spare.swap_remove(i)),
            None => break,
        }
    }
}

/// Frees every kept buffer (after a training run, say).
pub(crate) fn clear() {
    SPARE.lock().unwrap_or_else(PoisonError::into_inner).clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_smallest_buffer_that_fits() {
        let spare = vec![Vec::with_capacity(10), Vec::with_capacity(40), Vec::with_capacity(20)];
        assert_eq!(best_fit(&spare, 15), Some(2));
        assert_eq!(best_fit(&spare, 20), Some(2));
        assert_eq!(best_fit(&spare, 21), Some(1));
        assert_eq!(best_fit(&spare, 41), None);
    }

    #[test]
    fn takes_buffers_of_the_length_asked() {
        for len in [3, MIN_LEN + 5, 2 * MIN_LEN] {
            let buf = take(len);
            assert_eq!(buf.len(), len);
            give(buf);
        }
        assert_eq!(take(MIN_LEN).len(), MIN_LEN);
        give(vec![0.0; KEEP_VALUES + 1]);
        assert!(SPARE.lock().unwrap().iter().map(Vec::capacity).sum::<usize>() <= KEEP_VALUES);
    }
}
