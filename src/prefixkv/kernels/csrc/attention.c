/* Attention over pool slots for one step of prefixkv's batch runner: decoding sequences
 * (which may share context) and causal prefill chunks, in one call per layer.
 *
 * Work item i holds up to LANES query rows: the query heads of one kv head for each of its
 * members (query tokens). Its tokens are the context slots its members read; member m sees
 * tokens first[m] .. sees[m] - 1 of them, except tokens flagged as another member's own
 * (owner[t] = that member's index; -1: every member's). Decoding sequences sharing a prefix
 * read it once per item; a prefill chunk's consecutive queries see the context up to their
 * own positions (from the start, or from the start of their sliding window). Scaled scores
 * may be capped first: softcap * tanh(s / softcap) (Gemma 2), unless softcap is +inf.
 *
 * Scores and values are computed with the query rows as vector lanes, so a key or value row
 * is loaded once per item whatever the number of members, and no horizontal sums are needed:
 *   scores[t][lane] = sum_d q[lane][d] * k[t][d]   (a broadcast FMA per d)
 *   out[d][lane]    = sum_t p[t][lane] * v[t][d]
 * Softmax is in float32 with the max subtracted; a token a lane does not see gets weight 0.
 * Results equal plain attention up to float rounding (summation order differs).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "abi.h"
#include "kernels.h" /* the definitions below checked against the decoder's view */
#include "vector.h"

/* Rows are prefetched this many tokens ahead: a pool block of one kv head is 4 KB, so a
 * sequence's rows lie on scattered pages that the hardware prefetchers do not follow. */
#define AHEAD 16

/* scores[t] = qt . k(slot t): eight tokens at a time, eight independent accumulators. */
static void scores_of(const vf *qt, const float *keys, const int64_t *slot, int64_t n, int dim,
                      vf *scores) {
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) {
        const float *k[8];
        for (int j = 0; j < 8; j++) k[j] = keys + slot[t + j] * dim;
        for (int64_t j = t + AHEAD; j < t + AHEAD + 8 && j < n; j++)
            for (int b = 0; b < dim; b += 16) __builtin_prefetch(keys + slot[j] * dim + b);
        vf a0 = {}, a1 = {}, a2 = {}, a3 = {}, a4 = {}, a5 = {}, a6 = {}, a7 = {};
        for (int d = 0; d < dim; d++) {
            vf q = qt[d];
            a0 += q * k[0][d]; a1 += q * k[1][d]; a2 += q * k[2][d]; a3 += q * k[3][d];
            a4 += q * k[4][d]; a5 += q * k[5][d]; a6 += q * k[6][d]; a7 += q * k[7][d];
        }
        scores[t] = a0; scores[t + 1] = a1; scores[t + 2] = a2; scores[t + 3] = a3;
        scores[t + 4] = a4; scores[t + 5] = a5; scores[t + 6] = a6; scores[t + 7] = a7;
    }
    for (; t < n; t++) {
        const float *k = keys + slot[t] * dim;
        vf a = {};
        for (int d = 0; d < dim; d++) a += qt[d] * k[d];
        scores[t] = a;
    }
}

/* ot[d] = sum_t weights[t] * v(slot t)[d]: sixteen dims at a time in registers. */
static void values_of(const vf *weights, const float *values, const int64_t *slot, int64_t n,
                      int dim, vf *ot) {
    int d0 = 0;
    for (; d0 + 16 <= dim; d0 += 16) {
        vf a[16] = {};
        for (int64_t t = 0; t < n; t++) {
            vf w = weights[t];
            const float *v = values + slot[t] * dim + d0;
            if (t + AHEAD < n) __builtin_prefetch(values + slot[t + AHEAD] * dim + d0);
            for (int j = 0; j < 16; j++) a[j] += w * v[j];
        }
        for (int j = 0; j < 16; j++) ot[d0 + j] = a[j];
    }
    for (; d0 < dim; d0++) {
        vf a = {};
        for (int64_t t = 0; t < n; t++) a += weights[t] * values[slot[t] * dim + d0];
        ot[d0] = a;
    }
}

/* Turns scores into unnormalised weights in place; returns each lane's sum of weights.
 * Lane l (member l / groups) sees token t when first[member] <= t < sees[member] and the
 * token is shared (owner -1) or its own; unused lanes see nothing. */
static vf softmax_weights(vf *scores, const int32_t *owner, const int64_t *sees,
                          const int64_t *first, int members, int64_t n, int groups) {
    const vf hidden = splat(-__builtin_inff());
    vi lane, limit, lower;
    for (int l = 0; l < LANES; l++) {
        lane[l] = l;
        limit[l] = l / groups < members ? (int32_t)sees[l / groups] : 0;
        lower[l] = l / groups < members ? (int32_t)first[l / groups] : 0;
    }
    vf top = hidden;
    for (int64_t t = 0; t < n; t++) {
        vi at = (vi){} + (int32_t)t;
        vi seen = (at < limit) & (at >= lower);
        if (owner[t] >= 0) seen &= (lane >= owner[t] * groups) & (lane < (owner[t] + 1) * groups);
        scores[t] = select_lanes(seen, scores[t], hidden);
        top = lane_max(top, scores[t]);
    }
    top = select_lanes(top == hidden, splat(0.0f), top); /* unused lanes */
    vf sum = {};
    for (int64_t t = 0; t < n; t++) {
        vf e = select_lanes(scores[t] == hidden, splat(0.0f), exp_nonpositive(scores[t] - top));
        scores[t] = e;
        sum += e;
    }
    return sum;
}

static void attend_item(const float *q, int64_t q_head, int64_t q_row, const float *keys,
                        const float *values, float *out, int heads, int kv_head, int groups,
                        int dim, float scale, float softcap, int members, const int64_t *rows,
                        const int64_t *sees, const int64_t *first, int64_t n,
                        const int64_t *slot, const int32_t *owner, vf *scores, vf *qt, vf *ot) {
    /* qt[d][member * groups + j] = scale * query head (kv_head * groups + j) of that member */
    for (int d = 0; d < dim; d++) qt[d] = (vf){};
    for (int m = 0; m < members; m++)
        for (int j = 0; j < groups; j++) {
            const float *src = q + (int64_t)(kv_head * groups + j) * q_head + rows[m] * q_row;
            for (int d = 0; d < dim; d++) qt[d][m * groups + j] = src[d] * scale;
        }
    scores_of(qt, keys, slot, n, dim, scores);
    if (!__builtin_isinf(softcap))
        for (int64_t t = 0; t < n; t++) scores[t] = softcap * tanh_lanes(scores[t] / softcap);
    vf sum = softmax_weights(scores, owner, sees, first, members, n, groups);
    values_of(scores, values, slot, n, dim, ot);
    for (int m = 0; m < members; m++)
        for (int j = 0; j < groups; j++) {
            int l = m * groups + j;
            float inv = 1.0f / sum[l];
            float *dst = out + (rows[m] * heads + kv_head * groups + j) * dim;
            for (int d = 0; d < dim; d++) dst[d] = ot[d][l] * inv;
        }
}

int prefixkv_lanes(void) { return LANES; }

int prefixkv_abi_version(void) { return PREFIXKV_ABI_VERSION; }
int prefixkv_attend_args_size(void) { return (int)sizeof(struct prefixkv_attend_args); }

/* Writes a step's new keys and values into their pool slots: token t of kv head g goes to
 * slot slots[t], at [g * kv_stride + slots[t] * dim] of keys and values. The sources are
 * read at [g * head + t * row] (new_keys and new_values have their own strides). Every slot
 * is checked against pool_slots first (a step's slots come with each call, unlike a plan's
 * indices, and the check costs nothing next to the copies): returns PREFIXKV_OK, or
 * PREFIXKV_BAD_SLOT with nothing written. */
int prefixkv_store(float *keys, float *values, int64_t kv_stride, int64_t pool_slots,
                   const float *new_keys, int64_t key_head, int64_t key_row,
                   const float *new_values, int64_t value_head, int64_t value_row, int kv_heads,
                   int dim, int64_t tokens, const int64_t *slots) {
    for (int64_t t = 0; t < tokens; t++)
        if (slots[t] < 0 || slots[t] >= pool_slots) return PREFIXKV_BAD_SLOT;
    size_t bytes = (size_t)dim * sizeof(float);
    for (int g = 0; g < kv_heads; g++)
        for (int64_t t = 0; t < tokens; t++) {
            int64_t at = g * kv_stride + slots[t] * dim;
            memcpy(keys + at, new_keys + g * key_head + t * key_row, bytes);
            memcpy(values + at, new_values + g * value_head + t * value_row, bytes);
        }
    return PREFIXKV_OK;
}

/* One step's attention, as struct prefixkv_attend_args describes it (abi.h).
 * Item i: members rows[member_start[i] .. member_start[i + 1]) (sees[] and first[]
 * alongside), tokens slot[token_start[i] .. token_start[i + 1]) with owner[] alongside; only
 * the items' member rows of out are written. Requires members * (heads / kv_heads) <= LANES in every item and
 * every index within its tensor: the door (prefixkv/kernels/ops.py) checks them.
 * Returns PREFIXKV_OK; PREFIXKV_BAD_SIZE or PREFIXKV_BAD_VERSION (nothing read past the
 * first two fields) for a block this library does not know; PREFIXKV_NO_MEMORY when scratch
 * memory could not be allocated (out is then incomplete). */
int prefixkv_attend(const struct prefixkv_attend_args *a) {
    if (a->size != sizeof(*a)) return PREFIXKV_BAD_SIZE;
    if (a->version != PREFIXKV_ABI_VERSION) return PREFIXKV_BAD_VERSION;
    int items = a->items, kv_heads = a->kv_heads, dim = a->dim;
    int groups = a->heads / kv_heads, jobs = items * kv_heads, failed = 0;
    #pragma omp parallel num_threads(a->threads)
    {
        size_t most = (size_t)(a->max_tokens > 0 ? a->max_tokens : 1);
        vf *scores = aligned_alloc(64, sizeof(vf) * most);
        vf *qt = aligned_alloc(64, sizeof(vf) * (size_t)dim);
        vf *ot = aligned_alloc(64, sizeof(vf) * (size_t)dim);
        int ready = scores && qt && ot;
        /* kv-head-major order: consecutive jobs read the same kv head's rows (warm caches) */
        #pragma omp for schedule(dynamic, 1)
        for (int job = 0; job < jobs; job++) {
            int g = job / items, i = job % items;
            if (!ready) {
                #pragma omp atomic write
                failed = 1;
                continue;
            }
            const int64_t m0 = a->member_start[i], t0 = a->token_start[i];
            attend_item(a->query, a->q_head, a->q_row, a->keys + g * a->kv_stride,
                        a->values + g * a->kv_stride, a->out, a->heads, g, groups, dim, a->scale,
                        a->softcap, (int)(a->member_start[i + 1] - m0), a->rows + m0,
                        a->sees + m0, a->first + m0, a->token_start[i + 1] - t0, a->slot + t0,
                        a->owner + t0, scores, qt, ot);
        }
        free(scores);
        free(qt);
        free(ot);
    }
    return failed ? PREFIXKV_NO_MEMORY : PREFIXKV_OK;
}
