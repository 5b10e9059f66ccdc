//! The hostile-driver self test (`selftest=hostile` on the command line):
//! the kernel plays a malicious driver against the VMM's device. Each chain
//! must come back refused (never accepted, never a hang), a head published
//! twice must not complete twice, and a broken ring must put the device in
//! DEVICE_NEEDS_RESET, after which the driver resets it and a normal
//! INIT + DATA_REQUEST succeeds.

use crate::dev::virtio_pager::{Driver, drop_event, wait_polled};
use core::cell::Cell;
use guest_kernel::addr::PhysAddr;
use guest_kernel::dev::virtio::pager::{
    self, Completion, Frames, Op, RESET_POLLS, Segment, req, status,
};
use guest_kernel::dev::virtio::virtqueue::{DESC_NEXT, DESC_WRITE};

pub struct Report {
    pub rejected: u64,
    pub resets: u64,
}

fn run_one(
    d: &mut Driver,
    object: u32,
    op: Op,
    token: u64,
    frames: &[Segment],
) -> Result<Completion, &'static str> {
    d.submit(object, op, token, frames.iter().copied())
        .map_err(|_| "submit refused")?;
    d.kick();
    let got: Cell<Option<Completion>> = Cell::new(None);
    let mut done = |c: &Completion, _: &Frames| {
        if c.token == token {
            got.set(Some(*c));
        }
    };
    if !wait_polled(d, &mut done, || got.get().is_none()) {
        return Err("no completion");
    }
    got.get().ok_or("no completion")
}

/// `frame` is a page of the kernel's that the requests may fill.
pub fn hostile(d: &mut Driver, frame: PhysAddr) -> Result<Report, &'static str> {
    let object = 0u32;
    if d.objects().is_empty() {
        return Err("the device has no objects");
    }
    if run_one(d, object, Op::Init, 1, &[])?.status != status::OK {
        return Err("INIT failed");
    }
    let hdr = pager::header(req::DATA_REQUEST, object, 0, 4096, 1);
    let (h, r) = {
        let raw = d.raw();
        let (h, r) = raw.slot_area(0);
        (h.0, r.0)
    };
    let f = frame.0;
    let cases: [&[(u64, u32, u16, u16)]; 7] = [
        // next loops back to the header
        &[(h, 32, DESC_NEXT, 1), (f, 4096, DESC_WRITE | DESC_NEXT, 0)],
        // a frame far outside guest RAM
        &[
            (h, 32, DESC_NEXT, 1),
            (1 << 40, 4096, DESC_WRITE | DESC_NEXT, 2),
            (r, 24, DESC_WRITE, 0),
        ],
        // a length that runs past RAM
        &[
            (h, 32, DESC_NEXT, 1),
            (f, 0xffff_f000, DESC_WRITE | DESC_NEXT, 2),
            (r, 24, DESC_WRITE, 0),
        ],
        // data frames the device may only read, for a read request
        &[
            (h, 32, DESC_NEXT, 1),
            (f, 4096, DESC_NEXT, 2),
            (r, 24, DESC_WRITE, 0),
        ],
        // zero-length descriptor
        &[
            (h, 32, DESC_NEXT, 1),
            (f, 0, DESC_WRITE | DESC_NEXT, 2),
            (r, 24, DESC_WRITE, 0),
        ],
        // header too short
        &[
            (h, 16, DESC_NEXT, 1),
            (f, 4096, DESC_WRITE | DESC_NEXT, 2),
            (r, 24, DESC_WRITE, 0),
        ],
        // next points past the table
        &[(h, 32, DESC_NEXT, 9)],
    ];
    let mut rejected = 0u64;
    for (i, table) in cases.iter().enumerate() {
        let token = 100 + i as u64;
        d.raw().submit(hdr, table, token).ok_or("no free slot")?;
        d.kick();
        let got: Cell<Option<u32>> = Cell::new(None);
        let mut done = |c: &Completion, _: &Frames| {
            if c.token == token {
                got.set(Some(c.status));
            }
        };
        if !wait_polled(d, &mut done, || got.get().is_none()) {
            return Err("a malformed chain never came back");
        }
        if got.get() == Some(status::OK) {
            return Err("a malformed chain was accepted");
        }
        rejected += 1;
    }
    d.raw().restore();

    // One head published twice: one completion reaches the caller.
    let seg = [Segment {
        addr: frame,
        len: 4096,
    }];
    d.submit(
        object,
        Op::DataRequest {
            offset: 0,
            len: 4096,
            desired: 1,
        },
        200,
        seg,
    )
    .map_err(|_| "submit refused")?;
    d.raw().republish(0);
    d.kick();
    let count = Cell::new(0u32);
    let mut done = |c: &Completion, _: &Frames| {
        if c.token == 200 {
            count.set(count.get() + 1);
        }
    };
    let spurious = d.stats.spurious;
    wait_polled(d, &mut done, || count.get() == 0);
    // Give the duplicate time to come back, then make sure it was dropped.
    for _ in 0..20_000 {
        d.poll(&mut done, &mut drop_event);
        if d.stats.spurious > spurious {
            break;
        }
    }
    if count.get() != 1 {
        return Err("a republished head completed twice");
    }

    // Broken ring → NEEDS_RESET → reset → normal service.
    let resets = d.stats.resets;
    d.raw().break_ring();
    let mut ignore = |_: &Completion, _: &Frames| {};
    let mut asked = false;
    for _ in 0..1_000_000u32 {
        if d.check_needs_reset(&mut ignore) {
            asked = true;
            break;
        }
    }
    if !asked {
        return Err("the device never asked for a reset");
    }
    let mut finished = !d.is_resetting();
    for _ in 0..100 {
        if finished {
            break;
        }
        finished = d
            .finish_reset(RESET_POLLS, &mut ignore)
            .map_err(|_| "reset failed")?;
    }
    if !finished {
        return Err("the reset did not complete");
    }
    if run_one(d, object, Op::Init, 300, &[])?.status != status::OK {
        return Err("INIT after reset failed");
    }
    let c = run_one(
        d,
        object,
        Op::DataRequest {
            offset: 0,
            len: 4096,
            desired: 1,
        },
        301,
        &seg,
    )?;
    if c.status != status::OK && c.status != status::PAST_END {
        return Err("a normal request after the reset failed");
    }
    Ok(Report {
        rejected,
        resets: d.stats.resets - resets,
    })
}
