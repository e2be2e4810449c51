/* A linear layer, y = x W^T + b, for prefixkv's ``native`` linear kernel (engine/linear.py).
 *
 * The weight is packed once into column blocks: block j holds output columns
 * [64 j, 64 j + 64) as [in_features][64], zero past out_features. A call runs the blocks in
 * parallel; within a block, tiles of up to ROWS input rows keep ROWS x 64 sums in registers
 * while one pass over k reads the block's weights (from memory for the first tile, from the
 * core's cache for the next).
 *
 * Every output is one multiply-add chain over k = 0 .. in_features - 1 in order, then the
 * bias: a row's result does not depend on how many rows the call has or which tile holds it.
 * So a token's activations come out the same whether it is prefilled in a long chunk,
 * decoded alone or batched with others (the property prefix caching's exactness rests on).
 */
#include <stdint.h>
#include <string.h>

#define WIDTH 16                  /* floats per vector */
#define VECTORS 4                 /* vectors per column block */
#define BLOCK (WIDTH * VECTORS)   /* output columns per block */
#define ROWS 6                    /* input rows per tile: 24 vector sums in registers */
#define AHEAD 4096                /* bytes of weights prefetched ahead of the k loop */
/* Every cache line of the stream is prefetched: one prefetch per k step (a line in four) left
 * the rest to the hardware prefetchers, and one row's pass over 30 layers' weights took 20-22
 * instead of 16-17 ms. */
typedef float vf __attribute__((vector_size(WIDTH * 4)));

/* One tile: rows x[0 .. rows) (row stride k_dim) against one column block. */
static void tile(const vf *w, const float *x, int64_t k_dim, int rows, const float *bias,
                 int columns, float *out, int64_t out_row) {
    vf sum[ROWS][VECTORS] = {};
#define PASS(R)                                                               \
    for (int64_t k = 0; k < k_dim; k++) {                                     \
        const vf *wk = w + k * VECTORS;                                       \
        for (int j = 0; j < VECTORS; j++) /* each of the k step's cache lines */ \
            __builtin_prefetch((const char *)(wk + j) + AHEAD);               \
        for (int r = 0; r < (R); r++) {                                       \
            float xk = x[r * k_dim + k];                                      \
            for (int j = 0; j < VECTORS; j++) sum[r][j] += wk[j] * xk;        \
        }                                                                     \
    }
    switch (rows) { /* a constant row count per case: the sums stay in registers */
    case 6: PASS(6) break;
    case 5: PASS(5) break;
    case 4: PASS(4) break;
    case 3: PASS(3) break;
    case 2: PASS(2) break;
    default: PASS(1) break;
    }
#undef PASS
    for (int r = 0; r < rows; r++) {
        float row[BLOCK];
        memcpy(row, sum[r], sizeof(row));
        if (bias)
            for (int c = 0; c < columns; c++) row[c] += bias[c];
        memcpy(out + r * out_row, row, (size_t)columns * sizeof(float));
    }
}

int prefixkv_linear_block(void) { return BLOCK; }

/* x: [rows, k_dim] contiguous; packed: ceil(n_dim / BLOCK) blocks of [k_dim][BLOCK];
 * bias: [n_dim] or NULL; out: [rows, n_dim] contiguous. */
void prefixkv_linear(const float *x, int64_t rows, int64_t k_dim, const float *packed,
                     const float *bias, int64_t n_dim, float *out, int threads) {
    int64_t blocks = (n_dim + BLOCK - 1) / BLOCK;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const vf *w = (const vf *)(packed + b * k_dim * BLOCK);
        int columns = n_dim - b * BLOCK < BLOCK ? (int)(n_dim - b * BLOCK) : BLOCK;
        for (int64_t r0 = 0; r0 < rows; r0 += ROWS) {
            int tile_rows = rows - r0 < ROWS ? (int)(rows - r0) : ROWS;
            tile(w, x + r0 * k_dim, k_dim, tile_rows, bias ? bias + b * BLOCK : NULL, columns,
                 out + r0 * n_dim + b * BLOCK, n_dim);
        }
    }
}
