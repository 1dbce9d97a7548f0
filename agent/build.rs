fn main() {
    println!("cargo:rerun-if-changed=proto");
    for proto in [
        "proto/edgeconf/v1/edgeconf.proto",
        "proto/etcd/auth.proto",
        "proto/etcd/v3lock.proto",
        "proto/etcd/v3election.proto",
    ] {
        tonic_prost_build::configure()
            .compile_protos(&[proto], &["proto"])
            .unwrap_or_else(|err| {
                panic!("compile {proto}: {err} (is protoc installed? run ./setup.sh)")
            });
    }
}
