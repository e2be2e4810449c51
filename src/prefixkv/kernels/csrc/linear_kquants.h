/* GGUF's K-quants (Q4_K, Q5_K, Q6_K) in linear.c's column blocks (included there, after its
 * 4-bit helpers). Per column block, each super-block of SUPER = 256 input features is stored
 * whole, one after the other (K % 256 == 0), columns last (c = output column in the block):
 *   q4_k: fp16 d[64]; fp16 dmin[64]; uint8 sc[8][64]; uint8 m[8][64]; uint8 q[256][32]
 *         w = (d * sc) * q - (dmin * m)                                      (9472 B)
 *   q5_k: as q4_k, then uint8 qh[128][16] before q: byte b of qh[k / 2] holds the 5th bits
 *         of columns b, b + 16, b + 32, b + 48 at bits 0-3 (k even) or 4-7 (k odd)
 *         w = (d * sc) * (q + 16 h) - (dmin * m)                             (11520 B)
 *   q6_k: fp16 d[64]; int8 sc[16][64]; uint8 qh[256][16]; uint8 q[256][32]
 *         byte b of qh[k] holds the high 2 bits of columns b, b + 16, b + 32, b + 48
 *         w = (d * sc) * (q + 16 h - 32)                                     (13440 B)
 * q is 4-bit pairs as in q4_0 (byte c: column c low, column c + 32 high); sc and m apply to
 * sub-blocks of 32 k (q6_k: 16). Per sub-block the scales are formed once in registers
 * (struct kscales), then each k step decodes its 64 weights. Every product d * sc, dmin * m,
 * (d * sc) * q is exact in fp32 (11-bit d times at most 7-bit sc and 6-bit q, far from the
 * fp32 range's ends), so each weight is the value gguf-py's dequantize gives: q4_k/q5_k
 * round once in the subtraction, fused or not; q6_k does not round at all. The weight is
 * formed on its own, then multiplied into the sums like any other format's. */
#ifndef PREFIXKV_LINEAR_KQUANTS_H
#define PREFIXKV_LINEAR_KQUANTS_H

#define SUPER 256
#define SUPER_Q4_K 9472
#define SUPER_Q5_K 11520
#define SUPER_Q6_K 13440
#define SUB_Q4_K 32 /* k steps per scale of a super-block */
#define SUB_Q6_K 16

/* q4_k's and q5_k's header (d, dmin, sc, m at the same offsets) of the super-block that
 * starts at super, for the sub-block of step i (0 <= i < SUPER) of it. */
static inline __attribute__((always_inline)) void head_q4_k(const uint8_t *super, int i,
                                                            struct kscales *s) {
    int sub = i / SUB_Q4_K;
    for (int j = 0; j < VECTORS; j++) {
        s->a[j] = from_f16(super + 2 * WIDTH * j) * widen_u8(super + 256 + sub * BLOCK + WIDTH * j);
        s->b[j] = from_f16(super + 128 + 2 * WIDTH * j) *
                  widen_u8(super + 768 + sub * BLOCK + WIDTH * j);
    }
}

#define head_q5_k head_q4_k

static inline __attribute__((always_inline)) void head_q6_k(const uint8_t *super, int i,
                                                            struct kscales *s) {
    int sub = i / SUB_Q6_K;
    for (int j = 0; j < VECTORS; j++)
        s->a[j] = from_f16(super + 2 * WIDTH * j) * from_i8(super + 128 + sub * BLOCK + WIDTH * j);
}

/* The 64 weights of step i of the super-block at super, with its sub-block's scales s. */
static inline __attribute__((always_inline)) void load_q4_k(const uint8_t *super, int i,
                                                            const struct kscales *s,
                                                            vf out[VECTORS]) {
    nibbles(super + 1280 + i * (BLOCK / 2), out);
    for (int j = 0; j < VECTORS; j++) out[j] = s->a[j] * out[j] - s->b[j];
}

static inline __attribute__((always_inline)) void load_q5_k(const uint8_t *super, int i,
                                                            const struct kscales *s,
                                                            vf out[VECTORS]) {
    from_u5(super + 3328 + i * (BLOCK / 2), super + 1280 + i / 2 * WIDTH, i % 2 * 4, out);
    for (int j = 0; j < VECTORS; j++) out[j] = s->a[j] * out[j] - s->b[j];
}

static inline __attribute__((always_inline)) void load_q6_k(const uint8_t *super, int i,
                                                            const struct kscales *s,
                                                            vf out[VECTORS]) {
    from_u6(super + 5248 + i * (BLOCK / 2), super + 1152 + i * WIDTH, out);
    for (int j = 0; j < VECTORS; j++) out[j] = s->a[j] * (out[j] - 32.0f);
}

#endif
