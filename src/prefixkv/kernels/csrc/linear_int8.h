/* Integer dot products for GGUF's 32-weight formats against activations quantized to 8 bits
 * (included by linear.c after its vector types, from_f16 and FORMATS): the formats
 * q8_0.q8, q4_0.q8 and q4_1.q8 (codes 8-10), selected by ``--activations q8``; the
 * K-quants' q4_k.q8, q5_k.q8, q6_k.q8 (codes 11-13) on the same activations are in
 * linear_int8_k.h.
 *
 * Activations. Each input row is quantized on its own, per group of 32 k's, whatever other
 * rows share the call: amax = max |x|; d = amax / 127; q = rint(clamp(x * (127 / amax),
 * -127, 127)) (round half to even), with d = 0 and q = 0 where amax < QUANT_TINY (127 / amax
 * would overflow); sum = the group's sum of q, half = the sum of its first 16. All float32
 * operations, each rounded once.
 *
 * Weights. The same bytes per group as q8_0, q4_0, q4_1 (linear.c's opening comment), the
 * quants reordered for 4-byte dot products and stored unsigned, u = w_q + OFFSET (q8_0: q +
 * 128; q4_0: q, the offset 8 being the format's own; q4_1: q, offset 0):
 *   q8_0.q8: fp16 d[64]; uint8 u[8][64][4]: u[t][c][i] is column c at k = 4 t + i
 *   q4_0.q8: fp16 d[64]; uint8 u[4][64][4]: low nibble column c at k = 8 p + i, high
 *            nibble at k = 8 p + 4 + i
 *   q4_1.q8: fp16 d[64]; fp16 m[64]; uint8 u[4][64][4] as q4_0.q8
 * so that one 64-byte vector holds 16 columns x 4 consecutive k's (VNNI's vpdpbusd layout).
 *
 * Sums. Per output column c and group g: i = sum_k u[c][k] q[k] - OFFSET * sum (exact in
 * int32: |i| <= 32 * 255 * 127); then, in float32 with each operation rounded once (no
 * fused multiply-add: the reference in prefixkv/kernels/int8.py is plain float32),
 *   acc = acc + (float)i * (d_w * d_x)                         (q8_0.q8, q4_0.q8)
 *   acc = (acc + (float)i * (d_w * d_x)) + m * (d_x * (float)sum)            (q4_1.q8)
 * over g = 0 .. K/32 - 1 in order from acc = 0, then + bias. Nothing depends on the rows the
 * call has or the path (AVX512-VNNI, AVX2 or generic C) that formed i: cached == uncached and
 * batched == alone bit for bit. Not equal to the fp32 activations' result (the activations
 * are rounded to 8 bits); bench formats measures the agreement. */
#ifndef PREFIXKV_LINEAR_INT8_H
#define PREFIXKV_LINEAR_INT8_H

#include <math.h>

#define INT_FIRST Q8_0_Q8
#define INT_ROWS 4      /* rows per tile: 4 x 4 int32 sums in registers */
#define INT_CHUNK 32    /* rows whose float sums a block keeps at a time */
#define QUANT_TINY 1e-30f
#define INT_AHEAD 4     /* groups prefetched ahead */

/* One call's quantized activations: q[rows][k_dim]; d, sum and half [rows][k_dim / GROUP]
 * (half: the sum of the group's first 16 q, which q6_k.q8's 16-feature sub-blocks need). */
struct qacts {
    int8_t *q;
    float *d;
    int32_t *sum, *half;
    int64_t k_dim, groups;
};

/* Row x (k_dim values) quantized into q, d, sum, half (see the opening comment). */
static void quantize_row(const float *x, int64_t k_dim, int8_t *q, float *d, int32_t *sum,
                         int32_t *half) {
    for (int64_t g = 0; g < k_dim / GROUP; g++) {
        const float *xg = x + g * GROUP;
        float amax = 0.0f;
        for (int i = 0; i < GROUP; i++) amax = fmaxf(amax, fabsf(xg[i]));
        int tiny = !(amax >= QUANT_TINY); /* NaN too: a zero group */
        float inv = tiny ? 0.0f : 127.0f / amax;
        int32_t total = 0;
        for (int i = 0; i < GROUP; i++) {
            float v = fminf(fmaxf(xg[i] * inv, -127.0f), 127.0f);
            int8_t value = (int8_t)rintf(v);
            q[g * GROUP + i] = value;
            total += value;
            if (i == GROUP / 2 - 1)
                half[g] = total;
        }
        d[g] = tiny ? 0.0f : amax / 127.0f;
        sum[g] = total;
    }
}

static const int32_t INT_OFFSET[] = {128, 8, 0}; /* by format - INT_FIRST */
static const int64_t INT_GROUP_BYTES[] = {GROUP_Q8_0, GROUP_Q4_0, GROUP_Q4_1};

/* One value kept as computed: the product before it is not fused into the add after it. */
#if defined(__AVX512F__)
#define KEEP(v) __asm__("" : "+v"(v))
#else
#define KEEP(v) __asm__("" : "+m"(v))
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define INT_PATH 1 /* prefixkv_int8_path: AVX512-VNNI */
/* Quad pair p of rows xq[0 .. R): bytes 8p .. 8p+3 of each row in every 4-byte lane of
 * bl[r], bytes 8p+4 .. 8p+7 in bh[r] (a low-nibble and a high-nibble step's activations;
 * linear_int8_k.h's K-quant groups use it too). */
static inline __attribute__((always_inline)) void broadcast_pair(const int8_t *const *xq, int R,
                                                                 int p, __m512i bl[],
                                                                 __m512i bh[]) {
    for (int r = 0; r < R; r++) {
        int32_t four[2];
        memcpy(four, xq[r] + 8 * p, 8);
        bl[r] = _mm512_set1_epi32(four[0]);
        bh[r] = _mm512_set1_epi32(four[1]);
    }
}
/* isum[r][j] (16 columns j a vector) of the group's quants u against rows xq[r], R rows. */
static inline __attribute__((always_inline)) void dot_group(int nibbles, const uint8_t *u,
                                                            const int8_t *const *xq, int R,
                                                            vi isum[][VECTORS]) {
    __m512i acc[INT_ROWS][VECTORS];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < VECTORS; j++) acc[r][j] = _mm512_setzero_si512();
    if (!nibbles) {
        for (int t = 0; t < GROUP / 4; t++) {
            __m512i bx[INT_ROWS];
            for (int r = 0; r < R; r++) {
                int32_t four;
                memcpy(&four, xq[r] + 4 * t, 4);
                bx[r] = _mm512_set1_epi32(four);
            }
            for (int j = 0; j < VECTORS; j++) {
                __m512i wv = _mm512_loadu_si512(u + (t * BLOCK + j * WIDTH) * 4);
                for (int r = 0; r < R; r++) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], wv, bx[r]);
            }
        }
    } else {
        const __m512i low = _mm512_set1_epi8(15);
        for (int p = 0; p < GROUP / 8; p++) {
            __m512i bl[INT_ROWS], bh[INT_ROWS];
            broadcast_pair(xq, R, p, bl, bh);
            for (int j = 0; j < VECTORS; j++) {
                __m512i wv = _mm512_loadu_si512(u + (p * BLOCK + j * WIDTH) * 4);
                __m512i lo = _mm512_and_si512(wv, low);
                __m512i hi = _mm512_and_si512(_mm512_srli_epi16(wv, 4), low);
                for (int r = 0; r < R; r++) {
                    acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], lo, bl[r]);
                    acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], hi, bh[r]);
                }
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < VECTORS; j++) isum[r][j] = (vi)acc[r][j];
}
#elif defined(__AVX2__)
#define INT_PATH 2 /* prefixkv_int8_path: AVX2 */
/* Per 32-bit lane, the sum of its 4 products u * x (u <= 15: vpmaddubsw's 16-bit pair sums,
 * at most 15 * 127 * 2, never saturate). */
static inline __attribute__((always_inline)) __m256i dot4(__m256i u, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
}

/* As the VNNI path, 8 columns (half a vector, h) at a time; q8_0's bytes split into nibbles
 * (u = 16 hi + lo) so that no 16-bit sum saturates. */
static inline __attribute__((always_inline)) void dot_group(int nibbles, const uint8_t *u,
                                                            const int8_t *const *xq, int R,
                                                            vi isum[][VECTORS]) {
    const __m256i low = _mm256_set1_epi8(15);
    for (int h = 0; h < 2 * VECTORS; h++) {
        for (int r = 0; r < R; r++) {
            __m256i acc = _mm256_setzero_si256();
            for (int t = 0; t < GROUP / 4; t += 1 + nibbles) { /* 4-bit: a quad pair a row */
                __m256i v = _mm256_loadu_si256((const __m256i *)(u + (t >> nibbles) * BLOCK * 4 + h * 32));
                __m256i lo = _mm256_and_si256(v, low);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                int32_t four[2];
                memcpy(four, xq[r] + 4 * t, 4 + 4 * nibbles);
                __m256i bl = _mm256_set1_epi32(four[0]);
                if (nibbles) { /* two products of at most 15 * 127 * 2 each: no saturation */
                    __m256i bh = _mm256_set1_epi32(four[1]);
                    __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, bl),
                                                     _mm256_maddubs_epi16(hi, bh));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
                } else {
                    acc = _mm256_add_epi32(acc, dot4(lo, bl));
                    acc = _mm256_add_epi32(acc, _mm256_slli_epi32(dot4(hi, bl), 4));
                }
            }
            memcpy((int32_t *)&isum[r][h / 2] + (h % 2) * 8, &acc, sizeof(acc));
        }
    }
}
#else
#define INT_PATH 0 /* prefixkv_int8_path: generic C */
/* The generic path: the same sums, value by value. */
static inline __attribute__((always_inline)) void dot_group(int nibbles, const uint8_t *u,
                                                            const int8_t *const *xq, int R,
                                                            vi isum[][VECTORS]) {
    for (int r = 0; r < R; r++) {
        int32_t s[BLOCK] = {0};
        for (int k = 0; k < GROUP; k++) {
            int32_t x = xq[r][k];
            for (int c = 0; c < BLOCK; c++) {
                int32_t w;
                if (!nibbles)
                    w = u[((k / 4) * BLOCK + c) * 4 + k % 4];
                else {
                    uint8_t byte = u[((k / 8) * BLOCK + c) * 4 + k % 4];
                    w = k % 8 < 4 ? byte & 15 : byte >> 4;
                }
                s[c] += w * x;
            }
        }
        memcpy(isum[r], s, sizeof(s));
    }
}
#endif

/* Rows [r0, r0 + R) of one tile: adds group g's terms to acc (see the opening comment). */
static inline __attribute__((always_inline)) void int_tile(int format, const uint8_t *span,
                                                           const struct qacts *a, int64_t r0,
                                                           int R, int64_t g,
                                                           vf acc[][VECTORS]) {
    int f = format - INT_FIRST, heads = format == Q4_1_Q8 ? 2 : 1;
    const int8_t *xq[INT_ROWS];
    for (int r = 0; r < R; r++) xq[r] = a->q + (r0 + r) * a->k_dim + g * GROUP;
    vi isum[INT_ROWS][VECTORS];
    dot_group(format != Q8_0_Q8, span + heads * HALVES, xq, R, isum);
    for (int r = 0; r < R; r++) {
        int64_t at = (r0 + r) * a->groups + g;
        float dx = a->d[at];
        int32_t offset_sum = INT_OFFSET[f] * a->sum[at];
        for (int j = 0; j < VECTORS; j++) {
            vf scale = from_f16(span + 2 * WIDTH * j) * dx;
            KEEP(scale);
            vf term = __builtin_convertvector(isum[r][j] - offset_sum, vf) * scale;
            KEEP(term);
            acc[r][j] += term;
            if (format == Q4_1_Q8) {
                float shift = dx * (float)a->sum[at];
                KEEP(shift);
                vf mins = from_f16(span + HALVES + 2 * WIDTH * j) * shift;
                KEEP(mins);
                acc[r][j] += mins;
            }
        }
    }
}

/* Rows [r0, r1) (at most INT_CHUNK) against one column block w, into out with the bias. */
static void int_block(int format, const uint8_t *w, const struct qacts *a, int64_t r0,
                      int64_t r1, const float *bias, int columns, float *out, int64_t n_dim) {
    vf acc[INT_CHUNK][VECTORS];
    int64_t bytes = INT_GROUP_BYTES[format - INT_FIRST];
    memset(acc, 0, (size_t)(r1 - r0) * sizeof(acc[0]));
    for (int64_t g = 0; g < a->groups; g++) {
        const uint8_t *span = w + g * bytes;
        for (int64_t line = 0; line < bytes; line += LINE)
            __builtin_prefetch(span + INT_AHEAD * bytes + line, 0, 2);
        for (int64_t r = r0; r < r1; r += INT_ROWS) {
            vf(*tile)[VECTORS] = acc + (r - r0);
            switch (r1 - r < INT_ROWS ? (int)(r1 - r) : INT_ROWS) {
            case 4: int_tile(format, span, a, r, 4, g, tile); break;
            case 3: int_tile(format, span, a, r, 3, g, tile); break;
            case 2: int_tile(format, span, a, r, 2, g, tile); break;
            default: int_tile(format, span, a, r, 1, g, tile); break;
            }
        }
    }
    store_block(acc, r0, r1, bias, columns, out, n_dim);
}

#include "linear_int8_k.h"

/* Which path forms the integer sums in this build: 0 generic C, 1 AVX512-VNNI, 2 AVX2. */
int prefixkv_int8_path(void) { return INT_PATH; }

/* prefixkv_linear for the integer formats (the door has checked sizes): quantizes every row,
 * then runs the column blocks in parallel. PREFIXKV_NO_MEMORY when the activations' buffer
 * cannot be allocated. */
static int linear_int8(const float *x, int64_t rows, int64_t k_dim, int format,
                       const uint8_t *packed, const float *bias, int64_t n_dim, float *out,
                       int threads) {
    int64_t groups = k_dim / GROUP, blocks = (n_dim + BLOCK - 1) / BLOCK;
    int kquant = format >= KINT_FIRST;
    int64_t bytes = kquant ? k_dim / SUPER * KINT_SUPER_BYTES[format - KINT_FIRST]
                           : groups * INT_GROUP_BYTES[format - INT_FIRST];
    size_t ints = (size_t)(rows * groups + 1) * 4;
    struct qacts a = {malloc((size_t)(rows * k_dim) + 1), malloc(ints), malloc(ints),
                      malloc(ints), k_dim, groups};
    int status = PREFIXKV_NO_MEMORY;
    if (a.q && a.d && a.sum && a.half) {
        #pragma omp parallel num_threads(threads)
        {
            #pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; r++)
                quantize_row(x + r * k_dim, k_dim, a.q + r * k_dim, a.d + r * groups,
                             a.sum + r * groups, a.half + r * groups);
            #pragma omp for schedule(static)
            for (int64_t b = 0; b < blocks; b++) {
                int columns = n_dim - b * BLOCK < BLOCK ? (int)(n_dim - b * BLOCK) : BLOCK;
                for (int64_t r0 = 0; r0 < rows; r0 += INT_CHUNK) {
                    int64_t r1 = r0 + INT_CHUNK < rows ? r0 + INT_CHUNK : rows;
                    const float *b_bias = bias ? bias + b * BLOCK : NULL;
                    if (kquant)
                        kint_block(format, packed + b * bytes, &a, r0, r1, b_bias, columns,
                                   out + b * BLOCK, n_dim);
                    else
                        int_block(format, packed + b * bytes, &a, r0, r1, b_bias, columns,
                                  out + b * BLOCK, n_dim);
                }
            }
        }
        status = PREFIXKV_OK;
    }
    free(a.q);
    free(a.d);
    free(a.sum);
    free(a.half);
    return status;
}

#undef KEEP
#endif
