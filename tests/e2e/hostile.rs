//! Hostile and malformed dataset uploads, each built here: every one is a 400 that says why,
//! leaves no row and no file, writes nothing outside the data directory, and the server keeps
//! serving. Also a round trip of every dataset format.

use serde_json::Value;

use crate::harness::{envelope_code, example, gzip, png, zip_of, Server};

/// A tar whose entries are given as raw headers: name, type and data.
fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        let mut header = tar::Header::new_gnu();
        let bytes = header.as_mut_bytes();
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        if let Some(link) = link {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn npy(header: &str, data: &[u8]) -> Vec<u8> {
    let mut dict = header.to_owned();
    while !(10 + dict.len() + 1).is_multiple_of(64) {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&u16::try_from(dict.len()).unwrap().to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.extend(files_under(&entry.path()));
        } else {
            out.push(entry.path().display().to_string());
        }
    }
    out
}

#[test]
fn hostile_and_malformed_datasets_are_refused_with_the_reason_and_leave_nothing() {
    let s = Server::start();
    let image = png(&[0; 16], 4, 4, 1);
    let many: Vec<(String, Vec<u8>)> = (0..200_001).map(|i| (format!("a/{i}"), Vec::new())).collect();
    let many_refs: Vec<(&str, &[u8])> = many.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let zeros = vec![0u8; 32 * 1024 * 1024];
    let bomb = gzip(&tar_of(&[("0/a.png", tar::EntryType::Regular, &zeros, None)]));
    drop(zeros);
    let mut truncated_zip = zip_of(&[("0/a.png", &image), ("1/b.png", &image)]);
    truncated_zip.truncate(truncated_zip.len() / 2);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("slip.zip", zip_of(&[("0/a.png", &image), ("../../evil.png", &image)]), "path traversal"),
        ("abs.zip", zip_of(&[("/etc/evil.png", &image)]), "absolute path"),
        ("backslash.zip", zip_of(&[("..\\evil.png", &image)]), "backslash"),
        ("slip.tar", tar_of(&[("0/../../evil.png", tar::EntryType::Regular, &image, None)]), "path traversal"),
        ("link.tar", tar_of(&[("0/a.png", tar::EntryType::Symlink, &[], Some("/etc/passwd"))]), "symbolic link"),
        ("hard.tar", tar_of(&[("0/a.png", tar::EntryType::Link, &[], Some("/etc/shadow"))]), "hard link"),
        ("device.tar", tar_of(&[("0/a.png", tar::EntryType::Char, &[], None)]), "device"),
        ("fifo.tar.gz", gzip(&tar_of(&[("0/a.png", tar::EntryType::Fifo, &[], None)])), "FIFO"),
        ("many.zip", zip_of(&many_refs), "too many entries"),
        ("bomb.tar.gz", bomb, "decompression bomb"),
        ("cut.zip", truncated_zip, "corrupt or truncated"),
        ("ragged.csv", b"a,b,label\n1,2,0\n3,4\n5,6,1\n".to_vec(), "line 3"),
        ("giant.csv", [b"a,label\n1,0\n".as_slice(), &vec![b'9'; 3 << 20]].concat(), "longer than 1 MiB"),
        ("latin1.csv", b"a,label\n1,0\n2,caf\xe9\n".to_vec(), "UTF-8"),
        ("object.npy", npy("{'descr': '|O', 'fortran_order': False, 'shape': (3,), }", &[0; 24]), "object"),
        ("absurd.npy", [b"\x93NUMPY\x02\x00".as_slice(), &u32::MAX.to_le_bytes(), b"{}"].concat(), "header"),
        ("short.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 4), }", &[0; 100]), "truncated"),
    ];
    for (i, (file, bytes, reason)) in cases.iter().enumerate() {
        let (code, v) = s.upload(&format!("/api/v1/datasets?dataset_name=hostile{i}"), file, bytes);
        assert_eq!(code, 400, "{file}: {v}");
        assert_eq!(envelope_code(&v), "INVALID_DATASET", "{file}: {v}");
        let message = v["detail"].as_str().unwrap();
        assert!(message.to_lowercase().contains(&reason.to_lowercase()), "{file}: expected '{reason}' in: {message}");
        let (code, _) = s.get("/health");
        assert_eq!(code, 200, "the server serves after {file}");
    }
    let (_, list) = s.get("/api/v1/datasets");
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    let dir = s.data_dir.join("datasets");
    assert_eq!(files_under(&dir), Vec::<String>::new(), "no file kept or extracted");
    assert!(!s.data_dir.join("evil.png").exists() && !s.data_dir.parent().unwrap().join("evil.png").exists());
}

#[test]
fn every_dataset_format_round_trips_through_upload_and_inspection() {
    let s = Server::start();
    let image = png(&[0; 16], 4, 4, 1);
    let tar_images = tar_of(&[("0/a.png", tar::EntryType::Regular, &image, None), ("1/b.png", tar::EntryType::Regular, &image, None)]);
    // File name, bytes, then the format, sample count and dimensions the listing must show.
    type Case = (&'static str, Vec<u8>, &'static str, Option<u64>, &'static str);
    let cases: Vec<Case> = vec![
        ("iris.csv", std::fs::read(example("iris.csv")).unwrap(), "csv", Some(150), "4"),
        ("t.tsv", b"a\tb\tlabel\n1\t2\tx\n3\t4\ty\n".to_vec(), "tsv", Some(2), "2"),
        ("tempest.txt", std::fs::read(example("tempest.txt")).unwrap(), "text", None, "vocab="),
        ("digits.npz", std::fs::read(example("digits.npz")).unwrap(), "npz", Some(1797), "8x8x1"),
        ("digits_x.npy", std::fs::read(example("digits_x.npy")).unwrap(), "npy", Some(1797), "8x8x1"),
        ("digits_png.zip", std::fs::read(example("digits_png.zip")).unwrap(), "images", Some(1797), "8x8x1"),
        ("two.tar", tar_images.clone(), "images", Some(2), "4x4x1"),
        ("two.tar.gz", gzip(&tar_images), "images", Some(2), "4x4x1"),
    ];
    for (i, (file, bytes, format, samples, dims)) in cases.iter().enumerate() {
        let name = format!("fmt{i}");
        let (code, v) = s.upload(&format!("/api/v1/datasets?dataset_name={name}"), file, bytes);
        assert_eq!(code, 200, "{file}: {v}");
        let (_, info): (u16, Value) = s.get(&format!("/api/v1/datasets/{name}"));
        assert_eq!(info["format"].as_str(), Some(*format), "{file}: {info}");
        if let Some(n) = samples {
            assert_eq!(info["sample_count"].as_u64(), Some(*n), "{file}: {info}");
        }
        assert!(info["dimensions"].as_str().unwrap_or_default().starts_with(dims), "{file}: {info}");
        assert!(info["content_hash"].as_str().is_some_and(|h| h.len() == 64), "{file}: {info}");
        assert!(info["statistics"].is_object(), "{file}: {info}");
    }
}
