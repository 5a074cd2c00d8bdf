//! SWIM failure detection and membership with the Lifeguard refinements,
//! written as a pure sans-IO state machine.
//!
//! [`Membership`] owns no socket, no clock and no thread. The embedding code
//! (a UDP/QUIC transport, or the deterministic simulator in
//! `litemesh-simulations`) drives it:
//!
//! * feed received datagrams / reliable messages with
//!   [`Membership::handle_message`];
//! * call [`Membership::handle_timeout`] once the instant returned by
//!   [`Membership::poll_timeout`] has passed;
//! * after every call, drain [`Membership::poll_transmit`] (send each
//!   [`Transmit`]; `reliable == true` means "use the reliable stream", it
//!   carries full-state push-pull exchanges that can exceed a datagram) and
//!   [`Membership::poll_event`] (membership changes for the application).
//!
//! Time is an [`Instant`]: microseconds since an arbitrary epoch chosen by the
//! driver, which only has to be monotonic. All randomness comes from a
//! ChaCha8 generator seeded by the caller, so a run is fully reproducible.
//!
//! See `docs/membership.md` in the repository for the protocol description.

mod broadcast;
mod config;
mod membership;
mod time;
pub mod wire;

pub use config::Config;
pub use membership::{Event, Membership, MetadataTooLarge, Transmit};
pub use time::Instant;
pub use wire::{
    DecodeError, Identity, MAX_METADATA_LEN, Member, MemberState, Metadata, NodeId, WIRE_VERSION,
};
