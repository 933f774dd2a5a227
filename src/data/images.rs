//! Turning an arbitrary photo or drawing of a digit into an MNIST-style sample, the way MNIST was
//! made: grey levels, white digit on black, the digit's bounding box scaled into 20×20 (aspect kept),
//! then placed in 28×28 so that its centre of mass sits at the centre.

use std::path::Path;

use image::GrayImage;
use image::imageops::{FilterType, resize};

use crate::error::{Error, Result};

pub const SIDE: u32 = 28;
const BOX: u32 = 20;

/// Reads a PNG or JPEG of any size and returns 28×28 grey levels, row-major, digit bright.
pub fn load_digit(path: &Path) -> Result<Vec<u8>> {
    let bad = |problem: String| Error::Image {
        path: path.to_path_buf(),
        problem,
    };
    let image = image::open(path)
        .map_err(|e| bad(format!("not a readable PNG or JPEG image: {e}")))?
        .to_luma8();
    digit_from_grey(&image).map_err(bad)
}

/// The MNIST preprocessing of a grey image (see the module comment).
pub fn digit_from_grey(image: &GrayImage) -> std::result::Result<Vec<u8>, String> {
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return Err("the image is empty".into());
    }
    // A light border means dark ink on light paper: invert so the digit is bright, as in MNIST.
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
        return Err("no digit found: the image is blank".into());
    }
    let threshold = brightest / 4;
    let (mut x0, mut y0, mut x1, mut y1) = (width, height, 0, 0);
    for (x, y, p) in ink.enumerate_pixels() {
        if p[0] > threshold {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    let (box_w, box_h) = (x1 - x0 + 1, y1 - y0 + 1);
    let cropped = image::imageops::crop_imm(&ink, x0, y0, box_w, box_h).to_image();
    let scale = BOX as f64 / box_w.max(box_h) as f64;
    let new_w = ((box_w as f64 * scale).round() as u32).clamp(1, BOX);
    let new_h = ((box_h as f64 * scale).round() as u32).clamp(1, BOX);
    let scaled = resize(&cropped, new_w, new_h, FilterType::Triangle);

    let (mut mass, mut mx, mut my) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y, p) in scaled.enumerate_pixels() {
        let v = p[0] as f64;
        mass += v;
        mx += v * (x as f64 + 0.5);
        my += v * (y as f64 + 0.5);
    }
    let centre = SIDE as f64 / 2.0;
    let (dx, dy) = if mass > 0.0 {
        (
            (centre - mx / mass).round() as i64,
            (centre - my / mass).round() as i64,
        )
    } else {
        (((SIDE - new_w) / 2) as i64, ((SIDE - new_h) / 2) as i64)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dark_stroke_on_white_becomes_a_centred_bright_digit() {
        // A 10×60 vertical bar, dark on white, off-centre in a 100×100 image.
        let image = GrayImage::from_fn(100, 100, |x, y| {
            image::Luma([if (10..20).contains(&x) && (5..65).contains(&y) {
                0
            } else {
                255
            }])
        });
        let digit = digit_from_grey(&image).unwrap();
        let lit: Vec<(usize, usize)> = (0..784)
            .filter(|&i| digit[i] > 128)
            .map(|i| (i % 28, i / 28))
            .collect();
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
    fn a_blank_image_is_an_error() {
        assert!(digit_from_grey(&GrayImage::from_pixel(30, 30, image::Luma([255]))).is_err());
    }
}
