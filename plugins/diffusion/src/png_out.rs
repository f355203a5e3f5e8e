//! PNG files with their generation parameters inside, as image tools read them: a
//! `parameters` text chunk in AUTOMATIC1111's layout (prompt; `Negative prompt: …`;
//! `Steps: …, Sampler: …, CFG scale: …, Seed: …, Size: WxH, Model: …`), Latin-1 text as
//! `tEXt`, anything else as UTF-8 `iTXt`.

/// What produced an image.
pub struct Parameters<'a> {
    pub prompt: &'a str,
    pub negative_prompt: &'a str,
    pub steps: usize,
    /// The name image tools show (`Euler a`).
    pub sampler: &'a str,
    pub guidance: f32,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub model: &'a str,
}

impl Parameters<'_> {
    /// The `parameters` chunk's text.
    pub fn text(&self) -> String {
        let mut s = self.prompt.to_owned();
        if !self.negative_prompt.is_empty() {
            s.push_str("\nNegative prompt: ");
            s.push_str(self.negative_prompt);
        }
        s.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
            self.steps, self.sampler, self.guidance, self.seed, self.width, self.height, self.model
        ));
        s
    }
}

/// `rgb` (height × width × 3 bytes) as a PNG carrying `params`.
pub fn encode(
    rgb: &[u8],
    width: u32,
    height: u32,
    params: &Parameters<'_>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let text = params.text();
    let latin1 = text.chars().all(|c| (c as u32) < 256);
    let chunk = if latin1 {
        enc.add_text_chunk("parameters".into(), text)
    } else {
        enc.add_itxt_chunk("parameters".into(), text)
    };
    chunk.map_err(|e| format!("PNG text chunk: {e}"))?;
    enc.add_text_chunk(
        "Software".into(),
        format!("mlxengine {}", env!("CARGO_PKG_VERSION")),
    )
    .map_err(|e| format!("PNG text chunk: {e}"))?;
    let mut w = enc.write_header().map_err(|e| format!("PNG header: {e}"))?;
    w.write_image_data(rgb)
        .map_err(|e| format!("PNG image data: {e}"))?;
    w.finish().map_err(|e| format!("PNG: {e}"))?;
    Ok(out)
}

/// Float pixels in [0, 1] → bytes, rounded as diffusers' `numpy_to_pil` does (numpy rounds half to even)
/// (`(x · 255).round()`).
pub fn to_bytes(pixels: &[f32]) -> Vec<u8> {
    pixels
        .iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round_ties_even() as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(prompt: &str) -> Parameters<'_> {
        Parameters {
            prompt,
            negative_prompt: "blurry",
            steps: 20,
            sampler: "Euler a",
            guidance: 7.5,
            seed: 42,
            width: 2,
            height: 1,
            model: "sd15",
        }
    }

    /// Reads the chunks back with the png decoder: what image tools would see.
    fn read_back(bytes: &[u8]) -> (Vec<u8>, Vec<(String, String)>) {
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        r.next_frame(&mut buf).unwrap();
        let info = r.info();
        let mut texts: Vec<(String, String)> = info
            .uncompressed_latin1_text
            .iter()
            .map(|t| (t.keyword.clone(), t.text.clone()))
            .collect();
        texts.extend(
            info.utf8_text
                .iter()
                .map(|t| (t.keyword.clone(), t.get_text().unwrap())),
        );
        (buf, texts)
    }

    #[test]
    fn parameters_travel_in_the_file() {
        let rgb = [255, 0, 0, 0, 128, 255];
        let (pixels, texts) = read_back(&encode(&rgb, 2, 1, &params("a red fox")).unwrap());
        assert_eq!(pixels, rgb);
        let p = &texts.iter().find(|t| t.0 == "parameters").unwrap().1;
        assert_eq!(
            p,
            "a red fox\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 2x1, Model: sd15"
        );
        // Not Latin-1: UTF-8 in iTXt, intact.
        let (_, texts) = read_back(&encode(&rgb, 2, 1, &params("一只狐狸 🦊")).unwrap());
        let p = &texts.iter().find(|t| t.0 == "parameters").unwrap().1;
        assert!(p.starts_with("一只狐狸 🦊\n"), "{p}");
    }

    #[test]
    fn bytes_round_half_to_even_and_clamp() {
        assert_eq!(
            to_bytes(&[0.0, 1.0, 0.5, -0.2, 1.7, 0.001_96]),
            [0, 255, 128, 0, 255, 0]
        );
    }
}
