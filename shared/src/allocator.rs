//! The allocator of every agent: jemalloc, built (see `.cargo/config.toml`) with a background
//! thread that hands freed pages back to the kernel within a second.
//!
//! Why jemalloc: log_shipper's parsing allocates a handful of small strings per record on the
//! tailer thread, freed on a sink's thread once delivered; glibc's malloc spent about a third of
//! the parsing time on them (mimalloc was as fast but tripled the peak RSS). pg_exporter spends
//! about 15 % less CPU with it. Why the background thread: under glibc's malloc, and jemalloc
//! without it, the exporters' RSS crept up by steps over a 30-minute soak (+7.5 % and +12.9 %
//! after minute 5) and log_shipper's stayed up after each receiver outage (+12 %); freed memory
//! was kept, not leaked. Declaring it here, in the crate every agent links, gives all four
//! binaries (and their tests) the same allocator.

/// The global allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
