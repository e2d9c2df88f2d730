//! The integration tests, as one test binary (one link instead of one per file): each file here is a module,
//! `harness` their shared harness. Run one module with `cargo test --test it gateway::`, one test by its name.
//!
//! Every test may run in parallel with any other: each starts its own Redis and nodes on ports no other test of
//! the run is given (`harness::free_port`), and keeps its logs in a directory of its own
//! (`target/test-logs/<name>/`, `harness::log_dir`).

mod harness;

mod admin;
mod bench_smoke;
mod browser;
mod cluster;
mod config;
mod delivery_store;
mod deploy;
mod emitter;
mod faults;
mod gateway;
mod hostile;
mod in_process;
mod limits;
mod node_migration;
mod openapi;
mod ops;
mod protocol_fuzz;
mod recovery;
mod recovery_store;
mod redis_cluster;
mod reliable;
mod reliable_faults;
mod rpc;
mod security;
mod send;
mod slowloris;
mod tenancy;
mod v2_clients;
mod vendor;
mod webhook_store;
mod webhooks;
