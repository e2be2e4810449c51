/* The vector work between a Llama layer's linear layers, for prefixkv's ``native`` kernel
 * (prefixkv/engine/native_layers.py): the RMS norm and the gated MLP's SiLU(gate) * up; and
 * the rotary position embedding, for the batch runner's lean forward (engine/batch/lean.py).
 *
 * PyTorch runs the norm as six operations and the activation as two, each writing a new
 * tensor and paying its dispatch; here one pass reads each input once (measures in
 * prefixkv/engine/native_layers.py).
 *
 * Each row is computed on its own in a fixed order (a norm's sum of squares in 16 lanes,
 * then the lanes in order), so a row's result does not depend on the call's other rows: the
 * property the batch runner's exactness rests on (see linear.c).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h" /* the definitions below checked against the decoder's view */
#include "vector.h"

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* The first n (< LANES) floats of p in a vector, zeros after them; and back. */
static inline vf load_part(const float *p, int64_t n) {
    vf v = {};
    memcpy(&v, p, (size_t)n * sizeof(float));
    return v;
}
static inline void store_part(float *p, vf v, int64_t n) { memcpy(p, &v, (size_t)n * sizeof(float)); }

/* out[r] = weight * (x[r] / sqrt(mean(x[r]^2) + eps)) for r < rows, as Llama's RMS norm.
 * x: [rows] with row stride x_row; weight: [dim]; out: [rows, dim] contiguous. */
void prefixkv_rms_norm(const float *x, int64_t rows, int64_t dim, int64_t x_row,
                       const float *weight, float eps, float *out) {
    int64_t whole = dim - dim % LANES;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * x_row;
        vf squares = {};
        for (int64_t i = 0; i < whole; i += LANES) {
            vf v = load(xr + i);
            squares += v * v;
        }
        if (whole < dim) {
            vf v = load_part(xr + whole, dim - whole);
            squares += v * v;
        }
        float sum = 0.0f;
        for (int l = 0; l < LANES; l++) sum += squares[l];
        float scale = 1.0f / sqrtf(sum / (float)dim + eps);
        float *o = out + r * dim;
        for (int64_t i = 0; i < whole; i += LANES) store(o + i, load(weight + i) * (load(xr + i) * scale));
        if (whole < dim) {
            int64_t n = dim - whole;
            store_part(o + whole, load_part(weight + whole, n) * (load_part(xr + whole, n) * scale), n);
        }
    }
}

static inline vf silu_mul(vf g, vf u) {
    vi negative = g < 0;
    vf e = exp_nonpositive(select_lanes(negative, g, -g)); /* e^-|g| */
    return g * (select_lanes(negative, e, splat(1.0f)) / (1.0f + e)) * u;
}

/* out[r][i] = silu(gate_up[r][i]) * gate_up[r][width + i]: SiLU of the gate columns times
 * the up columns of a joined gate/up projection. gate_up: [rows, 2 * width] with row stride
 * gu_row; out: [rows, width] contiguous. silu(g) = g * sigmoid(g), with e^-|g| for both
 * signs so that the exponential never overflows. */
void prefixkv_silu_mul(const float *gate_up, int64_t rows, int64_t width, int64_t gu_row,
                       float *out, int threads) {
    int64_t whole = width - width % LANES;
    /* Threads only for prefill-sized calls: waking them costs more than a few rows' work. */
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * width >= 65536)
    for (int64_t r = 0; r < rows; r++) {
        const float *gate = gate_up + r * gu_row, *up = gate + width;
        float *o = out + r * width;
        for (int64_t i = 0; i < whole; i += LANES) store(o + i, silu_mul(load(gate + i), load(up + i)));
        if (whole < width) {
            int64_t n = width - whole;
            store_part(o + whole, silu_mul(load_part(gate + whole, n), load_part(up + whole, n)), n);
        }
    }
}

/* Rotary position embedding in place, as transformers' apply_rotary_pos_emb computes it in
 * float32: x * cos + rotate_half(x) * sin, where rotate_half(x) = [-x2, x1] for the halves
 * x1, x2 of a head. Each product and the sum are rounded on their own, exactly like
 * PyTorch's three element-wise operations: a fused multiply-add would round once and
 * differ in the last bit, so contraction is off for this function whatever the build's
 * default (GCC's is to fuse under -march=native).
 * x: rows of `heads` heads of `dim` floats each, row r's head h at x + r * x_row + h * dim;
 * cos, sin: [rows, dim] contiguous. Rows are independent, so threads change nothing. */
#if defined(__clang__)
#define PREFIXKV_NO_CONTRACT
#elif defined(__GNUC__)
#define PREFIXKV_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define PREFIXKV_NO_CONTRACT
#endif
PREFIXKV_NO_CONTRACT
void prefixkv_rotary(float *x, int64_t rows, int64_t heads, int64_t dim, int64_t x_row,
                     const float *cos, const float *sin, int threads) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    int64_t half = dim / 2;
    /* Threads only for prefill-sized calls: waking them costs more than a few rows' work. */
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * heads * dim >= 65536)
    for (int64_t r = 0; r < rows; r++) {
        const float *c = cos + r * dim, *s = sin + r * dim;
        for (int64_t h = 0; h < heads; h++) {
            float *lo = x + r * x_row + h * dim, *hi = lo + half;
            for (int64_t i = 0; i < half; i++) {
                float a = lo[i], b = hi[i];
                float a_cos = a * c[i], b_sin = -b * s[i];
                float b_cos = b * c[half + i], a_sin = a * s[half + i];
                lo[i] = a_cos + b_sin;
                hi[i] = b_cos + a_sin;
            }
        }
    }
}
