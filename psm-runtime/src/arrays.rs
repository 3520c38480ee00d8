//! ndarray interop (feature `ndarray`, on by default): inputs, params and
//! caller-supplied outputs as array views, outputs read back as shaped views. No data
//! is copied: a view must be in standard layout (row-major and contiguous, what
//! `[batch..., T, field dims...]` means); any other view is refused with
//! [`RunError::NotContiguous`] — `view.as_standard_layout()` makes a contiguous copy.
//!
//! ```
//! use ndarray::{Array2, Array3};
//! use psm_runtime::{Data, DataMut, Inputs, OutputsMut, Program, RunOptions};
//! let src = "aggregator decay<D = 2> { input { a[D], b[D] } element { a[D], b[D] }
//!            identity { a[i] = 1.0; b[i] = 0.0; }
//!            combine(l, r) { a[i] = l.a[i] * r.a[i]; b[i] = r.a[i] * l.b[i] + r.b[i]; }
//!            readout inclusive(s, x) -> y[D] { y[i] = s.b[i]; } }";
//! let op = Program::from_source(src, &[]).unwrap().aggregator("decay").unwrap();
//! // [batch = 3, T = 4, D = 2]
//! let a = Array3::<f32>::from_elem((3, 4, 2), 0.5);
//! let b = Array3::<f32>::from_shape_fn((3, 4, 2), |(s, t, d)| (s + t + d) as f32);
//! let inputs = Inputs::new(&[3], 4).input("a", Data::try_from(a.view()).unwrap()).input("b", Data::try_from(b.view()).unwrap());
//! let out = op.run(&inputs, &RunOptions::default()).unwrap();
//! let y = out.array::<f32>("y").unwrap();
//! assert_eq!(y.shape(), &[3, 4, 2]);
//! assert_eq!(y[[1, 1, 0]], 0.5 * 1.0 + 2.0);
//! // Into a caller's array: every entry overwritten.
//! let mut into = Array3::<f32>::zeros((3, 4, 2));
//! op.run_into(&inputs, &mut OutputsMut::new().output("y", DataMut::try_from(into.view_mut()).unwrap()), &RunOptions::default())
//!     .unwrap();
//! assert_eq!(into.view().into_dyn(), y);
//! // A transposed view is not row-major: refused, not copied behind the caller's back.
//! let t = Array2::<f32>::zeros((2, 3));
//! assert!(Data::try_from(t.t()).is_err());
//! ```

use ndarray::{ArrayView, ArrayViewD, ArrayViewMut, Dimension, IxDyn};

use crate::buffers::{Buffer, Data, DataMut};
use crate::error::RunError;
use crate::forms::Outputs;

fn not_contiguous(shape: &[usize]) -> RunError {
    RunError::NotContiguous { what: format!("an array view of shape {shape:?}") }
}

macro_rules! views {
    ($t:ty, $v:ident) => {
        impl<'a, D: Dimension> TryFrom<ArrayView<'a, $t, D>> for Data<'a> {
            type Error = RunError;
            fn try_from(view: ArrayView<'a, $t, D>) -> Result<Self, RunError> {
                view.to_slice().map(Data::$v).ok_or_else(|| not_contiguous(view.shape()))
            }
        }
        impl<'a, D: Dimension> TryFrom<ArrayViewMut<'a, $t, D>> for DataMut<'a> {
            type Error = RunError;
            fn try_from(view: ArrayViewMut<'a, $t, D>) -> Result<Self, RunError> {
                // `into_slice` consumes the view: take the shape for the error first.
                if !view.is_standard_layout() {
                    return Err(not_contiguous(view.shape()));
                }
                view.into_slice().map(DataMut::$v).ok_or_else(|| RunError::NotContiguous { what: "an array view".into() })
            }
        }
        impl Element for $t {
            fn slice(buffer: &Buffer) -> Option<&[Self]> {
                match buffer {
                    Buffer::$v(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

/// A dtype psm stores: `f32`, `f64`, `i32`, `half::bf16`, `half::f16`.
pub trait Element: Sized + sealed::Sealed {
    /// The buffer's values, when it holds this dtype.
    fn slice(buffer: &Buffer) -> Option<&[Self]>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for i32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

views!(f32, F32);
views!(f64, F64);
views!(i32, I32);
views!(half::bf16, BF16);
views!(half::f16, F16);

impl Outputs {
    /// An output as a view shaped `[batch..., T, field dims...]` (`None` when absent or
    /// of another dtype).
    pub fn array<T: Element>(&self, name: &str) -> Option<ArrayViewD<'_, T>> {
        let t = self.tensor(name)?;
        ArrayView::from_shape(IxDyn(&t.shape), T::slice(&t.data)?).ok()
    }
}
