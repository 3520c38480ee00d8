//! The recurrent form: one fused `scan` per sequence over all T steps, rayon over the
//! batch. One element per sequence.

use super::{Ctx, SeqEnd};

pub(crate) fn run(ctx: &Ctx<'_>, init: Option<&[u64]>) -> Vec<SeqEnd> {
    ctx.map_sequences(|scratch, b| {
        let s0 = ctx.init_of(init, b);
        let mut state = s0.map_or_else(|| ctx.element(), <[u64]>::to_vec);
        let held = ctx.scan(b, 0, ctx.steps, &mut state, s0.is_some(), true, ctx.keep_state, scratch);
        SeqEnd { state: held.then_some(state), counter: None, peak: 1 }
    })
}
