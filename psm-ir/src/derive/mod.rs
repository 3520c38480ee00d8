//! The forms: schedules of combines that compute the exclusive prefixes
//! p_0 … p_n of a sequence of elements (DESIGN.md §1). Each form returns all n + 1
//! prefixes; `None` is the flagged identity (p_0), never evaluated.
//!
//! * [`fold`] — the sequential left fold (recurrent form);
//! * [`chunked`] — the 3-phase chunked scan (associative operators only);
//! * [`tree`] — the fixed Blelloch tree over power-of-two aligned blocks, the meaning
//!   of a non-associative operator;
//! * [`Stream`] — the binary counter with cached partial folds, which reproduces the
//!   tree's bracketing exactly in O(log n) memory and about 2 combines per step.
//!
//! The inclusive state of step t is p_{t+1} under every form.

pub mod chunkwise;
mod run;

pub use run::{run, Form, FormError, Outputs, RunStats};

/// `combine` lifted to the flagged identity: `None` on either side returns the other
/// operand without evaluating anything.
fn join<T: Clone, E>(l: Option<&T>, r: Option<&T>, combine: &mut impl FnMut(&T, &T) -> Result<T, E>) -> Result<Option<T>, E> {
    Ok(match (l, r) {
        (None, None) => None,
        (Some(x), None) | (None, Some(x)) => Some(x.clone()),
        (Some(a), Some(b)) => Some(combine(a, b)?),
    })
}

/// p_0 = identity, p_{i+1} = combine(p_i, e_i).
pub fn fold<T: Clone, E>(elements: &[T], mut combine: impl FnMut(&T, &T) -> Result<T, E>) -> Result<Vec<Option<T>>, E> {
    let mut prefixes = Vec::with_capacity(elements.len() + 1);
    prefixes.push(None);
    for e in elements {
        let next = join(prefixes.last().and_then(Option::as_ref), Some(e), &mut combine)?;
        prefixes.push(next);
    }
    Ok(prefixes)
}

/// Phase 1 folds each chunk of `chunk` steps; phase 2 scans the chunk aggregates;
/// phase 3 combines each chunk's carry with its local prefixes.
pub fn chunked<T: Clone, E>(
    elements: &[T],
    chunk: usize,
    mut combine: impl FnMut(&T, &T) -> Result<T, E>,
) -> Result<Vec<Option<T>>, E> {
    let chunk = chunk.max(1);
    let locals: Vec<Vec<Option<T>>> =
        elements.chunks(chunk).map(|c| fold(c, &mut combine)).collect::<Result<_, _>>()?;
    let mut prefixes = Vec::with_capacity(elements.len() + 1);
    let mut carry: Option<T> = None;
    for local in &locals {
        for p in &local[..local.len() - 1] {
            prefixes.push(join(carry.as_ref(), p.as_ref(), &mut combine)?);
        }
        carry = join(carry.as_ref(), local[local.len() - 1].as_ref(), &mut combine)?;
    }
    prefixes.push(carry);
    Ok(prefixes)
}

/// The fixed tree: up-sweep `node = combine(left, right)` over the sequence padded
/// with identities to a power of two; down-sweep giving the left child its parent's
/// prefix P and the right child `combine(P, left sibling)`.
pub fn tree<T: Clone, E>(elements: &[T], mut combine: impl FnMut(&T, &T) -> Result<T, E>) -> Result<Vec<Option<T>>, E> {
    let n = elements.len();
    let size = n.max(1).next_power_of_two();
    let mut levels: Vec<Vec<Option<T>>> = vec![(0..size).map(|i| elements.get(i).cloned()).collect()];
    while levels.last().map_or(0, Vec::len) > 1 {
        let below = levels.last().expect("non-empty");
        let above = below.chunks(2).map(|p| join(p[0].as_ref(), p[1].as_ref(), &mut combine)).collect::<Result<_, _>>()?;
        levels.push(above);
    }
    let mut prefix: Vec<Option<T>> = vec![None];
    for level in levels[..levels.len() - 1].iter().rev() {
        let block = size / level.len();
        let mut next = Vec::with_capacity(level.len());
        for (k, p) in prefix.iter().enumerate() {
            // Only prefixes p_0..p_n are needed: skip blocks that start after step n.
            let right_start = (2 * k + 1) * block;
            let right = if right_start <= n { join(p.as_ref(), level[2 * k].as_ref(), &mut combine)? } else { None };
            next.push(p.clone());
            next.push(right);
        }
        prefix = next;
    }
    // p_n: the root when n fills the tree, otherwise the down-sweep prefix of leaf n.
    if n == size {
        prefix.push(levels.last().expect("root")[0].clone());
    }
    prefix.truncate(n + 1);
    Ok(prefix)
}

/// Running statistics of a [`Stream`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub steps: u64,
    pub combines: u64,
    /// The most elements held at once (roots and cached folds that are not roots).
    pub peak_elements: usize,
}

/// The binary counter: roots of complete aligned subtrees, largest first, each with
/// the cached left fold of all roots up to it.
#[derive(Debug, Clone)]
pub struct Stream<T> {
    /// (size, root, fold of roots[..=k]); the first fold is the first root itself.
    roots: Vec<(u64, T, Option<T>)>,
    stats: StreamStats,
}

impl<T: Clone> Default for Stream<T> {
    fn default() -> Self {
        Stream { roots: Vec::new(), stats: StreamStats::default() }
    }
}

impl<T: Clone> Stream<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// p_t: the exclusive prefix before the next push (`None` before the first).
    pub fn prefix(&self) -> Option<&T> {
        self.roots.last().map(|(_, root, fold)| fold.as_ref().unwrap_or(root))
    }

    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Appends one element: merges equal-size roots (older on the left), then caches
    /// the fold of the new top root.
    pub fn push<E>(&mut self, element: T, mut combine: impl FnMut(&T, &T) -> Result<T, E>) -> Result<(), E> {
        let mut size = 1u64;
        let mut root = element;
        while let Some((s, _, _)) = self.roots.last() {
            if *s != size {
                break;
            }
            let (_, older, _) = self.roots.pop().expect("checked");
            root = combine(&older, &root)?;
            self.stats.combines += 1;
            size *= 2;
        }
        let fold = match self.prefix() {
            Some(p) => Some(combine(p, &root)?),
            None => None,
        };
        self.stats.combines += u64::from(fold.is_some());
        self.roots.push((size, root, fold));
        self.stats.steps += 1;
        let held = self.roots.len() + self.roots.iter().filter(|(_, _, f)| f.is_some()).count();
        self.stats.peak_elements = self.stats.peak_elements.max(held);
        Ok(())
    }

    /// Runs a whole sequence: the n + 1 prefixes, as the other forms return them.
    pub fn prefixes<E>(elements: &[T], mut combine: impl FnMut(&T, &T) -> Result<T, E>) -> Result<(Vec<Option<T>>, StreamStats), E> {
        let mut s = Stream::new();
        let mut out = Vec::with_capacity(elements.len() + 1);
        out.push(None);
        for e in elements {
            s.push(e.clone(), &mut combine)?;
            out.push(s.prefix().cloned());
        }
        Ok((out, s.stats()))
    }
}
