use mimalloc::MiMalloc;

/// mimalloc: per-thread free lists suit thread-per-core, and it returns memory to the OS
/// promptly after connection storms (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    // Before the workers start: their heaps are small pages, whatever the host's THP mode.
    ringway::sys::alloc::no_huge_pages();
    std::process::exit(ringway::cli::main());
}
