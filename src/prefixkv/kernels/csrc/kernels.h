/* The library's kernels as the decoder pass (decoder.c) calls them: the same functions the
 * door (prefixkv/kernels/ops.py) calls one by one, declared here so that one C call can run
 * a whole step through them in the same order. Each definition's comment (attention.c,
 * linear.c, layers.c) is its contract; the caller has checked what it relies on. */
#ifndef PREFIXKV_KERNELS_H
#define PREFIXKV_KERNELS_H

#include <stdint.h>

#include "abi.h"

int prefixkv_attend(const struct prefixkv_attend_args *a);
int prefixkv_store(float *keys, float *values, int64_t kv_stride, int64_t pool_slots,
                   const float *new_keys, int64_t key_head, int64_t key_row,
                   const float *new_values, int64_t value_head, int64_t value_row, int kv_heads,
                   int dim, int64_t tokens, const int64_t *slots);
int prefixkv_linear(const float *x, int64_t rows, int64_t k_dim, int format,
                    const void *packed, const float *bias, int64_t n_dim, float *out,
                    int threads);
void prefixkv_rms_norm(const float *x, int64_t rows, int64_t dim, int64_t x_row,
                       const float *weight, float eps, float *out);
void prefixkv_silu_mul(const float *gate_up, int64_t rows, int64_t width, int64_t gu_row,
                       float *out, int threads);
void prefixkv_rotary(float *x, int64_t rows, int64_t heads, int64_t dim, int64_t x_row,
                     const float *cos, const float *sin, int threads);

#endif
