//! Names and rules shared by every entry point (handshake, REST, cluster decoder, config file).

pub mod client;
pub mod secret;
pub mod validate;
pub mod webhook_signature;
