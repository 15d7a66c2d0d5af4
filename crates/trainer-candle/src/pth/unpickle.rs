//! A restricted unpickler for `data.pkl`: it understands the protocol 2–5 opcodes `torch.save` emits and
//! builds a [`PickleValue`] tree without executing anything.
//!
//! Globals outside [`ALLOWED_GLOBALS`] are refused where they are named; the allowed callables are
//! interpreted here (an `OrderedDict()` becomes an empty dict, `_rebuild_tensor_v2(...)` a
//! [`TensorRef`]), never looked up or called. Objects live in an arena while the stream runs, so `BINGET`
//! and later `SETITEMS` see the same container as Python would and sharing costs nothing; the tree is
//! expanded once at `STOP` under budgets on depth, values and bytes, which also catches recursive
//! structures and exponential sharing. Every cap of [`PthLimits`] is an error, never an allocation.

use std::collections::{hash_map::Entry, HashMap};

use super::{
    error::PthError,
    value::{PickleValue, PthDtype, StorageRef, TensorRef},
    PthLimits,
};

/// The globals `data.pkl` may name: the subset of PyTorch's `weights_only=True` allowlist that plain
/// checkpoints use. `builtins.set`/`frozenset` and the set opcodes are not accepted: `torch.save` of a
/// model or state dict never writes them.
pub const ALLOWED_GLOBALS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch.FloatStorage",
    "torch.DoubleStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ShortStorage",
    "torch.CharStorage",
    "torch.ByteStorage",
    "torch.BoolStorage",
    "torch.storage.UntypedStorage",
    "torch.UntypedStorage",
    "torch.device",
    "_codecs.encode",
];

/// Longest module or attribute name a `GLOBAL` may carry.
const MAX_GLOBAL_NAME: usize = 256;
/// Longest storage key accepted in a persistent id.
const MAX_STORAGE_KEY: usize = 128;

/// Unpickles `data` into a value tree.
///
/// # Errors
/// [`PthError::ForbiddenGlobal`] for a global outside [`ALLOWED_GLOBALS`], [`PthError::Limit`] when a
/// cap is reached, [`PthError::Pickle`] for anything malformed or unsupported, [`PthError::Structure`]
/// for a recursive value.
pub(crate) fn unpickle(data: &[u8], limits: &PthLimits) -> Result<PickleValue, PthError> {
    let mut machine = Machine::new(data, limits);
    let root = machine.run()?;
    Expander::new(&machine.nodes, limits).expand(root, 0)
}

/// A stack slot: scalars inline, everything else by arena index.
#[derive(Debug, Clone, Copy)]
enum Val {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Ref(usize),
}

#[derive(Debug)]
enum Node {
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Val>),
    Tuple(Vec<Val>),
    Dict(Vec<(Val, Val)>),
    Global(&'static str),
    Storage(StorageRef),
    Tensor(TensorRef),
    Object { class: &'static str, args: Vec<Val>, state: Option<Val> },
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Self::Str(_) => "str",
            Self::Bytes(_) => "bytes",
            Self::List(_) => "list",
            Self::Tuple(_) => "tuple",
            Self::Dict(_) => "dict",
            Self::Global(_) => "global",
            Self::Storage(_) => "storage",
            Self::Tensor(_) => "tensor",
            Self::Object { .. } => "object",
        }
    }
}

fn val_kind(val: Val, nodes: &[Node]) -> &'static str {
    match val {
        Val::None => "None",
        Val::Bool(_) => "bool",
        Val::Int(_) => "int",
        Val::Float(_) => "float",
        Val::Ref(id) => nodes[id].kind(),
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Where the opcode being run starts, for error messages.
    op_start: usize,
    stack: Vec<Val>,
    marks: Vec<usize>,
    memo: Vec<Option<Val>>,
    memo_len: usize,
    nodes: Vec<Node>,
    /// Nodes plus container items created so far, against `max_values`.
    values: u64,
    limits: &'a PthLimits,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], limits: &'a PthLimits) -> Self {
        Self {
            data,
            pos: 0,
            op_start: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: Vec::new(),
            memo_len: 0,
            nodes: Vec::new(),
            values: 0,
            limits,
        }
    }

    fn err(&self, message: impl Into<String>) -> PthError {
        PthError::pickle(self.op_start as u64, message)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], PthError> {
        let remaining = (self.data.len() - self.pos) as u64;
        if n > remaining {
            return Err(self.err("truncated: the stream ends inside an opcode"));
        }
        let n = n as usize;
        let bytes = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PthError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, PthError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, PthError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, PthError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn count(&mut self, n: u64) -> Result<(), PthError> {
        self.values = self.values.saturating_add(n);
        if self.values > self.limits.max_values {
            return Err(PthError::Limit { what: "the number of values in data.pkl", max: self.limits.max_values });
        }
        Ok(())
    }

    fn alloc(&mut self, node: Node) -> Result<Val, PthError> {
        self.count(1)?;
        self.nodes.push(node);
        Ok(Val::Ref(self.nodes.len() - 1))
    }

    fn push(&mut self, val: Val) -> Result<(), PthError> {
        if self.stack.len() + self.marks.len() >= self.limits.max_stack {
            return Err(PthError::Limit { what: "the pickle stack depth", max: self.limits.max_stack as u64 });
        }
        self.stack.push(val);
        Ok(())
    }

    fn push_node(&mut self, node: Node) -> Result<(), PthError> {
        let val = self.alloc(node)?;
        self.push(val)
    }

    /// The bottom of the current mark frame: values below it belong to an outer frame.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Val, PthError> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<Val, PthError> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack.last().copied().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Val>, PthError> {
        let mark = self.marks.pop().ok_or_else(|| self.err("no MARK before a mark-consuming opcode"))?;
        Ok(self.stack.split_off(mark))
    }

    fn string(&mut self, len: u64) -> Result<(), PthError> {
        self.check_len(len)?;
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| self.err("string is not valid UTF-8"))?;
        self.push_node(Node::Str(text.to_owned()))
    }

    fn bytes(&mut self, len: u64) -> Result<(), PthError> {
        self.check_len(len)?;
        let bytes = self.take(len)?.to_vec();
        self.push_node(Node::Bytes(bytes))
    }

    fn check_len(&self, len: u64) -> Result<(), PthError> {
        if len > self.limits.max_string_bytes {
            return Err(PthError::Limit { what: "a string in data.pkl", max: self.limits.max_string_bytes });
        }
        Ok(())
    }

    fn long(&mut self, bytes: &[u8]) -> Result<(), PthError> {
        if bytes.len() > 8 {
            return Err(self.err("integer does not fit in 64 bits"));
        }
        let value = match bytes.last() {
            None => 0,
            Some(&last) => {
                let fill = if last & 0x80 != 0 { 0xff } else { 0 };
                let mut full = [fill; 8];
                full[..bytes.len()].copy_from_slice(bytes);
                i64::from_le_bytes(full)
            }
        };
        self.push(Val::Int(value))
    }

    fn memo_put(&mut self, index: u64) -> Result<(), PthError> {
        let val = self.top()?;
        if index >= u64::from(self.limits.max_memo) {
            return Err(PthError::Limit { what: "the memo index in data.pkl", max: u64::from(self.limits.max_memo) });
        }
        let index = index as usize;
        if index >= self.memo.len() {
            self.memo.resize(index + 1, None);
        }
        if self.memo[index].is_none() {
            self.memo_len += 1;
        }
        self.memo[index] = Some(val);
        Ok(())
    }

    fn memo_get(&mut self, index: u64) -> Result<(), PthError> {
        let val = usize::try_from(index)
            .ok()
            .and_then(|index| self.memo.get(index).copied().flatten())
            .ok_or_else(|| self.err(format!("memo index {index} was never stored")))?;
        self.push(val)
    }

    fn global_line(&mut self) -> Result<&'a str, PthError> {
        let rest = &self.data[self.pos..];
        let window = &rest[..rest.len().min(MAX_GLOBAL_NAME + 1)];
        let end = window.iter().position(|&b| b == b'\n').ok_or_else(|| self.err("GLOBAL name is unterminated or too long"))?;
        let line = &rest[..end];
        self.pos += end + 1;
        if !line.iter().all(|b| b.is_ascii_graphic()) {
            return Err(self.err("GLOBAL name is not printable ASCII"));
        }
        std::str::from_utf8(line).map_err(|_| self.err("GLOBAL name is not printable ASCII"))
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), PthError> {
        let qualified = format!("{module}.{name}");
        let allowed = ALLOWED_GLOBALS.iter().find(|&&g| g == qualified).ok_or_else(|| PthError::ForbiddenGlobal(display(&qualified)))?;
        self.push_node(Node::Global(allowed))
    }

    fn str_of(&self, val: Val) -> Option<&str> {
        match val {
            Val::Ref(id) => match &self.nodes[id] {
                Node::Str(s) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    fn run(&mut self) -> Result<Val, PthError> {
        loop {
            self.op_start = self.pos;
            let op = self.u8().map_err(|_| self.err("truncated: the stream ends before STOP"))?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if !(2..=5).contains(&proto) {
                        return Err(self.err(format!("unsupported pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    let len = self.u64()?;
                    if len > (self.data.len() - self.pos) as u64 {
                        return Err(self.err("FRAME is longer than the rest of the stream"));
                    }
                }
                b'.' => {
                    let result = self.pop()?;
                    if !self.marks.is_empty() {
                        return Err(self.err("STOP inside an unclosed MARK"));
                    }
                    return Ok(result);
                }
                b'(' => {
                    if self.stack.len() + self.marks.len() >= self.limits.max_stack {
                        return Err(PthError::Limit { what: "the pickle stack depth", max: self.limits.max_stack as u64 });
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    self.push(top)?;
                }
                b'N' => self.push(Val::None)?,
                0x88 => self.push(Val::Bool(true))?,
                0x89 => self.push(Val::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Val::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Val::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Val::Int(i64::from(v)))?;
                }
                0x8a => {
                    let n = self.u8()?;
                    let bytes = self.take(u64::from(n))?;
                    self.long(bytes)?;
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.array()?);
                    if !(0..=8).contains(&n) {
                        return Err(self.err("integer does not fit in 64 bits"));
                    }
                    let bytes = self.take(n as u64)?;
                    self.long(bytes)?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Val::Float(v))?;
                }
                b'X' => {
                    let len = self.u32()?;
                    self.string(u64::from(len))?;
                }
                0x8c => {
                    let len = self.u8()?;
                    self.string(u64::from(len))?;
                }
                0x8d => {
                    let len = self.u64()?;
                    self.string(len)?;
                }
                b'B' => {
                    let len = self.u32()?;
                    self.bytes(u64::from(len))?;
                }
                b'C' => {
                    let len = self.u8()?;
                    self.bytes(u64::from(len))?;
                }
                0x8e | 0x96 => {
                    let len = self.u64()?;
                    self.bytes(len)?;
                }
                b'}' => self.push_node(Node::Dict(Vec::new()))?,
                b']' => self.push_node(Node::List(Vec::new()))?,
                b')' => self.push_node(Node::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.count(items.len() as u64)?;
                    self.push_node(Node::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < self.floor() + n {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.count(n as u64)?;
                    self.push_node(Node::Tuple(items))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.count(items.len() as u64)?;
                    self.push_node(Node::List(items))?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_list(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.count(pairs.len() as u64)?;
                    self.push_node(Node::Dict(pairs))?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.extend_dict(vec![(key, value)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.extend_dict(pairs)?;
                }
                b'q' => {
                    let index = self.u8()?;
                    self.memo_put(u64::from(index))?;
                }
                b'r' => {
                    let index = self.u32()?;
                    self.memo_put(u64::from(index))?;
                }
                0x94 => self.memo_put(self.memo_len as u64)?,
                b'h' => {
                    let index = self.u8()?;
                    self.memo_get(u64::from(index))?;
                }
                b'j' => {
                    let index = self.u32()?;
                    self.memo_get(u64::from(index))?;
                }
                b'c' => {
                    let module = self.global_line()?;
                    let name = self.global_line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (self.str_of(module), self.str_of(name)) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let (module, name) = (module.to_owned(), name.to_owned());
                    self.global(&module, &name)?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = self.call(callable, args)?;
                    self.push(result)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    self.build(target, state)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.push_node(Node::Storage(storage))?;
                }
                other => return Err(self.err(format!("unsupported opcode {}", opcode_name(other)))),
            }
        }
    }

    fn pairs(&self, items: Vec<Val>) -> Result<Vec<(Val, Val)>, PthError> {
        let chunks = items.chunks_exact(2);
        if !chunks.remainder().is_empty() {
            return Err(self.err("odd number of items for a dict"));
        }
        Ok(chunks.map(|pair| (pair[0], pair[1])).collect())
    }

    fn extend_list(&mut self, items: Vec<Val>) -> Result<(), PthError> {
        self.count(items.len() as u64)?;
        let target = self.top()?;
        match target {
            Val::Ref(id) => match &mut self.nodes[id] {
                Node::List(list) => {
                    list.extend(items);
                    Ok(())
                }
                other => Err(PthError::pickle(self.op_start as u64, format!("APPEND to a {}", other.kind()))),
            },
            other => Err(self.err(format!("APPEND to a {}", val_kind(other, &self.nodes)))),
        }
    }

    fn extend_dict(&mut self, pairs: Vec<(Val, Val)>) -> Result<(), PthError> {
        self.count(pairs.len() as u64)?;
        let target = self.top()?;
        match target {
            Val::Ref(id) => match &mut self.nodes[id] {
                Node::Dict(dict) => {
                    dict.extend(pairs);
                    Ok(())
                }
                other => Err(PthError::pickle(self.op_start as u64, format!("SETITEM on a {}", other.kind()))),
            },
            other => Err(self.err(format!("SETITEM on a {}", val_kind(other, &self.nodes)))),
        }
    }

    fn build(&mut self, target: Val, state: Val) -> Result<(), PthError> {
        let Val::Ref(id) = target else {
            return Err(self.err(format!("BUILD on a {}", val_kind(target, &self.nodes))));
        };
        match &mut self.nodes[id] {
            // An OrderedDict's attributes, e.g. a state dict's `_metadata`: not part of the mapping.
            Node::Dict(_) => Ok(()),
            Node::Object { state: slot @ None, .. } => {
                *slot = Some(state);
                Ok(())
            }
            other => Err(PthError::pickle(self.op_start as u64, format!("BUILD on a {}", other.kind()))),
        }
    }

    fn tuple_items(&self, args: Val) -> Result<Vec<Val>, PthError> {
        match args {
            Val::Ref(id) => match &self.nodes[id] {
                Node::Tuple(items) => Ok(items.clone()),
                other => Err(self.err(format!("call arguments must be a tuple, not a {}", other.kind()))),
            },
            other => Err(self.err(format!("call arguments must be a tuple, not a {}", val_kind(other, &self.nodes)))),
        }
    }

    fn call(&mut self, callable: Val, args: Val) -> Result<Val, PthError> {
        let name = match callable {
            Val::Ref(id) => match &self.nodes[id] {
                Node::Global(name) => *name,
                other => return Err(self.err(format!("cannot call a {}", other.kind()))),
            },
            other => return Err(self.err(format!("cannot call a {}", val_kind(other, &self.nodes)))),
        };
        let args = self.tuple_items(args)?;
        match name {
            "collections.OrderedDict" => {
                if !args.is_empty() {
                    return Err(self.err("collections.OrderedDict is only accepted without arguments"));
                }
                self.alloc(Node::Dict(Vec::new()))
            }
            "torch._utils._rebuild_tensor_v2" => {
                let tensor = self.rebuild_tensor(&args)?;
                self.alloc(Node::Tensor(tensor))
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
                let expected = if name.ends_with("_with_state") { 4 } else { 3 };
                if args.len() != expected {
                    return Err(self.err(format!("{name} takes {expected} arguments, got {}", args.len())));
                }
                match args[0] {
                    Val::Ref(id) if matches!(self.nodes[id], Node::Tensor(_)) => Ok(args[0]),
                    other => Err(self.err(format!("{name} needs a tensor, got a {}", val_kind(other, &self.nodes)))),
                }
            }
            "torch.device" => {
                let valid = match args.as_slice() {
                    [kind] => self.str_of(*kind).is_some(),
                    [kind, Val::Int(_)] => self.str_of(*kind).is_some(),
                    _ => false,
                };
                if !valid {
                    return Err(self.err("torch.device takes a device type and an optional index"));
                }
                self.count(args.len() as u64)?;
                self.alloc(Node::Object { class: name, args, state: None })
            }
            "_codecs.encode" => {
                let (text, encoding) = match args.as_slice() {
                    [text, encoding] => (self.str_of(*text), self.str_of(*encoding)),
                    _ => (None, None),
                };
                let (Some(text), Some("latin1" | "latin-1")) = (text, encoding) else {
                    return Err(self.err("_codecs.encode is only accepted as encode(str, 'latin1')"));
                };
                let bytes = text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect::<Option<Vec<u8>>>();
                let bytes = bytes.ok_or_else(|| self.err("_codecs.encode: character outside latin-1"))?;
                self.alloc(Node::Bytes(bytes))
            }
            _ => Err(self.err(format!("{name} cannot be called in data.pkl"))),
        }
    }

    fn int_of(&self, val: Val, what: &str) -> Result<u64, PthError> {
        match val {
            Val::Int(i) => u64::try_from(i).map_err(|_| self.err(format!("{what} is negative"))),
            other => Err(self.err(format!("{what} must be an int, not a {}", val_kind(other, &self.nodes)))),
        }
    }

    fn ints_of(&self, val: Val, what: &str) -> Result<Vec<u64>, PthError> {
        let items = match val {
            Val::Ref(id) => match &self.nodes[id] {
                Node::Tuple(items) | Node::List(items) => items,
                other => return Err(self.err(format!("{what} must be a tuple, not a {}", other.kind()))),
            },
            other => return Err(self.err(format!("{what} must be a tuple, not a {}", val_kind(other, &self.nodes)))),
        };
        if items.len() > self.limits.max_dims {
            return Err(PthError::Limit { what: "the number of tensor dimensions", max: self.limits.max_dims as u64 });
        }
        items.iter().map(|&item| self.int_of(item, what)).collect()
    }

    fn rebuild_tensor(&self, args: &[Val]) -> Result<TensorRef, PthError> {
        let [storage, offset, size, stride, requires_grad, _hooks, ..] = args else {
            return Err(self.err(format!("_rebuild_tensor_v2 takes 6 or 7 arguments, got {}", args.len())));
        };
        if args.len() > 7 {
            return Err(self.err(format!("_rebuild_tensor_v2 takes 6 or 7 arguments, got {}", args.len())));
        }
        let storage = match *storage {
            Val::Ref(id) => match &self.nodes[id] {
                Node::Storage(storage) => storage.clone(),
                other => return Err(self.err(format!("_rebuild_tensor_v2 needs a storage, got a {}", other.kind()))),
            },
            other => return Err(self.err(format!("_rebuild_tensor_v2 needs a storage, got a {}", val_kind(other, &self.nodes)))),
        };
        let offset = self.int_of(*offset, "storage offset")?;
        let shape = self.ints_of(*size, "tensor size")?;
        let stride = self.ints_of(*stride, "tensor stride")?;
        if shape.len() != stride.len() {
            return Err(self.err(format!("tensor has {} sizes but {} strides", shape.len(), stride.len())));
        }
        let Val::Bool(requires_grad) = *requires_grad else {
            return Err(self.err("requires_grad must be a bool"));
        };
        Ok(TensorRef { storage, offset, shape, stride, requires_grad })
    }

    fn persistent_load(&self, pid: Val) -> Result<StorageRef, PthError> {
        let items = match pid {
            Val::Ref(id) => match &self.nodes[id] {
                Node::Tuple(items) => items,
                other => return Err(self.err(format!("persistent id must be a tuple, not a {}", other.kind()))),
            },
            other => return Err(self.err(format!("persistent id must be a tuple, not a {}", val_kind(other, &self.nodes)))),
        };
        let [tag, class, key, location, numel] = items.as_slice() else {
            return Err(self.err("persistent id must be ('storage', storage type, key, location, numel)"));
        };
        if self.str_of(*tag) != Some("storage") {
            return Err(self.err("persistent id must start with 'storage'"));
        }
        let dtype = match *class {
            Val::Ref(id) => match &self.nodes[id] {
                Node::Global(name) => PthDtype::from_storage_class(name),
                _ => None,
            },
            _ => None,
        }
        .ok_or_else(|| self.err("persistent id does not name a storage class"))?;
        let key = self.str_of(*key).ok_or_else(|| self.err("storage key must be a str"))?;
        if key.is_empty() || key.len() > MAX_STORAGE_KEY || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(self.err(format!("storage key '{}' is not a plain name", display(key))));
        }
        let location = self.str_of(*location).ok_or_else(|| self.err("storage location must be a str"))?;
        let numel = self.int_of(*numel, "storage size")?;
        Ok(StorageRef { key: key.to_owned(), dtype, location: location.to_owned(), numel })
    }
}

/// A name as it may appear in an error message: at most 200 characters, control characters escaped.
fn display(name: &str) -> String {
    let mut out: String = name.chars().take(200).flat_map(char::escape_debug).collect();
    if name.chars().count() > 200 {
        out.push_str("...");
    }
    out
}

fn opcode_name(op: u8) -> String {
    let name = match op {
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'P' => "PERSID",
        b'p' => "PUT",
        b'g' => "GET",
        b'i' => "INST",
        b'o' => "OBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return format!("0x{op:02x}"),
    };
    format!("{name} (0x{op:02x})")
}

/// Turns the arena into an owned tree, once, under the depth, value and byte budgets.
struct Expander<'a> {
    nodes: &'a [Node],
    limits: &'a PthLimits,
    in_progress: Vec<bool>,
    values: u64,
    bytes: u64,
}

/// A dict key that Python would hash: repeated ones replace the earlier value in place.
#[derive(Hash, PartialEq, Eq)]
enum HashKey {
    Str(String),
    Int(i64),
}

impl<'a> Expander<'a> {
    fn new(nodes: &'a [Node], limits: &'a PthLimits) -> Self {
        Self { nodes, limits, in_progress: vec![false; nodes.len()], values: 0, bytes: 0 }
    }

    fn count(&mut self, values: u64, bytes: u64) -> Result<(), PthError> {
        self.values = self.values.saturating_add(values);
        self.bytes = self.bytes.saturating_add(bytes);
        if self.values > self.limits.max_values {
            return Err(PthError::Limit { what: "the number of values in data.pkl", max: self.limits.max_values });
        }
        if self.bytes > self.limits.max_total_string_bytes {
            return Err(PthError::Limit { what: "the total size of strings in data.pkl", max: self.limits.max_total_string_bytes });
        }
        Ok(())
    }

    fn expand_all(&mut self, vals: &[Val], depth: usize) -> Result<Vec<PickleValue>, PthError> {
        vals.iter().map(|&val| self.expand(val, depth + 1)).collect()
    }

    fn expand(&mut self, val: Val, depth: usize) -> Result<PickleValue, PthError> {
        if depth > self.limits.max_depth {
            return Err(PthError::Limit { what: "the nesting depth of data.pkl", max: self.limits.max_depth as u64 });
        }
        self.count(1, 0)?;
        let id = match val {
            Val::None => return Ok(PickleValue::None),
            Val::Bool(b) => return Ok(PickleValue::Bool(b)),
            Val::Int(i) => return Ok(PickleValue::Int(i)),
            Val::Float(f) => return Ok(PickleValue::Float(f)),
            Val::Ref(id) => id,
        };
        if self.in_progress[id] {
            return Err(PthError::Structure("it contains a recursive structure".into()));
        }
        self.in_progress[id] = true;
        let nodes = self.nodes;
        let value = match &nodes[id] {
            Node::Str(s) => {
                self.count(0, s.len() as u64)?;
                PickleValue::Str(s.clone())
            }
            Node::Bytes(b) => {
                self.count(0, b.len() as u64)?;
                PickleValue::Bytes(b.clone())
            }
            Node::List(items) => PickleValue::List(self.expand_all(items, depth)?),
            Node::Tuple(items) => PickleValue::Tuple(self.expand_all(items, depth)?),
            Node::Dict(pairs) => {
                let mut out: Vec<(PickleValue, PickleValue)> = Vec::with_capacity(pairs.len());
                let mut index: HashMap<HashKey, usize> = HashMap::new();
                for &(key, value) in pairs {
                    let key = self.expand(key, depth + 1)?;
                    let value = self.expand(value, depth + 1)?;
                    let hash_key = match &key {
                        PickleValue::Str(s) => Some(HashKey::Str(s.clone())),
                        PickleValue::Int(i) => Some(HashKey::Int(*i)),
                        _ => None,
                    };
                    match hash_key.map(|k| index.entry(k)) {
                        Some(Entry::Occupied(seen)) => out[*seen.get()].1 = value,
                        Some(Entry::Vacant(slot)) => {
                            slot.insert(out.len());
                            out.push((key, value));
                        }
                        None => out.push((key, value)),
                    }
                }
                PickleValue::Dict(out)
            }
            Node::Global(name) => PickleValue::Global((*name).to_owned()),
            Node::Storage(storage) => PickleValue::Storage(storage.clone()),
            Node::Tensor(tensor) => PickleValue::Tensor(tensor.clone()),
            Node::Object { class, args, state } => {
                let args = self.expand_all(args, depth)?;
                let state = match state {
                    Some(state) => Some(Box::new(self.expand(*state, depth + 1)?)),
                    None => None,
                };
                PickleValue::Object { class: (*class).to_owned(), args, state }
            }
        };
        self.in_progress[id] = false;
        Ok(value)
    }
}
