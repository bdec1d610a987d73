//! `tasuki-spoke`: the daemon on each device and its command line (see
//! [`tasuki_spoke::cli`]).

fn main() -> std::process::ExitCode {
    match tasuki_spoke::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tasuki-spoke: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
