/* dlcli's 2x2 max-pooling for training on the CPU (see dlcli/native.py, which compiles,
 * loads, checks and calls it).
 *
 * Tensors are float32 or bfloat16 in NHWC memory (torch's channels_last), with C a multiple
 * of 8. bfloat16 values are widened to float32 exactly (a 16-bit shift) and every result
 * is one of the inputs, a zero or a gradient passed through, so narrowing them back is
 * exact too: the same choices and values as in float32, as torch computes them.
 * Windows are 2x2 with stride 2, no padding; an odd last row or column is left out, as
 * torch's floor mode leaves it out.
 *
 * forward:  out = the window's maximum (ReLU'd when relu != 0), and code = which of its four
 *           pixels won (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right), one byte.
 *           The same choice as torch's max_pool2d: pixels in that order, a later one wins if
 *           it is greater or NaN (ties go to the first, NaN to the last NaN). ReLU as torch's:
 *           negative values become 0, NaN and -0.0 stay.
 * backward: the input's gradient, written once (no zero fill, then a scatter): the output
 *           gradient at the winning pixel and 0 elsewhere; with relu, 0 where the output is
 *           <= 0 (torch's threshold_backward). The winner gets 0.0f + g: what torch's
 *           accumulation into a zeroed gradient gives (-0.0 becomes +0.0).
 *
 * Eight channels at a time in GCC/Clang vector types: the compiler emits AVX, AVX-512 or
 * NEON for them (-march=native), with no intrinsics to port. Rows of the output are shared
 * out over OpenMP threads where it is compiled with -fopenmp. Must not be built with
 * -ffast-math: the NaN tests (v != v) and the signed zeros are the point.
 */
#include <stdint.h>
#include <string.h>

typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef uint16_t bf16;

static inline f8 load_f32(const float *p) {
  f8 v;
  memcpy(&v, p, sizeof v);
  return v;
}

static inline void store_f32(float *p, f8 v) { memcpy(p, &v, sizeof v); }

static inline f8 load_bf16(const bf16 *p) {
  i8 bits;
  for (int t = 0; t < 8; t++) bits[t] = (int32_t)((uint32_t)p[t] << 16);
  return (f8)bits;
}

static inline void store_bf16(bf16 *p, f8 v) {
  const i8 bits = (i8)v;
  for (int t = 0; t < 8; t++) p[t] = (bf16)((uint32_t)bits[t] >> 16);
}

/* mask ? a : b, lane by lane (mask lanes are all ones or all zeros). */
static inline f8 blend(i8 mask, f8 a, f8 b) { return (f8)(((i8)a & mask) | ((i8)b & ~mask)); }

int dlcli_maxpool_version(void) { return 2; }

#define DLCLI_MAXPOOL(SUFFIX, T, LOAD, STORE)                                                   \
  void dlcli_maxpool2x2_forward_##SUFFIX(const T *x, T *out, uint8_t *code, int64_t n,         \
                                         int64_t h, int64_t w, int64_t c, int relu) {           \
    const int64_t oh = h / 2, ow = w / 2;                                                       \
    _Pragma("omp parallel for schedule(static)")                                                \
    for (int64_t row = 0; row < n * oh; row++) {                                                \
      const int64_t b = row / oh, i = row % oh;                                                 \
      const T *top = x + ((b * h + 2 * i) * w) * c, *bottom = top + w * c;                      \
      T *o = out + row * ow * c;                                                                \
      uint8_t *k = code + row * ow * c;                                                         \
      for (int64_t j = 0; j < ow; j++) {                                                        \
        for (int64_t ch = 0; ch < c; ch += 8) {                                                 \
          const int64_t at = 2 * j * c + ch, e = j * c + ch;                                   \
          f8 best = LOAD(top + at), v;                                                          \
          i8 won = {0}, later;                                                                  \
          v = LOAD(top + at + c);                                                               \
          later = (v > best) | (v != v);                                                        \
          best = blend(later, v, best);                                                         \
          won = (won & ~later) | (later & 1);                                                   \
          v = LOAD(bottom + at);                                                                \
          later = (v > best) | (v != v);                                                        \
          best = blend(later, v, best);                                                         \
          won = (won & ~later) | (later & 2);                                                   \
          v = LOAD(bottom + at + c);                                                            \
          later = (v > best) | (v != v);                                                        \
          best = blend(later, v, best);                                                         \
          won = (won & ~later) | (later & 3);                                                   \
          if (relu) best = (f8)((i8)best & ~(best < 0.0f));                                     \
          STORE(o + e, best);                                                                   \
          for (int t = 0; t < 8; t++) k[e + t] = (uint8_t)won[t];                               \
        }                                                                                       \
      }                                                                                         \
    }                                                                                           \
  }                                                                                             \
                                                                                                \
  void dlcli_maxpool2x2_backward_##SUFFIX(const T *grad, const uint8_t *code, const T *out,    \
                                          T *grad_in, int64_t n, int64_t h, int64_t w,          \
                                          int64_t c, int relu) {                                \
    const int64_t oh = h / 2, ow = w / 2;                                                       \
    const f8 zero = {0};                                                                        \
    _Pragma("omp parallel for schedule(static)")                                                \
    for (int64_t row = 0; row < n * oh; row++) {                                                \
      const int64_t b = row / oh, i = row % oh;                                                 \
      T *top = grad_in + ((b * h + 2 * i) * w) * c, *bottom = top + w * c;                      \
      const T *g = grad + row * ow * c, *o = out + row * ow * c;                                \
      const uint8_t *k = code + row * ow * c;                                                   \
      for (int64_t j = 0; j < ow; j++) {                                                        \
        for (int64_t ch = 0; ch < c; ch += 8) {                                                 \
          const int64_t at = 2 * j * c + ch, e = j * c + ch;                                    \
          f8 v = LOAD(g + e);                                                                   \
          if (relu) v = (f8)((i8)v & ~(LOAD(o + e) <= 0.0f));                                   \
          v = zero + v;                                                                         \
          i8 won;                                                                               \
          for (int t = 0; t < 8; t++) won[t] = k[e + t];                                        \
          STORE(top + at, (f8)((i8)v & (won == 0)));                                            \
          STORE(top + at + c, (f8)((i8)v & (won == 1)));                                        \
          STORE(bottom + at, (f8)((i8)v & (won == 2)));                                         \
          STORE(bottom + at + c, (f8)((i8)v & (won == 3)));                                     \
        }                                                                                       \
      }                                                                                         \
      if (w % 2) { /* the column no window covers */                                            \
        memset(top + (w - 1) * c, 0, (size_t)c * sizeof(T));                                    \
        memset(bottom + (w - 1) * c, 0, (size_t)c * sizeof(T));                                 \
      }                                                                                         \
    }                                                                                           \
    if (h % 2) { /* the row no window covers */                                                 \
      for (int64_t b = 0; b < n; b++)                                                           \
        memset(grad_in + ((b * h + h - 1) * w) * c, 0, (size_t)(w * c) * sizeof(T));            \
    }                                                                                           \
  }

DLCLI_MAXPOOL(f32, float, load_f32, store_f32)
DLCLI_MAXPOOL(bf16, bf16, load_bf16, store_bf16)
