//! Tests of the model checks: well-formed files of each format are described, hostile ones are
//! refused with their reason.

use std::{fs, path::PathBuf};

use super::*;
use crate::pth::tests::zip_of;

fn inspect(bytes: &[u8], format: ModelFormat) -> Result<ModelInfo, InspectError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model");
    fs::write(&path, bytes).unwrap();
    FileModelInspector::new().inspect(&path, format)
}

fn refusal(bytes: &[u8], format: ModelFormat) -> String {
    match inspect(bytes, format) {
        Err(InspectError::Invalid(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A safetensors file with this header and `data_len` zero bytes of data.
fn safetensors(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

#[test]
fn safetensors_headers_are_described() {
    let header = r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[24,30]}}"#;
    let info = inspect(&safetensors(header, 30), ModelFormat::Safetensors).unwrap();
    assert_eq!(info.format, ModelFormat::Safetensors);
    assert_eq!(info.metadata["tensor_count"], 2);
    assert_eq!(info.metadata["parameter_count"], 9);
    assert_eq!(info.metadata["dtypes"], json!(["BF16", "F32"]));
    assert_eq!(info.metadata["header_metadata"], json!({"format": "pt"}));
}

#[test]
fn hostile_safetensors_are_refused_with_the_reason() {
    let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let m = refusal(&safetensors(overlap, 12), ModelFormat::Safetensors);
    assert!(m.contains("'a' and 'b' overlap"), "{m}");

    let mut longer = safetensors(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 4);
    longer[..8].copy_from_slice(&10_000u64.to_le_bytes());
    let m = refusal(&longer, ModelFormat::Safetensors);
    assert!(m.contains("longer than the file"), "{m}");

    let mut absurd = longer.clone();
    absurd[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(refusal(&absurd, ModelFormat::Safetensors).contains("exceeds the limit"));

    let short_data = safetensors(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8);
    assert!(refusal(&short_data, ModelFormat::Safetensors).contains("cover 16 bytes of data but the file holds 8"));

    let wrong_size = safetensors(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8);
    assert!(refusal(&wrong_size, ModelFormat::Safetensors).contains("invalid shape, data type, or offset"));

    let gap = safetensors(r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}"#, 4);
    assert!(refusal(&gap, ModelFormat::Safetensors).contains("bytes 0..2 of the data belong to no tensor"));

    let backwards = safetensors(r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,2]}}"#, 4);
    assert!(refusal(&backwards, ModelFormat::Safetensors).contains("ends (byte 2) before it starts"));

    assert!(refusal(&safetensors("{not json", 0), ModelFormat::Safetensors).contains("not JSON"));
    assert!(refusal(b"tiny", ModelFormat::Safetensors).contains("shorter than the 8-byte header length"));
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

#[test]
fn pytorch_checkpoints_are_described_and_hostile_ones_refused() {
    let info = inspect(&fs::read(fixture("owner_tiny.pth")).unwrap(), ModelFormat::Pytorch).unwrap();
    assert!(info.metadata["tensor_count"].as_u64().unwrap() >= 10, "{}", info.metadata);
    assert!(info.metadata["parameter_count"].as_u64().unwrap() > 0);
    assert_eq!(info.metadata["dtypes"], json!(["float32"]));

    // GLOBAL os.system, a string argument, TUPLE1, REDUCE, STOP: what a malicious pickle does.
    let system = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.";
    let m = refusal(&zip_of(&[("archive/data.pkl", system), ("archive/version", b"3\n")]), ModelFormat::Pytorch);
    assert!(m.contains("forbidden global 'os.system'"), "{m}");

    let empty_dict = b"\x80\x02}q\x00.";
    let m = refusal(&zip_of(&[("archive/data.pkl", empty_dict), ("archive/../evil", b"x")]), ModelFormat::Pytorch);
    assert!(m.contains("'archive/../evil' is not allowed"), "{m}");

    let m = refusal(b"\x80\x02\x8a\x0alegacy magic", ModelFormat::Pytorch);
    assert!(m.contains("legacy"), "{m}");
    let m = refusal(b"PK\x03\x04 but not really a zip", ModelFormat::Pytorch);
    assert!(m.starts_with("invalid PyTorch checkpoint"), "{m}");
}

/// The protobuf wire format, for building ONNX files.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn int_field(number: u64, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(number << 3, &mut out);
    varint(v, &mut out);
    out
}

fn len_field(number: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint((number << 3) | 2, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// A float tensor `name` of shape 2x3 with its data inline, plus `extra` fields.
fn tensor(name: &str, extra: &[Vec<u8>]) -> Vec<u8> {
    let mut dims = Vec::new();
    varint(2, &mut dims);
    varint(3, &mut dims);
    let mut parts = vec![len_field(1, &dims), int_field(2, 1), len_field(8, name.as_bytes()), len_field(9, &[0u8; 24])];
    parts.extend_from_slice(extra);
    concat(&parts)
}

fn model(graph: &[u8]) -> Vec<u8> {
    let opset = concat(&[len_field(1, b""), int_field(2, 17)]);
    concat(&[int_field(1, 8), len_field(2, b"pytorch"), len_field(7, graph), len_field(8, &opset)])
}

fn relu_graph(initializer: &[u8]) -> Vec<u8> {
    let node = concat(&[len_field(1, b"x"), len_field(2, b"y"), len_field(4, b"Relu")]);
    concat(&[len_field(1, &node), len_field(2, b"main"), len_field(5, initializer)])
}

#[test]
fn onnx_models_are_described() {
    let bytes = model(&relu_graph(&tensor("w", &[])));
    assert_eq!(ModelFormat::detect(&bytes, None, None), ModelFormat::Onnx);
    let info = inspect(&bytes, ModelFormat::Onnx).unwrap();
    assert_eq!(info.metadata["ir_version"], 8);
    assert_eq!(info.metadata["opsets"], json!([{ "domain": "ai.onnx", "version": 17 }]));
    assert_eq!(info.metadata["producer_name"], "pytorch");
    assert_eq!(info.metadata["graph_name"], "main");
    assert_eq!(info.metadata["initializer_count"], 1);
    assert_eq!(info.metadata["parameter_count"], 6);
    assert_eq!(info.metadata["dtypes"], json!(["float"]));
}

#[test]
fn onnx_external_data_is_refused_wherever_it_hides() {
    let location = concat(&[len_field(1, b"location"), len_field(2, b"weights.bin")]);
    let by_location = model(&relu_graph(&tensor("w", &[int_field(14, 1)])));
    let m = refusal(&by_location, ModelFormat::Onnx);
    assert!(m.contains("initializer 'w' keeps its data in an external file"), "{m}");
    let by_entries = model(&relu_graph(&tensor("w", &[len_field(13, &location)])));
    assert!(refusal(&by_entries, ModelFormat::Onnx).contains("external"));

    // A Constant node's value, inside the body of an If node's subgraph.
    let constant = concat(&[
        len_field(4, b"Constant"),
        len_field(5, &concat(&[len_field(1, b"value"), len_field(5, &tensor("c", &[int_field(14, 1)]))])),
    ]);
    let body = len_field(1, &constant);
    let if_node = concat(&[len_field(4, b"If"), len_field(5, &concat(&[len_field(1, b"then_branch"), len_field(6, &body)]))]);
    let m = refusal(&model(&len_field(1, &if_node)), ModelFormat::Onnx);
    assert!(m.contains("node attribute tensor 'c'"), "{m}");

    // Sparse initializers too.
    let sparse = concat(&[len_field(1, &tensor("sv", &[len_field(13, &location)])), len_field(2, &tensor("si", &[]))]);
    assert!(refusal(&model(&len_field(15, &sparse)), ModelFormat::Onnx).contains("sparse initializer 'sv'"));
}

#[test]
fn malformed_onnx_is_refused_with_the_reason() {
    let graph = relu_graph(&tensor("w", &[]));
    let no_graph = concat(&[int_field(1, 8), len_field(8, &concat(&[int_field(2, 17)]))]);
    assert!(refusal(&no_graph, ModelFormat::Onnx).contains("exactly one graph"));
    let no_ir = concat(&[len_field(7, &graph), len_field(8, &int_field(2, 17))]);
    assert!(refusal(&no_ir, ModelFormat::Onnx).contains("no ir_version"));
    let no_opset = concat(&[int_field(1, 8), len_field(7, &graph)]);
    assert!(refusal(&no_opset, ModelFormat::Onnx).contains("no opset_import"));

    let mut truncated = model(&graph);
    truncated.truncate(truncated.len() - 5);
    assert!(refusal(&truncated, ModelFormat::Onnx).starts_with("invalid ONNX model"));
    let mut cut_graph = int_field(1, 8);
    cut_graph.extend_from_slice(&[0x3a, 0xe8, 0x07, 0x0a]);
    let m = refusal(&cut_graph, ModelFormat::Onnx);
    assert!(m.contains("field 7 at byte 2 claims 1000 bytes but its message has 1 left"), "{m}");

    assert!(refusal(b"this is plain text, not a protobuf", ModelFormat::Onnx).starts_with("invalid ONNX model"));
    assert!(refusal(&[0x0b, 0x01], ModelFormat::Onnx).contains("wire type 3"));
    assert!(refusal(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], ModelFormat::Onnx).contains("varint"));
    let wrong_type = concat(&[len_field(1, b"8"), len_field(7, &graph), len_field(8, &int_field(2, 17))]);
    assert!(refusal(&wrong_type, ModelFormat::Onnx).contains("wrong wire type"));

    // Deeply nested subgraphs stop at the cap instead of exhausting the stack.
    let mut nested = Vec::new();
    for _ in 0..40 {
        let node = concat(&[len_field(4, b"If"), len_field(5, &len_field(6, &nested))]);
        nested = len_field(1, &node);
    }
    assert!(refusal(&model(&nested), ModelFormat::Onnx).contains("nested deeper"));
}

// Property 43: arbitrary bytes, and valid files with bytes overwritten, never panic the model
// checks: each file is either described or refused with a reason.
#[test]
fn prop43_arbitrary_bytes_never_panic_the_model_checks() {
    fn prop(bytes: Vec<u8>, edits: Vec<(u16, u8)>, pick: u8) -> bool {
        let valid = [
            safetensors(r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#, 24),
            model(&relu_graph(&tensor("w", &[]))),
            zip_of(&[("archive/data.pkl", b"\x80\x02}q\x00."), ("archive/version", b"3\n")]),
        ];
        let formats = [ModelFormat::Safetensors, ModelFormat::Onnx, ModelFormat::Pytorch];
        let i = usize::from(pick) % formats.len();
        let mut edited = valid[i].clone();
        for (at, byte) in &edits {
            let len = edited.len();
            edited[usize::from(*at) % len] = *byte;
        }
        [bytes, edited].iter().all(|b| match inspect(b, formats[i]) {
            Ok(info) => info.format == formats[i] && info.metadata.is_object(),
            Err(InspectError::Invalid(reason)) => !reason.is_empty(),
            Err(InspectError::Io(_)) => false,
        })
    }
    quickcheck::QuickCheck::new().tests(300).quickcheck(prop as fn(Vec<u8>, Vec<(u16, u8)>, u8) -> bool);
}
