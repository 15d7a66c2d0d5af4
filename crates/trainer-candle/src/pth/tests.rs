//! Tests of the `.pth` reader and writer: round trips through [`write_pth`], hand-built pickles with the
//! opcodes PyTorch emits, and hostile inputs that must be refused with the right error and no panic.

use std::io::{Cursor, Write};

use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use zip::{write::SimpleFileOptions, CompressionMethod, ZipWriter};

use super::*;

// ---------------------------------------------------------------------------------------------------
// Fixtures

/// The owner's model with tiny sizes: vocabulary V, embedding E, hidden H, `layers` LSTM layers.
fn owner_state_dict(v: usize, e: usize, h: usize, layers: usize) -> Vec<(String, Vec<f32>, Vec<usize>)> {
    let mut params = vec![("embedding.weight".to_owned(), vec![v, e])];
    for layer in 0..layers {
        let input = if layer == 0 { e } else { h };
        params.push((format!("lstm.weight_ih_l{layer}"), vec![4 * h, input]));
        params.push((format!("lstm.weight_hh_l{layer}"), vec![4 * h, h]));
        params.push((format!("lstm.bias_ih_l{layer}"), vec![4 * h]));
        params.push((format!("lstm.bias_hh_l{layer}"), vec![4 * h]));
    }
    params.push(("fc.weight".to_owned(), vec![v, h]));
    params.push(("fc.bias".to_owned(), vec![v]));
    let mut next = 0.0f32;
    params
        .into_iter()
        .map(|(name, shape)| {
            let data = (0..shape.iter().product::<usize>())
                .map(|_| {
                    next += 0.25;
                    next.sin()
                })
                .collect();
            (name, data, shape)
        })
        .collect()
}

fn borrowed(state: &[(String, Vec<f32>, Vec<usize>)]) -> Vec<(String, &[f32], &[usize])> {
    state.iter().map(|(n, d, s)| (n.clone(), d.as_slice(), s.as_slice())).collect()
}

fn owner_extras(chars: &[char], e: i64, h: i64, layers: i64) -> Vec<(String, PickleValue)> {
    vec![
        ("vocab_size".to_owned(), PickleValue::Int(chars.len() as i64)),
        ("embedding_dim".to_owned(), PickleValue::Int(e)),
        ("hidden_dim".to_owned(), PickleValue::Int(h)),
        ("num_layers".to_owned(), PickleValue::Int(layers)),
        ("vocabulary".to_owned(), vocabulary_value(chars)),
    ]
}

fn owner_tiny_bytes() -> Vec<u8> {
    let state = owner_state_dict(5, 4, 3, 2);
    write_pth_bytes(&borrowed(&state), &owner_extras(&['a', 'b', ' ', '\n', 'é'], 4, 3, 2)).unwrap()
}

/// A zip of stored entries, in order.
pub(crate) fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in entries {
        zip.start_file(*name, SimpleFileOptions::default().compression_method(CompressionMethod::Stored)).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// A checkpoint whose `data.pkl` is `pickle` and whose storages are `storages` (`archive/data/<key>`).
fn checkpoint(pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let names: Vec<String> = storages.iter().map(|(key, _)| format!("archive/data/{key}")).collect();
    let mut entries: Vec<(&str, &[u8])> = vec![("archive/data.pkl", pickle)];
    entries.extend(names.iter().zip(storages).map(|(name, (_, bytes))| (name.as_str(), bytes.as_slice())));
    entries.push(("archive/version", b"3\n"));
    zip_of(&entries)
}

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// Hand-written pickle opcodes, independent of the writer.
#[derive(Default)]
struct P(Vec<u8>);

impl P {
    fn new() -> Self {
        Self(vec![0x80, 2])
    }
    fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn global(self, module: &str, name: &str) -> Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    fn str(self, s: &str) -> Self {
        let len = (s.len() as u32).to_le_bytes();
        self.op(b"X").op(&len).op(s.as_bytes())
    }
    fn int(self, i: i32) -> Self {
        self.op(b"J").op(&i.to_le_bytes())
    }
    fn long(self, i: i64) -> Self {
        self.op(&[0x8a, 8]).op(&i.to_le_bytes())
    }
    fn ints(mut self, values: &[i64]) -> Self {
        self = self.op(b"(");
        for &v in values {
            self = self.long(v);
        }
        self.op(b"t")
    }
    /// `_rebuild_tensor_v2(('storage', <class>, key, 'cpu', numel), offset, shape, stride, False, OrderedDict())`.
    fn tensor(self, class: &str, key: &str, numel: i64, offset: i64, shape: &[i64], stride: &[i64]) -> Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"((")
            .str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .long(numel)
            .op(b"tQ")
            .long(offset)
            .ints(shape)
            .ints(stride)
            .op(&[0x89])
            .global("collections", "OrderedDict")
            .op(b")Rt")
            .op(b"R")
    }
    fn stop(self) -> Vec<u8> {
        self.op(b".").0
    }
}

/// `{name: tensor}` as a plain dict.
fn one_tensor(name: &str, class: &str, numel: i64, offset: i64, shape: &[i64], stride: &[i64]) -> Vec<u8> {
    P::new().op(b"}").str(name).tensor(class, "0", numel, offset, shape, stride).op(b"s").stop()
}

/// The owner fixture's `data.pkl` and storages (key, bytes).
fn owner_parts() -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let bytes = owner_tiny_bytes();
    let mut zip = zip::ZipArchive::new(Cursor::new(&bytes)).unwrap();
    let mut pickle = Vec::new();
    let mut storages = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap();
        let name = entry.name().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if name == "archive/data.pkl" {
            pickle = data;
        } else if let Some(key) = name.strip_prefix("archive/data/") {
            storages.push((key.to_owned(), data));
        }
    }
    (pickle, storages)
}

fn read(bytes: &[u8]) -> Result<PthCheckpoint, PthError> {
    read_pth_bytes(bytes)
}

fn unpickled(pickle: &[u8]) -> Result<PickleValue, PthError> {
    read(&checkpoint(pickle, &[])).map(|c| c.root)
}

// ---------------------------------------------------------------------------------------------------
// Round trips

#[test]
fn owner_layout_round_trips_through_writer_and_reader() {
    let state = owner_state_dict(5, 4, 3, 2);
    let chars = ['a', 'b', ' ', '\n', 'é'];
    let bytes = write_pth_bytes(&borrowed(&state), &owner_extras(&chars, 4, 3, 2)).unwrap();
    let ckpt = read(&bytes).unwrap();

    assert_eq!(ckpt.tensors.len(), 1 + 4 * 2 + 2);
    for (name, data, shape) in &state {
        let tensor = &ckpt.tensors[name];
        assert_eq!(&tensor.shape, shape, "{name}");
        assert_eq!(&tensor.data, data, "{name}");
        assert_eq!(tensor.dtype, "float32");
    }
    assert_eq!(ckpt.get(&["vocab_size"]), Some(&PickleValue::Int(5)));
    assert_eq!(ckpt.get(&["hidden_dim"]).and_then(PickleValue::as_int), Some(3));
    assert_eq!(ckpt.get(&["vocabulary", "vocab_size"]), Some(&PickleValue::Int(5)));
    assert_eq!(ckpt.char_vocabulary().unwrap(), chars);
    assert!(matches!(ckpt.get(&["model_state_dict", "fc.bias"]), Some(PickleValue::Tensor(_))));

    let fc = ckpt.to_candle("fc.weight", &Device::Cpu).unwrap();
    assert_eq!(fc.dims(), &[5, 3]);
    assert_eq!(fc.flatten_all().unwrap().to_vec1::<f32>().unwrap(), state[state.len() - 2].1);
    assert!(ckpt.to_candle("nope", &Device::Cpu).is_err());

    let summary = validate_pth_with_limits(Cursor::new(&bytes), &PthLimits::default()).unwrap();
    assert_eq!(summary.tensor_count, 11);
    assert_eq!(summary.parameter_count, state.iter().map(|(_, d, _)| d.len() as u64).sum::<u64>());
    assert_eq!(summary.dtypes, BTreeSet::from(["float32".to_owned()]));
}

#[test]
fn writer_output_has_the_torch_save_layout() {
    let bytes = owner_tiny_bytes();
    let mut zip = zip::ZipArchive::new(Cursor::new(&bytes)).unwrap();
    let names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
    assert_eq!(names[0], "archive/data.pkl");
    assert!(names.contains(&"archive/version".to_owned()));
    assert!(names.contains(&"archive/byteorder".to_owned()));
    assert!(names.contains(&"archive/.data/serialization_id".to_owned()));
    assert!(names.contains(&"archive/data/10".to_owned()));
    for i in 0..zip.len() {
        let entry = zip.by_index(i).unwrap();
        assert_eq!(entry.compression(), CompressionMethod::Stored);
        if entry.name().unwrap().starts_with("archive/data/") {
            assert_eq!(entry.data_start().unwrap() % 64, 0, "tensor data aligned like torch.save");
        }
    }
    let mut version = String::new();
    std::io::Read::read_to_string(&mut zip.by_name("archive/version").unwrap(), &mut version).unwrap();
    assert_eq!(version, "3\n");
    // Deterministic output.
    assert_eq!(bytes, owner_tiny_bytes());
}

#[test]
fn bare_state_dict_and_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.pth");
    let weight = [1.0f32, -2.0, 3.5, f32::MIN_POSITIVE, 0.0, -0.0];
    write_pth(&path, &[("w".to_owned(), &weight[..], &[2, 3][..]), ("empty".to_owned(), &[][..], &[0, 4][..])], &[]).unwrap();
    assert!(!dir.path().join(".model.pth.tmp").exists());
    let ckpt = read_pth(&path).unwrap();
    assert_eq!(ckpt.tensors["w"].data, weight);
    assert_eq!(ckpt.tensors["w"].shape, [2, 3]);
    assert_eq!(ckpt.tensors["empty"].shape, [0, 4]);
    assert!(ckpt.tensors["empty"].data.is_empty());
    assert!(ckpt.get(&["model_state_dict"]).is_none());
    let summary = validate_pth(&path).unwrap();
    assert_eq!((summary.tensor_count, summary.parameter_count), (2, 6));
}

#[test]
fn writer_refuses_inconsistent_input() {
    let data = [1.0f32; 3];
    let bad_shape = write_pth_bytes(&[("w".to_owned(), &data[..], &[2, 2][..])], &[]);
    assert!(matches!(bad_shape, Err(PthError::InvalidInput(_))), "{bad_shape:?}");
    let twice = write_pth_bytes(&[("w".to_owned(), &data[..], &[3][..]), ("w".to_owned(), &data[..], &[3][..])], &[]);
    assert!(matches!(twice, Err(PthError::InvalidInput(_))));
    let shadow = write_pth_bytes(&[], &[("model_state_dict".to_owned(), PickleValue::None)]);
    assert!(matches!(shadow, Err(PthError::InvalidInput(_))));
    let tensor_extra = write_pth_bytes(&[], &[("g".to_owned(), PickleValue::Global("torch.FloatStorage".into()))]);
    assert!(matches!(tensor_extra, Err(PthError::InvalidInput(_))));
}

#[test]
fn extras_of_every_plain_kind_round_trip() {
    let big_list = PickleValue::List((0..2500).map(PickleValue::Int).collect());
    let extras = vec![
        ("none".to_owned(), PickleValue::None),
        ("flags".to_owned(), PickleValue::Tuple(vec![PickleValue::Bool(true), PickleValue::Bool(false)])),
        (
            "ints".to_owned(),
            PickleValue::List(
                [0, 255, 256, 65535, 65536, -1, i64::from(i32::MIN), i64::MIN, i64::MAX, 1 << 40].map(PickleValue::Int).to_vec(),
            ),
        ),
        ("lr".to_owned(), PickleValue::Float(1e-4)),
        ("blob".to_owned(), PickleValue::Bytes((0..=255).collect())),
        ("empty_blob".to_owned(), PickleValue::Bytes(Vec::new())),
        ("tuple5".to_owned(), PickleValue::Tuple((0..5).map(PickleValue::Int).collect())),
        ("empty".to_owned(), PickleValue::Tuple(Vec::new())),
        ("big".to_owned(), big_list),
        (
            "nested".to_owned(),
            PickleValue::Dict(vec![(PickleValue::Str("k\nwith newline".into()), PickleValue::Str("collections.OrderedDict".into()))]),
        ),
    ];
    let bytes = write_pth_bytes(&[], &extras).unwrap();
    let ckpt = read(&bytes).unwrap();
    for (key, value) in &extras {
        assert_eq!(ckpt.get(&[key]), Some(value), "{key}");
    }
    assert!(ckpt.get(&["model_state_dict"]).and_then(PickleValue::as_dict).unwrap().is_empty());
}

fn arbitrary_name(g: &mut Gen) -> String {
    let alphabet: Vec<char> = "abcxyz._0123456789é".chars().collect();
    let len = 1 + usize::arbitrary(g) % 12;
    (0..len).map(|_| *g.choose(&alphabet).unwrap()).collect()
}

#[derive(Debug, Clone)]
struct ArbitraryCheckpoint {
    tensors: Vec<(String, Vec<f32>, Vec<usize>)>,
    chars: Vec<char>,
    with_extras: bool,
}

impl Arbitrary for ArbitraryCheckpoint {
    fn arbitrary(g: &mut Gen) -> Self {
        let count = usize::arbitrary(g) % 6;
        let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
        for _ in 0..count {
            let name = arbitrary_name(g);
            if tensors.iter().any(|(n, _, _)| *n == name) {
                continue;
            }
            let dims = usize::arbitrary(g) % 4;
            let shape: Vec<usize> = (0..dims).map(|_| usize::arbitrary(g) % 5).collect();
            let data = (0..shape.iter().product::<usize>()).map(|_| f32::arbitrary(g)).collect();
            tensors.push((name, data, shape));
        }
        let mut chars: Vec<char> = Vec::new();
        for _ in 0..1 + usize::arbitrary(g) % 20 {
            let c = char::arbitrary(g);
            if !chars.contains(&c) {
                chars.push(c);
            }
        }
        Self { tensors, chars, with_extras: bool::arbitrary(g) }
    }
}

#[test]
fn property_39_round_trip() {
    // Property 39: a checkpoint written by write_pth reads back identical tensors and vocabulary
    fn prop(ckpt: ArbitraryCheckpoint) -> bool {
        let extras = if ckpt.with_extras { owner_extras(&ckpt.chars, 4, 3, 2) } else { Vec::new() };
        let bytes = write_pth_bytes(&borrowed(&ckpt.tensors), &extras).unwrap();
        let back = read(&bytes).unwrap();
        let tensors_match = back.tensors.len() == ckpt.tensors.len()
            && ckpt.tensors.iter().all(|(name, data, shape)| {
                let t = &back.tensors[name];
                t.shape == *shape && t.data.iter().map(|v| v.to_bits()).eq(data.iter().map(|v| v.to_bits()))
            });
        let vocabulary_matches =
            if ckpt.with_extras { back.char_vocabulary().ok() == Some(ckpt.chars) } else { back.char_vocabulary().is_err() };
        tensors_match && vocabulary_matches
    }
    QuickCheck::new().tests(200).quickcheck(prop as fn(ArbitraryCheckpoint) -> bool);
}

// ---------------------------------------------------------------------------------------------------
// What torch.save writes beyond the basics

#[test]
fn torch_style_state_dict_with_metadata_parameters_and_shared_storage() {
    // OrderedDict with `_metadata` set by BUILD, a Parameter, a strided view and an offset view of one
    // storage, memo reuse (BINPUT/BINGET, MEMOIZE), STACK_GLOBAL and a torch.device.
    let storage: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let pickle = P::new()
        .global("collections", "OrderedDict")
        .op(b")R")
        .op(b"q\x00")
        .op(b"(")
        .str("transposed")
        .tensor("FloatStorage", "0", 12, 0, &[4, 3], &[1, 4])
        .str("tail")
        .tensor("FloatStorage", "0", 12, 6, &[2, 3], &[3, 1])
        .str("param")
        .global("torch._utils", "_rebuild_parameter")
        .op(b"(")
        .tensor("FloatStorage", "0", 12, 0, &[12], &[1])
        .op(&[0x88])
        .global("collections", "OrderedDict")
        .op(b")Rt")
        .op(b"R")
        .op(&[0x94])
        .op(b"u")
        .op(b"}")
        .str("_metadata")
        .global("collections", "OrderedDict")
        .op(b")R")
        .op(b"sb")
        .op(b"0")
        .op(b"}")
        .str("state_dict")
        .op(b"h\x00")
        .op(b"s")
        .op(&[0x8c, 5])
        .op(b"torch")
        .op(&[0x8c, 6])
        .op(b"device")
        .op(&[0x93])
        .str("cuda")
        .op(b"K\x01")
        .op(&[0x86])
        .op(b"R")
        .op(b"q\x01")
        .op(b"0")
        .op(b"(")
        .str("device")
        .op(b"h\x01")
        .op(b"u")
        .stop();
    let bytes = checkpoint(&pickle, &[("0", f32_bytes(storage.iter().copied()))]);
    let ckpt = read(&bytes).unwrap();
    assert_eq!(ckpt.tensors["transposed"].data, [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
    assert_eq!(ckpt.tensors["tail"].data, [6., 7., 8., 9., 10., 11.]);
    assert_eq!(ckpt.tensors["param"].data, storage);
    assert_eq!(ckpt.tensors.len(), 3);
    match ckpt.get(&["device"]) {
        Some(PickleValue::Object { class, args, state: None }) => {
            assert_eq!(class, "torch.device");
            assert_eq!(args, &[PickleValue::Str("cuda".into()), PickleValue::Int(1)]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn other_dtypes_convert_to_f32() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("DoubleStorage", [1.5f64, -2.25].iter().flat_map(|v| v.to_le_bytes()).collect(), "float64"),
        ("HalfStorage", [1.5f32, -2.25].iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(), "float16"),
        ("BFloat16Storage", [1.5f32, -2.25].iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(), "bfloat16"),
        ("LongStorage", [3i64, -4].iter().flat_map(|v| v.to_le_bytes()).collect(), "int64"),
        ("IntStorage", [3i32, -4].iter().flat_map(|v| v.to_le_bytes()).collect(), "int32"),
        ("ShortStorage", [3i16, -4].iter().flat_map(|v| v.to_le_bytes()).collect(), "int16"),
        ("CharStorage", vec![3, (-4i8) as u8], "int8"),
        ("ByteStorage", vec![3, 4], "uint8"),
        ("BoolStorage", vec![1, 0], "bool"),
    ];
    for (class, bytes, dtype) in cases {
        let ckpt = read(&checkpoint(&one_tensor("t", class, 2, 0, &[2], &[1]), &[("0", bytes)])).unwrap();
        let t = &ckpt.tensors["t"];
        assert_eq!(t.dtype, dtype);
        let expected: [f32; 2] = match dtype {
            "float64" | "float16" | "bfloat16" => [1.5, -2.25],
            "uint8" => [3.0, 4.0],
            "bool" => [1.0, 0.0],
            _ => [3.0, -4.0],
        };
        assert_eq!(t.data, expected, "{class}");
    }
}

#[test]
fn codecs_encode_and_repeated_keys_behave_like_python() {
    let pickle = P::new()
        .op(b"}(")
        .str("k")
        .int(1)
        .str("b")
        .global("_codecs", "encode")
        .str("\u{ff}A")
        .str("latin1")
        .op(&[0x86])
        .op(b"R")
        .str("k")
        .int(2)
        .op(b"u")
        .stop();
    let root = unpickled(&pickle).unwrap();
    assert_eq!(
        root,
        PickleValue::Dict(vec![
            (PickleValue::Str("k".into()), PickleValue::Int(2)),
            (PickleValue::Str("b".into()), PickleValue::Bytes(vec![0xff, b'A'])),
        ])
    );
}

#[test]
fn vocabulary_must_be_a_bijection() {
    let vocab = |idx_to_char: Vec<(i64, &str)>| {
        let dict = PickleValue::Dict(idx_to_char.into_iter().map(|(i, c)| (PickleValue::Int(i), PickleValue::Str(c.into()))).collect());
        let extras = vec![("vocabulary".to_owned(), PickleValue::Dict(vec![(PickleValue::Str("idx_to_char".into()), dict)]))];
        read(&write_pth_bytes(&[], &extras).unwrap()).unwrap().char_vocabulary()
    };
    assert_eq!(vocab(vec![(1, "b"), (0, "a")]).unwrap(), ['a', 'b']);
    for bad in [vec![(0, "a"), (2, "b")], vec![(0, "a"), (1, "a")], vec![(0, "ab")], vec![(-1, "a")], vec![]] {
        assert!(matches!(vocab(bad.clone()), Err(PthError::Vocabulary(_))), "{bad:?}");
    }
    // char_to_idx alone, and disagreeing tables.
    let c2i = PickleValue::Dict(vec![(PickleValue::Str("x".into()), PickleValue::Int(0))]);
    let i2c = PickleValue::Dict(vec![(PickleValue::Int(0), PickleValue::Str("y".into()))]);
    let both = |tables: Vec<(&str, PickleValue)>| {
        let dict = PickleValue::Dict(tables.into_iter().map(|(k, v)| (PickleValue::Str(k.into()), v)).collect());
        read(&write_pth_bytes(&[], &[("vocabulary".to_owned(), dict)]).unwrap()).unwrap().char_vocabulary()
    };
    assert_eq!(both(vec![("char_to_idx", c2i.clone())]).unwrap(), ['x']);
    assert!(both(vec![("char_to_idx", c2i), ("idx_to_char", i2c)]).is_err());
    assert!(both(vec![("idx_to_char", vocabulary_value(&['a']).get("idx_to_char").unwrap().clone()), ("vocab_size", PickleValue::Int(2))])
        .is_err());
}

// ---------------------------------------------------------------------------------------------------
// Hostile archives

#[test]
fn legacy_pickle_files_are_refused_with_advice() {
    let legacy = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];
    let err = read(&legacy).unwrap_err();
    assert!(matches!(err, PthError::Legacy));
    assert!(err.to_string().contains("_use_new_zipfile_serialization=True"), "{err}");
    assert!(matches!(read(b"hello world"), Err(PthError::NotZip)));
    assert!(matches!(read(b""), Err(PthError::NotZip)));
}

#[test]
fn compressed_tensor_entries_are_refused() {
    let bytes = checkpoint(&one_tensor("t", "FloatStorage", 2, 0, &[2], &[1]), &[("0", f32_bytes([1.0, 2.0]))]);
    // Mark archive/data/0 as deflated (method 8) in its local and central headers.
    let patched = patch_method(&bytes, b"archive/data/0", 8);
    let err = read(&patched).unwrap_err();
    assert!(matches!(&err, PthError::Compressed { kind: "tensor", entry } if entry == "archive/data/0"), "{err:?}");
    assert_eq!(err.to_string(), "tensor entry 'archive/data/0' is compressed; PyTorch stores checkpoint entries uncompressed");
    assert!(matches!(validate_pth_with_limits(Cursor::new(&patched), &PthLimits::default()), Err(PthError::Compressed { .. })));
    let pkl = patch_method(&bytes, b"archive/data.pkl", 8);
    assert!(matches!(read(&pkl), Err(PthError::Compressed { kind: "archive", .. })));
}

/// Sets the compression method of every header naming `name`.
fn patch_method(bytes: &[u8], name: &[u8], method: u16) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut patched = 0;
    for at in 0..bytes.len().saturating_sub(4) {
        let (method_at, name_at) = match &bytes[at..at + 4] {
            b"PK\x03\x04" => (at + 8, at + 30),
            b"PK\x01\x02" => (at + 10, at + 46),
            _ => continue,
        };
        if bytes.get(name_at..name_at + name.len()) == Some(name) && bytes.get(name_at + name.len()) != Some(&b'/') {
            let len_at = if name_at == at + 30 { at + 26 } else { at + 28 };
            if usize::from(u16::from_le_bytes([bytes[len_at], bytes[len_at + 1]])) == name.len() {
                out[method_at..method_at + 2].copy_from_slice(&method.to_le_bytes());
                patched += 1;
            }
        }
    }
    assert_eq!(patched, 2, "local and central header");
    out
}

#[test]
fn unsafe_entry_names_are_refused() {
    let pickle = P::new().op(b"}").stop();
    for name in ["archive/../evil", "../archive/data.pkl", "/archive/x", "archive\\x", "archive//x", "C:/archive/x", "archive/./x"] {
        let bytes = zip_of(&[("archive/data.pkl", &pickle), (name, b"x")]);
        let err = read(&bytes).unwrap_err();
        assert!(matches!(err, PthError::UnsafeEntryName(_)), "{name}: {err:?}");
    }
    let two = zip_of(&[("archive/data.pkl", &pickle), ("other/data.pkl", &pickle)]);
    assert!(matches!(read(&two), Err(PthError::MultiplePrefixes { .. })));
    let loose = zip_of(&[("archive/data.pkl", &pickle), ("data.pkl", &pickle)]);
    assert!(matches!(read(&loose), Err(PthError::MultiplePrefixes { .. })));
    let none = zip_of(&[("archive/version", b"3\n")]);
    assert!(matches!(read(&none), Err(PthError::MissingEntry(name)) if name == "archive/data.pkl"));
    let empty = zip_of(&[]);
    assert!(matches!(read(&empty), Err(PthError::MissingEntry(_))));
}

#[test]
fn big_endian_and_oversized_archives_are_refused() {
    let pickle = P::new().op(b"}").stop();
    let big = zip_of(&[("archive/data.pkl", &pickle), ("archive/byteorder", b"big")]);
    assert!(matches!(read(&big), Err(PthError::ByteOrder(order)) if order == "big"));
    let little = zip_of(&[("archive/data.pkl", &pickle), ("archive/byteorder", b"little")]);
    assert!(read(&little).is_ok());

    let names: Vec<String> = (0..20).map(|i| format!("archive/extra{i}")).collect();
    let mut entries: Vec<(&str, &[u8])> = vec![("archive/data.pkl", &pickle)];
    entries.extend(names.iter().map(|n| (n.as_str(), &b"x"[..])));
    let many = zip_of(&entries);
    let limits = PthLimits { max_entries: 10, ..PthLimits::default() };
    assert!(matches!(read_pth_with_limits(Cursor::new(&many), &limits), Err(PthError::Limit { max: 10, .. })));
    let limits = PthLimits { max_archive_bytes: 10, ..PthLimits::default() };
    assert!(matches!(read_pth_with_limits(Cursor::new(&many), &limits), Err(PthError::Limit { .. })));
    let limits = PthLimits { max_pickle_bytes: 3, ..PthLimits::default() };
    assert!(matches!(read_pth_with_limits(Cursor::new(&many), &limits), Err(PthError::Limit { .. })));
}

// ---------------------------------------------------------------------------------------------------
// Hostile pickles

#[test]
fn forbidden_globals_are_named() {
    for (module, name) in [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("__builtin__", "getattr"),
        ("torch", "load"),
    ] {
        let via_global = P::new().global(module, name).str("echo pwned").op(&[0x85]).op(b"R").stop();
        let err = unpickled(&via_global).unwrap_err();
        assert_eq!(err.to_string(), format!("forbidden global '{module}.{name}' in data.pkl"));

        let via_stack = P::new().str(module).str(name).op(&[0x93]).str("echo pwned").op(&[0x85]).op(b"R").stop();
        let err = unpickled(&via_stack).unwrap_err();
        assert!(matches!(&err, PthError::ForbiddenGlobal(g) if *g == format!("{module}.{name}")), "{err:?}");
    }
    // Inside a real-looking checkpoint.
    let (pickle, storages) = owner_parts();
    let at = pickle.windows(25).position(|w| w == b"ccollections\nOrderedDict\n").unwrap();
    let mut hostile = pickle[..at].to_vec();
    hostile.extend_from_slice(b"cposix\nsystem\n");
    hostile.extend_from_slice(&pickle[at + 25..]);
    let storages: Vec<(&str, Vec<u8>)> = storages.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    assert!(read(&checkpoint(&pickle, &storages)).is_ok());
    assert!(matches!(read(&checkpoint(&hostile, &storages)), Err(PthError::ForbiddenGlobal(g)) if g == "posix.system"));
    let odd = P::new().global("os", "sys\x01tem").stop();
    assert!(matches!(unpickled(&odd), Err(PthError::Pickle { .. })));
}

#[test]
fn allowed_globals_that_are_not_callable_cannot_be_reduced() {
    let storage_call = P::new().global("torch", "FloatStorage").op(b")R").stop();
    let err = unpickled(&storage_call).unwrap_err();
    assert!(err.to_string().contains("torch.FloatStorage cannot be called"), "{err}");
    let str_call = P::new().str("os.system").op(b")R").stop();
    assert!(unpickled(&str_call).unwrap_err().to_string().contains("cannot call a str"));
    let newobj = P::new().global("torch", "BoolStorage").op(b")").op(&[0x81]).stop();
    assert!(matches!(unpickled(&newobj), Err(PthError::Pickle { .. })));
    let ordered_with_args = P::new().global("collections", "OrderedDict").str("x").op(&[0x85]).op(b"R").stop();
    assert!(matches!(unpickled(&ordered_with_args), Err(PthError::Pickle { .. })));
    let codecs_other = P::new().global("_codecs", "encode").str("x").str("rot13").op(&[0x86]).op(b"R").stop();
    assert!(matches!(unpickled(&codecs_other), Err(PthError::Pickle { .. })));
    for op in [b'i', b'o', b'P', b'S', b'I', 0x8f, 0x92, 0x82] {
        let err = unpickled(&P::new().op(&[op]).stop()).unwrap_err();
        assert!(err.to_string().contains("unsupported opcode") || err.to_string().contains("truncated"), "{op}: {err}");
    }
    assert!(matches!(unpickled(&[0x80, 6, b'N', b'.']), Err(PthError::Pickle { .. })));
}

#[test]
fn tensors_reaching_outside_their_storage_are_refused() {
    // 10 floats stored, a 4x4 view.
    let small = checkpoint(&one_tensor("w", "FloatStorage", 10, 0, &[4, 4], &[4, 1]), &[("0", f32_bytes([0.0; 10]))]);
    let err = read(&small).unwrap_err();
    assert_eq!(err.to_string(), "storage '0' holds 40 bytes but the tensor 'w' needs 64");
    assert!(matches!(validate_pth_with_limits(Cursor::new(&small), &PthLimits::default()), Err(PthError::StorageTooSmall { .. })));
    // Offset past the end.
    let offset = checkpoint(&one_tensor("w", "FloatStorage", 4, 3, &[2], &[1]), &[("0", f32_bytes([0.0; 4]))]);
    assert!(matches!(read(&offset), Err(PthError::StorageTooSmall { .. })));
    let far = checkpoint(&one_tensor("w", "FloatStorage", 4, i64::MAX, &[1], &[1]), &[("0", f32_bytes([0.0; 4]))]);
    assert!(matches!(read(&far), Err(PthError::StorageTooSmall { .. })));
    // Strides that walk off the end.
    let strided = checkpoint(&one_tensor("w", "FloatStorage", 4, 0, &[2, 2], &[3, 1]), &[("0", f32_bytes([0.0; 4]))]);
    assert!(matches!(read(&strided), Err(PthError::StorageTooSmall { .. })));
    // An entry shorter than the persistent id declares.
    let short = checkpoint(&one_tensor("w", "FloatStorage", 4, 0, &[2], &[1]), &[("0", f32_bytes([0.0; 3]))]);
    assert!(matches!(read(&short), Err(PthError::StorageLength { actual: 12, expected: 16, .. })));
    // A storage that is not in the archive.
    let missing = checkpoint(&one_tensor("w", "FloatStorage", 4, 0, &[2], &[1]), &[]);
    assert!(matches!(read(&missing), Err(PthError::MissingEntry(name)) if name == "archive/data/0"));
    // Absurd shapes overflow the element count.
    let absurd =
        checkpoint(&one_tensor("w", "FloatStorage", 4, 0, &[1 << 40, 1 << 40, 1 << 40], &[0, 0, 0]), &[("0", f32_bytes([0.0; 4]))]);
    assert!(matches!(read(&absurd), Err(PthError::AbsurdShape { .. })), "{:?}", read(&absurd));
    // Zero strides over a tiny storage: in bounds, but too many elements to materialise.
    let broadcast = checkpoint(&one_tensor("w", "FloatStorage", 1, 0, &[1 << 20, 1 << 20], &[0, 0]), &[("0", f32_bytes([0.0]))]);
    assert!(matches!(read(&broadcast), Err(PthError::Limit { .. })));
    assert_eq!(validate_pth_with_limits(Cursor::new(&broadcast), &PthLimits::default()).unwrap().parameter_count, 1 << 40);
    // Negative sizes and mismatched ranks are malformed.
    let negative = checkpoint(&one_tensor("w", "FloatStorage", 4, 0, &[-1], &[1]), &[("0", f32_bytes([0.0; 4]))]);
    assert!(matches!(read(&negative), Err(PthError::Pickle { .. })));
    let ranks = checkpoint(&one_tensor("w", "FloatStorage", 4, 0, &[2, 2], &[1]), &[("0", f32_bytes([0.0; 4]))]);
    assert!(matches!(read(&ranks), Err(PthError::Pickle { .. })));
    // A storage key that tries to climb.
    let key = P::new().op(b"}").str("w").tensor("FloatStorage", "../0", 1, 0, &[1], &[1]).op(b"s").stop();
    assert!(matches!(unpickled(&key), Err(PthError::Pickle { .. })));
}

#[test]
fn deep_nesting_is_capped() {
    // Nested by the stack: ] ] ] ... a a a.
    let n = 100_000;
    let mut deep = vec![0x80, 2];
    deep.extend(std::iter::repeat_n(b']', n));
    deep.extend(std::iter::repeat_n(b'a', n - 1));
    deep.push(b'.');
    let err = unpickled(&deep).unwrap_err();
    assert!(matches!(err, PthError::Limit { what: "the nesting depth of data.pkl", .. }), "{err:?}");
    // Nested through the memo with a constant stack: X = [X] repeatedly.
    let mut memo = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..n {
        memo.extend_from_slice(&[b'0', b']', b'h', 0, b'a', b'q', 0]);
    }
    memo.push(b'.');
    assert!(matches!(unpickled(&memo), Err(PthError::Limit { .. })));
    // Open marks and pushes count against the stack cap.
    let limits = PthLimits { max_stack: 1000, ..PthLimits::default() };
    let marks: Vec<u8> = [0x80, 2].into_iter().chain(std::iter::repeat_n(b'(', 2000)).chain([b'N', b'.']).collect();
    assert!(matches!(read_pth_with_limits(Cursor::new(checkpoint(&marks, &[])), &limits), Err(PthError::Limit { .. })));
    // A list that contains itself.
    let cycle = P::new().op(b"]q\x00h\x00a").stop();
    assert!(matches!(unpickled(&cycle), Err(PthError::Structure(_))));
}

#[test]
fn memo_and_sharing_are_capped() {
    let huge_put = P::new().op(b"N").op(b"r\xff\xff\xff\xff").stop();
    let err = unpickled(&huge_put).unwrap_err();
    assert!(matches!(err, PthError::Limit { what: "the memo index in data.pkl", .. }), "{err:?}");
    let missing_get = P::new().op(b"j\xff\xff\xff\x7f").stop();
    assert!(matches!(unpickled(&missing_get), Err(PthError::Pickle { .. })));
    // Billion laughs: each list holds its predecessor twice, 64 levels deep but 2^64 values expanded.
    let mut laughs = P::new().op(b"]q\x00");
    for _ in 0..64 {
        laughs = laughs.op(b"(h\x00h\x00lq\x00");
    }
    let err = unpickled(&laughs.stop()).unwrap_err();
    assert!(matches!(err, PthError::Limit { .. }), "{err:?}");
    // One big string shared a million times.
    let big = "x".repeat(1 << 20);
    let mut shared = P::new().op(b"]").str(&big).op(b"q\x00a");
    for _ in 0..300 {
        shared = shared.op(b"h\x00a");
    }
    let err = unpickled(&shared.stop()).unwrap_err();
    assert!(matches!(err, PthError::Limit { what: "the total size of strings in data.pkl", .. }), "{err:?}");
    // A string longer than its cap, and one longer than the stream.
    let limits = PthLimits { max_string_bytes: 4, ..PthLimits::default() };
    assert!(matches!(
        read_pth_with_limits(Cursor::new(checkpoint(&P::new().str("hello").stop(), &[])), &limits),
        Err(PthError::Limit { .. })
    ));
    let lying = P::new().op(&[0x8d]).op(&u64::MAX.to_le_bytes()).stop();
    assert!(matches!(unpickled(&lying), Err(PthError::Limit { what: "a string in data.pkl", .. })));
    let lying_bytes = P::new().op(b"B\x00\x10\x00\x00abc").stop();
    assert!(matches!(unpickled(&lying_bytes), Err(PthError::Pickle { .. })));
    let long = P::new().op(&[0x8b]).op(&9i32.to_le_bytes()).op(&[0; 9]).stop();
    assert!(matches!(unpickled(&long), Err(PthError::Pickle { .. })));
}

#[test]
fn truncated_checkpoints_never_panic() {
    let bytes = owner_tiny_bytes();
    for len in 0..bytes.len() {
        assert!(read(&bytes[..len]).is_err(), "prefix of {len} bytes read");
    }
    // Truncated data.pkl inside a sound archive.
    let (pickle, _) = owner_parts();
    for len in 0..pickle.len() {
        let err = unpickled(&pickle[..len]).unwrap_err();
        assert!(matches!(err, PthError::Pickle { .. }), "{len}: {err:?}");
    }
}

fn no_panic(bytes: &[u8]) -> bool {
    std::panic::catch_unwind(|| {
        let _ = read_pth_bytes(bytes);
        let _ = validate_pth_with_limits(Cursor::new(bytes), &PthLimits::default());
    })
    .is_ok()
}

#[test]
fn property_40_arbitrary_bytes_never_panic() {
    // Property 40: arbitrary bytes never panic the .pth reader
    fn raw(bytes: Vec<u8>) -> bool {
        no_panic(&bytes)
    }
    fn zip_like(body: Vec<u8>) -> bool {
        let mut bytes = b"PK\x03\x04".to_vec();
        bytes.extend(body);
        bytes.extend_from_slice(b"PK\x05\x06");
        let tail: Vec<u8> = (0..18u8).map(|i| bytes.get(usize::from(i) * 7).copied().unwrap_or(i)).collect();
        bytes.extend(tail);
        no_panic(&bytes)
    }
    fn as_pickle(body: Vec<u8>) -> bool {
        let mut pickle = vec![0x80, 2];
        pickle.extend(body);
        no_panic(&checkpoint(&pickle, &[("0", vec![0; 16])]))
    }
    fn mutated(edits: Vec<(usize, u8)>) -> TestResult {
        let mut bytes = owner_tiny_bytes();
        for (at, value) in edits {
            let len = bytes.len();
            bytes[at % len] = value;
        }
        TestResult::from_bool(no_panic(&bytes))
    }
    fn mutated_pickle(edits: Vec<(usize, u8)>) -> bool {
        let (mut pickle, _) = owner_parts();
        for (at, value) in edits {
            let len = pickle.len();
            pickle[at % len] = value;
        }
        no_panic(&checkpoint(&pickle, &[]))
    }
    QuickCheck::new().tests(500).quickcheck(raw as fn(Vec<u8>) -> bool);
    QuickCheck::new().tests(500).quickcheck(zip_like as fn(Vec<u8>) -> bool);
    QuickCheck::new().tests(500).quickcheck(as_pickle as fn(Vec<u8>) -> bool);
    QuickCheck::new().tests(300).quickcheck(mutated as fn(Vec<(usize, u8)>) -> TestResult);
    QuickCheck::new().tests(300).quickcheck(mutated_pickle as fn(Vec<(usize, u8)>) -> bool);
}

/// A splice of a byte stream: a range removed, repeated, or replaced by other bytes.
#[derive(Debug, Clone)]
enum Splice {
    Remove { at: usize, len: usize },
    Repeat { at: usize, len: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

impl Arbitrary for Splice {
    fn arbitrary(g: &mut Gen) -> Self {
        let (at, len) = (usize::arbitrary(g), 1 + usize::arbitrary(g) % 16);
        match u8::arbitrary(g) % 3 {
            0 => Self::Remove { at, len },
            1 => Self::Repeat { at, len },
            _ => Self::Insert { at, bytes: Vec::arbitrary(g) },
        }
    }
}

fn spliced(mut bytes: Vec<u8>, splices: &[Splice]) -> Vec<u8> {
    for s in splices {
        let at = match s {
            Splice::Remove { at, .. } | Splice::Repeat { at, .. } | Splice::Insert { at, .. } => at % (bytes.len() + 1),
        };
        match s {
            Splice::Remove { len, .. } => drop(bytes.drain(at..(at + len).min(bytes.len()))),
            Splice::Repeat { len, .. } => {
                let copy = bytes[at..(at + len).min(bytes.len())].to_vec();
                bytes.splice(at..at, copy);
            }
            Splice::Insert { bytes: more, .. } => drop(bytes.splice(at..at, more.iter().copied())),
        }
    }
    bytes
}

#[test]
fn property_57_spliced_checkpoints_never_panic() {
    // Property 57: valid .pth checkpoints with ranges removed, repeated or inserted (the whole
    // file, or the pickle inside a sound archive) never panic the reader; extends property 40.
    fn whole(splices: Vec<Splice>) -> bool {
        no_panic(&spliced(owner_tiny_bytes(), &splices))
    }
    fn pickle(splices: Vec<Splice>) -> bool {
        let (pickle, storages) = owner_parts();
        let storages: Vec<(&str, Vec<u8>)> =
            storages.iter().map(|(name, bytes)| (name.rsplit('/').next().unwrap_or(name.as_str()), bytes.clone())).collect();
        no_panic(&checkpoint(&spliced(pickle, &splices), &storages))
    }
    QuickCheck::new().tests(300).quickcheck(whole as fn(Vec<Splice>) -> bool);
    QuickCheck::new().tests(300).quickcheck(pickle as fn(Vec<Splice>) -> bool);
}

/// The corpus (`tests/corpus/pth`): `ok-*` files read, `bad-*` files are refused; none panics.
#[test]
fn the_pth_corpus_reads_or_is_refused_as_named() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus/pth");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        assert!(no_panic(&bytes), "{name} panicked the reader");
        let read = read_pth_bytes(&bytes);
        if name.starts_with("ok-") {
            assert!(read.is_ok(), "{name}: {:?}", read.err());
        } else {
            assert!(name.starts_with("bad-"), "corpus files are named ok-* or bad-*: {name}");
            assert!(read.is_err(), "{name} was read");
        }
        seen += 1;
    }
    assert!(seen >= 8, "the corpus holds {seen} files");
}

// ---------------------------------------------------------------------------------------------------
// Checkpoints written by PyTorch itself (tests/data/README.md)

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn expected_tensors(json: &serde_json::Value) -> BTreeMap<String, PthTensor> {
    let as_tensor = |t: &serde_json::Value| PthTensor {
        dtype: t["dtype"].as_str().unwrap().to_owned(),
        shape: t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect(),
        data: t["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
    };
    json.as_object().unwrap().iter().map(|(k, v)| (k.clone(), as_tensor(v))).collect()
}

#[test]
fn reads_the_owners_checkpoint_as_saved_by_pytorch() {
    let ckpt = read_pth(&fixture("owner_tiny.pth")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("owner_tiny.json")).unwrap()).unwrap();
    assert_eq!(ckpt.tensors, expected_tensors(&json["tensors"]));
    let names: Vec<&str> = ckpt.tensors.keys().map(String::as_str).collect();
    for name in [
        "embedding.weight",
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
        "lstm.bias_ih_l0",
        "lstm.bias_hh_l0",
        "lstm.weight_ih_l1",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(names.contains(&name), "{name}");
    }
    let chars: Vec<char> = json["chars"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().chars().next().unwrap()).collect();
    assert_eq!(ckpt.char_vocabulary().unwrap(), chars);
    for (key, value) in [("vocab_size", chars.len() as i64), ("embedding_dim", 4), ("hidden_dim", 3), ("num_layers", 2)] {
        assert_eq!(ckpt.get(&[key]).and_then(PickleValue::as_int), Some(value), "{key}");
    }
    assert_eq!(ckpt.to_candle("lstm.weight_hh_l1", &Device::Cpu).unwrap().dims(), &[12, 3]);
    let summary = validate_pth(&fixture("owner_tiny.pth")).unwrap();
    assert_eq!(summary.tensor_count, 11);
    assert_eq!(summary.dtypes, BTreeSet::from(["float32".to_owned()]));
}

#[test]
fn reads_pytorch_views_parameters_and_dtypes() {
    let ckpt = read_pth(&fixture("torch_views.pth")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("torch_views.json")).unwrap()).unwrap();
    assert_eq!(ckpt.tensors, expected_tensors(&json));
    assert_eq!(ckpt.tensors["transposed"].data, [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
    assert!(matches!(ckpt.get(&["device"]), Some(PickleValue::Object { class, .. }) if class == "torch.device"));
    assert_eq!(ckpt.get(&["note"]).and_then(PickleValue::as_str), Some("views"));
}

#[test]
fn writer_output_reads_like_pytorch_output() {
    // The writer's bytes and torch.save's differ only in the zip's extra fields and optional entries:
    // the same state dict reads back the same through both.
    let torch = read_pth(&fixture("owner_tiny.pth")).unwrap();
    let state: Vec<(String, &[f32], &[usize])> = tensor::state_dict_tensors(&torch.root)
        .into_iter()
        .map(|(name, _)| (name.to_owned(), torch.tensors[name].data.as_slice(), torch.tensors[name].shape.as_slice()))
        .collect();
    let chars = torch.char_vocabulary().unwrap();
    let ours = read(&write_pth_bytes(&state, &owner_extras(&chars, 4, 3, 2)).unwrap()).unwrap();
    assert_eq!(ours.tensors, torch.tensors);
    assert_eq!(ours.root, torch.root);
}

#[test]
fn declared_entry_counts_are_checked_before_the_zip_reader_trusts_them() {
    let pickle = P::new().op(b"}").stop();
    let bytes = zip_of(&[("archive/data.pkl", &pickle)]);
    let eocd = bytes.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
    let mut forged = bytes.clone();
    forged[eocd + 8..eocd + 12].copy_from_slice(&[0xfe, 0xff, 0xfe, 0xff]);
    assert!(matches!(read(&forged), Err(PthError::Limit { what: "the number of archive entries", .. })));

    // The same through a zip64 end record.
    let zip64 = |count: u64| {
        let cd_size = u32::from_le_bytes(bytes[eocd + 12..eocd + 16].try_into().unwrap());
        let cd_offset = u32::from_le_bytes(bytes[eocd + 16..eocd + 20].try_into().unwrap());
        let mut out = bytes[..eocd].to_vec();
        out.extend_from_slice(b"PK\x06\x06");
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for value in [count, count, u64::from(cd_size), u64::from(cd_offset)] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(b"PK\x06\x07\0\0\0\0");
        out.extend_from_slice(&(eocd as u64).to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(b"PK\x05\x06\0\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\0\0");
        out
    };
    assert!(read(&zip64(1)).is_ok());
    assert!(matches!(read(&zip64(1 << 40)), Err(PthError::Limit { what: "the number of archive entries", .. })));
}
