/* GGUF's 32-weight formats (Q8_0, Q4_0, Q4_1) in linear.c's column blocks (included there,
 * after struct kscales and the 4-bit helpers; layouts in linear.c's opening comment). Each
 * group of GROUP k steps is one span: its fp16 d (and m) are widened once (HEAD), exactly,
 * into the same fp32 values the file's scales are, then each k step decodes its 64 weights
 * with them (LOAD) as the formats' fp32-header kernels did: the same products, so the same
 * bits. */
#ifndef PREFIXKV_LINEAR_LEGACY_H
#define PREFIXKV_LINEAR_LEGACY_H

#define HALVES (BLOCK * 2) /* bytes of one fp16 vector of BLOCK columns */

/* The group at span's d in s->a (q8_0, q4_0); i is unused (one scale a group). */
static inline __attribute__((always_inline)) void head_q8_0(const uint8_t *span, int i,
                                                            struct kscales *s) {
    (void)i;
    for (int j = 0; j < VECTORS; j++) s->a[j] = from_f16(span + 2 * WIDTH * j);
}

#define head_q4_0 head_q8_0

/* q4_1's d in s->a, m in s->b. */
static inline __attribute__((always_inline)) void head_q4_1(const uint8_t *span, int i,
                                                            struct kscales *s) {
    (void)i;
    for (int j = 0; j < VECTORS; j++) {
        s->a[j] = from_f16(span + 2 * WIDTH * j);
        s->b[j] = from_f16(span + HALVES + 2 * WIDTH * j);
    }
}

/* The 64 weights of step i (0 <= i < GROUP) of the group at span, with its scales s. */
static inline __attribute__((always_inline)) void load_q8_0(const uint8_t *span, int i,
                                                            const struct kscales *s,
                                                            vf out[VECTORS]) {
    const uint8_t *q = span + HALVES + i * BLOCK;
    for (int j = 0; j < VECTORS; j++) out[j] = s->a[j] * from_i8(q + j * WIDTH);
}

static inline __attribute__((always_inline)) void load_q4_0(const uint8_t *span, int i,
                                                            const struct kscales *s,
                                                            vf out[VECTORS]) {
    nibbles(span + HALVES + i * (BLOCK / 2), out);
    for (int j = 0; j < VECTORS; j++) out[j] = s->a[j] * (out[j] - 8.0f);
}

static inline __attribute__((always_inline)) void load_q4_1(const uint8_t *span, int i,
                                                            const struct kscales *s,
                                                            vf out[VECTORS]) {
    nibbles(span + 2 * HALVES + i * (BLOCK / 2), out);
    for (int j = 0; j < VECTORS; j++) out[j] = s->a[j] * out[j] + s->b[j];
}

#endif
