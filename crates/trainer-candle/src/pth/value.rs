//! The value tree a restricted unpickling of `data.pkl` yields: plain data, tensors as references into
//! the archive's storages, and the few allowlisted objects, never anything executable.

use std::fmt;

/// The element type of a PyTorch storage, named after the legacy storage class in the persistent id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PthDtype {
    /// `torch.FloatStorage`.
    F32,
    /// `torch.DoubleStorage`.
    F64,
    /// `torch.HalfStorage`.
    F16,
    /// `torch.BFloat16Storage`.
    BF16,
    /// `torch.LongStorage`.
    I64,
    /// `torch.IntStorage`.
    I32,
    /// `torch.ShortStorage`.
    I16,
    /// `torch.CharStorage`.
    I8,
    /// `torch.ByteStorage` and `torch.storage.UntypedStorage`.
    U8,
    /// `torch.BoolStorage`.
    Bool,
}

impl PthDtype {
    /// The dtype a storage class stands for, by its qualified name (`torch.FloatStorage`).
    pub(crate) fn from_storage_class(class: &str) -> Option<Self> {
        Some(match class {
            "torch.FloatStorage" => Self::F32,
            "torch.DoubleStorage" => Self::F64,
            "torch.HalfStorage" => Self::F16,
            "torch.BFloat16Storage" => Self::BF16,
            "torch.LongStorage" => Self::I64,
            "torch.IntStorage" => Self::I32,
            "torch.ShortStorage" => Self::I16,
            "torch.CharStorage" => Self::I8,
            "torch.ByteStorage" | "torch.storage.UntypedStorage" | "torch.UntypedStorage" => Self::U8,
            "torch.BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// PyTorch's name for the dtype: `float32`, `bfloat16`, `int64`, ...
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F64 => "float64",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
            Self::I64 => "int64",
            Self::I32 => "int32",
            Self::I16 => "int16",
            Self::I8 => "int8",
            Self::U8 => "uint8",
            Self::Bool => "bool",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

impl fmt::Display for PthDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A storage named by a persistent id `('storage', torch.FloatStorage, key, location, numel)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// The entry `<prefix>/data/<key>` that holds the bytes.
    pub key: String,
    /// Element type.
    pub dtype: PthDtype,
    /// Where it lived when saved (`cpu`, `cuda:0`); informational.
    pub location: String,
    /// Elements in the storage, as declared.
    pub numel: u64,
}

/// A tensor as `torch._utils._rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// The storage it views.
    pub storage: StorageRef,
    /// First element, in elements of the storage's dtype.
    pub offset: u64,
    /// Size per dimension.
    pub shape: Vec<u64>,
    /// Stride per dimension, in elements.
    pub stride: Vec<u64>,
    /// Whether it was saved with `requires_grad`.
    pub requires_grad: bool,
}

impl TensorRef {
    /// The element count, or `None` when it overflows.
    pub fn numel(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |acc, &dim| acc.checked_mul(dim))
    }
}

/// A value of `data.pkl`, built without executing anything.
#[derive(Debug, Clone, PartialEq)]
pub enum PickleValue {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits `i64` (larger ones are refused).
    Int(i64),
    /// A float.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `bytes` (also from `_codecs.encode(s, 'latin1')`).
    Bytes(Vec<u8>),
    /// A `list`.
    List(Vec<PickleValue>),
    /// A `tuple`.
    Tuple(Vec<PickleValue>),
    /// A `dict` or `collections.OrderedDict`, in insertion order (a repeated key keeps its last value).
    Dict(Vec<(PickleValue, PickleValue)>),
    /// A tensor (or `torch.nn.Parameter`) whose data sit in the archive.
    Tensor(TensorRef),
    /// A bare storage.
    Storage(StorageRef),
    /// An allowlisted class or function that was named but not called, e.g. `torch.FloatStorage`.
    Global(String),
    /// An allowlisted class that was instantiated, e.g. `torch.device('cpu')`: its arguments and any
    /// `BUILD` state, recorded, not run.
    Object {
        /// Qualified class name.
        class: String,
        /// Constructor arguments.
        args: Vec<PickleValue>,
        /// State from `BUILD`, if any.
        state: Option<Box<PickleValue>>,
    },
}

impl PickleValue {
    /// The value under a string key, when this is a dict.
    pub fn get(&self, key: &str) -> Option<&PickleValue> {
        self.as_dict()?.iter().rev().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    /// The entries, when this is a dict.
    pub fn as_dict(&self) -> Option<&[(PickleValue, PickleValue)]> {
        match self {
            Self::Dict(entries) => Some(entries),
            _ => None,
        }
    }

    /// The string, when this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, when this is an `int` (a `bool` is not one here).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number, when this is an `int` or a `float`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Int(i) => Some(*i as f64),
            Self::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The items, when this is a list or a tuple.
    pub fn as_seq(&self) -> Option<&[PickleValue]> {
        match self {
            Self::List(items) | Self::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// The tensor reference, when this is a tensor.
    pub fn as_tensor(&self) -> Option<&TensorRef> {
        match self {
            Self::Tensor(tensor) => Some(tensor),
            _ => None,
        }
    }

    /// A short name of the variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Bool(_) => "bool",
            Self::Int(_) => "int",
            Self::Float(_) => "float",
            Self::Str(_) => "str",
            Self::Bytes(_) => "bytes",
            Self::List(_) => "list",
            Self::Tuple(_) => "tuple",
            Self::Dict(_) => "dict",
            Self::Tensor(_) => "tensor",
            Self::Storage(_) => "storage",
            Self::Global(_) => "global",
            Self::Object { .. } => "object",
        }
    }
}
