//! The three paths a stream can take, as peers under one connection
//! surface ([`crate::stream::Conn`]: every `Stream` call matches on it once
//! and goes to one of these):
//!
//! - [`link`]: reliable-link, for an xsock peer on the same segment (a
//!   frame handler on the datapath feeding the sans-IO endpoint of the
//!   `xsock-reliable-link` crate);
//! - [`tcp`]: the TCP mode, smoltcp on the datapath, for any TCP peer and
//!   long fat networks (paced);
//! - [`kernel`]: a descriptor the kernel carries: a kernel TCP socket of
//!   our own, or the end of a socketpair the host engine handed us (the
//!   engine then runs `link` or `tcp` for us; see
//!   [`crate::engine_client`]).
//!
//! Which path a connect takes is decided in [`crate::connect`].

pub(crate) mod kernel;
pub(crate) mod link;
pub(crate) mod rings;
pub(crate) mod tcp;
