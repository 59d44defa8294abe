//! Compiles `flotilla/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "flotilla/v1/registration.proto",
        "flotilla/v1/session.proto",
        "flotilla/v1/admin.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The transport constructor `connect` would clash with the `Connect` RPC; channels are
        // built by `tls::TlsDialer` anyway.
        .build_transport(false)
        // tonic-prost's encoding with small first buffers: a session is one RPC held for days.
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    Ok(())
}
