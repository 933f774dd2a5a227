//! What happens to a sample's pixels before the first layer: scaling to [0, 1], the model's
//! standardisation (per-channel mean and standard deviation of the training set, `--normalize`),
//! and in training the run's augmentation (`--augment`: random crops, flips and cutout, drawn
//! per (seed, step, sample) so that a rerun and a resumed run draw the same). gather.wgsl
//! `gather_images` does it on the GPU; `gather_batch` here is its CPU reference.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::rng::mix;
use crate::shapes::Shape;

/// Per-channel standardisation: x = (pixel / 255 − mean[c]) / std[c], as torchvision's
/// `Normalize(mean, std)` after `ToTensor()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardisation {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// The most channels an image may have (the GPU holds the statistics as one vec4 each).
pub const MAX_CHANNELS: usize = 4;

impl Standardisation {
    /// The mean and (population) standard deviation of each channel of `data`'s pixels / 255,
    /// summed in f64.
    pub fn of(data: &Dataset) -> Result<Self> {
        let channels = data.shape.channels;
        if channels > MAX_CHANNELS {
            return Err(Error::Config(format!(
                "--normalize takes images of at most {MAX_CHANNELS} channels, these have {channels}"
            )));
        }
        let mut sum = vec![0.0f64; channels];
        let mut squares = vec![0.0f64; channels];
        for (i, &p) in data.pixels.iter().enumerate() {
            let v = p as f64 / 255.0;
            sum[i % channels] += v;
            squares[i % channels] += v * v;
        }
        let count = (data.pixels.len() / channels).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std: Vec<f32> = (squares.iter().zip(&mean))
            .map(|(q, m)| ((q / count - m * m).max(0.0)).sqrt() as f32)
            .collect();
        if let Some(c) = std.iter().position(|&s| s == 0.0) {
            return Err(Error::Config(format!(
                "--normalize: channel {c} of the training images is the same everywhere (its \
                 standard deviation is 0)"
            )));
        }
        Ok(Standardisation {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        })
    }

    /// Pixel byte `p` of channel `c`, standardised (as gather.wgsl computes it, in f32).
    pub fn apply(&self, p: u8, c: usize) -> f32 {
        (p as f32 / 255.0 - self.mean[c]) / self.std[c]
    }

    /// "mean 0.2860, std 0.3530" (one figure per channel, comma-separated).
    pub fn describe(&self) -> String {
        let list = |values: &[f32]| {
            let figures: Vec<String> = values.iter().map(|v| format!("{v:.4}")).collect();
            figures.join(", ")
        };
        format!("mean {}, std {}", list(&self.mean), list(&self.std))
    }
}

/// `pixels` (channels-last, `channels` per position) as the first layer sees them in evaluation:
/// / 255, then standardised where `standardisation` is given.
pub fn scale_pixels(
    pixels: &[u8],
    channels: usize,
    standardisation: Option<&Standardisation>,
) -> Vec<f32> {
    (pixels.iter().enumerate())
        .map(|(i, &p)| scaled(p, i % channels, standardisation))
        .collect()
}

/// Pixel byte `p` of channel `c` / 255, standardised where `standardisation` is given.
fn scaled(p: u8, c: usize, standardisation: Option<&Standardisation>) -> f32 {
    match standardisation {
        Some(s) => s.apply(p, c),
        None => p as f32 / 255.0,
    }
}

/// Random changes to each training image (`--augment`), as torchvision's transforms make them,
/// in this order: `RandomCrop(size, padding=crop)` (a random shift by up to `crop` pixels, the
/// uncovered border black), `RandomHorizontalFlip()`, then after standardisation DeVries &
/// Taylor's cutout (an S×S square, centred anywhere in the image and clipped at its edges, set to
/// 0). Evaluation sees the images unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augmentation {
    /// Pixels of zero padding around the image before a random crop of its size; 0: none.
    pub crop: u32,
    pub flip: bool,
    /// Side of the cutout square; 0: none.
    pub cutout: u32,
}

impl Augmentation {
    pub fn is_none(&self) -> bool {
        *self == Augmentation::default()
    }

    /// Reads `crop<P>`, `flip`, `cutout<S>`, comma-separated, or `none`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut augmentation = Augmentation::default();
        if text.trim() == "none" {
            return Ok(augmentation);
        }
        for token in text.split(',').map(str::trim) {
            let number = |prefix: &str| -> std::result::Result<Option<u32>, String> {
                match token.strip_prefix(prefix) {
                    None => Ok(None),
                    Some(n) => match n.parse::<u32>() {
                        Ok(n) if n > 0 => Ok(Some(n)),
                        _ => Err(format!(
                            "{token:?}: {prefix} takes a whole number of pixels above 0, e.g. \
                             {prefix}4"
                        )),
                    },
                }
            };
            if token == "flip" {
                augmentation.flip = true;
            } else if let Some(p) = number("crop")? {
                augmentation.crop = p;
            } else if let Some(s) = number("cutout")? {
                augmentation.cutout = s;
            } else {
                return Err(format!(
                    "{token:?} is not an augmentation: give crop<P>, flip, cutout<S> \
                     (comma-separated), or none"
                ));
            }
        }
        Ok(augmentation)
    }

    /// As `parse` reads it.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.crop > 0 {
            parts.push(format!("crop{}", self.crop));
        }
        if self.flip {
            parts.push("flip".to_string());
        }
        if self.cutout > 0 {
            parts.push(format!("cutout{}", self.cutout));
        }
        match parts.is_empty() {
            true => "none".to_string(),
            false => parts.join(","),
        }
    }

    /// Refuses what does not fit images of `shape`.
    pub fn check(&self, shape: Shape) -> Result<()> {
        let side = shape.height.min(shape.width) as u32;
        if !self.is_none() && shape.is_flat() {
            return Err(Error::Config(format!(
                "--augment {} changes images, and the samples are vectors of {} values",
                self.describe(),
                shape.len()
            )));
        }
        if self.crop >= side || self.cutout > side {
            return Err(Error::Config(format!(
                "--augment {}: a crop's padding must be below and a cutout at most the image's \
                 side ({side} pixels)",
                self.describe()
            )));
        }
        Ok(())
    }
}

/// The key of a run's augmentation draws.
pub fn augmentation_key(seed: u64) -> u32 {
    mix(seed as u32 ^ mix((seed >> 32) as u32 ^ 0x6175_676d))
}

/// Draw `j` (0: crop row, 1: crop column, 2: flip, 3: cutout row, 4: cutout column) for
/// `sample` at training step `step`: a hash of (key, step, sample, j), as gather.wgsl's.
pub fn draw(key: u32, step: u32, sample: u32, j: u32) -> u32 {
    mix(j ^ mix(sample ^ mix(step ^ key)))
}

/// Where output pixel (y, x) of `sample` reads from, and whether cutout clears it: (source row,
/// source column, cleared), the source possibly outside the image (then black).
fn augmented_source(
    augmentation: &Augmentation,
    shape: Shape,
    draws: [u32; 5],
    y: usize,
    x: usize,
) -> (i64, i64, bool) {
    let (height, width) = (shape.height as i64, shape.width as i64);
    let (y, x) = (y as i64, x as i64);
    let p = augmentation.crop as i64;
    let span = (2 * p + 1) as u32;
    let (dy, dx) = ((draws[0] % span) as i64 - p, (draws[1] % span) as i64 - p);
    let flipped = augmentation.flip && draws[2] & 1 == 1;
    let column = if flipped { width - 1 - x } else { x };
    let s = augmentation.cutout as i64;
    let cleared = s > 0 && {
        let (cy, cx) = (
            (draws[3] % height as u32) as i64,
            (draws[4] % width as u32) as i64,
        );
        let (top, left) = (cy - s / 2, cx - s / 2);
        (top..top + s).contains(&y) && (left..left + s).contains(&x)
    };
    (y + dy, column + dx, cleared)
}

/// gather.wgsl `gather_images`: the batch x (rows × features) and its labels, in `order` from
/// `start`: pixels / 255, standardised where `standardisation` is given, augmented where
/// `augmentation` is (with the run's key and the step's number).
pub fn gather_batch(
    data: &Dataset,
    order: &[u32],
    start: usize,
    rows: usize,
    standardisation: Option<&Standardisation>,
    augmentation: Option<(&Augmentation, u32, u32)>,
) -> (Vec<f32>, Vec<u32>) {
    let shape = data.shape;
    let features = data.features();
    let channels = shape.channels;
    let mut x = Vec::with_capacity(rows * features);
    let mut y = Vec::with_capacity(rows);
    for &sample in &order[start..start + rows] {
        let pixels = &data.pixels[sample as usize * features..(sample as usize + 1) * features];
        // The sample's draws, hashed once for all its values.
        let augmented = augmentation.map(|(augmentation, key, step)| {
            (
                augmentation,
                [0, 1, 2, 3, 4].map(|j| draw(key, step, sample, j)),
            )
        });
        for f in 0..features {
            let (c, position) = (f % channels, f / channels);
            let (row, column) = (position / shape.width, position % shape.width);
            let (source, cleared) = match augmented {
                None => (Some(f), false),
                Some((augmentation, draws)) => {
                    let (sy, sx, cleared) =
                        augmented_source(augmentation, shape, draws, row, column);
                    let inside = (0..shape.height as i64).contains(&sy)
                        && (0..shape.width as i64).contains(&sx);
                    let source =
                        inside.then(|| (sy as usize * shape.width + sx as usize) * channels + c);
                    (source, cleared)
                }
            };
            let value = scaled(source.map_or(0, |s| pixels[s]), c, standardisation);
            x.push(if cleared { 0.0 } else { value });
        }
        y.push(data.labels[sample as usize] as u32);
    }
    (x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 40 samples of 1×6×6 whose pixels are 1 + their position (so each moved pixel tells where
    /// it came from), each augmented at step 3.
    fn augmented(augmentation: Augmentation) -> (Vec<Vec<f32>>, Vec<f32>) {
        let shape = Shape::image(1, 6, 6);
        let image: Vec<u8> = (1..=36).collect();
        let data = Dataset::with_shape(shape, 2, image.repeat(40), vec![0; 40]).unwrap();
        let order: Vec<u32> = (0..40).collect();
        let key = augmentation_key(1);
        let (x, _) = gather_batch(&data, &order, 0, 40, None, Some((&augmentation, key, 3)));
        let original: Vec<f32> = image.iter().map(|&p| p as f32 / 255.0).collect();
        (x.chunks(36).map(<[f32]>::to_vec).collect(), original)
    }

    #[test]
    fn a_crop_shifts_the_image_by_up_to_its_padding_with_black_borders() {
        let crop = Augmentation {
            crop: 2,
            ..Augmentation::default()
        };
        let (images, original) = augmented(crop);
        let mut shifts = std::collections::HashSet::new();
        for image in &images {
            let fits = |dy: i64, dx: i64| {
                (0..6i64).all(|y| {
                    (0..6i64).all(|x| {
                        let (sy, sx) = (y + dy, x + dx);
                        let inside = (0..6).contains(&sy) && (0..6).contains(&sx);
                        let expected = if inside {
                            original[(sy * 6 + sx) as usize]
                        } else {
                            0.0
                        };
                        image[(y * 6 + x) as usize] == expected
                    })
                })
            };
            let shift = (-2..=2)
                .flat_map(|dy| (-2..=2).map(move |dx| (dy, dx)))
                .find(|&(dy, dx)| fits(dy, dx));
            shifts.insert(shift.expect("every image is the original shifted by at most 2"));
        }
        assert!(shifts.len() > 10, "the shifts vary: {shifts:?}");
    }

    #[test]
    fn a_flip_mirrors_about_half_the_images_and_cutout_clears_one_square() {
        let flip = Augmentation {
            flip: true,
            ..Augmentation::default()
        };
        let (images, original) = augmented(flip);
        let mirrored: Vec<f32> = (0..36).map(|i| original[(i / 6) * 6 + 5 - i % 6]).collect();
        let flipped = images.iter().filter(|image| **image == mirrored).count();
        assert_eq!(
            images.iter().filter(|i| **i == original).count() + flipped,
            40
        );
        assert!((10..=30).contains(&flipped), "{flipped} of 40 flipped");

        let cutout = Augmentation {
            cutout: 3,
            ..Augmentation::default()
        };
        let (images, original) = augmented(cutout);
        for image in &images {
            let cleared: Vec<usize> = (0..36).filter(|&i| image[i] != original[i]).collect();
            assert!(cleared.iter().all(|&i| image[i] == 0.0));
            let rows: Vec<usize> = cleared.iter().map(|i| i / 6).collect();
            let columns: Vec<usize> = cleared.iter().map(|i| i % 6).collect();
            let span = |v: &[usize]| v.iter().max().unwrap() - v.iter().min().unwrap() + 1;
            assert!(!cleared.is_empty() && span(&rows) <= 3 && span(&columns) <= 3);
            assert_eq!(cleared.len(), span(&rows) * span(&columns), "a rectangle");
        }
    }

    #[test]
    fn augmentations_read_back_as_written() {
        for text in ["crop2", "crop4,flip,cutout8", "flip", "none"] {
            assert_eq!(Augmentation::parse(text).unwrap().describe(), text);
        }
        for bad in ["crop", "crop0", "flop", "cutout-1", "crop2,"] {
            assert!(Augmentation::parse(bad).is_err(), "{bad}");
        }
    }
}
