/* The calling convention between prefixkv's native kernels and their one Python door
 * (prefixkv/kernels/ops.py, which mirrors this file in prefixkv/kernels/abi.py).
 *
 * The door checks every tensor's dtype, device, strides, shapes and index bounds before a
 * call; the C side trusts those checks, except for what is cheap to check here and cannot be
 * checked once per plan: the argument block's size and version, and the slots a store
 * writes. A caller out of step with this file gets an error code, never a misread block. */
#ifndef PREFIXKV_ABI_H
#define PREFIXKV_ABI_H

#include <stdint.h>

/* Raised whenever struct prefixkv_attend_args or prefixkv_decoder_args, a function's
 * parameters or a packed weight's layout change (5: the rotary kernel; 6: q8_0, q4_0, q4_1
 * keep fp16 scales; 7: the decoder pass, decoder.c; 8: the integer-dot formats q8_0.q8,
 * q4_0.q8, q4_1.q8; 9: the K-quants' integer-dot formats q4_k.q8, q5_k.q8, q6_k.q8). */
#define PREFIXKV_ABI_VERSION 9

/* Status codes returned by prefixkv_attend, prefixkv_store, prefixkv_linear and
 * prefixkv_decoder. */
#define PREFIXKV_OK 0
#define PREFIXKV_NO_MEMORY (-1)   /* scratch memory could not be allocated; out incomplete */
#define PREFIXKV_BAD_SIZE (-2)    /* the argument block's size is not this library's */
#define PREFIXKV_BAD_VERSION (-3) /* the argument block's version is not this library's */
#define PREFIXKV_BAD_SLOT (-4)    /* a slot outside [0, pool_slots); nothing was written */

/* One attention call (see attention.c). Fields in order of decreasing alignment needs within
 * each group, so that C and ctypes lay it out alike without padding surprises. */
struct prefixkv_attend_args {
    uint32_t size;    /* sizeof(struct prefixkv_attend_args) as the caller built it */
    uint32_t version; /* PREFIXKV_ABI_VERSION as the caller knows it */
    const float *query;  /* query head h, step row r, element d at h * q_head + r * q_row + d */
    int64_t q_head, q_row;
    const float *keys, *values; /* kv head g, slot s, element d at g * kv_stride + s * dim + d */
    int64_t kv_stride;
    float *out; /* [step rows, heads, dim], contiguous */
    const int64_t *member_start; /* [items + 1] */
    const int64_t *rows;         /* [members]: each member's query row */
    const int64_t *sees;         /* [members]: it sees its item's tokens before this one */
    const int64_t *first;        /* [members]: and from this one on (a window; 0: all) */
    const int64_t *token_start;  /* [items + 1] */
    const int64_t *slot;         /* [tokens]: pool slot of each token */
    const int32_t *owner;        /* [tokens]: -1 (every member) or a member index */
    int64_t max_tokens;          /* the most tokens of any item */
    int32_t heads, kv_heads, dim, items, threads;
    float scale;
    float softcap; /* scaled scores s become softcap * tanh(s / softcap); +inf: left as s */
};

/* One Llama-style decoder layer's weights for the decoder pass (decoder.c). */
struct prefixkv_decoder_layer {
    const float *attn_norm, *mlp_norm; /* [hidden] RMS norm weights */
    /* Packed weights (linear.c): q/k/v joined [in hidden, out (heads + 2 kv_heads) * dim],
     * o_proj [heads * dim, hidden], gate/up joined [hidden, 2 * width], down [width, hidden] */
    const void *qkv, *o_proj, *gate_up, *down;
    const float *qkv_bias, *o_bias, *gate_up_bias, *down_bias; /* [out features] or NULL */
    int32_t formats[4];      /* the four weights' format codes, in the order above */
    float attn_eps, mlp_eps; /* the norms' epsilons */
    float scale;             /* the attention's score scaling */
};

/* One step through every decoder layer (see decoder.c). */
struct prefixkv_decoder_args {
    uint32_t size;    /* sizeof(struct prefixkv_decoder_args) as the caller built it */
    uint32_t version; /* PREFIXKV_ABI_VERSION as the caller knows it */
    float *hidden;    /* [rows, hidden] contiguous: the step's hidden states, updated in place */
    const float *cos, *sin; /* [rows, dim] contiguous: the rotary embedding of each row */
    float *pool; /* [layer_count, 2, kv_heads, pool_slots, dim] contiguous: keys, then values */
    const int64_t *slots; /* [rows]: the pool slot each row's key and value are stored at */
    const struct prefixkv_decoder_layer *layers; /* [layer_count] */
    /* the attention's work items, as in struct prefixkv_attend_args */
    const int64_t *member_start, *item_rows, *sees, *first, *token_start, *slot;
    const int32_t *owner;
    int64_t max_tokens, rows, hidden_size, width, pool_slots;
    int32_t layer_count, heads, kv_heads, dim, items, threads;
    float softcap;
};

int prefixkv_abi_version(void);
int prefixkv_attend_args_size(void);
int prefixkv_decoder_args_size(void);
int prefixkv_decoder_layer_size(void);

#endif
