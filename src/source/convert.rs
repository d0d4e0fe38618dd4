//! Camera buffers to RGB images: YUYV 4:2:2, MJPEG and packed RGB.
//!
//! Pure functions on byte slices, so every case is tested without a camera. A
//! buffer that cannot be a whole frame is a [`SourceError::BadFrame`]: the run
//! loop skips it and asks for the next one.
//!
//! V4L2 hands out whole mmap buffers, not the bytes the driver wrote: a raw frame
//! may have padding at the end of each row (`stride`), and an MJPEG frame is
//! followed by whatever an earlier, longer frame left in the buffer. So MJPEG
//! frames are cut at their end-of-image marker found by walking the JPEG
//! segments, not by searching backwards.

use serde::{Deserialize, Serialize};

use super::SourceError;

/// Pixel formats a camera can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// Motion-JPEG: each frame a JPEG. Cheap on USB, so most webcams offer their
    /// full resolutions and frame rates only in this format.
    Mjpeg,
    /// YUYV 4:2:2, two bytes per pixel, uncompressed.
    Yuyv,
    /// Packed 8-bit R, G, B (V4L2 `RGB3`).
    Rgb,
}

impl PixelFormat {
    pub const ALL: [PixelFormat; 3] = [PixelFormat::Mjpeg, PixelFormat::Yuyv, PixelFormat::Rgb];

    /// The V4L2 four-character code.
    pub fn fourcc(self) -> &'static str {
        match self {
            PixelFormat::Mjpeg => "MJPG",
            PixelFormat::Yuyv => "YUYV",
            PixelFormat::Rgb => "RGB3",
        }
    }

    pub fn from_fourcc(fourcc: &str) -> Option<PixelFormat> {
        PixelFormat::ALL.into_iter().find(|f| f.fourcc() == fourcc)
    }

    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Mjpeg => "mjpeg",
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Rgb => "rgb",
        }
    }

    /// Bytes of the shortest row holding `width` pixels (raw formats only).
    pub fn min_stride(self, width: u32) -> usize {
        let width = width as usize;
        match self {
            // one 4-byte Y0 U Y1 V group per two pixels; an odd last pixel still
            // needs a whole group
            PixelFormat::Yuyv => width.div_ceil(2) * 4,
            PixelFormat::Rgb => width * 3,
            PixelFormat::Mjpeg => 0,
        }
    }
}

impl std::fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the camera says its buffers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes from one row to the next (raw formats); 0 = no padding.
    pub stride: usize,
}

impl FrameLayout {
    pub fn new(format: PixelFormat, width: u32, height: u32) -> Self {
        FrameLayout { format, width, height, stride: 0 }
    }

    fn row_stride(&self) -> usize {
        self.stride.max(self.format.min_stride(self.width))
    }

    /// Bytes a raw buffer needs: the last row does not need its padding.
    fn min_len(&self) -> usize {
        match self.height {
            0 => 0,
            h => self.row_stride() * (h as usize - 1) + self.format.min_stride(self.width),
        }
    }
}

/// Converts one camera buffer; `origin` names the camera in errors.
pub fn to_rgb(data: &[u8], layout: &FrameLayout, origin: &str) -> Result<image::RgbImage, SourceError> {
    let bad = |reason: String| SourceError::BadFrame { origin: origin.to_string(), reason };
    if layout.width == 0 || layout.height == 0 {
        return Err(bad(format!("frame size {}x{} has no pixels", layout.width, layout.height)));
    }
    match layout.format {
        PixelFormat::Mjpeg => mjpeg_to_rgb(data, layout.width, layout.height).map_err(bad),
        PixelFormat::Yuyv | PixelFormat::Rgb => {
            check_raw_len(data, layout).map_err(bad)?;
            Ok(match layout.format {
                PixelFormat::Yuyv => yuyv_to_rgb(data, layout),
                _ => rgb_to_image(data, layout),
            })
        }
    }
}

fn check_raw_len(data: &[u8], layout: &FrameLayout) -> Result<(), String> {
    let need = layout.min_len();
    if data.len() < need {
        return Err(format!(
            "truncated {} frame: {} bytes, {}x{} needs {need}",
            layout.format.fourcc(),
            data.len(),
            layout.width,
            layout.height
        ));
    }
    Ok(())
}

// ---- YUYV -------------------------------------------------------------------

/// BT.601 limited range ("studio swing", Y 16..235, Cb/Cr 16..240), which is
/// what UVC cameras send, in 8.8 fixed point.
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = 298 * (i32::from(y) - 16);
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    let clip = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [clip(c + 409 * e), clip(c - 100 * d - 208 * e), clip(c + 516 * d)]
}

fn yuyv_to_rgb(data: &[u8], layout: &FrameLayout) -> image::RgbImage {
    let (w, h) = (layout.width as usize, layout.height as usize);
    let stride = layout.row_stride();
    let mut out = vec![0u8; w * h * 3];
    for (row, dst) in out.chunks_exact_mut(w * 3).enumerate() {
        let src = &data[row * stride..row * stride + layout.format.min_stride(layout.width)];
        for (x, px) in dst.chunks_exact_mut(3).enumerate() {
            let group = &src[(x / 2) * 4..(x / 2) * 4 + 4];
            let luma = if x % 2 == 0 { group[0] } else { group[2] };
            px.copy_from_slice(&yuv_to_rgb(luma, group[1], group[3]));
        }
    }
    image::RgbImage::from_raw(layout.width, layout.height, out).expect("buffer sized for the image")
}

// ---- RGB --------------------------------------------------------------------

fn rgb_to_image(data: &[u8], layout: &FrameLayout) -> image::RgbImage {
    let row = layout.format.min_stride(layout.width);
    let stride = layout.row_stride();
    let mut out = Vec::with_capacity(row * layout.height as usize);
    for y in 0..layout.height as usize {
        out.extend_from_slice(&data[y * stride..y * stride + row]);
    }
    image::RgbImage::from_raw(layout.width, layout.height, out).expect("buffer sized for the image")
}

// ---- MJPEG ------------------------------------------------------------------

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const DHT: u8 = 0xC4;

/// Where the parts of a JPEG are in a buffer.
#[derive(Debug, PartialEq, Eq)]
struct JpegExtent {
    /// Index just past the end-of-image marker.
    end: usize,
    /// Offset of the first start-of-scan marker.
    first_sos: usize,
    /// Whether a Huffman table segment comes before the first scan.
    has_dht: bool,
}

/// Walks the JPEG segments from the start-of-image marker to the end-of-image
/// marker. Errors say why the bytes are not one whole JPEG.
fn jpeg_extent(bytes: &[u8]) -> Result<JpegExtent, String> {
    const TRUNCATED: &str = "truncated MJPEG frame (no end-of-image marker)";
    if bytes.len() < 2 || bytes[0] != 0xFF || bytes[1] != SOI {
        return Err("not a JPEG frame (no start-of-image marker)".into());
    }
    let mut i = 2;
    let mut first_sos = None;
    let mut has_dht = false;
    loop {
        // a marker is FF, optionally repeated as fill, then its code
        if bytes.get(i) != Some(&0xFF) {
            return Err(match bytes.get(i) {
                None => TRUNCATED.into(),
                Some(b) => format!("corrupt MJPEG frame: byte {b:#04x} at {i} where a marker belongs"),
            });
        }
        while bytes.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else { return Err(TRUNCATED.into()) };
        i += 1;
        match marker {
            EOI => {
                let first_sos = first_sos.ok_or("corrupt MJPEG frame: no image data (no scan)")?;
                return Ok(JpegExtent { end: i, first_sos, has_dht });
            }
            // markers without a length
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = bytes.get(i..i + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
            return Err(TRUNCATED.into());
        };
        if len < 2 || i + len > bytes.len() {
            return Err(TRUNCATED.into());
        }
        if marker == DHT && first_sos.is_none() {
            has_dht = true;
        }
        let segment_start = i - 2;
        i += len;
        if marker == SOS {
            first_sos.get_or_insert(segment_start);
            i = skip_entropy_data(bytes, i).ok_or(TRUNCATED)?;
        }
    }
}

/// The offset of the marker that ends the entropy-coded data starting at `i`.
/// Inside the data FF is followed by 00 (a stuffed FF byte) or a restart marker.
fn skip_entropy_data(bytes: &[u8], mut i: usize) -> Option<usize> {
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            i += 1;
            continue;
        }
        match bytes[i + 1] {
            0x00 | 0xD0..=0xD7 => i += 2,
            0xFF => i += 1,
            _ => return Some(i),
        }
    }
    None
}

/// The standard Huffman tables of JPEG Annex K.3 as one DHT segment. Many UVC
/// cameras leave the table out of their MJPEG frames because it is always this
/// one, and a plain JPEG decoder refuses a scan without tables.
fn standard_dht_segment() -> Vec<u8> {
    #[rustfmt::skip]
    const LUMA_DC_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    #[rustfmt::skip]
    const CHROMA_DC_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
    const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    #[rustfmt::skip]
    const LUMA_AC_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D];
    #[rustfmt::skip]
    const LUMA_AC_VALUES: [u8; 162] = [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
        0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0,
        0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28,
        0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
        0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
        0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
        0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,
        0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5,
        0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2,
        0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
        0xF9, 0xFA,
    ];
    #[rustfmt::skip]
    const CHROMA_AC_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
    #[rustfmt::skip]
    const CHROMA_AC_VALUES: [u8; 162] = [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
        0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0,
        0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26,
        0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
        0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
        0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
        0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5,
        0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3,
        0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA,
        0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
        0xF9, 0xFA,
    ];
    // (table class << 4 | table id, code counts per length, symbols)
    let tables: [(u8, &[u8; 16], &[u8]); 4] = [
        (0x00, &LUMA_DC_BITS, &DC_VALUES),
        (0x10, &LUMA_AC_BITS, &LUMA_AC_VALUES),
        (0x01, &CHROMA_DC_BITS, &DC_VALUES),
        (0x11, &CHROMA_AC_BITS, &CHROMA_AC_VALUES),
    ];
    let body: Vec<u8> = tables
        .iter()
        .flat_map(|(class_id, bits, values)| {
            std::iter::once(*class_id).chain(bits.iter().copied()).chain(values.iter().copied())
        })
        .collect();
    let len = u16::try_from(body.len() + 2).expect("DHT segment fits a length field");
    let mut segment = vec![0xFF, DHT];
    segment.extend_from_slice(&len.to_be_bytes());
    segment.extend(body);
    segment
}

/// One MJPEG buffer to RGB: cut at its end marker, standard Huffman tables added
/// when the camera left them out, decoded strictly and checked against the size
/// the camera was set to.
fn mjpeg_to_rgb(data: &[u8], width: u32, height: u32) -> Result<image::RgbImage, String> {
    let extent = jpeg_extent(data)?;
    let jpeg = &data[..extent.end];
    let image = if extent.has_dht {
        crate::preprocess::decode::decode_bytes(jpeg)?
    } else {
        let mut fixed = Vec::with_capacity(jpeg.len() + 432);
        fixed.extend_from_slice(&jpeg[..extent.first_sos]);
        fixed.extend(standard_dht_segment());
        fixed.extend_from_slice(&jpeg[extent.first_sos..]);
        crate::preprocess::decode::decode_bytes(&fixed)?
    };
    if image.dimensions() != (width, height) {
        let (w, h) = image.dimensions();
        return Err(format!("MJPEG frame is {w}x{h}, the camera was set to {width}x{height}"));
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_reason(result: Result<image::RgbImage, SourceError>) -> String {
        match result {
            Err(SourceError::BadFrame { origin, reason }) => {
                assert_eq!(origin, "cam");
                reason
            }
            other => panic!("expected a bad frame, got {other:?}"),
        }
    }

    // ---- YUYV

    /// One YUYV row of `w` pixels all of one colour, padded to `stride`.
    fn yuyv_rows(w: u32, h: u32, stride: usize, (y, u, v): (u8, u8, u8)) -> Vec<u8> {
        let mut row: Vec<u8> = std::iter::repeat_n([y, u, y, v], w.div_ceil(2) as usize).flatten().collect();
        row.resize(stride, 0xAA);
        row.repeat(h as usize)
    }

    #[test]
    fn yuyv_known_colours_use_bt601_limited_range() {
        let cases = [
            ((16, 128, 128), [0, 0, 0]),
            ((235, 128, 128), [255, 255, 255]),
            ((126, 128, 128), [128, 128, 128]),
            // 100% colour bars in BT.601 limited range
            ((81, 90, 240), [255, 0, 0]),
            ((145, 54, 34), [0, 255, 0]),
            ((41, 240, 110), [0, 0, 255]),
            // below black and above white are clipped, not wrapped
            ((0, 128, 128), [0, 0, 0]),
            ((255, 128, 128), [255, 255, 255]),
        ];
        for ((y, u, v), want) in cases {
            let got = yuv_to_rgb(y, u, v);
            for (g, w) in got.iter().zip(want) {
                assert!(g.abs_diff(w) <= 1, "Y{y} U{u} V{v}: got {got:?}, want {want:?}");
            }
        }
    }

    #[test]
    fn yuyv_frame_converts_each_pixel_with_its_own_luma() {
        // two pixels sharing chroma: Y0 black, Y1 white
        let data = [16, 128, 235, 128, 16, 128, 235, 128];
        let img = to_rgb(&data, &FrameLayout::new(PixelFormat::Yuyv, 2, 2), "cam").unwrap();
        assert_eq!(img.dimensions(), (2, 2));
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(1, 1).0, [255, 255, 255]);
    }

    #[test]
    fn yuyv_odd_width_and_padded_rows() {
        // 3 pixels need two groups (8 bytes); rows padded to 12 bytes
        let data = yuyv_rows(3, 5, 12, (81, 90, 240));
        let layout = FrameLayout { format: PixelFormat::Yuyv, width: 3, height: 5, stride: 12 };
        let img = to_rgb(&data, &layout, "cam").unwrap();
        assert_eq!(img.dimensions(), (3, 5));
        assert!(img.pixels().all(|p| p.0 == [255, 0, 0]), "{:?}", img.get_pixel(2, 4));
        // the last row's padding may be missing
        let img = to_rgb(&data[..data.len() - 4], &layout, "cam").unwrap();
        assert_eq!(img.dimensions(), (3, 5));
    }

    #[test]
    fn truncated_raw_frames_are_bad_frames() {
        let data = yuyv_rows(4, 4, 8, (16, 128, 128));
        let layout = FrameLayout::new(PixelFormat::Yuyv, 4, 4);
        let reason = bad_reason(to_rgb(&data[..data.len() - 1], &layout, "cam"));
        assert!(reason.contains("truncated YUYV") && reason.contains("31 bytes"), "{reason}");
        assert!(bad_reason(to_rgb(&[], &layout, "cam")).contains("truncated"));

        let layout = FrameLayout::new(PixelFormat::Rgb, 3, 2);
        let reason = bad_reason(to_rgb(&[0; 17], &layout, "cam"));
        assert!(reason.contains("truncated RGB3") && reason.contains("needs 18"), "{reason}");
        let reason = bad_reason(to_rgb(&[0; 17], &FrameLayout::new(PixelFormat::Rgb, 0, 2), "cam"));
        assert!(reason.contains("no pixels"), "{reason}");
    }

    // ---- RGB

    #[test]
    fn rgb_passes_through_without_row_padding() {
        // 2x2, rows padded from 6 to 8 bytes
        let data = [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0];
        let layout = FrameLayout { format: PixelFormat::Rgb, width: 2, height: 2, stride: 8 };
        let img = to_rgb(&data, &layout, "cam").unwrap();
        assert_eq!(img.into_raw(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        // a tight buffer, odd size, longer than needed (whole mmap buffer)
        let mut data: Vec<u8> = (0..45).collect();
        data.extend([0; 100]);
        let img = to_rgb(&data, &FrameLayout::new(PixelFormat::Rgb, 5, 3), "cam").unwrap();
        assert_eq!(img.get_pixel(4, 2).0, [42, 43, 44]);
    }

    // ---- MJPEG

    fn test_image(w: u32, h: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 200]))
    }

    fn jpeg(img: &image::RgbImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    /// The JPEG without its DHT segments, as some webcams send MJPEG.
    fn without_dht(jpeg: &[u8]) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        let mut i = 2;
        loop {
            assert_eq!(jpeg[i], 0xFF);
            let marker = jpeg[i + 1];
            if marker == SOS {
                out.extend_from_slice(&jpeg[i..]);
                return out;
            }
            let len = usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
            if marker != DHT {
                out.extend_from_slice(&jpeg[i..i + 2 + len]);
            }
            i += 2 + len;
        }
    }

    fn mjpeg(data: &[u8], w: u32, h: u32) -> Result<image::RgbImage, SourceError> {
        to_rgb(data, &FrameLayout::new(PixelFormat::Mjpeg, w, h), "cam")
    }

    #[test]
    fn mjpeg_decodes_and_ignores_stale_bytes_after_the_frame() {
        let img = test_image(37, 21);
        let bytes = jpeg(&img);
        let want = crate::preprocess::decode::decode_bytes(&bytes).unwrap();
        // the rest of the mmap buffer: zeros and the tail of a longer old frame
        let mut buffer = bytes.clone();
        buffer.extend([0; 64]);
        buffer.extend_from_slice(&bytes[bytes.len() / 2..]);
        assert_eq!(mjpeg(&buffer, 37, 21).unwrap(), want);
        assert_eq!(jpeg_extent(&buffer).unwrap().end, bytes.len());
    }

    #[test]
    fn mjpeg_without_huffman_tables_gets_the_standard_ones() {
        let bytes = jpeg(&test_image(40, 24));
        let stripped = without_dht(&bytes);
        assert!(stripped.len() < bytes.len());
        let extent = jpeg_extent(&stripped).unwrap();
        assert!(!extent.has_dht);
        assert!(jpeg_extent(&bytes).unwrap().has_dht);
        // the image crate writes the Annex K tables, so the repaired frame must
        // decode to exactly the original pixels
        let want = crate::preprocess::decode::decode_bytes(&bytes).unwrap();
        assert_eq!(mjpeg(&stripped, 40, 24).unwrap(), want);
    }

    #[test]
    fn truncated_or_garbage_mjpeg_is_a_bad_frame() {
        let bytes = jpeg(&test_image(32, 32));
        for cut in [3, 20, bytes.len() / 2, bytes.len() - 1] {
            let reason = bad_reason(mjpeg(&bytes[..cut], 32, 32));
            assert!(reason.contains("truncated"), "cut {cut}: {reason}");
        }
        // a cut frame followed by zeros (the rest of the buffer) is still cut
        let mut padded = bytes[..bytes.len() - 10].to_vec();
        padded.extend([0; 200]);
        assert!(bad_reason(mjpeg(&padded, 32, 32)).contains("MJPEG"));
        let reason = bad_reason(mjpeg(b"\x00\x01 not a jpeg", 32, 32));
        assert!(reason.contains("start-of-image"), "{reason}");
        let reason = bad_reason(mjpeg(&[0xFF, 0xD8, 0xFF, 0xD9], 32, 32));
        assert!(reason.contains("no scan"), "{reason}");
    }

    #[test]
    fn mjpeg_of_another_size_is_a_bad_frame() {
        let bytes = jpeg(&test_image(16, 8));
        let reason = bad_reason(mjpeg(&bytes, 640, 480));
        assert!(reason.contains("16x8") && reason.contains("640x480"), "{reason}");
    }

    #[test]
    fn pixel_formats_know_their_fourcc_and_config_name() {
        for f in PixelFormat::ALL {
            assert_eq!(PixelFormat::from_fourcc(f.fourcc()), Some(f));
        }
        assert_eq!(PixelFormat::from_fourcc("NV12"), None);
        assert_eq!(PixelFormat::Yuyv.to_string(), "yuyv");
        assert_eq!(PixelFormat::Yuyv.min_stride(5), 12);
    }
}
