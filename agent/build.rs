fn main() {
    println!("cargo:rerun-if-changed=proto");
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
