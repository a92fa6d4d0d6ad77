//! The `metersync` binary: parse the command line, set up logging, hand off
//! to the library. See `cli.rs` for the commands.

mod cli;

fn main() -> std::process::ExitCode {
    if let Err(e) = metersync::logging::try_init() {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let args = <cli::Cli as clap::Parser>::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
