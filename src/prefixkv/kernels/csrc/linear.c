/* A linear layer, y = x W^T + b, for prefixkv's ``native`` linear kernel
 * (prefixkv/engine/native_linear.py), on weights stored at the precision they ship in.
 *
 * The weight is packed once (prefixkv/kernels/formats.py) into column blocks: block j holds
 * output columns [64 j, 64 j + 64), zero weights past out_features. A call runs the blocks
 * in parallel. Per block, in one of eight formats (K = in_features; the quantized ones need
 * K % 32 == 0 and store each group of 32 k's one after the other; the K-quants q4_k, q5_k,
 * q6_k need K % 256 == 0 and are laid out in linear_kquants.h):
 *   f32:  float    w[K][64]
 *   bf16: uint16   w[K][64]                  (bf16 bits: w = bits << 16)
 *   q8_0: per group: fp16 d[64]; int8 q[32][64]                  w = d * q        (2176 B)
 *   q4_0: per group: fp16 d[64]; uint8 q[32][32]                 w = d * (q - 8)  (1152 B)
 *   q4_1: per group: fp16 d[64]; fp16 m[64]; uint8 q[32][32]     w = d * q + m    (1280 B)
 * In the 4-bit formats byte c of a k's 32 holds column c in its low nibble and column
 * c + 32 in its high one. A group's bytes are the file's (34, 18 or 20 a column), reordered:
 * its fp16 scales (and mins) stay fp16 and are widened in registers once per group (a
 * widening is exact). Every dequantized weight is exact in fp32 (d is an fp16 value and q a
 * small integer, so d * q is exact and d * q + m rounds once, fused or not).
 *
 * Within a block, tiles of up to ROWS input rows keep ROWS x 64 sums in registers over a
 * pass of k; each k step dequantizes its 64 weights in registers, then adds w * x to every
 * row's sums. With few rows (decode steps) the weights' stream from memory is what limits
 * a call, so k is cut into chunks that every tile of the block runs in turn (the tile's sums
 * wait in a small buffer meanwhile), while the next chunk is prefetched: the stream then
 * overlaps all the tiles' arithmetic instead of only the first tile's.
 *
 * Every output is one multiply-add chain over k = 0 .. K - 1 in order, then the bias, with
 * the same weight values whatever the format stores them as: a row's result does not depend
 * on how many rows the call has, which tile holds it or how k is chunked, and a quantized
 * weight gives bit for bit what the f32 kernel gives on its dequantized values. So a token's
 * activations come out the same whether it is prefilled in a long chunk, decoded alone or
 * batched with others (the property prefix caching's exactness rests on).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "abi.h"
#include "kernels.h" /* prefixkv_linear's declaration, as decoder.c calls it */

#define WIDTH 16                  /* floats per vector */
#define VECTORS 4                 /* vectors per column block */
#define BLOCK (WIDTH * VECTORS)   /* output columns per block */
#define ROWS 6                    /* input rows per tile: 24 vector sums in registers */
#define FEW_ROWS 48               /* up to this many rows a call runs k chunk by chunk */
#define STAGE_ROWS 18             /* past this many rows a block dequantizes into a buffer */
#define CHUNK 64                  /* k steps per chunk: a multiple of GROUP */
#define GROUP 32                  /* k steps per quantized group */
#define LINE 64                   /* bytes per cache line */

/* Loads at any alignment (a weight view may start anywhere); the same instructions as
 * aligned ones on data that happens to be aligned. */
typedef float vf __attribute__((vector_size(WIDTH * 4), aligned(4)));
typedef uint16_t vh __attribute__((vector_size(WIDTH * 2), aligned(2)));
typedef int8_t vi8 __attribute__((vector_size(WIDTH), aligned(1)));
typedef uint8_t vu8 __attribute__((vector_size(WIDTH), aligned(1)));
typedef int32_t vi __attribute__((vector_size(WIDTH * 4)));
typedef uint32_t vu __attribute__((vector_size(WIDTH * 4)));

enum format {
    F32 = 0, BF16 = 1, Q8_0 = 2, Q4_0 = 3, Q4_1 = 4, Q4_K = 5, Q5_K = 6, Q6_K = 7,
    Q8_0_Q8 = 8, Q4_0_Q8 = 9, Q4_1_Q8 = 10, /* integer dots on 8-bit activations: linear_int8.h */
    Q4_K_Q8 = 11, Q5_K_Q8 = 12, Q6_K_Q8 = 13 /* the K-quants' own: linear_int8_k.h */
};

/* Bytes of a block's stream per k step. */
#define STEP_F32 (BLOCK * 4)
#define STEP_BF16 (BLOCK * 2)
/* Bytes of one group of GROUP k steps of a block: fp16 header(s), then q. */
#define GROUP_Q8_0 (BLOCK * 2 + GROUP * BLOCK)
#define GROUP_Q4_0 (BLOCK * 2 + GROUP * BLOCK / 2)
#define GROUP_Q4_1 (BLOCK * 4 + GROUP * BLOCK / 2)

#include "linear_widen.h"

/* The 64 weights of step k of block w, by format. */
static inline __attribute__((always_inline)) void load_f32(const uint8_t *w, int64_t k,
                                                           vf out[VECTORS]) {
    const vf *wk = (const vf *)(w + k * STEP_F32);
    for (int j = 0; j < VECTORS; j++) out[j] = wk[j];
}

static inline __attribute__((always_inline)) void load_bf16(const uint8_t *w, int64_t k,
                                                            vf out[VECTORS]) {
    const uint8_t *wk = w + k * STEP_BF16;
    for (int j = 0; j < VECTORS; j++) out[j] = from_bf16(wk + j * WIDTH * 2);
}

/* One sub-block's scales, widened once for its k steps: w = a * q - b (q4_k, q5_k), a * q +
 * b (q4_1), a * q (q8_0), a * (q - 8) (q4_0) or a * (q - 32) (q6_k). */
struct kscales {
    vf a[VECTORS], b[VECTORS];
};

/* The 64 4-bit values of a step, as floats in column order: byte c holds columns c, c + 32. */
static inline __attribute__((always_inline)) void nibbles(const uint8_t *bytes,
                                                          vf out[VECTORS]) {
    for (int j = 0; j < 2; j++) from_u4(bytes + j * WIDTH, &out[j], &out[j + 2]);
}

#include "linear_legacy.h"
#include "linear_kquants.h"

/* One tile, k in [k0, k1): rows x[0 .. rows) (row stride k_dim) against one column block,
 * adding to sums[0 .. rows). Every cache line of the weights is prefetched one chunk of the
 * format's stream ahead into the core's L2 (STEP bytes a k step, so every line is reached
 * when STEP is a multiple of LINE or under it): with one prefetch per k step (a line in
 * four, f32) left to the hardware prefetchers, one row's pass over 30 layers took 20-22 ms
 * instead of 16-17; into L1, the next chunk evicted the current one. */
#define PASS(R, LOAD, STEP)                                                   \
    vf sum[R][VECTORS];                                                       \
    for (int r = 0; r < (R); r++)                                             \
        for (int j = 0; j < VECTORS; j++) sum[r][j] = sums[r][j];            \
    for (int64_t k = k0; k < k1; k++) {                                       \
        const uint8_t *ahead = w + k * (STEP) + CHUNK * (STEP);               \
        for (int line = 0; line < ((STEP) + LINE - 1) / LINE; line++)         \
            __builtin_prefetch(ahead + line * LINE, 0, 2);                    \
        vf wk[VECTORS];                                                       \
        LOAD(w, k, wk);                                                       \
        for (int r = 0; r < (R); r++) {                                       \
            float xk = x[r * k_dim + k];                                      \
            for (int j = 0; j < VECTORS; j++) sum[r][j] += wk[j] * xk;        \
        }                                                                     \
    }                                                                         \
    for (int r = 0; r < (R); r++)                                             \
        for (int j = 0; j < VECTORS; j++) sums[r][j] = sum[r][j];

/* A chunk's weights, k in [k0, k1), dequantized into buf[k - k0] (prefetching as PASS). */
#define DEQUANT(LOAD, STEP)                                                   \
    for (int64_t k = k0; k < k1; k++) {                                       \
        const uint8_t *ahead = w + k * (STEP) + CHUNK * (STEP);               \
        for (int line = 0; line < ((STEP) + LINE - 1) / LINE; line++)         \
            __builtin_prefetch(ahead + line * LINE, 0, 2);                    \
        LOAD(w, k, buf[k - k0]);                                              \
    }

#define DEFINE_FORMAT(NAME, LOAD, STEP)                                                    \
    static void pass_##NAME(const uint8_t *w, const float *x, int64_t k_dim, int64_t k0,  \
                            int64_t k1, int rows, vf sums[][VECTORS]) {                   \
        switch (rows) { /* a constant row count per case: the sums stay in registers */  \
        case 6: { PASS(6, LOAD, STEP) } break;                                            \
        case 5: { PASS(5, LOAD, STEP) } break;                                            \
        case 4: { PASS(4, LOAD, STEP) } break;                                            \
        case 3: { PASS(3, LOAD, STEP) } break;                                            \
        case 2: { PASS(2, LOAD, STEP) } break;                                            \
        default: { PASS(1, LOAD, STEP) } break;                                           \
        }                                                                                 \
    }                                                                                     \
    static void dequant_##NAME(const uint8_t *w, int64_t k0, int64_t k1,                  \
                               vf buf[][VECTORS]) {                                       \
        DEQUANT(LOAD, STEP)                                                               \
    }

/* PASS and DEQUANT for a format stored in spans of SPAN k steps of BYTES bytes each (a
 * K-quant's super-block of 256, a legacy quant's group of 32): each sub-block's scales are
 * widened and formed once (HEAD), then its SUB steps decoded (LOAD). k0 and k1 are multiples
 * of SUB (K % SPAN == 0, CHUNK % 32 == 0). One prefetch a step a chunk ahead reaches every
 * line where a step averages at most LINE bytes (every K-quant, q4_0, q4_1); q8_0's 68
 * bytes a step take two. */
#define PREFETCH_SPAN(k, SPAN, BYTES)                                         \
    for (int line = 0; line < ((BYTES) / (SPAN) + LINE - 1) / LINE; line++)   \
        __builtin_prefetch(w + ((k) + CHUNK) * (BYTES) / (SPAN) + line * LINE, 0, 2);

#define PASS_GROUPED(R, HEAD, LOAD, SPAN, SUB, BYTES)                         \
    vf sum[R][VECTORS];                                                       \
    for (int r = 0; r < (R); r++)                                             \
        for (int j = 0; j < VECTORS; j++) sum[r][j] = sums[r][j];            \
    for (int64_t g = k0; g < k1; g += (SUB)) {                                \
        const uint8_t *span = w + g / (SPAN) * (BYTES);                       \
        int i0 = (int)(g % (SPAN));                                           \
        struct kscales scales;                                                \
        HEAD(span, i0, &scales);                                              \
        for (int i = i0; i < i0 + (SUB); i++) {                               \
            int64_t k = g + (i - i0);                                         \
            PREFETCH_SPAN(k, SPAN, BYTES)                                     \
            vf wk[VECTORS];                                                   \
            LOAD(span, i, &scales, wk);                                       \
            for (int r = 0; r < (R); r++) {                                   \
                float xk = x[r * k_dim + k];                                  \
                for (int j = 0; j < VECTORS; j++) sum[r][j] += wk[j] * xk;    \
            }                                                                 \
        }                                                                     \
    }                                                                         \
    for (int r = 0; r < (R); r++)                                             \
        for (int j = 0; j < VECTORS; j++) sums[r][j] = sum[r][j];

#define DEQUANT_GROUPED(HEAD, LOAD, SPAN, SUB, BYTES)                         \
    for (int64_t g = k0; g < k1; g += (SUB)) {                                \
        const uint8_t *span = w + g / (SPAN) * (BYTES);                       \
        int i0 = (int)(g % (SPAN));                                           \
        struct kscales scales;                                                \
        HEAD(span, i0, &scales);                                              \
        for (int i = i0; i < i0 + (SUB); i++) {                               \
            int64_t k = g + (i - i0);                                         \
            PREFETCH_SPAN(k, SPAN, BYTES)                                     \
            LOAD(span, i, &scales, buf[k - k0]);                              \
        }                                                                     \
    }

#define DEFINE_GROUPED(NAME, SPAN, SUB, BYTES)                                             \
    static void pass_##NAME(const uint8_t *w, const float *x, int64_t k_dim, int64_t k0,  \
                            int64_t k1, int rows, vf sums[][VECTORS]) {                   \
        switch (rows) {                                                                   \
        case 6: { PASS_GROUPED(6, head_##NAME, load_##NAME, SPAN, SUB, BYTES) } break;    \
        case 5: { PASS_GROUPED(5, head_##NAME, load_##NAME, SPAN, SUB, BYTES) } break;    \
        case 4: { PASS_GROUPED(4, head_##NAME, load_##NAME, SPAN, SUB, BYTES) } break;    \
        case 3: { PASS_GROUPED(3, head_##NAME, load_##NAME, SPAN, SUB, BYTES) } break;    \
        case 2: { PASS_GROUPED(2, head_##NAME, load_##NAME, SPAN, SUB, BYTES) } break;    \
        default: { PASS_GROUPED(1, head_##NAME, load_##NAME, SPAN, SUB, BYTES) } break;   \
        }                                                                                 \
    }                                                                                     \
    static void dequant_##NAME(const uint8_t *w, int64_t k0, int64_t k1,                  \
                               vf buf[][VECTORS]) {                                       \
        DEQUANT_GROUPED(head_##NAME, load_##NAME, SPAN, SUB, BYTES)                       \
    }

DEFINE_FORMAT(f32, load_f32, STEP_F32)
DEFINE_FORMAT(bf16, load_bf16, STEP_BF16)
DEFINE_GROUPED(q8_0, GROUP, GROUP, GROUP_Q8_0)
DEFINE_GROUPED(q4_0, GROUP, GROUP, GROUP_Q4_0)
DEFINE_GROUPED(q4_1, GROUP, GROUP, GROUP_Q4_1)
DEFINE_GROUPED(q4_k, SUPER, SUB_Q4_K, SUPER_Q4_K)
DEFINE_GROUPED(q5_k, SUPER, SUB_Q4_K, SUPER_Q5_K)
DEFINE_GROUPED(q6_k, SUPER, SUB_Q6_K, SUPER_Q6_K)
#undef DEFINE_GROUPED
#undef DEQUANT_GROUPED
#undef PASS_GROUPED
#undef PREFETCH_SPAN
#undef DEFINE_FORMAT
#undef DEQUANT
#undef PASS

struct format_ops {
    void (*pass)(const uint8_t *, const float *, int64_t, int64_t, int64_t, int, vf[][VECTORS]);
    void (*dequant)(const uint8_t *, int64_t, int64_t, vf[][VECTORS]);
};
static const struct format_ops FORMATS[] = {
    {pass_f32, dequant_f32},   {pass_bf16, dequant_bf16}, {pass_q8_0, dequant_q8_0},
    {pass_q4_0, dequant_q4_0}, {pass_q4_1, dequant_q4_1}, {pass_q4_k, dequant_q4_k},
    {pass_q5_k, dequant_q5_k}, {pass_q6_k, dequant_q6_k},
};

/* Rows [r0, r1) of one column block's sums (sums[r - r0]: BLOCK floats, the first columns
 * kept) into out, each plus its bias after the whole sum: the last step of every format's
 * fixed summation order. */
static void store_block(vf (*sums)[VECTORS], int64_t r0, int64_t r1, const float *bias,
                        int columns, float *out, int64_t n_dim) {
    for (int64_t r = r0; r < r1; r++) {
        float row[BLOCK];
        memcpy(row, sums[r - r0], sizeof(row));
        if (bias)
            for (int c = 0; c < columns; c++) row[c] += bias[c];
        memcpy(out + r * n_dim, row, (size_t)columns * sizeof(float));
    }
}

#include "linear_int8.h"

/* One column block for rows [r0, r1) of x, adding the bias and writing out (row stride n_dim).
 * Past STAGE_ROWS rows (four tiles), a format other than f32 dequantizes each chunk once
 * into a 16 KB buffer that every tile then reads as f32 (at 512 rows, dequantizing in each
 * tile's registers cost up to a quarter more time than f32, staged chunks about a tenth; at
 * 16 rows neither was clearly ahead, within 5% on one thread). Fewer rows dequantize in
 * registers. The weights, and so every sum, are the same either way. */
static void block(int format, const uint8_t *w, const float *x, int64_t r0, int64_t r1,
                  int64_t k_dim, int64_t chunk, const float *bias, int columns, float *out,
                  int64_t n_dim) {
    vf sum[FEW_ROWS > ROWS ? FEW_ROWS : ROWS][VECTORS]; /* [r1 - r0][VECTORS] used */
    vf buf[CHUNK][VECTORS];                             /* [k1 - k0][VECTORS] when staged */
    int staged = format != F32 && r1 - r0 > STAGE_ROWS;
    memset(sum, 0, (size_t)(r1 - r0) * sizeof(sum[0]));
    for (int64_t k0 = 0; k0 < k_dim; k0 += chunk) {
        int64_t k1 = k0 + chunk < k_dim ? k0 + chunk : k_dim;
        if (staged)
            FORMATS[format].dequant(w, k0, k1, buf);
        for (int64_t r = r0; r < r1; r += ROWS) {
            int rows = r1 - r < ROWS ? (int)(r1 - r) : ROWS;
            if (staged)
                pass_f32((const uint8_t *)buf, x + r * k_dim + k0, k_dim, 0, k1 - k0, rows,
                         sum + (r - r0));
            else
                FORMATS[format].pass(w, x + r * k_dim, k_dim, k0, k1, rows, sum + (r - r0));
        }
    }
    store_block(sum, r0, r1, bias, columns, out, n_dim);
}

int prefixkv_linear_block(void) { return BLOCK; }

/* Bytes of one column block of a weight of k_dim input features in format; -1 for an unknown
 * format, a quantized one with k_dim not a multiple of GROUP, or a K-quant with k_dim not a
 * multiple of SUPER. */
int64_t prefixkv_linear_block_bytes(int format, int64_t k_dim) {
    static const int64_t step[] = {STEP_F32, STEP_BF16};
    static const int64_t group[] = {GROUP_Q8_0, GROUP_Q4_0, GROUP_Q4_1};
    static const int64_t super[] = {SUPER_Q4_K, SUPER_Q5_K, SUPER_Q6_K};
    if (format < F32 || format > Q6_K_Q8 || k_dim < 0)
        return -1;
    if (format >= INT_FIRST) /* the same bytes as the format they reorder */
        format -= INT_FIRST - Q8_0;
    if (format >= Q4_K)
        return k_dim % SUPER ? -1 : k_dim / SUPER * super[format - Q4_K];
    if (format >= Q8_0)
        return k_dim % GROUP ? -1 : k_dim / GROUP * group[format - Q8_0];
    return k_dim * step[format];
}

/* Rows [0, rows) against block b, whose weights are w in format (see block). */
static void rows_of_block(int format, const uint8_t *w, const float *x, int64_t rows,
                          int64_t k_dim, int64_t chunk, int64_t group, const float *bias,
                          int64_t b, float *out, int64_t n_dim) {
    int columns = n_dim - b * BLOCK < BLOCK ? (int)(n_dim - b * BLOCK) : BLOCK;
    for (int64_t r0 = 0; r0 < rows; r0 += group) {
        int64_t r1 = r0 + group < rows ? r0 + group : rows;
        block(format, w, x, r0, r1, k_dim, chunk, bias ? bias + b * BLOCK : NULL, columns,
              out + b * BLOCK, n_dim);
    }
}

/* x: [rows, k_dim] contiguous; packed: ceil(n_dim / BLOCK) blocks of
 * prefixkv_linear_block_bytes(format, k_dim) bytes (layouts above); bias: [n_dim] or NULL;
 * out: [rows, n_dim] contiguous. The door has checked the format and the sizes.
 * Returns PREFIXKV_OK, or PREFIXKV_NO_MEMORY (out incomplete) when a thread's staging buffer
 * could not be allocated. */
int prefixkv_linear(const float *x, int64_t rows, int64_t k_dim, int format,
                    const void *packed, const float *bias, int64_t n_dim, float *out,
                    int threads) {
    int64_t blocks = (n_dim + BLOCK - 1) / BLOCK, bytes = prefixkv_linear_block_bytes(format, k_dim);
    /* Many rows: the arithmetic limits a call, and a tile at a time over the whole of k (the
     * block's weights in the core's cache for the next tile) is faster. Another format than
     * f32 first dequantizes the whole block into a thread's buffer (k_dim x 256 bytes) and
     * runs the f32 pass on it: chunk by chunk, staged, it ran 0.85-0.92x f32 at 64-512 rows.
     * Few rows: chunks of k (see block). */
    if (format >= INT_FIRST)
        return linear_int8(x, rows, k_dim, format, packed, bias, n_dim, out, threads);
    int whole = rows > FEW_ROWS, staged = whole && format != F32, failed = 0;
    int64_t chunk = whole ? k_dim : CHUNK, group = whole ? ROWS : FEW_ROWS;
    #pragma omp parallel num_threads(threads)
    {
        vf(*stage)[VECTORS] = staged ? malloc((size_t)k_dim * sizeof(*stage)) : NULL;
        if (staged && !stage) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; b++) {
            const uint8_t *w = (const uint8_t *)packed + b * bytes;
            if (!staged)
                rows_of_block(format, w, x, rows, k_dim, chunk, group, bias, b, out, n_dim);
            else if (stage) {
                FORMATS[format].dequant(w, 0, k_dim, stage);
                rows_of_block(F32, (const uint8_t *)stage, x, rows, k_dim, chunk, group, bias,
                              b, out, n_dim);
            }
        }
        free(stage);
    }
    return failed ? PREFIXKV_NO_MEMORY : PREFIXKV_OK;
}
