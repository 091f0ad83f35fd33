//! The allocator's side of a flat resident size (issue 16, F-30). glibc's
//! malloc keeps freed heap pages until asked to return them, and gives each
//! thread that meets contention an arena of its own (up to eight per core),
//! whose free space other threads cannot reuse. A daemon that runs for
//! months on a fixed set of threads wants neither: the arenas are capped at
//! start, and each retention pass hands back what it freed.

/// Arenas glibc may create (its default is eight per core).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MAX_ARENAS: libc::c_int = 2;

/// At start, before any thread but the main one exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_arenas() {
    // SAFETY: mallopt takes two integers and only sets glibc's own tuning
    // value; it is called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MAX_ARENAS);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}

/// Return free heap pages of every arena to the OS (`malloc_trim(0)`).
/// It takes the allocator's locks: call it off the async runtime.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_freed() {
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own
    // arenas under their locks and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed() {}
