/* The decoder pass: one step of a Llama-style model's decoder layers in one call, for the
 * batch runner's decoder pass (prefixkv/engine/batch/decoder.py).
 *
 * Per layer, exactly the kernels the lean pass (engine/batch/lean.py) calls through the
 * door one by one, in the same order, on the same values: RMS norm, the joined q/k/v
 * projection, rotary embedding of q and k in place, K/V stored into the pool, attention,
 * o_proj and the residual, RMS norm, the joined gate/up projection, SiLU * up, down and the
 * residual. Each residual is one float add per element, as PyTorch's; so the hidden states,
 * the KV written and the logits computed from them are bit-identical to the lean pass's
 * (tests/engine/batch/test_decoder.py). What it drops is the Python between the kernels:
 * about eight door calls, their checks and a few new tensors a layer (~2-3 ms a step for
 * a 30-layer model).
 *
 * The door (prefixkv/kernels/ops.py) checks every tensor, weight and index once per call;
 * this side checks the argument block's size and version and, before anything is written,
 * every slot against the pool. */
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"

/* Scratch for one step: each buffer [rows, its width] (see prefixkv_decoder). */
struct scratch {
    float *normed, *qkv, *attended, *gate_up, *act, *out;
};

static int scratch_of(const struct prefixkv_decoder_args *a, struct scratch *s) {
    int64_t q_width = (int64_t)(a->heads + 2 * a->kv_heads) * a->dim;
    int64_t widths[] = {a->hidden_size, q_width, (int64_t)a->heads * a->dim, 2 * a->width, a->width,
                        a->hidden_size};
    int64_t total = 0;
    for (int i = 0; i < 6; i++) total += widths[i];
    float *base = malloc((size_t)(total * a->rows > 0 ? total * a->rows : 1) * sizeof(float));
    if (!base) return PREFIXKV_NO_MEMORY;
    float **parts[] = {&s->normed, &s->qkv, &s->attended, &s->gate_up, &s->act, &s->out};
    for (int i = 0; i < 6; i++) {
        *parts[i] = base;
        base += widths[i] * a->rows;
    }
    return PREFIXKV_OK;
}

/* hidden[i] += out[i]: the residual, one rounding an element. */
static void add_into(float *hidden, const float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) hidden[i] = hidden[i] + out[i];
}

/* Attention of layer l's queries (in s->qkv) over its pool layer, into s->attended. */
static int attend(const struct prefixkv_decoder_args *a, const struct scratch *s,
                  const float *keys, const float *values, float scale) {
    int64_t q_width = (int64_t)(a->heads + 2 * a->kv_heads) * a->dim;
    struct prefixkv_attend_args args = {
        .size = sizeof args, .version = PREFIXKV_ABI_VERSION,
        .query = s->qkv, .q_head = a->dim, .q_row = q_width,
        .keys = keys, .values = values, .kv_stride = a->pool_slots * a->dim,
        .out = s->attended,
        .member_start = a->member_start, .rows = a->item_rows, .sees = a->sees,
        .first = a->first, .token_start = a->token_start, .slot = a->slot, .owner = a->owner,
        .max_tokens = a->max_tokens, .heads = a->heads, .kv_heads = a->kv_heads, .dim = a->dim,
        .items = a->items, .threads = a->threads, .scale = scale, .softcap = a->softcap,
    };
    return a->items ? prefixkv_attend(&args) : PREFIXKV_OK;
}

/* One decoder layer on a->hidden (see the file's comment); a status code. */
static int layer(const struct prefixkv_decoder_args *a, const struct prefixkv_decoder_layer *w,
                 float *keys, const struct scratch *s) {
    int64_t rows = a->rows, hidden = a->hidden_size, dim = a->dim;
    int64_t heads = a->heads, kv_heads = a->kv_heads, q_width = (heads + 2 * kv_heads) * dim;
    float *values = keys + kv_heads * a->pool_slots * dim;
    int status;
    prefixkv_rms_norm(a->hidden, rows, hidden, hidden, w->attn_norm, w->attn_eps, s->normed);
    status = prefixkv_linear(s->normed, rows, hidden, w->formats[0], w->qkv, w->qkv_bias,
                             q_width, s->qkv, a->threads);
    if (status != PREFIXKV_OK) return status;
    prefixkv_rotary(s->qkv, rows, heads + kv_heads, dim, q_width, a->cos, a->sin, a->threads);
    status = prefixkv_store(keys, values, a->pool_slots * dim, a->pool_slots,
                            s->qkv + heads * dim, dim, q_width,
                            s->qkv + (heads + kv_heads) * dim, dim, q_width, (int)kv_heads,
                            (int)dim, rows, a->slots);
    if (status != PREFIXKV_OK) return status;
    status = attend(a, s, keys, values, w->scale);
    if (status != PREFIXKV_OK) return status;
    status = prefixkv_linear(s->attended, rows, heads * dim, w->formats[1], w->o_proj,
                             w->o_bias, hidden, s->out, a->threads);
    if (status != PREFIXKV_OK) return status;
    add_into(a->hidden, s->out, rows * hidden);
    prefixkv_rms_norm(a->hidden, rows, hidden, hidden, w->mlp_norm, w->mlp_eps, s->normed);
    status = prefixkv_linear(s->normed, rows, hidden, w->formats[2], w->gate_up,
                             w->gate_up_bias, 2 * a->width, s->gate_up, a->threads);
    if (status != PREFIXKV_OK) return status;
    prefixkv_silu_mul(s->gate_up, rows, a->width, 2 * a->width, s->act, a->threads);
    status = prefixkv_linear(s->act, rows, a->width, w->formats[3], w->down, w->down_bias,
                             hidden, s->out, a->threads);
    if (status != PREFIXKV_OK) return status;
    add_into(a->hidden, s->out, rows * hidden);
    return PREFIXKV_OK;
}

int prefixkv_decoder_args_size(void) { return (int)sizeof(struct prefixkv_decoder_args); }
int prefixkv_decoder_layer_size(void) { return (int)sizeof(struct prefixkv_decoder_layer); }

/* The step's rows through layers 0 .. layer_count - 1 (struct prefixkv_decoder_args,
 * abi.h): a->hidden updated in place, each layer's keys and values stored at a->slots of
 * its pool layer. The door has checked every tensor's dtype, shape and layout, the weights'
 * formats and sizes, and the work items' indices against the query rows and pool slots.
 * Returns PREFIXKV_OK; PREFIXKV_BAD_SIZE or PREFIXKV_BAD_VERSION (nothing read past the first
 * two fields); PREFIXKV_BAD_SLOT (nothing written) for a slot outside the pool;
 * PREFIXKV_NO_MEMORY when scratch memory could not be allocated (hidden and the pool then
 * partly updated). */
int prefixkv_decoder(const struct prefixkv_decoder_args *a) {
    if (a->size != sizeof(*a)) return PREFIXKV_BAD_SIZE;
    if (a->version != PREFIXKV_ABI_VERSION) return PREFIXKV_BAD_VERSION;
    for (int64_t t = 0; t < a->rows; t++)
        if (a->slots[t] < 0 || a->slots[t] >= a->pool_slots) return PREFIXKV_BAD_SLOT;
    struct scratch s;
    int status = scratch_of(a, &s);
    if (status != PREFIXKV_OK) return status;
    int64_t layer_floats = 2 * (int64_t)a->kv_heads * a->pool_slots * a->dim;
    for (int l = 0; l < a->layer_count && status == PREFIXKV_OK; l++)
        status = layer(a, &a->layers[l], a->pool + l * layer_floats, &s);
    free(s.normed); /* the start of the one allocation */
    return status;
}
