/* Integer dot products for GGUF's K-quants against activations quantized to 8 bits (included
 * by linear_int8.h, after its activations, KEEP and INT_PATH): the formats q4_k.q8, q5_k.q8
 * and q6_k.q8 (codes 11-13), selected by ``--activations q8``. The activations are
 * linear_int8.h's: per row and group of 32 k, q, d_x, sum (and half, the first 16's sum).
 *
 * Weights. Per column block, each super-block of 256 k keeps the float layout's scales
 * (linear_kquants.h: q4_k/q5_k fp16 d[64], fp16 dmin[64], uint8 sc[8][64], uint8 m[8][64];
 * q6_k fp16 d[64], int8 sc[16][64]), then its 8 groups of 32 k, each: the high bits hb
 * (q5_k uint8 [64][4]: bit 2 p + h of byte (c, i) is the 5th bit at k = 8 p + 4 h + i;
 * q6_k uint8 [2][64][4]: bits 2 t, 2 t + 1 of byte (s, c, i) the top two bits at k = 8 p +
 * 4 h + i, p = 2 s + t / 2, h = t % 2), then the low 4 bits lo as q4_0.q8's u[4][64][4]
 * (low nibble k = 8 p + i, high nibble k = 8 p + 4 + i). Same bytes per super-block as
 * the float layout (9472, 11520, 13440); prefixkv/kernels/kint_layout.py packs them.
 *
 * Sums. Per output column c and group g (sub-block j = g % 8 of its super-block), with
 * u the unsigned quant (0..15, 0..31, 0..63), all in int32 and exact:
 *   q4_k.q8, q5_k.q8: i = sc[j] * sum_k u x,  n = m[j] * sum
 *   q6_k.q8:          i = sc[2j] * (sum_{k<16} u x - 32 half)
 *                         + sc[2j+1] * (sum_{k>=16} u x - 32 (sum - half))
 * |i| < 2^24 in every format (at most 63 * 32 * 31 * 127, or 2 * 128 * 16 * 32 * 127), so
 * (float)i is exact. Then in float32, each operation rounded once (no fused multiply-add),
 *   acc = (acc + (float)i * (d * d_x)) - (float)n * (dmin * d_x)      (q4_k.q8, q5_k.q8)
 *   acc = acc + (float)i * (d * d_x)                                   (q6_k.q8)
 * over g = 0 .. K/32 - 1 in order from acc = 0, then + bias: one order whatever the rows of
 * the call or the path (AVX512-VNNI, AVX2, generic C) that formed the integer sums. The
 * reference is prefixkv/kernels/int8_kquants.py. */
#ifndef PREFIXKV_LINEAR_INT8_K_H
#define PREFIXKV_LINEAR_INT8_K_H

#define KINT_FIRST Q4_K_Q8
#define KGROUPS (SUPER / GROUP)       /* groups per super-block */
#define KLO_BYTES (GROUP * BLOCK / 2) /* a group's low bits */

static const int64_t KINT_SUPER_BYTES[] = {SUPER_Q4_K, SUPER_Q5_K, SUPER_Q6_K};
static const int64_t KINT_HEADER[] = {1280, 1280, 1152}; /* scales before the groups */
static const int64_t KINT_HIGH[] = {0, BLOCK * 4, 2 * BLOCK * 4}; /* a group's hb bytes */

/* A group's high and low bits: hb (unused for q4_k.q8) and lo. */
struct kgroup {
    const uint8_t *hb, *lo;
};

static inline __attribute__((always_inline)) struct kgroup kgroup_at(int format,
                                                                     const uint8_t *super,
                                                                     int sub) {
    int f = format - KINT_FIRST;
    const uint8_t *at = super + KINT_HEADER[f] + sub * (KINT_HIGH[f] + KLO_BYTES);
    struct kgroup k = {at, at + KINT_HIGH[f]};
    return k;
}

/* Where the high bits of quad p sit: their byte row in hb and the shift of the low
 * nibble's (the high nibble's are the next bit, q5_k, or the next pair, q6_k). */
static inline __attribute__((always_inline)) int khigh_row(int format, int p) {
    return format == Q6_K_Q8 ? p / 2 : 0;
}
static inline __attribute__((always_inline)) int khigh_shift(int format, int p) {
    return format == Q6_K_Q8 ? 4 * (p % 2) : 2 * p;
}

/* 16 bytes widened to 16 int32 lanes (exact), unsigned or signed. */
#if defined(__AVX512F__)
static inline __attribute__((always_inline)) vi widen_u8_i32(const uint8_t *p) {
    return (vi)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}
static inline __attribute__((always_inline)) vi widen_i8_i32(const uint8_t *p) {
    return (vi)_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
}
#elif defined(__AVX2__)
typedef union {
    vi whole;
    __m256i half[2];
} ihalves;
static inline __attribute__((always_inline)) vi widen_u8_i32(const uint8_t *p) {
    ihalves out;
    for (int h = 0; h < 2; h++)
        out.half[h] = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * h)));
    return out.whole;
}
static inline __attribute__((always_inline)) vi widen_i8_i32(const uint8_t *p) {
    ihalves out;
    for (int h = 0; h < 2; h++)
        out.half[h] = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * h)));
    return out.whole;
}
#else
static inline __attribute__((always_inline)) vi widen_u8_i32(const uint8_t *p) {
    return __builtin_convertvector(*(const vu8 *)p, vi);
}
static inline __attribute__((always_inline)) vi widen_i8_i32(const uint8_t *p) {
    return __builtin_convertvector(*(const vi8 *)p, vi);
}
#endif

#if INT_PATH == 1
/* isum[r][j]: sum over quads p in [p0, p1) of the group's u against rows xq[r] (VNNI). */
static inline __attribute__((always_inline)) void kdot(int format, struct kgroup k,
                                                       const int8_t *const *xq, int R, int p0,
                                                       int p1, vi isum[][VECTORS]) {
    __m512i acc[INT_ROWS][VECTORS];
    const __m512i low = _mm512_set1_epi8(15);
    const __m512i bits = _mm512_set1_epi8(format == Q6_K_Q8 ? 3 : 1);
    int step = format == Q6_K_Q8 ? 2 : 1;
    for (int r = 0; r < R; r++)
        for (int j = 0; j < VECTORS; j++) acc[r][j] = _mm512_setzero_si512();
    for (int p = p0; p < p1; p++) {
        __m512i bl[INT_ROWS], bh[INT_ROWS];
        broadcast_pair(xq, R, p, bl, bh);
        __m128i shift = _mm_cvtsi32_si128(khigh_shift(format, p));
        __m128i next = _mm_cvtsi32_si128(khigh_shift(format, p) + step);
        for (int j = 0; j < VECTORS; j++) {
            __m512i wv = _mm512_loadu_si512(k.lo + (p * BLOCK + j * WIDTH) * 4);
            __m512i lo = _mm512_and_si512(wv, low);
            __m512i hi = _mm512_and_si512(_mm512_srli_epi16(wv, 4), low);
            if (format != Q4_K_Q8) { /* shifted within 16 bits, masked to the byte's own */
                __m512i hv =
                    _mm512_loadu_si512(k.hb + (khigh_row(format, p) * BLOCK + j * WIDTH) * 4);
                lo = _mm512_or_si512(
                    lo, _mm512_slli_epi16(_mm512_and_si512(_mm512_srl_epi16(hv, shift), bits), 4));
                hi = _mm512_or_si512(
                    hi, _mm512_slli_epi16(_mm512_and_si512(_mm512_srl_epi16(hv, next), bits), 4));
            }
            for (int r = 0; r < R; r++) {
                acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], lo, bl[r]);
                acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], hi, bh[r]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < VECTORS; j++) isum[r][j] = (vi)acc[r][j];
}
#elif INT_PATH == 2
/* As the VNNI path, 8 columns (half a vector, h) at a time. vpmaddubsw's pair sums are at
 * most 2 * 63 * 127 and two of them 32004: no 16-bit sum saturates. */
static inline __attribute__((always_inline)) void kdot(int format, struct kgroup k,
                                                       const int8_t *const *xq, int R, int p0,
                                                       int p1, vi isum[][VECTORS]) {
    const __m256i low = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    const __m256i bits = _mm256_set1_epi8(format == Q6_K_Q8 ? 3 : 1);
    int step = format == Q6_K_Q8 ? 2 : 1;
    for (int h = 0; h < 2 * VECTORS; h++) {
        for (int r = 0; r < R; r++) {
            __m256i acc = _mm256_setzero_si256();
            for (int p = p0; p < p1; p++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(k.lo + p * BLOCK * 4 + h * 32));
                __m256i lo = _mm256_and_si256(v, low);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                if (format != Q4_K_Q8) {
                    __m256i hv = _mm256_loadu_si256(
                        (const __m256i *)(k.hb + khigh_row(format, p) * BLOCK * 4 + h * 32));
                    __m128i shift = _mm_cvtsi32_si128(khigh_shift(format, p));
                    __m128i next = _mm_cvtsi32_si128(khigh_shift(format, p) + step);
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(
                                                 _mm256_and_si256(_mm256_srl_epi16(hv, shift), bits), 4));
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16(
                                                 _mm256_and_si256(_mm256_srl_epi16(hv, next), bits), 4));
                }
                int32_t four[2];
                memcpy(four, xq[r] + 8 * p, 8);
                __m256i pairs = _mm256_add_epi16(
                    _mm256_maddubs_epi16(lo, _mm256_set1_epi32(four[0])),
                    _mm256_maddubs_epi16(hi, _mm256_set1_epi32(four[1])));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
            }
            memcpy((int32_t *)&isum[r][h / 2] + (h % 2) * 8, &acc, sizeof(acc));
        }
    }
}
#else
/* The generic path: the same sums, value by value. */
static inline __attribute__((always_inline)) void kdot(int format, struct kgroup k,
                                                       const int8_t *const *xq, int R, int p0,
                                                       int p1, vi isum[][VECTORS]) {
    int step = format == Q6_K_Q8 ? 2 : 1, mask = format == Q6_K_Q8 ? 3 : 1;
    for (int r = 0; r < R; r++) {
        int32_t s[BLOCK] = {0};
        for (int p = p0; p < p1; p++)
            for (int h = 0; h < 2; h++)
                for (int i = 0; i < 4; i++) {
                    int32_t x = xq[r][8 * p + 4 * h + i];
                    for (int c = 0; c < BLOCK; c++) {
                        int32_t u = (k.lo[(p * BLOCK + c) * 4 + i] >> (4 * h)) & 15;
                        if (format != Q4_K_Q8) {
                            int bit = khigh_shift(format, p) + h * step;
                            u |= ((k.hb[(khigh_row(format, p) * BLOCK + c) * 4 + i] >> bit) & mask)
                                 << 4;
                        }
                        s[c] += u * x;
                    }
                }
        memcpy(isum[r], s, sizeof(s));
    }
}
#endif

/* Rows [r0, r0 + R) of one tile: adds group g's terms (sub-block sub of the super-block at
 * super) to acc (see the opening comment). */
static inline __attribute__((always_inline)) void kint_tile(int format, const uint8_t *super,
                                                            int sub, const struct qacts *a,
                                                            int64_t r0, int R, int64_t g,
                                                            vf acc[][VECTORS]) {
    int six = format == Q6_K_Q8;
    struct kgroup k = kgroup_at(format, super, sub);
    const int8_t *xq[INT_ROWS];
    for (int r = 0; r < R; r++) xq[r] = a->q + (r0 + r) * a->k_dim + g * GROUP;
    vi isum[INT_ROWS][VECTORS], upper[INT_ROWS][VECTORS];
    kdot(format, k, xq, R, 0, six ? 2 : 4, isum);
    if (six)
        kdot(format, k, xq, R, 2, 4, upper);
    vi sc[2][VECTORS], mins[VECTORS]; /* the group's scales (q6_k: two) and mins, widened */
    vf d[VECTORS], dmin[VECTORS];
    for (int j = 0; j < VECTORS; j++) {
        d[j] = from_f16(super + 2 * WIDTH * j);
        if (six) {
            sc[0][j] = widen_i8_i32(super + 128 + 2 * sub * BLOCK + WIDTH * j);
            sc[1][j] = widen_i8_i32(super + 128 + (2 * sub + 1) * BLOCK + WIDTH * j);
        } else {
            sc[0][j] = widen_u8_i32(super + 256 + sub * BLOCK + WIDTH * j);
            mins[j] = widen_u8_i32(super + 768 + sub * BLOCK + WIDTH * j);
            dmin[j] = from_f16(super + 128 + 2 * WIDTH * j);
        }
    }
    for (int r = 0; r < R; r++) {
        int64_t at = (r0 + r) * a->groups + g;
        float dx = a->d[at];
        int32_t sum = a->sum[at], half = a->half[at];
        for (int j = 0; j < VECTORS; j++) {
            vi ints = six ? sc[0][j] * (isum[r][j] - 32 * half) +
                                sc[1][j] * (upper[r][j] - 32 * (sum - half))
                          : sc[0][j] * isum[r][j];
            vf scale = d[j] * dx;
            KEEP(scale);
            vf term = __builtin_convertvector(ints, vf) * scale;
            KEEP(term);
            acc[r][j] += term;
            if (!six) {
                vf shift = dmin[j] * dx;
                KEEP(shift);
                vf less = __builtin_convertvector(mins[j] * sum, vf) * shift;
                KEEP(less);
                acc[r][j] -= less;
            }
        }
    }
}

/* Rows [r0, r1) (at most INT_CHUNK) against one column block w, into out with the bias.
 * A group's share of its super-block (its scales included) is prefetched INT_AHEAD groups
 * ahead: the block's bytes in order. Inlined into kint_block once per format, so that each
 * format's dot is compiled on its own. */
static inline __attribute__((always_inline)) void kint_block_of(int format, const uint8_t *w, const struct qacts *a, int64_t r0,
                       int64_t r1, const float *bias, int columns, float *out, int64_t n_dim) {
    vf acc[INT_CHUNK][VECTORS];
    int64_t bytes = KINT_SUPER_BYTES[format - KINT_FIRST], share = bytes / KGROUPS;
    memset(acc, 0, (size_t)(r1 - r0) * sizeof(acc[0]));
    for (int64_t g = 0; g < a->groups; g++) {
        const uint8_t *super = w + g / KGROUPS * bytes;
        for (int64_t line = 0; line < share; line += LINE)
            __builtin_prefetch(w + (g + INT_AHEAD) * share + line, 0, 2);
        int sub = (int)(g % KGROUPS);
        for (int64_t r = r0; r < r1; r += INT_ROWS) {
            vf(*tile)[VECTORS] = acc + (r - r0);
            switch (r1 - r < INT_ROWS ? (int)(r1 - r) : INT_ROWS) {
            case 4: kint_tile(format, super, sub, a, r, 4, g, tile); break;
            case 3: kint_tile(format, super, sub, a, r, 3, g, tile); break;
            case 2: kint_tile(format, super, sub, a, r, 2, g, tile); break;
            default: kint_tile(format, super, sub, a, r, 1, g, tile); break;
            }
        }
    }
    store_block(acc, r0, r1, bias, columns, out, n_dim);
}

static void kint_block(int format, const uint8_t *w, const struct qacts *a, int64_t r0,
                       int64_t r1, const float *bias, int columns, float *out, int64_t n_dim) {
    switch (format) {
    case Q4_K_Q8: kint_block_of(Q4_K_Q8, w, a, r0, r1, bias, columns, out, n_dim); break;
    case Q5_K_Q8: kint_block_of(Q5_K_Q8, w, a, r0, r1, bias, columns, out, n_dim); break;
    default: kint_block_of(Q6_K_Q8, w, a, r0, r1, bias, columns, out, n_dim); break;
    }
}

#endif
