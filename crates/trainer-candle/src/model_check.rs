//! [`FileModelInspector`]: model files checked at upload, without executing anything in them or
//! loading their weights, and described for the listing.
//!
//! - safetensors: the 8-byte header length and the JSON header are read (never the tensor data);
//!   the header must fit in the file, every tensor's dtype and shape must match its byte range,
//!   the ranges must tile the data without gaps or overlaps (the `safetensors` crate's
//!   [`Metadata`] checks), and the data must end exactly at the end of the file.
//! - PyTorch zip checkpoints: [`crate::pth::validate_pth`], the restricted reader that refuses
//!   legacy pickles, forbidden globals, compressed storages and unsafe entry names.
//! - ONNX: a bounded walk over the protobuf wire format that checks the file is a `ModelProto`
//!   (an `ir_version`, at least one `opset_import`, a `graph`) and refuses tensors whose data lives
//!   in external files, in the graph's initializers and in node attributes, subgraphs included.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{self, BufReader, Read, Seek},
    path::Path,
};

use safetensors::tensor::Metadata;
use serde_json::{json, Value};
use trainyard_domain::{
    ports::{InspectError, ModelInspector},
    registry::{ModelFormat, ModelInfo},
};

use crate::pth::{self, PthError};

/// The [`ModelInspector`] of the server: checks safetensors, PyTorch zip and ONNX files.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileModelInspector;

impl FileModelInspector {
    #[must_use]
    pub fn new() -> Self {
        Self
    }
}

impl ModelInspector for FileModelInspector {
    fn inspect(&self, path: &Path, format: ModelFormat) -> Result<ModelInfo, InspectError> {
        let metadata = match format {
            ModelFormat::Safetensors => safetensors_info(path)?,
            ModelFormat::Pytorch => pytorch_info(path)?,
            ModelFormat::Onnx => onnx_info(path)?,
            ModelFormat::Binary => return Err(InspectError::Invalid("unrecognised model format".into())),
        };
        Ok(ModelInfo { format, metadata })
    }
}

fn io_error(e: &io::Error) -> InspectError {
    InspectError::Io(e.to_string())
}

// ------------------------------------------------------------------------------------------------
// safetensors

fn invalid_safetensors(reason: impl std::fmt::Display) -> InspectError {
    InspectError::Invalid(format!("invalid safetensors file: {reason}"))
}

fn safetensors_info(path: &Path) -> Result<Value, InspectError> {
    let mut file = File::open(path).map_err(|e| io_error(&e))?;
    let file_len = file.metadata().map_err(|e| io_error(&e))?.len();
    let mut len_bytes = [0u8; 8];
    if file_len < 8 {
        return Err(invalid_safetensors(format!("the file is {file_len} bytes long, shorter than the 8-byte header length")));
    }
    file.read_exact(&mut len_bytes).map_err(|e| io_error(&e))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len >= ModelFormat::MAX_SAFETENSORS_HEADER {
        return Err(invalid_safetensors(format!(
            "the header length {header_len} exceeds the limit of {} bytes",
            ModelFormat::MAX_SAFETENSORS_HEADER
        )));
    }
    let after_length = file_len - 8;
    if header_len > after_length {
        return Err(invalid_safetensors(format!(
            "the header claims {header_len} bytes but only {after_length} follow the length; the header is longer than the file"
        )));
    }
    let mut header = Vec::with_capacity(usize::try_from(header_len).unwrap_or(0));
    file.take(header_len).read_to_end(&mut header).map_err(|e| io_error(&e))?;
    let header = std::str::from_utf8(&header).map_err(|e| invalid_safetensors(format!("the header is not UTF-8: {e}")))?;
    let raw: Value = serde_json::from_str(header).map_err(|e| invalid_safetensors(format!("the header is not JSON: {e}")))?;
    check_tensor_ranges(&raw)?;
    let metadata: Metadata = serde_json::from_value(raw).map_err(invalid_safetensors)?;
    let data_len = metadata.data_len() as u64;
    let present = after_length - header_len;
    if data_len != present {
        return Err(invalid_safetensors(format!(
            "the tensors cover {data_len} bytes of data but the file holds {present} after the header"
        )));
    }
    let tensors = metadata.tensors();
    let parameter_count: u64 = tensors.values().map(|t| t.shape.iter().map(|&d| d as u64).product::<u64>()).sum();
    let dtypes: BTreeSet<String> = tensors
        .values()
        .map(|t| serde_json::to_value(t.dtype).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default())
        .collect();
    let header_metadata: BTreeMap<&String, &String> = metadata.metadata().iter().flatten().collect();
    Ok(json!({
        "tensor_count": tensors.len(),
        "parameter_count": parameter_count,
        "dtypes": dtypes,
        "header_metadata": header_metadata,
    }))
}

/// Says which tensors overlap, or where the data has a gap, before the crate's checks (which
/// only name one tensor).
fn check_tensor_ranges(header: &Value) -> Result<(), InspectError> {
    let Some(entries) = header.as_object() else { return Err(invalid_safetensors("the header is not a JSON object")) };
    let mut ranges: Vec<(u64, u64, &str)> = Vec::new();
    for (name, info) in entries.iter().filter(|(name, _)| name.as_str() != "__metadata__") {
        let offsets = info.get("data_offsets").and_then(Value::as_array);
        let (Some(start), Some(end)) =
            (offsets.and_then(|o| o.first()).and_then(Value::as_u64), offsets.and_then(|o| o.get(1)).and_then(Value::as_u64))
        else {
            return Err(invalid_safetensors(format!("tensor '{name}' has no valid data_offsets")));
        };
        if end < start {
            return Err(invalid_safetensors(format!("tensor '{name}' ends (byte {end}) before it starts (byte {start})")));
        }
        ranges.push((start, end, name));
    }
    ranges.sort_unstable();
    let mut covered = 0u64;
    let mut previous: Option<&str> = None;
    for (start, end, name) in ranges {
        if start < covered {
            let other = previous.unwrap_or("?");
            return Err(invalid_safetensors(format!("tensors '{other}' and '{name}' overlap (byte {start} is inside '{other}')")));
        }
        if start > covered {
            return Err(invalid_safetensors(format!("bytes {covered}..{start} of the data belong to no tensor (before '{name}')")));
        }
        covered = end;
        previous = Some(name);
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// PyTorch

fn pytorch_info(path: &Path) -> Result<Value, InspectError> {
    // The file opens: any error from here on comes from its content (the zip reader reports a
    // corrupt archive as an I/O error too), so it is a refusal, not a server fault.
    File::open(path).map_err(|e| io_error(&e))?;
    let summary = pth::validate_pth(path).map_err(|e| match e {
        PthError::Io(io) => InspectError::Invalid(format!("invalid PyTorch checkpoint: unreadable archive: {io}")),
        other => InspectError::Invalid(format!("invalid PyTorch checkpoint: {other}")),
    })?;
    Ok(json!({
        "tensor_count": summary.tensor_count,
        "parameter_count": summary.parameter_count,
        "dtypes": summary.dtypes,
    }))
}

// ------------------------------------------------------------------------------------------------
// ONNX

/// Deepest nesting of graphs inside node attributes (`If`, `Loop`, `Scan` bodies).
const ONNX_MAX_GRAPH_DEPTH: u32 = 32;
/// Most protobuf fields the walk reads before it gives up on the file.
const ONNX_MAX_FIELDS: u64 = 50_000_000;
/// Longest string (names, producer) kept for the description; longer ones are cut.
const ONNX_MAX_STRING: u64 = 1024;

fn invalid_onnx(reason: impl std::fmt::Display) -> InspectError {
    InspectError::Invalid(format!("invalid ONNX model: {reason}"))
}

/// One field of a protobuf message, its header read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Wire type 0, with its value.
    Varint(u64, u64),
    /// Wire type 2: the payload's length; the walker stands at its first byte.
    Len(u64, u64),
    /// Wire types 1 and 5: fixed-width values, already skipped.
    Fixed(u64),
}

/// A bounded reader of the protobuf wire format over a seekable file.
struct Walker<R> {
    reader: R,
    pos: u64,
    fields: u64,
}

impl<R: Read + Seek> Walker<R> {
    fn byte(&mut self) -> Result<u8, InspectError> {
        let mut b = [0u8; 1];
        self.reader.read_exact(&mut b).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => invalid_onnx("the file ends inside a field"),
            _ => io_error(&e),
        })?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self, end: u64) -> Result<u64, InspectError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            if self.pos >= end {
                return Err(invalid_onnx(format!("a varint runs past the end of its message at byte {}", self.pos)));
            }
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(invalid_onnx(format!("a varint longer than 10 bytes at byte {}", self.pos)))
    }

    fn skip(&mut self, n: u64) -> Result<(), InspectError> {
        let step = i64::try_from(n).map_err(|_| invalid_onnx("a field longer than the file"))?;
        self.reader.seek_relative(step).map_err(|e| io_error(&e))?;
        self.pos += n;
        Ok(())
    }

    /// The next field of the message ending at `end`, or `None` at its end.
    fn next(&mut self, end: u64) -> Result<Option<Field>, InspectError> {
        if self.pos == end {
            return Ok(None);
        }
        self.fields += 1;
        if self.fields > ONNX_MAX_FIELDS {
            return Err(invalid_onnx(format!("more than {ONNX_MAX_FIELDS} protobuf fields")));
        }
        let at = self.pos;
        let key = self.varint(end)?;
        let number = key >> 3;
        if number == 0 {
            return Err(invalid_onnx(format!("field number 0 at byte {at}; this is not a protobuf ModelProto")));
        }
        let fixed = |width: u64, this: &mut Self| -> Result<Option<Field>, InspectError> {
            if this.pos + width > end {
                return Err(invalid_onnx(format!("field {number} at byte {at} runs past the end of its message")));
            }
            this.skip(width)?;
            Ok(Some(Field::Fixed(number)))
        };
        match key & 7 {
            0 => Ok(Some(Field::Varint(number, self.varint(end)?))),
            1 => fixed(8, self),
            5 => fixed(4, self),
            2 => {
                let len = self.varint(end)?;
                if len > end - self.pos {
                    return Err(invalid_onnx(format!(
                        "field {number} at byte {at} claims {len} bytes but its message has {} left",
                        end - self.pos
                    )));
                }
                Ok(Some(Field::Len(number, len)))
            }
            wire => Err(invalid_onnx(format!("field {number} at byte {at} has wire type {wire}, which ONNX never uses"))),
        }
    }

    /// A string field's text, cut to [`ONNX_MAX_STRING`] bytes.
    fn string(&mut self, len: u64) -> Result<String, InspectError> {
        let keep = len.min(ONNX_MAX_STRING);
        let mut buf = vec![0u8; usize::try_from(keep).unwrap_or(0)];
        self.reader.read_exact(&mut buf).map_err(|e| io_error(&e))?;
        self.pos += keep;
        self.skip(len - keep)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// What the walk found.
#[derive(Debug, Default)]
struct OnnxSummary {
    ir_version: Option<u64>,
    producer_name: Option<String>,
    producer_version: Option<String>,
    opsets: Vec<(String, u64)>,
    graph_name: Option<String>,
    graphs: u32,
    initializers: u64,
    parameter_count: u64,
    dtypes: BTreeSet<&'static str>,
}

fn onnx_info(path: &Path) -> Result<Value, InspectError> {
    let file = File::open(path).map_err(|e| io_error(&e))?;
    let len = file.metadata().map_err(|e| io_error(&e))?.len();
    let mut walker = Walker { reader: BufReader::with_capacity(64 * 1024, file), pos: 0, fields: 0 };
    let mut summary = OnnxSummary::default();
    while let Some(field) = walker.next(len)? {
        let end = walker.pos + if let Field::Len(_, n) = field { n } else { 0 };
        match field {
            Field::Varint(1, v) => summary.ir_version = Some(v),
            Field::Len(2, n) => summary.producer_name = Some(walker.string(n)?),
            Field::Len(3, n) => summary.producer_version = Some(walker.string(n)?),
            Field::Len(7, _) => {
                summary.graphs += 1;
                graph(&mut walker, end, 0, &mut summary)?;
            }
            Field::Len(8, _) => summary.opsets.push(opset(&mut walker, end)?),
            Field::Varint(n @ (2 | 3 | 7 | 8), _) | Field::Fixed(n @ (1 | 2 | 3 | 7 | 8)) | Field::Len(n @ 1, _) => {
                return Err(invalid_onnx(format!("ModelProto field {n} has the wrong wire type; this is not an ONNX model")));
            }
            Field::Len(_, n) => walker.skip(n)?,
            Field::Varint(..) | Field::Fixed(_) => {}
        }
    }
    let Some(ir_version) = summary.ir_version else {
        return Err(invalid_onnx("no ir_version (field 1); this is not an ONNX ModelProto"));
    };
    if summary.graphs != 1 {
        return Err(invalid_onnx(format!("a model holds exactly one graph (field 7), this file has {}", summary.graphs)));
    }
    if summary.opsets.is_empty() {
        return Err(invalid_onnx("no opset_import (field 8); the operators' versions are unknown"));
    }
    let opsets: Vec<Value> = summary
        .opsets
        .iter()
        .map(|(domain, version)| json!({ "domain": if domain.is_empty() { "ai.onnx" } else { domain }, "version": version }))
        .collect();
    Ok(json!({
        "ir_version": ir_version,
        "opsets": opsets,
        "producer_name": summary.producer_name,
        "producer_version": summary.producer_version,
        "graph_name": summary.graph_name,
        "initializer_count": summary.initializers,
        "tensor_count": summary.initializers,
        "parameter_count": summary.parameter_count,
        "dtypes": summary.dtypes,
    }))
}

/// `OperatorSetIdProto`: domain (1) and version (2).
fn opset<R: Read + Seek>(w: &mut Walker<R>, end: u64) -> Result<(String, u64), InspectError> {
    let (mut domain, mut version) = (String::new(), None);
    while let Some(field) = w.next(end)? {
        match field {
            Field::Len(1, n) => domain = w.string(n)?,
            Field::Varint(2, v) => version = Some(v),
            Field::Len(_, n) => w.skip(n)?,
            _ => {}
        }
    }
    let version = version.ok_or_else(|| invalid_onnx(format!("opset_import of domain '{domain}' has no version")))?;
    Ok((domain, version))
}

/// `GraphProto`: nodes (1), name (2), initializers (5), sparse initializers (15). The top graph
/// (`depth` 0) counts its initializers; nested graphs are only checked.
fn graph<R: Read + Seek>(w: &mut Walker<R>, end: u64, depth: u32, summary: &mut OnnxSummary) -> Result<(), InspectError> {
    if depth > ONNX_MAX_GRAPH_DEPTH {
        return Err(invalid_onnx(format!("graphs nested deeper than {ONNX_MAX_GRAPH_DEPTH}")));
    }
    while let Some(field) = w.next(end)? {
        let inner_end = w.pos + if let Field::Len(_, n) = field { n } else { 0 };
        match field {
            Field::Len(1, _) => node(w, inner_end, depth, summary)?,
            Field::Len(2, n) if depth == 0 => summary.graph_name = Some(w.string(n)?),
            Field::Len(5, _) => {
                let t = tensor(w, inner_end, "initializer")?;
                if depth == 0 {
                    summary.initializers += 1;
                    summary.parameter_count = summary.parameter_count.saturating_add(t.elements);
                    summary.dtypes.insert(t.dtype);
                }
            }
            Field::Len(15, _) => sparse_tensor(w, inner_end, "sparse initializer")?,
            Field::Len(_, n) => w.skip(n)?,
            _ => {}
        }
    }
    Ok(())
}

/// `NodeProto`: its attributes (5) may hold tensors and subgraphs.
fn node<R: Read + Seek>(w: &mut Walker<R>, end: u64, depth: u32, summary: &mut OnnxSummary) -> Result<(), InspectError> {
    while let Some(field) = w.next(end)? {
        match field {
            Field::Len(5, n) => {
                let inner_end = w.pos + n;
                attribute(w, inner_end, depth, summary)?;
            }
            Field::Len(_, n) => w.skip(n)?,
            _ => {}
        }
    }
    Ok(())
}

/// `AttributeProto`: tensor `t` (5), graph `g` (6), `tensors` (11), `graphs` (12), sparse
/// tensors (22, 23).
fn attribute<R: Read + Seek>(w: &mut Walker<R>, end: u64, depth: u32, summary: &mut OnnxSummary) -> Result<(), InspectError> {
    while let Some(field) = w.next(end)? {
        let inner_end = w.pos + if let Field::Len(_, n) = field { n } else { 0 };
        match field {
            Field::Len(5 | 11, _) => {
                tensor(w, inner_end, "node attribute tensor")?;
            }
            Field::Len(6 | 12, _) => graph(w, inner_end, depth + 1, summary)?,
            Field::Len(22 | 23, _) => sparse_tensor(w, inner_end, "node attribute sparse tensor")?,
            Field::Len(_, n) => w.skip(n)?,
            _ => {}
        }
    }
    Ok(())
}

/// `SparseTensorProto`: values (1) and indices (2) are tensors.
fn sparse_tensor<R: Read + Seek>(w: &mut Walker<R>, end: u64, what: &str) -> Result<(), InspectError> {
    while let Some(field) = w.next(end)? {
        match field {
            Field::Len(1 | 2, n) => {
                let inner_end = w.pos + n;
                tensor(w, inner_end, what)?;
            }
            Field::Len(_, n) => w.skip(n)?,
            _ => {}
        }
    }
    Ok(())
}

/// What a tensor's header says.
struct TensorFacts {
    elements: u64,
    dtype: &'static str,
}

/// `TensorProto`: dims (1, packed or not), data_type (2), name (8), external_data (13),
/// data_location (14, `EXTERNAL` = 1). A tensor whose data lives outside the file is refused.
fn tensor<R: Read + Seek>(w: &mut Walker<R>, end: u64, what: &str) -> Result<TensorFacts, InspectError> {
    let (mut elements, mut dtype, mut name, mut external) = (1u64, 0u64, String::new(), false);
    while let Some(field) = w.next(end)? {
        match field {
            Field::Varint(1, d) => elements = elements.saturating_mul(d),
            Field::Len(1, n) => {
                let packed_end = w.pos + n;
                while w.pos < packed_end {
                    elements = elements.saturating_mul(w.varint(packed_end)?);
                }
            }
            Field::Varint(2, t) => dtype = t,
            Field::Len(8, n) => name = w.string(n)?,
            Field::Len(13, n) => {
                external = true;
                w.skip(n)?;
            }
            Field::Varint(14, location) => external |= location == 1,
            Field::Len(_, n) => w.skip(n)?,
            _ => {}
        }
    }
    if external {
        return Err(invalid_onnx(format!(
            "{what} '{name}' keeps its data in an external file (external data); upload a self-contained model \
             (onnx.save_model(model, path, save_as_external_data=False))"
        )));
    }
    Ok(TensorFacts { elements, dtype: onnx_dtype(dtype) })
}

/// The name of an ONNX `TensorProto.DataType`.
fn onnx_dtype(code: u64) -> &'static str {
    const NAMES: [&str; 24] = [
        "undefined",
        "float",
        "uint8",
        "int8",
        "uint16",
        "int16",
        "int32",
        "int64",
        "string",
        "bool",
        "float16",
        "double",
        "uint32",
        "uint64",
        "complex64",
        "complex128",
        "bfloat16",
        "float8e4m3fn",
        "float8e4m3fnuz",
        "float8e5m2",
        "float8e5m2fnuz",
        "uint4",
        "int4",
        "float4e2m1",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("unknown")
}

#[cfg(test)]
mod tests;
