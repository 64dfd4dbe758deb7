use clap::Parser;
use std::process::ExitCode;
use swarm_agent::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    swarm_agent::cli::init_logging(cli.command.default_log_level(), cli.log_format);
    let error_code = cli.command.error_exit_code();
    let failure_code = cli.command.failure_exit_code();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swarm-agent: error: cannot start the async runtime: {e}");
            return ExitCode::from(error_code);
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("swarm-agent: error: {e:#}");
            ExitCode::from(failure_code(&e))
        }
    }
}
