use mimalloc::MiMalloc;

/// mimalloc: per-thread free lists suit thread-per-core, and it returns memory to the OS
/// promptly after connection storms (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    std::process::exit(ringway::cli::main());
}
