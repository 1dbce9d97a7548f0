fn main() {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/edgeconf/v1/edgeconf.proto"], &["proto"])
        .expect("compile proto/edgeconf/v1/edgeconf.proto (is protoc installed? run ./setup.sh)");
}
