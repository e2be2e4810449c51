/* A linear layer, y = x W^T + b, for prefixkv's ``native`` linear kernel
 * (prefixkv/engine/native_linear.py).
 *
 * The weight is packed once into column blocks: block j holds output columns
 * [64 j, 64 j + 64) as [in_features][64], zero past out_features. A call runs the blocks in
 * parallel. Within a block, tiles of up to ROWS input rows keep ROWS x 64 sums in registers
 * over a pass of k. With few rows (decode steps) the weights' stream from memory is what
 * limits a call, so k is cut into chunks that every tile of the block runs in turn (the
 * tile's sums wait in a small buffer meanwhile), while the next chunk is prefetched: the
 * stream then overlaps all the tiles' arithmetic instead of only the first tile's.
 *
 * Every output is one multiply-add chain over k = 0 .. in_features - 1 in order, then the
 * bias: a row's result does not depend on how many rows the call has, which tile holds it or
 * how k is chunked (a sum leaves the registers and comes back unchanged). So a token's
 * activations come out the same whether it is prefilled in a long chunk, decoded alone or
 * batched with others (the property prefix caching's exactness rests on).
 */
#include <stdint.h>
#include <string.h>

#define WIDTH 16                  /* floats per vector */
#define VECTORS 4                 /* vectors per column block */
#define BLOCK (WIDTH * VECTORS)   /* output columns per block */
#define ROWS 6                    /* input rows per tile: 24 vector sums in registers */
#define FEW_ROWS 48               /* up to this many rows a call runs k chunk by chunk */
#define CHUNK 64                  /* k steps per chunk: 16 KB of a block's weights */
#define AHEAD (CHUNK * BLOCK * 4) /* bytes of weights prefetched ahead: one chunk */
typedef float vf __attribute__((vector_size(WIDTH * 4)));

/* One tile, k in [k0, k1): rows x[0 .. rows) (row stride k_dim) against one column block,
 * adding to sums[0 .. rows). Every cache line of the weights is prefetched AHEAD bytes ahead
 * into the core's L2: with one prefetch per k step (a line in four) left to the hardware
 * prefetchers, one row's pass over 30 layers took 20-22 ms instead of 16-17; into L1, the
 * next chunk evicted the current one. */
static void pass(const vf *w, const float *x, int64_t k_dim, int64_t k0, int64_t k1, int rows,
                 vf sums[][VECTORS]) {
#define PASS(R)                                                               \
    vf sum[R][VECTORS];                                                       \
    for (int r = 0; r < (R); r++)                                             \
        for (int j = 0; j < VECTORS; j++) sum[r][j] = sums[r][j];            \
    for (int64_t k = k0; k < k1; k++) {                                       \
        const vf *wk = w + k * VECTORS;                                       \
        for (int j = 0; j < VECTORS; j++)                                     \
            __builtin_prefetch((const char *)(wk + j) + AHEAD, 0, 2);         \
        for (int r = 0; r < (R); r++) {                                       \
            float xk = x[r * k_dim + k];                                      \
            for (int j = 0; j < VECTORS; j++) sum[r][j] += wk[j] * xk;        \
        }                                                                     \
    }                                                                         \
    for (int r = 0; r < (R); r++)                                             \
        for (int j = 0; j < VECTORS; j++) sums[r][j] = sum[r][j];
    switch (rows) { /* a constant row count per case: the sums stay in registers */
    case 6: { PASS(6) } break;
    case 5: { PASS(5) } break;
    case 4: { PASS(4) } break;
    case 3: { PASS(3) } break;
    case 2: { PASS(2) } break;
    default: { PASS(1) } break;
    }
#undef PASS
}

/* One column block for rows [r0, r1) of x, adding the bias and writing out (row stride n_dim). */
static void block(const vf *w, const float *x, int64_t r0, int64_t r1, int64_t k_dim,
                  int64_t chunk, const float *bias, int columns, float *out, int64_t n_dim) {
    vf sum[FEW_ROWS > ROWS ? FEW_ROWS : ROWS][VECTORS]; /* [r1 - r0][VECTORS] used */
    memset(sum, 0, (size_t)(r1 - r0) * sizeof(sum[0]));
    for (int64_t k0 = 0; k0 < k_dim; k0 += chunk) {
        int64_t k1 = k0 + chunk < k_dim ? k0 + chunk : k_dim;
        for (int64_t r = r0; r < r1; r += ROWS) {
            int rows = r1 - r < ROWS ? (int)(r1 - r) : ROWS;
            pass(w, x + r * k_dim, k_dim, k0, k1, rows, sum + (r - r0));
        }
    }
    for (int64_t r = r0; r < r1; r++) {
        float row[BLOCK];
        memcpy(row, sum[r - r0], sizeof(row));
        if (bias)
            for (int c = 0; c < columns; c++) row[c] += bias[c];
        memcpy(out + r * n_dim, row, (size_t)columns * sizeof(float));
    }
}

int prefixkv_linear_block(void) { return BLOCK; }

/* x: [rows, k_dim] contiguous; packed: ceil(n_dim / BLOCK) blocks of [k_dim][BLOCK];
 * bias: [n_dim] or NULL; out: [rows, n_dim] contiguous. */
void prefixkv_linear(const float *x, int64_t rows, int64_t k_dim, const float *packed,
                     const float *bias, int64_t n_dim, float *out, int threads) {
    int64_t blocks = (n_dim + BLOCK - 1) / BLOCK;
    /* Many rows: the arithmetic limits a call, and a tile at a time over the whole of k
     * (the block's weights in the core's cache for the next tile) is faster. */
    int64_t chunk = rows <= FEW_ROWS ? CHUNK : k_dim, group = rows <= FEW_ROWS ? FEW_ROWS : ROWS;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const vf *w = (const vf *)(packed + b * k_dim * BLOCK);
        int columns = n_dim - b * BLOCK < BLOCK ? (int)(n_dim - b * BLOCK) : BLOCK;
        for (int64_t r0 = 0; r0 < rows; r0 += group) {
            int64_t r1 = r0 + group < rows ? r0 + group : rows;
            block(w, x, r0, r1, k_dim, chunk, bias ? bias + b * BLOCK : NULL, columns,
                  out + b * BLOCK, n_dim);
        }
    }
}
