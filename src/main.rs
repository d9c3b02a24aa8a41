//! The `wechat-notify` binary: see `wechat_notify::cli`.

// mimalloc instead of glibc malloc: the service allocates many small, short-lived buffers per
// message (HTTP/2 frames, JSON bodies, headers), and glibc's malloc/free was one of the largest
// items of the service's CPU profile under load (docs/benchmarks.md has the measurement).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    wechat_notify::cli::main()
}
