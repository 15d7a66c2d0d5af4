//! A `.pth` writer that emits what `torch.save` does for a state dict of `float32` tensors: a protocol 2
//! `data.pkl` (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, persistent ids
//! `('storage', torch.FloatStorage, key, 'cpu', numel)`) and stored, 64-byte aligned entries
//! `archive/data/<key>`, `archive/byteorder`, `archive/version`, `archive/.data/serialization_id`.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::{BufWriter, Cursor, Seek, Write},
    path::Path,
};

use zip::{write::SimpleFileOptions, CompressionMethod, ZipWriter};

use super::{error::PthError, value::PickleValue};

/// Items per `SETITEMS`/`APPENDS` batch, as Python's pickler does.
const BATCH: usize = 1000;
/// Nesting depth accepted in extras (the reader's default cap).
const MAX_DEPTH: usize = 128;
/// The top-level folder of every entry.
const PREFIX: &str = "archive";

/// Writes a checkpoint to `path` (through a temporary file in the same folder, then renamed).
///
/// With no `extras` the file holds a bare state dict, as `torch.save(model.state_dict(), path)` does;
/// otherwise a dict `{'model_state_dict': <state dict>, **extras}` in that order, as the owner's
/// checkpoints do. Each state-dict entry is `(name, row-major data, shape)`. Extras may hold `None`,
/// bools, ints, floats, strings, bytes, lists, tuples and dicts (see
/// [`vocabulary_value`](super::vocabulary_value) for the owner's `vocabulary`).
///
/// # Errors
/// [`PthError::InvalidInput`] for a repeated name, data whose length is not the shape's product, or an
/// extra that is not plain data; [`PthError::Io`] when the file cannot be written.
pub fn write_pth(path: &Path, state_dict: &[(String, &[f32], &[usize])], extras: &[(String, PickleValue)]) -> Result<(), PthError> {
    let file_name = path.file_name().ok_or_else(|| PthError::InvalidInput(format!("'{}' is not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    let result = (|| {
        let file = fs::File::create(&tmp)?;
        let file = write_to(BufWriter::new(file), state_dict, extras)?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The bytes [`write_pth`] would write.
///
/// # Errors
/// As [`write_pth`], without the I/O.
pub fn write_pth_bytes(state_dict: &[(String, &[f32], &[usize])], extras: &[(String, PickleValue)]) -> Result<Vec<u8>, PthError> {
    Ok(write_to(Cursor::new(Vec::new()), state_dict, extras)?.into_inner())
}

fn write_to<W: Write + Seek>(out: W, state_dict: &[(String, &[f32], &[usize])], extras: &[(String, PickleValue)]) -> Result<W, PthError> {
    let pickle = pickle(state_dict, extras)?;
    let mut zip = ZipWriter::new(out);
    let options = |len: usize| {
        SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .with_alignment(64)
            .large_file(len as u64 >= u64::from(u32::MAX))
    };
    let mut id = Fnv::default();
    zip.start_file(format!("{PREFIX}/data.pkl"), options(pickle.len()))?;
    zip.write_all(&pickle)?;
    id.feed(&pickle);
    zip.start_file(format!("{PREFIX}/byteorder"), options(6))?;
    zip.write_all(b"little")?;
    for (key, (_, data, _)) in state_dict.iter().enumerate() {
        zip.start_file(format!("{PREFIX}/data/{key}"), options(data.len() * 4))?;
        for chunk in data.chunks(16 * 1024) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            id.feed(&bytes);
            zip.write_all(&bytes)?;
        }
    }
    zip.start_file(format!("{PREFIX}/version"), options(2))?;
    zip.write_all(b"3\n")?;
    zip.start_file(format!("{PREFIX}/.data/serialization_id"), options(40))?;
    zip.write_all(format!("{:020}{:020}", id.0, id.0.rotate_left(32)).as_bytes())?;
    Ok(zip.finish()?)
}

/// FNV-1a over the content, for a deterministic `serialization_id`.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn invalid(message: impl Into<String>) -> PthError {
    PthError::InvalidInput(message.into())
}

/// Protocol 2 has only 32-bit string lengths.
fn check_str_len(s: impl AsRef<[u8]>) -> Result<(), PthError> {
    if u32::try_from(s.as_ref().len()).is_err() {
        return Err(invalid("a string or bytes value is 4 GiB or longer"));
    }
    Ok(())
}

fn pickle(state_dict: &[(String, &[f32], &[usize])], extras: &[(String, PickleValue)]) -> Result<Vec<u8>, PthError> {
    let mut names = HashSet::new();
    for (name, data, shape) in state_dict {
        check_str_len(name)?;
        if !names.insert(name.as_str()) {
            return Err(invalid(format!("tensor '{name}' appears twice")));
        }
        let numel = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if numel != Some(data.len()) {
            return Err(invalid(format!("tensor '{name}' has {} values but shape {shape:?}", data.len())));
        }
    }
    let mut keys = HashSet::from(["model_state_dict"]);
    for (key, _) in extras {
        check_str_len(key)?;
        if !keys.insert(key.as_str()) {
            return Err(invalid(format!("extra '{key}' appears twice or shadows model_state_dict")));
        }
    }
    let mut p = Pickler::default();
    p.out.extend_from_slice(&[0x80, 2]);
    if extras.is_empty() {
        p.state_dict(state_dict);
    } else {
        p.out.push(b'}');
        p.memoize();
        p.out.push(b'(');
        p.str("model_state_dict");
        p.state_dict(state_dict);
        for (key, value) in extras {
            p.str(key);
            p.value(value, 1)?;
        }
        p.out.push(b'u');
    }
    p.out.push(b'.');
    Ok(p.out)
}

#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
    next_memo: u32,
    /// Memo indices of strings (`false`) and globals (`true`) already written.
    memo: HashMap<(bool, String), u32>,
}

impl Pickler {
    fn memoize(&mut self) -> u32 {
        let index = self.next_memo;
        match u8::try_from(index) {
            Ok(small) => self.out.extend_from_slice(&[b'q', small]),
            Err(_) => {
                self.out.push(b'r');
                self.out.extend_from_slice(&index.to_le_bytes());
            }
        }
        self.next_memo += 1;
        index
    }

    fn get(&mut self, index: u32) {
        match u8::try_from(index) {
            Ok(small) => self.out.extend_from_slice(&[b'h', small]),
            Err(_) => {
                self.out.push(b'j');
                self.out.extend_from_slice(&index.to_le_bytes());
            }
        }
    }

    /// Writes a string or a global once and refers to the memo afterwards, as pickle does for
    /// interned strings and classes.
    fn memoized(&mut self, key: (bool, String), write: impl FnOnce(&mut Self)) {
        if let Some(&index) = self.memo.get(&key) {
            self.get(index);
        } else {
            write(self);
            let index = self.memoize();
            self.memo.insert(key, index);
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.memoized((true, format!("{module}.{name}")), |p| {
            p.out.push(b'c');
            p.out.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        });
    }

    fn str(&mut self, s: &str) {
        self.memoized((false, s.to_owned()), |p| {
            p.out.push(b'X');
            p.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            p.out.extend_from_slice(s.as_bytes());
        });
    }

    fn int(&mut self, i: i64) {
        if let Ok(v) = u8::try_from(i) {
            self.out.extend_from_slice(&[b'K', v]);
        } else if let Ok(v) = u16::try_from(i) {
            self.out.push(b'M');
            self.out.extend_from_slice(&v.to_le_bytes());
        } else if let Ok(v) = i32::try_from(i) {
            self.out.push(b'J');
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            // LONG1 with the shortest two's complement encoding, as Python's encode_long.
            let bytes = i.to_le_bytes();
            let mut len = 8;
            while len > 1 {
                let (last, prev) = (bytes[len - 1], bytes[len - 2]);
                let redundant = (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0);
                if !redundant {
                    break;
                }
                len -= 1;
            }
            self.out.extend_from_slice(&[0x8a, len as u8]);
            self.out.extend_from_slice(&bytes[..len]);
        }
    }

    /// A tuple of already-written items: `)`, `TUPLE1..3` or `MARK ... TUPLE`, then memoized.
    fn tuple(&mut self, items: impl FnOnce(&mut Self) -> Result<usize, PthError>) -> Result<(), PthError> {
        let mark_at = self.out.len();
        self.out.push(b'(');
        let n = items(self)?;
        match n {
            0 => {
                self.out.truncate(mark_at);
                self.out.push(b')');
            }
            1..=3 => {
                self.out.remove(mark_at);
                self.out.push(0x84 + n as u8);
            }
            _ => self.out.push(b't'),
        }
        self.memoize();
        Ok(())
    }

    fn ints(&mut self, values: &[usize]) {
        let _ = self.tuple(|p| {
            for &v in values {
                p.int(v as i64);
            }
            Ok(values.len())
        });
    }

    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.out.push(b')');
        self.out.push(b'R');
        self.memoize();
    }

    /// `OrderedDict` of `_rebuild_tensor_v2` calls, one storage per tensor, keys "0", "1", ...
    fn state_dict(&mut self, state_dict: &[(String, &[f32], &[usize])]) {
        self.ordered_dict();
        for (number, batch) in state_dict.chunks(BATCH).enumerate() {
            let first = number * BATCH;
            if batch.len() > 1 {
                self.out.push(b'(');
            }
            for (i, (name, data, shape)) in batch.iter().enumerate() {
                self.str(name);
                self.tensor(&(first + i).to_string(), data.len(), shape);
            }
            self.out.push(if batch.len() > 1 { b'u' } else { b's' });
        }
    }

    fn tensor(&mut self, key: &str, numel: usize, shape: &[usize]) {
        let mut stride = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1].max(1);
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        let _ = self.tuple(|p| {
            let _ = p.tuple(|p| {
                p.str("storage");
                p.global("torch", "FloatStorage");
                p.str(key);
                p.str("cpu");
                p.int(numel as i64);
                Ok(5)
            });
            p.out.push(b'Q');
            p.int(0);
            p.ints(shape);
            p.ints(&stride);
            p.out.push(0x89);
            p.ordered_dict();
            Ok(6)
        });
        self.out.push(b'R');
        self.memoize();
    }

    fn value(&mut self, value: &PickleValue, depth: usize) -> Result<(), PthError> {
        if depth > MAX_DEPTH {
            return Err(invalid(format!("extras nest deeper than {MAX_DEPTH}")));
        }
        match value {
            PickleValue::None => self.out.push(b'N'),
            PickleValue::Bool(b) => self.out.push(if *b { 0x88 } else { 0x89 }),
            PickleValue::Int(i) => self.int(*i),
            PickleValue::Float(f) => {
                self.out.push(b'G');
                self.out.extend_from_slice(&f.to_be_bytes());
            }
            PickleValue::Str(s) => {
                check_str_len(s)?;
                self.str(s);
            }
            PickleValue::Bytes(bytes) => {
                check_str_len(bytes)?;
                // Protocol 2 has no bytes opcode: Python writes _codecs.encode(latin-1 text, 'latin1').
                self.global("_codecs", "encode");
                let text: String = bytes.iter().map(|&b| char::from(b)).collect();
                self.tuple(|p| {
                    p.str(&text);
                    p.str("latin1");
                    Ok(2)
                })?;
                self.out.push(b'R');
                self.memoize();
            }
            PickleValue::List(items) => {
                self.out.push(b']');
                self.memoize();
                for batch in items.chunks(BATCH) {
                    if batch.len() > 1 {
                        self.out.push(b'(');
                    }
                    for item in batch {
                        self.value(item, depth + 1)?;
                    }
                    self.out.push(if batch.len() > 1 { b'e' } else { b'a' });
                }
            }
            PickleValue::Tuple(items) => self.tuple(|p| {
                for item in items {
                    p.value(item, depth + 1)?;
                }
                Ok(items.len())
            })?,
            PickleValue::Dict(entries) => {
                self.out.push(b'}');
                self.memoize();
                for batch in entries.chunks(BATCH) {
                    if batch.len() > 1 {
                        self.out.push(b'(');
                    }
                    for (key, item) in batch {
                        self.value(key, depth + 1)?;
                        self.value(item, depth + 1)?;
                    }
                    self.out.push(if batch.len() > 1 { b'u' } else { b's' });
                }
            }
            other @ (PickleValue::Tensor(_) | PickleValue::Storage(_) | PickleValue::Global(_) | PickleValue::Object { .. }) => {
                return Err(invalid(format!("extras cannot hold a {}; pass tensors in the state dict", other.kind())));
            }
        }
        Ok(())
    }
}
