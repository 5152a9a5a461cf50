//! The `spillway` binary: `spillway serve` and `spillway call`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = spillway::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(spillway::cli::run(cli));
    // After `serve` drained (or `call` finished), with the runtime still up: the spans still
    // buffered go to the collector before the process exits.
    spillway::telemetry::shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, no backtrace: the error text is already redacted.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
