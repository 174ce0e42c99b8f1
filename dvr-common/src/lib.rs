//! The contract between the BPF datapath (`dvr-ebpf`) and user space (`dvr-userspace`).
//!
//! One module per map family with its key and value types and capacities, and one table of
//! every map ([`maps`], [`map_table!`]) from which both sides derive their declarations: the
//! map names (`maps::DVR_*`, at most 15 bytes: the kernel's BPF_OBJ_NAME_LEN less the NUL)
//! are spelled nowhere else. Keys and values are `#[repr(C)]` with explicit padding, so hash
//! keys are deterministic and the verifier never sees uninitialised stack.
//!
//! Byte order: IPv4 addresses called `*_be` are in network byte order (as they sit in the
//! packet); tunnel endpoint addresses called `*_host` are in host order, because that is what
//! `bpf_skb_{get,set}_tunnel_key` use (`struct bpf_tunnel_key.remote_ipv4`).
#![no_std]

pub mod config;
pub mod csum;
pub mod events;
pub mod frag;
pub mod ip6;
pub mod l2;
pub mod maps;
pub mod nat;
pub mod port;
pub mod route;
pub mod sg;
pub mod snat;
pub mod stats;

/// Compile-time size check for map keys and values.
#[macro_export]
macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}

/// `aya::Pod` impls for user space, behind the `user` feature.
#[macro_export]
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is #[repr(C)], Copy, has explicit padding fields and no
            // pointers, so every bit pattern is valid and it has no uninitialised bytes.
            unsafe impl aya::Pod for $t {}
        )*
    };
}

/// An Ethernet MAC address as it sits in the frame.
pub type Mac = [u8; 6];
