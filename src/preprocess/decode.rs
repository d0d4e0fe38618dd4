//! Reading photos from files, strictly: a half-written JPEG must be an error, not
//! an item. The `image` crate's JPEG decoder fills missing rows with grey and
//! reports success, so truncation is checked here by the end-of-image marker.

use std::path::Path;

/// Photos larger than this are refused before decoding (a 2×8000 picture resized to
/// a 256 shorter side would need ~800 MB).
const MAX_PIXELS: u64 = 50_000_000;
const MAX_ASPECT: u32 = 20;

/// Reads and decodes an image file by content (a PNG named `.jpg` still works).
/// The error is a message for the user; the caller adds the path.
pub fn decode_file(path: &Path) -> Result<image::RgbImage, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    decode_bytes(&bytes)
}

pub fn decode_bytes(bytes: &[u8]) -> Result<image::RgbImage, String> {
    let format = image::guess_format(bytes).map_err(|e| e.to_string())?;
    if format == image::ImageFormat::Jpeg && !has_jpeg_end(bytes) {
        return Err("truncated JPEG (no end-of-image marker)".into());
    }
    let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (w, h) = reader.into_dimensions().map_err(|e| e.to_string())?;
    check_size(w, h)?;
    let image = image::load_from_memory_with_format(bytes, format).map_err(|e| e.to_string())?;
    Ok(image.into_rgb8())
}

/// A complete JPEG ends with FF D9; some writers pad with zero bytes after it.
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    end >= 2 && bytes[end - 2..end] == [0xFF, 0xD9]
}

fn check_size(w: u32, h: u32) -> Result<(), String> {
    if w == 0 || h == 0 {
        return Err("image has no pixels".into());
    }
    if u64::from(w) * u64::from(h) > MAX_PIXELS || w.max(h) / w.min(h) > MAX_ASPECT {
        return Err(format!("{w}x{h} pixels is not a photo of a tray (too large or too narrow)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 5) as u8, (y * 3) as u8, 90]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn complete_jpeg_and_png_decode() {
        assert_eq!(decode_bytes(&jpeg(40, 30)).unwrap().dimensions(), (40, 30));
        let mut padded = jpeg(8, 8);
        padded.extend([0, 0, 0]);
        assert!(decode_bytes(&padded).is_ok());
        let mut png = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(5, 4).write_to(&mut png, image::ImageFormat::Png).unwrap();
        assert_eq!(decode_bytes(png.get_ref()).unwrap().dimensions(), (5, 4));
    }

    #[test]
    fn truncated_jpeg_is_an_error() {
        let full = jpeg(64, 48);
        for cut in [full.len() / 3, full.len() / 2, full.len() - 2] {
            let err = decode_bytes(&full[..cut]).unwrap_err();
            assert!(err.contains("truncated"), "{err}");
        }
    }

    #[test]
    fn garbage_and_absurd_sizes_are_errors() {
        assert!(decode_bytes(b"not an image at all").is_err());
        assert!(check_size(2, 8000).is_err());
        assert!(check_size(10_000, 10_000).is_err());
        assert!(check_size(512, 384).is_ok());
    }
}
