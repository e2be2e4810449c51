/* Vector helpers shared by prefixkv's native kernels (attention.c, layers.c): 16 float
 * lanes, one AVX-512 register where the CPU has it (GCC's vector extension splits it into
 * narrower registers elsewhere). */
#ifndef PREFIXKV_VECTOR_H
#define PREFIXKV_VECTOR_H

#include <stdint.h>

#define LANES 16
typedef float vf __attribute__((vector_size(LANES * 4)));
typedef int32_t vi __attribute__((vector_size(LANES * 4)));

static inline vf splat(float x) { return (vf){} + x; }
static inline vf select_lanes(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }
static inline vf lane_max(vf a, vf b) { return select_lanes(a > b, a, b); }

/* e^x lane-wise for x <= 0, clamped at -87: range reduction by ln 2 in two parts and a
 * degree-6 polynomial (the Cephes expf coefficients), within about 1 ulp. */
static inline vf exp_nonpositive(vf x) {
    const vf magic = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    x = lane_max(x, splat(-87.0f));
    vf n = (x * 1.44269504088896341f + magic) - magic;
    vf r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23; /* 2^n */
    return p * (vf)bits;
}

/* tanh lane-wise, as sign(x) (1 - e^-2|x|) / (1 + e^-2|x|): within a few 1e-7 absolutely
 * (the subtraction loses relative precision near 0, never absolute). */
static inline vf tanh_lanes(vf x) {
    vi negative = x < splat(0.0f);
    vf a = select_lanes(negative, -x, x);
    vf e = exp_nonpositive(-2.0f * a);
    vf t = (1.0f - e) / (1.0f + e);
    return select_lanes(negative, -t, t);
}

#endif
