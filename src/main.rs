//! The `wechat-notify` binary: see `wechat_notify::cli`.

fn main() -> std::process::ExitCode {
    wechat_notify::cli::main()
}
