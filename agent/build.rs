fn main() {
    println!("cargo:rerun-if-changed=proto");
    link_layout();
    for proto in [
        "proto/edgeconf/v1/edgeconf.proto",
        "proto/etcd/auth.proto",
        "proto/etcd/v3lock.proto",
        "proto/etcd/v3election.proto",
    ] {
        // Lock and Election answer with etcd's own header and key-value:
        // the types etcd-client already generates, not copies.
        tonic_prost_build::configure()
            .extern_path(
                ".v3concurrencypb.ResponseHeader",
                "::etcd_client::proto::PbResponseHeader",
            )
            .extern_path(
                ".v3concurrencypb.KeyValue",
                "::etcd_client::proto::PbKeyValue",
            )
            .compile_protos(&[proto], &["proto"])
            .unwrap_or_else(|err| {
                panic!("compile {proto}: {err} (is protoc installed? run ./setup.sh)")
            });
    }
}

/// How lld links the agent (rustc's own lld links this target):
///
/// - The functions agents run lie side by side, in the order
///   `tools/order-symbols.sh` recorded: an idle agent then keeps a few MiB
///   of its code resident instead of most of `.text` (BENCHMARKS.md, issue
///   19). The names are those of the shipped build (`--profile dist`); in
///   other builds they match nothing and the layout is the linker's own. A
///   name that no longer exists is skipped, never an error.
/// - Relative relocations are packed (`DT_RELR`, glibc 2.36 or newer, as
///   in Debian 12): 0.75 MiB of `.rela.dyn` become 9 KiB, which the loader
///   also no longer reads at every start.
fn link_layout() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let order = std::path::Path::new(&manifest).join("../packaging/symbol-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    let lld = std::env::var("TARGET").is_ok_and(|target| target == "x86_64-unknown-linux-gnu");
    if !lld {
        return;
    }
    println!("cargo:rustc-link-arg-bin=edgeconf=-Wl,-z,pack-relative-relocs");
    if order.exists() {
        println!(
            "cargo:rustc-link-arg-bin=edgeconf=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            order.display()
        );
    }
}
