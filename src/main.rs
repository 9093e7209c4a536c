//! The `threatfox-sentinel` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    threatfox_sentinel::cli::main()
}
