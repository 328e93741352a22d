//! `gpuaas-shim`: the per-workload supervisor; see `gpuaas_isolation::launch::shim`.

fn main() -> std::process::ExitCode {
    gpuaas_isolation::launch::shim::main()
}
