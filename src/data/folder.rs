//! Image folders in torchvision's `ImageFolder` layout: `DIR/train/<class>/*` and
//! `DIR/test/<class>/*`, PNG or JPEG; the classes are the training folder's sub-folders, sorted
//! by name. Grey images give one channel, colour ones three (unless told); every image must have
//! the size of the first unless a size is given, to which all are resized (bilinear, as
//! torchvision's `Resize`). Decoding tens of thousands of files is paid once: the decoded split is
//! cached in `DIR/.shadertrain-cache/`, keyed by the MD5 of every file and the options.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use md5::{Digest, Md5};

use super::{Dataset, Split};
use crate::error::{Error, Result};
use crate::shapes::Shape;

/// How the images become tensors (`--image-size`, `--channels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FolderOptions {
    /// (height, width) every image is resized to; None: all must share the first one's size.
    pub size: Option<(u32, u32)>,
    /// 1 (grey) or 3 (RGB); None: 3 where any image has colour, else 1.
    pub channels: Option<usize>,
}

/// One split of a folder, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderSplit {
    pub data: Dataset,
    /// The class of each label, sorted by name.
    pub class_names: Vec<String>,
    /// MD5 over every file's class, name and content MD5, in order: the split's identity
    /// (whatever the options it is decoded with).
    pub md5: String,
    /// Where the decoded split was read from, when it came from the cache.
    pub cached: Option<PathBuf>,
}

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The folder of `split` in `dir` (`train/`, `test/`).
pub fn split_dir(dir: &Path, split: Split) -> PathBuf {
    dir.join(match split {
        Split::Train => "train",
        Split::Test => "test",
    })
}

/// Whether `dir` is laid out as an image folder (it has `train/`).
pub fn is_image_folder(dir: &Path) -> bool {
    split_dir(dir, Split::Train).is_dir()
}

fn bad(dir: &Path, problem: String) -> Error {
    Error::Dataset {
        dir: dir.to_path_buf(),
        problem,
    }
}

/// Where an image folder's files come from: the file system, or the files a web page was
/// handed (`InMemory`).
pub trait FolderFiles {
    fn is_dir(&self, dir: &Path) -> bool;
    /// The names of `dir`'s sub-folders, hidden ones left out, sorted.
    fn subfolders(&self, dir: &Path) -> Result<Vec<String>>;
    /// The files directly in `dir`, sorted.
    fn files(&self, dir: &Path) -> Result<Vec<PathBuf>>;
    fn read(&self, path: &Path) -> Result<Vec<u8>>;
    /// Where decoded splits of `dir` are cached, if anywhere.
    fn cache_dir(&self, dir: &Path) -> Option<PathBuf>;
}

/// The file system.
pub struct Disk;

impl FolderFiles for Disk {
    fn is_dir(&self, dir: &Path) -> bool {
        dir.is_dir()
    }

    fn subfolders(&self, dir: &Path) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            if entry.path().is_dir() && !entry.file_name().to_string_lossy().starts_with('.') {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn files(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>> {
        std::fs::read(path).map_err(|e| Error::io(path, e))
    }

    fn cache_dir(&self, dir: &Path) -> Option<PathBuf> {
        Some(dir.join(CACHE_DIR))
    }
}

/// Files by their path inside the folder (`train/cat/1.png`): what a web page was handed. Nothing
/// is cached.
pub struct InMemory(pub BTreeMap<PathBuf, Vec<u8>>);

impl InMemory {
    /// The paths below `dir`, each as its components after `dir`.
    fn below<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = (&'a PathBuf, Vec<String>)> {
        self.0.keys().filter_map(move |path| {
            let rest = path.strip_prefix(dir).ok()?;
            let parts: Vec<String> = (rest.components())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            Some((path, parts))
        })
    }
}

impl FolderFiles for InMemory {
    fn is_dir(&self, dir: &Path) -> bool {
        self.below(dir).any(|(_, parts)| !parts.is_empty())
    }

    fn subfolders(&self, dir: &Path) -> Result<Vec<String>> {
        let mut names: Vec<String> = (self.below(dir))
            .filter(|(_, parts)| parts.len() > 1 && !parts[0].starts_with('.'))
            .map(|(_, mut parts)| parts.swap_remove(0))
            .collect();
        names.dedup();
        Ok(names)
    }

    fn files(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        Ok((self.below(dir))
            .filter(|(_, parts)| parts.len() == 1)
            .map(|(path, _)| path.clone())
            .collect())
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>> {
        (self.0.get(path).cloned())
            .ok_or_else(|| Error::io(path, std::io::Error::from(std::io::ErrorKind::NotFound)))
    }

    fn cache_dir(&self, _dir: &Path) -> Option<PathBuf> {
        None
    }
}

/// The image files of a class folder, sorted.
fn image_files(source: &impl FolderFiles, dir: &Path) -> Result<Vec<PathBuf>> {
    let is_image = |path: &PathBuf| {
        let extension = (path.extension())
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        EXTENSIONS.contains(&extension.as_str())
    };
    Ok(source.files(dir)?.into_iter().filter(is_image).collect())
}

/// Loads `split` of the folder `dir`, its classes being `classes` (the training split's; None
/// for the training split itself).
pub fn load(
    dir: &Path,
    split: Split,
    options: FolderOptions,
    classes: Option<&[String]>,
) -> Result<FolderSplit> {
    load_from(&Disk, dir, split, options, classes)
}

/// `load` from `source`'s files.
pub fn load_from(
    source: &impl FolderFiles,
    dir: &Path,
    split: Split,
    options: FolderOptions,
    classes: Option<&[String]>,
) -> Result<FolderSplit> {
    let root = split_dir(dir, split);
    if !source.is_dir(&root) {
        return Err(bad(
            dir,
            format!(
                "{} is not a folder; an image folder holds train/<class>/ and test/<class>/ \
                 sub-folders of PNG or JPEG files",
                root.display()
            ),
        ));
    }
    let found = source.subfolders(&root)?;
    let class_names: Vec<String> = match classes {
        None => found.clone(),
        Some(classes) => classes.to_vec(),
    };
    if class_names.len() < 2 || class_names.len() > 256 {
        return Err(bad(
            dir,
            format!(
                "{} has {} class folders; it takes 2 to 256",
                root.display(),
                class_names.len()
            ),
        ));
    }
    if let Some(stranger) = found.iter().find(|f| !class_names.contains(f)) {
        return Err(bad(
            dir,
            format!(
                "{} has a class folder {stranger:?} that train/ does not have",
                root.display()
            ),
        ));
    }
    // Every file with its label, and the split's identity from the files' digests.
    let mut files = Vec::new();
    let mut identity = Md5::new();
    for (label, class) in class_names.iter().enumerate() {
        let folder = root.join(class);
        if !source.is_dir(&folder) {
            continue;
        }
        let images = image_files(source, &folder)?;
        if images.is_empty() && classes.is_none() {
            return Err(bad(
                dir,
                format!(
                    "the class folder {} holds no PNG or JPEG file",
                    folder.display()
                ),
            ));
        }
        for path in images {
            let bytes = source.read(&path)?;
            identity.update(format!(
                "{class}/{}\0",
                path.file_name().unwrap_or_default().to_string_lossy()
            ));
            identity.update(Md5::digest(&bytes));
            files.push((path, label as u8));
        }
    }
    let md5 = super::idx::hex(&identity.finalize());
    // The cache is of the files decoded with these options.
    let key = super::idx::hex(&Md5::digest(format!("{md5} {options:?}")));
    let cache = source.cache_dir(dir).map(|cache_dir| {
        cache_dir.join(format!(
            "{}-{key}.bin",
            match split {
                Split::Train => "train",
                Split::Test => "test",
            }
        ))
    });
    let cached = (cache.as_ref()).and_then(|c| Some((c, read_cache(c, class_names.len())?)));
    if let Some((cache, data)) = cached {
        return Ok(FolderSplit {
            data,
            class_names,
            md5,
            cached: Some(cache.clone()),
        });
    }
    let data = decode_all(source, dir, &files, options, class_names.len())?;
    // A folder that cannot be written still trains, decoding each time.
    if let Some(cache) = &cache {
        let _ = write_cache(cache, &data);
    }
    Ok(FolderSplit {
        data,
        class_names,
        md5,
        cached: None,
    })
}

/// The folder inside an image folder holding its decoded splits.
pub const CACHE_DIR: &str = ".shadertrain-cache";

fn decode_all(
    source: &impl FolderFiles,
    dir: &Path,
    files: &[(PathBuf, u8)],
    options: FolderOptions,
    classes: usize,
) -> Result<Dataset> {
    let mut images = Vec::with_capacity(files.len());
    for (path, _) in files {
        let image = image::ImageReader::new(std::io::Cursor::new(source.read(path)?))
            .with_guessed_format()
            .map_err(|e| Error::io(path, e))?
            .decode()
            .map_err(|e| {
                bad(
                    dir,
                    format!("{} does not decode as an image: {e}", path.display()),
                )
            })?;
        images.push(image);
    }
    let colour = images.iter().any(|i| i.color().has_color());
    let channels = options.channels.unwrap_or(if colour { 3 } else { 1 });
    let (height, width) = match (options.size, images.first()) {
        (Some(size), _) => size,
        (None, Some(first)) => (first.height(), first.width()),
        (None, None) => {
            return Err(bad(dir, "the split holds no image".into()));
        }
    };
    let mut pixels = Vec::with_capacity(images.len() * (height * width) as usize * channels);
    for ((path, _), image) in files.iter().zip(images) {
        let image = match options.size {
            Some(_) if (image.height(), image.width()) != (height, width) => {
                image.resize_exact(width, height, FilterType::Triangle)
            }
            Some(_) => image,
            None if (image.height(), image.width()) != (height, width) => {
                return Err(bad(
                    dir,
                    format!(
                        "{} is {}×{}, and the first image {}×{}: give --image-size HxW to resize \
                         them all",
                        path.display(),
                        image.width(),
                        image.height(),
                        width,
                        height
                    ),
                ));
            }
            None => image,
        };
        match channels {
            1 => pixels.extend_from_slice(image.to_luma8().as_raw()),
            _ => pixels.extend_from_slice(image.to_rgb8().as_raw()),
        }
    }
    let labels = files.iter().map(|(_, label)| *label).collect();
    let shape = Shape::image(channels, height as usize, width as usize);
    Dataset::with_shape(shape, classes, pixels, labels).map_err(|e| bad(dir, e.to_string()))
}

/// The cache file: "shadertrain decoded images 1\n", then C, H, W, classes and samples as
/// little-endian u32, then the labels, then the pixels.
const CACHE_MAGIC: &[u8] = b"shadertrain decoded images 1\n";

fn read_cache(path: &Path, classes: usize) -> Option<Dataset> {
    let bytes = std::fs::read(path).ok()?;
    let rest = bytes.strip_prefix(CACHE_MAGIC)?;
    let word = |i: usize| -> Option<usize> {
        let b = rest.get(4 * i..4 * i + 4)?;
        Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
    };
    let (c, h, w, k, n) = (word(0)?, word(1)?, word(2)?, word(3)?, word(4)?);
    if k != classes {
        return None;
    }
    let labels = rest.get(20..20 + n)?.to_vec();
    let pixels = rest.get(20 + n..)?.to_vec();
    Dataset::with_shape(Shape::image(c, h, w), k, pixels, labels).ok()
}

fn write_cache(path: &Path, data: &Dataset) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut bytes = CACHE_MAGIC.to_vec();
    let s = data.shape;
    for v in [s.channels, s.height, s.width, data.classes, data.samples()] {
        bytes.extend_from_slice(&(v as u32).to_le_bytes());
    }
    bytes.extend_from_slice(&data.labels);
    bytes.extend_from_slice(&data.pixels);
    crate::files::write_atomically(path, &bytes)
}
