//! The `wechat-notify` binary: see `wechat_notify::cli`.

// mimalloc instead of glibc malloc: the service allocates many small, short-lived buffers per
// message (HTTP/2 frames, JSON bodies, headers) and glibc's malloc/free showed up as ~14% of the
// service's CPU under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    wechat_notify::cli::main()
}
