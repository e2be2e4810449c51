/* Narrow values widened to floats for linear.c (included there, after its vector types):
 * 16 lanes a call, exact (a widening never rounds). */
#ifndef PREFIXKV_LINEAR_WIDEN_H
#define PREFIXKV_LINEAR_WIDEN_H
/* 16 narrow values widened to floats. GCC 12 turns a widening __builtin_convertvector into
 * scalar code (each byte moved alone: 2-3x slower than the f32 kernel), so with AVX-512 and
 * with AVX2 the widening instructions are named; elsewhere the generic form stands. Every
 * path gives the same exact values (a widening is exact). */
#ifdef __AVX512F__
#include <immintrin.h>
static inline __attribute__((always_inline)) vf from_i8(const uint8_t *p) {
    return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
static inline __attribute__((always_inline)) vf from_u8(__m128i bytes) {
    return (vf)_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes));
}
static inline __attribute__((always_inline)) vf from_bf16(const uint8_t *p) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return (vf)_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
#elif defined(__AVX2__)
#include <immintrin.h>
/* Two 8-lane halves make one 16-lane vector (GCC lowers vf to two ymm registers here). */
typedef union {
    vf whole;
    __m256 half[2];
} halves;
static inline __attribute__((always_inline)) vf from_i8(const uint8_t *p) {
    halves out;
    for (int h = 0; h < 2; h++)
        out.half[h] = _mm256_cvtepi32_ps(
            _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * h))));
    return out.whole;
}
static inline __attribute__((always_inline)) vf from_u8(__m128i bytes) {
    halves out;
    out.half[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
    out.half[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8)));
    return out.whole;
}
static inline __attribute__((always_inline)) vf from_bf16(const uint8_t *p) {
    halves out;
    for (int h = 0; h < 2; h++) {
        __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 16 * h)));
        out.half[h] = _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
    }
    return out.whole;
}
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
/* p: 16 bytes of 4-bit pairs; low: their low nibbles as floats, high: their high ones */
static inline __attribute__((always_inline)) void from_u4(const uint8_t *p, vf *low, vf *high) {
    __m128i bytes = _mm_loadu_si128((const __m128i *)p), mask = _mm_set1_epi8(15);
    *low = from_u8(_mm_and_si128(bytes, mask));
    *high = from_u8(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask));
}
#else
static inline __attribute__((always_inline)) vf from_i8(const uint8_t *p) {
    return __builtin_convertvector(*(const vi8 *)p, vf);
}
static inline __attribute__((always_inline)) vf from_bf16(const uint8_t *p) {
    vu bits = __builtin_convertvector(*(const vh *)p, vu) << 16;
    vf out;
    memcpy(&out, &bits, sizeof(out));
    return out;
}
static inline __attribute__((always_inline)) void from_u4(const uint8_t *p, vf *low, vf *high) {
    vu8 bytes = *(const vu8 *)p;
    *low = __builtin_convertvector(bytes & 15, vf);
    *high = __builtin_convertvector(bytes >> 4, vf);
}
#endif

/* p: 16 bytes, as unsigned values */
static inline __attribute__((always_inline)) vf widen_u8(const uint8_t *p) {
#if defined(__AVX512F__) || defined(__AVX2__)
    return from_u8(_mm_loadu_si128((const __m128i *)p));
#else
    return __builtin_convertvector(*(const vu8 *)p, vf);
#endif
}

/* q6_k's 64 6-bit values of a k step, as floats in column order: ql, 32 bytes of 4-bit pairs
 * (byte c: column c low, c + 32 high); qh, 16 bytes of 2-bit values (byte b: columns b,
 * b + 16, b + 32, b + 48 at bits 0-1, 2-3, 4-5, 6-7). Joined as bytes, then widened once. */
static inline __attribute__((always_inline)) void from_u6(const uint8_t *ql, const uint8_t *qh,
                                                          vf out[4]) {
#if defined(__AVX512F__) || defined(__AVX2__)
    __m128i low0 = _mm_loadu_si128((const __m128i *)ql);
    __m128i low1 = _mm_loadu_si128((const __m128i *)(ql + 16));
    __m128i high = _mm_loadu_si128((const __m128i *)qh);
    __m128i m15 = _mm_set1_epi8(15), m48 = _mm_set1_epi8(48); /* 16-bit shifts: bits that
                                                                 cross bytes are masked off */
    out[0] = from_u8(_mm_or_si128(_mm_and_si128(low0, m15),
                                  _mm_and_si128(_mm_slli_epi16(high, 4), m48)));
    out[1] = from_u8(_mm_or_si128(_mm_and_si128(low1, m15),
                                  _mm_and_si128(_mm_slli_epi16(high, 2), m48)));
    out[2] = from_u8(_mm_or_si128(_mm_and_si128(_mm_srli_epi16(low0, 4), m15),
                                  _mm_and_si128(high, m48)));
    out[3] = from_u8(_mm_or_si128(_mm_and_si128(_mm_srli_epi16(low1, 4), m15),
                                  _mm_and_si128(_mm_srli_epi16(high, 2), m48)));
#else
    vu8 low0 = *(const vu8 *)ql, low1 = *(const vu8 *)(ql + 16), high = *(const vu8 *)qh;
    out[0] = __builtin_convertvector((low0 & 15) | ((high << 4) & 48), vf);
    out[1] = __builtin_convertvector((low1 & 15) | ((high << 2) & 48), vf);
    out[2] = __builtin_convertvector((low0 >> 4) | (high & 48), vf);
    out[3] = __builtin_convertvector((low1 >> 4) | ((high >> 2) & 48), vf);
#endif
}

/* q5_k's 64 5-bit values of a k step, as floats in column order: ql as in from_u6; qh, 16
 * bytes of one-bit values for two k steps (byte b: columns b, b + 16, b + 32, b + 48 at bits
 * 0-3 for the even step, 4-7 for the odd one), shift 0 or 4 choosing the step. */
static inline __attribute__((always_inline)) void from_u5(const uint8_t *ql, const uint8_t *qh,
                                                          int shift, vf out[4]) {
#if defined(__AVX512F__) || defined(__AVX2__)
    __m128i low0 = _mm_loadu_si128((const __m128i *)ql);
    __m128i low1 = _mm_loadu_si128((const __m128i *)(ql + 16));
    __m128i high = _mm_srl_epi16(_mm_loadu_si128((const __m128i *)qh), _mm_cvtsi32_si128(shift));
    __m128i m15 = _mm_set1_epi8(15), m16 = _mm_set1_epi8(16); /* bits that cross bytes in a
                                                                 16-bit shift: masked off */
    out[0] = from_u8(_mm_or_si128(_mm_and_si128(low0, m15),
                                  _mm_and_si128(_mm_slli_epi16(high, 4), m16)));
    out[1] = from_u8(_mm_or_si128(_mm_and_si128(low1, m15),
                                  _mm_and_si128(_mm_slli_epi16(high, 3), m16)));
    out[2] = from_u8(_mm_or_si128(_mm_and_si128(_mm_srli_epi16(low0, 4), m15),
                                  _mm_and_si128(_mm_slli_epi16(high, 2), m16)));
    out[3] = from_u8(_mm_or_si128(_mm_and_si128(_mm_srli_epi16(low1, 4), m15),
                                  _mm_and_si128(_mm_slli_epi16(high, 1), m16)));
#else
    vu8 low0 = *(const vu8 *)ql, low1 = *(const vu8 *)(ql + 16), high = *(const vu8 *)qh >> shift;
    out[0] = __builtin_convertvector((low0 & 15) | ((high << 4) & 16), vf);
    out[1] = __builtin_convertvector((low1 & 15) | ((high << 3) & 16), vf);
    out[2] = __builtin_convertvector((low0 >> 4) | ((high << 2) & 16), vf);
    out[3] = __builtin_convertvector((low1 >> 4) | ((high << 1) & 16), vf);
#endif
}

/* One fp16 value (IEEE binary16 bits) as a float: the generic path's widening. */
static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exponent = (h >> 10) & 31, mantissa = h & 1023;
    uint32_t bits;
    if (exponent == 0) { /* zero or subnormal: mantissa * 2^-24, exact */
        float value = (float)mantissa * 0x1p-24f;
        return sign ? -value : value;
    }
    if (exponent == 31)
        bits = sign | 0x7f800000u | mantissa << 13;
    else
        bits = sign | (exponent + 112) << 23 | mantissa << 13;
    float out;
    memcpy(&out, &bits, sizeof(out));
    return out;
}

/* p: 16 fp16 values (32 bytes), as floats: vcvtph2ps with AVX-512 or F16C (every AVX2 CPU
 * has it; -march=x86-64-v3 enables it), else value by value. */
static inline __attribute__((always_inline)) vf from_f16(const uint8_t *p) {
#if defined(__AVX512F__)
    return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif defined(__AVX2__) && defined(__F16C__)
    halves out;
    for (int h = 0; h < 2; h++) out.half[h] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16 * h)));
    return out.whole;
#else
    vf out;
    for (int l = 0; l < WIDTH; l++) {
        uint16_t h;
        memcpy(&h, p + 2 * l, sizeof(h));
        out[l] = half_to_float(h);
    }
    return out;
#endif
}

#endif
