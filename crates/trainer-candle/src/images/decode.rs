//! PNG/JPEG decoding with size limits, and the image-folder accumulator: images streamed from an
//! archive one at a time, checked for one common size, summarised (class counts, per-channel pixel
//! statistics, formats) and, when loading for training, kept as CHW `f32` pixels.

use std::{
    collections::{BTreeMap, HashMap},
    io::Cursor,
};

use image::{ColorType, DynamicImage, ImageFormat, ImageReader};
use serde_json::json;
use trainyard_domain::registry::{DatasetFormat, DatasetInfo};

use super::{
    check_loaded, class_statistics,
    limits::{Limits, MAX_CLASSES, MAX_IMAGE_ALLOC},
    push_chw, ImageData, PixelStats,
};
use crate::{archive::Entry, data::label_order};

/// One decoded image.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decoded {
    pub height: usize,
    pub width: usize,
    /// 1 (grayscale) or 3 (colour); alpha is dropped.
    pub channels: usize,
    /// `png` or `jpeg`, from the content.
    pub format: &'static str,
    /// Pixels on the 0..1 scale, HWC.
    pub pixels: Vec<f32>,
}

/// Reads a PNG or JPEG (told by content, not by name) within the size limits, as the `image`
/// crate decodes it, with its format (`png` or `jpeg`).
///
/// # Errors
/// A message naming `name`: not PNG/JPEG, larger than the limits, or corrupt.
pub(crate) fn read_image(bytes: &[u8], name: &str, limits: &Limits) -> Result<(DynamicImage, &'static str), String> {
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| format!("reading '{name}': {e}"))?;
    let format = match reader.format() {
        Some(ImageFormat::Png) => "png",
        Some(ImageFormat::Jpeg) => "jpeg",
        _ => return Err(format!("'{name}' is not a PNG or JPEG image (by its content); convert the images to PNG")),
    };
    let mut reader = reader;
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_image_side);
    image_limits.max_image_height = Some(limits.max_image_side);
    image_limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(image_limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => {
            format!("'{name}' is larger than the {side}x{side} pixels Trainyard decodes; resize the images", side = limits.max_image_side)
        }
        other => format!("'{name}' is not a valid {} image ({other}); re-export it", format.to_uppercase()),
    })?;
    Ok((image, format))
}

/// Decodes a PNG or JPEG within the size limits: grayscale to one channel, colour to three.
///
/// # Errors
/// As [`read_image`].
pub(crate) fn decode(bytes: &[u8], name: &str, limits: &Limits) -> Result<Decoded, String> {
    let (image, format) = read_image(bytes, name, limits)?;
    let (width, height) = (image.width() as usize, image.height() as usize);
    let gray = matches!(image.color(), ColorType::L8 | ColorType::L16 | ColorType::La8 | ColorType::La16);
    let (channels, pixels) = if gray { (1, to_luma(image)) } else { (3, image.to_rgb32f().into_raw()) };
    Ok(Decoded { height, width, channels, format, pixels })
}

fn to_luma(image: DynamicImage) -> Vec<f32> {
    match image {
        DynamicImage::ImageLuma8(buf) => buf.into_raw().into_iter().map(|v| f32::from(v) / 255.0).collect(),
        other => other.to_luma32f().into_raw(),
    }
}

/// Image files streamed from an archive laid out `<class>/<image>` or `<top>/<class>/<image>`.
#[derive(Debug)]
pub(crate) struct Folders {
    keep: bool,
    /// Height, width, channels, and the first image (named when another differs).
    shape: Option<(usize, usize, usize, String)>,
    /// Parent folders in order of first appearance, with their image counts.
    folders: Vec<(String, u64)>,
    folder_index: HashMap<String, u32>,
    stats: Option<PixelStats>,
    formats: BTreeMap<&'static str, u64>,
    /// Kept pixels, CHW per sample, and each sample's folder.
    x: Vec<f32>,
    folder_of: Vec<u32>,
}

impl Folders {
    pub(crate) fn new(keep: bool) -> Self {
        Self {
            keep,
            shape: None,
            folders: Vec::new(),
            folder_index: HashMap::new(),
            stats: None,
            formats: BTreeMap::new(),
            x: Vec::new(),
            folder_of: Vec::new(),
        }
    }

    /// Reads, decodes and accounts for one image entry.
    pub(crate) fn add(&mut self, entry: &mut Entry<'_>, limits: &Limits) -> Result<(), String> {
        let name = entry.name.clone();
        let Some((folder, _)) = name.rsplit_once('/') else {
            return Err(format!(
                "the image '{name}' is not in a class folder; lay the archive out as <class>/<image> (for example 3/img_17.png)"
            ));
        };
        let bytes = entry.read_to_vec(limits.max_image_file_bytes, "the image")?;
        let image = decode(&bytes, &name, limits)?;
        drop(bytes);
        let (h, w, c) = (image.height, image.width, image.channels);
        match &self.shape {
            None => self.shape = Some((h, w, c, name.clone())),
            Some((h0, w0, c0, first)) if (*h0, *w0, *c0) != (h, w, c) => {
                return Err(format!(
                    "the image '{name}' is {w}x{h} with {c} channel(s) but '{first}' is {w0}x{h0} with {c0}: all images must share \
                     one size and colour mode; resize or convert them"
                ))
            }
            Some(_) => {}
        }
        let index = match self.folder_index.get(folder) {
            Some(&i) => i,
            None => {
                if self.folders.len() >= MAX_CLASSES {
                    return Err(format!("the archive has more than {MAX_CLASSES} class folders"));
                }
                let i = u32::try_from(self.folders.len()).unwrap_or(u32::MAX);
                self.folder_index.insert(folder.to_owned(), i);
                self.folders.push((folder.to_owned(), 0));
                i
            }
        };
        self.folders[index as usize].1 += 1;
        *self.formats.entry(image.format).or_default() += 1;
        let stats = self.stats.get_or_insert_with(|| PixelStats::new(c));
        for channel in 0..c {
            stats.add_f32(channel, image.pixels.iter().skip(channel).step_by(c).copied());
        }
        if self.keep {
            check_loaded(self.x.len(), image.pixels.len(), limits)?;
            push_chw(&mut self.x, &image.pixels, c);
            self.folder_of.push(index);
        }
        Ok(())
    }

    /// The class names in class order, and each folder's class index.
    fn classes(&self) -> Result<(Vec<String>, Vec<u32>), String> {
        let depth = |f: &str| f.split('/').count();
        let top = |f: &str| f.split('/').next().unwrap_or_default().to_owned();
        let first = &self.folders.first().ok_or("the archive holds no images")?.0;
        let class_of: Vec<String> = if self.folders.iter().all(|(f, _)| depth(f) == 1) {
            self.folders.iter().map(|(f, _)| f.clone()).collect()
        } else if self.folders.iter().all(|(f, _)| depth(f) == 2 && top(f) == top(first)) {
            self.folders.iter().map(|(f, _)| f.split('/').nth(1).unwrap_or_default().to_owned()).collect()
        } else {
            let odd = self.folders.iter().map(|(f, _)| f).find(|f| depth(f) != depth(first) || top(f) != top(first)).unwrap_or(first);
            return Err(format!(
                "images must sit in class folders, <class>/<image> or <top>/<class>/<image>, but the archive has images \
                 in both '{first}/' and '{odd}/'; re-create it with one folder per class"
            ));
        };
        let mut classes = class_of.clone();
        classes.sort_by(|a, b| label_order(a, b));
        classes.dedup();
        if classes.len() > MAX_CLASSES {
            return Err(format!("the archive has {} class folders, more than the {MAX_CLASSES} supported", classes.len()));
        }
        let index =
            class_of.iter().map(|c| u32::try_from(classes.binary_search_by(|x| label_order(x, c)).unwrap_or(0)).unwrap_or(0)).collect();
        Ok((classes, index))
    }

    pub(crate) fn info(&self) -> Result<DatasetInfo, String> {
        let (classes, index) = self.classes()?;
        let (h, w, c, _) = self.shape.clone().unwrap_or_default();
        let mut counts = vec![0u64; classes.len()];
        for ((_, n), &i) in self.folders.iter().zip(&index) {
            counts[i as usize] += n;
        }
        let images: u64 = counts.iter().sum();
        let (class_counts, class_list) = class_statistics(&classes, &counts);
        let mut statistics = json!({
            "images": images,
            "height": h,
            "width": w,
            "channels": c,
            "class_counts": class_counts,
            "classes": class_list,
            "image_formats": self.formats,
        });
        if let Some(stats) = &self.stats {
            stats.write(&mut statistics);
        }
        Ok(DatasetInfo { format: DatasetFormat::Images, sample_count: Some(images), dimensions: Some(format!("{h}x{w}x{c}")), statistics })
    }

    pub(crate) fn data(self) -> Result<ImageData, String> {
        let (classes, index) = self.classes()?;
        let (height, width, channels, _) = self.shape.unwrap_or_default();
        let y = self.folder_of.iter().map(|&f| index[f as usize]).collect();
        Ok(ImageData { channels, height, width, x: self.x, y, classes })
    }
}
