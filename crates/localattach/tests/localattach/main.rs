//! Attaching real loop devices on real FUSE mounts: needs root, `/dev/fuse`
//! and `/dev/loop-control` (each test prints why and passes if the device
//! nodes are missing), and util-linux and e2fsprogs.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

mod busy;
mod crash;
mod drop;
mod ext4;
mod io;
mod refuse;
mod support;
