//! Turning an arbitrary picture into a sample the way the model's data was made.
//!
//! Digits (MNIST): grey levels, white digit on black, the digit's bounding box scaled into 20×20
//! (aspect kept), then placed in 28×28 so that its centre of mass sits at the centre. Clothing
//! (Fashion-MNIST, as Zalando describe their conversion): the edges close to the corners' colour
//! trimmed, the longest edge resized to 28, the shorter one extended to 28 with the item in the
//! middle of the canvas, intensities negated where the background is light. (Their sharpening
//! step is left out: resizing here filters instead of skipping pixels.) An image already in its
//! data's form (28×28; a digit within 20×20 and centred) is taken as it is, so the datasets' own
//! images come through unchanged.
//!
//! The format is read from the file's content, not its name. A picture with transparency is put
//! on a background that its strokes stand out from: light strokes on black, dark ones on white.

use std::path::Path;

use image::imageops::{FilterType, resize};
use image::{DynamicImage, GrayImage};

use crate::data::DatasetKind;
use crate::error::{Error, Result};
use crate::shapes::Shape;

pub const SIDE: u32 = 28;
const BOX: u32 = 20;
/// Narrower or lower than this, an image cannot show a digit or an item.
const MIN_SIDE: u32 = 8;
/// How far from the centre an image's centre of mass may be to count as centred: MNIST's are
/// within one pixel.
const CENTRED_WITHIN: f64 = 1.5;
/// Fashion-MNIST trimmed edges within 5 % of the maximum intensity of the corners' colour.
const TRIM_WITHIN: f64 = 0.05 * 255.0;

/// How a dataset's images were made from pictures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preparation {
    Digit,
    Clothing,
    /// Any picture as a model of this input shape takes it: grey or RGB (by its channels),
    /// resized to its height × width (bilinear), nothing else; for CIFAR-10's and image
    /// folders' models.
    Resize(Shape),
}

impl Preparation {
    /// The preparation of pictures for a model of `input` trained on `dataset`: MNIST's and
    /// Fashion-MNIST's as those datasets were made, every other's resized.
    pub fn of(dataset: DatasetKind, input: Shape) -> Preparation {
        match dataset {
            DatasetKind::Mnist => Preparation::Digit,
            DatasetKind::FashionMnist => Preparation::Clothing,
            DatasetKind::Cifar10 | DatasetKind::Folder => Preparation::Resize(input),
        }
    }

    /// Prepares a grey picture: 28×28 grey levels, row-major, the subject bright on black; the
    /// reason when it shows nothing to classify.
    pub fn prepare(self, image: &GrayImage) -> std::result::Result<Vec<u8>, String> {
        match self {
            Preparation::Digit => digit_from_grey(image),
            Preparation::Clothing => clothing_from_grey(image),
            Preparation::Resize(shape) => {
                Ok(resized(&DynamicImage::ImageLuma8(image.clone()), shape))
            }
        }
    }
}

/// `image` as `shape`'s channels (1: grey, else RGB), resized to its height × width,
/// channels-last.
fn resized(image: &DynamicImage, shape: Shape) -> Vec<u8> {
    let (width, height) = (shape.width as u32, shape.height as u32);
    let image = match (image.width(), image.height()) == (width, height) {
        true => image.clone(),
        false => image.resize_exact(width, height, FilterType::Triangle),
    };
    match shape.channels {
        1 => image.to_luma8().into_raw(),
        _ => image.to_rgb8().into_raw(),
    }
}

/// Reads an image (PNG or JPEG, whatever its name says) and prepares it as `preparation`
/// says. `Error::Image` when the file cannot be read, `Error::EmptyImage` when it shows
/// nothing to classify.
pub fn load_image(path: &Path, preparation: Preparation) -> Result<Vec<u8>> {
    let unreadable = |problem: String| Error::Image {
        path: path.to_path_buf(),
        problem,
    };
    let decoded = image::ImageReader::open(path)
        .map_err(|e| unreadable(format!("cannot open it: {e}")))?
        .with_guessed_format()
        .map_err(|e| unreadable(format!("cannot read it: {e}")))?
        .decode()
        .map_err(|e| unreadable(format!("not a readable PNG or JPEG image: {e}")))?;
    if let Preparation::Resize(shape) = preparation {
        return Ok(resized(&decoded, shape));
    }
    preparation
        .prepare(&grey_on_a_contrasting_background(decoded))
        .map_err(|problem| Error::EmptyImage {
            path: path.to_path_buf(),
            problem,
        })
}

/// Grey levels, with transparent parts put on black when the visible strokes are light and on
/// white when they are dark, so that the strokes survive whichever colour they are.
fn grey_on_a_contrasting_background(image: DynamicImage) -> GrayImage {
    if !image.color().has_alpha() {
        return image.to_luma8();
    }
    let with_alpha = image.to_luma_alpha8();
    let (mut ink, mut opacity) = (0.0f64, 0.0f64);
    for pixel in with_alpha.pixels() {
        let alpha = pixel[1] as f64 / 255.0;
        ink += alpha * pixel[0] as f64;
        opacity += alpha;
    }
    let strokes = if opacity > 0.0 { ink / opacity } else { 0.0 };
    let background = if strokes < 128.0 { 255.0 } else { 0.0 };
    GrayImage::from_fn(with_alpha.width(), with_alpha.height(), |x, y| {
        let pixel = with_alpha.get_pixel(x, y);
        let alpha = pixel[1] as f64 / 255.0;
        let grey = alpha * pixel[0] as f64 + (1.0 - alpha) * background;
        image::Luma([grey.round() as u8])
    })
}

/// The picture with its subject bright on dark: inverted when its border is light (dark ink on
/// paper, a product photographed on white). None when it is too small or blank.
fn bright_on_dark(image: &GrayImage, what: &str) -> std::result::Result<GrayImage, String> {
    let (width, height) = image.dimensions();
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(format!(
            "{width}×{height} pixels is too small to show a {what} (the data's images are 28×28)"
        ));
    }
    let border: Vec<u8> = image
        .enumerate_pixels()
        .filter(|(x, y, _)| *x == 0 || *y == 0 || *x == width - 1 || *y == height - 1)
        .map(|(_, _, p)| p[0])
        .collect();
    let border_mean = border.iter().map(|&v| v as f64).sum::<f64>() / border.len() as f64;
    let invert = border_mean > 127.0;
    let ink = GrayImage::from_fn(width, height, |x, y| {
        let v = image.get_pixel(x, y)[0];
        image::Luma([if invert { 255 - v } else { v }])
    });
    let brightest = ink.pixels().map(|p| p[0]).max().unwrap_or(0);
    if brightest < 32 {
        return Err(format!("no {what} found: the image is blank"));
    }
    Ok(ink)
}

/// The Fashion-MNIST preparation of a grey image (see the module comment).
pub fn clothing_from_grey(image: &GrayImage) -> std::result::Result<Vec<u8>, String> {
    let ink = bright_on_dark(image, "item")?;
    let (width, height) = ink.dimensions();
    if (width, height) == (SIDE, SIDE) {
        return Ok(ink.into_raw());
    }
    let corners = [
        (0, 0),
        (width - 1, 0),
        (0, height - 1),
        (width - 1, height - 1),
    ];
    let background = corners
        .iter()
        .map(|&(x, y)| ink.get_pixel(x, y)[0] as f64)
        .sum::<f64>()
        / 4.0;
    let (mut x0, mut y0, mut x1, mut y1) = (width, height, 0, 0);
    for (x, y, p) in ink.enumerate_pixels() {
        if (p[0] as f64 - background).abs() > TRIM_WITHIN {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    if x0 > x1 {
        return Err("no item found: the image is one colour".into());
    }
    let (box_w, box_h) = (x1 - x0 + 1, y1 - y0 + 1);
    let cropped = image::imageops::crop_imm(&ink, x0, y0, box_w, box_h).to_image();
    let scale = SIDE as f64 / box_w.max(box_h) as f64;
    let new_w = ((box_w as f64 * scale).round() as u32).clamp(1, SIDE);
    let new_h = ((box_h as f64 * scale).round() as u32).clamp(1, SIDE);
    let scaled = resize(&cropped, new_w, new_h, FilterType::Triangle);
    let mut out = vec![0u8; (SIDE * SIDE) as usize];
    let (dx, dy) = ((SIDE - new_w) / 2, (SIDE - new_h) / 2);
    for (x, y, p) in scaled.enumerate_pixels() {
        out[((y + dy) * SIDE + x + dx) as usize] = p[0];
    }
    Ok(out)
}

/// The MNIST preprocessing of a grey image (see the module comment).
pub fn digit_from_grey(image: &GrayImage) -> std::result::Result<Vec<u8>, String> {
    let ink = bright_on_dark(image, "digit")?;
    let (width, height) = ink.dimensions();
    let brightest = ink.pixels().map(|p| p[0]).max().unwrap_or(0);
    let threshold = brightest / 4;
    let (mut x0, mut y0, mut x1, mut y1) = (width, height, 0, 0);
    for (x, y, p) in ink.enumerate_pixels() {
        if p[0] > threshold {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    let (box_w, box_h) = (x1 - x0 + 1, y1 - y0 + 1);
    let in_mnist_form = (width, height) == (SIDE, SIDE)
        && box_w.max(box_h) <= BOX
        && centre_of_mass_offset(&ink) <= CENTRED_WITHIN;
    if in_mnist_form {
        return Ok(ink.into_raw());
    }
    let cropped = image::imageops::crop_imm(&ink, x0, y0, box_w, box_h).to_image();
    let scale = BOX as f64 / box_w.max(box_h) as f64;
    let new_w = ((box_w as f64 * scale).round() as u32).clamp(1, BOX);
    let new_h = ((box_h as f64 * scale).round() as u32).clamp(1, BOX);
    let scaled = resize(&cropped, new_w, new_h, FilterType::Triangle);

    let centre = SIDE as f64 / 2.0;
    let (dx, dy) = match centre_of_mass(&scaled) {
        Some((mx, my)) => ((centre - mx).round() as i64, (centre - my).round() as i64),
        None => (((SIDE - new_w) / 2) as i64, ((SIDE - new_h) / 2) as i64),
    };
    let mut out = vec![0u8; (SIDE * SIDE) as usize];
    for (x, y, p) in scaled.enumerate_pixels() {
        let (tx, ty) = (x as i64 + dx, y as i64 + dy);
        if (0..SIDE as i64).contains(&tx) && (0..SIDE as i64).contains(&ty) {
            out[(ty * SIDE as i64 + tx) as usize] = p[0];
        }
    }
    Ok(out)
}

/// The grey-level-weighted mean of pixel centres, None for an all-black image.
fn centre_of_mass(image: &GrayImage) -> Option<(f64, f64)> {
    let (mut mass, mut mx, mut my) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y, p) in image.enumerate_pixels() {
        let v = p[0] as f64;
        mass += v;
        mx += v * (x as f64 + 0.5);
        my += v * (y as f64 + 0.5);
    }
    (mass > 0.0).then(|| (mx / mass, my / mass))
}

/// How far the centre of mass is from the image's centre, in pixels along the worse axis.
fn centre_of_mass_offset(image: &GrayImage) -> f64 {
    let (width, height) = image.dimensions();
    centre_of_mass(image).map_or(f64::INFINITY, |(mx, my)| {
        (mx - width as f64 / 2.0)
            .abs()
            .max((my - height as f64 / 2.0).abs())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `width`×`height` white picture with a box of grey `ink` over `xs` × `ys`.
    fn box_on_white(
        (width, height): (u32, u32),
        xs: std::ops::Range<u32>,
        ys: std::ops::Range<u32>,
        ink: u8,
    ) -> GrayImage {
        GrayImage::from_fn(width, height, |x, y| {
            image::Luma([if xs.contains(&x) && ys.contains(&y) {
                ink
            } else {
                255
            }])
        })
    }

    /// The (x, y) of a 28×28 sample's bright pixels.
    fn lit_pixels(sample: &[u8]) -> Vec<(usize, usize)> {
        (0..784)
            .filter(|&i| sample[i] > 128)
            .map(|i| (i % 28, i / 28))
            .collect()
    }

    #[test]
    fn a_dark_stroke_on_white_becomes_a_centred_bright_digit() {
        // A 10×60 vertical bar, dark on white, off-centre in a 100×100 image.
        let digit = digit_from_grey(&box_on_white((100, 100), 10..20, 5..65, 0)).unwrap();
        let lit = lit_pixels(&digit);
        let height =
            lit.iter().map(|p| p.1).max().unwrap() - lit.iter().map(|p| p.1).min().unwrap() + 1;
        assert!(
            (19..=20).contains(&height),
            "scaled to 20 tall, got {height}"
        );
        let cx = lit.iter().map(|p| p.0 as f64 + 0.5).sum::<f64>() / lit.len() as f64;
        let cy = lit.iter().map(|p| p.1 as f64 + 0.5).sum::<f64>() / lit.len() as f64;
        assert!(
            (cx - 14.0).abs() <= 1.0 && (cy - 14.0).abs() <= 1.0,
            "centre ({cx}, {cy})"
        );
        assert_eq!(digit[0], 0, "background is black after inversion");
    }

    #[test]
    fn clothing_is_trimmed_resized_to_28_and_centred_on_black() {
        // A 30×60 dark item on white, off-centre in a 200×100 picture.
        let item = clothing_from_grey(&box_on_white((200, 100), 20..50, 30..90, 40)).unwrap();
        let (xs, ys): (Vec<usize>, Vec<usize>) = lit_pixels(&item).into_iter().unzip();
        let span = |v: &[usize]| (*v.iter().min().unwrap(), *v.iter().max().unwrap());
        assert_eq!(span(&ys), (0, 27), "the longest edge fills 28");
        let (x0, x1) = span(&xs);
        assert!(
            (13..=15).contains(&(x1 - x0 + 1)),
            "aspect kept: {x0}..{x1}"
        );
        assert!(
            (x0 as i64 - (27 - x1) as i64).abs() <= 1,
            "centred: {x0}..{x1}"
        );
        assert_eq!(item[0], 0, "the background is black after negation");
        // A 28×28 item in the data's form comes through as it is.
        let own = GrayImage::from_fn(SIDE, SIDE, |x, y| image::Luma([((x * 9 + y) % 200) as u8]));
        assert_eq!(clothing_from_grey(&own).unwrap(), own.as_raw().clone());
    }

    #[test]
    fn blank_and_tiny_images_show_no_digit() {
        assert!(digit_from_grey(&GrayImage::from_pixel(30, 30, image::Luma([255]))).is_err());
        let tiny = digit_from_grey(&GrayImage::from_pixel(1, 1, image::Luma([100])));
        assert!(tiny.unwrap_err().contains("too small"));
    }

    #[test]
    fn a_centred_28_by_28_digit_comes_through_unchanged_and_an_off_centre_one_is_moved() {
        // A 6×18 bar with soft edges, centred.
        let bar = |x0: u32, y0: u32| {
            GrayImage::from_fn(SIDE, SIDE, move |x, y| {
                let inside = (x0..x0 + 6).contains(&x) && (y0..y0 + 18).contains(&y);
                let edge = (x0 - 1..x0 + 7).contains(&x) && (y0 - 1..y0 + 19).contains(&y);
                image::Luma([if inside {
                    250
                } else if edge {
                    40
                } else {
                    0
                }])
            })
        };
        let centred = bar(11, 5);
        assert_eq!(digit_from_grey(&centred).unwrap(), centred.as_raw().clone());
        // Dark on light, it is only inverted.
        let mut paper = centred.clone();
        image::imageops::invert(&mut paper);
        assert_eq!(digit_from_grey(&paper).unwrap(), centred.as_raw().clone());
        // In a corner it is not MNIST's form: scaled and centred.
        let corner = bar(2, 2);
        let moved = digit_from_grey(&corner).unwrap();
        assert_ne!(moved, corner.as_raw().clone());
        let moved = GrayImage::from_raw(SIDE, SIDE, moved).unwrap();
        assert!(centre_of_mass_offset(&moved) <= 1.0);
    }
}
