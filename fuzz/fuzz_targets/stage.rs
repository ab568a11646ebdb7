//! The stage's pure parts under arbitrary operations: the roster (invites, mutes, removals,
//! requests, answers, names of any bytes) and the mixer (inputs opened, closed, muted and fed
//! samples of any value, NaN and infinities included, in any amounts). Whatever happens:
//! the roster keeps its bounds and distinct slots, and every mixed sample (programme and
//! mix-minus) is finite and within [−1, 1].
#![no_main]

use levee_core::stage::{
    Actor, Frame, Mixer, Role, Roster, FRAME, MAX_REQUESTS, MAX_SPEAKERS, SLOTS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut roster = Roster::new();
    let mut mixer = Mixer::new();
    let mut frame = Frame::default();
    let mut at = 0usize;
    let mut next = |n: usize| -> Option<&[u8]> {
        let s = data.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let mut ids = 0u32;
    while let Some(op) = next(2) {
        let (op, arg) = (op[0], op[1]);
        let slot = arg as usize % SLOTS;
        match op % 9 {
            0 => mixer.open(slot, arg & 0x40 != 0, arg & 0x80 != 0),
            1 => mixer.close(slot),
            2 => mixer.set_muted(slot, arg & 1 != 0),
            3 => {
                let Some(raw) = next(arg as usize * 4) else {
                    break;
                };
                let pcm: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                mixer.push(slot, &pcm, arg as u64 * 1_000);
            }
            4 => {
                mixer.mix(&mut frame);
                assert!(frame
                    .programme
                    .iter()
                    .all(|v| v.is_finite() && v.abs() <= 1.0));
                for s in 0..SLOTS {
                    if frame.minus_of & (1 << s) != 0 {
                        assert!(frame.minus[s]
                            .iter()
                            .all(|v| v.is_finite() && v.abs() <= 1.0));
                    }
                }
                assert_eq!(frame.programme.len(), FRAME);
            }
            5 => {
                let Some(name) = next(arg as usize % 80) else {
                    break;
                };
                let name = String::from_utf8_lossy(name);
                ids += 1;
                let role = if arg & 1 == 0 {
                    Role::Speaker
                } else {
                    Role::Cohost
                };
                let _ = roster.invite(Actor::Host, &name, role, format!("s{ids}"), [arg; 32], 0);
            }
            6 => {
                let id = format!("s{}", arg as u32 % (ids + 1));
                let _ = roster.set_muted(Actor::Speaker(&id, Role::Speaker), &id, arg & 1 != 0);
                let _ = roster.set_muted(Actor::Host, &id, arg & 2 != 0);
                if arg & 4 != 0 {
                    let _ = roster.remove(Actor::Host, &id);
                }
            }
            7 => {
                ids += 1;
                let _ = roster.request("listener", format!("q{ids}"), [arg; 32], arg as u64 % 4, 0);
            }
            _ => {
                let id = format!("q{}", arg as u32 % (ids + 1));
                if arg & 1 == 0 {
                    ids += 1;
                    let _ = roster.accept(
                        Actor::Host,
                        &id,
                        format!("s{ids}"),
                        "k".into(),
                        [arg; 32],
                        0,
                    );
                } else {
                    let _ = roster.decline(Actor::Host, &id);
                }
                let _ = roster.collect(&id, &[arg; 32]);
            }
        }
        assert!(roster.speakers().len() <= MAX_SPEAKERS);
        assert!(roster.requests().count() <= MAX_REQUESTS);
        let mut slots: Vec<usize> = roster.speakers().iter().map(|s| s.slot).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), roster.speakers().len(), "distinct slots");
        assert!(slots.iter().all(|s| (1..SLOTS).contains(s)));
    }
});
