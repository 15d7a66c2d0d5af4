//! NumPy `.npy` files: the header (the magic, the version, and the Python dict literal that gives
//! the array's dtype, memory order and shape) and the data, read as numbers in C order for
//! training (`bool`, `u1`..`u8`, `i1`..`i8`, `f2`, `f4`, `f8`, either byte order, C or Fortran
//! order) or as class labels (those, or `S`/`U` strings).

use std::io::Read;

/// The magic string every `.npy` file starts with.
pub(crate) const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The largest header accepted; real ones are well under a kilobyte.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How deeply the dict literal may nest.
const MAX_DEPTH: usize = 16;

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NpyHeader {
    /// The dtype string, such as `<f8` or `|u1`.
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<u64>,
    /// The byte size of one element.
    pub item_size: u64,
    /// Where the data starts, from the start of the `.npy` content.
    pub data_offset: u64,
}

impl NpyHeader {
    /// The number of bytes the data must have.
    pub(crate) fn data_len(&self) -> Option<u64> {
        self.shape.iter().try_fold(self.item_size, |acc, &d| acc.checked_mul(d))
    }

    /// Samples are the first axis.
    pub(crate) fn sample_count(&self) -> u64 {
        self.shape.first().copied().unwrap_or(0)
    }

    /// The shape of one sample: `HxWxC` for an image-shaped array (see [`Self::image_shape`]),
    /// else the other axes joined by `x` (`13`, `5x6x7`), or `1` for a vector.
    pub(crate) fn sample_dimensions(&self) -> String {
        if let Some(image) = self.image_shape() {
            format!("{}x{}x{}", image.height, image.width, image.channels)
        } else if self.shape.len() <= 1 {
            "1".to_owned()
        } else {
            self.shape[1..].iter().map(u64::to_string).collect::<Vec<_>>().join("x")
        }
    }

    /// The header as statistics JSON.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "dtype": self.descr, "shape": self.shape, "fortran_order": self.fortran_order })
    }

    /// Checks that `available` bytes (the file or zip entry length) hold exactly the data.
    pub(crate) fn check_len(&self, available: u64) -> Result<(), String> {
        let need = self.data_len().ok_or_else(|| format!("npy shape {:?} is too large", self.shape))?;
        let have = available.saturating_sub(self.data_offset);
        match have.cmp(&need) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Less => Err(format!("npy data is truncated: shape {:?} needs {need} bytes, found {have}", self.shape)),
            std::cmp::Ordering::Greater => Err(format!("npy data has {} trailing bytes after shape {:?}", have - need, self.shape)),
        }
    }
}

/// How an image-shaped array lays out one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageShape {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    /// `[n, h, w, c]` (and `[n, h, w]`) when true, `[n, c, h, w]` when false.
    pub channels_last: bool,
}

/// An element type the data can be read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    F32,
    F64,
    /// Fixed-width byte strings (`S`), this many bytes.
    Bytes(usize),
    /// Fixed-width UTF-32 strings (`U`), this many characters.
    Unicode(usize),
}

impl NpyHeader {
    /// `[n, h, w]`, `[n, h, w, c]` with `c` in 1, 3, 4, or `[n, c, h, w]` with `c` in 1, 3, 4 and
    /// `h`, `w` over 4 (channels-last wins when both fit); `None` for any other shape.
    pub(crate) fn image_shape(&self) -> Option<ImageShape> {
        let dims: Vec<usize> = self.shape.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
        let channels = |c: usize| matches!(c, 1 | 3 | 4);
        let shape = match dims[..] {
            [_, height, width] => ImageShape { height, width, channels: 1, channels_last: true },
            [_, height, width, c] if channels(c) => ImageShape { height, width, channels: c, channels_last: true },
            [_, c, height, width] if channels(c) && height > 4 && width > 4 => {
                ImageShape { height, width, channels: c, channels_last: false }
            }
            _ => return None,
        };
        (shape.height > 0 && shape.width > 0).then_some(shape)
    }

    /// The number of elements, when it fits.
    pub(crate) fn element_count(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// The element type and whether it is big-endian.
    ///
    /// # Errors
    /// A message for dtypes that hold no numbers or labels (complex, dates, void).
    pub(crate) fn elem(&self) -> Result<(Elem, bool), String> {
        let big = self.descr.starts_with('>');
        let body = self.descr.trim_start_matches(['<', '>', '|', '=']);
        let width = usize::try_from(self.item_size).unwrap_or(usize::MAX);
        let elem = match body {
            "b1" | "?" => Elem::Bool,
            "u1" | "B" => Elem::U8,
            "i1" | "b" => Elem::I8,
            "u2" => Elem::U16,
            "i2" => Elem::I16,
            "u4" => Elem::U32,
            "i4" => Elem::I32,
            "u8" => Elem::U64,
            "i8" => Elem::I64,
            "f2" => Elem::F16,
            "f4" => Elem::F32,
            "f8" => Elem::F64,
            _ if body.starts_with(['S', 'a']) => Elem::Bytes(width),
            _ if body.starts_with('U') => Elem::Unicode(width / 4),
            _ => return Err(format!("npy dtype {:?} is not supported: use booleans, integers or floats (float16/32/64)", self.descr)),
        };
        Ok((elem, big))
    }
}

/// Elements read per chunk.
const CHUNK_ELEMENTS: usize = 8192;

/// Reads the data after the header as numbers, converted by `convert`, in C order (a Fortran-order
/// array is transposed), and checks that nothing follows it.
///
/// # Errors
/// A string dtype, more than `max_values` elements, truncated data or trailing bytes.
pub(crate) fn read_values<T: Clone>(
    r: &mut impl Read,
    header: &NpyHeader,
    max_values: u64,
    mut convert: impl FnMut(f64) -> T,
) -> Result<Vec<T>, String> {
    let (elem, big) = header.elem()?;
    if matches!(elem, Elem::Bytes(_) | Elem::Unicode(_)) {
        return Err(format!("npy dtype {:?} holds strings, not numbers", header.descr));
    }
    let count = header
        .element_count()
        .filter(|&c| c <= max_values)
        .ok_or_else(|| format!("npy shape {:?} holds more than the {max_values} values Trainyard loads for training", header.shape))?;
    let count = usize::try_from(count).map_err(|_| "npy array is too large for this machine".to_owned())?;
    let item = usize::try_from(header.item_size).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(count);
    let mut buf = vec![0u8; item * CHUNK_ELEMENTS];
    while out.len() < count {
        let k = (count - out.len()).min(CHUNK_ELEMENTS);
        let bytes = &mut buf[..k * item];
        read_data(r, bytes, header, out.len() * item)?;
        out.extend(bytes.chunks_exact(item).map(|b| convert(decode(elem, big, b))));
    }
    ensure_end(r, header)?;
    if header.fortran_order && header.shape.len() > 1 {
        out = fortran_to_c(&out, &header.shape);
    }
    Ok(out)
}

/// Reads the data as one class label per sample: shape `(n,)` or `(n, 1)`; integers (and
/// integral floats) as `3`, other floats as written by Rust, booleans as `0`/`1`, strings as
/// they are (trailing NULs removed).
///
/// # Errors
/// Another shape, an unsupported dtype, more than `max_values` labels, truncated data, trailing
/// bytes or strings that are not valid text.
pub(crate) fn read_labels(r: &mut impl Read, header: &NpyHeader, max_values: u64) -> Result<Vec<String>, String> {
    if !(header.shape.len() == 1 || (header.shape.len() == 2 && header.shape[1] == 1)) {
        return Err(format!("labels must be one class per sample, shape (n,) or (n, 1); found shape {:?}", header.shape));
    }
    let (elem, big) = header.elem()?;
    let (width, unicode) = match elem {
        Elem::Bytes(w) => (w, false),
        Elem::Unicode(w) => (w * 4, true),
        Elem::F16 | Elem::F32 | Elem::F64 => return read_values(r, header, max_values, label_string),
        // Integers as written, exactly (through f64 they would round past 2^53).
        _ => (usize::try_from(header.item_size).unwrap_or(usize::MAX), false),
    };
    let integer = !matches!(elem, Elem::Bytes(_) | Elem::Unicode(_));
    let count = header.sample_count();
    if count > max_values {
        return Err(format!("npy shape {:?} holds more than the {max_values} labels Trainyard loads", header.shape));
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; width];
    for i in 0..count {
        read_data(r, &mut buf, header, usize::try_from(i).unwrap_or(usize::MAX).saturating_mul(width))?;
        let label = if integer {
            decode_int(elem, big, &buf).to_string()
        } else if unicode {
            buf.chunks_exact(4)
                .map(|c| {
                    let c: [u8; 4] = c.try_into().unwrap_or_default();
                    if big {
                        u32::from_be_bytes(c)
                    } else {
                        u32::from_le_bytes(c)
                    }
                })
                .take_while(|&c| c != 0)
                .map(|c| char::from_u32(c).ok_or_else(|| format!("label {i} is not valid text")))
                .collect::<Result<String, String>>()?
        } else {
            let end = buf.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
            String::from_utf8(buf[..end].to_vec()).map_err(|_| format!("label {i} is not valid UTF-8"))?
        };
        out.push(label);
    }
    ensure_end(r, header)?;
    Ok(out)
}

/// Reads past the data, checking its length, without keeping it.
///
/// # Errors
/// Truncated data or trailing bytes.
pub(crate) fn skip_data(r: &mut impl Read, header: &NpyHeader) -> Result<(), String> {
    let need = header.data_len().ok_or_else(|| format!("npy shape {:?} is too large", header.shape))?;
    let have = std::io::copy(&mut r.take(need), &mut std::io::sink()).map_err(|e| e.to_string())?;
    if have < need {
        return Err(format!("npy data is truncated: shape {:?} needs {need} bytes, found {have}", header.shape));
    }
    ensure_end(r, header)
}

/// A label as text: integral values without a fraction.
fn label_string(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        #[allow(clippy::cast_possible_truncation)]
        let i = v as i64;
        i.to_string()
    } else {
        v.to_string()
    }
}

fn read_data(r: &mut impl Read, buf: &mut [u8], header: &NpyHeader, done: usize) -> Result<(), String> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            let need = header.data_len().unwrap_or(u64::MAX);
            format!("npy data is truncated: shape {:?} needs {need} bytes, found fewer than {}", header.shape, done + buf.len())
        } else {
            e.to_string()
        }
    })
}

fn ensure_end(r: &mut impl Read, header: &NpyHeader) -> Result<(), String> {
    let mut extra = [0u8; 1];
    match r.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(format!("npy data has trailing bytes after shape {:?}", header.shape)),
        Err(e) => Err(e.to_string()),
    }
}

fn bytes<const N: usize>(b: &[u8], big: bool) -> [u8; N] {
    let mut out: [u8; N] = b.try_into().unwrap_or([0; N]);
    if big {
        out.reverse();
    }
    out
}

/// An integer (or boolean) element, exactly.
fn decode_int(elem: Elem, big: bool, b: &[u8]) -> i128 {
    match elem {
        Elem::U64 => i128::from(u64::from_le_bytes(bytes(b, big))),
        Elem::I64 => i128::from(i64::from_le_bytes(bytes(b, big))),
        // Narrower integers and booleans are exact in f64.
        #[allow(clippy::cast_possible_truncation)]
        other => decode(other, big, b) as i128,
    }
}

/// One element as `f64` (64-bit integers beyond 2^53 round).
#[allow(clippy::cast_precision_loss)]
fn decode(elem: Elem, big: bool, b: &[u8]) -> f64 {
    match elem {
        Elem::Bool => f64::from(u8::from(b[0] != 0)),
        Elem::U8 => f64::from(b[0]),
        Elem::I8 => f64::from(i8::from_le_bytes([b[0]])),
        Elem::U16 => f64::from(u16::from_le_bytes(bytes(b, big))),
        Elem::I16 => f64::from(i16::from_le_bytes(bytes(b, big))),
        Elem::U32 => f64::from(u32::from_le_bytes(bytes(b, big))),
        Elem::I32 => f64::from(i32::from_le_bytes(bytes(b, big))),
        Elem::U64 => u64::from_le_bytes(bytes(b, big)) as f64,
        Elem::I64 => i64::from_le_bytes(bytes(b, big)) as f64,
        Elem::F16 => half::f16::from_bits(u16::from_le_bytes(bytes(b, big))).to_f64(),
        Elem::F32 => f64::from(f32::from_le_bytes(bytes(b, big))),
        Elem::F64 => f64::from_le_bytes(bytes(b, big)),
        Elem::Bytes(_) | Elem::Unicode(_) => f64::NAN,
    }
}

/// Reorders a Fortran-order (column-major) array into C order.
fn fortran_to_c<T: Clone>(data: &[T], shape: &[u64]) -> Vec<T> {
    let dims: Vec<usize> = shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect();
    let mut strides = vec![1usize; dims.len()];
    for k in 1..dims.len() {
        strides[k] = strides[k - 1] * dims[k - 1];
    }
    let mut index = vec![0usize; dims.len()];
    let mut out = Vec::with_capacity(data.len());
    for _ in 0..data.len() {
        out.push(data[index.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()].clone());
        for k in (0..dims.len()).rev() {
            index[k] += 1;
            if index[k] < dims[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}

/// Reads a `.npy` header from the start of `r`.
///
/// # Errors
/// A message saying what is wrong: no magic, unknown version, a header over 64 KiB, a dict
/// that does not parse, an object or structured dtype, or a 0-dimensional array.
pub(crate) fn read_header(r: &mut impl Read) -> Result<NpyHeader, String> {
    let mut preamble = [0u8; 8];
    r.read_exact(&mut preamble).map_err(|_| "npy file is shorter than its preamble".to_owned())?;
    if &preamble[..6] != MAGIC {
        return Err("not a NumPy .npy file (no \\x93NUMPY magic)".into());
    }
    let (header_len, len_bytes) = match preamble[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|_| "npy header length is truncated".to_owned())?;
            (usize::from(u16::from_le_bytes(b)), 2)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|_| "npy header length is truncated".to_owned())?;
            let len = usize::try_from(u32::from_le_bytes(b)).unwrap_or(usize::MAX);
            (len, 4)
        }
        v => return Err(format!("unsupported npy format version {v}")),
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(format!("npy header is {header_len} bytes, more than the 64 KiB allowed"));
    }
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header).map_err(|_| "npy header is truncated".to_owned())?;
    let text = std::str::from_utf8(&header).map_err(|_| "npy header is not text".to_owned())?;
    let data_offset = (8 + len_bytes + header_len) as u64;
    parse_dict(text, data_offset)
}

fn parse_dict(text: &str, data_offset: u64) -> Result<NpyHeader, String> {
    let mut p = Parser { s: text.as_bytes(), i: 0 };
    let value = p.value(0)?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err("npy header has text after its dict".into());
    }
    let Py::Dict(entries) = value else { return Err("npy header is not a dict".into()) };
    let get = |key: &str| entries.iter().find(|(k, _)| matches!(k, Py::Str(s) if s == key)).map(|(_, v)| v);
    let descr = match get("descr") {
        Some(Py::Str(s)) => s.clone(),
        Some(Py::Seq(_)) => return Err("structured npy dtypes (record arrays) are not supported".into()),
        _ => return Err("npy header has no 'descr'".into()),
    };
    let fortran_order = match get("fortran_order") {
        Some(Py::Bool(b)) => *b,
        _ => return Err("npy header has no 'fortran_order'".into()),
    };
    let shape = match get("shape") {
        Some(Py::Seq(dims)) => dims
            .iter()
            .map(|d| match d {
                Py::Int(n) => Ok(*n),
                _ => Err("npy shape holds a non-integer".to_owned()),
            })
            .collect::<Result<Vec<u64>, String>>()?,
        _ => return Err("npy header has no 'shape'".into()),
    };
    if shape.is_empty() {
        return Err("npy array is 0-dimensional: it holds no samples".into());
    }
    let item_size = item_size(&descr)?;
    Ok(NpyHeader { descr, fortran_order, shape, item_size, data_offset })
}

/// The element size of a simple dtype string (`<f8`, `|u1`, `<U10`).
fn item_size(descr: &str) -> Result<u64, String> {
    let body = descr.trim_start_matches(['<', '>', '|', '=']);
    let kind = body.chars().next().ok_or_else(|| "npy dtype is empty".to_owned())?;
    if kind == 'O' {
        return Err(format!("npy object arrays (dtype {descr:?}) are not supported: they hold pickled Python objects"));
    }
    let count: u64 = body[kind.len_utf8()..].parse().map_err(|_| format!("unsupported npy dtype {descr:?}"))?;
    match kind {
        'b' | 'i' | 'u' | 'f' | 'c' | 'S' | 'a' | 'V' | 'm' | 'M' => Ok(count),
        'U' => Ok(count * 4),
        _ => Err(format!("unsupported npy dtype {descr:?}")),
    }
}

/// The Python literals a `.npy` header uses.
#[derive(Debug, Clone, PartialEq)]
enum Py {
    Str(String),
    Int(u64),
    Bool(bool),
    None,
    /// A tuple or a list.
    Seq(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn value(&mut self, depth: usize) -> Result<Py, String> {
        if depth > MAX_DEPTH {
            return Err("npy header nests too deeply".into());
        }
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => self.string(q),
            Some(b'(') => self.seq(b')', depth).map(Py::Seq),
            Some(b'[') => self.seq(b']', depth).map(Py::Seq),
            Some(b'{') => self.dict(depth),
            Some(c) if c.is_ascii_digit() => self.int(),
            Some(_) => self.word(),
            None => Err("npy header ends early".into()),
        }
    }

    fn string(&mut self, quote: u8) -> Result<Py, String> {
        self.i += 1;
        let start = self.i;
        while let Some(&c) = self.s.get(self.i) {
            if c == quote {
                let s = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                return Ok(Py::Str(s));
            }
            self.i += 1;
        }
        Err("npy header has an unterminated string".into())
    }

    fn int(&mut self) -> Result<Py, String> {
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        // Python 2 wrote long integers with an L suffix.
        let digits = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        if self.s.get(self.i) == Some(&b'L') {
            self.i += 1;
        }
        digits.parse().map(Py::Int).map_err(|_| format!("npy header integer {digits} is out of range"))
    }

    fn word(&mut self) -> Result<Py, String> {
        for (word, value) in [("True", Py::Bool(true)), ("False", Py::Bool(false)), ("None", Py::None)] {
            if self.s[self.i..].starts_with(word.as_bytes()) {
                self.i += word.len();
                return Ok(value);
            }
        }
        Err(format!("npy header has an unexpected character at byte {}", self.i))
    }

    fn seq(&mut self, close: u8, depth: usize) -> Result<Vec<Py>, String> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.i += 1;
                return Ok(items);
            }
            items.push(self.value(depth + 1)?);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {}
                _ => return Err("npy header has a malformed tuple or list".into()),
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Py, String> {
        self.i += 1;
        let mut entries = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(Py::Dict(entries));
            }
            let key = self.value(depth + 1)?;
            if self.peek() != Some(b':') {
                return Err("npy header has a malformed dict".into());
            }
            self.i += 1;
            let value = self.value(depth + 1)?;
            entries.push((key, value));
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => return Err("npy header has a malformed dict".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data_len: usize) -> Vec<u8> {
        let mut h = header.to_owned();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&u16::try_from(h.len()).unwrap().to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend(std::iter::repeat_n(0u8, data_len));
        out
    }

    #[test]
    fn parses_a_numpy_header() {
        let bytes = npy("{'descr': '|u1', 'fortran_order': False, 'shape': (1797, 8, 8), }", 1797 * 64);
        let h = read_header(&mut bytes.as_slice()).unwrap();
        assert_eq!((h.descr.as_str(), h.fortran_order, h.shape.as_slice(), h.item_size), ("|u1", false, &[1797, 8, 8][..], 1));
        assert_eq!((h.sample_count(), h.sample_dimensions(), h.data_offset), (1797, "8x8x1".to_owned(), 128));
        assert_eq!(h.check_len(bytes.len() as u64), Ok(()));
        assert!(h.check_len(bytes.len() as u64 - 1).unwrap_err().contains("truncated"));
        let v = npy("{'descr': '<i8', 'fortran_order': True, 'shape': (5,)}", 40);
        let h = read_header(&mut v.as_slice()).unwrap();
        assert_eq!((h.sample_dimensions(), h.fortran_order, h.item_size), ("1".to_owned(), true, 8));
    }

    #[test]
    fn refuses_object_structured_scalar_and_huge_headers() {
        let object = npy("{'descr': '|O', 'fortran_order': False, 'shape': (3,), }", 24);
        assert!(read_header(&mut object.as_slice()).unwrap_err().contains("object"));
        let rec = npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }", 12);
        assert!(read_header(&mut rec.as_slice()).unwrap_err().contains("structured"));
        let scalar = npy("{'descr': '<f8', 'fortran_order': False, 'shape': (), }", 8);
        assert!(read_header(&mut scalar.as_slice()).unwrap_err().contains("0-dimensional"));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[2, 0]);
        huge.extend_from_slice(&(1u32 << 20).to_le_bytes());
        assert!(read_header(&mut huge.as_slice()).unwrap_err().contains("64 KiB"));
        assert!(read_header(&mut &b"\x93NUMPY\x01\x00\x05\x00{'a'"[..]).is_err());
    }

    fn header(descr: &str, shape: &[u64], fortran: bool) -> NpyHeader {
        let body = descr.trim_start_matches(['<', '>', '|', '=']);
        NpyHeader {
            descr: descr.into(),
            fortran_order: fortran,
            shape: shape.to_vec(),
            item_size: item_size(body).unwrap(),
            data_offset: 0,
        }
    }

    #[test]
    fn image_shapes_follow_the_layout_rules() {
        let dims = |shape: &[u64]| header("|u1", shape, false).sample_dimensions();
        assert_eq!(dims(&[10, 28, 28]), "28x28x1");
        assert_eq!(dims(&[10, 32, 32, 3]), "32x32x3");
        assert_eq!(dims(&[10, 3, 32, 32]), "32x32x3");
        assert_eq!(dims(&[10, 4, 4, 4]), "4x4x4", "channels-last wins");
        assert_eq!(dims(&[10, 3, 4, 4]), "3x4x4", "too small for NCHW: not images");
        assert_eq!(dims(&[10, 5, 6, 7]), "5x6x7");
        assert_eq!(dims(&[10, 13]), "13");
        assert_eq!(dims(&[10]), "1");
        assert_eq!(header("|u1", &[2, 1, 8, 8], false).image_shape().map(|s| s.channels_last), Some(false));
    }

    #[test]
    fn reads_every_numeric_dtype_in_c_order() {
        let read = |descr: &str, shape: &[u64], fortran: bool, bytes: &[u8]| {
            read_values(&mut &bytes[..], &header(descr, shape, fortran), 100, |v| v)
        };
        assert_eq!(read("|b1", &[3], false, &[0, 1, 2]), Ok(vec![0.0, 1.0, 1.0]));
        assert_eq!(read("|i1", &[2], false, &[0xff, 7]), Ok(vec![-1.0, 7.0]));
        assert_eq!(read(">i2", &[1], false, &[0xff, 0xfe]), Ok(vec![-2.0]));
        assert_eq!(read("<u4", &[1], false, &7u32.to_le_bytes()), Ok(vec![7.0]));
        assert_eq!(read("<f2", &[1], false, &half::f16::from_f32(1.5).to_bits().to_le_bytes()), Ok(vec![1.5]));
        assert_eq!(read(">f8", &[1], false, &2.5f64.to_be_bytes()), Ok(vec![2.5]));
        // Fortran order: columns first.
        assert_eq!(read("|u1", &[2, 3], true, &[1, 4, 2, 5, 3, 6]), Ok(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        assert!(read("|u1", &[2, 3], false, &[1, 2, 3]).unwrap_err().contains("truncated"));
        assert!(read("|u1", &[2], false, &[1, 2, 3]).unwrap_err().contains("trailing"));
        assert!(read("|u1", &[200], false, &[0; 200]).unwrap_err().contains("more than the 100"));
        assert!(read("<c8", &[1], false, &[0; 8]).unwrap_err().contains("not supported"));
        assert!(read("|S3", &[1], false, b"abc").unwrap_err().contains("strings"));
        let big = (i64::MAX - 1).to_le_bytes();
        assert_eq!(read_labels(&mut &big[..], &header("<i8", &[1], false), 10), Ok(vec![(i64::MAX - 1).to_string()]));
        assert_eq!(read_labels(&mut &b"ab\0xyz"[..], &header("|S3", &[2, 1], false), 10), Ok(vec!["ab".to_owned(), "xyz".to_owned()]));
        assert_eq!(read_labels(&mut &0.5f32.to_le_bytes()[..], &header("<f4", &[1], false), 10), Ok(vec!["0.5".to_owned()]));
        assert!(read_labels(&mut &[0u8; 4][..], &header("|u1", &[2, 2], false), 10).unwrap_err().contains("one class per sample"));
    }
}
