//! The xsock runtime (being built).
#![forbid(unsafe_code)]
