//! Image preparation for uploads to the city parking platform.
//!
//! The platform's `imgData` field takes standard Base64 (no `data:` prefix, no
//! line breaks) of at most [`MAX_B64_CHARS`] characters. [`prepare`] turns
//! whatever bytes a camera handed us into something that fits:
//!
//! * a decodable JPEG or PNG that already fits is passed through untouched;
//! * a larger one is decoded (JPEGs with IDCT downscaling straight to roughly
//!   the target size), resized with a Lanczos3 filter and re-encoded as JPEG,
//!   keeping as much resolution as the budget allows at quality ≥ 50;
//! * anything else becomes [`placeholder_jpeg`], with a reason.
//!
//! [`prepare`] never fails and never panics.

use std::fmt;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use base64::Engine as _;
use fast_image_resize as fir;

/// Largest imgData the platform accepts, in Base64 characters.
pub const MAX_B64_CHARS: usize = 50_000;
/// Largest width or height we agree to decode.
pub(crate) const MAX_SIDE: u32 = 12_000;
/// Largest pixel count we agree to decode.
pub(crate) const MAX_PIXELS: u64 = 64_000_000;
/// Lowest JPEG quality used before dimensions are reduced further.
pub(crate) const MIN_QUALITY: u8 = 50;
/// Highest JPEG quality the quality search tries.
pub(crate) const MAX_QUALITY: u8 = 90;
/// Lowest JPEG quality used at all, once the image is at [`MIN_LONG_SIDE`].
pub(crate) const LAST_RESORT_QUALITY: u8 = 20;
/// Smallest long side (in pixels) an image is shrunk to before quality drops below [`MIN_QUALITY`].
pub(crate) const MIN_LONG_SIDE: u32 = 64;

/// Quality at which [`placeholder_jpeg`] is encoded.
const PLACEHOLDER_QUALITY: u8 = 75;
/// How many encodes the resolution search may spend.
const MAX_SIZE_PROBES: usize = 8;
/// A resolution whose encode uses at least this share of the budget is good enough.
const GOOD_ENOUGH_FILL: f64 = 0.95;
/// Expected size of a quality-50 re-encode relative to the (typically q85–95) input,
/// used only for the first guess of the output size.
const REENCODE_RATIO_GUESS: f64 = 0.30;
/// Decode larger than the first guess so the search can grow without decoding again.
const DECODE_HEADROOM: f64 = 1.3;
/// Decode again at a larger scale only to gain more than this factor of resolution.
const REDECODE_MIN_GAIN: f64 = 1.1;
/// Assumed exponent of "encoded bytes ∝ long side^e" until two probes measure it.
const DEFAULT_SIZE_EXPONENT: f64 = 2.0;
/// Above this share of the budget at MIN_QUALITY, the quality search is skipped.
const SKIP_QUALITY_SEARCH_FILL: f64 = 0.97;
/// The size search aims at this share of the budget.
const TARGET_FILL: f64 = 0.985;

/// Base64 length of n raw bytes (padded, standard alphabet).
pub fn b64_len(n: usize) -> usize {
    n.div_ceil(3).saturating_mul(4)
}

/// Largest number of raw bytes whose Base64 fits in `b64_chars` characters.
pub(crate) fn max_raw_len(b64_chars: usize) -> usize {
    b64_chars / 4 * 3
}

/// Standard, padded, single-line Base64 as the platform's `imgData` wants it.
pub(crate) fn to_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What prepare() did to an image (for logs and the record's remark).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageAction {
    /// Already small enough and decodable: bytes untouched.
    PassedThrough,
    /// Decoded, scaled and re-encoded as JPEG at `quality`.
    Shrunk {
        from: (u32, u32),
        to: (u32, u32),
        quality: u8,
    },
    /// Not a decodable JPEG/PNG (or could not be made to fit): placeholder used.
    Placeholder { reason: String },
}

impl fmt::Display for ImageAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PassedThrough => f.write_str("image passed through"),
            Self::Shrunk { from, to, quality } => write!(
                f,
                "image shrunk from {}x{} to {}x{} at JPEG quality {quality}",
                from.0, from.1, to.0, to.1
            ),
            Self::Placeholder { reason } => write!(f, "placeholder image used: {reason}"),
        }
    }
}

/// Result of [`prepare`]: the bytes to upload and what was done to get them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub bytes: Vec<u8>,
    pub action: ImageAction,
}

impl Prepared {
    /// The bytes as the platform's `imgData` string.
    pub fn to_b64(&self) -> String {
        to_b64(&self.bytes)
    }
}

/// Errors of the internal steps; [`prepare`] maps every one of them to a placeholder.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImagingError {
    #[error("no image bytes")]
    Empty,
    #[error("not a JPEG or PNG (starts with {0})")]
    UnknownFormat(String),
    #[error("malformed image header: {0}")]
    Malformed(&'static str),
    #[error("image has zero width or height")]
    ZeroSize,
    #[error(
        "declared size {width}x{height} is over the limit ({MAX_SIDE} px a side, {MAX_PIXELS} pixels)"
    )]
    TooLarge { width: u32, height: u32 },
    #[error("unsupported image layout: {0}")]
    Unsupported(&'static str),
    #[error("JPEG could not be decoded: {0}")]
    Jpeg(#[from] jpeg_decoder::Error),
    #[error("PNG could not be decoded: {0}")]
    Png(#[from] png::DecodingError),
    #[error("decoded pixel data is shorter than its declared size")]
    ShortPixelData,
    #[error("resize failed: {0}")]
    Resize(#[from] fir::ResizeError),
    #[error("pixel buffer rejected: {0}")]
    Buffer(#[from] fir::ImageBufferError),
    #[error("JPEG encoding failed: {0}")]
    Encode(#[from] jpeg_encoder::EncodingError),
    #[error(
        "does not fit in {budget} Base64 chars even at {width}x{height} quality {quality} ({got} chars)"
    )]
    CannotFit {
        budget: usize,
        width: u32,
        height: u32,
        quality: u8,
        got: usize,
    },
    #[error("image decoder panicked")]
    Panicked,
}

/// Never fails and never panics, whatever the input bytes are.
///
/// `max_b64_chars` is the budget for the Base64 form of the returned bytes. The
/// placeholder is returned as it is even if the budget is smaller than it.
pub fn prepare(input: &[u8], max_b64_chars: usize) -> Prepared {
    let outcome = catch_unwind(AssertUnwindSafe(|| prepare_inner(input, max_b64_chars)));
    let error = match outcome {
        Ok(Ok(prepared)) => {
            tracing::debug!(
                input_bytes = input.len(),
                output_bytes = prepared.bytes.len(),
                action = %prepared.action,
                "image prepared"
            );
            return prepared;
        }
        Ok(Err(e)) => e,
        Err(_) => ImagingError::Panicked,
    };
    let reason = error.to_string();
    tracing::warn!(input_bytes = input.len(), %reason, "using placeholder image");
    Prepared {
        bytes: placeholder_jpeg().to_vec(),
        action: ImageAction::Placeholder { reason },
    }
}

fn prepare_inner(input: &[u8], max_b64_chars: usize) -> Result<Prepared, ImagingError> {
    let source = Source::open(input)?;
    if b64_len(input.len()) <= max_b64_chars {
        source.validate()?;
        return Ok(Prepared {
            bytes: input.to_vec(),
            action: ImageAction::PassedThrough,
        });
    }
    let fitted = Fitter::new(&source, max_b64_chars).run()?;
    Ok(Prepared {
        bytes: fitted.bytes,
        action: ImageAction::Shrunk {
            from: (source.width, source.height),
            to: fitted.size,
            quality: fitted.quality,
        },
    })
}

/// A small valid JPEG (160x120 grey, made once and cached) used when there is no usable image.
pub(crate) fn placeholder_jpeg() -> &'static [u8] {
    static PLACEHOLDER: OnceLock<Vec<u8>> = OnceLock::new();
    PLACEHOLDER.get_or_init(|| {
        let (w, h) = (160u32, 120u32);
        let mut data = Vec::with_capacity((w * h) as usize);
        for y in 0..h {
            for x in 0..w {
                // Mid grey with a darker frame and diagonal cross: obviously "no picture".
                let frame = x < 3 || y < 3 || x >= w - 3 || y >= h - 3;
                let on_diagonal =
                    (x * h).abs_diff(y * w) < 2 * w || (x * h).abs_diff((h - 1 - y) * w) < 2 * w;
                data.push(if frame || on_diagonal { 96 } else { 160 });
            }
        }
        let raster = Raster {
            width: w,
            height: h,
            layout: Layout::Luma,
            data,
        };
        // Our own constant 160x120 luma buffer: encoding it cannot fail.
        encode_jpeg(&raster, PLACEHOLDER_QUALITY).expect("placeholder JPEG encodes")
    })
}

/// A photo-like test/demo JPEG of the given size (clamped to 1..=[`MAX_SIDE`]).
///
/// Sky and asphalt gradients, low-frequency blotches, sensor noise, a car-like box and a
/// blue licence-plate-like rectangle with white glyphs. Deterministic per seed, and it
/// does not compress trivially: 1920x1080 at quality 90 is several hundred KB.
pub fn synth_jpeg(width: u32, height: u32, seed: u64, quality: u8) -> Vec<u8> {
    let raster = synth_raster(width.clamp(1, MAX_SIDE), height.clamp(1, MAX_SIDE), seed);
    // The raster is well formed and its sides fit in u16, so encoding cannot fail.
    encode_jpeg(&raster, quality.clamp(1, 100)).expect("synthetic JPEG encodes")
}

// ---------------------------------------------------------------------------
// Pixels

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Luma,
    Rgb,
}

impl Layout {
    fn channels(self) -> usize {
        match self {
            Self::Luma => 1,
            Self::Rgb => 3,
        }
    }

    fn color_type(self) -> jpeg_encoder::ColorType {
        match self {
            Self::Luma => jpeg_encoder::ColorType::Luma,
            Self::Rgb => jpeg_encoder::ColorType::Rgb,
        }
    }
}

/// Decoded 8-bit pixels, tightly packed.
#[derive(Debug, Clone)]
struct Raster {
    width: u32,
    height: u32,
    layout: Layout,
    data: Vec<u8>,
}

impl Raster {
    fn new(width: u32, height: u32, layout: Layout, data: Vec<u8>) -> Result<Self, ImagingError> {
        let needed = width as usize * height as usize * layout.channels();
        if data.len() < needed {
            return Err(ImagingError::ShortPixelData);
        }
        let mut data = data;
        data.truncate(needed);
        Ok(Self {
            width,
            height,
            layout,
            data,
        })
    }

    fn long_side(&self) -> u32 {
        self.width.max(self.height)
    }
}

fn encode_jpeg(raster: &Raster, quality: u8) -> Result<Vec<u8>, ImagingError> {
    let too_large = || ImagingError::TooLarge {
        width: raster.width,
        height: raster.height,
    };
    let w = u16::try_from(raster.width).map_err(|_| too_large())?;
    let h = u16::try_from(raster.height).map_err(|_| too_large())?;
    let mut out = Vec::with_capacity(64 * 1024);
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    // One extra pass, typically 10-20% fewer bytes: more resolution within the budget.
    encoder.set_optimized_huffman_tables(true);
    encoder.encode(&raster.data, w, h, raster.layout.color_type())?;
    Ok(out)
}

fn resize(
    resizer: &mut fir::Resizer,
    src: &Raster,
    width: u32,
    height: u32,
) -> Result<Raster, ImagingError> {
    let mut out = vec![0; width as usize * height as usize * src.layout.channels()];
    // Typed, for the two layouts there are: the untyped `Resizer::resize` dispatches on the
    // pixel type at run time, which links the code (and a 512 KB 16-bit alpha table) for
    // every pixel type fast_image_resize knows into the binary (BENCHMARKS.md, P6).
    match src.layout {
        Layout::Luma => resize_as::<fir::pixels::U8>(resizer, src, width, height, &mut out)?,
        Layout::Rgb => resize_as::<fir::pixels::U8x3>(resizer, src, width, height, &mut out)?,
    }
    Raster::new(width, height, src.layout, out)
}

/// [`resize`] for one pixel type `P`, into `out` (`width` x `height` pixels of `P`).
fn resize_as<P: fir::PixelTrait>(
    resizer: &mut fir::Resizer,
    src: &Raster,
    width: u32,
    height: u32,
    out: &mut [u8],
) -> Result<(), ImagingError> {
    let src_view = fir::images::TypedImageRef::<P>::from_buffer(src.width, src.height, &src.data)?;
    let mut dst = fir::images::TypedImage::<P>::from_buffer(width, height, out)?;
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Lanczos3));
    resizer.resize_typed(&src_view, &mut dst, &options)?;
    Ok(())
}

/// Output size with the given long side, preserving the aspect ratio of `width`x`height`.
fn size_for_long_side(width: u32, height: u32, long: u32) -> (u32, u32) {
    let scale = |short: u32, full_long: u32| -> u32 {
        let s = (f64::from(short) * f64::from(long) / f64::from(full_long)).round();
        (s as u32).clamp(1, short.max(1))
    };
    if width >= height {
        (long.min(width), scale(height, width))
    } else {
        (scale(width, height), long.min(height))
    }
}

fn check_size(width: u32, height: u32) -> Result<(), ImagingError> {
    if width == 0 || height == 0 {
        return Err(ImagingError::ZeroSize);
    }
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImagingError::TooLarge { width, height });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Decoding

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Jpeg { components: u8, precision: u8 },
    Png,
}

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// An input whose format and declared size have been checked.
struct Source<'a> {
    input: &'a [u8],
    format: Format,
    width: u32,
    height: u32,
}

impl<'a> Source<'a> {
    fn open(input: &'a [u8]) -> Result<Self, ImagingError> {
        if input.is_empty() {
            return Err(ImagingError::Empty);
        }
        let (format, width, height) = if input.starts_with(&[0xFF, 0xD8]) {
            let h = scan_jpeg_header(input)?;
            let format = Format::Jpeg {
                components: h.components,
                precision: h.precision,
            };
            (format, h.width, h.height)
        } else if input.starts_with(PNG_SIGNATURE) {
            let (w, h) = png_header_size(input)?;
            (Format::Png, w, h)
        } else {
            let shown: Vec<String> = input.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(ImagingError::UnknownFormat(shown.join(" ")));
        };
        check_size(width, height)?;
        if let Format::Jpeg {
            components,
            precision,
        } = format
        {
            if !matches!(components, 1 | 3 | 4) {
                return Err(ImagingError::Unsupported(
                    "JPEG component count is not 1, 3 or 4",
                ));
            }
            if precision != 8 && components != 1 {
                return Err(ImagingError::Unsupported(
                    "colour JPEG with more than 8 bits a sample",
                ));
            }
        }
        Ok(Self {
            input,
            format,
            width,
            height,
        })
    }

    /// Decodes the whole stream as cheaply as possible (JPEG at 1/8 scale) to prove it is usable.
    fn validate(&self) -> Result<(), ImagingError> {
        self.decode(1, 1).map(|_| ())
    }

    /// Decodes to a raster at least `min_w`x`min_h` where the decoder can downscale (JPEG),
    /// otherwise at full size.
    fn decode(&self, min_w: u32, min_h: u32) -> Result<Raster, ImagingError> {
        match self.format {
            Format::Jpeg { precision, .. } => self.decode_jpeg(min_w, min_h, precision),
            Format::Png => self.decode_png(),
        }
    }

    fn decode_jpeg(&self, min_w: u32, min_h: u32, precision: u8) -> Result<Raster, ImagingError> {
        let mut decoder = jpeg_decoder::Decoder::new(self.input);
        decoder.read_info()?;
        if min_w < self.width || min_h < self.height {
            let w = u16::try_from(min_w.max(1)).unwrap_or(u16::MAX);
            let h = u16::try_from(min_h.max(1)).unwrap_or(u16::MAX);
            decoder.scale(w, h)?;
        }
        decoder.set_max_decoding_buffer_size((MAX_PIXELS * 4) as usize);
        let pixels = decoder.decode()?;
        let info = decoder.info().ok_or(ImagingError::Malformed(
            "JPEG decoder returned no frame info",
        ))?;
        let (w, h) = (u32::from(info.width), u32::from(info.height));
        check_size(w, h)?;
        let n = w as usize * h as usize;
        match info.pixel_format {
            jpeg_decoder::PixelFormat::L8 => Raster::new(w, h, Layout::Luma, pixels),
            jpeg_decoder::PixelFormat::RGB24 => Raster::new(w, h, Layout::Rgb, pixels),
            jpeg_decoder::PixelFormat::L16 => {
                if pixels.len() < n * 2 {
                    return Err(ImagingError::ShortPixelData);
                }
                // Native-endian samples of `precision` bits: keep the top 8.
                let shift = u32::from(precision.clamp(8, 16) - 8);
                let luma = pixels
                    .chunks_exact(2)
                    .take(n)
                    .map(|c| (u16::from_ne_bytes([c[0], c[1]]) >> shift).min(255) as u8)
                    .collect();
                Raster::new(w, h, Layout::Luma, luma)
            }
            jpeg_decoder::PixelFormat::CMYK32 => {
                if pixels.len() < n * 4 {
                    return Err(ImagingError::ShortPixelData);
                }
                // The decoder yields ink amounts (0 = no ink); multiply out the key.
                let mut rgb = Vec::with_capacity(n * 3);
                for px in pixels.chunks_exact(4).take(n) {
                    let k = 255 - u32::from(px[3]);
                    for &ink in &px[..3] {
                        rgb.push(((255 - u32::from(ink)) * k / 255) as u8);
                    }
                }
                Raster::new(w, h, Layout::Rgb, rgb)
            }
        }
    }

    fn decode_png(&self) -> Result<Raster, ImagingError> {
        // The png crate directly, not `image`: its any-layout `DynamicImage` conversions cost
        // the Pi binary more than the decoder itself (BENCHMARKS.md, P6). 512 MiB for the
        // decoder's own buffers, as `image`'s default limit gave it.
        let mut decoder = png::Decoder::new_with_limits(
            Cursor::new(self.input),
            png::Limits {
                bytes: 512 * 1024 * 1024,
            },
        );
        // 8-bit samples whatever the file holds: palette and 1/2/4-bit grey expanded, tRNS
        // made an alpha channel, 16-bit samples cut to their high byte.
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info()?;
        let (w, h) = reader.info().size();
        check_size(w, h)?;
        let size = reader.output_buffer_size().ok_or(ImagingError::TooLarge {
            width: w,
            height: h,
        })?;
        let mut buf = vec![0; size];
        let frame = reader.next_frame(&mut buf)?;
        buf.truncate(frame.buffer_size());
        let (layout, data) = match frame.color_type {
            png::ColorType::Grayscale => (Layout::Luma, buf),
            png::ColorType::Rgb => (Layout::Rgb, buf),
            png::ColorType::GrayscaleAlpha => (Layout::Luma, flatten_alpha(&buf, 1)),
            png::ColorType::Rgba => (Layout::Rgb, flatten_alpha(&buf, 3)),
            png::ColorType::Indexed => {
                return Err(ImagingError::Unsupported("palette PNG left unexpanded"))
            }
        };
        Raster::new(w, h, layout, data)
    }
}

/// Composites pixels of `channels` colour samples plus one alpha sample onto white.
fn flatten_alpha(data: &[u8], channels: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / (channels + 1) * channels);
    for px in data.chunks_exact(channels + 1) {
        let a = u32::from(px[channels]);
        for &c in &px[..channels] {
            out.push(((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8);
        }
    }
    out
}

struct JpegHeader {
    width: u32,
    height: u32,
    components: u8,
    precision: u8,
}

/// Walks the marker segments up to the frame header (SOFn) without decoding anything.
fn scan_jpeg_header(input: &[u8]) -> Result<JpegHeader, ImagingError> {
    let mut i = 2usize;
    loop {
        let byte = input
            .get(i)
            .ok_or(ImagingError::Malformed("JPEG ends before its frame header"))?;
        if *byte != 0xFF {
            return Err(ImagingError::Malformed("JPEG marker expected"));
        }
        while input.get(i) == Some(&0xFF) {
            i += 1;
        }
        let marker = *input
            .get(i)
            .ok_or(ImagingError::Malformed("JPEG ends in a marker"))?;
        i += 1;
        match marker {
            0x01 | 0xD0..=0xD8 => continue,
            0xD9 => return Err(ImagingError::Malformed("JPEG has no frame header")),
            _ => {}
        }
        let len_bytes = input
            .get(i..i + 2)
            .ok_or(ImagingError::Malformed("JPEG segment length missing"))?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        if len < 2 {
            return Err(ImagingError::Malformed("JPEG segment length too small"));
        }
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let seg = input
                .get(i + 2..i + 8)
                .ok_or(ImagingError::Malformed("JPEG frame header truncated"))?;
            return Ok(JpegHeader {
                precision: seg[0],
                height: u32::from(u16::from_be_bytes([seg[1], seg[2]])),
                width: u32::from(u16::from_be_bytes([seg[3], seg[4]])),
                components: seg[5],
            });
        }
        i += len;
    }
}

/// Reads width and height from the PNG's IHDR chunk.
fn png_header_size(input: &[u8]) -> Result<(u32, u32), ImagingError> {
    let ihdr = input
        .get(8..24)
        .ok_or(ImagingError::Malformed("PNG too short for its header"))?;
    if &ihdr[4..8] != b"IHDR" {
        return Err(ImagingError::Malformed("PNG does not start with IHDR"));
    }
    let w = u32::from_be_bytes([ihdr[8], ihdr[9], ihdr[10], ihdr[11]]);
    let h = u32::from_be_bytes([ihdr[12], ihdr[13], ihdr[14], ihdr[15]]);
    Ok((w, h))
}

// ---------------------------------------------------------------------------
// Fitting into the budget

struct Fitted {
    bytes: Vec<u8>,
    size: (u32, u32),
    quality: u8,
}

/// Finds the largest resolution that fits at [`MIN_QUALITY`], then the highest quality
/// that still fits at that resolution.
struct Fitter<'s, 'a> {
    source: &'s Source<'a>,
    budget_chars: usize,
    budget_bytes: usize,
    decoded: Option<Raster>,
    resizer: fir::Resizer,
}

impl<'s, 'a> Fitter<'s, 'a> {
    fn new(source: &'s Source<'a>, budget_chars: usize) -> Self {
        Self {
            source,
            budget_chars,
            budget_bytes: max_raw_len(budget_chars),
            decoded: None,
            resizer: fir::Resizer::new(),
        }
    }

    fn full_long(&self) -> u32 {
        self.source.width.max(self.source.height)
    }

    fn decoded_long(&self) -> u32 {
        self.decoded.as_ref().map_or(0, Raster::long_side)
    }

    fn size_for(&self, long: u32) -> (u32, u32) {
        size_for_long_side(self.source.width, self.source.height, long)
    }

    /// Makes sure a decoded raster at least as large as `long` on its long side exists.
    fn ensure_decoded(&mut self, long: u32, headroom: f64) -> Result<&Raster, ImagingError> {
        let enough = self
            .decoded
            .as_ref()
            .is_some_and(|r| r.long_side() >= long || r.long_side() >= self.full_long());
        if !enough {
            let want = ((f64::from(long) * headroom) as u32).min(self.full_long());
            let (w, h) = self.size_for(want);
            self.decoded = Some(self.source.decode(w, h)?);
        }
        self.decoded
            .as_ref()
            .ok_or(ImagingError::Malformed("no decoded image"))
    }

    fn scaled(&mut self, long: u32) -> Result<Raster, ImagingError> {
        let (w, h) = self.size_for(long);
        self.ensure_decoded(long, 1.0)?;
        let Some(src) = self.decoded.as_ref() else {
            return Err(ImagingError::Malformed("no decoded image"));
        };
        if (src.width, src.height) == (w, h) {
            return Ok(src.clone());
        }
        resize(&mut self.resizer, src, w, h)
    }

    fn fits(&self, bytes: &[u8]) -> bool {
        bytes.len() <= self.budget_bytes
    }

    fn run(mut self) -> Result<Fitted, ImagingError> {
        let full = self.full_long();
        let floor = MIN_LONG_SIDE.min(full);
        let budget = self.budget_bytes as f64;
        // First guess: the re-encode is a fixed share of the input, and bytes scale with area.
        let guess_ratio = budget / (self.source.input.len() as f64 * REENCODE_RATIO_GUESS);
        let mut long = ((f64::from(full) * guess_ratio.sqrt()) as u32).clamp(floor, full);
        self.ensure_decoded(long, DECODE_HEADROOM)?;

        // Largest long side known to fit at MIN_QUALITY, with its raster and bytes.
        let mut best: Option<(u32, Raster, Vec<u8>)> = None;
        // Smallest long side known not to fit at MIN_QUALITY.
        let mut too_big: Option<u32> = None;
        // Previous probe, for the secant estimate of how bytes grow with the long side.
        let mut previous: Option<(u32, f64)> = None;
        for _ in 0..MAX_SIZE_PROBES {
            let raster = self.scaled(long)?;
            let bytes = encode_jpeg(&raster, MIN_QUALITY)?;
            let n = bytes.len().max(1) as f64;
            let fitted = self.fits(&bytes);
            let exponent = match previous {
                Some((l0, n0)) if l0 != long && (n0 - n).abs() > 1.0 => {
                    ((n / n0).ln() / (f64::from(long) / f64::from(l0)).ln()).clamp(1.2, 3.0)
                }
                _ => DEFAULT_SIZE_EXPONENT,
            };
            previous = Some((long, n));
            tracing::trace!(
                long,
                bytes = n,
                fitted,
                exponent,
                "size probe at minimum quality"
            );
            if fitted {
                let good_enough = n >= budget * GOOD_ENOUGH_FILL;
                best = Some((long, raster, bytes));
                if good_enough || long == full {
                    break;
                }
            } else {
                too_big = Some(long);
                if long == floor {
                    break;
                }
            }
            let lo = best.as_ref().map_or(floor, |b| b.0 + 1);
            let hi = too_big.map_or(full, |t| t - 1);
            if lo > hi {
                break;
            }
            if let (Some((b, ..)), Some(t)) = (&best, too_big) {
                // Not worth another probe for less than 2% more resolution.
                if f64::from(*b) >= f64::from(t) * 0.98 {
                    break;
                }
            }
            let mut next =
                (f64::from(long) * (budget * TARGET_FILL / n).powf(1.0 / exponent)) as u32;
            // Outside a bound set by the image's own limits: go to that limit. Outside a
            // bound learnt from a probe: the estimate is off, so bisect instead.
            if (best.is_some() && next < lo) || (too_big.is_some() && next > hi) {
                next = (f64::from(lo) * f64::from(hi)).sqrt() as u32;
            }
            next = next.clamp(lo, hi);
            // Growing a little past a downscaled decode is not worth decoding again.
            let decoded = self.decoded_long();
            if next > decoded && f64::from(next) <= f64::from(decoded) * REDECODE_MIN_GAIN {
                if best.as_ref().is_some_and(|b| b.0 >= decoded) {
                    break;
                }
                next = decoded.max(lo);
            }
            long = next;
        }

        let Some((long, raster, bytes)) = best else {
            return self.last_resort(floor);
        };
        // With almost no slack left, a quality step or two is not worth the extra encodes.
        let (quality, bytes) =
            if bytes.len() as f64 >= self.budget_bytes as f64 * SKIP_QUALITY_SEARCH_FILL {
                (MIN_QUALITY, bytes)
            } else {
                self.highest_quality(&raster, MIN_QUALITY, bytes, MAX_QUALITY)?
            };
        Ok(Fitted {
            bytes,
            size: self.size_for(long),
            quality,
        })
    }

    /// Largest quality in `lo..=hi` that fits, given that `lo` fits with `lo_bytes`.
    fn highest_quality(
        &self,
        raster: &Raster,
        lo: u8,
        lo_bytes: Vec<u8>,
        hi: u8,
    ) -> Result<(u8, Vec<u8>), ImagingError> {
        let (mut lo, mut lo_bytes, mut hi) = (lo, lo_bytes, hi.saturating_add(1));
        // Gallop upwards first: the size search usually leaves little slack.
        let mut step = 2u8;
        while lo.saturating_add(step) < hi {
            let q = lo + step;
            let bytes = encode_jpeg(raster, q)?;
            if self.fits(&bytes) {
                lo = q;
                lo_bytes = bytes;
                step = step.saturating_mul(2);
            } else {
                hi = q;
                break;
            }
        }
        while hi - lo > 1 {
            let q = lo + (hi - lo) / 2;
            let bytes = encode_jpeg(raster, q)?;
            if self.fits(&bytes) {
                lo = q;
                lo_bytes = bytes;
            } else {
                hi = q;
            }
        }
        Ok((lo, lo_bytes))
    }

    /// At the smallest size, try qualities below MIN_QUALITY before giving up.
    fn last_resort(mut self, floor: u32) -> Result<Fitted, ImagingError> {
        let raster = self.scaled(floor)?;
        let bytes = encode_jpeg(&raster, LAST_RESORT_QUALITY)?;
        if !self.fits(&bytes) {
            return Err(ImagingError::CannotFit {
                budget: self.budget_chars,
                width: raster.width,
                height: raster.height,
                quality: LAST_RESORT_QUALITY,
                got: b64_len(bytes.len()),
            });
        }
        let (quality, bytes) =
            self.highest_quality(&raster, LAST_RESORT_QUALITY, bytes, MIN_QUALITY - 1)?;
        Ok(Fitted {
            bytes,
            size: (raster.width, raster.height),
            quality,
        })
    }
}

// ---------------------------------------------------------------------------
// Synthetic photo

/// SplitMix64: tiny, fast and deterministic across platforms and crate versions.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Sum of a few random sines along one axis, for low-frequency blotches.
fn wave_table(rng: &mut SplitMix64, len: u32, amplitude: f32) -> Vec<f32> {
    let waves: Vec<(f32, f32, f32)> = (0..4)
        .map(|k| {
            let freq = (0.002 + 0.03 * rng.unit()) * (k as f32 + 1.0);
            let phase = rng.unit() * std::f32::consts::TAU;
            let amp = amplitude * (0.4 + 0.6 * rng.unit()) / (k as f32 + 1.0);
            (freq, phase, amp)
        })
        .collect();
    (0..len)
        .map(|i| {
            waves
                .iter()
                .map(|(f, p, a)| a * (f * i as f32 + p).sin())
                .sum()
        })
        .collect()
}

#[allow(clippy::too_many_lines)]
fn synth_raster(width: u32, height: u32, seed: u64) -> Raster {
    let mut rng = SplitMix64(seed ^ 0x5EED_1A77_0C0F_FEE5);
    let (wf, hf) = (width as f32, height as f32);
    let horizon = hf * (0.28 + 0.08 * rng.unit());
    let cols = wave_table(&mut rng, width, 18.0);
    let rows = wave_table(&mut rng, height, 12.0);

    // A car-like box on the road, windows on its upper part.
    let car_w = wf * (0.42 + 0.12 * rng.unit());
    let car_h = (hf - horizon) * (0.55 + 0.1 * rng.unit());
    let car_x0 = (wf - car_w) * (0.2 + 0.6 * rng.unit());
    let car_y0 = horizon + (hf - horizon - car_h) * (0.3 + 0.4 * rng.unit());
    let car_rgb = [
        40.0 + 200.0 * rng.unit(),
        40.0 + 200.0 * rng.unit(),
        40.0 + 200.0 * rng.unit(),
    ];
    // Blue plate with seven glyphs of 3x5 cells each.
    let plate_w = car_w * 0.3;
    let plate_h = plate_w * 0.3;
    let plate_x0 = car_x0 + (car_w - plate_w) / 2.0;
    let plate_y0 = car_y0 + car_h * 0.68;
    let glyphs: Vec<u16> = (0..7)
        .map(|_| (rng.next_u64() & 0x7FFF) as u16 | 0x4001)
        .collect();
    let lane_phase = rng.unit() * 60.0;

    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        let yf = y as f32;
        let row = rows[y as usize];
        for x in 0..width {
            let xf = x as f32;
            let blotch = cols[x as usize] + row;
            let mut rgb = if yf < horizon {
                let t = yf / horizon.max(1.0);
                let tree_band = yf > horizon * 0.8;
                if tree_band {
                    // Foliage: high-frequency texture along the horizon.
                    let leaf = ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 7) & 63;
                    let v = 50.0 + leaf as f32 + blotch;
                    [v * 0.6, v * 1.1, v * 0.5]
                } else {
                    [
                        110.0 + 90.0 * t + blotch * 0.5,
                        150.0 + 65.0 * t + blotch * 0.5,
                        215.0 + 20.0 * t + blotch * 0.3,
                    ]
                }
            } else {
                let depth = (yf - horizon) / (hf - horizon).max(1.0);
                let v = 70.0 + 50.0 * depth + blotch;
                // Dashed lane marking converging to the horizon.
                let lane_x = wf * (0.5 + 0.35 * depth);
                let dash = (((yf + lane_phase) / (20.0 + 60.0 * depth)) as u32).is_multiple_of(2);
                if (xf - lane_x).abs() < 2.0 + 10.0 * depth && dash {
                    [215.0, 215.0, 205.0]
                } else {
                    [v, v, v * 1.03]
                }
            };

            let in_car = xf >= car_x0 && xf < car_x0 + car_w && yf >= car_y0 && yf < car_y0 + car_h;
            if in_car {
                let u = (xf - car_x0) / car_w;
                let v = (yf - car_y0) / car_h;
                let shade = 0.75 + 0.35 * (1.0 - (2.0 * u - 1.0).abs()) - 0.2 * v;
                rgb = if v < 0.38 && u > 0.08 && u < 0.92 {
                    // Windscreen with a diagonal reflection.
                    let glare = if (u * 3.0 - v * 2.0).fract() < 0.15 {
                        60.0
                    } else {
                        0.0
                    };
                    [35.0 + glare, 45.0 + glare, 60.0 + glare]
                } else {
                    [car_rgb[0] * shade, car_rgb[1] * shade, car_rgb[2] * shade]
                };
            }

            let in_plate = xf >= plate_x0
                && xf < plate_x0 + plate_w
                && yf >= plate_y0
                && yf < plate_y0 + plate_h;
            if in_plate {
                let u = (xf - plate_x0) / plate_w;
                let v = (yf - plate_y0) / plate_h;
                let border = !(0.02..=0.98).contains(&u) || !(0.07..=0.93).contains(&v);
                // Glyph area: 7 glyphs, 3 columns x 5 rows of cells each, with gaps.
                let gx = ((u - 0.05) / 0.9 * 7.0).clamp(0.0, 6.999);
                let glyph = glyphs[gx as usize];
                let cx = (gx.fract() * 4.0) as u32; // 0..=2 cells, 3 = gap
                let cy = (((v - 0.18) / 0.64) * 5.0).clamp(-1.0, 5.0);
                let lit = cx < 3
                    && (0.0..5.0).contains(&cy)
                    && (u > 0.05 && u < 0.95)
                    && (glyph >> ((cy as u32) * 3 + cx)) & 1 == 1;
                rgb = if border || lit {
                    [235.0, 240.0, 245.0]
                } else {
                    [20.0, 60.0, 170.0]
                };
            }

            // Sensor noise: mostly luma, a little chroma.
            let n = rng.next_u64();
            let luma_noise = ((n & 0xFF) as f32 + ((n >> 8) & 0xFF) as f32 - 255.0) * 0.09;
            let chroma = |shift: u32| (((n >> shift) & 0xFF) as f32 - 127.5) * 0.03;
            data.push((rgb[0] + luma_noise + chroma(16)).clamp(0.0, 255.0) as u8);
            data.push((rgb[1] + luma_noise + chroma(24)).clamp(0.0, 255.0) as u8);
            data.push((rgb[2] + luma_noise + chroma(32)).clamp(0.0, 255.0) as u8);
        }
    }
    Raster {
        width,
        height,
        layout: Layout::Rgb,
        data,
    }
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_jpeg_info(bytes: &[u8]) -> jpeg_decoder::ImageInfo {
        let mut d = jpeg_decoder::Decoder::new(bytes);
        d.decode().expect("output decodes as JPEG");
        d.info().expect("decoded JPEG has info")
    }

    fn shrunk(action: &ImageAction) -> ((u32, u32), (u32, u32), u8) {
        match action {
            ImageAction::Shrunk { from, to, quality } => (*from, *to, *quality),
            other => panic!("expected Shrunk, got {other:?}"),
        }
    }

    fn reason(action: &ImageAction) -> &str {
        match action {
            ImageAction::Placeholder { reason } => reason,
            other => panic!("expected Placeholder, got {other:?}"),
        }
    }

    fn png_bytes(raster: &Raster, color: image::ExtendedColorType) -> Vec<u8> {
        use image::ImageEncoder as _;
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&raster.data, raster.width, raster.height, color)
            .expect("test PNG encodes");
        out
    }

    fn to_luma(raster: &Raster) -> Raster {
        let data = raster
            .data
            .chunks_exact(3)
            .map(|p| {
                ((u32::from(p[0]) * 77 + u32::from(p[1]) * 150 + u32::from(p[2]) * 29) >> 8) as u8
            })
            .collect();
        Raster::new(raster.width, raster.height, Layout::Luma, data).expect("luma raster")
    }

    fn assert_fits_and_decodes(p: &Prepared, budget: usize) -> jpeg_decoder::ImageInfo {
        assert!(
            b64_len(p.bytes.len()) <= budget,
            "{} raw bytes exceed {budget} chars",
            p.bytes.len()
        );
        assert_eq!(p.to_b64().len(), b64_len(p.bytes.len()));
        decode_jpeg_info(&p.bytes)
    }

    #[test]
    fn b64_len_matches_the_base64_crate() {
        for n in 0..200 {
            assert_eq!(b64_len(n), to_b64(&vec![7u8; n]).len(), "n = {n}");
            assert!(b64_len(max_raw_len(n)) <= n);
        }
        assert_eq!(max_raw_len(MAX_B64_CHARS), 37_500);
    }

    #[test]
    fn a_1080p_jpeg_comes_out_within_50000_base64_chars_and_decodes_as_jpeg() {
        let input = synth_jpeg(1920, 1080, 1, 90);
        let p = prepare(&input, MAX_B64_CHARS);
        let (from, to, quality) = shrunk(&p.action);
        assert_eq!(from, (1920, 1080));
        assert!((MIN_QUALITY..=MAX_QUALITY).contains(&quality));
        let info = assert_fits_and_decodes(&p, MAX_B64_CHARS);
        assert_eq!((u32::from(info.width), u32::from(info.height)), to);
        assert_eq!(info.pixel_format, jpeg_decoder::PixelFormat::RGB24);
        // Aspect ratio kept to within rounding.
        assert!(
            (f64::from(to.0) / f64::from(to.1) - 16.0 / 9.0).abs() < 0.02,
            "{to:?}"
        );
        // The budget is used well: not a needlessly tiny image.
        assert!(to.0 >= 320, "{to:?}");
        assert!(p.bytes.len() as f64 > 0.8 * max_raw_len(MAX_B64_CHARS) as f64);
    }

    #[test]
    fn a_small_jpeg_passes_through_byte_for_byte() {
        let input = synth_jpeg(320, 240, 2, 75);
        assert!(
            b64_len(input.len()) <= MAX_B64_CHARS,
            "test input too big: {}",
            input.len()
        );
        let p = prepare(&input, MAX_B64_CHARS);
        assert_eq!(p.action, ImageAction::PassedThrough);
        assert_eq!(p.bytes, input);
    }

    #[test]
    fn a_small_grayscale_jpeg_passes_through_byte_for_byte() {
        let input = encode_jpeg(&to_luma(&synth_raster(200, 150, 3)), 80).expect("encodes");
        let p = prepare(&input, MAX_B64_CHARS);
        assert_eq!(p.action, ImageAction::PassedThrough);
        assert_eq!(p.bytes, input);
    }

    #[test]
    fn a_small_rgba_png_passes_through_byte_for_byte() {
        let rgb = synth_raster(48, 32, 4);
        let rgba: Vec<u8> = rgb
            .data
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 128])
            .collect();
        let with_alpha = Raster { data: rgba, ..rgb };
        let input = png_bytes(&with_alpha, image::ExtendedColorType::Rgba8);
        let p = prepare(&input, MAX_B64_CHARS);
        assert_eq!(p.action, ImageAction::PassedThrough);
        assert_eq!(p.bytes, input);
    }

    #[test]
    fn garbage_bytes_become_the_placeholder_with_a_reason() {
        let p = prepare(b"this is not an image at all", MAX_B64_CHARS);
        assert!(
            reason(&p.action).contains("not a JPEG or PNG"),
            "{:?}",
            p.action
        );
        assert_eq!(p.bytes, placeholder_jpeg());
    }

    #[test]
    fn empty_input_becomes_the_placeholder() {
        let p = prepare(&[], MAX_B64_CHARS);
        assert!(reason(&p.action).contains("no image bytes"));
        assert_eq!(p.bytes, placeholder_jpeg());
    }

    #[test]
    fn the_placeholder_is_a_valid_160x120_jpeg_well_within_the_budget() {
        let bytes = placeholder_jpeg();
        let info = decode_jpeg_info(bytes);
        assert_eq!((info.width, info.height), (160, 120));
        assert!(b64_len(bytes.len()) < 10_000);
        assert!(
            std::ptr::eq(bytes, placeholder_jpeg()),
            "cached, not rebuilt"
        );
    }

    #[test]
    fn pngs_of_every_sample_layout_decode_to_8_bit_grey_or_rgb_over_white() {
        use image::ExtendedColorType as C;
        let decode = |bytes: &[u8]| {
            let r = Source::open(bytes)
                .and_then(|s| s.decode_png())
                .expect("PNG decodes");
            (r.width, r.height, r.layout, r.data)
        };
        let rgb = synth_raster(40, 30, 3);
        let grey = to_luma(&rgb);
        assert_eq!(
            decode(&png_bytes(&rgb, C::Rgb8)),
            (40, 30, Layout::Rgb, rgb.data.clone())
        );
        assert_eq!(
            decode(&png_bytes(&grey, C::L8)),
            (40, 30, Layout::Luma, grey.data.clone())
        );
        // 16-bit samples: their high byte.
        let wide = |r: &Raster| Raster {
            data: r
                .data
                .iter()
                .flat_map(|&v| (u16::from(v) << 8 | 0x7f).to_ne_bytes())
                .collect(),
            ..*r
        };
        assert_eq!(
            decode(&png_bytes(&wide(&rgb), C::Rgb16)),
            (40, 30, Layout::Rgb, rgb.data.clone())
        );
        assert_eq!(
            decode(&png_bytes(&wide(&grey), C::L16)),
            (40, 30, Layout::Luma, grey.data.clone())
        );
        // Alpha: composited onto white (opaque stays, transparent turns white).
        let with_alpha = |r: &Raster, ch: usize| Raster {
            data: r
                .data
                .chunks_exact(ch)
                .enumerate()
                .flat_map(|(i, p)| {
                    let mut px = p.to_vec();
                    px.push(if i % 2 == 0 { 255 } else { 0 });
                    px
                })
                .collect(),
            ..*r
        };
        let (_, _, layout, data) = decode(&png_bytes(&with_alpha(&rgb, 3), C::Rgba8));
        assert_eq!(layout, Layout::Rgb);
        assert_eq!(&data[..3], &rgb.data[..3]);
        assert_eq!(&data[3..6], &[255, 255, 255]);
        let (_, _, layout, data) = decode(&png_bytes(&with_alpha(&grey, 1), C::La8));
        assert_eq!(layout, Layout::Luma);
        assert_eq!(&data[..2], &[grey.data[0], 255]);
    }

    #[test]
    fn a_png_larger_than_the_budget_is_shrunk_to_jpeg() {
        let input = png_bytes(&synth_raster(800, 600, 5), image::ExtendedColorType::Rgb8);
        assert!(b64_len(input.len()) > MAX_B64_CHARS);
        let p = prepare(&input, MAX_B64_CHARS);
        let (from, to, _) = shrunk(&p.action);
        assert_eq!(from, (800, 600));
        assert!(p.bytes.starts_with(&[0xFF, 0xD8, 0xFF]));
        let info = assert_fits_and_decodes(&p, MAX_B64_CHARS);
        assert_eq!((u32::from(info.width), u32::from(info.height)), to);
    }

    #[test]
    fn a_grayscale_jpeg_larger_than_the_budget_is_shrunk_and_stays_grayscale() {
        let input = encode_jpeg(&to_luma(&synth_raster(1280, 720, 6)), 92).expect("encodes");
        assert!(b64_len(input.len()) > MAX_B64_CHARS);
        let p = prepare(&input, MAX_B64_CHARS);
        let (from, to, _) = shrunk(&p.action);
        assert_eq!(from, (1280, 720));
        let info = assert_fits_and_decodes(&p, MAX_B64_CHARS);
        assert_eq!(info.pixel_format, jpeg_decoder::PixelFormat::L8);
        assert_eq!((u32::from(info.width), u32::from(info.height)), to);
    }

    #[test]
    fn a_cmyk_jpeg_is_converted_to_rgb_with_the_right_colours() {
        // Flat orange-ish picture with noise so it does not fit as is.
        let src = synth_raster(900, 600, 7);
        let cmyk: Vec<u8> = src
            .data
            .chunks_exact(3)
            .enumerate()
            .flat_map(|(i, p)| {
                let wobble = p[1] / 8; // keep it noisy so the file is large
                if i % 900 < 450 {
                    [0, 128 + wobble, 255 - wobble, 0] // left: red-orange
                } else {
                    [255 - wobble, 0, wobble, 0] // right: cyan
                }
            })
            .collect();
        let mut input = Vec::new();
        jpeg_encoder::Encoder::new(&mut input, 100)
            .encode(&cmyk, 900, 600, jpeg_encoder::ColorType::Cmyk)
            .expect("CMYK JPEG encodes");
        assert!(b64_len(input.len()) > MAX_B64_CHARS, "{}", input.len());
        let p = prepare(&input, MAX_B64_CHARS);
        let (_, to, _) = shrunk(&p.action);
        let mut d = jpeg_decoder::Decoder::new(p.bytes.as_slice());
        let rgb = d.decode().expect("decodes");
        let info = d.info().expect("info");
        assert_eq!(info.pixel_format, jpeg_decoder::PixelFormat::RGB24);
        let px = |x: u32, y: u32| {
            let i = ((y * to.0 + x) * 3) as usize;
            [rgb[i], rgb[i + 1], rgb[i + 2]]
        };
        let left = px(to.0 / 4, to.1 / 2);
        let right = px(to.0 * 3 / 4, to.1 / 2);
        assert!(
            left[0] > 200 && left[2] < 60,
            "left should be red-orange, got {left:?}"
        );
        assert!(
            right[0] < 60 && right[1] > 200 && right[2] > 180,
            "right should be cyan, got {right:?}"
        );
    }

    #[test]
    fn a_progressive_jpeg_is_shrunk_too() {
        let mut input = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut input, 90);
        enc.set_progressive(true);
        enc.encode(
            &synth_raster(1024, 768, 8).data,
            1024,
            768,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("encodes");
        let p = prepare(&input, MAX_B64_CHARS);
        let (from, _, _) = shrunk(&p.action);
        assert_eq!(from, (1024, 768));
        assert_fits_and_decodes(&p, MAX_B64_CHARS);
    }

    #[test]
    fn a_portrait_image_keeps_its_aspect_ratio() {
        let input = synth_jpeg(1080, 1920, 9, 90);
        let p = prepare(&input, MAX_B64_CHARS);
        let (_, to, _) = shrunk(&p.action);
        assert!(to.1 > to.0);
        assert!(
            (f64::from(to.1) / f64::from(to.0) - 16.0 / 9.0).abs() < 0.02,
            "{to:?}"
        );
        assert_fits_and_decodes(&p, MAX_B64_CHARS);
    }

    #[test]
    fn a_bigger_budget_keeps_more_resolution_and_a_smaller_one_less() {
        let input = synth_jpeg(1600, 900, 10, 90);
        let sizes: Vec<(u32, u32)> = [20_000, MAX_B64_CHARS, 120_000]
            .iter()
            .map(|&budget| {
                let p = prepare(&input, budget);
                assert_fits_and_decodes(&p, budget);
                shrunk(&p.action).1
            })
            .collect();
        assert!(
            sizes[0].0 < sizes[1].0 && sizes[1].0 < sizes[2].0,
            "{sizes:?}"
        );
    }

    #[test]
    fn an_oversized_but_smooth_image_keeps_its_full_resolution() {
        // A gentle gradient at quality 100 is big, but fits at full size once re-encoded.
        let (w, h) = (1024u32, 768u32);
        let data = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                let wave = (f64::from(x) / 9.0).sin() * (f64::from(y) / 13.0).cos() * 40.0;
                [
                    (x * 200 / w) as u8,
                    (y * 200 / h) as u8,
                    (128.0 + wave) as u8,
                ]
            })
            .collect();
        let raster = Raster::new(w, h, Layout::Rgb, data).expect("raster");
        let input = encode_jpeg(&raster, 100).expect("encodes");
        assert!(b64_len(input.len()) > MAX_B64_CHARS, "{}", input.len());
        let p = prepare(&input, MAX_B64_CHARS);
        let (from, to, quality) = shrunk(&p.action);
        assert_eq!(from, to);
        assert!(
            quality > MIN_QUALITY,
            "slack should go into quality, got {quality}"
        );
        assert_fits_and_decodes(&p, MAX_B64_CHARS);
    }

    #[test]
    fn a_tiny_budget_drops_quality_at_the_smallest_size_and_an_impossible_one_gives_the_placeholder(
    ) {
        let input = synth_jpeg(640, 360, 11, 90);
        let p = prepare(&input, 2_000);
        let (_, to, quality) = shrunk(&p.action);
        assert!(
            to.0 <= MIN_LONG_SIDE || quality >= MIN_QUALITY,
            "{to:?} q{quality}"
        );
        assert_fits_and_decodes(&p, 2_000);

        let p = prepare(&input, 200);
        assert!(reason(&p.action).contains("does not fit"), "{:?}", p.action);
        assert_eq!(p.bytes, placeholder_jpeg());
    }

    #[test]
    fn a_huge_declared_jpeg_size_is_refused_before_decoding() {
        // SOI, then a baseline SOF0 declaring 60000x60000 with 3 components, and nothing else.
        let mut input = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
        input.extend_from_slice(&60_000u16.to_be_bytes());
        input.extend_from_slice(&60_000u16.to_be_bytes());
        input.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        let p = prepare(&input, MAX_B64_CHARS);
        assert!(
            reason(&p.action).contains("over the limit"),
            "{:?}",
            p.action
        );
    }

    #[test]
    fn a_huge_declared_png_size_is_refused_before_decoding() {
        let mut input = PNG_SIGNATURE.to_vec();
        input.extend_from_slice(&13u32.to_be_bytes());
        input.extend_from_slice(b"IHDR");
        input.extend_from_slice(&20_000u32.to_be_bytes());
        input.extend_from_slice(&20_000u32.to_be_bytes());
        input.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        let p = prepare(&input, MAX_B64_CHARS);
        assert!(
            reason(&p.action).contains("over the limit"),
            "{:?}",
            p.action
        );
    }

    #[test]
    fn truncated_jpeg_never_panics() {
        let small = synth_jpeg(160, 120, 12, 80);
        let large = synth_jpeg(1024, 576, 13, 90);
        for input in [&small, &large] {
            let n = input.len();
            let cuts = [
                0,
                1,
                2,
                3,
                4,
                10,
                20,
                100,
                300,
                600,
                1000,
                n / 4,
                n / 2,
                n - 100,
                n - 2,
                n - 1,
            ];
            for cut in cuts.into_iter().filter(|&c| c <= n) {
                let p = prepare(&input[..cut], MAX_B64_CHARS);
                if p.action != ImageAction::PassedThrough {
                    assert_fits_and_decodes(&p, MAX_B64_CHARS);
                }
            }
        }
    }

    #[test]
    fn random_bytes_and_corrupted_images_never_panic() {
        let mut rng = SplitMix64(99);
        let jpeg = synth_jpeg(96, 64, 14, 85);
        let png = png_bytes(&synth_raster(64, 48, 15), image::ExtendedColorType::Rgb8);
        let mut placeholders = 0;
        for round in 0..300 {
            let mut input = match round % 4 {
                0 => jpeg.clone(),
                1 => png.clone(),
                2 => {
                    let mut v = vec![0xFF, 0xD8, 0xFF];
                    v.extend((0..rng.next_u64() % 2000).map(|_| rng.next_u64() as u8));
                    v
                }
                _ => {
                    let mut v = PNG_SIGNATURE.to_vec();
                    v.extend((0..rng.next_u64() % 2000).map(|_| rng.next_u64() as u8));
                    v
                }
            };
            let flips = 1 + rng.next_u64() % 8;
            for _ in 0..flips {
                let i = (rng.next_u64() % input.len() as u64) as usize;
                input[i] ^= 1 << (rng.next_u64() % 8);
            }
            let p = prepare(&input, MAX_B64_CHARS);
            if matches!(p.action, ImageAction::Placeholder { .. }) {
                placeholders += 1;
            } else {
                assert!(b64_len(p.bytes.len()) <= MAX_B64_CHARS);
            }
        }
        assert!(
            placeholders >= 150,
            "random input should mostly be rejected ({placeholders})"
        );
    }

    #[test]
    fn synth_jpeg_is_deterministic_per_seed_and_does_not_compress_trivially() {
        assert_eq!(synth_jpeg(320, 200, 1, 80), synth_jpeg(320, 200, 1, 80));
        assert_ne!(synth_jpeg(320, 200, 1, 80), synth_jpeg(320, 200, 2, 80));
        let big = synth_jpeg(1920, 1080, 1, 90);
        assert!(big.len() > 300_000, "only {} bytes", big.len());
        let info = decode_jpeg_info(&big);
        assert_eq!((info.width, info.height), (1920, 1080));
        // Degenerate sizes still give a valid JPEG.
        assert_eq!(decode_jpeg_info(&synth_jpeg(1, 1, 0, 50)).width, 1);
    }

    #[test]
    fn the_action_reads_well_in_a_log_line() {
        let a = ImageAction::Shrunk {
            from: (1920, 1080),
            to: (640, 360),
            quality: 62,
        };
        assert_eq!(
            a.to_string(),
            "image shrunk from 1920x1080 to 640x360 at JPEG quality 62"
        );
    }
}
