// The one definition of `both_io!`, included by `gateway.rs` and, with `#[macro_use]`, by the
// tests built on `ops_harness.rs`.

/// Generates `mod uring { #[tokio::test] fn NAME() }` and `mod epoll { ... }` for each
/// `async fn NAME(io: &'static str)` in the including file.
#[macro_export]
macro_rules! both_io {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("uring").await
                }
            )*
        }
        mod epoll {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("epoll").await
                }
            )*
        }
    };
}
