//! Token sampling on the host CPU from one row of logits: penalties, greedy or
//! temperature / top-k / top-p / min-p, seeded RNG (same seed, same tokens).

use plugin_api::text::SamplingParams;
use std::collections::HashMap;

/// xoshiro256** seeded through splitmix64: small, fast, reproducible across platforms.
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Sampling state of one sequence.
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Occurrences of each generated token (presence / frequency penalties).
    counts: HashMap<u32, u32>,
}

impl Sampler {
    /// `seed` is used when the request gives none (then output is not reproducible).
    pub fn new(params: &SamplingParams, fallback_seed: u64) -> Self {
        let seed = params.seed.into_option().unwrap_or(fallback_seed);
        Self {
            params: params.clone(),
            rng: Rng::new(seed),
            counts: HashMap::new(),
        }
    }

    /// Pick the next token from `logits` (modified in place). `context` is the prompt and
    /// the tokens generated so far (repetition penalty). Returns (token, log-probability
    /// under the penalised distribution before temperature).
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> (u32, f32) {
        let p = &self.params;
        if repeats_penalised(p) {
            let mut seen: Vec<u32> = context.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if counts_penalised(p) {
            for (&t, &n) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
        let lse = log_sum_exp(logits);
        let token = if p.temperature <= 0.0 {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        *self.counts.entry(token).or_default() += 1;
        (token, logits[token as usize] - lse)
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u32, l / p.temperature))
            .collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 {
            cand.truncate(p.top_k as usize);
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|(_, l)| f64::from(l - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        let mut keep = probs.len();
        if p.top_p > 0.0 && p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, x) in probs.iter().enumerate() {
                acc += x;
                if acc >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * f64::from(p.min_p);
            keep = keep.min(probs.iter().take_while(|x| **x >= floor).count().max(1));
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut u = self.rng.uniform() * total;
        for (i, x) in probs[..keep].iter().enumerate() {
            u -= x;
            if u <= 0.0 {
                return cand[i].0;
            }
        }
        cand[keep - 1].0
    }
}

/// Whether every pick under `p` is the argmax of the raw logits: greedy, and no penalty
/// that [`Sampler::sample`] would apply first.
pub fn plain_argmax(p: &SamplingParams) -> bool {
    p.temperature <= 0.0 && !repeats_penalised(p) && !counts_penalised(p)
}

fn repeats_penalised(p: &SamplingParams) -> bool {
    p.repetition_penalty != 1.0 && p.repetition_penalty > 0.0
}

fn counts_penalised(p: &SamplingParams) -> bool {
    p.presence_penalty != 0.0 || p.frequency_penalty != 0.0
}

/// Index of the largest value (first on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn log_sum_exp(v: &[f32]) -> f32 {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m + v.iter().map(|x| f64::from(x - m).exp()).sum::<f64>().ln() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_argmax_and_reports_its_logprob() {
        let mut s = Sampler::new(&params(0.0), 1);
        let (t, lp) = s.sample(&mut [0.0, 2.0, 1.0], &[]);
        assert_eq!(t, 1);
        let expect = 2.0 - (1f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((lp - expect).abs() < 1e-6);
    }

    #[test]
    fn same_seed_same_tokens() {
        let run = |seed| {
            let mut p = params(1.0);
            p.seed = Some(seed).into();
            let mut s = Sampler::new(&p, 0);
            (0..50)
                .map(|_| s.sample(&mut [1.0, 1.2, 0.8, 1.1], &[]).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut p = params(5.0);
        p.top_k = 1;
        let mut s = Sampler::new(&p, 3);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.1, 0.3, 0.2], &[]).0, 1);
        }
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut p = params(0.0);
        p.repetition_penalty = 2.0;
        let mut s = Sampler::new(&p, 0);
        assert_eq!(s.sample(&mut [1.0, 1.5, 0.0], &[1]).0, 0);
    }

    #[test]
    fn min_p_cuts_the_tail() {
        let mut p = params(1.0);
        p.min_p = 0.5;
        let mut s = Sampler::new(&p, 11);
        for _ in 0..100 {
            let t = s.sample(&mut [5.0, 4.9, 0.0, -1.0], &[]).0;
            assert!(t < 2, "token {t} is below min_p");
        }
    }
}
