#!/usr/bin/env python3
"""The diffusion plugin's building blocks on MLX, op by op, at SD 1.5's shapes (512×512:
a 64×64 latent, guided batch of 2; the VAE at full resolution): where a UNet step and a
VAE decode spend their time. Each op: a warm-up, then the median of 5 timed evals.
  python3 bench/gpu/mlx_ops.py            # on whatever device MLX defaults to
"""

import statistics
import time

import mlx.core as mx


def timed(name, f, flops=0):
    mx.eval(f())
    ts = []
    for _ in range(5):
        s = time.perf_counter()
        mx.eval(f())
        ts.append(time.perf_counter() - s)
    m = statistics.median(ts)
    rate = f"  {flops / m / 1e12:7.1f} TFLOP/s" if flops else ""
    print(f"{name:<58} {m * 1e3:9.3f} ms{rate}", flush=True)
    return m


def groupnorm_axes(x, g):
    n, h, w, c = x.shape
    y = x.astype(mx.float32).reshape(n, -1, g, c // g)
    m = y.mean(axis=(1, 3), keepdims=True)
    v = y.var(axis=(1, 3), keepdims=True)
    return ((y - m) * mx.rsqrt(v + 1e-5)).reshape(n, h, w, c).astype(x.dtype)


def groupnorm_ln(x, g):
    n, h, w, c = x.shape
    y = x.reshape(n, h * w, g, c // g).transpose(0, 2, 1, 3).reshape(n, g, -1)
    y = mx.fast.layer_norm(y, None, None, 1e-5)
    return y.reshape(n, g, h * w, c // g).transpose(0, 2, 1, 3).reshape(n, h, w, c)


def main():
    print("device", mx.default_device())
    for dt in (mx.float16, mx.bfloat16, mx.float32):
        x = mx.random.normal((2, 64, 64, 320)).astype(dt)
        w3 = mx.random.normal((320, 3, 3, 320)).astype(dt) * 0.02
        w1 = mx.random.normal((320, 1, 1, 320)).astype(dt) * 0.02
        wm = mx.random.normal((320, 320)).astype(dt) * 0.02
        f3 = 2 * 2 * 64 * 64 * 320 * 320 * 9
        f1 = 2 * 2 * 64 * 64 * 320 * 320
        timed(f"conv 3x3 320->320 64x64 b2 {dt}", lambda: mx.conv2d(x, w3, padding=1), f3)
        timed(f"conv 1x1 320->320 64x64 b2 {dt}", lambda: mx.conv2d(x, w1), f1)
        timed(f"matmul as 1x1 {dt}", lambda: x @ wm.T, f1)
        timed(f"groupnorm (mean/var over axes 1,3) {dt}", lambda: groupnorm_axes(x, 32))
        timed(f"groupnorm (transpose + fast.layer_norm) {dt}", lambda: groupnorm_ln(x, 32))
        q = mx.random.normal((2, 8, 4096, 40)).astype(dt)
        timed(f"sdpa 4096 tokens, 8 heads of 40 {dt}", lambda: mx.fast.scaled_dot_product_attention(q, q, q, scale=0.158), 4 * 2 * 8 * 4096 * 4096 * 40)
        q64 = mx.random.normal((2, 5, 4096, 64)).astype(dt)
        timed(f"sdpa 4096 tokens, 5 heads of 64 {dt}", lambda: mx.fast.scaled_dot_product_attention(q64, q64, q64, scale=0.125), 4 * 2 * 5 * 4096 * 4096 * 64)
        k = mx.random.normal((2, 8, 77, 40)).astype(dt)
        timed(f"sdpa cross 4096 x 77, 8 heads of 40 {dt}", lambda: mx.fast.scaled_dot_product_attention(q, k, k, scale=0.158))
        idx = mx.arange(128) // 2
        xs = mx.random.normal((2, 64, 64, 320)).astype(dt)
        timed(f"nearest x2 via take, 64->128 {dt}", lambda: xs.take(idx, axis=1).take(idx, axis=2))
        timed(f"nearest x2 via broadcast+reshape {dt}", lambda: mx.broadcast_to(xs[:, :, None, :, None, :], (2, 64, 2, 64, 2, 320)).reshape(2, 128, 128, 320))
        v = mx.random.normal((1, 512, 512, 128)).astype(dt)
        wv = mx.random.normal((128, 3, 3, 128)).astype(dt) * 0.02
        timed(f"VAE conv 3x3 128->128 512x512 {dt}", lambda: mx.conv2d(v, wv, padding=1), 2 * 512 * 512 * 128 * 128 * 9)
        timed(f"VAE groupnorm 512x512x128 (axes) {dt}", lambda: groupnorm_axes(v, 32))
        timed(f"VAE groupnorm 512x512x128 (layer_norm) {dt}", lambda: groupnorm_ln(v, 32))
        g = mx.random.normal((2, 4096, 2560)).astype(dt)
        timed(f"GEGLU gelu(erf) + multiply 2x4096x1280 {dt}", lambda: g[..., :1280] * (0.5 * g[..., 1280:] * (1 + mx.erf(g[..., 1280:] * 0.7071))))


if __name__ == "__main__":
    main()
