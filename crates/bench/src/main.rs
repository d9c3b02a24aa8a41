//! The `wechat-notify-bench` binary: see `wechat_notify_bench`.

use clap::Parser;

// The service's allocator, so that the bare forwarder (the reference point) differs from the
// service only in what its code does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = wechat_notify_bench::BenchArgs::parse();
    // Worker threads: one per core, or TOKIO_WORKER_THREADS (read by tokio itself).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wechat-notify-bench: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    wechat_notify_bench::main(args, &runtime)
}
