//! Host data: element layouts, typed buffers, named inputs and outputs, states.
//!
//! Every tensor is a flat row-major buffer of its declared dtype (DESIGN.md §4):
//! inputs `[batch..., T, field dims...]`, outputs likewise, params as declared, states
//! `[batch..., field dims...]`. An element (one state of one sequence) is a byte buffer
//! laid out by a [`Layout`]: struct of arrays, field k at `offsets[k]`.
//!
//! `bf16` and `f16` tensors (inputs, params, outputs) are slices of [`half::bf16`] /
//! [`half::f16`] (the `half` crate, re-exported as `psm_runtime::half`).

use half::{bf16, f16};
use psm_ir::ir::Dtype;

/// Byte size of one entry of a dtype.
pub fn dtype_size(d: Dtype) -> usize {
    d.size()
}

/// The byte layout of one element: psm-codegen's, the one every backend uses.
pub use psm_codegen::clif::Layout;

/// 8-byte words of one element (`Layout::size` is a multiple of 8).
pub(crate) fn words(layout: &Layout) -> usize {
    layout.size / 8
}

/// Borrowed data of one named tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Data<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I32(&'a [i32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

impl Data<'_> {
    pub fn dtype(&self) -> Dtype {
        match self {
            Data::F32(_) => Dtype::F32,
            Data::F64(_) => Dtype::F64,
            Data::I32(_) => Dtype::I32,
            Data::BF16(_) => Dtype::BF16,
            Data::F16(_) => Dtype::F16,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Data::F32(s) => s.len(),
            Data::F64(s) => s.len(),
            Data::I32(s) => s.len(),
            Data::BF16(s) => s.len(),
            Data::F16(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub(crate) fn addr(&self) -> usize {
        match self {
            Data::F32(s) => s.as_ptr() as usize,
            Data::F64(s) => s.as_ptr() as usize,
            Data::I32(s) => s.as_ptr() as usize,
            Data::BF16(s) => s.as_ptr() as usize,
            Data::F16(s) => s.as_ptr() as usize,
        }
    }
    /// Value `i` as an f64 (exact for every dtype).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            Data::F32(s) => s[i] as f64,
            Data::F64(s) => s[i],
            Data::I32(s) => s[i] as f64,
            Data::BF16(s) => s[i].to_f64(),
            Data::F16(s) => s[i].to_f64(),
        }
    }
    pub fn to_buffer(&self) -> Buffer {
        match self {
            Data::F32(s) => Buffer::F32(s.to_vec()),
            Data::F64(s) => Buffer::F64(s.to_vec()),
            Data::I32(s) => Buffer::I32(s.to_vec()),
            Data::BF16(s) => Buffer::BF16(s.to_vec()),
            Data::F16(s) => Buffer::F16(s.to_vec()),
        }
    }
}

macro_rules! data_from {
    ($t:ty, $v:ident) => {
        impl<'a> From<&'a [$t]> for Data<'a> {
            fn from(s: &'a [$t]) -> Self {
                Data::$v(s)
            }
        }
        impl<'a> From<&'a Vec<$t>> for Data<'a> {
            fn from(s: &'a Vec<$t>) -> Self {
                Data::$v(s)
            }
        }
        impl<'a, const N: usize> From<&'a [$t; N]> for Data<'a> {
            fn from(s: &'a [$t; N]) -> Self {
                Data::$v(s)
            }
        }
        impl From<Vec<$t>> for Buffer {
            fn from(v: Vec<$t>) -> Self {
                Buffer::$v(v)
            }
        }
    };
}
data_from!(f32, F32);
data_from!(f64, F64);
data_from!(i32, I32);
data_from!(bf16, BF16);
data_from!(f16, F16);

impl<'a> From<&'a Buffer> for Data<'a> {
    fn from(b: &'a Buffer) -> Self {
        b.as_data()
    }
}

/// Mutably borrowed data of one named tensor: a caller-supplied output.
#[derive(Debug, PartialEq)]
pub enum DataMut<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
    I32(&'a mut [i32]),
    BF16(&'a mut [bf16]),
    F16(&'a mut [f16]),
}

impl DataMut<'_> {
    pub fn dtype(&self) -> Dtype {
        match self {
            DataMut::F32(_) => Dtype::F32,
            DataMut::F64(_) => Dtype::F64,
            DataMut::I32(_) => Dtype::I32,
            DataMut::BF16(_) => Dtype::BF16,
            DataMut::F16(_) => Dtype::F16,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            DataMut::F32(s) => s.len(),
            DataMut::F64(s) => s.len(),
            DataMut::I32(s) => s.len(),
            DataMut::BF16(s) => s.len(),
            DataMut::F16(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub(crate) fn addr_mut(&mut self) -> usize {
        match self {
            DataMut::F32(s) => s.as_mut_ptr() as usize,
            DataMut::F64(s) => s.as_mut_ptr() as usize,
            DataMut::I32(s) => s.as_mut_ptr() as usize,
            DataMut::BF16(s) => s.as_mut_ptr() as usize,
            DataMut::F16(s) => s.as_mut_ptr() as usize,
        }
    }
}

macro_rules! data_mut_from {
    ($t:ty, $v:ident) => {
        impl<'a> From<&'a mut [$t]> for DataMut<'a> {
            fn from(s: &'a mut [$t]) -> Self {
                DataMut::$v(s)
            }
        }
        impl<'a> From<&'a mut Vec<$t>> for DataMut<'a> {
            fn from(s: &'a mut Vec<$t>) -> Self {
                DataMut::$v(s)
            }
        }
        impl<'a, const N: usize> From<&'a mut [$t; N]> for DataMut<'a> {
            fn from(s: &'a mut [$t; N]) -> Self {
                DataMut::$v(s)
            }
        }
    };
}
data_mut_from!(f32, F32);
data_mut_from!(f64, F64);
data_mut_from!(i32, I32);
data_mut_from!(bf16, BF16);
data_mut_from!(f16, F16);

impl<'a> From<&'a mut Buffer> for DataMut<'a> {
    fn from(b: &'a mut Buffer) -> Self {
        match b {
            Buffer::F32(v) => DataMut::F32(v),
            Buffer::F64(v) => DataMut::F64(v),
            Buffer::I32(v) => DataMut::I32(v),
            Buffer::BF16(v) => DataMut::BF16(v),
            Buffer::F16(v) => DataMut::F16(v),
        }
    }
}

/// Owned data of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Buffer {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Buffer {
    pub fn zeros(dtype: Dtype, len: usize) -> Buffer {
        match dtype {
            Dtype::F32 => Buffer::F32(vec![0.0; len]),
            Dtype::F64 => Buffer::F64(vec![0.0; len]),
            Dtype::I32 => Buffer::I32(vec![0; len]),
            Dtype::BF16 => Buffer::BF16(vec![bf16::ZERO; len]),
            Dtype::F16 => Buffer::F16(vec![f16::ZERO; len]),
        }
    }
    /// Zeros, or `None` when the allocation fails (instead of aborting).
    /// A zeroed buffer, `None` when it cannot be allocated. The memory comes zeroed
    /// from the allocator (fresh pages from the OS for large buffers), so nothing
    /// writes it before the kernels do: the first touch happens on the threads that
    /// compute, in parallel, instead of a serial fill on the caller's thread.
    pub(crate) fn try_zeros(dtype: Dtype, len: usize) -> Option<Buffer> {
        /// Types whose all-zero bit pattern is the value 0.
        trait ZeroBits: Copy {}
        impl ZeroBits for f32 {}
        impl ZeroBits for f64 {}
        impl ZeroBits for i32 {}
        impl ZeroBits for bf16 {}
        impl ZeroBits for f16 {}
        fn zeros<T: ZeroBits>(len: usize) -> Option<Vec<T>> {
            let layout = std::alloc::Layout::array::<T>(len).ok()?;
            if layout.size() == 0 {
                return Some(Vec::new());
            }
            // SAFETY: a non-zero-sized layout; zero bytes are a valid T (ZeroBits); the
            // allocation is the global allocator's with exactly the layout Vec expects
            // for capacity `len`.
            unsafe {
                let ptr = std::alloc::alloc_zeroed(layout) as *mut T;
                (!ptr.is_null()).then(|| Vec::from_raw_parts(ptr, len, len))
            }
        }
        Some(match dtype {
            Dtype::F32 => Buffer::F32(zeros(len)?),
            Dtype::F64 => Buffer::F64(zeros(len)?),
            Dtype::I32 => Buffer::I32(zeros(len)?),
            Dtype::BF16 => Buffer::BF16(zeros(len)?),
            Dtype::F16 => Buffer::F16(zeros(len)?),
        })
    }
    pub fn dtype(&self) -> Dtype {
        self.as_data().dtype()
    }
    pub fn len(&self) -> usize {
        self.as_data().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn as_data(&self) -> Data<'_> {
        match self {
            Buffer::F32(v) => Data::F32(v),
            Buffer::F64(v) => Data::F64(v),
            Buffer::I32(v) => Data::I32(v),
            Buffer::BF16(v) => Data::BF16(v),
            Buffer::F16(v) => Data::F16(v),
        }
    }
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Buffer::F32(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<&[f64]> {
        match self {
            Buffer::F64(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_i32(&self) -> Option<&[i32]> {
        match self {
            Buffer::I32(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_bf16(&self) -> Option<&[bf16]> {
        match self {
            Buffer::BF16(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_f16(&self) -> Option<&[f16]> {
        match self {
            Buffer::F16(v) => Some(v),
            _ => None,
        }
    }
    /// Every value as an f64 (exact for every dtype).
    pub fn to_f64(&self) -> Vec<f64> {
        let d = self.as_data();
        (0..d.len()).map(|i| d.get_f64(i)).collect()
    }
    pub(crate) fn addr_mut(&mut self) -> usize {
        match self {
            Buffer::F32(v) => v.as_mut_ptr() as usize,
            Buffer::F64(v) => v.as_mut_ptr() as usize,
            Buffer::I32(v) => v.as_mut_ptr() as usize,
            Buffer::BF16(v) => v.as_mut_ptr() as usize,
            Buffer::F16(v) => v.as_mut_ptr() as usize,
        }
    }
}

/// A named, shaped, owned tensor: an output or a state field.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    /// Outputs: `[batch..., T, field dims...]`; state fields: `[batch..., field dims...]`.
    pub shape: Vec<usize>,
    pub data: Buffer,
}

/// The data of one run: per-step inputs by name, shaped `[batch..., T, field dims...]`
/// row-major, and params by name, shaped as declared. Borrowed: nothing is copied.
///
/// ```
/// # use psm_runtime::Inputs;
/// let q = vec![0.5f32; 2 * 10 * 4];
/// let inputs = Inputs::new(&[2], 10).input("q", &q).param("gamma", &[0.9f32]);
/// assert_eq!(inputs.steps(), 10);
/// ```
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub(crate) batch: Vec<usize>,
    pub(crate) steps: usize,
    pub(crate) inputs: Vec<(String, Data<'a>)>,
    pub(crate) params: Vec<(String, Data<'a>)>,
}

impl<'a> Inputs<'a> {
    /// `batch` is the shape of the leading batch dims (`&[]` for one unbatched
    /// sequence); `steps` is T.
    pub fn new(batch: &[usize], steps: usize) -> Self {
        Inputs { batch: batch.to_vec(), steps, inputs: Vec::new(), params: Vec::new() }
    }
    /// Adds a per-step input field.
    pub fn input(mut self, name: &str, data: impl Into<Data<'a>>) -> Self {
        self.inputs.push((name.to_string(), data.into()));
        self
    }
    /// Adds a param.
    pub fn param(mut self, name: &str, data: impl Into<Data<'a>>) -> Self {
        self.params.push((name.to_string(), data.into()));
        self
    }
    pub fn batch(&self) -> &[usize] {
        &self.batch
    }
    pub fn steps(&self) -> usize {
        self.steps
    }
}

/// Caller-supplied outputs of a run or a push ([`Executor::run_into`],
/// [`Stream::push_into`]): every declared output by name, shaped `[batch..., T, field
/// dims...]` row-major like the outputs [`Executor::run`] returns. Nothing is
/// allocated for them and every entry is overwritten; the buffers can be reused from
/// call to call (a decode loop, a run over L1-sized data).
///
/// [`Executor::run_into`]: crate::Executor::run_into
/// [`Executor::run`]: crate::Executor::run
/// [`Stream::push_into`]: crate::Stream::push_into
///
/// ```
/// # use psm_runtime::OutputsMut;
/// let mut y = vec![0.0f32; 2 * 10];
/// let outputs = OutputsMut::new().output("y", &mut y);
/// assert_eq!(outputs.len(), 1);
/// ```
#[derive(Debug, Default)]
pub struct OutputsMut<'a> {
    pub(crate) outputs: Vec<(String, DataMut<'a>)>,
}

impl<'a> OutputsMut<'a> {
    pub fn new() -> Self {
        OutputsMut { outputs: Vec::new() }
    }
    /// Adds an output buffer.
    pub fn output(mut self, name: &str, data: impl Into<DataMut<'a>>) -> Self {
        self.outputs.push((name.to_string(), data.into()));
        self
    }
    /// How many buffers were given.
    pub fn len(&self) -> usize {
        self.outputs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }
}

/// One element per sequence, by element field: each field `[batch..., field dims...]`.
/// Returned as a run's final state; accepted as an initial state.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub batch: Vec<usize>,
    pub fields: Vec<Tensor>,
}

impl State {
    /// An empty state for the given batch shape; add fields with [`State::field`].
    pub fn new(batch: &[usize]) -> State {
        State { batch: batch.to_vec(), fields: Vec::new() }
    }
    /// Adds a field `[batch..., field dims...]` (the shape is checked against the
    /// aggregator when the state is used).
    pub fn field(mut self, name: &str, data: impl Into<Buffer>) -> State {
        let data = data.into();
        let shape = vec![data.len()];
        self.fields.push(Tensor { name: name.to_string(), shape, data });
        self
    }
    pub fn get(&self, name: &str) -> Option<&Buffer> {
        self.fields.iter().find(|t| t.name == name).map(|t| &t.data)
    }
}

// ---------------------------------------------------------------- element bytes

/// `count` elements of `words` words each, zeroed; `None` when the size overflows or
/// the allocation fails.
pub(crate) fn try_words(count: usize, words: usize) -> Option<Vec<u64>> {
    let n = count.checked_mul(words)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    v.resize(n, 0u64);
    Some(v)
}

pub(crate) fn bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u64 storage viewed as bytes: same memory, alignment 8 ≥ 1.
    unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 8) }
}

pub(crate) fn bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as above, exclusive borrow.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, words.len() * 8) }
}

/// Writes entries `src[from..from + n]` into field `k` of an element.
pub(crate) fn write_field(layout: &Layout, k: usize, elem: &mut [u64], src: Data<'_>, from: usize) {
    let n = layout.field_lens[k];
    let off = layout.offsets[k];
    let b = bytes_mut(elem);
    macro_rules! put {
        ($s:expr) => {
            for (i, v) in $s[from..from + n].iter().enumerate() {
                let bytes = v.to_ne_bytes();
                let at = off + bytes.len() * i;
                b[at..at + bytes.len()].copy_from_slice(&bytes);
            }
        };
    }
    match src {
        Data::F32(s) => put!(s),
        Data::I32(s) => put!(s),
        Data::F64(s) => put!(s),
        Data::BF16(s) => put!(s),
        Data::F16(s) => put!(s),
    }
}

/// Appends field `k` of an element to a buffer of the field's dtype.
pub(crate) fn read_field(layout: &Layout, k: usize, elem: &[u64], dst: &mut Buffer) {
    let n = layout.field_lens[k];
    let off = layout.offsets[k];
    let b = bytes(elem);
    macro_rules! get {
        ($v:expr, $t:ty) => {{
            const W: usize = std::mem::size_of::<$t>();
            $v.extend((0..n).map(|i| <$t>::from_ne_bytes(b[off + W * i..off + W * (i + 1)].try_into().expect("one entry"))))
        }};
    }
    match dst {
        Buffer::F32(v) => get!(v, f32),
        Buffer::I32(v) => get!(v, i32),
        Buffer::F64(v) => get!(v, f64),
        Buffer::BF16(v) => get!(v, bf16),
        Buffer::F16(v) => get!(v, f16),
    }
}
