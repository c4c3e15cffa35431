//! A gRPC service (tonic's standard health service, which needs no code
//! generation) served through `register!` unchanged, with zero-downtime
//! reloads: tonic runs on hyper, and graceful serves HTTP/2 without TLS
//! (h2c) as gRPC expects.
//!
//! `cargo run --example grpc [ADDR]` (default `:50051`), then
//! `grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check`.

#[graceful::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| ":50051".into());
    // Reports the server as a whole ("") as serving.
    let (_reporter, health) = tonic_health::server::health_reporter();
    graceful::register!(addr, tonic::service::Routes::new(health));
}
