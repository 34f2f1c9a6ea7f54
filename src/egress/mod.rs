//! Egress mode: clients keep the vendors' real URLs and reach them through
//! `HTTPS_PROXY`. So far its local CA (`ca`), which can sign only for the configured
//! upstreams' hosts; the CONNECT listener that uses it lands next.

pub mod ca;
