//! Pooling of one text's token vectors into its embedding, on plain `f32` rows (providers
//! whose runtime hands back per-token vectors; the MLX provider pools in MLX).

use plugin_api::embed::Pooling;

/// The embedding of one text from its `tokens` (row-major, `dim` values per token, padding
/// excluded): mean, first (`[CLS]`) or last token. An empty text gives zeros.
pub fn pool(tokens: &[f32], dim: usize, pooling: Pooling) -> Vec<f32> {
    let n = tokens.len() / dim.max(1);
    if n == 0 {
        return vec![0.0; dim];
    }
    match pooling {
        Pooling::CLS => tokens[..dim].to_vec(),
        Pooling::LAST => tokens[(n - 1) * dim..n * dim].to_vec(),
        _ => {
            // Summed in f64: the mean of up to 8k tokens without f32 drift.
            let mut sum = vec![0f64; dim];
            for row in tokens.chunks_exact(dim) {
                for (s, v) in sum.iter_mut().zip(row) {
                    *s += f64::from(*v);
                }
            }
            sum.iter().map(|s| (s / n as f64) as f32).collect()
        }
    }
}

/// Divide `v` by its L2 norm (at least 1e-12), as torch's `F.normalize`.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let d = norm.max(1e-12) as f32;
    v.iter_mut().for_each(|x| *x /= d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes_and_normalization() {
        let t = [1.0, 2.0, 3.0, 4.0, 5.0, 9.0];
        assert_eq!(pool(&t, 2, Pooling::MEAN), [3.0, 5.0]);
        assert_eq!(pool(&t, 2, Pooling::CLS), [1.0, 2.0]);
        assert_eq!(pool(&t, 2, Pooling::LAST), [5.0, 9.0]);
        assert_eq!(pool(&[], 2, Pooling::MEAN), [0.0, 0.0]);
        let mut v = [3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut z = [0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, [0.0, 0.0]);
    }
}
