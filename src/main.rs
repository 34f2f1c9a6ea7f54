fn main() -> std::process::ExitCode {
    tokenproxy::cli::main()
}
