//! The allocator of every agent: jemalloc, built (see `.cargo/config.toml`) with one arena and a
//! background thread that hands freed pages back to the kernel within a second.
//!
//! Why jemalloc: log_shipper's parsing allocates a handful of small strings per record on the
//! tailer thread, freed on a sink's thread once delivered; glibc's malloc spent about a third of
//! the parsing time on them (mimalloc was as fast but tripled the peak RSS). Why one arena and a
//! background thread: with glibc's malloc (an arena per thread, up to 8 per core) and with
//! jemalloc's default arenas (4 per core), the exporters' RSS stepped up whenever a new thread (the blocking pool's,
//! for a reconnect) first allocated, +6 to +13 % after minute 5 of the 30-minute soak, and
//! log_shipper's stayed up after each receiver outage; with them it stays within 2 %. The
//! settings are built in (`.cargo/config.toml`); `_RJEM_MALLOC_CONF` overrides them at run time.
//! Declaring it here, in the crate every agent links, gives all four binaries (and their tests)
//! the same allocator.

/// The global allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
