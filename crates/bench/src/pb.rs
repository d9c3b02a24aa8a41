//! The service's API (`notify.v1`), generated from `proto/` by this crate's build script.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("notify.v1");
